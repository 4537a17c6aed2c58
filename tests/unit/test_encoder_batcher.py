"""The token-budget batcher: buckets, the budget, bounds, deadlines, cancellation.

No test bets on wall-clock timing: a test holds the graph with a gate and
waits for a state (the graph was entered, the queue holds N), never for
"long enough".
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from genserve.runtime.errors import DeadlineExceeded, ResourceExhausted
from genserve.runtime.schema import BatchPolicy
from genserve.runtime.token_batcher import TokenBatcher, bucket_for, padded

from . import test_batcher as batcher_test
from .test_batcher import entered, until

pytestmark = pytest.mark.unit

BUCKETS = (4, 8, 16)


class RecordingGraph(batcher_test.RecordingGraph):
    """A stand-in text graph: per row (sum of its ids, its real tokens); records every run."""

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        self.batches.append(ids.shape)
        out = np.stack([(ids * mask).sum(axis=1), mask.sum(axis=1)], axis=1).astype(np.float32)
        return {"out": out}


def make(graph, **policy) -> TokenBatcher:
    batcher = TokenBatcher(
        graph, BatchPolicy(**policy), BUCKETS, output="out", model="m", graph="g"
    )
    batcher.start()
    return batcher


def text(length: int, start: int = 1) -> list[int]:
    return list(range(start, start + length))


async def held(**policy) -> tuple[threading.Event, RecordingGraph, TokenBatcher, asyncio.Task]:
    """A batcher whose graph is running one text, held at a gate: (gate, graph, batcher, task)."""
    gate = threading.Event()
    graph = RecordingGraph(gate=gate)
    batcher = make(graph, **policy)
    task = asyncio.ensure_future(batcher.submit([text(2, 100)]))
    await entered(graph)
    return gate, graph, batcher, task


def test_a_text_runs_at_the_smallest_bucket_that_holds_it():
    assert [bucket_for(n, BUCKETS) for n in (1, 4, 5, 8, 9, 16)] == [4, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError):
        bucket_for(17, BUCKETS)


def test_padding_is_zero_ids_and_a_zero_mask():
    feeds = padded([[5, 6], [7]], 4)
    assert feeds["input_ids"].tolist() == [[5, 6, 0, 0], [7, 0, 0, 0]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]


def test_the_budget_must_hold_one_text_of_the_longest_bucket():
    with pytest.raises(ValueError, match="cannot hold"):
        TokenBatcher(
            RecordingGraph(), BatchPolicy(max_batch_tokens=8), BUCKETS, output="out",
            model="m", graph="g",
        )  # fmt: skip


async def test_each_caller_gets_its_own_rows_in_order():
    graph = RecordingGraph()
    batcher = make(graph, max_batch_tokens=64, max_queue_delay_ms=5)
    rng = np.random.default_rng(0)
    requests = [
        [
            text(int(rng.integers(1, 17)), int(rng.integers(1, 50)))
            for _ in range(rng.integers(1, 6))
        ]
        for _ in range(60)
    ]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for texts, out in zip(requests, results, strict=True):
        assert out[:, 0].tolist() == [sum(t) for t in texts]
        assert out[:, 1].tolist() == [len(t) for t in texts]
    await batcher.close()


async def test_runs_hold_one_bucket_within_the_token_budget():
    gate, graph, batcher, first = await held(
        max_batch_tokens=32, max_batch_size=64, max_queue_delay_ms=1000
    )
    lengths = [3, 7, 4, 12, 2, 8, 16, 1, 5, 3, 4, 2, 9, 6]
    waiting = asyncio.ensure_future(batcher.submit([text(n) for n in lengths]))
    await until(lambda: batcher.queue_depth == len(lengths))
    gate.set()
    out = await waiting
    await first
    assert out[:, 1].tolist() == lengths
    for rows, length in graph.batches[1:]:
        assert length in BUCKETS and rows * length <= 32
    per_bucket = {b: sum(1 for n in lengths if bucket_for(n, BUCKETS) == b) for b in BUCKETS}
    ran = {b: sum(r for r, length in graph.batches[1:] if length == b) for b in BUCKETS}
    assert ran == per_bucket  # every text ran once, at its own bucket
    assert (7, 4) in graph.batches  # the seven short texts shared one run (28 of 32 tokens)
    await batcher.close()


async def test_max_batch_size_caps_rows_under_a_large_budget():
    gate, graph, batcher, first = await held(
        max_batch_tokens=4096, max_batch_size=3, max_queue_delay_ms=1000
    )
    waiting = asyncio.ensure_future(batcher.submit([text(2)] * 7))
    await until(lambda: batcher.queue_depth == 7)
    gate.set()
    await waiting
    await first
    assert [rows for rows, _ in graph.batches[1:]] == [3, 3, 1]
    await batcher.close()


async def test_the_bucket_that_waited_longest_runs_first():
    gate, graph, batcher, first = await held(max_batch_tokens=64, max_queue_delay_ms=0)
    long_one = asyncio.ensure_future(batcher.submit([text(15)]))
    await until(lambda: batcher.queue_depth == 1)
    short_ones = asyncio.ensure_future(batcher.submit([text(2)] * 3))
    await until(lambda: batcher.queue_depth == 4)
    gate.set()
    await asyncio.gather(long_one, short_ones, first)
    assert [length for _, length in graph.batches[1:]] == [16, 4]
    await batcher.close()


async def test_a_full_queue_refuses_a_request_whole():
    gate, _, batcher, first = await held(max_queue_size=4, max_batch_tokens=64)
    queued = asyncio.ensure_future(batcher.submit([text(2)] * 3))
    await until(lambda: batcher.queue_depth == 3)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await batcher.submit([text(2)] * 2)  # 3 + 2 texts > 4
    assert batcher.queue_depth == 3
    gate.set()
    await asyncio.gather(queued, first)
    await batcher.close()


async def test_a_text_whose_deadline_passed_is_not_computed():
    gate, graph, batcher, first = await held(max_batch_tokens=64)
    late = asyncio.ensure_future(batcher.submit([text(9)], deadline=time.monotonic() - 1))
    await until(lambda: batcher.queue_depth == 1)
    gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    await first
    assert all(length != 16 for _, length in graph.batches)
    await batcher.close()


async def test_a_caller_that_leaves_takes_its_texts_out_of_the_queue():
    gate, graph, batcher, first = await held(max_batch_tokens=64)
    leaving = asyncio.ensure_future(batcher.submit([text(9), text(3)]))
    await until(lambda: batcher.queue_depth == 2)
    leaving.cancel()
    await until(lambda: batcher.queue_depth == 0)
    gate.set()
    await first
    assert graph.batches == [(1, 4)]  # only the held text ever ran
    await batcher.close()
