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

import argparse
import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from genserve.exporters import cli, onnx_export, pipeline, training
from genserve.exporters.diffusion_model import DiffusionConfig, UNet, noising_loss
from genserve.exporters.quality_report import ClassAccuracy, Evaluation, LowestFd
from genserve.exporters.vae import IMAGE_SHAPE
from genserve.runtime.schema import GraphSpec, StepPolicy

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.diffusion"
GRAPH = "noise"
LABEL_DROPOUT = 0.1
"""The chance a training label is dropped to the null class (classifier-free guidance)."""
EMA_DECAY = 0.999
"""The exported weights are an exponential moving average of the trained ones, with this
decay once warmed up (see :class:`WeightAverage`)."""
EVAL_IMAGES = 2000
"""Test images the held-out noising loss is measured on."""


def train_diffusion(
    model: UNet, images: np.ndarray, labels: np.ndarray, config: training.TrainConfig, seed: int
) -> training.TrainResult:
    """Train the noise predictor with the shared loop; batches are indices into the data.

    ``model`` ends holding the exponential moving average of its weights
    (:class:`WeightAverage`), which samples far better than the last step's
    weights after a short run.
    """
    x0, y = torch.from_numpy(images), torch.from_numpy(labels)
    alphas_cumprod = torch.from_numpy(model.config.alphas_cumprod()).float()
    noise = torch.Generator().manual_seed(seed + 1)

    def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = noising_loss(
            model, x0[index], y[index], alphas_cumprod, label_dropout=LABEL_DROPOUT, generator=noise
        )
        return loss, {"loss": loss.item()}

    average = WeightAverage(model)
    order = torch.Generator().manual_seed(seed)
    result = training.train(
        model, loss_fn, torch.arange(len(x0)), config, generator=order,
        after_step=average.update,
    )  # fmt: skip
    average.copy_to(model)
    return result


class WeightAverage:
    """An exponential moving average of a model's parameters, warmed up.

    The decay after step n is min(EMA_DECAY, (1 + n) / (10 + n)), so the
    average forgets the random initial weights within the first few hundred
    steps. (A fixed decay of 0.999 from the first step keeps 0.999^n of the
    initial weights: 10% after 2,345 steps, enough to wash out the samples.)
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.steps = 0
        self.average = [p.detach().clone() for p in model.parameters()]
        self._model = model

    def update(self) -> None:
        """Fold the model's current parameters in; call after every optimizer step."""
        self.steps += 1
        decay = min(EMA_DECAY, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for average, p in zip(self.average, self._model.parameters(), strict=True):
                average.mul_(decay).add_(p.detach(), alpha=1 - decay)

    def copy_to(self, model: torch.nn.Module) -> None:
        """Put the average into ``model``'s parameters."""
        with torch.no_grad():
            for average, p in zip(self.average, model.parameters(), strict=True):
                p.copy_(average)


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


def export_noise(model: UNet, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
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
    graphs = {GRAPH: onnx_export.graph_spec(onnx_model, path)}
    return graphs, {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": worst}


class DiffusionExporter(pipeline.Exporter):
    """The noise predictor's hooks: the noising loss with label dropout, the noise graph."""

    family = "diffusion"
    prog = PROG
    default_name = "diffusion-fashion"
    evaluation = Evaluation(
        sampling="DDIM with the model's default steps and guidance scale",
        goals=(LowestFd("Diffusion"), ClassAccuracy("Diffusion", 0.90, " with guidance")),
    )
    quick_eval = False
    parser_options = {"epochs": 20, "learning_rate": 1e-3}

    def default_configs(self) -> tuple[DiffusionConfig, training.TrainConfig]:
        return DiffusionConfig(), training.TrainConfig(epochs=20, learning_rate=1e-3)

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--channels", type=int, default=DiffusionConfig.channels)
        parser.add_argument("--timesteps", type=int, default=DiffusionConfig.timesteps)

    def configs(self, args: argparse.Namespace) -> tuple[DiffusionConfig, training.TrainConfig]:
        model_config = DiffusionConfig(channels=args.channels, timesteps=args.timesteps)
        return model_config, cli.train_config(args)

    def flags(self, run: pipeline.Run) -> list[str]:
        config = run.model_config
        return ["--channels", str(config.channels), "--timesteps", str(config.timesteps)]

    def build(self, run: pipeline.Run) -> UNet:
        run.check_classes(run.model_config.num_classes)
        return UNet(run.model_config)

    def fit(self, model: UNet, run: pipeline.Run) -> pipeline.Trained:
        train, test = run.train, run.test
        result = train_diffusion(model, train.images, train.labels, run.train_config, run.seed)
        metrics = {
            "final_train_loss": round(result.last_epoch_loss, 5),
            "test_noising_loss": held_out_loss(model, test.images, test.labels, run.seed),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        return pipeline.Trained(result, metrics)

    def export(self, model: UNet, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_noise(model, folder)

    def description(self, model: UNet, run: pipeline.Run) -> str:
        count = sum(p.numel() for p in model.parameters())
        return (
            f"DDPM noise predictor (UNet, {count:,} parameters, T = {model.config.timesteps}, "
            f"linear betas) trained on {run.dataset_name} with {LABEL_DROPOUT:.0%} label "
            f"dropout for classifier-free guidance, weights an EMA (decay {EMA_DECAY}) of the "
            "trained ones; served with DDIM."
        )

    def sections(self, model: UNet, run: pipeline.Run) -> dict:
        config = model.config
        return {
            "stepping": StepPolicy(max_running=64, max_waiting=1024),
            "max_num_samples": 64,
            "params": {
                "image_shape": list(IMAGE_SHAPE),
                "schedule": {**dataclasses.asdict(config), "kind": "linear"},
                "null_label": config.null_label,
                "default_steps": 20,
            },
            "labels": tuple(run.train.classes),
        }


def load_checkpoint(path: Path) -> UNet:
    """Rebuild the UNet from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, UNet, DiffusionConfig)


EXPORTER = DiffusionExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
