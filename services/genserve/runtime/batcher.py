"""Request batching for one-shot graphs.

Requests for one graph wait in a bounded queue. One background task takes the
first waiting request, keeps filling the batch until it holds
`max_batch_size` rows or `max_queue_delay_ms` has passed since that request
arrived (or, with the adaptive delay, until as many requests have joined as
recent batches held), concatenates the inputs along the batch axis, runs the
graph off the event loop, and hands each caller back exactly its own rows.
A request bigger than `max_batch_size` is split into parts of at most that
many rows, so no session run ever exceeds the cap.

Waiting requests are taken highest priority first, oldest first (see
:mod:`genserve.runtime.priority`), so a flood of low-priority requests delays
a high-priority one by at most the batch already running.

A full queue refuses at once (ResourceExhausted); a request whose deadline has
passed while it waited is dropped, not computed (DeadlineExceeded); a caller
that is cancelled is taken out of the queue.

`BatcherBase` is what this row batcher and the token-budget batcher of text
graphs (:mod:`genserve.runtime.token_batcher`) share: the task, closing, the
queue bound, the drop rules and one run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from genserve.runtime import metrics
from genserve.runtime.errors import DeadlineExceeded, GenserveError, ResourceExhausted, Unavailable
from genserve.runtime.priority import Priority, PriorityQueue, call_priority
from genserve.runtime.schema import BatchPolicy

logger = logging.getLogger(__name__)

_EWMA_WEIGHT = 0.25  # weight of the newest batch in the requests-per-batch average

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays], Arrays]


@dataclass(eq=False)
class _Item:
    """One waiting request: its inputs, deadline and the future its caller awaits."""

    inputs: Arrays
    rows: int
    deadline: float | None
    future: asyncio.Future
    priority: Priority = Priority.NORMAL
    enqueued_at: float = field(default_factory=time.monotonic)


class BatcherBase:
    """What every request batcher shares: its task, closing, the queue bound, a run.

    A subclass keeps its own queue and says how a batch is taken from it
    (`_next_batch`), how many items wait (`queue_depth`), what the graph is
    fed (`_feeds`), how its outputs split into each item's result (`_split`),
    and what it records of a batch (`_observe`). Items carry a `future`, a
    `deadline` and `enqueued_at`.

    Args:
        run_batch: runs the graph on a batch's feeds; called in `executor`, so it may block.
        policy: batch size, delay and queue bound.
        model: the model's name, for metrics and logs.
        graph: the graph's name, for metrics and logs.
        executor: where run_batch runs; None uses the loop's default executor.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        policy: BatchPolicy,
        *,
        model: str,
        graph: str,
        executor: Executor | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.policy = policy
        self._labels = {"model": model, "graph": graph}
        self._executor = executor
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closed = False
        self._depth = metrics.QUEUE_DEPTH.labels(**self._labels)
        self._per_batch = 1.0  # moving average of items per batch, for the adaptive delay

    @property
    def queue_depth(self) -> int:
        """Items waiting now (not counting the batch being run)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the background task; call from a running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name=f"batcher-{self._labels['model']}-{self._labels['graph']}"
            )

    async def close(self) -> None:
        """Refuse new requests, finish the ones already queued, stop the task."""
        self._closed = True
        self._arrived.set()
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for item in self._drain():
            fail(item, Unavailable("the server is shutting down"))

    def _check_open_and_room(self, adding: int, unit: str) -> None:
        """Refuse at once when closed, or when `adding` more items would overfill the queue."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        if self.queue_depth + adding > self.policy.max_queue_size:
            metrics.QUEUE_DROPPED.labels(**self._labels, reason="full").inc()
            raise ResourceExhausted(
                f"{self._labels['model']}/{self._labels['graph']} queue is full "
                f"({self.policy.max_queue_size} {unit} waiting); retry later"
            )

    async def _work(self) -> None:
        """Take batches and run them, up to ``policy.instances`` at once, until closed and drained.

        The next batch is taken only once an instance is free, so what arrives
        while every instance runs waits and joins it.
        """
        free = asyncio.Semaphore(self.policy.instances)
        running: set[asyncio.Task] = set()

        def done(task: asyncio.Task) -> None:
            running.discard(task)
            free.release()

        try:
            while not (self._closed and not self.queue_depth):
                await free.acquire()
                batch = await self._next_batch()
                if not batch:
                    free.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._run(batch))
                running.add(task)
                task.add_done_callback(done)
        finally:
            await asyncio.gather(*running, return_exceptions=True)

    def _expected(self) -> int:
        """How many items recent batches held: the adaptive delay waits for as many."""
        return max(1, round(self._per_batch))

    def _taken(self, batch: list) -> list:
        """Count a filled batch in the average; keep the items still wanted."""
        self._per_batch += _EWMA_WEIGHT * (len(batch) - self._per_batch)
        # Callers may have left, or run out of time, while the batch filled.
        return [item for item in batch if self._still_wanted(item)]

    def _still_wanted(self, item) -> bool:
        return still_wanted(item, self._labels)

    async def _run(self, batch: list) -> None:
        """Run one batch and resolve or fail every future in it."""
        started = time.monotonic()
        for item in batch:
            metrics.QUEUE_DURATION.labels(**self._labels).observe(started - item.enqueued_at)
        self._observe(batch)
        try:
            feeds = self._feeds(batch)
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self._run_batch, feeds)
            results = self._split(outputs, batch)
        except Exception as exc:  # one failure fails every caller of this batch
            if not isinstance(exc, GenserveError):
                logger.exception("batch of %d items failed on %s", len(batch), self._labels)
            for item in batch:
                fail(item, exc)
            return
        finally:
            metrics.SESSION_RUN_DURATION.labels(**self._labels).observe(time.monotonic() - started)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    # -- what a subclass says ------------------------------------------------------------------

    def _drain(self) -> list:
        """Take every waiting item out of the queue (on close)."""
        raise NotImplementedError

    async def _next_batch(self) -> list:
        """Wait for the next batch; an empty one when closed and drained."""
        raise NotImplementedError

    def _observe(self, batch: list) -> None:
        """Record what the batch holds (metrics)."""

    def _feeds(self, batch: list) -> Arrays:
        """The graph's inputs for the batch."""
        raise NotImplementedError

    def _split(self, outputs: Arrays, batch: list) -> list:
        """Each item's result, in order; raise when the outputs do not fit the batch."""
        raise NotImplementedError


class RequestBatcher(BatcherBase):
    """Merges concurrent requests for one graph into batched runs (by rows).

    Takes BatcherBase's arguments; every output of `run_batch` must have as
    many rows as its inputs.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._queue: PriorityQueue[_Item] = PriorityQueue()

    @property
    def queue_depth(self) -> int:
        """Requests waiting now (not counting the batch being run)."""
        return len(self._queue)

    def _drain(self) -> list[_Item]:
        items = list(self._queue)
        self._queue.clear()
        return items

    async def submit(self, inputs: Arrays, *, deadline: float | None = None) -> Arrays:
        """Queue one request and wait for its own rows of the outputs.

        A request of more than `max_batch_size` rows is queued as parts of at
        most that many rows, each run in its own batch (the cap is what bounds
        a session's memory), and their outputs are joined in order.

        Args:
            inputs: arrays keyed by graph input name, all with the same first
                (batch) dimension.
            deadline: time.monotonic() after which the result is useless.

        Returns:
            Arrays keyed by output name, holding this request's rows only.

        Raises:
            ResourceExhausted: the queue has no room for the request's parts.
            DeadlineExceeded: the deadline passed before the request ran.
            Unavailable: the batcher is closed.
        """
        parts = _split(inputs, self.policy.max_batch_size)
        self._check_open_and_room(len(parts), "requests")
        if len(parts) == 1:
            return await self._enqueue(inputs, deadline)
        runs = [asyncio.ensure_future(self._enqueue(part, deadline)) for part in parts]
        try:
            return _concat(await asyncio.gather(*runs))
        except BaseException:
            for run in runs:  # one part failed or the caller left: the rest are not wanted
                run.cancel()
            raise

    async def _enqueue(self, inputs: Arrays, deadline: float | None) -> Arrays:
        """Queue one part of at most max_batch_size rows and await its outputs."""
        future = asyncio.get_running_loop().create_future()
        item = _Item(inputs, _rows_of(inputs), deadline, future, call_priority.get())
        self._queue.append(item)
        self._depth.set(len(self._queue))
        self._arrived.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._remove(item)
            raise

    def _remove(self, item: _Item) -> None:
        """Take a cancelled caller's item out of the queue, if still there."""
        try:
            self._queue.remove(item)
        except ValueError:
            return  # already taken into a batch; its result is dropped there
        metrics.QUEUE_DROPPED.labels(**self._labels, reason="cancelled").inc()
        self._depth.set(len(self._queue))

    async def _next_batch(self) -> list[_Item]:
        """Wait for a first live request, then fill up to size or delay.

        Whatever is already queued joins at once. Then the batch waits for more
        until `max_queue_delay_ms` after its first request arrived or, with
        the adaptive delay, until it holds as many requests as recent batches
        held: with one caller it runs at once, with eight it waits for eight.
        """
        first = await self._take_live(wait_until=None)
        if first is None:
            return []
        batch, rows = [first], first.rows
        flush_at = first.enqueued_at + self.policy.max_queue_delay_ms / 1000.0
        expected = self._expected()
        while rows < self.policy.max_batch_size:
            head = self._queue.peek()
            if head is not None and rows + head.rows > self.policy.max_batch_size:
                break  # the next request would overflow: it leads the next batch
            if not self._queue and self.policy.adaptive_delay and len(batch) >= expected:
                break  # everyone recent traffic suggests has joined
            item = await self._take_live(wait_until=flush_at)
            if item is None:
                break
            batch.append(item)
            rows += item.rows
        return self._taken(batch)

    async def _take_live(self, wait_until: float | None) -> _Item | None:
        """Pop the next request still worth running, waiting until wait_until.

        Requests whose caller left or whose deadline passed are dropped here.
        """
        while True:
            while not self._queue:
                if self._closed:
                    return None
                self._arrived.clear()
                if not await arrival(self._arrived, wait_until):
                    return None
            item = self._queue.popleft()
            self._depth.set(len(self._queue))
            if self._still_wanted(item):
                return item

    def _observe(self, batch: list[_Item]) -> None:
        metrics.BATCH_SIZE.labels(**self._labels).observe(sum(item.rows for item in batch))
        metrics.BATCH_REQUESTS.labels(**self._labels).observe(len(batch))

    def _feeds(self, batch: list[_Item]) -> Arrays:
        return _concat([item.inputs for item in batch])

    def _split(self, outputs: Arrays, batch: list[_Item]) -> list[Arrays]:
        _check_rows(outputs, sum(item.rows for item in batch))
        results, offset = [], 0
        for item in batch:
            results.append({k: v[offset : offset + item.rows] for k, v in outputs.items()})
            offset += item.rows
        return results


async def arrival(arrived: asyncio.Event, wait_until: float | None) -> bool:
    """Wait for `arrived` until wait_until (None: for ever); False when the time ran out first."""
    if wait_until is None:
        await arrived.wait()
        return True
    timeout = wait_until - time.monotonic()
    if timeout <= 0:
        return False
    try:
        await asyncio.wait_for(arrived.wait(), timeout)
    except TimeoutError:
        return False
    return True


def still_wanted(item, labels: dict[str, str]) -> bool:
    """False, after failing it, for a queued item whose caller left or deadline passed.

    `item` has a `future` and a `deadline` (time.monotonic(), or None);
    `labels` are the batcher's metric labels.
    """
    if item.future.done():
        metrics.QUEUE_DROPPED.labels(**labels, reason="cancelled").inc()
        return False
    if item.deadline is not None and time.monotonic() >= item.deadline:
        metrics.QUEUE_DROPPED.labels(**labels, reason="deadline").inc()
        fail(item, DeadlineExceeded("the deadline passed while the request was queued"))
        return False
    return True


def _rows_of(inputs: Arrays) -> int:
    """The common first dimension of the inputs."""
    sizes = {name: int(a.shape[0]) for name, a in inputs.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"inputs must share one batch dimension, got {sizes}")
    return next(iter(sizes.values()))


def _split(inputs: Arrays, rows_per_part: int) -> list[Arrays]:
    """The inputs cut along the batch axis into parts of at most rows_per_part rows."""
    rows = _rows_of(inputs)
    if rows <= rows_per_part:
        return [inputs]
    return [
        {name: a[start : start + rows_per_part] for name, a in inputs.items()}
        for start in range(0, rows, rows_per_part)
    ]


def _concat(parts: list[Arrays]) -> Arrays:
    """Concatenate each input along the batch axis."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def _check_rows(outputs: Arrays, rows: int) -> None:
    """Every output must have one row per input row."""
    bad = {name: a.shape[0] for name, a in outputs.items() if a.shape[0] != rows}
    if bad:
        raise RuntimeError(f"graph returned {bad} rows for a batch of {rows}")


def fail(item, exc: BaseException) -> None:
    """Fail a queued item's future, unless its caller already has a result or left."""
    if not item.future.done():
        item.future.set_exception(exc)
