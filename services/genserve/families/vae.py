"""The VAE family: Generate, Encode, Decode and Reconstruct, all one shot.

Graphs: `encoder` (image -> mean, log_variance) and `decoder` (latent ->
image in [0, 1]), each behind its own request batcher, so concurrent callers
share session runs.
"""

from __future__ import annotations

import numpy as np

from genserve.runtime.model import (
    DECODE,
    ENCODE,
    GENERATE,
    GENERATE_STREAM,
    RECONSTRUCT,
    Encoding,
    GenerateParams,
    LoadContext,
    Output,
    ServedModel,
    sample_latents,
)
from genserve.runtime.repository import ModelConfig


class VaeModel(ServedModel):
    """A variational autoencoder: z ~ N(0, I) -> decoder; encoder -> (mean, log-variance)."""

    family = "vae"
    calls = (GENERATE, GENERATE_STREAM, ENCODE, DECODE, RECONSTRUCT)

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        super().__init__(config, context)
        self._encoder = self.batched("encoder")
        self._decoder = self.batched("decoder")

    async def generate(self, params: GenerateParams) -> Output:
        z = params.latents
        if z is None:
            z = sample_latents(
                params.seed, params.num_samples, self.latent_dim, params.sampler.truncation
            )
        return await self.decode(z, params.deadline)

    async def encode(
        self, images: np.ndarray | None, texts: list[str], deadline: float | None
    ) -> Encoding:
        out = await self._encoder.submit({"image": images}, deadline=deadline)
        return Encoding(embeddings=out["mean"], log_variance=out["log_variance"])

    async def decode(self, latents: np.ndarray, deadline: float | None) -> Output:
        out = await self._decoder.submit({"latent": latents}, deadline=deadline)
        return Output(images=out["image"])

    async def reconstruct(self, images: np.ndarray, deadline: float | None) -> Output:
        encoding = await self.encode(images, [], deadline)
        return await self.decode(encoding.embeddings, deadline)
