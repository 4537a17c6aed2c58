"""The Python SDK and CLI against a real in-process gRPC server with canned answers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from genserve.client import (
    AsyncClient,
    Client,
    GenerateResult,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
    StepProgress,
    TextStats,
    TokenDelta,
    UnavailableError,
    cli,
    errors,
    images,
)
from genserve.client.tensors import TensorFormatError, from_numpy, to_numpy
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc, tensor_pb2

pytestmark = pytest.mark.unit

FAST_RETRIES = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02)

MODELS = [
    pb.ModelInfo(
        name="gpt-shakespeare",
        family="gpt",
        version="1",
        calls=[pb.MODEL_CALL_GENERATE, pb.MODEL_CALL_GENERATE_STREAM],
        max_num_samples=8,
    ),
    pb.ModelInfo(
        name="vae-fashion",
        family="vae",
        version="3",
        calls=[pb.MODEL_CALL_GENERATE, pb.MODEL_CALL_ENCODE, pb.MODEL_CALL_DECODE],
        labels=["t-shirt", "trouser"],
        latent_dim=4,
        image_shape=[1, 6, 5],
        max_num_samples=64,
    ),
]


def _bad_request(context: grpc.ServicerContext, field: str, problem: str) -> None:
    detail = any_pb2.Any()
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=problem)
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {problem}", details=[detail]
    )
    context.abort_with_status(rpc_status.to_status(status))


class FakeModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Canned answers: "flaky" fails `failures` times with UNAVAILABLE, "slow" sleeps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.failures = 2
        self.request_ids: list[str] = []
        self.metadata: list[dict[str, str]] = []

    def _enter(self, context: grpc.ServicerContext, model: str) -> None:
        self.calls += 1
        metadata = dict(context.invocation_metadata())
        self.metadata.append(metadata)
        self.request_ids.append(metadata.get("x-request-id", ""))
        if model == "flaky" and self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "model is loading")
        if model == "slow":
            time.sleep(0.3)
        if model == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "model 'missing' is not loaded")

    def ListModels(self, request, context):
        self._enter(context, "")
        return pb.ListModelsResponse(
            models=[m for m in MODELS if not request.family or m.family == request.family]
        )

    def DescribeModel(self, request, context):
        self._enter(context, request.model_name)
        info = next((m for m in MODELS if m.name == request.model_name), MODELS[1])
        config = {"family": info.family, "model_card": {"data": "fashion-mnist"}}
        return pb.DescribeModelResponse(info=info, config_json=json.dumps(config))

    def Generate(self, request, context):
        self._enter(context, request.model_name)
        return self._generate(request, context)

    def _generate(self, request, context) -> pb.GenerateResponse:
        if not 1 <= request.num_samples <= 64:
            _bad_request(context, "num_samples", f"must be in [1, 64], got {request.num_samples}")
        seed = request.seed if request.HasField("seed") else 1234
        response = pb.GenerateResponse(model_name=request.model_name, model_version="3", seed=seed)
        if request.model_name.startswith("gpt"):
            response.texts.extend(f"{request.prompt}#{i}" for i in range(request.num_samples))
            for _ in range(request.num_samples):
                response.text_stats.add(
                    finish_reason=pb.FINISH_REASON_STOP, prompt_tokens=len(request.prompt),
                    completion_tokens=2,
                )  # fmt: skip
        else:
            pixels = np.full((request.num_samples, 1, 6, 5), 0.5, np.float32)
            response.images.tensor.CopyFrom(from_numpy(pixels))
        return response

    def GenerateStream(self, request, context):
        self._enter(context, request.request.model_name)
        for step in (1, 2):
            yield pb.GenerateStreamResponse(progress=pb.StepProgress(step=step, total_steps=2))
        yield pb.GenerateStreamResponse(token=pb.TokenDelta(sample_index=0, text="hi"))
        yield pb.GenerateStreamResponse(result=self._generate(request.request, context))

    def Encode(self, request, context):
        self._enter(context, request.model_name)
        n = len(request.texts) or len(request.images.pngs) or request.images.tensor.shape[0]
        response = pb.EncodeResponse(model_name=request.model_name, model_version="3")
        response.embeddings.CopyFrom(from_numpy(np.arange(n * 4, dtype=np.float32).reshape(n, 4)))
        if request.model_name.startswith("vae"):
            response.log_variance.CopyFrom(from_numpy(np.zeros((n, 4), np.float32)))
        return response

    def Reconstruct(self, request, context):
        self._enter(context, request.model_name)
        response = pb.ReconstructResponse(model_name=request.model_name, model_version="3")
        response.images.tensor.CopyFrom(request.images.tensor)
        return response


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeModelService]]:
    servicer = FakeModelService()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", servicer
    grpc_server.stop(grace=None)


@pytest.fixture
def fake(server: tuple[str, FakeModelService]) -> FakeModelService:
    server[1].reset()
    return server[1]


@pytest.fixture
def client(server: tuple[str, FakeModelService], fake: FakeModelService) -> Iterator[Client]:
    with Client(server[0], retries=FAST_RETRIES, timeout_s=5) as c:
        yield c


# Tensors and images, no server.


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "uint8", "bool"])
def test_tensor_round_trip_keeps_dtype_shape_and_values(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    back = to_numpy(from_numpy(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_tensor_from_big_endian_is_sent_little_endian() -> None:
    array = np.arange(3, dtype=">i4")
    tensor = from_numpy(array)
    assert tensor.data == np.arange(3, dtype="<i4").tobytes()
    np.testing.assert_array_equal(to_numpy(tensor), array)


def test_tensor_errors_name_the_problem() -> None:
    short = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 2], data=b"\0" * 12)
    with pytest.raises(TensorFormatError, match="needs 16 bytes, got 12"):
        to_numpy(short)
    with pytest.raises(TensorFormatError, match="negative"):
        to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[-1]))
    with pytest.raises(TensorFormatError, match="not supported"):
        to_numpy(tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UNSPECIFIED))
    with pytest.raises(TensorFormatError, match="complex128"):
        from_numpy(np.zeros(2, np.complex128))


def test_normalize_images_gives_float32_nchw() -> None:
    gray = np.array([[[0, 255], [51, 102]]], np.uint8)  # (N, H, W)
    out = images.normalize_images(gray)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out[0, 0], [[0, 1], [0.2, 0.4]], atol=1e-6)
    assert images.normalize_images(np.zeros((2, 3, 4, 4))).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        images.normalize_images(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="dtype"):
        images.normalize_images(np.zeros((1, 4, 4), np.int32))


def test_grid_lays_out_rows_with_padding_and_scale() -> None:
    batch = np.zeros((5, 1, 3, 2), np.float32)
    batch[4] = 1.0  # the last image, second row, second column
    out = images.grid(batch, nrow=3, padding=1, scale=2)
    assert out.dtype == np.uint8 and out.shape == (2 * (6 + 1) + 1, 3 * (4 + 1) + 1)
    assert out[8:14, 6:10].min() == 255 and out.sum() == 255 * 6 * 4
    rgb = images.grid(np.ones((4, 3, 2, 2), np.float32), padding=0)
    assert rgb.shape == (4, 4, 3) and rgb.min() == 255


def test_png_round_trip() -> None:
    image = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4)
    back = images.from_png_bytes(images.to_png_bytes(image))
    assert back.shape == (1, 3, 4)
    np.testing.assert_allclose(back, image, atol=1 / 255)


@pytest.mark.parametrize(
    ("mode", "fmt", "channels"),
    [("P", "PNG", 1), ("RGBA", "PNG", 1), ("I;16", "PNG", 1), ("L", "JPEG", 3), ("LA", "PNG", 3)],
)
def test_read_image_brings_any_file_to_the_models_channels(tmp_path, mode, fmt, channels) -> None:
    from PIL import Image

    path = tmp_path / f"image.{fmt.lower()}"
    Image.new(mode, (5, 4)).save(path, format=fmt)
    image = images.read_image(path, channels)
    assert image.shape == (channels, 4, 5) and image.dtype == np.float32


def test_read_image_names_an_unreadable_file(tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png is not a readable image"):
        images.read_image(path, 1)


# The SDK against the fake server.


def test_list_and_describe_models(client: Client) -> None:
    models = client.list_models()
    assert [m.name for m in models] == ["gpt-shakespeare", "vae-fashion"]
    assert models[1].calls == ["Generate", "Encode", "Decode"]
    assert models[1].image_shape == (1, 6, 5)
    assert [m.name for m in client.list_models("vae")] == ["vae-fashion"]
    described = client.describe_model("vae-fashion")
    assert described.config["model_card"] == {"data": "fashion-mnist"}


def test_generate_returns_images_and_seed(client: Client) -> None:
    result = client.generate("vae-fashion", 3, seed=7)
    assert result.seed == 7 and result.model_version == "3"
    assert result.images is not None and result.images.shape == (3, 1, 6, 5)
    result.images[0] = 0  # results are writable copies
    text = client.generate("gpt-shakespeare", 2, prompt="O")
    assert text.texts == ["O#0", "O#1"] and text.images is None
    assert text.text_stats == [TextStats("stop", 1, 2)] * 2


def test_bad_request_details_become_invalid_argument_with_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate("vae-fashion", 100)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "num_samples"
    assert error.violations[0].description == "must be in [1, 64], got 100"
    assert str(error) == "INVALID_ARGUMENT: num_samples: must be in [1, 64], got 100"
    assert isinstance(error, ValueError) and error.request_id


def test_error_details_degrade_without_google_rpc(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "google.rpc", None)  # import now fails
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate("vae-fashion", 100)
    assert caught.value.field is None and "num_samples" in caught.value.message


def test_not_found_is_not_retried(client: Client, fake: FakeModelService) -> None:
    with pytest.raises(NotFoundError, match="not loaded"):
        client.describe_model("missing")
    assert fake.calls == 1


def test_seeded_generate_is_retried_on_unavailable(client: Client, fake: FakeModelService) -> None:
    result = client.generate("flaky", seed=3)
    assert result.seed == 3 and fake.calls == 3
    assert len(set(fake.request_ids)) == 1  # one request id across the attempts


def test_unseeded_generate_is_not_retried(client: Client, fake: FakeModelService) -> None:
    with pytest.raises(UnavailableError, match="loading"):
        client.generate("flaky")
    assert fake.calls == 1


def test_retries_stop_after_the_policy_allows(
    server: tuple[str, FakeModelService], fake: FakeModelService
) -> None:
    fake.failures = 10
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001)
    with Client(server[0], retries=policy) as c, pytest.raises(UnavailableError):
        c.encode("flaky", texts=["a"])
    assert fake.calls == 3


def test_deadline_and_metadata(client: Client, fake: FakeModelService) -> None:
    with pytest.raises(errors.DeadlineExceededError):
        client.encode("slow", texts=["a"], timeout_s=0.05)
    client.encode("vae-fashion", texts=["a"], metadata={"authorization": "Bearer t"})
    assert fake.metadata[-1]["authorization"] == "Bearer t"


def test_client_side_validation_names_the_argument(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate("vae-fashion", output_format="jpeg")
    assert caught.value.field == "output_format"
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        client.encode("vae-fashion")


def test_encode_and_reconstruct(client: Client) -> None:
    result = client.encode("vae-fashion", np.zeros((2, 6, 5), np.uint8))
    assert result.embeddings.shape == (2, 4) and result.log_variance is not None
    assert client.encode("encoder", texts=["a", "b", "c"]).log_variance is None
    batch = np.full((2, 1, 6, 5), 255, np.uint8)
    out = client.reconstruct("vae-fashion", batch)
    assert out.images is not None and out.images.dtype == np.float32 and out.images.max() == 1.0


def test_generate_stream_yields_events_then_result(client: Client) -> None:
    events = list(client.generate_stream("gpt-shakespeare", prompt="x"))
    assert events[:3] == [StepProgress(1, 2), StepProgress(2, 2), TokenDelta(0, "hi")]
    assert isinstance(events[-1], GenerateResult) and events[-1].texts == ["x#0"]


def test_seeded_stream_is_retried_before_its_first_event(
    client: Client, fake: FakeModelService
) -> None:
    events = list(client.generate_stream("flaky", seed=2))
    assert events[-1].seed == 2 and fake.calls == 3
    fake.reset()
    with pytest.raises(UnavailableError):
        list(client.generate_stream("flaky"))
    assert fake.calls == 1


async def test_async_client_same_verbs(
    server: tuple[str, FakeModelService], fake: FakeModelService
) -> None:
    async with AsyncClient(server[0], retries=FAST_RETRIES) as c:
        assert (await c.generate("flaky", 2, seed=5)).images.shape == (2, 1, 6, 5)
        assert fake.calls == 3
        assert [m.name for m in await c.list_models(family="gpt")] == ["gpt-shakespeare"]
        with pytest.raises(InvalidArgumentError) as caught:
            await c.generate("vae-fashion", 0)
        assert caught.value.field == "num_samples"
        events = [e async for e in c.generate_stream("gpt-shakespeare")]
        assert isinstance(events[-1], GenerateResult)


# The command line against the fake server.


def test_cli_models_json(server: tuple[str, FakeModelService], capsys) -> None:
    assert cli.main(["--addr", server[0], "models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[1] == {
        "name": "vae-fashion",
        "family": "vae",
        "version": "3",
        "calls": ["Generate", "Encode", "Decode"],
        "labels": ["t-shirt", "trouser"],
        "latent_dim": 4,
        "image_shape": [1, 6, 5],
        "max_num_samples": 64,
    }


def test_cli_server_error_is_one_line_and_exit_2(
    server: tuple[str, FakeModelService], capsys
) -> None:
    status = cli.main(["--addr", server[0], "generate", "-m", "vae-fashion", "-n", "0"])
    assert status == 2
    err = capsys.readouterr().err
    assert err == "error: INVALID_ARGUMENT: num_samples: must be in [1, 64], got 0\n"


def test_cli_generate_writes_a_grid(server: tuple[str, FakeModelService], tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    argv = ["--addr", server[0], "generate", "-m", "vae-fashion", "-n", "4", "--seed", "9"]
    assert cli.main([*argv, "--labels", "trouser", "--nrow", "2", "-o", str(out)]) == 0
    assert "seed: 9" in capsys.readouterr().err
    assert images.from_png_bytes(out.read_bytes()).shape == (1, 2 * 8 + 2, 2 * 7 + 2)


def test_cli_generate_prints_texts(server: tuple[str, FakeModelService], capsys) -> None:
    argv = ["--addr", server[0], "generate", "-m", "gpt-shakespeare", "--prompt", "Be"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "Be#0\n" and "seed: 1234" in captured.err
    assert "finish: stop (2 prompt + 2 generated tokens)" in captured.err


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["describe", "missing"], 2, "error: NOT_FOUND: model 'missing' is not loaded"),
        (["--addr", "127.0.0.1:1", "--timeout", "10", "models"], 1, "error: UNAVAILABLE: "),
    ],
)
def test_cli_exit_status(
    server: tuple[str, FakeModelService], capsys, argv: list[str], status: int, message: str
) -> None:
    assert cli.main(["--addr", server[0], *argv]) == status
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
