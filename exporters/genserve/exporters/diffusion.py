"""DDPM noise predictor for 28x28 grey images, class-conditional with label dropout.

Trains the UNet of ``diffusion_model`` on Fashion-MNIST (or the 5k MNIST
digits), exports ``noise.onnx`` ((x_t, t, label) -> predicted noise), checks
it against PyTorch and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.diffusion --out models --name diffusion-fashion \\
        --version 1 --epochs 20 --seed 0 --threads 2

The service samples with DDIM over any number of steps up to T, with
classifier-free guidance (the null label is ``num_classes``).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from genserve.exporters import cli, onnx_export, repository, training
from genserve.exporters.data import load_dataset
from genserve.exporters.diffusion_model import DiffusionConfig, UNet, noising_loss
from genserve.exporters.vae import DATASET_CARDS, IMAGE_SHAPE

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.diffusion"
GRAPH = "noise"
LABEL_DROPOUT = 0.1
"""The chance a training label is dropped to the null class (classifier-free guidance)."""
EVAL_IMAGES = 2000
"""Test images the held-out noising loss is measured on."""


def train_diffusion(
    model: UNet, images: np.ndarray, labels: np.ndarray, config: training.TrainConfig, seed: int
) -> training.TrainResult:
    """Train the noise predictor with the shared loop; batches are indices into the data."""
    x0, y = torch.from_numpy(images), torch.from_numpy(labels)
    alphas_cumprod = torch.from_numpy(model.config.alphas_cumprod()).float()
    noise = torch.Generator().manual_seed(seed + 1)

    def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = noising_loss(
            model, x0[index], y[index], alphas_cumprod, label_dropout=LABEL_DROPOUT, generator=noise
        )
        return loss, {"loss": loss.item()}

    order = torch.Generator().manual_seed(seed)
    return training.train(model, loss_fn, torch.arange(len(x0)), config, generator=order)


@torch.no_grad()
def held_out_loss(model: UNet, images: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The noising loss on test images, at fixed random t and noise, labels kept."""
    generator = torch.Generator().manual_seed(seed)
    alphas_cumprod = torch.from_numpy(model.config.alphas_cumprod()).float()
    x0, y = torch.from_numpy(images[:EVAL_IMAGES]), torch.from_numpy(labels[:EVAL_IMAGES])
    losses = [
        noising_loss(
            model, x0[i : i + 500], y[i : i + 500], alphas_cumprod,
            label_dropout=0.0, generator=generator,
        ).item() * len(x0[i : i + 500])
        for i in range(0, len(x0), 500)
    ]  # fmt: skip
    return round(float(sum(losses) / len(x0)), 5)


def export_noise(model: UNet, folder: Path) -> tuple[dict, dict]:
    """Write noise.onnx and check it against PyTorch; the graphs and parity records."""
    config, path = model.config, folder / f"{GRAPH}.onnx"
    example = (
        torch.randn(2, *IMAGE_SHAPE),
        torch.tensor([0, config.timesteps - 1]),
        torch.tensor([0, config.null_label]),
    )

    def make_inputs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "x": rng.standard_normal((n, *IMAGE_SHAPE), dtype=np.float32),
            "t": rng.integers(0, config.timesteps, n, dtype=np.int64),
            "label": rng.integers(0, config.num_classes + 1, n, dtype=np.int64),
        }

    with warnings.catch_warnings():  # x, t and label share one batch Dim; torch says so
        warnings.filterwarnings("ignore", r".*The axis name: batch will not be used", UserWarning)
        onnx_model = onnx_export.export_onnx(
            model, example, path, input_names=["x", "t", "label"], output_names=["noise"]
        )
    worst = onnx_export.check_parity(model, path, make_inputs)
    graphs = {GRAPH: {"file": path.name, **onnx_export.graph_signature(onnx_model)}}
    return graphs, {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": worst}


def train_and_export(
    *,
    out: Path,
    name: str = "diffusion-fashion",
    version: int = 1,
    data: str = "fashion",
    seed: int = 0,
    model_config: DiffusionConfig | None = None,
    train_config: training.TrainConfig | None = None,
    command: str | None = None,
    checkpoint: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Train the noise predictor, export and check it, and write a model-repository version.

    Args:
        out: the model repository root; the version lands in ``out/name/version``.
        name: the model name.
        version: the version folder, a positive integer.
        data: ``"fashion"`` or ``"mnist5k"``.
        seed: seeds the weights, the shuffling, the timesteps and the noise.
        model_config: the network's shape and noise schedule.
        train_config: epochs, batch size, learning rate, step budget.
        command: the command line for the model card; None writes the equivalent one.
        checkpoint: also save the PyTorch checkpoint here.
        overwrite: replace an existing version folder.

    Returns:
        The version folder.
    """
    model_config = model_config or DiffusionConfig()
    train_config = train_config or training.TrainConfig(epochs=20, learning_rate=1e-3)
    repository.check_free(out, name, version, overwrite=overwrite)  # fail before training
    training.seed_everything(seed)
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    if model_config.num_classes != len(train.classes):
        raise ValueError(
            f"num_classes is {model_config.num_classes} but {data} has {len(train.classes)}"
        )
    model = UNet(model_config)
    count = sum(p.numel() for p in model.parameters())
    logger.info("training %s: noise predictor with %d parameters", name, count)
    result = train_diffusion(model, train.images, train.labels, train_config, seed)
    if checkpoint is not None:
        training.save_checkpoint(model, checkpoint)
    metrics = {
        "final_train_loss": round(result.last_epoch_loss, 5),
        "test_noising_loss": held_out_loss(model, test.images, test.labels, seed),
        "parameters": count,
    }
    with repository.staged_version(out, name, version, overwrite=overwrite) as folder:
        graphs, parity = export_noise(model, folder)
        card = {
            "description": f"DDPM noise predictor (UNet, {count:,} parameters, T = "
            f"{model_config.timesteps}, linear betas) trained on "
            f"{DATASET_CARDS[data].split(',')[0]} with {LABEL_DROPOUT:.0%} label dropout "
            "for classifier-free guidance; served with DDIM.",
            "dataset": DATASET_CARDS[data],
            "command": command
            or _equivalent_command(out, name, version, data, seed, model_config, train_config),
            "seed": seed,
            "epochs": result.epochs,
            "steps": result.steps,
            "training_time_s": result.training_time_s,
            "metrics": metrics,
            "parity": parity,
            "files": repository.file_records(folder, [g["file"] for g in graphs.values()]),
            "framework": {
                "torch": torch.__version__.split("+")[0],
                "onnx_opset": onnx_export.ONNX_OPSET,
            },
            "created_utc": repository.utc_now_iso(),
        }
        repository.write_config(folder, _config_json(name, model_config, graphs, train, card))
    return repository.version_dir(out, name, version)


def _config_json(name: str, config: DiffusionConfig, graphs: dict, data, card: dict) -> dict:
    return {
        "name": name,
        "family": "diffusion",
        "graphs": graphs,
        "stepping": {"max_running": 64, "max_waiting": 1024},
        "max_num_samples": 64,
        "params": {
            "image_shape": list(IMAGE_SHAPE),
            "schedule": {**dataclasses.asdict(config), "kind": "linear"},
            "null_label": config.null_label,
            "default_steps": 20,
        },
        "labels": list(data.classes),
        "card": card,
    }


def _equivalent_command(
    out: Path, name: str, version: int, data: str, seed: int, model: DiffusionConfig, train
) -> str:
    extra = ["--channels", str(model.channels), "--timesteps", str(model.timesteps)]
    return cli.equivalent_command(PROG, out, name, version, data, seed, train, extra)


def load_checkpoint(path: Path) -> UNet:
    """Rebuild the UNet from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, UNet, DiffusionConfig)


def main(argv: list[str] | None = None) -> None:
    parser = cli.build_parser(
        PROG, __doc__.split("\n\n")[0], "diffusion-fashion", latent_dim=0, epochs=20,
        learning_rate=1e-3,
    )  # fmt: skip
    parser.add_argument("--channels", type=int, default=DiffusionConfig.channels)
    parser.add_argument("--timesteps", type=int, default=DiffusionConfig.timesteps)
    cli.run(
        PROG,
        sys.argv[1:] if argv is None else argv,
        parser,
        lambda args: (
            DiffusionConfig(channels=args.channels, timesteps=args.timesteps),
            cli.train_config(args),
        ),
        train_and_export,
        quick_eval=False,
    )


if __name__ == "__main__":
    main()
