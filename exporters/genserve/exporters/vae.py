"""Variational autoencoder (Kingma & Welling, 2014) for 28x28 grey images.

Trains on Fashion-MNIST (or the 5k MNIST digits), exports ``encoder.onnx``
(image -> mean, log_variance) and ``decoder.onnx`` (latent -> image in [0, 1]),
checks them against PyTorch and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.vae --out models --name vae-fashion --version 1 \\
        --epochs 12 --seed 0 --threads 2

Symbols: x is an image, z a latent, q(z|x) = N(mean, exp(log_variance)) the
encoder, p(x|z) = Bernoulli(decoder(z)) per pixel and p(z) = N(0, I).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genserve.exporters import onnx_export, pipeline, training
from genserve.exporters.data import DATASET_CARDS as DATASET_CARDS  # where the others look
from genserve.exporters.quality_report import Evaluation
from genserve.runtime.schema import BatchPolicy, GraphSpec

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.vae"
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the VAE; stored in checkpoints so a model can be rebuilt."""

    latent_dim: int = 16
    """Size D of the latent z."""
    channels: tuple[int, int] = (16, 32)
    """Conv widths at 14x14 and at 7x7 (the decoder mirrors them)."""
    hidden_dim: int = 256
    """Width of the fully connected layer between the 7x7 features and z."""

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive widths, got {self.channels}")


class Encoder(nn.Module):
    """q(z|x): image (B, 1, 28, 28) -> mean (B, D), log_variance (B, D)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c1, 4, stride=2, padding=1),  # 28 -> 14
            nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 14 -> 7
            nn.SiLU(),
        )
        self.fc = nn.Sequential(nn.Linear(c2 * 7 * 7, config.hidden_dim), nn.SiLU())
        self.head = nn.Linear(config.hidden_dim, 2 * config.latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(image)  # (B, C2, 7, 7)
        h = self.fc(h.flatten(1))  # (B, H)
        mean, log_variance = self.head(h).chunk(2, dim=1)  # (B, D) each
        return mean, log_variance


class Decoder(nn.Module):
    """p(x|z): latent (B, D) -> pixel probabilities (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c1, c2 = config.channels
        self.c2 = c2
        self.fc = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden_dim),
            nn.SiLU(),
            nn.Linear(config.hidden_dim, c2 * 7 * 7),
            nn.SiLU(),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 7 -> 14
            nn.SiLU(),
            nn.ConvTranspose2d(c1, c1, 4, stride=2, padding=1),  # 14 -> 28
            nn.SiLU(),
            nn.Conv2d(c1, 1, 3, padding=1),
        )

    def logits(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.fc(latent).view(-1, self.c2, 7, 7)  # (B, C2, 7, 7)
        return self.upsample(h)  # (B, 1, 28, 28)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(latent))  # (B, 1, 28, 28)


class VAE(nn.Module):
    """Encoder and decoder together, with the ELBO."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def elbo_terms(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image terms of the negative ELBO, in nats, with one sample of z.

        Returns:
            ``(reconstruction, kl)``, each (B,): -log p(x|z) as binary cross
            entropy summed over pixels, and KL(q(z|x) || p(z)) in closed form.
        """
        mean, log_variance = self.encoder(image)  # (B, D) each
        # 1. Reparameterise: z = mean + sigma * eps, eps ~ N(0, I).
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_variance) * eps  # (B, D)
        # 2. -log p(x|z) = BCE(x, sigmoid(logits)) summed over the 784 pixels.
        logits = self.decoder.logits(z)  # (B, 1, 28, 28)
        bce = F.binary_cross_entropy_with_logits(logits, image, reduction="none")
        reconstruction = bce.flatten(1).sum(1)  # (B,)
        # 3. KL(N(mean, var) || N(0, 1)) = 0.5 * sum(mean^2 + var - log var - 1).
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - log_variance - 1).sum(1)  # (B,)
        return reconstruction, kl

    def loss(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean negative ELBO over the batch, and its parts for the progress bar."""
        reconstruction, kl = self.elbo_terms(image)
        loss = (reconstruction + kl).mean()
        return loss, {"bce": reconstruction.mean().item(), "kl": kl.mean().item()}


@torch.no_grad()
def evaluate(model: VAE, images: torch.Tensor, *, seed: int, batch_size: int = 500) -> dict:
    """Mean negative ELBO and its parts over ``images``, nats per image (one z each)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total_reconstruction = total_kl = 0.0
    for batch in training.iterate_batches(images, batch_size):
        reconstruction, kl = model.elbo_terms(batch, generator)
        total_reconstruction += reconstruction.double().sum().item()
        total_kl += kl.double().sum().item()
    n = len(images)
    return {
        "test_negative_elbo_nats": round((total_reconstruction + total_kl) / n, 3),
        "test_reconstruction_bce_nats": round(total_reconstruction / n, 3),
        "test_kl_nats": round(total_kl / n, 3),
        "test_images_evaluated": n,
    }


def load_checkpoint(path: Path) -> VAE:
    """Rebuild a VAE from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, VAE, VAEConfig)


def export_graphs(model: VAE, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
    """Write encoder.onnx and decoder.onnx to ``folder`` and check parity for both.

    Returns:
        ``(graphs, parity)``: the config's ``graphs`` section and ``parity`` record.
    """
    model.eval()
    d = model.config.latent_dim
    specs = {
        "encoder": (
            model.encoder,
            ["image"],
            ["mean", "log_variance"],
            torch.rand(2, *IMAGE_SHAPE),
        ),
        "decoder": (model.decoder, ["latent"], ["image"], torch.randn(2, d)),
    }
    make_inputs = {
        "encoder": lambda n, rng: {"image": rng.random((n, *IMAGE_SHAPE), dtype=np.float32)},
        "decoder": lambda n, rng: {"latent": rng.standard_normal((n, d), dtype=np.float32)},
    }
    graphs, worst = {}, 0.0
    for graph, (module, inputs, outputs, example) in specs.items():
        path = folder / f"{graph}.onnx"
        onnx_model = onnx_export.export_onnx(
            module, (example,), path, input_names=inputs, output_names=outputs
        )
        worst = max(worst, onnx_export.check_parity(module, path, make_inputs[graph]))
        graphs[graph] = onnx_export.graph_spec(
            onnx_model, path, intra_op_threads=onnx_export.SMALL_GRAPH_THREADS
        )
    parity = {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": worst}
    return graphs, parity


def latent_sections(latent_dim: int, labels: tuple[str, ...] = (), **params: Any) -> dict:
    """The config sections of a latent image model: request batching and its latent size."""
    return {
        "batching": BatchPolicy(),
        "max_num_samples": 256,
        "params": {"latent_dim": latent_dim, "image_shape": list(IMAGE_SHAPE), **params},
        "labels": labels,
    }


class VaeExporter(pipeline.Exporter):
    """The VAE's hooks: the ELBO with the shared loop, its test ELBO, both graphs."""

    family = "vae"
    prog = PROG
    default_name = "vae-fashion"
    evaluation = Evaluation(sampling="the decoder on z ~ N(0, I)")
    parser_options = {"latent_dim": VAEConfig.latent_dim}

    def default_configs(self) -> tuple[VAEConfig, training.TrainConfig]:
        return VAEConfig(), training.TrainConfig()

    def build(self, run: pipeline.Run) -> VAE:
        return VAE(run.model_config)

    def fit(self, model: VAE, run: pipeline.Run) -> pipeline.Trained:
        result = training.train(
            model, model.loss, run.train_images(), run.train_config, generator=run.generator()
        )
        return pipeline.Trained(result, evaluate(model, run.test_images(), seed=run.seed))

    def export(self, model: VAE, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_graphs(model, folder)

    def description(self, model: VAE, run: pipeline.Run) -> str:
        return (
            f"Convolutional VAE with a {model.config.latent_dim}-d latent trained on "
            f"{run.dataset_name}; the decoder maps N(0, I) latents to 28x28 grey images in [0, 1]."
        )

    def sections(self, model: VAE, run: pipeline.Run) -> dict:
        return latent_sections(model.config.latent_dim)


EXPORTER = VaeExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
