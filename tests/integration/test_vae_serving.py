"""The VAE end to end: real family service and gateway processes, called with the SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from genserve.client import (
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
)
from genserve.exporters.data import load_fashion_mnist
from genserve.runtime.repository import load_config, sha256_of

from .conftest import ROOT, TINY, scrape, total


@pytest.fixture(scope="module")
def client(deployment):
    with Client(deployment.gateway, timeout_s=30) as c:
        yield c


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return load_fashion_mnist("test").images[:32]


def test_the_tiny_model_was_exported_with_a_checked_card(model_repo):
    config = load_config(model_repo / TINY / "1")
    card = config.card
    assert card.parity["max_abs_diff"] <= 1e-4
    assert card.seed == 0 and "genserve.exporters.vae" in card.command
    for name, entry in card.files.items():
        assert sha256_of(config.path / name) == entry.sha256


@pytest.mark.parametrize("model", [TINY, "vae-fashion"])
def test_generate_returns_16_images_in_unit_range(client, model):
    result = client.generate(model, 16, seed=1)
    assert result.images.shape == (16, 1, 28, 28)
    assert result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert result.seed == 1 and result.model_version == "1"


def test_same_seed_same_bytes_other_seed_differs(client):
    first = client.generate(TINY, 16, seed=7).images
    again = client.generate(TINY, 16, seed=7).images
    other = client.generate(TINY, 16, seed=8).images
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_unseeded_generate_reports_a_seed_that_reproduces_it(client):
    result = client.generate(TINY, 4)
    replay = client.generate(TINY, 4, seed=result.seed)
    assert result.images.tobytes() == replay.images.tobytes()


def test_seeded_samples_do_not_depend_on_what_else_is_in_the_batch(client):
    alone = client.generate(TINY, 3, seed=11).images
    with ThreadPoolExecutor(16) as pool:
        crowd = list(pool.map(lambda s: client.generate(TINY, 3, seed=s).images, range(5, 37)))
    assert crowd[11 - 5].tobytes() == alone.tobytes()


def test_generate_stream_ends_with_the_same_result_as_generate(client):
    events = list(client.generate_stream(TINY, 4, seed=9))
    assert events, "the stream sent nothing"
    final = events[-1]
    assert final.images.tobytes() == client.generate(TINY, 4, seed=9).images.tobytes()


def test_png_output_decodes_to_the_same_pixels(client):
    tensor = client.generate(TINY, 4, seed=3).images
    pngs = client.generate(TINY, 4, seed=3, output_format="png").pngs
    assert len(pngs) == 4
    import io

    decoded = np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in pngs]) / 255.0
    assert np.abs(decoded - tensor[:, 0]).max() <= 0.5 / 255 + 1e-6


def test_encode_then_decode_reconstructs_test_images(client, test_images):
    encoding = client.encode("vae-fashion", test_images)
    assert encoding.embeddings.shape == (32, 16) and encoding.log_variance.shape == (32, 16)
    decoded = client.decode("vae-fashion", encoding.embeddings).images
    mse = ((decoded - test_images) ** 2).mean(axis=(1, 2, 3))
    shuffled = ((decoded - np.roll(test_images, 1, axis=0)) ** 2).mean(axis=(1, 2, 3))
    assert mse.mean() < 0.02, f"reconstruction MSE {mse.mean():.4f}"
    assert mse.mean() < 0.5 * shuffled.mean(), "reconstructions are not image-specific"
    recon = client.reconstruct("vae-fashion", test_images).images
    np.testing.assert_allclose(recon, decoded, atol=1e-5)


def test_the_tiny_model_reconstructs_each_image_better_than_others(client, test_images):
    decoded = client.reconstruct(TINY, test_images).images
    own = ((decoded - test_images) ** 2).mean()
    other = ((decoded - np.roll(test_images, 1, axis=0)) ** 2).mean()
    assert own < other


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.generate(TINY, 0, seed=1), "num_samples"),
        (lambda c: c.generate(TINY, 257, seed=1), "num_samples"),
        (lambda c: c.generate(TINY, 2, latents=np.full((2, 16), np.nan, np.float32)), "latents"),
        (lambda c: c.generate(TINY, 2, latents=np.zeros((2, 15), np.float32)), "latents.shape"),
        (lambda c: c.decode(TINY, np.array([[np.inf] * 16], np.float32)), "latents"),
        (lambda c: c.encode(TINY, np.zeros((2, 1, 27, 27), np.float32)), "images.tensor.shape"),
        (lambda c: c.reconstruct(TINY, np.full((1, 1, 28, 28), 2.0, np.float32)), "images.tensor"),
        (lambda c: c.generate(TINY, 1, seed=1, top_p=1.5), "sampler.top_p"),
        (lambda c: c.encode(TINY, texts=["a shirt"]), "texts"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(client, call, field):
    with pytest.raises(InvalidArgumentError) as caught:
        call(client)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert client.generate(TINY, 2, seed=5).images.shape == (2, 1, 28, 28)


def test_unknown_model_is_not_found_naming_it(client):
    with pytest.raises(NotFoundError, match="no-such-model"):
        client.generate("no-such-model", 1, seed=1)
    assert client.generate(TINY, 1, seed=1).images.shape == (1, 1, 28, 28)


def test_unsupported_call_is_unimplemented_naming_model_and_call(client, test_images):
    with pytest.raises(UnimplementedError, match=r"vae-tiny.*Complete"):
        client.complete(TINY, test_images[:1], np.ones((1, 1, 28, 28), np.float32), seed=1)


def test_an_expired_deadline_is_deadline_exceeded(client):
    with pytest.raises(DeadlineExceededError):
        client.generate(TINY, 256, seed=1, timeout_s=0.0005)


def test_list_and_describe_through_the_gateway(client):
    models = {m.name: m for m in client.list_models()}
    assert {TINY, "vae-fashion"} <= models.keys()
    assert models[TINY].family == "vae"
    assert {"Generate", "Encode", "Decode", "Reconstruct"} <= set(models[TINY].calls)
    described = client.describe_model("vae-fashion")
    assert described.config["card"]["metrics"]["test_negative_elbo_nats"] > 0
    assert {g.name for g in described.graphs} == {"encoder", "decoder"}


@pytest.mark.parametrize("where", ["service", "gateway"])
def test_health_and_reflection_on_every_process(deployment, where):
    with grpc.insecure_channel(getattr(deployment, where)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert "genserve.v1.ModelService" in names and "grpc.health.v1.Health" in names


@pytest.mark.parametrize("where", ["service", "gateway"])
def test_every_model_has_its_own_health_status(deployment, where):
    with grpc.insecure_channel(getattr(deployment, where)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for model in (TINY, "vae-fashion"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=model), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, model
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_move_when_traffic_flows(deployment, client):
    before_service = scrape(deployment.service_metrics)
    before_gateway = scrape(deployment.gateway_metrics)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: client.generate(TINY, 1, seed=s), range(64)))
    service = scrape(deployment.service_metrics)
    gateway = scrape(deployment.gateway_metrics)

    def moved(after, before, name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    ok = {"method": "Generate", "model": TINY, "code": "OK"}
    assert moved(service, before_service, "genserve_requests_total", **ok) >= 64
    assert moved(gateway, before_gateway, "genserve_requests_total", **ok) >= 64
    for after, before in ((service, before_service), (gateway, before_gateway)):
        count = moved(after, before, "genserve_request_duration_seconds_count", model=TINY)
        assert count >= 64
    labels = {"model": TINY, "graph": "decoder"}
    runs = moved(service, before_service, "genserve_batch_size_count", **labels)
    rows = moved(service, before_service, "genserve_batch_size_sum", **labels)
    assert rows >= 64 and 1 <= runs <= rows  # merging itself: test_batching.py
    assert moved(service, before_service, "genserve_queue_duration_seconds_count", **labels) >= 64
    assert ("genserve_queue_depth", tuple(sorted(labels.items()))) in service
    assert total(gateway, "genserve_gateway_backend_up") == 1
    assert moved(service, before_service, "genserve_samples_generated_total", model=TINY) >= 64


def test_errors_are_counted_by_code(deployment, client):
    before = scrape(deployment.service_metrics)
    with pytest.raises(InvalidArgumentError):
        client.generate(TINY, 0, seed=1)
    after = scrape(deployment.service_metrics)
    labels = {"method": "Generate", "model": TINY, "code": "INVALID_ARGUMENT"}
    assert (
        total(after, "genserve_requests_total", **labels)
        - total(before, "genserve_requests_total", **labels)
        == 1
    )


def genserve_cli(deployment, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "genserve.client.cli", "--addr", deployment.gateway, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_models_json(deployment):
    done = genserve_cli(deployment, "models", "--json")
    assert done.returncode == 0, done.stderr
    models = {m["name"]: m for m in json.loads(done.stdout)}
    assert models["vae-fashion"]["family"] == "vae"
    assert models["vae-fashion"]["version"] == "1"
    assert "Generate" in models["vae-fashion"]["calls"]


def test_cli_generate_writes_a_png_grid(deployment, tmp_path):
    out = tmp_path / "grid.png"
    done = genserve_cli(deployment, "generate", "--model", "vae-fashion", "-n", "16",
                        "--seed", "1", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as grid:
        width, height = grid.size
    assert width >= 4 * 28 and height >= 4 * 28


def test_cli_bad_input_prints_one_line_and_exits_nonzero(deployment, tmp_path):
    done = genserve_cli(deployment, "generate", "--model", "vae-fashion", "-n", "0",
                        "-o", str(tmp_path / "x.png"))  # fmt: skip
    assert done.returncode != 0
    assert "INVALID_ARGUMENT" in done.stderr and "num_samples" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_request_bigger_than_the_batch_cap_runs_in_batches_within_it(deployment, client):
    labels = {"model": "vae-fashion", "graph": "decoder"}
    before = scrape(deployment.service_metrics)
    result = client.generate("vae-fashion", 256, seed=4)  # max_batch_size is 64
    after = scrape(deployment.service_metrics)
    assert result.images.shape == (256, 1, 28, 28)

    def moved(name: str, **extra: str) -> float:
        return total(after, name, **labels, **extra) - total(before, name, **labels, **extra)

    assert moved("genserve_batch_size_sum") == 256
    assert moved("genserve_batch_size_count") >= 4
    assert moved("genserve_batch_size_bucket", le="64.0") == moved("genserve_batch_size_count")
    same = client.generate("vae-fashion", 256, seed=4).images
    assert same.tobytes() == result.images.tobytes()
