"""Deterministic convolutional autoencoder for 28x28 grey images.

Trains on Fashion-MNIST (or the 5k MNIST digits), exports ``encoder.onnx``
(image -> latent) and ``decoder.onnx`` (latent -> image in [0, 1]), checks them
against PyTorch and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.ae --out models --name ae-fashion --version 1 \\
        --epochs 5 --seed 0 --threads 1

Symbols: x is an image, z = encoder(x) its latent code and x_hat = decoder(z)
the reconstruction, read as per-pixel Bernoulli probabilities. The latent space
has no prior, so decoding random latents is not a way to sample; see aae.py for
an autoencoder that can generate.

The conv blocks are vae.py's: the decoder as is, the encoder with a head of D
outputs instead of a mean and a log-variance. aae.py builds on this file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genserve.exporters import onnx_export, pipeline, training, vae
from genserve.exporters.vae import IMAGE_SHAPE
from genserve.runtime.schema import GraphSpec

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.ae"


@dataclass(frozen=True)
class AEConfig(vae.VAEConfig):
    """Shape of the autoencoder; stored in checkpoints so a model can be rebuilt.

    The fields are :class:`vae.VAEConfig`'s (latent_dim, channels, hidden_dim),
    which vae.py's conv blocks read.
    """


class Encoder(vae.Encoder):
    """z = encoder(x): image (B, 1, 28, 28) -> latent (B, D), deterministic."""

    def __init__(self, config: AEConfig) -> None:
        super().__init__(config)
        self.head = nn.Linear(config.hidden_dim, config.latent_dim)  # one code, no variance

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.features(image)  # (B, C2, 7, 7)
        h = self.fc(h.flatten(1))  # (B, H)
        return self.head(h)  # (B, D)


Decoder = vae.Decoder
"""x_hat = decoder(z): latent (B, D) -> pixel probabilities (B, 1, 28, 28) in [0, 1]."""


def reconstruction_terms(
    decoder: vae.Decoder, latent: torch.Tensor, image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction errors of ``decoder(latent)`` against ``image``.

    Returns:
        ``(bce, mse)``, each (B,): binary cross entropy summed over the 784
        pixels (nats), and squared error averaged over them.
    """
    logits = decoder.logits(latent)  # (B, 1, 28, 28)
    bce = F.binary_cross_entropy_with_logits(logits, image, reduction="none").flatten(1).sum(1)
    mse = (torch.sigmoid(logits) - image).pow(2).flatten(1).mean(1)
    return bce, mse


class AE(nn.Module):
    """Encoder and decoder, trained on the reconstruction's binary cross entropy."""

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def loss(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean BCE per image over the batch, and the parts for the progress bar."""
        bce, mse = reconstruction_terms(self.decoder, self.encoder(image), image)
        return bce.mean(), {"bce": bce.mean().item(), "mse": mse.mean().item()}


@torch.no_grad()
def evaluate(
    encoder: nn.Module, decoder: vae.Decoder, images: torch.Tensor, *, batch_size: int = 500
) -> dict:
    """Reconstruction errors over ``images``: MSE per pixel, BCE in nats per image."""
    encoder.eval()
    decoder.eval()
    total_bce = total_mse = 0.0
    for batch in training.iterate_batches(images, batch_size):
        bce, mse = reconstruction_terms(decoder, encoder(batch), batch)
        total_bce += bce.double().sum().item()
        total_mse += mse.double().sum().item()
    n = len(images)
    return {
        "test_reconstruction_mse": round(total_mse / n, 5),
        "test_reconstruction_bce_nats": round(total_bce / n, 3),
        "test_images_evaluated": n,
    }


def load_checkpoint(path: Path) -> AE:
    """Rebuild an AE from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, AE, AEConfig)


def export_graphs(
    encoder: nn.Module, decoder: nn.Module, latent_dim: int, folder: Path
) -> tuple[dict[str, GraphSpec], dict]:
    """Write encoder.onnx (image -> latent) and decoder.onnx (latent -> image), check parity.

    Returns:
        ``(graphs, parity)``: the config's ``graphs`` section and ``parity`` record.
    """
    encoder.eval()
    decoder.eval()
    d = latent_dim
    specs = {
        "encoder": (encoder, "image", "latent", torch.rand(2, *IMAGE_SHAPE)),
        "decoder": (decoder, "latent", "image", torch.randn(2, d)),
    }
    make_inputs = {
        "encoder": lambda n, rng: {"image": rng.random((n, *IMAGE_SHAPE), dtype=np.float32)},
        "decoder": lambda n, rng: {"latent": rng.standard_normal((n, d), dtype=np.float32)},
    }
    graphs, worst = {}, 0.0
    for graph, (module, input_name, output_name, example) in specs.items():
        path = folder / f"{graph}.onnx"
        onnx_model = onnx_export.export_onnx(
            module, (example,), path, input_names=[input_name], output_names=[output_name]
        )
        worst = max(worst, onnx_export.check_parity(module, path, make_inputs[graph]))
        graphs[graph] = onnx_export.graph_spec(
            onnx_model, path, intra_op_threads=onnx_export.SMALL_GRAPH_THREADS
        )
    parity = {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": worst}
    return graphs, parity


class AeExporter(pipeline.Exporter):
    """The autoencoder's hooks: BCE with the shared loop, test reconstruction errors.

    aae.py's exporter builds on this one: the same graphs and sections.
    """

    family = "ae"
    prog = PROG
    default_name = "ae-fashion"
    parser_options = {"latent_dim": AEConfig.latent_dim}

    def default_configs(self) -> tuple[AEConfig, training.TrainConfig]:
        return AEConfig(), training.TrainConfig()

    def build(self, run: pipeline.Run) -> nn.Module:
        return AE(run.model_config)

    def fit(self, model: nn.Module, run: pipeline.Run) -> pipeline.Trained:
        result = training.train(
            model, model.loss, run.train_images(), run.train_config, generator=run.generator()
        )
        metrics = evaluate(model.encoder, model.decoder, run.test_images())
        return pipeline.Trained(result, metrics)

    def export(self, model: nn.Module, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_graphs(model.encoder, model.decoder, model.config.latent_dim, folder)

    def description(self, model: nn.Module, run: pipeline.Run) -> str:
        return (
            f"Convolutional autoencoder with a {model.config.latent_dim}-d latent trained on "
            f"{run.dataset_name}; the encoder maps 28x28 grey images to codes and the decoder "
            "maps codes back to images in [0, 1]. The latent space has no prior: use it to "
            "encode, decode and reconstruct, not to sample."
        )

    def sections(self, model: nn.Module, run: pipeline.Run) -> dict:
        return vae.latent_sections(model.config.latent_dim)


EXPORTER = AeExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
