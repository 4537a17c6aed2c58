"""Run a model version through its family's own serving code, in process, without a server.

The evaluation samples every family this way: what it scores is what a
caller of Generate gets (the latent families' decoder on z ~ N(0, I), the
diffusion family's DDIM loop with its default steps and guidance), and no
shared code needs to know how any family samples. The family is found in
:mod:`genserve.families` by the name the config gives; its model runs on an
event loop of its own, on the CPU. Uses no torch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from genserve.families import model_class
from genserve.runtime.model import (
    COMPLETE,
    DECODE,
    ENCODE,
    GENERATE,
    GenerateParams,
    LoadContext,
    SamplerParams,
    ServedModel,
)
from genserve.runtime.repository import ModelConfig, read_config
from genserve.runtime.session import SessionOptions


class ServedRunner:
    """One model version loaded as its family service loads it; use it as a context manager.

    Args:
        folder: the version folder. Its card's file hashes are not checked (the
            evaluation records them afresh).
        threads: ONNX Runtime threads per session run.
    """

    def __init__(self, folder: Path, *, threads: int = 1) -> None:
        self.config: ModelConfig = read_config(folder)
        self._loop = asyncio.new_event_loop()
        context = LoadContext(SessionOptions(provider="cpu", intra_op_threads=threads))
        family = model_class(self.config.family)

        async def start() -> ServedModel:
            model = family(self.config, context)
            await model.start()
            return model

        try:
            self.model = self._loop.run_until_complete(start())
        except BaseException:
            self._loop.close()
            raise

    @property
    def can_sample(self) -> bool:
        """Whether the family offers Generate."""
        return GENERATE in self.model.calls

    @property
    def can_reconstruct(self) -> bool:
        """Whether the family offers Encode and Decode (an image back through its code)."""
        return {ENCODE, DECODE} <= set(self.model.calls)

    def generate(
        self,
        count: int,
        seed: int,
        labels: np.ndarray | None = None,
        sampler: SamplerParams | None = None,
    ) -> np.ndarray:
        """``count`` images from Generate, with default sampler settings unless given.

        Requests hold at most the model's ``max_num_samples``, as a client's
        would: the first is seeded with ``seed``, the others with seeds drawn
        from it, so one request gives exactly what a caller with that seed gets.

        Returns:
            float32 (count, C, H, W) in [0, 1].
        """
        size = self.config.max_num_samples
        starts = range(0, count, size)
        seeds = [seed, *np.random.default_rng(seed).integers(0, 2**31, len(starts) - 1).tolist()]

        async def run() -> list[np.ndarray]:
            parts = []
            for start, part_seed in zip(starts, seeds, strict=True):
                n = min(size, count - start)
                part_labels = None if labels is None else labels[start : start + n]
                params = GenerateParams(
                    n, int(part_seed), class_labels=part_labels,
                    sampler=sampler or SamplerParams(),
                )  # fmt: skip
                parts.append((await self.model.generate(params)).images)
            return parts

        return np.concatenate(self._loop.run_until_complete(run()))

    def generate_text(self, prompt: str, seed: int, sampler: SamplerParams) -> str:
        """One text from Generate: the prompt's continuation (without the prompt)."""
        params = GenerateParams(1, seed, prompt=prompt, sampler=sampler)
        return self._loop.run_until_complete(self.model.generate(params)).texts[0]

    @property
    def can_complete(self) -> bool:
        """Whether the family offers Complete (fills in the unknown pixels of images)."""
        return COMPLETE in self.model.calls

    def complete(
        self, images: np.ndarray, mask: np.ndarray, seed: int, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Complete's answer for images (N, C, H, W) and a known-pixel mask (1 or N, 1, H, W)."""
        params = GenerateParams(len(images), seed, class_labels=labels)
        return self._loop.run_until_complete(self.model.complete(images, mask, params)).images

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Decode the encoding of each image (the mean, for variational encoders)."""

        async def run() -> list[np.ndarray]:
            parts = []
            for start in range(0, len(images), self.config.max_num_samples):
                batch = images[start : start + self.config.max_num_samples]
                encoding = await self.model.encode(batch, [], None)
                parts.append((await self.model.decode(encoding.embeddings, None)).images)
            return parts

        return np.concatenate(self._loop.run_until_complete(run()))

    def close(self) -> None:
        """Stop the model's workers and the event loop."""
        try:
            self._loop.run_until_complete(self.model.close())
        finally:
            self._loop.close()

    def __enter__(self) -> ServedRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
