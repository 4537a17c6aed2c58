"""The gateway's backend pool: health checks, ejection, channel options, flags."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from genserve.gateway.__main__ import build_parser, config_from
from genserve.gateway.backends import MIN_KEEPALIVE_S, BackendPool, PoolConfig
from genserve.gateway.servicer import ForwardConfig
from genserve.v1 import model_service_pb2 as pb

pytestmark = pytest.mark.unit

MODEL = "vae-tiny"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), code.name)


class FakeStub:
    """A backend stub whose ListModels answers with `models`, or fails with `down`."""

    def __init__(self, *models: str) -> None:
        self.models = list(models)
        self.down: grpc.StatusCode | None = None
        self.timeouts: list[float] = []

    async def ListModels(self, request, timeout: float) -> pb.ListModelsResponse:
        self.timeouts.append(timeout)
        if self.down is not None:
            raise rpc_error(self.down)
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=m) for m in self.models])


@pytest.fixture
async def pool() -> AsyncIterator[BackendPool]:
    """Two backends on unused loopback ports, each with a FakeStub serving MODEL."""
    config = PoolConfig(eject_after=3, check_timeout_s=0.7)
    pool = BackendPool(["127.0.0.1:1", "127.0.0.1:2"], config)
    for backend in pool.backends:
        backend.stub = FakeStub(MODEL)
    await pool.refresh()
    yield pool
    await pool.close()


def ejections(backend: str, reason: str) -> float:
    labels = {"backend": backend, "reason": reason}
    return REGISTRY.get_sample_value("genserve_gateway_backend_ejections_total", labels) or 0.0


def backend_up(backend: str) -> float | None:
    return REGISTRY.get_sample_value("genserve_gateway_backend_up", {"backend": backend})


async def test_failed_checks_in_a_row_eject_and_a_passing_one_readmits(pool) -> None:
    first, second = pool.backends
    assert pool.route(MODEL) and first.stub.timeouts == [0.7]
    before = ejections(first.target, "check")
    first.stub.down = grpc.StatusCode.DEADLINE_EXCEEDED
    await pool.refresh()
    await pool.refresh()  # two slow checks on a busy machine eject nothing
    assert first in pool.route(MODEL)
    await pool.refresh()
    assert pool.route(MODEL) == [second] and backend_up(first.target) == 0
    assert ejections(first.target, "check") == before + 1
    for _ in range(3):
        await pool.refresh()  # still down: counted once
    assert ejections(first.target, "check") == before + 1
    first.stub.down = None
    await pool.refresh()
    assert set(pool.route(MODEL)) == {first, second} and backend_up(first.target) == 1


async def test_a_check_answered_unavailable_ejects_at_once(pool) -> None:
    first, second = pool.backends
    before = ejections(first.target, "check")
    first.stub.down = UNAVAILABLE  # refused, dropped, or the server is draining
    await pool.refresh()
    assert pool.route(MODEL) == [second] and ejections(first.target, "check") == before + 1


async def test_failed_calls_in_a_row_eject_until_the_next_passing_check(pool) -> None:
    first, second = pool.backends
    before = ejections(first.target, "call")
    first.failed(UNAVAILABLE)
    first.failed(UNAVAILABLE)
    first.answered()  # an answer clears the count
    first.failed(UNAVAILABLE)
    await pool.refresh()  # a passing check says nothing about calls (a slow backend answers it)
    first.failed(DEADLINE)
    assert first.healthy and ejections(first.target, "call") == before
    first.failed(DEADLINE)
    assert pool.route(MODEL) == [second]
    assert ejections(first.target, "call") == before + 1
    await pool.refresh()
    assert first in pool.route(MODEL) and first.call_failures == 0


async def test_a_model_is_served_while_one_backend_serving_it_is_healthy(pool) -> None:
    first, second = pool.backends
    for _ in range(3):
        first.failed(UNAVAILABLE)
    assert pool.model_health() == {MODEL: True}
    second.stub.down = UNAVAILABLE
    for _ in range(3):
        await second.check(timeout_s=0.1)
    assert pool.model_health() == {MODEL: False} and pool.route(MODEL) == []


def test_channel_options_ping_and_cap_the_reconnect_backoff() -> None:
    config = PoolConfig(
        backend_keepalive_s=2.0, backend_keepalive_timeout_s=0.5, reconnect_max_s=0.05
    )
    options = dict(config.channel_options())
    assert options["grpc.keepalive_time_ms"] == 2000
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == 500
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_reconnect_backoff_ms"] == 50
    assert options["grpc.initial_reconnect_backoff_ms"] == 50  # never above the cap
    assert options["grpc.min_reconnect_backoff_ms"] == 2000  # the connect deadline


@pytest.mark.parametrize(
    "bad",
    [
        {"refresh_s": 0},
        {"check_timeout_s": -1},
        {"eject_after": 0},
        {"backend_keepalive_s": MIN_KEEPALIVE_S / 2},
        {"reconnect_max_s": 0},
        {"connect_timeout_s": 0},
    ],
)
def test_pool_config_refuses_a_bad_bound_naming_it(bad: dict) -> None:
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        PoolConfig(**bad)


def test_every_failover_bound_has_a_flag_defaulting_to_the_config() -> None:
    parser = build_parser()
    config = config_from(parser.parse_args(["--backend", "127.0.0.1:1"]))
    assert config.pool == PoolConfig() and config.forward == ForwardConfig()
    for cls in (PoolConfig, ForwardConfig):
        for f in dataclasses.fields(cls):
            assert f"--{f.name.replace('_', '-')}" in parser.format_help()


def test_failover_flags_reach_the_config() -> None:
    argv = ["--backend", "127.0.0.1:1", "--eject-after", "5", "--attempt-timeout-s", "2.5"]
    config = config_from(build_parser().parse_args(argv))
    assert config.pool.eject_after == 5 and config.forward.attempt_timeout_s == 2.5


@pytest.mark.parametrize(
    ("target", "relayed"),
    [
        ("127.0.0.1:50061", True),
        ("vae.genserve.svc:50061", True),
        ("[::1]:50061", True),
        ("dns:///vae.genserve.svc:50061", False),  # many pods: gRPC balances per call
        ("ipv4:10.0.0.1:50061,10.0.0.2:50061", False),
        ("unix:///run/genserve.sock", False),
    ],
)
async def test_only_a_single_address_target_gets_a_relay_stream(target, relayed):
    assert (BackendPool([target]).backends[0].relay is not None) is relayed
    assert BackendPool([target], relay=False).backends[0].relay is None
