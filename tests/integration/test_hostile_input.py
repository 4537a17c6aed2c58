"""Hostile input against both process kinds: every class the hardening issue names.

Each case is sent raw (no SDK checks in the way) to the gateway and to the
family service of the shared deployment, and must answer the status a user
would expect, with a short message that leaks no object, address or
traceback. Health Check, Watch (with a change while watching) and List are
checked on both process kinds.
"""

from __future__ import annotations

import io
import re
import signal

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import tensor_pb2

from .conftest import TINY, scrape, start, start_family, total

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module", params=["gateway", "service"])
def channel(request, deployment):
    with grpc.insecure_channel(
        getattr(deployment, request.param), options=[("grpc.max_send_message_length", -1)]
    ) as ch:
        yield ch


def raw_call(channel, method: str, payload: bytes, metadata=()) -> grpc.RpcError | tuple:
    """Send bytes to a ModelService method; the error, or (response bytes, trailers)."""
    call = channel.unary_unary(f"/genserve.v1.ModelService/{method}")
    try:
        response, state = call.with_call(payload, timeout=30, metadata=metadata)
    except grpc.RpcError as exc:
        assert not re.search(r"0x[0-9a-fA-F]{6,}", exc.details()), exc.details()
        assert "Traceback" not in exc.details(), exc.details()
        assert "object at" not in exc.details() and "Error" not in exc.details(), exc.details()
        assert len(exc.details()) < 400, exc.details()
        return exc
    return response, dict(state.trailing_metadata())


def expect(result, code: grpc.StatusCode, *words: str) -> None:
    assert isinstance(result, grpc.RpcError), f"expected {code.name}, got OK"
    assert result.code() == code, (result.code(), result.details())
    for word in words:
        assert word in result.details(), result.details()


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def reconstruct(pngs: list[bytes]) -> bytes:
    images = tensor_pb2.ImageInput(pngs=pngs)
    return pb.ReconstructRequest(model_name=TINY, images=images).SerializeToString()


def decode(shape: list[int], data: bytes) -> bytes:
    latents = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, data=data)
    return pb.DecodeRequest(model_name=TINY, latents=latents).SerializeToString()


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08"])
def test_unparseable_bytes_are_invalid_argument_not_unknown(channel, payload):
    expect(raw_call(channel, "Generate", payload), INVALID, "not a valid Generate request")


def test_a_huge_model_name_is_invalid_argument_not_a_trailer_overflow(channel):
    request = pb.GenerateRequest(model_name="m" * 200_000, num_samples=1)
    expect(raw_call(channel, "Generate", request.SerializeToString()), INVALID, "model_name")


def test_an_unknown_model_name_is_quoted_cut_short(channel):
    request = pb.GenerateRequest(model_name="n" * 120, num_samples=1)
    result = raw_call(channel, "Generate", request.SerializeToString())
    expect(result, grpc.StatusCode.NOT_FOUND, "nnn...")
    assert result.details().count("n") < 100


@pytest.mark.parametrize(
    ("shape", "data", "words"),
    [
        ([2**62, 2**62, 16], b"", ("latents", "more than 2**63 bytes")),
        ([1] * 40, b"\0" * 4, ("latents", "40 dimensions")),
        ([1, 16], np.full(16, 3.4e38, np.float32).tobytes(), ("latents", "overflow")),
        ([1, 16], np.full(16, np.nan, np.float32).tobytes(), ("latents", "NaN")),
    ],
)
def test_hostile_tensors_are_invalid_argument_naming_the_field(channel, shape, data, words):
    expect(raw_call(channel, "Decode", decode(shape, data)), INVALID, *words)


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "TIFF"])
def test_only_pngs_are_taken_as_pngs(channel, fmt):
    data = png_bytes(Image.new("L", (28, 28)), fmt)
    expect(raw_call(channel, "Reconstruct", reconstruct([data])), INVALID, "is not a PNG")


def test_a_huge_png_is_refused_from_its_header(channel):
    # 8000x8000 pixels in 62 KB: 64 MB of pixels if it were decoded.
    bomb = png_bytes(Image.new("L", (8000, 8000)))
    result = raw_call(channel, "Reconstruct", reconstruct([bomb] * 60))
    expect(result, INVALID, "images.pngs[0]", "must be 28x28 pixels, got 8000x8000")


def test_an_unreadable_png_says_so_without_leaking_the_decoder(channel):
    good = png_bytes(Image.new("L", (28, 28), 9))
    corrupt = good[:41] + bytes(len(good) - 53) + good[-12:]
    expect(raw_call(channel, "Reconstruct", reconstruct([good, corrupt])), INVALID, "pngs[1]")


def test_good_pngs_still_work(channel):
    good = png_bytes(Image.new("L", (28, 28), 200))
    response, _ = raw_call(channel, "Reconstruct", reconstruct([good, good]))
    assert pb.ReconstructResponse.FromString(response).images.tensor.shape == [2, 1, 28, 28]


def test_a_message_over_the_limit_is_resource_exhausted(channel):
    request = pb.GenerateRequest(model_name=TINY, prompt="x" * (5 * 1024 * 1024))
    expect(
        raw_call(channel, "Generate", request.SerializeToString()),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


@pytest.mark.parametrize("given", ["id with spaces [INFO] forged", "x" * 300])
def test_an_unsafe_request_id_is_replaced(channel, given):
    request = pb.ListModelsRequest().SerializeToString()
    _, trailers = raw_call(channel, "ListModels", request, metadata=[("x-request-id", given)])
    assert trailers["x-request-id"] != given and trailers["x-request-id"].isalnum()


def test_a_safe_request_id_is_kept(channel):
    request = pb.ListModelsRequest().SerializeToString()
    _, trailers = raw_call(channel, "ListModels", request, metadata=[("x-request-id", "job-42.a")])
    assert trailers["x-request-id"] == "job-42.a"


def test_refusals_are_counted_by_code(deployment):
    samples = scrape(deployment.service_metrics)
    assert total(samples, "genserve_requests_total", code="INVALID_ARGUMENT", method="Generate") > 0
    assert total(samples, "genserve_requests_total", code="INTERNAL") == 0
    assert total(samples, "genserve_requests_total", code="UNKNOWN") == 0


def _health(target: str) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(grpc.insecure_channel(target))


def test_health_check_watch_and_list_on_both_process_kinds(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        family, service, _ = start_family(sup, tiny_repo)
        _, gateway, _ = start(sup, "genserve.gateway", "--backend", service, "--refresh-s", "0.3")
        for target in (service, gateway):
            health = _health(target)
            for name in ("", "genserve.v1.ModelService", TINY):
                assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == SERVING
            with pytest.raises(grpc.RpcError) as missing:
                health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            statuses = health.List(health_pb2.HealthListRequest()).statuses
            services = {"": SERVING, "genserve.v1.ModelService": SERVING, TINY: SERVING}
            if target == gateway:  # the gateway also speaks the Open Inference Protocol
                services["inference.GRPCInferenceService"] = SERVING
            else:  # a family service also takes the gateway's relayed calls
                services["genserve.v1.RelayService"] = SERVING
            assert {n: s.status for n, s in statuses.items()} == services
        on_service = _health(service).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        on_gateway = _health(gateway).Watch(health_pb2.HealthCheckRequest(service=TINY), timeout=60)
        assert next(on_service).status == SERVING
        assert next(on_gateway).status == SERVING
        family.popen.send_signal(signal.SIGTERM)  # the change, while both watch
        assert next(on_service).status == NOT_SERVING
        assert next(on_gateway).status == NOT_SERVING
        on_service.cancel()
        on_gateway.cancel()
