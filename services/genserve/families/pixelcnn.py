"""PixelCNN: a class-conditional autoregressive model, sampled one pixel per step.

Every sample is one sequence of the model's step worker; a step draws the
next unknown pixel, in raster order, of every running sample (of any
request, at any position) in one batch. Generate draws every pixel;
Complete draws only the pixels its mask marks unknown and keeps every known
pixel exactly as sent.

Two samplers give the same images for the same seed (see the exporter's
``pixelcnn_model`` for the graphs):

- ``fast`` (the default): ``rows`` runs the vertical stack once per row of a
  sample, on the window of rows above it that its receptive field reaches
  (``params.rows_window``), and ``pixels`` runs the one-row horizontal stack
  once per pixel;
- ``naive``: ``pixelcnn``, the whole network on the whole image, once per pixel.

A pixel's level is drawn by inverse CDF from one uniform number of the
sample's own generator, seeded by (seed, sample index), so a result never
depends on the batch it ran in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from genserve.runtime import sampling
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.model import (
    COMPLETE,
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

SAMPLERS = ("fast", "naive")


@dataclass(eq=False)
class Canvas:
    """One sample's image while it is drawn."""

    levels: np.ndarray
    """int64 (H, W): the grey level of every pixel; unknown ones are 0 until drawn."""
    order: np.ndarray
    """Flat indices of the pixels to draw, in raster order."""
    label: int
    rng: np.random.Generator = field(repr=False)
    drawn: int = 0
    links: np.ndarray | None = field(default=None, repr=False)
    """The fast sampler's per-row input from the vertical stack: (layers, 2C, W)."""
    links_row: int = -1
    """The row `links` belongs to."""
    preview_every: int = 0
    previews: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    """Pixels drawn -> levels after them, every `preview_every` pixels."""

    def position(self) -> tuple[int, int]:
        """(row, column) of the next pixel to draw."""
        return divmod(int(self.order[self.drawn]), self.levels.shape[1])


class PixelCnnModel(ServedModel):
    """Class-conditional gated PixelCNN over a few grey levels."""

    family = "pixelcnn"
    calls = (GENERATE, GENERATE_STREAM, COMPLETE)

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        super().__init__(config, context)
        self.levels = int(config.params.get("levels", 0))
        sampler = config.params.get("sampler", "fast")
        if self.levels < 2 or not config.labels or len(self.image_shape) != 3:
            raise InvalidArgument("params", f"model {config.name} lacks levels, labels or shape")
        if sampler not in SAMPLERS:
            raise InvalidArgument("params.sampler", f"must be one of {SAMPLERS}, got {sampler!r}")
        self.sampler = sampler
        self.rows_window = int(config.params.get("rows_window", self.image_shape[1]))
        if sampler == "fast":
            self._rows = context.open_graph(config, "rows")
            self._pixels = context.open_graph(config, "pixels")
            self._worker = self.stepped("fast", self._fast_step)
        else:
            self._whole = context.open_graph(config, "pixelcnn")
            self._worker = self.stepped("naive", self._naive_step)

    # -- requests -----------------------------------------------------------------------------

    async def generate(self, params: GenerateParams) -> Output:
        blank = self._blank(params.num_samples)
        return await self.complete(blank, blank, params)

    async def generate_stream(
        self, params: GenerateParams, preview_every_steps: int
    ) -> AsyncIterator[StreamEvent]:
        blank = self._blank(params.num_samples)  # nothing known: every pixel is drawn
        canvases = self.canvases(blank, blank, params)
        total = blank[0, 0].size
        for canvas in canvases:
            canvas.preview_every = preview_every_steps
        shown_steps = sampling.progress(
            self._worker, canvases, [total] * len(canvases), params.deadline
        )
        async with contextlib.aclosing(shown_steps):  # a caller that leaves frees the slots now
            async for shown in shown_steps:
                yield StreamEvent(progress=(shown, total))
                if preview_every_steps and shown % preview_every_steps == 0 and shown < total:
                    previews = [c.previews.pop(shown) for c in canvases]
                    yield StreamEvent(preview=self._intensities(np.stack(previews)))
        yield StreamEvent(result=Output(images=self._result(canvases, blank, blank)))

    async def complete(
        self, images: np.ndarray, mask: np.ndarray, params: GenerateParams
    ) -> Output:
        canvases = self.canvases(images, mask, params)
        drawing = [c for c in canvases if len(c.order)]  # a full mask leaves nothing to draw
        if drawing:
            await sampling.run_all(self._worker, drawing, params.deadline)
        return Output(images=self._result(canvases, images, mask))

    def canvases(
        self, images: np.ndarray, mask: np.ndarray, params: GenerateParams
    ) -> list[Canvas]:
        """Each sample's starting canvas: its known pixels quantised, the rest to draw.

        Args:
            images: float32 (N, 1, H, W) in [0, 1]; pixels where the mask is 0 are ignored.
            mask: float32 (1 or N, 1, H, W) of 0 and 1: 1 where a pixel is known.
            params: seed and class labels.
        """
        labels = params.class_labels
        if labels is None:  # spread over the classes, reproducibly from the seed
            rng = np.random.default_rng([params.seed, 1])
            labels = rng.integers(0, len(self.config.labels), len(images))
        mask = np.broadcast_to(mask, images.shape)
        out = []
        for i in range(len(images)):
            known = mask[i, 0] > 0.5
            levels = np.where(known, self._quantise(images[i, 0]), 0)
            order = np.flatnonzero(~known)  # raster order: row-major flat indices
            rng = np.random.default_rng([params.seed, 2, i])
            out.append(Canvas(levels.astype(np.int64), order, int(labels[i]), rng))
        return out

    # -- steps (in the executor) --------------------------------------------------------------

    def _fast_step(self, batch: list[Sequence]) -> list[bool]:
        """Draw the next pixel of every running sample with the row graphs."""
        canvases: list[Canvas] = [seq.state for seq in batch]
        rows, columns = _positions(canvases)
        stale = [i for i, c in enumerate(canvases) if c.links_row != rows[i]]
        if stale:  # a sample starting a row: its vertical stack, once for the row
            starts = np.maximum(rows[stale] - self.rows_window + 1, 0)
            windows = [
                canvases[i].levels[start : start + self.rows_window]
                for i, start in zip(stale, starts, strict=True)
            ]
            links = self._rows.run(
                {
                    "x": self._network_input(windows)[:, None],  # (S, 1, rows_window, W)
                    "label": np.array([canvases[i].label for i in stale], np.int64),
                    "row": rows[stale] - starts,
                }
            )["links"]
            for i, row_links in zip(stale, links, strict=True):
                canvases[i].links, canvases[i].links_row = row_links, int(rows[i])
        current = self._network_input([c.levels[r] for c, r in zip(canvases, rows, strict=True)])
        logits = self._pixels.run(
            {
                "row": current[:, None, None],  # (B, 1, 1, W)
                "links": np.stack([c.links for c in canvases]),
                "label": np.array([c.label for c in canvases], np.int64),
            }
        )["logits"]  # (B, levels, W)
        return self._draw(canvases, logits[np.arange(len(canvases)), :, columns])

    def _naive_step(self, batch: list[Sequence]) -> list[bool]:
        """Draw the next pixel of every running sample with the whole network."""
        canvases: list[Canvas] = [seq.state for seq in batch]
        rows, columns = _positions(canvases)
        logits = self._whole.run(
            {
                "x": self._network_input([c.levels for c in canvases])[:, None],
                "label": np.array([c.label for c in canvases], np.int64),
            }
        )["logits"]  # (B, levels, H, W)
        return self._draw(canvases, logits[np.arange(len(canvases)), :, rows, columns])

    def _draw(self, canvases: list[Canvas], logits: np.ndarray) -> list[bool]:
        """Sample each canvas's next pixel from its logits (B, levels); which are done."""
        z = logits.astype(np.float64)
        probabilities = np.exp(z - z.max(axis=1, keepdims=True))
        cdf = np.cumsum(probabilities, axis=1)
        cdf /= cdf[:, -1:]
        u = np.array([canvas.rng.random() for canvas in canvases])
        drawn = np.minimum((cdf <= u[:, None]).sum(axis=1), self.levels - 1)  # inverse CDF
        done = []
        for canvas, level in zip(canvases, drawn, strict=True):
            canvas.levels.flat[canvas.order[canvas.drawn]] = level
            canvas.drawn += 1
            if canvas.preview_every and canvas.drawn % canvas.preview_every == 0:
                canvas.previews[canvas.drawn] = canvas.levels.copy()
            done.append(canvas.drawn == len(canvas.order))
        return done

    def _blank(self, count: int) -> np.ndarray:
        """``count`` all-zero images: as images or as a mask, nothing known."""
        return np.zeros((count, *self.image_shape), np.float32)

    # -- scales -------------------------------------------------------------------------------

    def _quantise(self, intensities: np.ndarray) -> np.ndarray:
        return np.rint(np.clip(intensities, 0.0, 1.0) * (self.levels - 1)).astype(np.int64)

    def _network_input(self, levels: list[np.ndarray]) -> np.ndarray:
        """Levels -> the network's [-1, 1] scale, float32, stacked."""
        return np.stack(levels).astype(np.float32) * np.float32(2.0 / (self.levels - 1)) - 1.0

    def _intensities(self, levels: np.ndarray) -> np.ndarray:
        """Levels (N, H, W) -> float32 images (N, 1, H, W) in [0, 1]."""
        return (levels[:, None] / (self.levels - 1)).astype(np.float32)

    def _result(self, canvases: list[Canvas], images: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The drawn images, with every known pixel exactly as it was sent."""
        drawn = self._intensities(np.stack([c.levels for c in canvases]))
        return np.where(np.broadcast_to(mask, drawn.shape) > 0.5, images, drawn).astype(np.float32)


def _positions(canvases: list[Canvas]) -> tuple[np.ndarray, np.ndarray]:
    """Each canvas's next pixel: rows (B,) and columns (B,), int64."""
    positions = np.array([c.position() for c in canvases], np.int64).reshape(-1, 2)
    return positions[:, 0], positions[:, 1]
