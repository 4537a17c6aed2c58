"""The step worker: drives a StepScheduler with one batched step after another.

`StepWorker.run(state)` adds a sequence and yields it after every step it
takes, until it finishes; the caller reads its advanced state (progress,
previews, the result). One background task loops while anything is
unfinished: ask the scheduler for the next batch, run the sampler's `step`
over it off the event loop, tell the scheduler which sequences finished, and
wake each sequence's caller. A caller that goes away aborts its sequence,
which leaves at the next step; one whose deadline passes gets
DEADLINE_EXCEEDED at the next step. A failing step fails only the sequences
of that step.

While no caller of the batch wants to hear about every step, the worker
takes a *run* of up to `MAX_RUN_STEPS` steps in one hop to the executor
instead of one: the hop and the event loop's bookkeeping cost about as much
as a one-pixel PixelCNN step. A run ends at the first step that finishes a
sequence, at a deadline of the batch, or as soon as anything could change
the batch (a new sequence, an abort, close), so every such event still
takes effect at the next step boundary.

The `step` callable is the sampler's: it reads and writes each sequence's
state in place (per-slot buffers; on CUDA, OrtValues bound to the device)
and returns, per sequence, whether it is done.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from genserve.runtime import metrics
from genserve.runtime.errors import Cancelled, GenserveError, Unavailable
from genserve.runtime.priority import Priority, call_priority
from genserve.runtime.scheduler import (
    Leave,
    Sequence,
    StepPolicy,
    StepScheduler,
    deadline_error,
)

logger = logging.getLogger(__name__)

Step = Callable[[list[Sequence]], list[bool]]
"""Runs one batched step over the sequences (in an executor); returns which are done."""

MAX_RUN_STEPS = 64
"""Steps one executor hop takes at most over an unchanged batch."""


@dataclass(frozen=True)
class _Stepped:
    """What a sequence's caller is woken with after a step: the sequence as it was then.

    A snapshot, not the live sequence: a caller that reads late must still
    see every step once and learn it finished from the step that finished it.
    """

    steps: int
    finished: bool


@dataclass
class _Inbox:
    """Where a sequence's caller is woken, and with what."""

    every_step: bool
    """Wake the caller after every step; False: only when the sequence ends."""
    added: float
    """Clock time the sequence was added, for time to first step."""
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class StepWorker:
    """One sampler's scheduler and the task that runs its steps.

    Args:
        step: the sampler's batched step.
        policy: slots and waiting-queue bound.
        model: the model's name, for metrics.
        sampler: the sampler's name, for metrics.
        executor: where `step` runs; None uses the loop's default executor.
        clock: the time deadlines are compared with.
    """

    def __init__(
        self,
        step: Step,
        policy: StepPolicy,
        *,
        model: str,
        sampler: str,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._step = step
        self.scheduler = StepScheduler(policy, clock)
        self._labels = {"model": model, "sampler": sampler}
        self._waiting = metrics.SEQUENCES_WAITING.labels(**self._labels)
        self._running = metrics.SEQUENCES_RUNNING.labels(**self._labels)
        self._batch_size = metrics.STEP_BATCH_SIZE.labels(**self._labels)
        self._duration = metrics.STEP_DURATION.labels(**self._labels)
        self._changed = threading.Event()
        """Set when the batch may change (an add, an abort, close): a run of steps ends."""
        self._executor = executor
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._inboxes: dict[Sequence, asyncio.Queue] = {}

    def start(self) -> None:
        """Start the step loop; call from a running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        """Refuse new sequences, let the running and waiting ones finish, stop."""
        self._closed = True
        self._changed.set()
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(
        self,
        state: Any,
        *,
        priority: Priority | None = None,
        deadline: float | None = None,
        every_step: bool = True,
    ) -> AsyncIterator[Sequence]:
        """Add a sequence; yield it after every step it takes, the last time finished.

        ``priority`` None is the priority of the call being handled.

        With ``every_step`` False it is yielded once, finished: a caller that
        only wants the result is not woken at every step.

        Raises:
            ResourceExhausted: the waiting queue is full.
            DeadlineExceeded: the deadline passed before it finished.
            Unavailable: the worker is closed.
        """
        if self._closed:
            raise Unavailable("the server is shutting down")
        if priority is None:
            priority = call_priority.get()
        seq = Sequence(state=state, priority=priority, deadline=deadline)
        self.scheduler.add(seq)
        inbox = self._inboxes[seq] = _Inbox(every_step, self._clock())
        self._gauges()
        self._changed.set()
        self._wake.set()
        try:
            while True:
                news = await inbox.queue.get()
                if not isinstance(news, _Stepped):
                    raise news
                yield seq
                if news.finished:
                    metrics.STEPS_PER_SEQUENCE.labels(**self._labels).observe(news.steps)
                    return
        finally:
            if seq.left is None:  # the caller went away (cancelled, or stopped reading)
                self.scheduler.abort(seq)
                self._changed.set()
                self._wake.set()
            self._inboxes.pop(seq, None)

    async def _work(self) -> None:
        while not (self._closed and not self.scheduler.has_unfinished()):
            if not self.scheduler.has_unfinished():
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, left = self.scheduler.schedule()
            for seq in left:
                reason = deadline_error(seq) if seq.left is Leave.DEADLINE else Cancelled("gone")
                self._tell(seq, reason)
            self._gauges()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[Sequence]) -> None:
        """One run of steps; every sequence of it is told, finished or not."""
        inboxes = [self._inboxes.get(seq) for seq in batch]
        quiet = not any(inbox is not None and inbox.every_step for inbox in inboxes)
        self._changed.clear()  # schedule() has just seen every change so far
        loop = asyncio.get_running_loop()
        try:
            steps, finished = await loop.run_in_executor(
                self._executor, self._take_steps, batch, MAX_RUN_STEPS if quiet else 1
            )
        except Exception as exc:  # fails the sequences of this step only
            if not isinstance(exc, GenserveError):
                logger.exception("a step of %d sequences failed on %s", len(batch), self._labels)
            for seq in batch:
                self.scheduler.abort(seq)
                self._tell(seq, exc)
            return
        self.scheduler.update(batch, finished, steps)
        self._gauges()  # the finished left: the gauges must not keep them once work stops
        now = self._clock()
        for seq, inbox in zip(batch, inboxes, strict=True):
            if inbox is None:
                continue
            if seq.steps == steps:  # this run took its first step
                metrics.TIME_TO_FIRST_STEP.labels(**self._labels).observe(now - inbox.added)
            done = seq.left is Leave.FINISHED
            if done or inbox.every_step:
                inbox.queue.put_nowait(_Stepped(seq.steps, done))

    def _take_steps(self, batch: list[Sequence], limit: int) -> tuple[int, list[bool]]:
        """Up to ``limit`` steps over the batch, in the executor; (steps taken, last finished).

        Stops after the first step that finishes a sequence, once the batch's
        earliest deadline has passed, or once the batch may change.
        """
        deadlines = [seq.deadline for seq in batch if seq.deadline is not None]
        soonest = min(deadlines, default=None)
        steps = 0
        while True:
            started = time.monotonic()
            finished = self._step(batch)
            self._duration.observe(time.monotonic() - started)
            self._batch_size.observe(len(batch))
            steps += 1
            if (
                steps >= limit
                or any(finished)
                or self._changed.is_set()
                or (soonest is not None and self._clock() >= soonest)
            ):
                return steps, finished

    def _tell(self, seq: Sequence, news: object) -> None:
        inbox = self._inboxes.get(seq)
        if inbox is not None:
            inbox.queue.put_nowait(news)

    def _gauges(self) -> None:
        self._waiting.set(self.scheduler.num_waiting)
        self._running.set(self.scheduler.num_running)
