"""A request's samples on a step worker: one sequence each, run together, progress counted.

Iterative families (diffusion, PixelCNN, and the text families) turn a
request into one state per sample and hand them here. :func:`run_all` runs
them to the end (Generate, Complete); :func:`each_step` yields (sample,
finished) after every step of every sample (the text families stream each
sample's new text from it); :func:`progress` yields the request's progress,
step i of N, as every sample has taken i steps (GenerateStream of images).
Either way, when one sample fails or the caller goes away, the request's
other samples are aborted and leave at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from genserve.runtime.stepper import StepWorker


async def run_all(worker: StepWorker, states: Sequence[Any], deadline: float | None) -> None:
    """Run every state on the worker until all have finished; nobody is woken per step."""
    tasks = [asyncio.ensure_future(_finish(worker, state, deadline)) for state in states]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # a sample failed or the caller left: the rest are not wanted
            task.cancel()


async def _finish(worker: StepWorker, state: Any, deadline: float | None) -> None:
    async for _ in worker.run(state, deadline=deadline, every_step=False):
        pass


async def each_step(
    worker: StepWorker, states: Sequence[Any], deadline: float | None
) -> AsyncIterator[tuple[int, bool]]:
    """Run the states together; yield (index, finished) after each step of each.

    Ends once every state has finished; a failure of any raises here.
    """
    news: asyncio.Queue = asyncio.Queue()
    tasks = [
        asyncio.ensure_future(_run_one(worker, state, deadline, news, i))
        for i, state in enumerate(states)
    ]
    try:
        unfinished = len(states)
        while unfinished:
            item = await news.get()
            if isinstance(item, BaseException):
                raise item
            unfinished -= item[1]
            yield item
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # a sample failed or the caller left: the rest are not wanted
            task.cancel()


async def progress(
    worker: StepWorker, states: Sequence[Any], totals: Sequence[int], deadline: float | None
) -> AsyncIterator[int]:
    """Run the states together; yield 1 .. max(totals) as every sample reaches that step.

    Args:
        worker: the sampler's step worker.
        states: one per sample, each taking at least one step.
        totals: each sample's number of steps; a sample that finished counts
            as having taken every later step.
        deadline: time.monotonic() after which the samples leave unfinished.
    """
    total = max(totals, default=0)
    taken = [0] * len(states)
    shown = 0
    async for index, finished in each_step(worker, states, deadline):
        taken[index] = totals[index] if finished else taken[index] + 1
        while shown < min(min(taken), total):
            shown += 1
            yield shown


async def _run_one(
    worker: StepWorker, state: Any, deadline: float | None, news: asyncio.Queue, index: int
) -> None:
    """Run one state; tell `news` (index, False) after every step, (index, True) at the end."""
    try:
        async for _ in worker.run(state, deadline=deadline):
            news.put_nowait((index, False))
        news.put_nowait((index, True))
    except Exception as exc:
        news.put_nowait(exc)
        raise
