"""Adversarial autoencoder (Makhzani et al., 2016) for 28x28 grey images.

Trains on Fashion-MNIST (or the 5k MNIST digits), exports ``encoder.onnx``
(image -> latent) and ``decoder.onnx`` (latent -> image in [0, 1]), checks them
against PyTorch and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.aae --out models --name aae-fashion --version 2 \\
        --epochs 12 --seed 0 --threads 1

Symbols: x is an image, q(z|x) the deterministic encoder z = encoder(x), p(x|z)
= Bernoulli(decoder(z)) per pixel, p(z) = N(0, I) the prior and D(z) the
discriminator's logit that z came from p(z) rather than from the aggregate
posterior q(z) = E_x[q(z|x)]. Each batch trains in three phases (section 2 of
the paper):

1. reconstruction: encoder and decoder minimise -log p(x|z);
2. regularisation, discriminator: D learns to tell z ~ p(z) from z ~ q(z);
3. regularisation, generator: the encoder learns to make D take q(z) for p(z).

Once q(z) matches p(z), decoding z ~ N(0, I) generates images. The encoder and
decoder are ae.py's (vae.py's conv blocks), so the graphs have ae's signature.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from genserve.exporters import ae, pipeline, training
from genserve.exporters.quality_report import Evaluation

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.aae"


@dataclass(frozen=True)
class AAEConfig(ae.AEConfig):
    """Shape of the AAE; stored in checkpoints so a model can be rebuilt."""

    latent_dim: int = 8
    """Size D of the latent z. 8, as the paper's MNIST model: a deterministic encoder fills
    an 8-d N(0, I) within a few epochs, where its 16-d codes stay on a thin subspace."""
    discriminator_hidden_dim: int = 256
    """Width of the discriminator's two hidden layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discriminator_hidden_dim < 1:
            raise ValueError(
                f"discriminator_hidden_dim must be at least 1, got {self.discriminator_hidden_dim}"
            )


@dataclass(frozen=True)
class AAETrainConfig(training.TrainConfig):
    """How long and how fast to train; ``learning_rate`` is the reconstruction phase's."""

    discriminator_learning_rate: float = 5e-4
    """Peak Adam learning rate of phase 2 (discriminator); cosine decay like the others."""
    generator_learning_rate: float = 5e-4
    """Peak Adam learning rate of phase 3 (encoder against the discriminator)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("learning_rate", "discriminator_learning_rate", "generator_learning_rate"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")


class Discriminator(nn.Module):
    """D(z): latent (B, D) -> logit (B,) that z was drawn from the prior."""

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        h = config.discriminator_hidden_dim
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, h),
            nn.LeakyReLU(0.2),
            nn.Linear(h, h),
            nn.LeakyReLU(0.2),
            nn.Linear(h, 1),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent).squeeze(1)  # (B,)


class AAE(nn.Module):
    """Encoder, decoder and latent discriminator, with one loss per phase."""

    def __init__(self, config: AAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ae.Encoder(config)
        self.decoder = ae.Decoder(config)
        self.discriminator = Discriminator(config)

    def reconstruction_loss(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Phase 1: mean -log p(x|z) per image, z = encoder(x)."""
        bce, mse = ae.reconstruction_terms(self.decoder, self.encoder(image), image)
        return bce.mean(), {"bce": bce.mean().item(), "mse": mse.mean().item()}

    def discriminator_loss(
        self, posterior: torch.Tensor, prior: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Phase 2: -log D(z_p) - log(1 - D(z_q)), z_p ~ p(z), z_q ~ q(z) (no encoder grad)."""
        real = self.discriminator(prior)  # (B,)
        fake = self.discriminator(posterior.detach())  # (B,)
        real_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        fake_loss = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        loss = real_loss + fake_loss
        return loss, {"d": loss.item()}

    def generator_loss(self, posterior: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Phase 3: -log D(z_q), the non-saturating loss that moves q(z) towards p(z)."""
        fake = self.discriminator(posterior)  # (B,)
        loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        return loss, {"g": loss.item()}


@dataclass
class _Phase:
    """One phase's optimizer over the parameters it steps, and its cosine schedule."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler

    @classmethod
    def adam(
        cls,
        params: list[nn.Parameter],
        learning_rate: float,
        total_steps: int,
        beta1: float = 0.9,
    ) -> _Phase:
        """Adam whose learning rate follows a cosine decay to 5% of the peak."""
        optimizer = torch.optim.Adam(params, lr=learning_rate, betas=(beta1, 0.999))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total_steps)),
        )
        return cls(optimizer, schedule)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()


def train(
    model: AAE, data: torch.Tensor, config: AAETrainConfig, *, seed: int
) -> training.TrainResult:
    """Train ``model`` on ``data`` in the three phases per batch, with a tqdm bar per epoch.

    Args:
        model: the AAE; left in eval mode.
        data: the training images (N, 1, 28, 28).
        config: epochs, batch size, the three learning rates, step budget.
        seed: seeds the shuffling and the prior samples z_p.
    """
    shuffle = torch.Generator().manual_seed(seed)
    prior = torch.Generator().manual_seed(seed + 1)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    autoencoder = [*model.encoder.parameters(), *model.decoder.parameters()]
    reconstruction = _Phase.adam(autoencoder, config.learning_rate, total_steps)
    # beta1 = 0.5 in the two adversarial phases, as usual for GAN games.
    discrimination = _Phase.adam(
        list(model.discriminator.parameters()),
        config.discriminator_learning_rate,
        total_steps,
        beta1=0.5,
    )
    generation = _Phase.adam(
        list(model.encoder.parameters()), config.generator_learning_rate, total_steps, beta1=0.5
    )
    model.train()
    step, epoch_loss, started = 0, float("nan"), time.perf_counter()
    for epoch in range(config.epochs):
        remaining = total_steps - step
        if remaining <= 0:
            break
        batches = training.iterate_batches(data, config.batch_size, generator=shuffle)
        bar = tqdm(batches, total=min(steps_per_epoch, remaining), desc=f"epoch {epoch + 1}")
        losses = []
        for image in bar:
            # 1. Reconstruction phase: encoder and decoder on -log p(x|z).
            loss, parts = model.reconstruction_loss(image)
            reconstruction.step(loss)
            # 2. Discriminator phase: z_q = encoder(x) against z_p ~ N(0, I).
            z_q = model.encoder(image)  # (B, D), kept in the graph for phase 3
            z_p = torch.randn(z_q.shape, generator=prior, dtype=z_q.dtype)  # (B, D)
            d_loss, d_parts = model.discriminator_loss(z_q, z_p)
            discrimination.step(d_loss)
            # 3. Generator phase: the encoder against the updated discriminator.
            g_loss, g_parts = model.generator_loss(z_q)
            generation.step(g_loss)
            step += 1
            losses.append(loss.item())
            shown = {**parts, **d_parts, **g_parts}
            bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            if step >= total_steps:
                break
        bar.close()
        epoch_loss = float(np.mean(losses))
        logger.info("epoch %d: %d steps, mean reconstruction bce %.3f", epoch + 1, step, epoch_loss)
    model.eval()
    return training.TrainResult(
        steps=step,
        epochs=round(step / steps_per_epoch, 3),
        training_time_s=round(time.perf_counter() - started, 1),
        last_epoch_loss=epoch_loss,
    )


@torch.no_grad()
def latent_metrics(encoder: nn.Module, images: torch.Tensor, *, batch_size: int = 500) -> dict:
    """How close q(z) is to N(0, I) over ``images``.

    Returns:
        ``latent_mean_abs``: |mean of z_d| averaged over the D dimensions (0 for
        the prior); ``latent_std``: the standard deviation of z_d averaged over
        the dimensions (1 for the prior).
    """
    encoder.eval()
    z = torch.cat([encoder(b) for b in training.iterate_batches(images, batch_size)]).double()
    return {
        "latent_mean_abs": round(z.mean(0).abs().mean().item(), 4),
        "latent_std": round(z.std(0).mean().item(), 4),
    }


def load_checkpoint(path: Path) -> AAE:
    """Rebuild an AAE from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, AAE, AAEConfig)


class AaeExporter(ae.AeExporter):
    """The AAE's hooks: its three-phase loop, and how close q(z) came to the prior.

    The graphs and config sections are the autoencoder's.
    """

    family = "aae"
    prog = PROG
    default_name = "aae-fashion"
    evaluation = Evaluation(sampling="the decoder on z ~ N(0, I)")
    parser_options = {"latent_dim": AAEConfig.latent_dim}

    def default_configs(self) -> tuple[AAEConfig, AAETrainConfig]:
        return AAEConfig(), AAETrainConfig()

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--discriminator-learning-rate",
            type=float,
            default=AAETrainConfig.discriminator_learning_rate,
        )
        parser.add_argument(
            "--generator-learning-rate", type=float, default=AAETrainConfig.generator_learning_rate
        )

    def configs(self, args: argparse.Namespace) -> tuple[AAEConfig, AAETrainConfig]:
        train_config = AAETrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_steps=args.max_steps,
            discriminator_learning_rate=args.discriminator_learning_rate,
            generator_learning_rate=args.generator_learning_rate,
        )
        return AAEConfig(latent_dim=args.latent_dim), train_config

    def flags(self, run: pipeline.Run) -> list[str]:
        config = run.train_config
        return [
            "--discriminator-learning-rate",
            str(config.discriminator_learning_rate),
            "--generator-learning-rate",
            str(config.generator_learning_rate),
        ]

    def build(self, run: pipeline.Run) -> AAE:
        return AAE(run.model_config)

    def fit(self, model: AAE, run: pipeline.Run) -> pipeline.Trained:
        result = train(model, run.train_images(), run.train_config, seed=run.seed)
        test_images = run.test_images()
        metrics = ae.evaluate(model.encoder, model.decoder, test_images)
        metrics.update(latent_metrics(model.encoder, test_images))
        return pipeline.Trained(result, metrics)

    def description(self, model: AAE, run: pipeline.Run) -> str:
        return (
            f"Adversarial autoencoder with a {model.config.latent_dim}-d latent trained on "
            f"{run.dataset_name}; a latent discriminator pushed the encoder's codes towards "
            "N(0, I), so the decoder maps N(0, I) latents to 28x28 grey images in [0, 1]."
        )


EXPORTER = AaeExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
