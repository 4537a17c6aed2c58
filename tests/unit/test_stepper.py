"""The step worker: sequences of different lengths share steps, join mid-way, leave.

The fake sampler counts a value down by one per step; a gate holds a step
where a test needs the worker caught mid-way. Tests wait on states, never on
the clock (the one deadline test injects its clock).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from genserve.runtime import metrics
from genserve.runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from genserve.runtime.model import LoadContext, ServedModel
from genserve.runtime.repository import load_config
from genserve.runtime.scheduler import Sequence, StepPolicy
from genserve.runtime.session import SessionOptions
from genserve.runtime.stepper import StepWorker

from .test_repository import write_version

pytestmark = pytest.mark.unit


@dataclass
class Countdown:
    """A sequence's state: steps left, and a running total that depends only on itself."""

    left: int
    total: int = 0


class FakeSampler:
    """Decrements every sequence's count; records each step's batch; a gate can hold a step."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __call__(self, batch: list[Sequence]) -> list[bool]:
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        self.steps.append([s.state.left for s in batch])
        for s in batch:
            s.state.total += s.state.left
            s.state.left -= 1
        return [s.state.left == 0 for s in batch]


class CountingExecutor(ThreadPoolExecutor):
    """Counts the calls handed to it: one per hop of the step worker to its executor."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


async def collect(worker: StepWorker, steps: int, **options) -> tuple[Countdown, int]:
    """Run one sequence to its end: its final state and how many events it yielded."""
    events = 0
    async for seq in worker.run(Countdown(steps), **options):
        events += 1
        state = seq.state
    return state, events


@pytest.fixture
async def sampler_and_worker():
    sampler = FakeSampler()
    worker = StepWorker(sampler, StepPolicy(max_running=4, max_waiting=8), model="m", sampler="s")
    worker.start()
    yield sampler, worker
    sampler.gate.set()
    await worker.close()


async def test_sequences_of_different_lengths_share_steps_and_get_their_own_results(
    sampler_and_worker,
):
    sampler, worker = sampler_and_worker
    results = await asyncio.gather(*(collect(worker, n) for n in (3, 5, 1)))
    assert [r[0].total for r in results] == [6, 15, 1]  # 3+2+1, 5+..+1, 1: as if alone
    assert [r[1] for r in results] == [3, 5, 1]  # one event per step
    assert max(len(step) for step in sampler.steps) == 3  # they ran together
    assert len(sampler.steps) == 5  # the longest set the number of steps


@pytest.mark.parametrize("every_step", [True, False], ids=["streamed", "result-only"])
async def test_a_sequence_added_mid_way_joins_the_next_step(sampler_and_worker, every_step):
    """Also while the running one is result-only, whose steps run several to a hop."""
    sampler, worker = sampler_and_worker
    sampler.gate.clear()
    long = asyncio.ensure_future(collect(worker, 6, every_step=every_step))
    assert await asyncio.to_thread(sampler.entered.wait, 10)  # the long one's first step
    late = asyncio.ensure_future(collect(worker, 2))
    while worker.scheduler.num_waiting == 0:
        await asyncio.sleep(0)
    sampler.gate.set()
    (long_state, _), (late_state, _) = await asyncio.gather(long, late)
    assert sampler.steps[:3] == [[6], [5, 2], [4, 1]]  # joined at the second step
    assert (long_state.total, late_state.total) == (21, 3)


async def test_a_caller_that_goes_away_frees_its_slot(sampler_and_worker):
    _, worker = sampler_and_worker
    stream = worker.run(Countdown(100))
    first = await anext(stream)
    assert first.steps == 1
    await stream.aclose()  # the caller stopped reading
    state, _ = await collect(worker, 2)
    assert state.total == 3
    assert worker.scheduler.num_running == 0 and first.aborted


async def test_a_result_only_sequence_takes_its_steps_in_one_hop_to_the_executor():
    sampler = FakeSampler()
    executor = CountingExecutor(1)
    worker = StepWorker(sampler, StepPolicy(), model="m", sampler="s", executor=executor)
    worker.start()
    state, events = await collect(worker, 10, every_step=False)
    assert (state.total, events, len(sampler.steps)) == (55, 1, 10)
    assert executor.submitted == 1
    await worker.close()
    executor.shutdown()


async def test_a_result_only_caller_that_goes_away_leaves_after_the_step_under_way(
    sampler_and_worker,
):
    sampler, worker = sampler_and_worker
    sampler.gate.clear()
    task = asyncio.ensure_future(collect(worker, 100, every_step=False))
    assert await asyncio.to_thread(sampler.entered.wait, 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    sampler.gate.set()
    state, _ = await collect(worker, 2)  # runs once the cancelled one has left
    assert state.total == 3
    assert sampler.steps[0] == [100] and len(sampler.steps) == 3  # 1 step of it, 2 of the next


async def test_a_caller_that_reads_late_still_sees_every_step(sampler_and_worker):
    _, worker = sampler_and_worker
    stream = worker.run(Countdown(4))
    first = await anext(stream)
    while worker.scheduler.has_unfinished():  # the sequence runs on while nobody reads
        await asyncio.sleep(0)
    rest = [seq async for seq in stream]
    assert first.steps == 4 and len(rest) == 3  # four events, though all steps were done


async def test_a_result_only_caller_is_woken_once_and_the_gauges_empty_after(
    sampler_and_worker,
):
    _, worker = sampler_and_worker
    (state, events), (_, stepped) = await asyncio.gather(
        collect(worker, 5, every_step=False), collect(worker, 3)
    )
    assert (state.total, events, stepped) == (15, 1, 3)
    running = metrics.SEQUENCES_RUNNING.labels(model="m", sampler="s")._value.get()
    waiting = metrics.SEQUENCES_WAITING.labels(model="m", sampler="s")._value.get()
    assert (running, waiting) == (0, 0), "no sequence is left on the gauges once work stops"


async def test_a_full_waiting_queue_refuses_at_once():
    sampler = FakeSampler()
    sampler.gate.clear()
    worker = StepWorker(sampler, StepPolicy(max_running=1, max_waiting=1), model="m", sampler="s")
    worker.start()
    running = asyncio.ensure_future(collect(worker, 1))
    assert await asyncio.to_thread(sampler.entered.wait, 10)
    waiting = asyncio.ensure_future(collect(worker, 1))
    while worker.scheduler.num_waiting == 0:
        await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted):
        await anext(worker.run(Countdown(1)))
    sampler.gate.set()
    assert (await running)[0].total == 1 and (await waiting)[0].total == 1
    await worker.close()


async def test_a_passed_deadline_ends_the_sequence_at_the_next_step():
    now = [0.0]
    sampler = FakeSampler()
    worker = StepWorker(sampler, StepPolicy(), model="m", sampler="s", clock=lambda: now[0])
    worker.start()
    stream = worker.run(Countdown(100), deadline=5.0)
    await anext(stream)
    now[0] = 5.0
    with pytest.raises(DeadlineExceeded, match="after"):
        async for _ in stream:
            pass
    await worker.close()


async def test_a_deadline_passing_during_a_run_of_steps_ends_it_at_the_next_step():
    now = [0.0]
    sampler = FakeSampler()

    def step(batch: list[Sequence]) -> list[bool]:
        done = sampler(batch)
        now[0] += 1.0  # each step takes a second of the injected clock
        return done

    worker = StepWorker(step, StepPolicy(), model="m", sampler="s", clock=lambda: now[0])
    worker.start()
    with pytest.raises(DeadlineExceeded, match="after 3 steps"):
        await collect(worker, 100, deadline=3.0, every_step=False)
    assert len(sampler.steps) == 3
    await worker.close()


async def test_a_failing_step_fails_its_sequences_and_the_worker_goes_on(sampler_and_worker):
    sampler, worker = sampler_and_worker
    sampler.fail_next = True
    with pytest.raises(RuntimeError, match="boom"):
        await collect(worker, 3)
    state, _ = await collect(worker, 2)
    assert state.total == 3


async def test_a_served_model_builds_starts_and_closes_its_step_workers(tmp_path):
    config = load_config(write_version(tmp_path, stepping={"max_running": 2, "max_waiting": 9}))
    context = LoadContext(SessionOptions(), stepping_overrides={"max_waiting": 3})
    model = ServedModel(config, context)
    worker = model.stepped("countdown", FakeSampler())
    assert worker.scheduler.policy == StepPolicy(max_running=2, max_waiting=3)
    await model.start()
    state, events = await collect(worker, 3)
    assert (state.total, events) == (6, 3)
    await model.close()
    with pytest.raises(Unavailable):
        await anext(worker.run(Countdown(1)))
