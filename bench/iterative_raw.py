"""The ceiling for served diffusion: the family's own DDIM step on raw ONNX Runtime.

In this process, with no gRPC, no event loop, no scheduler and no tensor
encoding, one thread runs the diffusion family's batched step
(`DiffusionModel._step`: one session call over every row, then the
classifier-free guidance arithmetic and `DdimRule.step`) back to back, over a
batch that is always full: a sample that finishes is replaced at once by the
next one of the mix (steps taken in turn, as the served clients do). The
graph is opened with the same SessionOptions (provider, intra-op threads) as
the family service's.

Images/s is the steady-state rate, sample-steps/s divided by the mix's mean
steps per image, which a short run measures more steadily than counting the
few images that happen to finish in it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from genserve.families.diffusion import DiffusionModel
from genserve.runtime.model import GenerateParams, LoadContext, SamplerParams
from genserve.runtime.repository import load_config
from genserve.runtime.scheduler import Sequence as Running
from genserve.runtime.session import SessionOptions


def open_model(folder: Path, session: SessionOptions) -> DiffusionModel:
    """The family's model object for one version folder; its worker is never started."""
    return DiffusionModel(load_config(folder), LoadContext(session))


def _sample(
    model: DiffusionModel, seed: int, steps: int, guidance_scale: float, slot: int = 0
) -> Running:
    """One sample as the served Generate(num_samples 1) request `seed` would start it."""
    params = GenerateParams(
        num_samples=1,
        seed=seed,
        class_labels=np.array([seed % 10], np.int64),
        sampler=SamplerParams(steps=steps, guidance_scale=guidance_scale),
    )
    return Running(state=model.samples(params)[0], slot=slot)


def image_alone(model: DiffusionModel, seed: int, steps: int, guidance_scale: float) -> bytes:
    """The image one sample ends with when it runs alone: float32 bytes in [0, 1]."""
    batch = [_sample(model, seed, steps, guidance_scale)]
    while not model._step(batch)[0]:
        pass
    x = batch[0].state.x[None]
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0).astype(np.float32).tobytes()


def measure_batch(
    model: DiffusionModel,
    rows: int,
    mix: Sequence[int],
    guidance_scale: float,
    duration_s: float,
) -> dict[str, Any]:
    """Run full steps of `rows` rows back to back for `duration_s`; returns their rates."""
    rows_per_sample = 1 if guidance_scale == 1.0 else 2
    slots = max(rows // rows_per_sample, 1)
    seeds = itertools.count()

    def fresh(slot: int) -> Running:
        seed = next(seeds)
        return _sample(model, seed, mix[seed % len(mix)], guidance_scale, slot)

    batch = [fresh(slot) for slot in range(slots)]
    model._step(batch)  # warm up: the first call of a new shape plans its memory
    latencies, sample_steps, images = [], 0, 0
    started = time.perf_counter()
    while (now := time.perf_counter()) - started < duration_s:
        finished = model._step(batch)
        latencies.append(time.perf_counter() - now)
        sample_steps += len(batch)
        for i, is_done in enumerate(finished):
            if is_done:
                images += 1
                batch[i] = fresh(i)
    elapsed = time.perf_counter() - started
    mean_steps = sum(mix) / len(mix)
    ms = np.asarray(latencies) * 1000
    return {
        "rows": slots * rows_per_sample,
        "samples_per_step": slots,
        "steps": len(latencies),
        "steps_per_s": round(len(latencies) / elapsed, 2),
        "sample_steps_per_s": round(sample_steps / elapsed, 2),
        "images_per_s": round(sample_steps / elapsed / mean_steps, 3),
        "images_finished": images,
        "step_ms": {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
        },
    }


def measure_ceiling(
    model: DiffusionModel,
    rows_list: Sequence[int],
    mix: Sequence[int],
    guidance_scale: float,
    duration_s: float,
) -> list[dict[str, Any]]:
    """`measure_batch` at every row count."""
    return [measure_batch(model, rows, mix, guidance_scale, duration_s) for rows in rows_list]
