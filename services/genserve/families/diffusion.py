"""Diffusion: a DDPM noise predictor sampled with DDIM, one batched step at a time.

Every sample is one sequence of the model's step worker: at each step, all
running samples (of any request, at any timestep, with any step count) share
one session call; the rows of guided samples run twice in it, once with
their label and once with the null label (classifier-free guidance).

The model call and the update rule are apart: `noise = graph.run(...)`, then
`x = DdimRule.step(...)`. Song et al. 2021, "Denoising Diffusion Implicit
Models", eq. 12, with the papers' symbols -> here: x_t -> ``x``,
alpha-bar_t -> ``alphas[t]``, epsilon_theta -> ``noise``, sigma_t -> ``sigma``.
Each sample draws its start and its per-step noise from its own generator,
seeded by (seed, sample index), so its result never depends on the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from genserve.runtime import sampling
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.model import (
    GENERATE,
    GENERATE_STREAM,
    GenerateParams,
    LoadContext,
    Output,
    ServedModel,
    StreamEvent,
)
from genserve.runtime.repository import ModelConfig
from genserve.runtime.scheduler import Sequence
from genserve.runtime.slots import SlotTensor

GRAPH = "noise"


class DdimRule:
    """The DDIM update from x_t to x_{t_prev}, given the predicted noise."""

    def __init__(self, alphas_cumprod: np.ndarray) -> None:
        self.alphas = alphas_cumprod.astype(np.float64)

    def alpha(self, t: np.ndarray) -> np.ndarray:
        """alpha-bar_t, with alpha-bar of "before the first step" (t = -1) equal to 1."""
        return np.where(t >= 0, self.alphas[np.maximum(t, 0)], 1.0)

    def step(
        self, x: np.ndarray, noise: np.ndarray, t: np.ndarray, t_prev: np.ndarray,
        eta: np.ndarray, z: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """x_{t_prev} for a batch of rows, each at its own t; every input is per row."""
        a_t = self.alpha(t)[:, None, None, None]
        a_prev = self.alpha(t_prev)[:, None, None, None]
        eta = eta[:, None, None, None]
        # 1. The predicted x_0, clipped to the data range [-1, 1].
        x0 = np.clip((x - np.sqrt(1 - a_t) * noise) / np.sqrt(a_t), -1.0, 1.0)
        # 2. sigma_t = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)  (eq. 16)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
        # 3. x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) noise + sigma z  (eq. 12)
        direction = np.sqrt(np.maximum(1 - a_prev - sigma**2, 0.0)) * noise
        return (np.sqrt(a_prev) * x0 + direction + sigma * z).astype(np.float32)


@dataclass(eq=False)
class Sample:
    """One sample's state between steps."""

    x: np.ndarray
    """float32 (1, 28, 28) in the model's [-1, 1] scale: x_T until the sample joins, x_0 once
    it finishes; in between x_t lives in the model's slot tensor."""
    label: int
    guidance: float
    eta: float
    timesteps: np.ndarray
    """The DDIM timesteps, descending; the sample is done after the last."""
    rng: np.random.Generator = field(repr=False)
    done_steps: int = 0
    preview_every: int = 0
    """Keep x after every this many steps (0: never), for a stream's previews."""
    previews: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    """Steps done -> x_t after them."""


class DiffusionModel(ServedModel):
    """Class-conditional DDPM noise predictor, sampled with DDIM and guidance."""

    family = "diffusion"
    calls = (GENERATE, GENERATE_STREAM)

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        super().__init__(config, context)
        schedule = config.params.get("schedule", {})
        timesteps, start, end = (schedule.get(k) for k in ("timesteps", "beta_start", "beta_end"))
        if not (timesteps and start and end and config.labels):
            raise InvalidArgument("params.schedule", f"model {config.name} lacks its schedule")
        betas = np.linspace(start, end, int(timesteps), dtype=np.float64)
        self.timesteps = int(timesteps)
        self.rule = DdimRule(np.cumprod(1.0 - betas))
        self.null_label = int(config.params.get("null_label", len(config.labels)))
        self.default_steps = int(config.params.get("default_steps", 20))
        self.default_guidance = float(config.params.get("default_guidance", 1.0))
        self._graph = context.open_graph(config, GRAPH)
        self._sampler = self.stepped("ddim", self._step)
        self._x = SlotTensor(
            self._sampler.scheduler.policy.max_running, (1, *self.image_shape[1:]), np.float32
        )

    def samples(self, params: GenerateParams) -> list[Sample]:
        """Each sample's starting state, checked against the model."""
        sampler = params.sampler
        steps = self.default_steps if sampler.steps is None else int(sampler.steps)
        if not 1 <= steps <= self.timesteps:
            raise InvalidArgument(
                "sampler.steps", f"must be between 1 and {self.timesteps}, got {steps}"
            )
        guidance = (
            self.default_guidance if sampler.guidance_scale is None else sampler.guidance_scale
        )
        eta = 0.0 if sampler.eta is None else float(sampler.eta)
        labels = params.class_labels
        if labels is None:  # spread over the classes, reproducibly from the seed
            rng = np.random.default_rng([params.seed, 1])
            labels = rng.integers(0, len(self.config.labels), params.num_samples)
        # From T-1 down to 0, evenly; distinct since steps <= T. One step starts at T-1 too.
        timesteps = np.linspace(self.timesteps - 1, 0, steps).round().astype(np.int64)
        out = []
        for i in range(params.num_samples):
            rng = np.random.default_rng([params.seed, 2, i])
            x = rng.standard_normal((1, *self.image_shape[1:]), dtype=np.float32)
            out.append(Sample(x, int(labels[i]), guidance, eta, timesteps.copy(), rng))
        return out

    def _step(self, batch: list[Sequence]) -> list[bool]:
        """One DDIM step of every running sample; runs in the executor."""
        rows: list[Sample] = [seq.state for seq in batch]
        slots = [seq.slot for seq in batch]
        joining = [i for i, r in enumerate(rows) if r.done_steps == 0]
        if joining:  # a sample's first step: x_T into its slot
            self._x.write([slots[i] for i in joining], np.stack([rows[i].x for i in joining]))
        t = np.array([r.timesteps[r.done_steps] for r in rows], np.int64)
        x = self._x.read(slots)  # (B, 1, 28, 28)
        guided = np.array([r.guidance != 1.0 for r in rows])
        labels = np.array([r.label for r in rows], np.int64)
        # Conditional rows, then an unconditional copy of each guided row, in one call.
        feeds = {
            "x": np.concatenate([x, x[guided]]),
            "t": np.concatenate([t, t[guided]]),
            "label": np.concatenate([labels, np.full(guided.sum(), self.null_label, np.int64)]),
        }
        predicted = self._graph.run(feeds)["noise"]
        noise = predicted[: len(rows)].copy()
        scale = np.array([r.guidance for r in rows], np.float32)[guided][:, None, None, None]
        unconditional = predicted[len(rows) :]
        noise[guided] = unconditional + scale * (noise[guided] - unconditional)
        t_prev = np.array([_previous(r) for r in rows], np.int64)
        eta = np.array([r.eta for r in rows], np.float64)
        z = np.stack([r.rng.standard_normal(r.x.shape, dtype=np.float32) for r in rows])
        self._x.write(slots, self.rule.step(x, noise, t, t_prev, eta, z))
        for row, slot in zip(rows, slots, strict=True):
            row.done_steps += 1
            if row.done_steps == len(row.timesteps):
                row.x = self._x.fetch(slot)
            elif row.preview_every and row.done_steps % row.preview_every == 0:
                row.previews[row.done_steps] = self._x.fetch(slot)
        return [r.done_steps == len(r.timesteps) for r in rows]

    async def generate(self, params: GenerateParams) -> Output:
        rows = self.samples(params)
        await sampling.run_all(self._sampler, rows, params.deadline)
        return Output(images=_images(rows))

    async def generate_stream(
        self, params: GenerateParams, preview_every_steps: int
    ) -> AsyncIterator[StreamEvent]:
        rows = self.samples(params)
        total = len(rows[0].timesteps)
        for row in rows:
            row.preview_every = preview_every_steps
        shown_steps = sampling.progress(self._sampler, rows, [total] * len(rows), params.deadline)
        async with contextlib.aclosing(shown_steps):  # a caller that leaves frees the slots now
            async for shown in shown_steps:
                yield StreamEvent(progress=(shown, total))
                if preview_every_steps and shown % preview_every_steps == 0 and shown < total:
                    yield StreamEvent(preview=_images([r.previews.pop(shown) for r in rows]))
        yield StreamEvent(result=Output(images=_images(rows)))


def _previous(row: Sample) -> int:
    """The timestep after this step, or -1 after the last."""
    following = row.done_steps + 1
    return int(row.timesteps[following]) if following < len(row.timesteps) else -1


def _images(rows: list[Sample] | list[np.ndarray]) -> np.ndarray:
    """Samples (or their x_t) as float32 images in [0, 1], (N, 1, 28, 28)."""
    x = np.stack([r.x if isinstance(r, Sample) else r for r in rows])
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
