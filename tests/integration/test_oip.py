"""The gateway's Open Inference Protocol, called by the stock tritonclient.

Four family services (vae, encoder, lstm, diffusion) over copies of committed models,
behind one gateway. Through `tritonclient.grpc.InferenceServerClient`,
unmodified: health and metadata; an image model's latents in, images out,
byte for byte what genserve's own ModelService gives; the sentence encoder
with BYTES texts in, the same embeddings as Encode; a text model streamed
with ModelStreamInfer, piece by piece up to the response marked final, the
same text as a non-streamed Generate with the same seed; diffusion streamed
as step progress, then its images. Then hostile input,
sent as raw OIP messages: every refusal is INVALID_ARGUMENT or NOT_FOUND
naming the tensor or parameter, never INTERNAL or UNKNOWN, and a few
hundred fuzzed OIP calls (random bytes, damaged valid requests, hypothesis
messages) answer neither either.
"""

from __future__ import annotations

import queue
import random
import shutil
import struct
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from genserve.client import tensors
from genserve.inference import grpc_service_pb2 as oip
from genserve.inference import grpc_service_pb2_grpc
from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from . import fuzzing
from .conftest import ROOT, start

pytestmark = pytest.mark.integration

IMAGE, ENCODER, TEXT = "vae-fashion", "encoder-minilm", "lstm-shakespeare"
ITERATIVE = "diffusion-fashion"
FAMILIES = {IMAGE: "vae", ENCODER: "encoder", TEXT: "lstm", ITERATIVE: "diffusion"}
TIMEOUT_S = 60
PROMPT = "ROMEO:\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[str]:
    """The gateway's target, in front of one family service per model."""
    repo = tmp_path_factory.mktemp("oip-models")
    for model in FAMILIES:
        shutil.copytree(ROOT / "models" / model, repo / model)
    with Supervisor(log_dir=tmp_path_factory.mktemp("oip-logs"), grace_s=5) as sup:
        backends = []
        for family in FAMILIES.values():
            service = start(sup, "genserve.families", "--family", family, "--models", str(repo))
            backends += ["--backend", service.target]
        yield start(sup, "genserve.gateway", *backends).target
        assert not sup.exited(), f"a process died: {sup.exited()}"


@pytest.fixture
def client(gateway: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(gateway) as client:
        yield client


@pytest.fixture
def genserve(gateway: str) -> Iterator[model_service_pb2_grpc.ModelServiceStub]:
    with grpc.insecure_channel(gateway) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(IMAGE) and client.is_model_ready(TEXT)
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(IMAGE, model_version="999")
    server = client.get_server_metadata()
    assert server.name == "genserve" and "model_configuration" in server.extensions
    assert "statistics" not in server.extensions


def test_model_metadata_shows_each_kinds_tensors(client):
    image = client.get_model_metadata(IMAGE)
    assert {(t.name, t.datatype, tuple(t.shape)) for t in image.inputs} >= {
        ("latents", "FP32", (-1, 16)),
        ("images", "FP32", (-1, 1, 28, 28)),
    }
    assert {t.name for t in image.outputs} == {"images", "latents", "embeddings", "log_variance"}
    encoder = client.get_model_metadata(ENCODER)
    assert [(t.name, t.datatype, list(t.shape)) for t in encoder.inputs] == [
        ("texts", "BYTES", [-1])
    ]
    assert [(t.name, list(t.shape)) for t in encoder.outputs] == [("embeddings", [-1, 384])]
    text = client.get_model_metadata(TEXT)
    assert [(t.name, t.datatype, list(t.shape)) for t in text.inputs] == [("prompt", "BYTES", [1])]


def test_model_config_marks_streaming_models_decoupled(client):
    text = client.get_model_config(TEXT).config
    assert text.model_transaction_policy.decoupled and text.max_batch_size == 0
    assert [i.name for i in text.input] == ["prompt"] and not text.input[0].optional
    encoder = client.get_model_config(ENCODER).config
    assert not encoder.model_transaction_policy.decoupled
    assert encoder.parameters["max_num_samples"].string_value == "128"
    image = client.get_model_config(IMAGE).config
    assert all(i.optional for i in image.input)  # which ones a call needs depends on the call


def test_unknown_model_is_not_found(client):
    for call in (
        lambda: client.get_model_metadata("no-such-model"),
        lambda: client.get_model_config("no-such-model"),
        lambda: client.infer("no-such-model", [prompt_input()]),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_latents_in_images_out_match_model_service(client, genserve):
    latents = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    given = triton.InferInput("latents", list(latents.shape), "FP32")
    given.set_data_from_numpy(latents)
    result = client.infer(IMAGE, [given], client_timeout=TIMEOUT_S)
    own = genserve.Generate(
        pb.GenerateRequest(
            model_name=IMAGE, num_samples=4, latents=tensors.from_numpy(latents), seed=1
        ),
        timeout=TIMEOUT_S,
    )
    images = result.as_numpy("images")
    assert images.shape == (4, 1, 28, 28) and images.dtype == np.float32
    assert images.tobytes() == tensors.to_numpy(own.images.tensor).tobytes()
    assert result.as_numpy("latents").tobytes() == latents.tobytes()
    decoded = client.infer(
        IMAGE,
        [given],
        parameters={"call": "decode"},
        outputs=[triton.InferRequestedOutput("images")],
        client_timeout=TIMEOUT_S,
    )
    assert decoded.as_numpy("images").tobytes() == images.tobytes()
    assert decoded.as_numpy("latents") is None  # only what was asked for


def test_a_seed_and_sample_count_as_parameters_replay_model_service(client, genserve):
    result = client.infer(
        IMAGE, [], parameters={"num_samples": 3, "seed": 7}, client_timeout=TIMEOUT_S
    )
    own = genserve.Generate(
        pb.GenerateRequest(model_name=IMAGE, num_samples=3, seed=7), timeout=TIMEOUT_S
    )
    assert result.get_response().parameters["seed"].int64_param == 7
    assert result.as_numpy("images").tobytes() == own.images.tensor.data


def test_encoder_takes_bytes_texts_and_matches_encode(client, genserve):
    texts = ["A man plays guitar.", "Someone plays music.", "Kühe grasen auf der Weide."]
    given = triton.InferInput("texts", [len(texts)], "BYTES")
    given.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = client.infer(ENCODER, [given], client_timeout=TIMEOUT_S)
    own = genserve.Encode(pb.EncodeRequest(model_name=ENCODER, texts=texts), timeout=TIMEOUT_S)
    embeddings = result.as_numpy("embeddings")
    assert embeddings.shape == (3, 384)
    assert embeddings.tobytes() == tensors.to_numpy(own.embeddings).tobytes()


def prompt_input(text: str = PROMPT) -> triton.InferInput:
    given = triton.InferInput("prompt", [1], "BYTES")
    given.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return given


def test_a_text_streams_piece_by_piece_to_the_non_streamed_text(client, genserve):
    settings = {"seed": 5, "max_new_tokens": 40, "temperature": 0.8, "top_k": 20}
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(TEXT, [prompt_input()], request_id="r1", parameters=settings)
        pieces, final = [], None
        while final is None:
            result, error = responses.get(timeout=TIMEOUT_S)
            assert error is None, error
            response = result.get_response()
            assert response.id == "r1"
            pieces.append(result.as_numpy("text")[0].decode())
            if response.parameters["triton_final_response"].bool_param:
                final = result
    finally:
        client.stop_stream()
    own = genserve.Generate(
        pb.GenerateRequest(
            model_name=TEXT,
            num_samples=1,
            prompt=PROMPT,
            seed=5,
            sampler=pb.SamplerParams(max_new_tokens=40, temperature=0.8, top_k=20),
        ),
        timeout=TIMEOUT_S,
    )
    assert len([p for p in pieces if p]) > 1  # it streamed, not one answer at the end
    assert "".join(pieces) == own.texts[0]
    assert final.as_numpy("finish_reason")[0] == b"length"
    assert final.as_numpy("completion_tokens")[0] == own.text_stats[0].completion_tokens
    unary = client.infer(TEXT, [prompt_input()], parameters=settings, client_timeout=TIMEOUT_S)
    assert unary.as_numpy("text")[0].decode() == own.texts[0]


def test_an_iterative_image_model_streams_its_steps_then_its_images(client, genserve):
    labels = triton.InferInput("class_labels", [2], "INT64")
    labels.set_data_from_numpy(np.array([3, 7], dtype=np.int64))
    settings = {"num_samples": 2, "seed": 11, "steps": 3, "preview_every_steps": 2}
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(ITERATIVE, [labels], parameters=settings)
        steps, previews, final = [], 0, None
        while final is None:
            result, error = responses.get(timeout=TIMEOUT_S)
            assert error is None, error
            parameters = result.get_response().parameters
            if parameters["triton_final_response"].bool_param:
                final = result
            elif "step" in parameters:
                total = parameters["total_steps"].int64_param
                steps.append((parameters["step"].int64_param, total))
            else:
                previews += 1
                assert result.as_numpy("images").shape == (2, 1, 28, 28)
    finally:
        client.stop_stream()
    own = genserve.Generate(
        pb.GenerateRequest(
            model_name=ITERATIVE,
            num_samples=2,
            seed=11,
            class_labels=[3, 7],
            sampler=pb.SamplerParams(steps=3),
        ),
        timeout=TIMEOUT_S,
    )
    assert steps == [(1, 3), (2, 3), (3, 3)] and previews == 1
    assert final.as_numpy("images").tobytes() == own.images.tensor.data


def test_a_bad_request_on_a_stream_gets_an_error_and_the_stream_goes_on(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(TEXT, [prompt_input()], parameters={"temperature": "hot"})
        _, error = responses.get(timeout=TIMEOUT_S)
        assert "INVALID_ARGUMENT" in str(error) and "parameters.temperature" in str(error)
        client.async_stream_infer(TEXT, [prompt_input()], parameters={"max_new_tokens": 3})
        while True:
            result, error = responses.get(timeout=TIMEOUT_S)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()


# -- hostile input, as raw OIP messages --------------------------------------------------------


@pytest.fixture
def raw(gateway: str) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(gateway) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def latents_request(shape, data: bytes, datatype: str = "FP32") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=IMAGE)
    request.inputs.add(name="latents", datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return request


def texts_request(data: bytes, shape=(1,)) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=ENCODER)
    request.inputs.add(name="texts", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(data)
    return request


def unknown_input() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=IMAGE)
    request.inputs.add(name="bogus", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    return request


def too_many_inputs() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=IMAGE)
    for i in range(9):
        request.inputs.add(name=f"x{i}", datatype="FP32", shape=[1])
        request.raw_input_contents.append(b"\0" * 4)
    return request


def with_parameter(request: oip.ModelInferRequest, key: str, **value) -> oip.ModelInferRequest:
    request.parameters[key].MergeFrom(oip.InferParameter(**value))
    return request


ZEROS = bytes(4 * 16)
HOSTILE = {
    "wrong datatype": (latents_request([1, 16], ZEROS, "INT32"), "inputs.latents.datatype"),
    "bytes short of the shape": (latents_request([2, 16], ZEROS), "inputs.latents"),
    "bytes past the shape": (latents_request([1, 16], ZEROS + b"\0"), "inputs.latents"),
    "wrong width": (latents_request([4, 4], ZEROS), "inputs.latents.shape"),
    "more rows than allowed": (latents_request([257, 16], ZEROS * 257), "inputs.latents.shape"),
    "a shape of 2**80 elements": (latents_request([1 << 40, 1 << 40], ZEROS), "inputs.latents"),
    "negative dimension": (latents_request([-1, 16], ZEROS), "inputs.latents.shape"),
    "nine dimensions": (latents_request([1] * 9, ZEROS), "inputs.latents.shape"),
    "too many inputs": (too_many_inputs(), "inputs"),
    "no texts": (texts_request(b"", shape=(0,)), "inputs.texts.shape"),
    "unknown input": (unknown_input(), "inputs[0].name"),
    "bytes length past the end": (texts_request(struct.pack("<I", 1 << 31) + b"ab"), "texts[0]"),
    "bytes left over": (texts_request(struct.pack("<I", 1) + b"ab"), "inputs.texts"),
    "not utf-8": (texts_request(struct.pack("<I", 2) + b"\xff\xfe"), "inputs.texts[0]"),
    "missing input": (oip.ModelInferRequest(model_name=ENCODER), "inputs.texts"),
    "unknown parameter": (
        with_parameter(latents_request([1, 16], ZEROS), "sequence_id", int64_param=1),
        "parameters.sequence_id",
    ),
    "parameter of the wrong type": (
        with_parameter(latents_request([1, 16], ZEROS), "seed", string_param="x"),
        "parameters.seed",
    ),
    "negative seed": (
        with_parameter(latents_request([1, 16], ZEROS), "seed", int64_param=-1),
        "parameters.seed",
    ),
    "unknown call": (
        with_parameter(latents_request([1, 16], ZEROS), "call", string_param="train"),
        "parameters.call",
    ),
    "rows and num_samples disagree": (
        with_parameter(latents_request([1, 16], ZEROS), "num_samples", int64_param=2),
        "parameters.num_samples",
    ),
    "over-long model name": (oip.ModelInferRequest(model_name="m" * 10_000), "model_name"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_input_is_invalid_argument_naming_the_field(raw, case):
    request, field = HOSTILE[case]
    with pytest.raises(grpc.RpcError) as raised:
        raw.ModelInfer(request, timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert field in raised.value.details()


def test_unknown_model_and_version_are_not_found(raw):
    for request in (
        oip.ModelInferRequest(model_name="no-such-model"),
        oip.ModelInferRequest(model_name=IMAGE, model_version="999"),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            raw.ModelInfer(request, timeout=TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
        raw.ModelMetadata(oip.ModelMetadataRequest(name="no-such-model"), timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_bytes_that_are_no_request_are_invalid_argument(gateway):
    with grpc.insecure_channel(gateway) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff", timeout=TIMEOUT_S)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


FUZZ_CALLS = 200
"""Calls per kind of fuzzing (random, mutated, hypothesis) of the OIP service."""
FUZZ_TIMEOUT_S = 20


def oip_methods(channel: grpc.Channel) -> list[fuzzing.Method]:
    return [m for m in fuzzing.discover(channel) if m.path.startswith("/inference.")]


def valid_requests() -> list[bytes]:
    """Requests each model answers, to damage."""
    latents = latents_request([2, 16], ZEROS * 2)
    texts = texts_request(struct.pack("<I", 2) + b"hi")
    prompt = oip.ModelInferRequest(model_name=TEXT)
    prompt.inputs.add(name="prompt", datatype="BYTES", shape=[1])
    prompt.raw_input_contents.append(struct.pack("<I", 3) + b"To ")
    prompt.parameters["max_new_tokens"].int64_param = 4
    return [m.SerializeToString() for m in (latents, texts, prompt)]


def test_fuzzed_oip_calls_are_never_internal_or_unknown(gateway, client):
    rng = random.Random(7)
    codes: list[str] = []
    with grpc.insecure_channel(gateway) as channel:
        methods = oip_methods(channel)
        assert len(methods) >= 10
        by_name = {m.path.rsplit("/", 1)[1]: m for m in methods}
        infer = [by_name["ModelInfer"], by_name["ModelStreamInfer"]]
        for _ in range(FUZZ_CALLS):
            method = rng.choice(methods)
            codes.append(fuzzing.send(channel, method, fuzzing.random_bytes(rng), FUZZ_TIMEOUT_S))
            payload = fuzzing.mutate(rng, rng.choice(valid_requests()))
            codes.append(fuzzing.send(channel, rng.choice(infer), payload, FUZZ_TIMEOUT_S))

        @fuzzing.fixed_examples(FUZZ_CALLS)
        @given(st.data())
        def one_call(data) -> None:
            method = data.draw(st.sampled_from(methods))
            names = list(FAMILIES)
            message = data.draw(fuzzing.message_strategy(method.request, names))
            code = fuzzing.send(channel, method, message.SerializeToString(), FUZZ_TIMEOUT_S)
            codes.append(code)
            assert code not in ("INTERNAL", "UNKNOWN"), f"{method.path}: {message!r:.300}"

        one_call()
    fuzzing.TALLY.setdefault("gateway (OIP)", Counter()).update(codes)
    forbidden = [c for c in codes if c in ("INTERNAL", "UNKNOWN")]
    assert not forbidden, f"{len(forbidden)} calls answered {sorted(set(forbidden))}"
    assert client.is_server_ready() and client.is_model_ready(IMAGE)
