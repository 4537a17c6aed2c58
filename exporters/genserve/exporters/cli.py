"""The command line every exporter shares: its common flags and one run.

:meth:`genserve.exporters.pipeline.Exporter.main` builds the parser with
:func:`build_parser`, adds the family's own flags, and hands :func:`run` the
family's hook that turns the parsed flags into its model and training configs.
:func:`run` checks them before any training starts, trains and exports,
records the command line in the model card, and turns the errors a user can
fix (bad values, a missing dataset, an existing version) into one line on
stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genserve.exporters import repository, training
from genserve.exporters.data import DATASETS, DatasetMissing

EVAL_LIMIT_QUICK = 1000
"""Test images evaluated when --max-steps asks for a quick run."""

Configs = Callable[[argparse.Namespace], tuple[Any, Any]]
"""Parsed flags -> (model config, training config); raises ValueError on bad values."""


def build_parser(
    prog: str,
    description: str,
    default_name: str,
    *,
    datasets: tuple[str, ...] = DATASETS,
    latent_dim: int | None = None,
    epochs: int = training.TrainConfig.epochs,
    batch_size: int = training.TrainConfig.batch_size,
    learning_rate: float | None = training.TrainConfig.learning_rate,
    max_steps_help: str | None = None,
) -> argparse.ArgumentParser:
    """The flags every exporter takes; a model file adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository root")
    parser.add_argument("--name", default=default_name, help="model name (folder under --out)")
    parser.add_argument("--version", type=int, default=1, help="version folder, >= 1")
    parser.add_argument("--data", choices=datasets, default=datasets[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    if learning_rate is not None:
        parser.add_argument("--learning-rate", type=float, default=learning_rate)
    if latent_dim is not None:
        parser.add_argument("--latent-dim", type=int, default=latent_dim)
    parser.add_argument(
        "--max-steps",
        type=int,
        help=max_steps_help
        or f"stop after this many optimizer steps and evaluate on {EVAL_LIMIT_QUICK} test images",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--checkpoint", type=Path, help="also save a PyTorch checkpoint here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    return parser


def train_config(args: argparse.Namespace, **extra: Any) -> training.TrainConfig:
    """The plain training config from the common flags."""
    return training.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        **extra,
    )


def equivalent_command(
    prog: str,
    out: Path,
    name: str,
    version: int,
    data: str,
    seed: int,
    config: training.TrainConfig,
    extra: list[str] | None = None,
) -> str:
    """The CLI command that repeats a library call, for the model card."""
    args = ["--out", str(out), "--name", name, "--version", str(version), "--epochs"]
    args += [str(config.epochs), "--seed", str(seed), "--data", data]
    args += ["--batch-size", str(config.batch_size), "--learning-rate", str(config.learning_rate)]
    if config.max_steps is not None:
        args += ["--max-steps", str(config.max_steps)]
    return f"{prog} {shlex.join(args + (extra or []))}"


def run(
    prog: str,
    argv: list[str],
    parser: argparse.ArgumentParser,
    configs: Configs,
    export: Callable[..., Path],
    *,
    quick_eval: bool = True,
) -> None:
    """Parse `argv`, train and export; print the version folder written.

    Args:
        prog: the command as a user types it; the model card records
            ``prog`` followed by `argv`.
        argv: the arguments after the command.
        parser: from :func:`build_parser`, with the model's own flags added.
        configs: builds the model and training configs from the flags.
        export: the model file's ``train_and_export``.
        quick_eval: pass ``eval_limit`` (the --max-steps quick evaluation) to
            `export`; False for models with no test-set evaluation.
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("genserve").setLevel(logging.INFO)
    logging.getLogger("__main__").setLevel(logging.INFO)  # a model file run with python -m
    torch.set_num_threads(args.threads)
    try:
        repository.version_dir(args.out, args.name, args.version)
        model_config, train_config = configs(args)
    except ValueError as e:
        sys.exit(f"{prog}: error: {e}")
    extra = {}
    if quick_eval:
        extra["eval_limit"] = EVAL_LIMIT_QUICK if args.max_steps is not None else None
    try:
        folder = export(
            out=args.out,
            name=args.name,
            version=args.version,
            data=args.data,
            seed=args.seed,
            model_config=model_config,
            train_config=train_config,
            command=f"{prog} {shlex.join(argv)}",
            checkpoint=args.checkpoint,
            overwrite=args.overwrite,
            **extra,
        )
    except (DatasetMissing, FileExistsError) as e:
        sys.exit(f"{prog}: error: {e}")
    print(folder)
