"""Training helpers shared by the exporters: seeding, batching and the loop.

A model file supplies ``loss_fn(batch) -> (loss, parts)``; :func:`train` owns
the optimizer steps, the progress bar and the step budget.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def iterate_batches(
    data: torch.Tensor, batch_size: int, *, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Yield batches along the first axis, shuffled when a generator is given."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield data[order[start : start + batch_size]]


@dataclass(frozen=True)
class TrainConfig:
    """How long and how fast to train."""

    epochs: int = 10
    """Passes over the training set."""
    batch_size: int = 128
    """Images per optimizer step."""
    learning_rate: float = 2e-3
    """Peak Adam learning rate; it follows a cosine decay to 5% of the peak."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (a quick test run); None trains every epoch."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")


@dataclass(frozen=True)
class TrainResult:
    """What a training run did."""

    steps: int
    """Optimizer steps taken."""
    epochs: float
    """Passes over the training set, fractional when max_steps cut the last one short."""
    training_time_s: float
    """Wall time of the loop."""
    last_epoch_loss: float
    """Mean training loss over the last (possibly partial) epoch."""


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: torch.Tensor,
    config: TrainConfig,
    *,
    generator: torch.Generator,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with Adam, showing a tqdm bar per epoch.

    Args:
        model: the module whose parameters are optimized; left in eval mode.
        loss_fn: maps a batch to the scalar loss and a dict of parts to show.
        data: the training examples, batched along the first axis.
        config: epochs, batch size, learning rate and step budget.
        generator: the random source for shuffling (seeded by the caller).
        after_step: called after every optimizer step (to update an EMA of the weights).
    """
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    )
    model.train()
    step, epoch_loss, started = 0, float("nan"), time.perf_counter()
    for epoch in range(config.epochs):
        remaining = total_steps - step
        if remaining <= 0:
            break
        batches = iterate_batches(data, config.batch_size, generator=generator)
        bar = tqdm(batches, total=min(steps_per_epoch, remaining), desc=f"epoch {epoch + 1}")
        losses = []
        for batch in bar:
            loss, parts = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix({k: f"{v:.2f}" for k, v in parts.items()}, refresh=False)
            if step >= total_steps:
                break
        bar.close()
        epoch_loss = float(np.mean(losses))
        logger.info("epoch %d: %d steps, mean loss %.3f", epoch + 1, step, epoch_loss)
    model.eval()
    return TrainResult(
        steps=step,
        epochs=round(step / steps_per_epoch, 3),
        training_time_s=round(time.perf_counter() - started, 1),
        last_epoch_loss=epoch_loss,
    )


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Save a model's weights with its ``config`` dataclass, which rebuilds it."""
    torch.save({"config": dataclasses.asdict(model.config), "model": model.state_dict()}, path)


def load_checkpoint(path: Path, model_class: type, config_class: type) -> torch.nn.Module:
    """Rebuild ``model_class(config_class(...))`` from :func:`save_checkpoint`'s file.

    The file stores tuples as lists; every list field is turned back into a tuple.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in checkpoint["config"].items()}
    model = model_class(config_class(**fields))
    model.load_state_dict(checkpoint["model"])
    return model.eval()
