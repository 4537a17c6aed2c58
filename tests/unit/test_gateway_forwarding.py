"""How the gateway forwards a call: per-try time, retries, and what counts against a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

from genserve.gateway.backends import BackendPool, PoolConfig
from genserve.gateway.servicer import ForwardConfig, GatewayServicer
from genserve.runtime.errors import Forwarded
from genserve.v1 import model_service_pb2 as pb

from .test_backends import DEADLINE, MODEL, UNAVAILABLE, rpc_error

pytestmark = pytest.mark.unit


@dataclass
class Tries:
    """Every try any fake backend saw, in order: (target, timeout)."""

    seen: list[tuple[str, float]] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    """The seed each Generate try carried (None: none)."""


class FakeStub:
    """Serves MODEL; a try fails with the next code in `fails`, a stream after its
    first event with the next code in `breaks`."""

    def __init__(self, target: str, tries: Tries) -> None:
        self.target = target
        self.tries = tries
        self.fails: list[grpc.StatusCode] = []
        self.breaks: list[grpc.StatusCode] = []

    async def ListModels(self, request, timeout: float) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=MODEL)])

    async def Generate(self, request, timeout: float, metadata) -> pb.GenerateResponse:
        self.tries.seeds.append(request.seed if request.HasField("seed") else None)
        self._try(timeout)
        return pb.GenerateResponse()

    def GenerateStream(self, request, timeout: float, metadata) -> FakeStreamCall:
        return FakeStreamCall(self._stream(timeout))

    async def _stream(self, timeout: float):
        self._try(timeout)
        yield pb.GenerateStreamResponse()
        if self.breaks:
            raise rpc_error(self.breaks.pop(0))

    def _try(self, timeout: float) -> None:
        self.tries.seen.append((self.target, timeout))
        if self.fails:
            raise rpc_error(self.fails.pop(0))


@dataclass
class FakeStreamCall:
    """A backend's server-streaming call: its events, and whether it was cancelled."""

    events: AsyncIterator[pb.GenerateStreamResponse]
    cancelled: bool = False

    def __aiter__(self):
        return self.events.__aiter__()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


@dataclass
class FakeContext:
    """An incoming call with `remaining_s` of its deadline left (None: no deadline).

    A stream's events are what the servicer writes to it.
    """

    remaining_s: float | None = None
    written: list = field(default_factory=list)

    async def write(self, message) -> None:
        self.written.append(message)

    def time_remaining(self) -> float | None:
        return self.remaining_s

    def invocation_metadata(self) -> tuple:
        return ()


@pytest.fixture
async def pool() -> AsyncIterator[BackendPool]:
    # The fake stubs take the calls as RPCs: no relay streams.
    pool = BackendPool(["127.0.0.1:1", "127.0.0.1:2"], PoolConfig(eject_after=3), relay=False)
    tries = Tries()
    for backend in pool.backends:
        backend.stub = FakeStub(backend.target, tries)
    await pool.refresh()
    yield pool
    await pool.close()


def seen(pool: BackendPool) -> list[tuple[str, float]]:
    return pool.backends[0].stub.tries.seen


def generate(seed: int | None = None) -> pb.GenerateRequest:
    request = pb.GenerateRequest(model_name=MODEL, num_samples=1)
    if seed is not None:
        request.seed = seed
    return request


def servicer(pool: BackendPool, attempt_timeout_s: float = 30.0) -> GatewayServicer:
    return GatewayServicer(pool, ForwardConfig(attempts=3, attempt_timeout_s=attempt_timeout_s))


@pytest.mark.parametrize(("remaining_s", "expected_s"), [(None, 2.0), (10.0, 2.0), (0.5, 0.5)])
async def test_a_try_takes_at_most_the_cap_or_the_time_left(pool, remaining_s, expected_s) -> None:
    await servicer(pool, attempt_timeout_s=2.0).Generate(generate(), FakeContext(remaining_s))
    assert [timeout for _, timeout in seen(pool)] == [expected_s]


async def test_a_seeded_call_that_ran_out_of_its_try_goes_to_the_other_backend(pool) -> None:
    for backend in pool.backends:
        backend.stub.fails = [DEADLINE]
    await servicer(pool, attempt_timeout_s=2.0).Generate(generate(seed=1), FakeContext(None))
    first, second, third = (target for target, _ in seen(pool))
    assert first != second and third == first  # every backend once, then round again
    failures = {b.target: b.call_failures for b in pool.backends}
    assert failures == {first: 0, second: 1}  # the third try's answer cleared the first's


async def test_a_call_a_backend_cancelled_on_its_way_down_goes_to_the_other(pool) -> None:
    for backend in pool.backends:
        backend.stub.fails = [grpc.StatusCode.CANCELLED]
    await servicer(pool).Generate(generate(seed=1), FakeContext(None))
    targets = [target for target, _ in seen(pool)]
    assert len(targets) == 3 and targets[0] != targets[1]


async def test_an_unseeded_call_gets_a_seed_and_its_retry_the_same_one(pool) -> None:
    pool.backends[0].stub.fails = [UNAVAILABLE]
    pool.backends[1].stub.fails = [UNAVAILABLE]
    await servicer(pool).Generate(generate(), FakeContext(None))
    seeds = pool.backends[0].stub.tries.seeds
    assert len(seeds) == 3 and seeds[0] is not None and len(set(seeds)) == 1


async def test_a_callers_seed_is_passed_on_unchanged(pool) -> None:
    await servicer(pool).Generate(generate(seed=42), FakeContext(None))
    assert pool.backends[0].stub.tries.seeds == [42]


async def test_the_callers_own_deadline_is_neither_retried_nor_held_against_a_backend(pool):
    for backend in pool.backends:
        backend.stub.fails = [DEADLINE]
        backend.call_failures = 1
    with pytest.raises(Forwarded) as raised:
        await servicer(pool).Generate(generate(seed=1), FakeContext(0.3))
    assert raised.value.code == DEADLINE and len(seen(pool)) == 1
    assert [b.call_failures for b in pool.backends] == [1, 1]


async def test_an_answer_is_not_retried_and_clears_the_backends_count(pool) -> None:
    for backend in pool.backends:
        backend.stub.fails = [grpc.StatusCode.INVALID_ARGUMENT]
        backend.call_failures = 2
    with pytest.raises(Forwarded):
        await servicer(pool).Generate(generate(seed=1), FakeContext(None))
    target = seen(pool)[0][0]
    assert [b.call_failures for b in pool.backends if b.target == target] == [0]


async def test_timeouts_in_a_row_eject_a_backend(pool) -> None:
    slow = pool.backends[0]
    slow.stub.fails = [DEADLINE] * 3
    gateway = servicer(pool, attempt_timeout_s=1.0)
    for _ in range(10):  # calls alternate between the backends; each succeeds on a retry
        await gateway.Generate(generate(seed=1), FakeContext(None))
        if not slow.stub.fails:
            break
    assert pool.route(MODEL) == [pool.backends[1]]


@pytest.mark.parametrize("remaining_s", [None, 100.0])
async def test_a_stream_is_not_cut_by_the_per_try_time(pool, remaining_s) -> None:
    request = pb.GenerateStreamRequest(request=generate(seed=1))
    gateway = servicer(pool, attempt_timeout_s=2.0)
    await gateway.GenerateStream(request, FakeContext(remaining_s))
    assert [timeout for _, timeout in seen(pool)] == [remaining_s]


async def test_a_stream_is_retried_only_before_its_first_event(pool) -> None:
    request = pb.GenerateStreamRequest(request=generate(seed=1))
    for backend in pool.backends:
        backend.stub.fails = [UNAVAILABLE]
    context = FakeContext(None)
    await servicer(pool).GenerateStream(request, context)
    assert len(context.written) == 1 and len(seen(pool)) == 3
    for backend in pool.backends:
        backend.stub.breaks = [UNAVAILABLE]
    context = FakeContext(None)
    with pytest.raises(Forwarded):
        await servicer(pool).GenerateStream(request, context)
    assert len(context.written) == 1 and len(seen(pool)) == 4
