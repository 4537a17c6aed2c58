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
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genserve.exporters import cli, onnx_export, repository, training, vae
from genserve.exporters.data import load_dataset
from genserve.exporters.vae import DATASET_CARDS, IMAGE_SHAPE

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.ae"
BATCHING = {"max_batch_size": 64, "max_queue_delay_ms": 2.0, "max_queue_size": 1024}
MAX_NUM_SAMPLES = 256


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
) -> tuple[dict, dict]:
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
        graphs[graph] = {"file": path.name, **onnx_export.graph_signature(onnx_model)}
    parity = {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": worst}
    return graphs, parity


@dataclass(frozen=True)
class VersionInfo:
    """What the model card says about a trained model, besides its files."""

    family: str
    """The serving family: "ae" or "aae"."""
    description: str
    """One or two sentences for the card."""
    data: str
    """The data set's CLI name, a key of ``DATASET_CARDS``."""
    command: str
    """The command line that trained it."""
    seed: int
    """The seed of the weights, the shuffling and the prior samples."""
    result: training.TrainResult
    """Steps, epochs and wall time of the training loop."""
    metrics: dict
    """Test-set quality metrics."""


def write_version(
    model: nn.Module, info: VersionInfo, *, out: Path, name: str, version: int, overwrite: bool
) -> Path:
    """Export ``model.encoder`` and ``model.decoder`` and write ``out/name/version``.

    The model must have ``config`` with ``latent_dim``. Returns the version folder.
    """
    with repository.staged_version(out, name, version, overwrite=overwrite) as folder:
        graphs, parity = export_graphs(
            model.encoder, model.decoder, model.config.latent_dim, folder
        )
        card = {
            "description": info.description,
            "dataset": DATASET_CARDS[info.data],
            "command": info.command,
            "seed": info.seed,
            "epochs": info.result.epochs,
            "steps": info.result.steps,
            "training_time_s": info.result.training_time_s,
            "metrics": info.metrics,
            "parity": parity,
            "files": repository.file_records(folder, [g["file"] for g in graphs.values()]),
            "framework": {
                "torch": torch.__version__.split("+")[0],
                "onnx_opset": onnx_export.ONNX_OPSET,
            },
            "created_utc": repository.utc_now_iso(),
        }
        config = {
            "name": name,
            "family": info.family,
            "graphs": graphs,
            "batching": dict(BATCHING),
            "max_num_samples": MAX_NUM_SAMPLES,
            "params": {"latent_dim": model.config.latent_dim, "image_shape": list(IMAGE_SHAPE)},
            "labels": [],
            "card": card,
        }
        repository.write_config(folder, config)
    return repository.version_dir(out, name, version)


def train_and_export(
    *,
    out: Path,
    name: str = "ae-fashion",
    version: int = 1,
    data: str = "fashion",
    seed: int = 0,
    model_config: AEConfig | None = None,
    train_config: training.TrainConfig | None = None,
    eval_limit: int | None = None,
    command: str | None = None,
    checkpoint: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Train an autoencoder, export and check its graphs, and write a repository version.

    Args:
        out: the model repository root; the version lands in ``out/name/version``.
        name: the model name.
        version: the version folder, a positive integer.
        data: ``"fashion"`` or ``"mnist5k"``.
        seed: seeds the weights and the shuffling.
        model_config: the autoencoder's shape; defaults to :class:`AEConfig`.
        train_config: epochs, batch size, learning rate, step budget.
        eval_limit: evaluate on the first this many test images; None for all.
        command: the command line for the model card; None writes the
            equivalent ``python -m`` command.
        checkpoint: also save the PyTorch checkpoint here.
        overwrite: replace an existing version folder.

    Returns:
        The version folder.
    """
    model_config = model_config or AEConfig()
    train_config = train_config or training.TrainConfig()
    repository.check_free(out, name, version, overwrite=overwrite)  # fail before training
    generator = training.seed_everything(seed)
    train_images = torch.from_numpy(load_dataset(data, "train").images)
    test_images = torch.from_numpy(load_dataset(data, "test").images[:eval_limit])
    model = AE(model_config)
    logger.info("training %s: %d parameters", name, sum(p.numel() for p in model.parameters()))
    result = training.train(model, model.loss, train_images, train_config, generator=generator)
    metrics = evaluate(model.encoder, model.decoder, test_images)
    logger.info("test metrics: %s", metrics)
    if checkpoint is not None:
        training.save_checkpoint(model, checkpoint)
    info = VersionInfo(
        family="ae",
        description=f"Convolutional autoencoder with a {model_config.latent_dim}-d latent "
        f"trained on {DATASET_CARDS[data].split(',')[0]}; the encoder maps 28x28 grey images "
        "to codes and the decoder maps codes back to images in [0, 1]. The latent space has "
        "no prior: use it to encode, decode and reconstruct, not to sample.",
        data=data,
        command=command
        or cli.equivalent_command(PROG, out, name, version, data, seed, train_config),
        seed=seed,
        result=result,
        metrics=metrics,
    )
    return write_version(model, info, out=out, name=name, version=version, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    parser = cli.build_parser(
        PROG, __doc__.split("\n\n")[0], "ae-fashion", latent_dim=AEConfig.latent_dim
    )
    cli.run(
        PROG,
        sys.argv[1:] if argv is None else argv,
        parser,
        lambda args: (AEConfig(latent_dim=args.latent_dim), cli.train_config(args)),
        train_and_export,
    )


if __name__ == "__main__":
    main()
