"""Call priority: parsing the metadata, the queue's order, and the request batcher under a
low-priority flood. No test waits on time: the graph is held at a gate."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from genserve.runtime.batcher import BatchPolicy, RequestBatcher
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.priority import (
    Priority,
    PriorityQueue,
    ask_priority,
    call_priority,
    parse_priority,
    priority_cap,
)

from .test_batcher import until
from .test_encoder_batcher import held, text

pytestmark = pytest.mark.unit


def test_metadata_values_parse_and_a_bad_one_names_the_key():
    assert parse_priority(None) is Priority.NORMAL
    assert parse_priority("High") is Priority.HIGH
    with pytest.raises(InvalidArgument, match="x-priority: must be one of high, normal, low"):
        parse_priority("urgent")


@dataclass(eq=False)
class Job:
    name: str
    priority: Priority


def test_the_queue_gives_the_oldest_of_the_highest_level_first():
    queue: PriorityQueue[Job] = PriorityQueue()
    jobs = [Job("l1", Priority.LOW), Job("n1", Priority.NORMAL), Job("h1", Priority.HIGH)]
    jobs += [Job("n2", Priority.NORMAL), Job("h2", Priority.HIGH)]
    for job in jobs:
        queue.append(job)
    queue.remove(jobs[3])
    assert queue.peek().name == "h1" and len(queue) == 4
    assert [queue.popleft().name for _ in range(4)] == ["h1", "h2", "n1", "l1"]
    assert queue.peek() is None and not queue


async def test_a_high_priority_request_waits_behind_a_low_flood_for_one_batch_at_most():
    gate, entered, batches = threading.Event(), threading.Event(), []

    def graph(inputs):
        entered.set()
        gate.wait(10)
        batches.append(inputs["x"][:, 0].tolist())
        return {"y": inputs["x"]}

    batcher = RequestBatcher(
        graph, BatchPolicy(max_batch_size=2, max_queue_delay_ms=0), model="m", graph="g"
    )
    batcher.start()

    async def send(value: float, priority: Priority):
        call_priority.set(priority)  # as the interceptor does for the call's task
        return await batcher.submit({"x": np.full((1, 1), value, np.float32)})

    first = asyncio.ensure_future(send(0, Priority.LOW))
    assert await asyncio.to_thread(entered.wait, 10)  # batch [0] holds the graph
    flood = [asyncio.ensure_future(send(i, Priority.LOW)) for i in range(1, 9)]
    await asyncio.sleep(0)
    urgent = asyncio.ensure_future(send(99, Priority.HIGH))
    for _ in range(20):  # let every submit reach the queue
        await asyncio.sleep(0)
    assert batcher.queue_depth == 9
    gate.set()
    await asyncio.gather(first, urgent, *flood)
    assert batches[0] == [0]
    assert 99 in batches[1], f"the high-priority request ran in batch {batches}"
    await batcher.close()


def test_a_call_asks_for_a_priority_and_gets_at_most_its_cap():
    def ask(cap: Priority, asked: Priority) -> Priority:
        priority_cap.set(cap)
        return ask_priority(asked), call_priority.get()

    context = contextvars.copy_context()
    assert context.run(ask, Priority.NORMAL, Priority.HIGH) == (Priority.NORMAL,) * 2
    assert context.run(ask, Priority.NORMAL, Priority.LOW) == (Priority.LOW,) * 2
    assert contextvars.copy_context().run(ask, Priority.HIGH, Priority.HIGH)[0] is Priority.HIGH


def test_triton_s_request_priority_maps_onto_the_levels():
    from genserve.gateway.oip_params import triton_priority

    assert triton_priority(0) is None  # the default: the call keeps its own
    assert [triton_priority(n) for n in (1, 2, 3, 99)] == [
        Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.LOW,
    ]  # fmt: skip


async def test_the_token_batcher_runs_a_high_priority_bucket_before_older_low_ones():
    gate, graph, batcher, first = await held(max_batch_tokens=16, max_queue_delay_ms=0)

    async def send(length: int, priority: Priority):
        call_priority.set(priority)
        return await batcher.submit([text(length)])

    flood = [asyncio.ensure_future(send(3, Priority.LOW)) for _ in range(4)]  # bucket 4
    await until(lambda: batcher.queue_depth == 4)
    urgent = asyncio.ensure_future(send(7, Priority.HIGH))  # bucket 8, arrived last
    await until(lambda: batcher.queue_depth == 5)
    gate.set()
    await asyncio.gather(first, urgent, *flood)
    assert graph.batches[1] == (1, 8), f"runs: {graph.batches}"  # before the older bucket 4
    await batcher.close()
