"""The load generator: percentile maths, target checks, counts and error codes."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from genserve.runtime.supervisor import free_port
from genserve.v1 import model_service_pb2, model_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import loadgen

pytestmark = pytest.mark.unit


class CannedModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Answers Generate with a canned response; every third call is RESOURCE_EXHAUSTED."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.seeds: list[int] = []
        self.delay_s = delay_s

    async def Generate(self, request, context):
        self.calls += 1
        number = self.calls
        self.seeds.append(request.seed)
        await asyncio.sleep(self.delay_s)
        if number % 3 == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full")
        return model_service_pb2.GenerateResponse(
            model_name=request.model_name, model_version="1", seed=request.seed
        )


async def start_server(servicer: CannedModelService) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def canned() -> AsyncIterator[tuple[CannedModelService, str]]:
    servicer = CannedModelService()
    server, target = await start_server(servicer)
    yield servicer, target
    await server.stop(None)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy(q: float, n: int) -> None:
    values = list(np.random.default_rng(n).exponential(10.0, size=n))
    assert loadgen.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_edges() -> None:
    assert math.isnan(loadgen.percentile([], 50))
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError, match="q must be"):
        loadgen.percentile([1.0], 101)


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("unix:/tmp/genserve.sock", True),
        ("10.0.0.5:50051", False),
        ("genserve.example.com:443", False),
        ("dns:///genserve-gateway:50051", False),
    ],
)
def test_is_loopback_target(target: str, local: bool) -> None:
    assert loadgen.is_loopback_target(target) is local


async def test_run_load_stops_at_n_requests_and_counts_errors(canned) -> None:
    servicer, target = canned
    report = await loadgen.run_load_async(
        target, "vae-fashion", concurrency=4, requests=30, warmup_requests=3
    )
    assert servicer.calls == 33
    assert report["requests"] == 30
    assert report["ok"] + report["errors"]["RESOURCE_EXHAUSTED"] == 30
    assert report["errors"] == {"RESOURCE_EXHAUSTED": 10}
    assert report["concurrency"] == 4 and report["model"] == "vae-fashion"
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["requests_per_s"] == pytest.approx(30 / report["duration_s"], rel=0.05)
    assert sorted(servicer.seeds[3:]) == list(range(30))


async def test_run_load_by_duration_ends_by_itself() -> None:
    servicer = CannedModelService(delay_s=0.01)
    server, target = await start_server(servicer)
    try:
        report = await loadgen.run_load_async(target, "m", concurrency=2, duration_s=0.3)
    finally:
        await server.stop(None)
    assert 0.3 <= report["duration_s"] < 1.0
    assert report["requests"] == servicer.calls > 5


async def test_unreachable_target_counts_unavailable() -> None:
    port = free_port()  # nothing listens there
    report = await loadgen.run_load_async(f"127.0.0.1:{port}", "m", requests=3, timeout_s=2)
    assert report["errors"] == {"UNAVAILABLE": 3}
    assert report["ok"] == 0 and report["latency_ms"]["p50"] is None


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "ends by itself"),
        ({"requests": 0}, "requests must be"),
        ({"requests": 5, "concurrency": 0}, "concurrency must be"),
        ({"requests": 5, "target": "10.1.2.3:50051"}, "not on loopback"),
    ],
)
def test_run_load_refuses_unbounded_or_remote_runs(options: dict, problem: str) -> None:
    target = options.pop("target", "127.0.0.1:1")
    with pytest.raises(ValueError, match=problem):
        loadgen.run_load(target, "m", **options)


def test_cli_requires_a_bound(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        loadgen.parse_args(["--model", "m"])
    assert "--requests or --duration-s" in capsys.readouterr().err
