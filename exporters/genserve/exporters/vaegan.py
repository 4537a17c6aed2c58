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
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genserve.exporters import cli, onnx_export, repository, training, vae
from genserve.exporters.data import load_dataset
from genserve.exporters.vaegan_model import LOSS_NAMES, VAEGAN, VAEGANConfig

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


def train_and_export(
    *,
    out: Path,
    name: str = "vaegan-fashion",
    version: int = 1,
    data: str = "fashion",
    seed: int = 0,
    model_config: VAEGANConfig | None = None,
    train_config: training.TrainConfig | None = None,
    eval_limit: int | None = None,
    command: str | None = None,
    checkpoint: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a VAE-GAN, export and check its graphs, and write a model-repository version.

    Args:
        out: the model repository root; the version lands in ``out/name/version``.
        name: the model name.
        version: the version folder, a positive integer.
        data: ``"fashion"`` or ``"mnist5k"``.
        seed: seeds the weights, the shuffling, the noise and the evaluation samples.
        model_config: shape and loss weights; defaults to :class:`VAEGANConfig`.
        train_config: epochs, batch size, learning rate, step budget.
        eval_limit: evaluate on the first this many test images; None for all.
        command: the command line for the model card; None writes the
            equivalent ``python -m`` command.
        checkpoint: also save the PyTorch checkpoint here.
        overwrite: replace an existing version folder.

    Returns:
        The version folder.
    """
    model_config = model_config or VAEGANConfig()
    train_config = train_config or training.TrainConfig()
    repository.check_free(out, name, version, overwrite=overwrite)  # fail before training
    generator = training.seed_everything(seed)
    train_images = torch.from_numpy(load_dataset(data, "train").images)
    test_images = torch.from_numpy(load_dataset(data, "test").images[:eval_limit])
    model = VAEGAN(model_config)
    logger.info("training %s: %d parameters", name, sum(p.numel() for p in model.parameters()))
    result, final_losses = train(model, train_images, train_config, generator=generator)
    metrics = evaluate(model, test_images, seed=seed)
    logger.info("test metrics: %s", metrics)
    if checkpoint is not None:
        training.save_checkpoint(model, checkpoint)
    with repository.staged_version(out, name, version, overwrite=overwrite) as folder:
        graphs, parity = vae.export_graphs(model.vae, folder)
        card = {
            "description": f"VAE-GAN with a {model_config.latent_dim}-d latent trained on "
            f"{vae.DATASET_CARDS[data].split(',')[0]}: a VAE whose decoder is also a GAN "
            "generator, with reconstructions compared in the discriminator's feature space "
            "(Larsen et al., 2016); the decoder maps N(0, I) latents to 28x28 grey images "
            "in [0, 1].",
            "dataset": vae.DATASET_CARDS[data],
            "command": command
            or cli.equivalent_command(PROG, out, name, version, data, seed, train_config),
            "seed": seed,
            "epochs": result.epochs,
            "steps": result.steps,
            "training_time_s": result.training_time_s,
            "hyperparameters": {
                **dataclasses.asdict(model_config),
                "batch_size": train_config.batch_size,
                "learning_rate": train_config.learning_rate,
            },
            "metrics": metrics,
            "final_losses": final_losses,
            "parity": parity,
            "files": repository.file_records(folder, [g["file"] for g in graphs.values()]),
            "framework": {
                "torch": torch.__version__.split("+")[0],
                "onnx_opset": onnx_export.ONNX_OPSET,
            },
            "created_utc": repository.utc_now_iso(),
        }
        repository.write_config(folder, _model_config(name, model_config, graphs, card))
    return repository.version_dir(out, name, version)


def _model_config(name: str, config: VAEGANConfig, graphs: dict, card: dict) -> dict:
    return {
        "name": name,
        "family": "vaegan",
        "graphs": graphs,
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 2.0, "max_queue_size": 1024},
        "max_num_samples": 256,
        "params": {"latent_dim": config.latent_dim, "image_shape": list(vae.IMAGE_SHAPE)},
        "labels": [],
        "card": card,
    }


def main(argv: list[str] | None = None) -> None:
    defaults = VAEGANConfig()
    parser = cli.build_parser(
        PROG,
        __doc__.split("\n\n")[0],
        "vaegan-fashion",
        latent_dim=defaults.latent_dim,
        epochs=4,
        batch_size=64,
        learning_rate=1e-3,
    )
    parser.add_argument("--gamma", type=float, default=defaults.gamma, help="content vs style")
    parser.add_argument(
        "--pixel-weight", type=float, default=defaults.pixel_weight, help="pixel BCE in L_llike"
    )

    def configs(args: argparse.Namespace) -> tuple[VAEGANConfig, training.TrainConfig]:
        model_config = VAEGANConfig(
            latent_dim=args.latent_dim, gamma=args.gamma, pixel_weight=args.pixel_weight
        )
        return model_config, cli.train_config(args)

    cli.run(PROG, sys.argv[1:] if argv is None else argv, parser, configs, train_and_export)


if __name__ == "__main__":
    main()
