"""The request batcher: merging, bounds, deadlines, cancellation, routing.

No test bets on wall-clock timing: a test waits for a state (the graph was
entered, the queue holds N, the clock passed a deadline) and holds the graph
with a gate, never for "long enough".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from genserve.runtime.batcher import BatchPolicy, RequestBatcher
from genserve.runtime.errors import DeadlineExceeded, ResourceExhausted

pytestmark = pytest.mark.unit


class RecordingGraph:
    """A stand-in graph: y = 2x + 1 per row, recording every batch it ran."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.delay_s = delay_s
        self.gate = gate
        self.entered = threading.Event()
        """Set once a batch is running (and, with a gate, held at it)."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay_s)
        x = inputs["x"]
        self.batches.append(x.copy())
        return {"y": 2 * x + 1, "row_sum": x.sum(axis=1, keepdims=True)}


async def until(predicate, turns: int = 10_000) -> None:
    """Let the loop's other tasks run until `predicate` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the awaited state was never reached")


async def turns(count: int = 50) -> None:
    """Let the loop's other tasks take `count` turns: enough for the worker to take
    what was queued. Turns, not seconds: the order is deterministic."""
    for _ in range(count):
        await asyncio.sleep(0)


async def entered(graph: RecordingGraph) -> None:
    """Wait until the graph is running a batch."""
    assert await asyncio.to_thread(graph.entered.wait, 10), "no batch ever ran"


def make(graph, **policy) -> RequestBatcher:
    batcher = RequestBatcher(graph, BatchPolicy(**policy), model="m", graph="g")
    batcher.start()
    return batcher


async def test_concurrent_callers_each_get_exactly_their_own_rows():
    graph = RecordingGraph(delay_s=0.002)
    batcher = make(graph, max_batch_size=32, max_queue_delay_ms=5)
    rng = np.random.default_rng(0)
    requests = [
        rng.normal(size=(int(rng.integers(1, 5)), 3)).astype(np.float32) for _ in range(200)
    ]

    results = await asyncio.gather(*(batcher.submit({"x": x}) for x in requests))

    for x, out in zip(requests, results, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x + 1)
        np.testing.assert_array_equal(out["row_sum"], x.sum(axis=1, keepdims=True))
    assert sum(b.shape[0] for b in graph.batches) == sum(x.shape[0] for x in requests)
    assert len(graph.batches) < len(requests) / 4, "concurrent requests were not merged"
    assert max(b.shape[0] for b in graph.batches) <= 32
    await batcher.close()


async def test_max_batch_size_one_runs_every_request_alone():
    graph = RecordingGraph()
    batcher = make(graph, max_batch_size=1, max_queue_delay_ms=10)
    await asyncio.gather(
        *(batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(20))
    )
    assert [b.shape[0] for b in graph.batches] == [1] * 20
    await batcher.close()


async def test_with_a_fixed_delay_a_lone_request_waits_the_delay_out():
    graph = RecordingGraph()
    batcher = make(graph, max_batch_size=64, max_queue_delay_ms=50, adaptive_delay=False)
    started = time.monotonic()
    await batcher.submit({"x": np.ones((1, 2), np.float32)})
    assert time.monotonic() - started >= 0.045  # a timer never fires early
    await batcher.close()


async def test_with_the_adaptive_delay_a_lone_caller_never_waits():
    graph = RecordingGraph()
    batcher = make(graph, max_batch_size=64, max_queue_delay_ms=600_000)  # ten minutes

    async def five_calls() -> None:
        for i in range(5):
            await batcher.submit({"x": np.full((1, 2), i, np.float32)})

    await asyncio.wait_for(five_calls(), 60)  # would hang on the ten-minute delay
    assert [b.shape[0] for b in graph.batches] == [1] * 5
    await batcher.close()


async def _staggered_round(batcher: RequestBatcher, callers: int) -> None:
    """One request, then (once the worker has taken it) the others, a turn apart."""
    first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1), np.float32)}))
    await turns()
    assert batcher.queue_depth == 0
    rest = []
    for i in range(1, callers):
        rest.append(asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i, np.float32)})))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(first, *rest), 60)


async def test_the_adaptive_delay_waits_for_a_steady_crowd_and_not_for_a_lone_caller():
    # Eight callers arriving one at a time: a batcher that has seen nobody runs the
    # first alone; one that has seen batches of eight waits for all eight.
    fresh = RecordingGraph()
    batcher = make(fresh, max_batch_size=64, max_queue_delay_ms=600_000)
    await _staggered_round(batcher, callers=8)
    assert fresh.batches[0].shape[0] == 1
    await batcher.close()

    crowded = RecordingGraph()
    batcher = make(crowded, max_batch_size=64, max_queue_delay_ms=600_000)
    for _ in range(20):  # eight at once, twenty times: recent batches held eight
        await asyncio.gather(
            *(batcher.submit({"x": np.full((1, 1), i, np.float32)}) for i in range(8))
        )
    await _staggered_round(batcher, callers=8)
    assert crowded.batches[-1].shape[0] == 8
    await batcher.close()


async def test_a_request_larger_than_the_batch_runs_in_parts_of_at_most_the_cap():
    graph = RecordingGraph()
    batcher = make(graph, max_batch_size=4, max_queue_delay_ms=1)
    big = np.arange(20, dtype=np.float32).reshape(10, 2)
    out = await batcher.submit({"x": big})
    np.testing.assert_array_equal(out["y"], 2 * big + 1)
    np.testing.assert_array_equal(out["row_sum"], big.sum(axis=1, keepdims=True))
    assert [b.shape[0] for b in graph.batches] == [4, 4, 2]
    await batcher.close()


async def test_a_split_request_needs_queue_room_for_every_part():
    batcher = make(RecordingGraph(), max_batch_size=4, max_queue_size=2)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit({"x": np.zeros((9, 2), np.float32)})  # three parts
    out = await batcher.submit({"x": np.ones((8, 2), np.float32)})  # two parts fit
    assert out["y"].shape == (8, 2)
    await batcher.close()


async def test_full_queue_refuses_at_once_and_keeps_serving():
    gate = threading.Event()
    graph = RecordingGraph(gate=gate)
    batcher = make(graph, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=3)
    first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1), np.float32)}))
    await entered(graph)  # the first is now running, held at the gate
    waiting = [
        asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i, np.float32)}))
        for i in range(3)
    ]
    await until(lambda: batcher.queue_depth == 3)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        # Refused at once: queued behind the closed gate, it would never return.
        await asyncio.wait_for(batcher.submit({"x": np.zeros((1, 1), np.float32)}), 30)
    gate.set()
    await first
    results = await asyncio.gather(*waiting)
    assert [float(r["y"][0, 0]) for r in results] == [1.0, 3.0, 5.0]
    await batcher.close()


async def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed():
    gate = threading.Event()
    graph = RecordingGraph(gate=gate)
    batcher = make(graph, max_batch_size=1, max_queue_delay_ms=0)
    blocker = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1), np.float32)}))
    await entered(graph)
    deadline = time.monotonic() + 0.05
    doomed = asyncio.ensure_future(
        batcher.submit({"x": np.full((1, 1), 7, np.float32)}, deadline=deadline)
    )
    alive = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 8, np.float32)}))
    await until(lambda: batcher.queue_depth == 2)
    while time.monotonic() < deadline:  # wait for the clock to pass the deadline
        await asyncio.sleep(0.01)
    gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await doomed
    assert float((await alive)["y"][0, 0]) == 17.0
    computed = {float(b[0, 0]) for b in graph.batches}
    assert 7.0 not in computed and 8.0 in computed
    await batcher.close()


async def test_a_cancelled_request_is_removed_from_the_queue():
    gate = threading.Event()
    graph = RecordingGraph(gate=gate)
    batcher = make(graph, max_batch_size=1, max_queue_delay_ms=0)
    blocker = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1), np.float32)}))
    await entered(graph)
    leaving = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 5, np.float32)}))
    await until(lambda: batcher.queue_depth == 1)
    leaving.cancel()
    await until(lambda: batcher.queue_depth == 0)
    gate.set()
    await blocker
    await batcher.submit({"x": np.ones((1, 1), np.float32)})
    assert 5.0 not in {float(b[0, 0]) for b in graph.batches}
    await batcher.close()


async def test_a_failing_graph_fails_only_its_batch():
    calls = {"n": 0}

    def flaky(inputs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return {"y": inputs["x"] + 1}

    batcher = make(flaky, max_batch_size=8, max_queue_delay_ms=0)
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit({"x": np.zeros((1, 1), np.float32)})
    out = await batcher.submit({"x": np.zeros((1, 1), np.float32)})
    assert float(out["y"][0, 0]) == 1.0
    await batcher.close()


async def test_a_graph_returning_the_wrong_number_of_rows_fails_the_callers():
    batcher = make(lambda inputs: {"y": inputs["x"][:1]}, max_batch_size=8, max_queue_delay_ms=20)
    results = await asyncio.gather(
        batcher.submit({"x": np.zeros((2, 1), np.float32)}),
        batcher.submit({"x": np.zeros((3, 1), np.float32)}),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) and "rows" in str(r) for r in results)
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses():
    graph = RecordingGraph(delay_s=0.01)
    batcher = make(graph, max_batch_size=2, max_queue_delay_ms=0)
    pending = [
        asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i, np.float32)}))
        for i in range(6)
    ]
    await asyncio.sleep(0)
    await batcher.close()
    assert [float(p.result()["y"][0, 0]) for p in pending] == [1, 3, 5, 7, 9, 11]


def test_policy_rejects_bad_values_quoting_them():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        BatchPolicy(max_batch_size=0)
    with pytest.raises(ValueError, match="instances must be >= 1, got 0"):
        BatchPolicy(instances=0)


async def test_two_instances_run_two_batches_at_once_and_no_more():
    both = threading.Barrier(2, timeout=10)  # passes only while two batches run together
    running, most = 0, 0
    lock = threading.Lock()

    def graph(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            if inputs["x"][0, 0] < 2:  # the first two batches meet at the barrier
                both.wait()
            return {"y": 2 * inputs["x"] + 1}
        finally:
            with lock:
                running -= 1

    batcher = RequestBatcher(
        graph, BatchPolicy(max_batch_size=1, instances=2), model="m", graph="g",
        executor=concurrent.futures.ThreadPoolExecutor(4),
    )  # fmt: skip
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit({"x": np.full((1, 1), i, np.float32)}) for i in range(8))
    )
    assert [float(r["y"][0, 0]) for r in results] == [2 * i + 1 for i in range(8)]
    assert most == 2, f"{most} batches ran at once"
    await batcher.close()


async def test_a_caller_who_leaves_while_its_batch_fills_is_not_computed():
    graph = RecordingGraph()
    batcher = make(graph, max_batch_size=8, max_queue_delay_ms=200, adaptive_delay=False)
    leaving = asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 4, np.float32)}))
    await turns()  # the worker holds it as the head of a filling batch
    assert batcher.queue_depth == 0 and not leaving.done()
    leaving.cancel()
    staying = await batcher.submit({"x": np.full((1, 1), 6, np.float32)})
    assert float(staying["y"][0, 0]) == 13.0
    assert 4.0 not in {float(v) for b in graph.batches for v in b.ravel()}
    await batcher.close()
