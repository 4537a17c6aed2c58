"""The step scheduler: which sequences run in the next step of an iterative sampler.

Iterative samplers (diffusion steps, PixelCNN pixels, LSTM and GPT tokens)
call their network once per step. A request is one or more *sequences*; every
step is one batched session call over all running sequences, each at its own
timestep, position or state. The scheduler decides only *who* runs; it never
calls a session (in the spirit of vLLM's `v1/core/sched/interface.py`):

- `add(seq)`: a new sequence waits; a full waiting queue refuses it at once
  (RESOURCE_EXHAUSTED), so the queue never grows without bound.
- `schedule()`: called at every step boundary. Sequences that were aborted
  (caller gone) or whose deadline passed leave, freeing their slots; waiting
  ones join while slots are free, higher priority first, then in arrival
  order. Returns the next step's batch. A new sequence never waits for the
  batch to finish, only for the next step.
- `update(batch, finished, steps=1)`: after the step (or a run of steps over
  an unchanged batch), the sequences the sampler says are done leave.
- `abort(seq)`: the caller went away; the sequence leaves at the next step.

`StepPolicy.admission` says when waiting sequences may join. "step" (the
default) is the above: at every step boundary with a free slot. "request" is
request-level (static) batching, kept to measure step batching against:
waiting sequences join only when the running set is empty, so a batch runs
to its longest member's end before the next starts (a request of several
sequences joins whole if the free slots hold it, else in pieces).

The per-sequence state (the image being denoised, a KV cache) is the
sampler's and stays out of this module, so a CUDA sampler can keep it on the
device in per-slot buffers between steps; `Sequence.slot` names the running
slot a sequence holds for as long as it runs, for exactly that.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from genserve.runtime.errors import DeadlineExceeded, ResourceExhausted
from genserve.runtime.priority import Priority


class Leave(enum.Enum):
    """Why a sequence left the scheduler."""

    FINISHED = "finished"
    ABORTED = "aborted"
    DEADLINE = "deadline"


class Admission(str, enum.Enum):
    """When waiting sequences join the running set."""

    STEP = "step"
    """At every step boundary with a free slot (continuous batching)."""
    REQUEST = "request"
    """Only when the running set is empty (request-level batching, for comparison)."""


@dataclass(frozen=True)
class StepPolicy:
    """How many sequences a sampler runs and holds, and when they join."""

    max_running: int = 32
    """Sequences in one step (slots); the cap that bounds a session's memory."""
    max_waiting: int = 256
    """Sequences waiting for a slot; one more is refused with RESOURCE_EXHAUSTED."""
    admission: Admission = Admission.STEP
    """"step" (join at any step boundary) or "request" (join only an empty running set)."""

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {self.max_running}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.admission not in tuple(Admission):
            choices = ", ".join(a.value for a in Admission)
            raise ValueError(f"admission must be one of {choices}, got {self.admission!r}")
        object.__setattr__(self, "admission", Admission(self.admission))  # "step" from JSON


@dataclass(eq=False)
class Sequence:
    """One sequence of an iterative request, as the scheduler sees it."""

    state: Any
    """The sampler's own state; the scheduler never looks inside."""
    priority: Priority = Priority.NORMAL
    deadline: float | None = None
    """Clock time after which the sequence leaves unfinished."""
    slot: int | None = None
    """The running slot it holds (0..max_running-1), None while waiting."""
    steps: int = 0
    """Steps it has taken part in."""
    left: Leave | None = None
    """Why it left, once it has."""
    aborted: bool = False
    arrival: int = field(default=0, repr=False)


class StepScheduler:
    """A bounded running set and a bounded, prioritised waiting queue.

    Args:
        policy: slots and queue bound.
        clock: returns the time deadlines are compared with (time.monotonic).
    """

    def __init__(self, policy: StepPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._waiting: list[tuple[int, int, Sequence]] = []  # heap of (priority, arrival, seq)
        self._running: dict[int, Sequence] = {}  # slot -> sequence
        self._arrivals = itertools.count()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)  # a sequence that leaves is taken out at once

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished(self) -> bool:
        """Whether a next step has anything to do, or anyone to admit."""
        return bool(self._running) or self.num_waiting > 0

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; it joins at the next step boundary with a free slot.

        Raises:
            ResourceExhausted: the waiting queue is full.
        """
        if self.num_waiting >= self.policy.max_waiting:
            raise ResourceExhausted(
                f"{self.policy.max_waiting} sequences are already waiting; retry later"
            )
        seq.arrival = next(self._arrivals)
        heapq.heappush(self._waiting, (int(seq.priority), seq.arrival, seq))

    def abort(self, seq: Sequence) -> None:
        """The caller went away: the sequence leaves at the next step boundary."""
        seq.aborted = True

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        """Start the next step: who runs it, and who left since the last one.

        Returns:
            (batch, left): the running sequences in slot order, and those that
            left for an abort or a passed deadline (their `left` says which).
        """
        left = self._evict(self._running.values())
        for seq in left:
            del self._running[seq.slot]
        left += self._admit()
        return [self._running[s] for s in sorted(self._running)], left

    def update(
        self, batch: Iterable[Sequence], finished: Iterable[bool], steps: int = 1
    ) -> list[Sequence]:
        """End a step, or a run of ``steps`` steps: every sequence of the batch took them.

        The finished ones (after the last step) leave.

        Returns:
            The sequences that finished, their slots now free.
        """
        done = []
        for seq, is_done in zip(batch, finished, strict=True):
            seq.steps += steps
            if is_done and seq.left is None:
                seq.left = Leave.FINISHED
                del self._running[seq.slot]
                done.append(seq)
        return done

    def _evict(self, candidates: Iterable[Sequence]) -> list[Sequence]:
        """Mark aborted and expired sequences as gone; return them."""
        now = self._clock()
        gone = []
        for seq in list(candidates):
            if seq.left is not None:
                continue
            if seq.aborted:
                seq.left = Leave.ABORTED
            elif seq.deadline is not None and now >= seq.deadline:
                seq.left = Leave.DEADLINE
            else:
                continue
            gone.append(seq)
        return gone

    def _admit(self) -> list[Sequence]:
        """Fill free slots from the waiting queue; return the waiting ones that left.

        Under request admission nobody joins a running set that is not empty.
        """
        gone = []
        free = (s for s in range(self.policy.max_running) if s not in self._running)
        closed = self.policy.admission is Admission.REQUEST and bool(self._running)
        while not closed and self._waiting and len(self._running) < self.policy.max_running:
            *_, seq = heapq.heappop(self._waiting)
            if self._evict([seq]) or seq.left is not None:
                gone.append(seq)
                continue
            seq.slot = next(free)
            self._running[seq.slot] = seq
        gone += self._evict(seq for *_, seq in self._waiting)
        if gone:
            self._waiting = [entry for entry in self._waiting if entry[2].left is None]
            heapq.heapify(self._waiting)
        return gone


def deadline_error(seq: Sequence) -> DeadlineExceeded:
    """The error a caller whose sequence left at its deadline sees."""
    return DeadlineExceeded(f"the deadline passed after {seq.steps} steps")
