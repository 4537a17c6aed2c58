"""The gateway's Open Inference Protocol in process: each model kind's tensors, the genserve
requests made from OIP ones, and ModelStreamInfer's responses, over a fake forwarder."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from genserve.client import tensors
from genserve.gateway import oip_models as models
from genserve.gateway.oip import MAX_STREAM_REQUESTS, OipServicer
from genserve.gateway.oip_params import FINAL, read_parameters
from genserve.gateway.oip_tensors import encode_bytes, read_inputs
from genserve.inference import grpc_service_pb2 as oip
from genserve.runtime.errors import InvalidArgument, NotFound
from genserve.runtime.limits import Limits
from genserve.v1 import model_service_pb2 as pb

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
VAE = pb.ModelInfo(
    name="vae", family="vae", version="1", latent_dim=16, image_shape=[1, 28, 28],
    max_num_samples=256, calls=[pb.MODEL_CALL_GENERATE, pb.MODEL_CALL_GENERATE_STREAM,
    pb.MODEL_CALL_ENCODE, pb.MODEL_CALL_DECODE, pb.MODEL_CALL_RECONSTRUCT],
)  # fmt: skip
DIFFUSION = pb.ModelInfo(
    name="diffusion", family="diffusion", version="2", image_shape=[1, 28, 28], labels=list("abc"),
    max_num_samples=64, calls=[pb.MODEL_CALL_GENERATE, pb.MODEL_CALL_GENERATE_STREAM],
)  # fmt: skip
TEXT = pb.ModelInfo(
    name="lstm", family="lstm", version="1", max_num_samples=16,
    calls=[pb.MODEL_CALL_GENERATE, pb.MODEL_CALL_GENERATE_STREAM],
)  # fmt: skip
ENCODER = pb.ModelInfo(
    name="minilm", family="encoder", version="1", max_num_samples=128, calls=[pb.MODEL_CALL_ENCODE]
)


def spec(info: pb.ModelInfo) -> models.ModelSpec:
    return models.model_spec(info, Limits())


def test_each_kind_shows_its_own_tensors():
    vae = spec(VAE)
    assert vae.default_call == "generate" and set(vae.calls) == {
        "generate", "encode", "decode", "reconstruct",
    }  # fmt: skip
    assert vae.inputs()["latents"].shape == (-1, 16) and "class_labels" not in vae.inputs()
    assert set(vae.outputs()) == {"images", "latents", "embeddings", "log_variance"}
    diffusion = spec(DIFFUSION)
    assert set(diffusion.inputs()) == {"class_labels"} and set(diffusion.outputs()) == {"images"}
    text = spec(TEXT)
    assert [(s.name, s.datatypes, s.shape) for s in text.inputs().values()] == [
        ("prompt", ("BYTES",), (1,))
    ]
    assert set(text.outputs()) == {"text", "finish_reason", "prompt_tokens", "completion_tokens"}
    encoder = models.model_spec(ENCODER, Limits(), embedding_dim=384)
    assert encoder.default_call == "encode"
    assert encoder.outputs()["embeddings"].shape == (-1, 384)


def test_model_config_is_decoupled_only_for_models_that_stream():
    assert models.model_config(spec(TEXT), "1").model_transaction_policy.decoupled
    encoder = models.model_config(spec(ENCODER), "1")
    assert not encoder.model_transaction_policy.decoupled
    assert [(i.name, i.optional) for i in encoder.input] == [("texts", False)]
    assert encoder.parameters["default_call"].string_value == "encode"


def oip_request(model: str, inputs=(), **parameters) -> oip.ModelInferRequest:
    """A request of (name, datatype, shape, raw) inputs; parameters as InferParameter kwargs."""
    message = oip.ModelInferRequest(model_name=model, id="req")
    for name, datatype, shape, raw in inputs:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(raw)
    for key, value in parameters.items():
        message.parameters[key].CopyFrom(oip.InferParameter(**value))
    return message


def genserve_request(info: pb.ModelInfo, message: oip.ModelInferRequest):
    model = spec(info)
    call = model.call_for(message.parameters)
    params = read_parameters(message.parameters, call.parameters, call.name)
    return models.genserve_request(model, call, read_inputs(message, call.inputs, "m"), params)


def prompt(text: str = "ROMEO:") -> tuple:
    return ("prompt", "BYTES", [1], encode_bytes([text.encode()]))


def test_a_text_request_carries_prompt_and_sampler_settings():
    message = oip_request(
        "lstm", [prompt()], seed={"int64_param": 3}, temperature={"double_param": 0.5},
        stop_sequences={"string_param": '["\\n\\n", "END"]'}, num_samples={"int64_param": 2},
    )  # fmt: skip
    request = genserve_request(TEXT, message)
    assert (request.prompt, request.seed, request.num_samples) == ("ROMEO:", 3, 2)
    assert request.sampler.temperature == 0.5
    assert list(request.sampler.stop_sequences) == ["\n\n", "END"]


def test_an_image_request_carries_latents_labels_and_its_call():
    latents = np.ones((2, 16), np.float32)
    decode = oip_request(
        "vae", [("latents", "FP32", [2, 16], latents.tobytes())], call={"string_param": "decode"}
    )
    request = genserve_request(VAE, decode)
    assert isinstance(request, pb.DecodeRequest)
    assert tensors.to_numpy(request.latents).tobytes() == latents.tobytes()
    labelled = oip_request("diffusion", [("class_labels", "INT32", [2], b"\1\0\0\0\2\0\0\0")])
    request = genserve_request(DIFFUSION, labelled)
    assert list(request.class_labels) == [1, 2] and request.num_samples == 1


@pytest.mark.parametrize(
    ("info", "message", "field"),
    [
        (TEXT, oip_request("lstm"), "inputs.prompt"),
        (TEXT, oip_request("lstm", [prompt()], stop_sequences={"string_param": "END"}),
         "parameters.stop_sequences"),
        (VAE, oip_request("vae", call={"string_param": "encode"}), "inputs.images"),
        (VAE, oip_request("vae", call={"int64_param": 1}), "parameters.call"),
        (ENCODER, oip_request("minilm", [prompt()]), "inputs[0].name"),
        (VAE, oip_request("vae", call={"string_param": "decode"}, seed={"int64_param": 1}),
         "parameters.seed"),
    ],
)  # fmt: skip
def test_requests_that_cannot_be_made_are_refused_naming_the_field(info, message, field):
    with pytest.raises(InvalidArgument, match=re.escape(field)):
        genserve_request(info, message)


def test_vendored_protos_are_tritons_files_unchanged():
    folder = ROOT / "protos" / "vendor" / "triton"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for name in ("grpc_service.proto", "model_config.proto"):
        data = (folder / name).read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert f"`{name}` | `protobuf/{name}`, git blob `{blob}`" in readme


def test_our_stubs_and_tritonclients_load_side_by_side():
    from tritonclient.grpc import service_pb2

    assert service_pb2.ModelInferRequest.DESCRIPTOR is oip.ModelInferRequest.DESCRIPTOR


# -- the servicer over a fake forwarder --------------------------------------------------------


def token(text: str, index: int = 0) -> pb.GenerateStreamResponse:
    return pb.GenerateStreamResponse(token=pb.TokenDelta(sample_index=index, text=text))


def text_result(text: str) -> pb.GenerateStreamResponse:
    stats = pb.TextStats(
        finish_reason=pb.FINISH_REASON_LENGTH, prompt_tokens=6, completion_tokens=4
    )
    result = pb.GenerateResponse(
        model_name="lstm", model_version="1", seed=9, texts=[text], text_stats=[stats]
    )
    return pb.GenerateStreamResponse(result=result)


class FakeForwarder:
    """Serves TEXT and ENCODER; every stream sends `events`, after `gate` is set."""

    def __init__(self, events: list[pb.GenerateStreamResponse]) -> None:
        backend = SimpleNamespace(healthy=True, models={"lstm": TEXT, "minilm": ENCODER})
        self.pool = SimpleNamespace(backends=[backend], route=lambda name: [backend])
        self.events = events
        self.gate = asyncio.Event()
        self.gate.set()
        self.streams = 0

    def model_info(self, name: str) -> pb.ModelInfo:
        if name not in self.pool.backends[0].models:
            raise NotFound(name)
        return self.pool.backends[0].models[name]

    async def call(self, method: str, request, context):
        embeddings = tensors.from_numpy(np.zeros((len(request.texts), 4), np.float32))
        return pb.EncodeResponse(model_name="minilm", model_version="1", embeddings=embeddings)

    async def stream(self, request, context) -> AsyncIterator[pb.GenerateStreamResponse]:
        self.streams += 1
        await self.gate.wait()
        for event in self.events:
            yield event


async def stream(forwarder: FakeForwarder, *requests: oip.ModelInferRequest) -> list:
    async def incoming():
        for request in requests:
            yield request

    servicer = OipServicer(forwarder)
    return [r async for r in servicer.ModelStreamInfer(incoming(), SimpleNamespace())]


def final(response: oip.ModelStreamInferResponse) -> bool:
    return response.infer_response.parameters[FINAL].bool_param


def texts_of(response: oip.ModelStreamInferResponse) -> str:
    raw = response.infer_response.raw_output_contents[0]
    return raw[4:].decode()


async def test_text_streams_as_pieces_that_add_up_to_the_text():
    forwarder = FakeForwarder([token("ab"), token("c"), text_result("abcd")])
    responses = await stream(forwarder, oip_request("lstm", [prompt()]))
    assert [texts_of(r) for r in responses] == ["ab", "c", "d"]
    assert [final(r) for r in responses] == [False, False, True]
    last = responses[-1].infer_response
    assert last.id == "req" and last.parameters["seed"].int64_param == 9
    assert [o.name for o in last.outputs] == [
        "text", "finish_reason", "prompt_tokens", "completion_tokens",
    ]  # fmt: skip


async def test_an_empty_final_response_when_asked_for():
    forwarder = FakeForwarder([token("ab"), text_result("ab")])
    asked = oip_request("lstm", [prompt()], triton_enable_empty_final_response={"bool_param": True})
    responses = await stream(forwarder, asked)
    assert [final(r) for r in responses] == [False, False, True]
    assert not responses[-1].infer_response.outputs


async def test_a_failed_request_is_an_error_message_and_the_others_go_on():
    forwarder = FakeForwarder([text_result("ok")])
    texts = ("texts", "BYTES", [1], encode_bytes([b"hi"]))
    responses = await stream(
        forwarder,
        oip_request("lstm", [prompt()], temperature={"string_param": "hot"}),
        oip_request("nope"),
        oip_request("minilm", [texts]),
        oip_request("lstm", [prompt()]),
    )
    errors = sorted(r.error_message for r in responses if r.error_message)
    assert errors[0].startswith("[StatusCode.INVALID_ARGUMENT] parameters.temperature")
    assert errors[1].startswith("[StatusCode.NOT_FOUND] model 'nope'")
    answered = {r.infer_response.model_name for r in responses if not r.error_message}
    assert answered == {"lstm", "minilm"} and sum(final(r) for r in responses) == 2


async def test_a_stream_that_ends_without_its_result_is_an_error():
    responses = await stream(FakeForwarder([token("ab")]), oip_request("lstm", [prompt()]))
    assert responses[-1].error_message.startswith("[StatusCode.UNAVAILABLE]")


async def test_a_stream_runs_at_most_its_bound_of_requests_at_once():
    forwarder = FakeForwarder([text_result("x")])
    forwarder.gate.clear()
    count = MAX_STREAM_REQUESTS + 4
    running = asyncio.create_task(stream(forwarder, *[oip_request("lstm", [prompt()])] * count))
    for _ in range(200):  # let every task that may start, start
        await asyncio.sleep(0)
    assert forwarder.streams == MAX_STREAM_REQUESTS
    forwarder.gate.set()
    responses = await asyncio.wait_for(running, 30)
    assert len(responses) == count and all(final(r) for r in responses)
