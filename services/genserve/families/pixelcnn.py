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
  (``params.rows_window``), and ``pixels`` runs the horizontal stack once per
  pixel, on the window of that row's columns its logits depend on
  (``params.columns_window``), through buffers bound to the session once
  (:meth:`Graph.bind <genserve.runtime.session.Graph.bind>`);
- ``naive``: ``pixelcnn``, the whole network on the whole image, once per pixel.

A pixel's level is drawn by inverse CDF from one uniform number of the
sample's own generator, seeded by (seed, sample index), so a result never
depends on the batch it ran in.
"""

from __future__ import annotations

import contextlib
import math
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
from genserve.runtime.session import BoundRun

SAMPLERS = ("fast", "naive")


@dataclass(eq=False)
class Canvas:
    """One sample's image while it is drawn."""

    levels: np.ndarray
    """int64 (H, W): the grey level of every pixel; unknown ones are 0 until drawn."""
    order: list[int]
    """Flat indices of the pixels to draw, in raster order."""
    label: int
    uniforms: list[float] = field(repr=False)
    """One uniform number per pixel to draw, from the sample's own generator."""
    pixels: np.ndarray
    """float32 (H, W): ``levels`` on the network's input scale, kept in step with it;
    a view of ``padded``."""
    padded: np.ndarray = field(repr=False)
    """float32 (rows_window + H, W): zero rows (above the image), then ``pixels``."""
    drawn: int = 0
    links: np.ndarray | None = field(default=None, repr=False)
    """The fast sampler's per-row input from the vertical stack: (layers * 2C, 1, W)."""
    links_row: int = -1
    """The row `links` belongs to."""
    preview_every: int = 0
    previews: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    """Pixels drawn -> levels after them, every `preview_every` pixels."""

    def position(self) -> tuple[int, int]:
        """(row, column) of the next pixel to draw."""
        return divmod(self.order[self.drawn], self.levels.shape[1])


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
        scale = np.float32(2.0 / (self.levels - 1))
        self._scaled = np.arange(self.levels, dtype=np.float32) * scale - np.float32(1.0)
        """Level -> the network's input, [-1, 1]."""
        if sampler == "fast":
            self._rows = context.open_graph(config, "rows")
            self._pixels = context.open_graph(config, "pixels")
            if self._pixels.input_names != ["row", "links"]:  # the one-row graph of version 1
                raise InvalidArgument(
                    "graphs.pixels", f"model {config.name} has a pixels graph of another "
                    "format; export it again (python -m genserve.exporters.pixelcnn --reexport)",
                )  # fmt: skip
            links = {spec.name: spec.shape for spec in config.graphs["pixels"].inputs}["links"]
            self._links_channels, self.columns_window = links[1], links[3]
            self._bound: dict[int, tuple[BoundRun, dict[str, np.ndarray]]] = {}
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
            levels = np.where(known, self._quantise(images[i, 0]), 0).astype(np.int64)
            order = np.flatnonzero(~known).tolist()  # raster order: row-major flat indices
            uniforms = np.random.default_rng([params.seed, 2, i]).random(len(order)).tolist()
            padded = np.zeros((self.rows_window + levels.shape[0], levels.shape[1]), np.float32)
            pixels = padded[self.rows_window :]
            pixels[:] = self._scaled[levels]
            out.append(Canvas(levels, order, int(labels[i]), uniforms, pixels, padded))
        return out

    # -- steps (in the executor) --------------------------------------------------------------

    def _fast_step(self, batch: list[Sequence]) -> list[bool]:
        """Draw the next pixel of every running sample with the row graphs."""
        canvases: list[Canvas] = [seq.state for seq in batch]
        positions = [canvas.position() for canvas in canvases]
        stale = [i for i, (r, _) in enumerate(positions) if canvases[i].links_row != r]
        if stale:  # a sample starting a row: its vertical stack, once for the row
            self._start_rows([canvases[i] for i in stale], [positions[i][0] for i in stale])
        bound, buffers = self._bound_for(len(canvases))
        row, links, width = buffers["row"], buffers["links"], self.columns_window
        places = []  # each pixel's column in its window
        for i, (canvas, (r, c)) in enumerate(zip(canvases, positions, strict=True)):
            start = max(c - width + 1, 0)  # the window ends at the pixel, or at the left edge
            row[i, 0, 0] = canvas.pixels[r, start : start + width]
            links[i] = canvas.links[..., start : start + width]
            places.append(c - start)
        bound.run()
        logits = buffers["logits"].tolist()  # (B, levels, columns_window)
        return self._draw(
            canvases,
            [[level[p] for level in sample] for sample, p in zip(logits, places, strict=True)],
        )

    def _start_rows(self, canvases: list[Canvas], rows: list[int]) -> None:
        """Run the vertical stack for samples that start a row; keep each one's links."""
        above = [  # padded row r is image row r - rows_window
            c.padded[r : r + self.rows_window] for c, r in zip(canvases, rows, strict=True)
        ]
        links = self._rows.run(
            {
                "x": np.stack(above)[:, None],  # (S, 1, rows_window, W)
                "label": np.array([canvas.label for canvas in canvases], np.int64),
                "row": np.array(rows, np.int64),
            }
        )["links"]  # (S, layers * 2C, 1, W)
        for canvas, row_links, row in zip(canvases, links, rows, strict=True):
            canvas.links, canvas.links_row = row_links, int(row)

    def _bound_for(self, size: int) -> tuple[BoundRun, dict[str, np.ndarray]]:
        """The pixels graph bound to buffers for a step of ``size`` samples, made once."""
        if size not in self._bound:
            buffers = {
                "row": np.zeros((size, 1, 1, self.columns_window), np.float32),
                "links": np.zeros((size, self._links_channels, 1, self.columns_window), np.float32),
                "logits": np.zeros((size, self.levels, self.columns_window), np.float32),
            }
            inputs = {name: buffers[name] for name in ("row", "links")}
            bound = self._pixels.bind(inputs, {"logits": buffers["logits"]})
            self._bound[size] = bound, buffers
        return self._bound[size]

    def _naive_step(self, batch: list[Sequence]) -> list[bool]:
        """Draw the next pixel of every running sample with the whole network."""
        canvases: list[Canvas] = [seq.state for seq in batch]
        rows, columns = np.array([canvas.position() for canvas in canvases], np.int64).T
        logits = self._whole.run(
            {
                "x": np.stack([c.pixels for c in canvases])[:, None],
                "label": np.array([c.label for c in canvases], np.int64),
            }
        )["logits"]  # (B, levels, H, W)
        return self._draw(canvases, logits[np.arange(len(canvases)), :, rows, columns].tolist())

    def _draw(self, canvases: list[Canvas], logits: list[list[float]]) -> list[bool]:
        """Sample each canvas's next pixel from its logits, one list per canvas; which are done.

        By inverse CDF in float64, one sample at a time in plain Python: for a
        few levels that is cheaper than array calls, and a sample's draw is the
        same arithmetic whatever the batch.
        """
        done, top = [], self.levels - 1
        for canvas, row in zip(canvases, logits, strict=True):
            level = min(_inverse_cdf(row, canvas.uniforms[canvas.drawn]), top)
            at = canvas.order[canvas.drawn]
            canvas.levels.flat[at], canvas.pixels.flat[at] = level, self._scaled[level]
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

    def _intensities(self, levels: np.ndarray) -> np.ndarray:
        """Levels (N, H, W) -> float32 images (N, 1, H, W) in [0, 1]."""
        return (levels[:, None] / (self.levels - 1)).astype(np.float32)

    def _result(self, canvases: list[Canvas], images: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The drawn images, with every known pixel exactly as it was sent."""
        drawn = self._intensities(np.stack([c.levels for c in canvases]))
        return np.where(np.broadcast_to(mask, drawn.shape) > 0.5, images, drawn).astype(np.float32)


def _inverse_cdf(logits: list[float], u: float) -> int:
    """How many levels' cumulative softmax probabilities are at most ``u``: the level drawn."""
    top = max(logits)
    cumulative, total = [], 0.0
    for value in logits:
        total += math.exp(value - top)
        cumulative.append(total)
    return sum(1 for c in cumulative if c / total <= u)
