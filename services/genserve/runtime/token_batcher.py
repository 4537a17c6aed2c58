"""Request batching for text graphs by a token budget, in length buckets.

The row batcher (:mod:`genserve.runtime.batcher`) counts rows; a text graph's
cost grows with rows x padded length, so this one counts tokens, the way
text-embeddings-inference and Infinity do. Every text is one item, padded to
the smallest of the graph's length buckets that holds it, and waits in its
bucket's queue, highest priority first (:mod:`genserve.runtime.priority`). One
background task takes the bucket whose first text has the highest priority and,
among those, has waited longest, fills a batch from that bucket alone (its
texts in priority order) while it stays within
``max_batch_tokens`` padded tokens and ``max_batch_size`` rows (waiting at
most ``max_queue_delay_ms`` after the first, or, with the adaptive delay,
until as many texts have joined as recent batches held), runs the graph off
the event loop on ``input_ids`` and ``attention_mask`` of shape
(rows, bucket length), and hands each text back its own output row.

Texts of similar length share a run, so padding stays small; and a text
always runs at its bucket's length, whatever runs beside it, so a graph that
computes each row of a batch alike gives it the same bytes alone or batched.

A request's texts are queued together and answered together. The queue is
bounded in texts (``max_queue_size``): a request that does not fit is
refused at once (ResourceExhausted); a text whose deadline passed while it
waited is dropped, not computed (DeadlineExceeded); a caller that is
cancelled takes its texts out of the queue.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from genserve.runtime import metrics
from genserve.runtime.batcher import Arrays, BatcherBase, RunBatch, arrival
from genserve.runtime.priority import Priority, PriorityQueue, call_priority
from genserve.runtime.schema import BatchPolicy

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Text:
    """One waiting text: its token ids, bucket length, deadline and future."""

    ids: Sequence[int]
    length: int
    deadline: float | None
    future: asyncio.Future
    priority: Priority = Priority.NORMAL
    enqueued_at: float = field(default_factory=time.monotonic)


class TokenBatcher(BatcherBase):
    """Merges concurrent texts of one bucket into runs within a token budget.

    Args:
        run_batch: runs the graph on ``input_ids`` and ``attention_mask``
            (int64, (rows, length)); called in `executor`, so it may block.
        policy: rows, token budget, delay and queue bound; ``max_batch_tokens``
            None means the longest bucket times ``max_batch_size``.
        buckets: the padded lengths a text may run at.
        output: the graph output returned, one row per text.
        model: the model's name, for metrics and logs.
        graph: the graph's name, for metrics and logs.
        executor: where run_batch runs; None uses the loop's default executor.

    Raises:
        ValueError: the token budget cannot hold one text of the longest bucket.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        policy: BatchPolicy,
        buckets: Sequence[int],
        *,
        output: str,
        model: str,
        graph: str,
        executor: Executor | None = None,
    ) -> None:
        super().__init__(run_batch, policy, model=model, graph=graph, executor=executor)
        self.buckets = tuple(sorted(buckets))
        self.max_tokens = policy.max_batch_tokens or self.buckets[-1] * policy.max_batch_size
        if self.max_tokens < self.buckets[-1]:
            raise ValueError(
                f"max_batch_tokens {self.max_tokens} cannot hold one text of "
                f"the longest bucket ({self.buckets[-1]} tokens)"
            )
        self._output = output
        self._queues: dict[int, PriorityQueue[_Text]] = {b: PriorityQueue() for b in self.buckets}
        self._waiting = 0

    @property
    def queue_depth(self) -> int:
        """Texts waiting now (not counting the batch being run)."""
        return self._waiting

    def rows_per_run(self, length: int) -> int:
        """The most texts of one bucket length that one run may hold."""
        return max(1, min(self.policy.max_batch_size, self.max_tokens // length))

    async def submit(
        self, texts: Sequence[Sequence[int]], *, deadline: float | None = None
    ) -> np.ndarray:
        """Queue one request's tokenized texts and wait for their output rows.

        Args:
            texts: each text's token ids, special tokens included; none longer
                than the longest bucket.
            deadline: time.monotonic() after which the result is useless.

        Returns:
            The output's rows, one per text, in order.

        Raises:
            ResourceExhausted: the queue has no room for the request's texts.
            DeadlineExceeded: the deadline passed before a text ran.
            Unavailable: the batcher is closed.
        """
        self._check_open_and_room(len(texts), "texts")
        loop, priority = asyncio.get_running_loop(), call_priority.get()
        items = [
            _Text(ids, bucket_for(len(ids), self.buckets), deadline, loop.create_future(), priority)
            for ids in texts
        ]
        for item in items:
            self._queues[item.length].append(item)
        self._set_waiting(self._waiting + len(items))
        self._arrived.set()
        try:
            return np.stack(await asyncio.gather(*(item.future for item in items)))
        except BaseException:
            for item in items:  # one text failed or the caller left: the rest are not wanted
                self._remove(item)
                item.future.cancel()
            raise

    def _remove(self, item: _Text) -> None:
        """Take a left caller's text out of its queue, if still there."""
        try:
            self._queues[item.length].remove(item)
        except ValueError:
            return  # already taken into a batch (or done); its result is dropped there
        metrics.QUEUE_DROPPED.labels(**self._labels, reason="cancelled").inc()
        self._set_waiting(self._waiting - 1)

    def _set_waiting(self, count: int) -> None:
        self._waiting = count
        self._depth.set(count)

    def _drain(self) -> list[_Text]:
        items = [text for queue in self._queues.values() for text in queue]
        for queue in self._queues.values():
            queue.clear()
        self._set_waiting(0)
        return items

    def _next_bucket(self) -> int | None:
        """The bucket whose first text goes first (the highest priority, then the longest
        waited), or None when all are empty."""
        heads = [(h.priority, h.enqueued_at, b) for b, q in self._queues.items() if (h := q.peek())]
        return min(heads)[2] if heads else None

    async def _next_batch(self) -> list[_Text]:
        """Wait for a first live text, then fill from its bucket up to the budget or delay.

        Whatever of that bucket is already queued joins at once; then the
        batch waits for more until `max_queue_delay_ms` after its first text
        arrived or, with the adaptive delay, until it holds as many texts as
        recent batches held.
        """
        first = await self._take_live(None, wait_until=None)
        if first is None:
            return []
        batch, length = [first], first.length
        capacity = self.rows_per_run(length)
        flush_at = first.enqueued_at + self.policy.max_queue_delay_ms / 1000.0
        expected = self._expected()
        while len(batch) < capacity:
            queue = self._queues[length]
            if not queue and self.policy.adaptive_delay and len(batch) >= expected:
                break  # everyone recent traffic suggests has joined
            item = await self._take_live(length, wait_until=flush_at)
            if item is None:
                break
            batch.append(item)
        return self._taken(batch)

    async def _take_live(self, length: int | None, wait_until: float | None) -> _Text | None:
        """Pop the next text still worth running, of bucket ``length`` (None: the next bucket).

        Waits until wait_until (None: for ever) for one to arrive. Texts whose
        caller left or whose deadline passed are dropped here.
        """
        while True:
            bucket = self._next_bucket() if length is None else length
            while bucket is None or not self._queues[bucket]:
                if self._closed and not self._waiting:
                    return None
                self._arrived.clear()
                if not await arrival(self._arrived, wait_until):
                    return None
                bucket = self._next_bucket() if length is None else length
            item = self._queues[bucket].popleft()
            self._set_waiting(self._waiting - 1)
            if self._still_wanted(item):
                return item

    def _observe(self, batch: list[_Text]) -> None:
        rows, length = len(batch), batch[0].length
        metrics.BATCH_SIZE.labels(**self._labels).observe(rows)
        metrics.BATCH_TOKENS.labels(**self._labels, kind="padded").observe(rows * length)
        real = sum(len(item.ids) for item in batch)
        metrics.BATCH_TOKENS.labels(**self._labels, kind="real").observe(real)

    def _feeds(self, batch: list[_Text]) -> Arrays:
        return padded([item.ids for item in batch], batch[0].length)

    def _split(self, outputs: Arrays, batch: list[_Text]) -> list[np.ndarray]:
        rows = outputs[self._output]
        if rows.shape[0] != len(batch):
            raise RuntimeError(f"graph returned {rows.shape[0]} rows for {len(batch)} texts")
        return list(rows)


def bucket_for(tokens: int, buckets: Sequence[int]) -> int:
    """The smallest of ``buckets`` (sorted ascending) that holds ``tokens`` tokens.

    Raises:
        ValueError: no bucket is long enough.
    """
    i = bisect.bisect_left(buckets, tokens)
    if i == len(buckets):
        raise ValueError(f"{tokens} tokens exceed the longest bucket {buckets[-1]}")
    return buckets[i]


def padded(texts: Sequence[Sequence[int]], length: int) -> Arrays:
    """``input_ids`` and ``attention_mask`` (int64, (len(texts), length)), padded with 0."""
    ids = np.zeros((len(texts), length), np.int64)
    mask = np.zeros((len(texts), length), np.int64)
    for i, row in enumerate(texts):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
