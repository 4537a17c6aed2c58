"""DCGAN (Radford et al., 2016) for 28x28 grey images, optionally class-conditional.

Trains a generator G and a discriminator D on Fashion-MNIST (or the 5k MNIST
digits), exports only the generator as ``generator.onnx`` (latent [, label] ->
image in [0, 1]), checks it against PyTorch and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.gan --out models --name gan-fashion --version 2 \\
        --epochs 12 --learning-rate 2e-4 --seed 0 --threads 1
    python -m genserve.exporters.gan --out models --name cgan-fashion --version 2 \\
        --epochs 12 --learning-rate 2e-4 --seed 0 --threads 1 --conditional

Two losses share the code. ``bce`` is the non-saturating GAN loss (Goodfellow
et al., 2014). ``wgan-gp`` trains D as a critic without a sigmoid under the
Wasserstein loss with a gradient penalty (Gulrajani et al., 2017), n_critic
critic steps per generator step. The conditional model feeds a label embedding
to G beside z and uses a projection discriminator (Miyato & Koyama, 2018).

Symbols: x is a real image, y its class, z ~ N(0, I) a latent, G(z, y) a fake
image and D(x, y) a real-valued score (a logit for ``bce``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genserve.exporters import onnx_export, pipeline, training, vae
from genserve.exporters.data import FASHION_CLASSES, MNIST_CLASSES, ImageDataset
from genserve.exporters.gan_model import (
    GAN,
    LOSSES,
    GANConfig,
    GANTrainConfig,
    Generator,
    discriminator_loss,
    generator_loss,
)
from genserve.exporters.quality_report import BeatsBaseline, Evaluation
from genserve.runtime.schema import GraphSpec

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.gan"
GRAPH = "generator"
METRIC_WINDOW_STEPS = 200  # the card's final losses are means over this many last steps
DATASET_CLASSES = {"fashion": FASHION_CLASSES, "mnist5k": MNIST_CLASSES}


@dataclass(frozen=True)
class GANTrainResult:
    """What a training run did."""

    steps: int
    """Generator steps taken."""
    epochs: float
    """Passes over the training set, fractional when the run stopped mid-epoch."""
    training_time_s: float
    """Wall time of the loop."""
    final_losses: dict[str, float]
    """Each logged loss part, averaged over the last ``window_steps`` steps."""
    window_steps: int
    """Steps averaged in ``final_losses``."""


def _endless_batches(
    n: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(epoch, indices)`` for shuffled full batches, epoch after epoch."""
    for epoch in range(sys.maxsize):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield epoch, order[start : start + batch_size]


def train_gan(
    model: GAN, data: ImageDataset, config: GANTrainConfig, *, seed: int
) -> GANTrainResult:
    """Train G and D alternately with Adam, showing a tqdm bar; leave the model in eval mode.

    Args:
        model: the GAN whose generator and discriminator are optimised.
        data: the training images, with labels used when the model is conditional.
        config: loss, epochs, batch size, optimiser settings and step budget.
        seed: seeds the shuffling, latents and penalty mixing.
    """
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels) if model.config.conditional else None
    batches_per_epoch = len(images) // config.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(images)} images")
    total_steps = config.epochs * batches_per_epoch // config.d_steps
    total_steps = max(1, min(total_steps, config.max_steps or total_steps))
    noise = torch.Generator().manual_seed(seed + 1)
    batches = _endless_batches(len(images), config.batch_size, torch.Generator().manual_seed(seed))
    adam = {"lr": config.learning_rate, "betas": config.betas}
    opt_g = torch.optim.Adam(model.generator.parameters(), **adam)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), **adam)
    g, d = model.generator, model.discriminator
    history: list[dict[str, float]] = []
    model.train()
    started, batches_seen = time.perf_counter(), 0
    bar = tqdm(range(total_steps), desc=f"{config.loss} G steps")
    for _ in bar:
        # 1. d_steps updates of D on real x and detached fakes G(z, y), y from the real batch.
        for _ in range(config.d_steps):
            epoch, index = next(batches)
            batches_seen += 1
            real, label = images[index], None if labels is None else labels[index]
            z = torch.randn(len(index), model.config.latent_dim, generator=noise)  # (B, D)
            with torch.no_grad():
                fake = g(z, label)  # (B, 1, 28, 28)
            d_loss, parts = discriminator_loss(d, real, fake, label, config, generator=noise)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        # 2. One update of G through D, on fresh latents and the same labels.
        z = torch.randn(len(index), model.config.latent_dim, generator=noise)  # (B, D)
        g_loss, g_parts = generator_loss(d, g(z, label), label, config)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history.append({**parts, **g_parts})
        shown = {k: f"{v:.3f}" for k, v in history[-1].items()}
        bar.set_postfix({"epoch": epoch + 1, **shown}, refresh=False)
    bar.close()
    model.eval()
    window = history[-METRIC_WINDOW_STEPS:]
    final = {k: round(float(np.mean([h[k] for h in window])), 4) for k in window[0]}
    logger.info("final losses over %d steps: %s", len(window), final)
    return GANTrainResult(
        steps=total_steps,
        epochs=round(batches_seen / batches_per_epoch, 3),
        training_time_s=round(time.perf_counter() - started, 1),
        final_losses=final,
        window_steps=len(window),
    )


def load_checkpoint(path: Path) -> GAN:
    """Rebuild a GAN from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, GAN, GANConfig)


def export_generator(
    generator: Generator, config: GANConfig, folder: Path
) -> tuple[dict[str, GraphSpec], dict]:
    """Write generator.onnx to ``folder`` (BatchNorm in eval mode) and check its parity.

    Returns:
        ``(graphs, parity)``: the config's ``graphs`` section and ``parity`` record.
    """
    generator.eval()
    d, path = config.latent_dim, folder / f"{GRAPH}.onnx"
    inputs, example = ["latent"], [torch.randn(2, d)]
    if config.conditional:
        inputs.append("label")
        example.append(torch.tensor([0, config.num_classes - 1]))

    def make_inputs(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        feeds = {"latent": rng.standard_normal((n, d), dtype=np.float32)}
        if config.conditional:
            feeds["label"] = rng.integers(0, config.num_classes, n, dtype=np.int64)
        return feeds

    with warnings.catch_warnings():  # latent and label share one batch Dim; torch says so
        warnings.filterwarnings("ignore", r".*The axis name: batch will not be used", UserWarning)
        onnx_model = onnx_export.export_onnx(
            generator, tuple(example), path, input_names=inputs, output_names=["image"]
        )
    worst = onnx_export.check_parity(generator, path, make_inputs)
    threads = onnx_export.SMALL_GRAPH_THREADS
    graphs = {GRAPH: onnx_export.graph_spec(onnx_model, path, intra_op_threads=threads)}
    parity = {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": worst}
    return graphs, parity


class GanExporter(pipeline.Exporter):
    """The GAN's hooks: its alternating loop (its final losses are its metrics), the generator."""

    family = "gan"
    prog = PROG
    default_name = "gan-fashion"
    evaluation = Evaluation(sampling="the generator on z ~ N(0, I)", goals=(BeatsBaseline("GAN"),))
    quick_eval = False
    parser_options = {
        "latent_dim": GANConfig.latent_dim,
        "epochs": GANTrainConfig.epochs,
        "batch_size": GANTrainConfig.batch_size,
        "learning_rate": None,
        "max_steps_help": "stop after this many generator steps",
    }

    def default_configs(self) -> tuple[GANConfig, GANTrainConfig]:
        return GANConfig(), GANTrainConfig()

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--conditional", action="store_true", help="condition on class labels")
        parser.add_argument("--loss", choices=LOSSES, default=GANTrainConfig.loss)
        parser.add_argument(
            "--learning-rate",
            type=float,
            help="Adam learning rate (default: 2e-4 bce, 1e-4 wgan-gp)",
        )
        parser.add_argument("--n-critic", type=int, default=GANTrainConfig.n_critic)

    def configs(self, args: argparse.Namespace) -> tuple[GANConfig, GANTrainConfig]:
        num_classes = len(DATASET_CLASSES[args.data]) if args.conditional else 0
        train_config = GANTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            loss=args.loss,
            learning_rate=args.learning_rate,
            n_critic=args.n_critic,
            max_steps=args.max_steps,
        )
        return GANConfig(latent_dim=args.latent_dim, num_classes=num_classes), train_config

    def flags(self, run: pipeline.Run) -> list[str]:
        model, train = run.model_config, run.train_config
        flags = ["--loss", train.loss, "--latent-dim", str(model.latent_dim)]
        if train.loss == "wgan-gp":
            flags += ["--n-critic", str(train.n_critic)]
        return flags + (["--conditional"] if model.conditional else [])

    def build(self, run: pipeline.Run) -> GAN:
        if run.model_config.conditional:
            run.check_classes(run.model_config.num_classes)
        return GAN(run.model_config)

    def fit(self, model: GAN, run: pipeline.Run) -> pipeline.Trained:
        result = train_gan(model, run.train, run.train_config, seed=run.seed)
        metrics = {"final_losses": result.final_losses, "window_steps": result.window_steps}
        return pipeline.Trained(result, metrics)

    def export(self, model: GAN, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_generator(model.generator, model.config, folder)

    def description(self, model: GAN, run: pipeline.Run) -> str:
        conditional = model.config.conditional
        kind = "Class-conditional DCGAN" if conditional else "DCGAN"
        inputs = "N(0, I) latents and class labels" if conditional else "N(0, I) latents"
        return (
            f"{kind} with a {model.config.latent_dim}-d latent trained with the "
            f"{run.train_config.loss} loss on {run.dataset_name}; the generator maps {inputs} "
            "to 28x28 grey images in [0, 1]."
        )

    def sections(self, model: GAN, run: pipeline.Run) -> dict:
        labels = tuple(run.train.classes) if model.config.conditional else ()
        return vae.latent_sections(
            model.config.latent_dim,
            labels,
            conditional=model.config.conditional,
            loss=run.train_config.loss,
        )


EXPORTER = GanExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
