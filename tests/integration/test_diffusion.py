"""The diffusion family end to end: a tiny trained noise predictor behind a gateway.

Train a tiny DDPM noise predictor with the real exporter, serve it in a
diffusion family process behind a gateway, and check through the gateway:
seeded results repeat; a request's bytes are the same alone and when its
steps share batches with requests of other step counts, guidance and eta;
GenerateStream reports every step and ends with the same result; bad
sampler settings answer INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import diffusion_request, family_behind_gateway, scrape, total, train_tiny_diffusion

MODEL = "diffusion-tiny"
TIMESTEPS = 50


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    repo = tmp_path_factory.mktemp("diffusion-models")
    train_tiny_diffusion(repo, MODEL, TIMESTEPS)
    logs = tmp_path_factory.mktemp("diffusion-logs")
    with family_behind_gateway(logs, "diffusion", repo) as served:
        yield served.gateway.target, served.family.metrics


def request(seed: int, steps: int, n: int = 1, **sampler) -> pb.GenerateRequest:
    return diffusion_request(MODEL, seed, steps, n, **sampler)


async def generate(target: str, *requests: pb.GenerateRequest) -> list[bytes]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        answers = await asyncio.gather(*(stub.Generate(r, timeout=120) for r in requests))
    return [a.images.tensor.data for a in answers]


def test_a_seeded_request_gives_the_same_images_twice(deployment):
    target, _ = deployment
    first, again = asyncio.run(generate(target, request(1, 6, n=3), request(1, 6, n=3)))
    assert first == again
    images = np.frombuffer(first, np.float32).reshape(3, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0 and np.isfinite(images).all()


def test_batching_with_other_step_counts_never_changes_a_result(deployment):
    target, metrics = deployment
    probe = request(3, 8, n=2, guidance_scale=2.0, eta=0.5)
    (alone,) = asyncio.run(generate(target, probe))
    others = [
        request(4, 3),
        request(5, 12, n=3, eta=1.0),
        request(6, 5, guidance_scale=0.0),
        request(7, 8, n=2),
    ]
    together = asyncio.run(generate(target, *others, probe, *others))
    assert together[len(others)] == alone
    batch_rows = total(scrape(metrics), "genserve_step_batch_size_sum", model=MODEL)
    batches = total(scrape(metrics), "genserve_step_batch_size_count", model=MODEL)
    assert batch_rows > batches, "no step ever held more than one sample"


def test_the_stream_reports_every_step_then_the_same_result(deployment):
    target, _ = deployment
    (expected,) = asyncio.run(generate(target, request(9, 7, n=2)))
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stream = pb.GenerateStreamRequest(request=request(9, 7, n=2), preview_every_steps=3)
        events = list(stub.GenerateStream(stream, timeout=120))
    progress = [(e.progress.step, e.progress.total_steps) for e in events if e.HasField("progress")]
    assert progress == [(i, 7) for i in range(1, 8)]
    assert sum(e.HasField("preview") for e in events) == 2  # after steps 3 and 6
    assert events[-1].HasField("result")
    assert events[-1].result.images.tensor.data == expected


@pytest.mark.parametrize(
    ("sampler", "field"),
    [
        ({"steps": 0}, "sampler.steps"),
        ({"steps": TIMESTEPS + 1}, "sampler.steps"),
        ({"steps": 5, "eta": 1.5}, "sampler.eta"),
        ({"steps": 5, "guidance_scale": -1.0}, "sampler.guidance_scale"),
    ],
)
def test_bad_sampler_settings_name_the_field(deployment, sampler, field):
    target, _ = deployment
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        bad = pb.GenerateRequest(
            model_name=MODEL, num_samples=1, seed=1, sampler=pb.SamplerParams(**sampler)
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(bad, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def test_a_label_outside_the_classes_names_the_field(deployment):
    target, _ = deployment
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        bad = pb.GenerateRequest(model_name=MODEL, num_samples=1, seed=1, class_labels=[10])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(bad, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "class_labels" in caught.value.details()


def test_the_model_lists_its_family_and_calls(deployment):
    target, _ = deployment
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert (info.name, info.family, list(info.image_shape)) == (MODEL, "diffusion", [1, 28, 28])
    assert len(info.labels) == 10
