"""One cell of the mixed diffusion workload: closed-loop clients and a measured window.

Each of `concurrency` clients sends Generate (one sample, a fixed guidance
scale) with its steps drawn at random from the mix (client k's draws seeded
with k), and sends its next request as soon as the previous one returns.
Drawn, not taken in turn: with turns, a client's 10-step request always
follows its 50-step one, which ends a request-level batch, so it would
arrive exactly as the next batch forms and never wait behind one; real
callers' step counts do not line up with the server's batches.
The load warms up for `warmup_s` and until every client has had one answer
(so a request-level batch of the first arrivals has ended), but never longer
than `MAX_WARMUP_FACTOR` x `warmup_s`; then a window of `duration_s` is
measured:

- requests that *complete* inside the window count, for images/s and
  latency per step count (a request is one image);
- the family process's CPU time (user + system, from /proc/PID/stat) and its
  step metrics (/metrics) are read at both ends of the window.

At the window's end the clients stop and calls still in flight are
cancelled, not counted, so a cell never outlasts warmup_s + duration_s by
more than a moment.

`run_window` (clients, a warmup, a measured window) and `Window` (what it saw)
are the part the PixelCNN cell (`bench/pixelcnn_load.py`) shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from loadgen import percentile
from prometheus_client.parser import text_string_to_metric_families

from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

MAX_REQUESTS_PER_CELL = 100_000
"""Clients stop sending after this many requests in one cell, whatever the time."""
MAX_WARMUP_FACTOR = 3.0
"""A warmup waiting for every client's first answer ends after this many warmup_s."""
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]
_STEP_METRICS = (
    "genserve_step_batch_size_sum",
    "genserve_step_batch_size_count",
    "genserve_step_duration_seconds_sum",
)


@dataclass(frozen=True)
class Workload:
    """What every client sends."""

    model: str
    mix: tuple[int, ...]
    """DDIM step counts, each request's drawn at random."""
    guidance_scale: float
    timeout_s: float
    """Deadline of each call."""


@dataclass(frozen=True)
class Service:
    """Where a family service listens and how its own accounting is read."""

    target: str
    pid: int
    metrics_url: str


@dataclass(frozen=True)
class Done:
    """One finished call."""

    steps: int
    """The request's sampler steps (0: the model's default)."""
    started: float
    ended: float
    error: str | None
    """The status code's name, None when it succeeded."""


@dataclass(frozen=True)
class Reading:
    """The service's own accounting at one moment."""

    at: float
    cpu_s: float
    step_metrics: dict[str, float]


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def step_metrics(url: str) -> dict[str, float]:
    """The step batch size and duration sums and counts, over every model and sampler."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    totals = dict.fromkeys(_STEP_METRICS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def read(service: Service) -> Reading:
    """The service's CPU time and step metrics now."""
    return Reading(
        time.perf_counter(), process_cpu_s(service.pid), step_metrics(service.metrics_url)
    )


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """The p50 and p99 of call times, in milliseconds (None without calls)."""
    if not seconds:
        return {"p50": None, "p99": None}
    return {
        "p50": round(percentile(seconds, 50) * 1000, 1),
        "p99": round(percentile(seconds, 99) * 1000, 1),
    }


class Caller:
    """What the clients of one cell share: its seeds in order and a call that is recorded."""

    def __init__(self, stub: model_service_pb2_grpc.ModelServiceStub) -> None:
        self._stub = stub
        self._seeds = itertools.count()
        self.done: list[Done] = []
        """Every call that finished, in the order they did."""

    @property
    def stub(self) -> model_service_pb2_grpc.ModelServiceStub:
        """The cell's stub, for clients whose calls `generate` does not record (streams)."""
        return self._stub

    def seed(self) -> int | None:
        """The cell's next seed; None once MAX_REQUESTS_PER_CELL were taken."""
        seed = next(self._seeds)
        return seed if seed < MAX_REQUESTS_PER_CELL else None

    async def generate(self, request: pb.GenerateRequest, timeout_s: float) -> None:
        """Send `request` and record when it started and ended, and its error."""
        started, error = time.perf_counter(), None
        try:
            await self._stub.Generate(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
        self.done.append(Done(request.sampler.steps, started, time.perf_counter(), error))


@dataclass(frozen=True)
class Window:
    """A cell's calls and the service's accounting at both ends of its measured window."""

    done: Sequence[Done]
    before: Reading
    after: Reading

    @property
    def seconds(self) -> float:
        return self.after.at - self.before.at

    @property
    def inside(self) -> list[Done]:
        """The calls that ended inside the window."""
        return [d for d in self.done if self.before.at <= d.ended < self.after.at]

    @property
    def ok(self) -> list[Done]:
        """The calls that ended inside the window with an image (a request is one)."""
        return [d for d in self.inside if d.error is None]

    @property
    def cpu_s(self) -> float:
        return self.after.cpu_s - self.before.cpu_s

    def step_delta(self, name: str) -> float:
        """How much the step metric `name` (one of `_STEP_METRICS`) grew over the window."""
        return self.after.step_metrics[name] - self.before.step_metrics[name]

    def throughput(self, digits: int) -> dict[str, Any]:
        """window_s, images and images/s (rounded to `digits`)."""
        images = len(self.ok)
        return {
            "window_s": round(self.seconds, 3),
            "images": images,
            "images_per_s": round(images / self.seconds, digits),
        }

    def costs(self) -> dict[str, Any]:
        """Errors by status code, the service's CPU seconds and its CPU seconds per image."""
        cpu_s, images = self.cpu_s, len(self.ok)
        return {
            "errors": dict(sorted(Counter(d.error for d in self.inside if d.error).items())),
            "server_cpu_s": round(cpu_s, 3),
            "cpu_s_per_image": round(cpu_s / images, 4) if images else None,
        }

    def step_rates(self) -> dict[str, Any]:
        """Steps/s, sample-steps/s, sequences per step and the step loop's busy share."""
        calls = self.step_delta("genserve_step_batch_size_count")
        sample_steps = self.step_delta("genserve_step_batch_size_sum")
        busy_s = self.step_delta("genserve_step_duration_seconds_sum")
        return {
            "step_calls_per_s": round(calls / self.seconds, 2),
            "sample_steps_per_s": round(sample_steps / self.seconds, 2),
            "sequences_per_step": round(sample_steps / calls, 2) if calls else None,
            "step_busy_share": round(busy_s / self.seconds, 3),
        }


async def run_window(
    service: Service,
    concurrency: int,
    client: Callable[[Caller, int], Awaitable[None]],
    warmup: Callable[[], Awaitable[None]],
    duration_s: float,
) -> Window:
    """Run `client(caller, k)` for k < concurrency; after `warmup()`, measure `duration_s`.

    The clients are cancelled at the window's end, calls in flight with them.
    """
    async with grpc.aio.insecure_channel(service.target, options=CHANNEL_OPTIONS) as channel:
        caller = Caller(model_service_pb2_grpc.ModelServiceStub(channel))
        clients = [asyncio.create_task(client(caller, k)) for k in range(concurrency)]
        try:
            await warmup()
            before = await asyncio.to_thread(read, service)
            await asyncio.sleep(duration_s)
            after = await asyncio.to_thread(read, service)
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    return Window(caller.done, before, after)


def _request(workload: Workload, seed: int, steps: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model_name=workload.model,
        num_samples=1,
        seed=seed,
        class_labels=[seed % 10],
        sampler=pb.SamplerParams(steps=steps, guidance_scale=workload.guidance_scale),
    )


@dataclass
class Answered:
    """Which clients have had an answer; set once all `clients` have."""

    clients: int
    seen: set[int] = field(default_factory=set)
    all: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, client: int) -> None:
        self.seen.add(client)
        if len(self.seen) == self.clients:
            self.all.set()

    async def warmup(self, warmup_s: float) -> None:
        """`warmup_s`, then until every client has had an answer, at most
        MAX_WARMUP_FACTOR x `warmup_s` in all."""
        await asyncio.sleep(warmup_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.all.wait(), (MAX_WARMUP_FACTOR - 1) * warmup_s)


async def run_cell_async(
    service: Service, workload: Workload, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Load `service` for warmup_s + duration_s; returns the window's summary."""
    answered = Answered(concurrency)

    async def client(caller: Caller, index: int) -> None:
        """Requests one after another, each with steps drawn from the mix (seeded by `index`)."""
        draws = random.Random(index)
        while (seed := caller.seed()) is not None:
            steps = draws.choice(workload.mix)
            await caller.generate(_request(workload, seed, steps), workload.timeout_s)
            answered.add(index)

    window = await run_window(
        service, concurrency, client, partial(answered.warmup, warmup_s), duration_s
    )
    return summarize(window, workload.mix, concurrency)


def run_cell(
    service: Service, workload: Workload, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """`run_cell_async` in a fresh event loop."""
    return asyncio.run(run_cell_async(service, workload, concurrency, warmup_s, duration_s))


def summarize(window: Window, mix: Sequence[int], concurrency: int) -> dict[str, Any]:
    """Images/s, latency per step count, errors, CPU per image and step metrics of a window."""
    by_steps = {}
    for steps in sorted(set(mix)):
        latencies = [d.ended - d.started for d in window.ok if d.steps == steps]
        by_steps[str(steps)] = {
            "images": len(latencies),
            "images_per_s": round(len(latencies) / window.seconds, 3),
            "latency_ms": latency_ms(latencies),
        }
    return {
        "concurrency": concurrency,
        **window.throughput(3),
        "by_steps": by_steps,
        **window.costs(),
        **window.step_rates(),
    }
