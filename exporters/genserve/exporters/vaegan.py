"""VAE-GAN (Larsen et al., 2016) for 28x28 grey images.

A VAE whose decoder is also a GAN generator, and whose reconstruction error is
measured in the feature space of the GAN's discriminator. Trains on
Fashion-MNIST (or the 5k MNIST digits), exports the same two graphs as the VAE,
``encoder.onnx`` (image -> mean, log_variance) and ``decoder.onnx`` (latent ->
image in [0, 1]), checks them against PyTorch and writes
``<out>/<name>/<version>/``::

    python -m genserve.exporters.vaegan --out models --name vaegan-fashion --version 2 \\
        --epochs 8 --seed 0 --threads 1

The networks and the losses (with the paper's symbols) are in
:mod:`genserve.exporters.vaegan_model`.

Choices for a stable run on a CPU at small scale, departing from the paper:
the pixel-wise BCE term in L_llike anchors reconstructions while the
discriminator's features are still meaningless; spectral normalisation on every
discriminator layer replaces the paper's equilibrium heuristics; all three
networks step together on gradients of one forward pass (each loss reaches only
its own network's parameters); Adam with beta1 = 0.5 and the cosine decay of
:mod:`genserve.exporters.training`; the exported encoder and decoder are an
exponential moving average of their weights, which evens out the oscillation of
the adversarial updates and leaves cleaner samples than the last weights.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genserve.exporters import cli, pipeline, training, vae
from genserve.exporters.quality_report import BeatsBaseline, Evaluation
from genserve.exporters.vaegan_model import LOSS_NAMES, VAEGAN, VAEGANConfig
from genserve.runtime.schema import GraphSpec

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.vaegan"
ADAM_BETAS = (0.5, 0.999)


def train(
    model: VAEGAN,
    data: torch.Tensor,
    config: training.TrainConfig,
    *,
    generator: torch.Generator,
) -> tuple[training.TrainResult, dict[str, float]]:
    """Train the three networks together with Adam, showing a tqdm bar per epoch.

    The encoder and decoder end with the exponential moving average of their
    weights (``ema_decay``), which is what gets exported.

    Returns:
        What the run did (``last_epoch_loss`` is the decoder's), and the mean of
        each loss and part over the last (possibly partial) epoch.
    """
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    groups = model.parameter_groups()
    optimizers = [
        torch.optim.Adam(groups[name], lr=config.learning_rate, betas=ADAM_BETAS)
        for name in LOSS_NAMES
    ]
    schedules = [
        torch.optim.lr_scheduler.LambdaLR(
            o, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total_steps))
        )
        for o in optimizers
    ]
    average = copy.deepcopy(model.vae).requires_grad_(False)
    model.train()
    step, started, history = 0, time.perf_counter(), {}
    for epoch in range(config.epochs):
        remaining = total_steps - step
        if remaining <= 0:
            break
        batches = training.iterate_batches(data, config.batch_size, generator=generator)
        bar = tqdm(batches, total=min(steps_per_epoch, remaining), desc=f"epoch {epoch + 1}")
        history = {}
        for batch in bar:
            parts = _step(model, batch, groups, optimizers, generator)
            for schedule in schedules:
                schedule.step()
            step += 1
            _update_average(average, model.vae, model.config.ema_decay, step)
            for key, value in parts.items():
                history.setdefault(key, []).append(value)
            shown = {k: f"{v:.2f}" for k, v in parts.items() if k not in ("encoder", "decoder")}
            bar.set_postfix(shown, refresh=False)
            if step >= total_steps:
                break
        bar.close()
        logger.info("epoch %d: %d steps, %s", epoch + 1, step, _means(history))
    model.vae.load_state_dict(average.state_dict())
    model.eval()
    final = _means(history)
    result = training.TrainResult(
        steps=step,
        epochs=round(step / steps_per_epoch, 3),
        training_time_s=round(time.perf_counter() - started, 1),
        last_epoch_loss=final.get("decoder", float("nan")),
    )
    return result, final


def _step(
    model: VAEGAN,
    batch: torch.Tensor,
    groups: dict[str, list[nn.Parameter]],
    optimizers: list[torch.optim.Optimizer],
    generator: torch.Generator,
) -> dict[str, float]:
    """One simultaneous update of the three networks, each from its own loss."""
    losses, parts = model.losses(batch, generator)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    for i, name in enumerate(LOSS_NAMES):
        losses[name].backward(inputs=groups[name], retain_graph=i < len(LOSS_NAMES) - 1)
    for optimizer in optimizers:
        optimizer.step()
    return {**{name: losses[name].item() for name in LOSS_NAMES}, **parts}


@torch.no_grad()
def _update_average(average: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """EMA of the weights, with the decay warmed up so short runs average few steps."""
    decay = min(decay, (1 + step) / (10 + step))
    for mean, param in zip(average.parameters(), model.parameters(), strict=True):
        mean.lerp_(param, 1.0 - decay)


def _means(history: dict[str, list[float]]) -> dict[str, float]:
    return {key: round(float(np.mean(values)), 4) for key, values in history.items()}


@torch.no_grad()
def evaluate(model: VAEGAN, images: torch.Tensor, *, seed: int, batch_size: int = 500) -> dict:
    """The VAE's test figures (nats per image, one z each) and the reconstruction MSE.

    ``test_reconstruction_mse`` is per pixel, decoding the mean of q(z|x) as the
    service's Reconstruct does.
    """
    model.eval()
    metrics = vae.evaluate(model.vae, images, seed=seed, batch_size=batch_size)
    squared_error = 0.0
    for batch in training.iterate_batches(images, batch_size):
        mean, _ = model.vae.encoder(batch)
        squared_error += (model.vae.decoder(mean) - batch).double().pow(2).sum().item()
    mse = squared_error / max(images.numel(), 1)
    return {"test_reconstruction_mse": round(mse, 5), **metrics}


def load_checkpoint(path: Path) -> VAEGAN:
    """Rebuild a VAE-GAN from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, VAEGAN, VAEGANConfig)


class VaeGanExporter(pipeline.Exporter):
    """The VAE-GAN's hooks: its three-network loop, the VAE's test figures, the VAE's graphs."""

    family = "vaegan"
    prog = PROG
    default_name = "vaegan-fashion"
    evaluation = Evaluation(
        sampling="the decoder on z ~ N(0, I)", goals=(BeatsBaseline("VAE-GAN"),)
    )
    parser_options = {
        "latent_dim": VAEGANConfig.latent_dim,
        "epochs": 4,
        "batch_size": 64,
        "learning_rate": 1e-3,
    }

    def default_configs(self) -> tuple[VAEGANConfig, training.TrainConfig]:
        return VAEGANConfig(), training.TrainConfig()

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        defaults = VAEGANConfig()
        parser.add_argument("--gamma", type=float, default=defaults.gamma, help="content vs style")
        parser.add_argument(
            "--pixel-weight", type=float, default=defaults.pixel_weight, help="pixel BCE in L_llike"
        )

    def configs(self, args: argparse.Namespace) -> tuple[VAEGANConfig, training.TrainConfig]:
        model_config = VAEGANConfig(
            latent_dim=args.latent_dim, gamma=args.gamma, pixel_weight=args.pixel_weight
        )
        return model_config, cli.train_config(args)

    def build(self, run: pipeline.Run) -> VAEGAN:
        return VAEGAN(run.model_config)

    def fit(self, model: VAEGAN, run: pipeline.Run) -> pipeline.Trained:
        config = run.train_config
        result, final_losses = train(model, run.train_images(), config, generator=run.generator())
        hyperparameters = {
            **dataclasses.asdict(model.config),
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
        }
        metrics = evaluate(model, run.test_images(), seed=run.seed)
        return pipeline.Trained(
            result, metrics, hyperparameters=hyperparameters, final_losses=final_losses
        )

    def export(self, model: VAEGAN, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return vae.export_graphs(model.vae, folder)

    def description(self, model: VAEGAN, run: pipeline.Run) -> str:
        return (
            f"VAE-GAN with a {model.config.latent_dim}-d latent trained on {run.dataset_name}: "
            "a VAE whose decoder is also a GAN generator, with reconstructions compared in the "
            "discriminator's feature space (Larsen et al., 2016); the decoder maps N(0, I) "
            "latents to 28x28 grey images in [0, 1]."
        )

    def sections(self, model: VAEGAN, run: pipeline.Run) -> dict:
        return vae.latent_sections(model.config.latent_dim)


EXPORTER = VaeGanExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
