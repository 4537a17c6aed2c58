"""One cell of the PixelCNN benchmark: closed-loop Generate clients and a measured window.

Each of `concurrency` clients sends Generate (one sample) and sends its next
request as soon as the previous one returns. Request i of a cell (counted
over all its clients) has seed i and class label i mod 10, so the cell's
requests are the same in every run. Client k starts `k * stagger_s` after
the first: a 28x28 image is 784 steps, and clients started together would
stay in step with each other and finish in bursts of `concurrency`, which a
window counts as all or nothing. Once the last client has started and
`warmup_s` more has passed, a window of `duration_s` is measured:

- requests that *complete* inside the window count, for images/s and
  latency;
- the family process's CPU time (user + system, /proc/PID/stat) and its step
  metrics (/metrics) are read at both ends of the window; every step draws one
  pixel of every running sample, so the step batch size sum is pixels drawn.

At the window's end the clients stop and calls still in flight are cancelled,
not counted (`iterative_load.run_window`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from iterative_load import Caller, Service, Window, latency_ms, run_window

from genserve.v1 import model_service_pb2 as pb

NUM_CLASSES = 10
"""Class labels cycle through 0 .. NUM_CLASSES - 1 with the seed."""


@dataclass(frozen=True)
class Load:
    """What the clients of one cell send, and how they start."""

    model: str
    concurrency: int
    stagger_s: float
    """Client k starts this many seconds after client k - 1."""
    timeout_s: float
    """Deadline of each call."""


def request(model: str, seed: int) -> pb.GenerateRequest:
    """Generate one sample with this seed, its class label the seed mod 10."""
    return pb.GenerateRequest(
        model_name=model, num_samples=1, seed=seed, class_labels=[seed % NUM_CLASSES]
    )


async def run_cell_async(
    service: Service, load: Load, warmup_s: float, duration_s: float, pixels: int
) -> dict[str, Any]:
    """Load `service` for the stagger, warmup_s and duration_s; returns the window's summary."""

    async def client(caller: Caller, k: int) -> None:
        """After k staggers, requests one after another until cancelled or out of seeds."""
        await asyncio.sleep(k * load.stagger_s)
        while (seed := caller.seed()) is not None:
            await caller.generate(request(load.model, seed), load.timeout_s)

    async def warmup() -> None:
        await asyncio.sleep((load.concurrency - 1) * load.stagger_s + warmup_s)

    window = await run_window(service, load.concurrency, client, warmup, duration_s)
    return {"stagger_s": round(load.stagger_s, 3), **summarize(window, pixels)}


def run_cell(
    service: Service, load: Load, warmup_s: float, duration_s: float, pixels: int
) -> dict[str, Any]:
    """`run_cell_async` in a fresh event loop."""
    return asyncio.run(run_cell_async(service, load, warmup_s, duration_s, pixels))


def summarize(window: Window, pixels: int) -> dict[str, Any]:
    """Images/s, latency, errors, CPU per image and pixels drawn of a window.

    Args:
        window: the cell's calls and the service's accounting at the window's ends.
        pixels: pixels drawn per image (steps per sample).
    """
    drawn = window.step_delta("genserve_step_batch_size_sum")  # a sample-step draws a pixel
    rates = window.step_rates()
    del rates["sample_steps_per_s"]  # pixels_per_s, below
    return {
        **window.throughput(4),
        "latency_ms": latency_ms([d.ended - d.started for d in window.ok]),
        **window.costs(),
        "cpu_s_per_drawn_image": round(window.cpu_s * pixels / drawn, 4) if drawn else None,
        "pixels_per_s": round(drawn / window.seconds, 1),
        "drawn_images_per_s": round(drawn / pixels / window.seconds, 4),
        **rates,
    }
