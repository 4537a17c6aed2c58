"""Latent image families: VAE, AE, AAE, VAE-GAN and GAN, all one shot.

They share one shape: an optional `encoder` graph (image -> code) and a
`decoder` or `generator` graph (code [, class label] -> image in [0, 1]),
each behind its own request batcher. What differs is which calls a family
offers, what its encoder returns, and whether its generator is conditioned on
a class label; subclasses set those as class attributes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from genserve.runtime.errors import InvalidArgument
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


class LatentImageModel(ServedModel):
    """Images from latent codes, and codes from images when there is an encoder."""

    decoder_graph: ClassVar[str] = "decoder"
    """The role of the graph that maps codes to images."""
    encoder_outputs: ClassVar[tuple[str, ...]] = ("latent",)
    """The encoder's outputs: the code, then its log-variance if variational."""

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        super().__init__(config, context)
        wants_encoder = {ENCODE, RECONSTRUCT} & set(self.calls)
        self._encoder = self.batched("encoder") if wants_encoder else None
        self._decoder = self.batched(self.decoder_graph)
        inputs = {t.name for t in config.graphs[self.decoder_graph].inputs}
        self.conditional = "label" in inputs
        if self.conditional and not config.labels:
            raise InvalidArgument("labels", f"model {config.name} takes a label but lists none")

    async def generate(self, params: GenerateParams) -> Output:
        z = params.latents
        if z is None:
            z = sample_latents(
                params.seed, params.num_samples, self.latent_dim, params.sampler.truncation
            )
        labels = params.class_labels
        if self.conditional and labels is None:
            # Unlabelled requests spread over the classes, reproducibly from the seed.
            rng = np.random.default_rng([params.seed, 1])
            labels = rng.integers(0, len(self.config.labels), params.num_samples)
        output = await self._run_decoder(z, labels, params.deadline)
        output.latents = z
        return output

    async def encode(
        self, images: np.ndarray | None, texts: list[str], deadline: float | None
    ) -> Encoding:
        out = await self._encoder.submit({"image": images}, deadline=deadline)
        code, *rest = (out[name] for name in self.encoder_outputs)
        return Encoding(embeddings=code, log_variance=rest[0] if rest else None)

    async def decode(self, latents: np.ndarray, deadline: float | None) -> Output:
        return await self._run_decoder(latents, None, deadline)

    async def reconstruct(self, images: np.ndarray, deadline: float | None) -> Output:
        encoding = await self.encode(images, [], deadline)
        return await self.decode(encoding.embeddings, deadline)

    async def _run_decoder(
        self, latents: np.ndarray, labels: np.ndarray | None, deadline: float | None
    ) -> Output:
        inputs = {"latent": latents}
        if self.conditional:
            if labels is None:
                raise InvalidArgument("class_labels", f"model {self.name} needs class labels")
            inputs["label"] = labels.astype(np.int64)
        out = await self._decoder.submit(inputs, deadline=deadline)
        return Output(images=_checked_images(out["image"]))


_RANGE_SLACK = 1e-5
"""How far float rounding may carry a decoder's [0, 1] output before it counts as broken."""


def _checked_images(images: np.ndarray) -> np.ndarray:
    """The decoder's images, clipped to [0, 1]; refused when not finite or out of range.

    Extreme but finite latents can overflow inside the decoder; the caller
    gets INVALID_ARGUMENT naming the latents instead of NaN images.
    """
    finite = np.isfinite(images).all()
    if not finite or images.min() < -_RANGE_SLACK or images.max() > 1 + _RANGE_SLACK:
        raise InvalidArgument(
            "latents",
            "values this extreme make the decoder overflow; "
            "keep them near the prior (about -5 to 5)",
        )
    return np.clip(images, 0.0, 1.0)


class VaeModel(LatentImageModel):
    """Variational autoencoder: z ~ N(0, I) -> decoder; encoder -> (mean, log-variance)."""

    family = "vae"
    calls = (GENERATE, GENERATE_STREAM, ENCODE, DECODE, RECONSTRUCT)
    encoder_outputs = ("mean", "log_variance")


class AeModel(LatentImageModel):
    """Deterministic autoencoder: no prior to sample from, so no Generate."""

    family = "ae"
    calls = (ENCODE, DECODE, RECONSTRUCT)


class AaeModel(LatentImageModel):
    """Adversarial autoencoder: the code is pushed towards N(0, I), so it generates."""

    family = "aae"
    calls = (GENERATE, GENERATE_STREAM, ENCODE, DECODE)


class VaeGanModel(LatentImageModel):
    """VAE-GAN: a VAE whose decoder is also a GAN generator."""

    family = "vaegan"
    calls = (GENERATE, GENERATE_STREAM, ENCODE, DECODE)
    encoder_outputs = ("mean", "log_variance")


class GanModel(LatentImageModel):
    """GAN generator (DCGAN or class-conditional): Generate only."""

    family = "gan"
    calls = (GENERATE, GENERATE_STREAM)
    decoder_graph = "generator"
