"""One training-and-export pipeline; a family's exporter supplies only its hooks.

:meth:`Exporter.train_and_export` does what every family does the same way:
check that the version may be written (before any training), seed
everything, load the data set (a hook: images by default, text for the
text families), build the model and train it (hooks), save a
checkpoint, export and check its graphs into a staged version folder (hook),
and write its config.json as a :class:`~genserve.runtime.schema.ModelSpec`:
the family's sections (hook) and the card, whose description is a hook and
whose data set, command, seed, epochs, steps, training time, metrics, parity,
file hashes, framework versions and date are filled in here.
:meth:`Exporter.main` is its command line, on :mod:`genserve.exporters.cli`.

A family's exporter module subclasses :class:`Exporter` and makes one
instance, which gives the module its functions::

    EXPORTER = VaeExporter()
    train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

:func:`exporters` finds those instances, so shared code (the evaluation's
goals) never lists the families: adding one is adding its module.
"""

from __future__ import annotations

import abc
import argparse
import functools
import importlib
import logging
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from genserve.exporters import cli, onnx_export, repository, training
from genserve.exporters.data import DATASET_CARDS, DATASETS, load_dataset
from genserve.exporters.quality_report import Evaluation
from genserve.runtime.schema import Card, GraphSpec, ModelSpec

logger = logging.getLogger(__name__)


def framework_versions() -> dict[str, Any]:
    """The card's record of what exported a model: torch's version and the ONNX opset."""
    return {"torch": torch.__version__.split("+")[0], "onnx_opset": onnx_export.ONNX_OPSET}


def dataset_name(dataset: str) -> str:
    """A card's data set entry -> the data set's name, e.g. "Fashion-MNIST"."""
    return dataset.split(",")[0].split(" (")[0]


@dataclass(frozen=True)
class Run:
    """One training run: its settings and data, as every hook sees them."""

    out: Path
    """The model repository root."""
    name: str
    """The model's name."""
    version: int
    """The version folder."""
    data: str
    """The data set's command-line name, one of the exporter's ``datasets``."""
    dataset: str
    """What the model card says of the data set: its name, size and source."""
    seed: int
    """Seeds the weights, the shuffling and the noise."""
    model_config: Any
    """The family's model config (a dataclass stored in checkpoints)."""
    train_config: Any
    """The family's training config."""
    train: Any
    """The training split: an ImageDataset, or the text families' training text."""
    test: Any
    """The test (validation) split, of the same kind."""
    eval_limit: int | None = None
    """Evaluate on the first this many test examples (images, or characters of a
    validation text); None for all."""

    @property
    def dataset_name(self) -> str:
        """The data set's name for a description, e.g. "Fashion-MNIST"."""
        return dataset_name(self.dataset)

    def check_classes(self, num_classes: int) -> None:
        """Raise ValueError unless a conditional model's class count is the data set's."""
        if num_classes != len(self.train.classes):
            raise ValueError(
                f"num_classes is {num_classes} but {self.data} has {len(self.train.classes)}"
            )

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``seed`` (for shuffling)."""
        return torch.Generator().manual_seed(self.seed)

    def train_images(self) -> torch.Tensor:
        return torch.from_numpy(self.train.images)

    def test_images(self) -> torch.Tensor:
        """The test images the metrics are measured on (``eval_limit`` of them)."""
        return torch.from_numpy(self.test.images[: self.eval_limit])


@dataclass(frozen=True)
class Trained:
    """What a family's training hook reports for the card."""

    result: Any
    """What the training loop did: its ``steps``, ``epochs`` and ``training_time_s``
    (a :class:`training.TrainResult`, or a family loop's own result with those)."""
    metrics: dict[str, Any]
    """Quality figures of the trained model."""
    hyperparameters: dict[str, Any] | None = None
    """Training settings the card states beyond the command line."""
    final_losses: dict[str, Any] | None = None
    """Training losses at the end, when the card keeps them beside the metrics."""


class Exporter(abc.ABC):
    """A family's exporter: its hooks, and the shared pipeline and command line that use them."""

    family: ClassVar[str]
    """The family that serves its models, e.g. "vae"."""
    prog: ClassVar[str]
    """The command that runs it, e.g. "python -m genserve.exporters.vae"."""
    default_name: ClassVar[str]
    """The model name when none is given, e.g. "vae-fashion"."""
    evaluation: ClassVar[Evaluation] = Evaluation()
    """How the evaluation judges its models: how it samples, and its own goals."""
    quick_eval: ClassVar[bool] = True
    """Whether ``--max-steps`` also limits the test examples evaluated (``eval_limit``)."""
    parser_options: ClassVar[dict[str, Any]] = {}
    """Defaults of the shared flags (:func:`cli.build_parser`'s keyword arguments)."""
    datasets: ClassVar[tuple[str, ...]] = DATASETS
    """The data sets it trains on, by command-line name; the first is the default."""

    # -- hooks -------------------------------------------------------------------------------

    @abc.abstractmethod
    def default_configs(self) -> tuple[Any, Any]:
        """The model and training configs a library call gets when it passes none."""

    def load_data(self, data: str) -> tuple[Any, Any, str]:
        """The data set named ``data``: (train, test, what the card says of it).

        Raises:
            DatasetMissing: it is not installed; the message says how to install it.
        """
        return load_dataset(data, "train"), load_dataset(data, "test"), DATASET_CARDS[data]

    def add_flags(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027 (optional)
        """Add the family's own flags to the shared ones."""

    def configs(self, args: argparse.Namespace) -> tuple[Any, Any]:
        """The model and training configs from the flags; raises ValueError on a bad value."""
        model_config, _ = self.default_configs()
        return type(model_config)(latent_dim=args.latent_dim), cli.train_config(args)

    def flags(self, run: Run) -> list[str]:
        """The family's own flags that repeat ``run``, for the card's command."""
        return []

    @abc.abstractmethod
    def build(self, run: Run) -> nn.Module:
        """A new model from ``run.model_config``; raises ValueError when it cannot fit the data."""

    @abc.abstractmethod
    def fit(self, model: nn.Module, run: Run) -> Trained:
        """Train ``model`` (leave it in eval mode) and measure it."""

    @abc.abstractmethod
    def export(self, model: nn.Module, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        """Write the graphs to ``folder`` and check them against PyTorch.

        Returns:
            ``(graphs, parity)``: the config's graphs and the card's parity record.
        """

    @abc.abstractmethod
    def description(self, model: nn.Module, run: Run) -> str:
        """One or two sentences for the card: what the model is and what it maps to what."""

    @abc.abstractmethod
    def sections(self, model: nn.Module, run: Run) -> dict[str, Any]:
        """The config's family sections: ModelSpec fields other than name, family, graphs, card."""

    # -- the pipeline ------------------------------------------------------------------------

    def train_and_export(
        self,
        *,
        out: Path,
        name: str | None = None,
        version: int = 1,
        data: str | None = None,
        seed: int = 0,
        model_config: Any = None,
        train_config: Any = None,
        eval_limit: int | None = None,
        command: str | None = None,
        checkpoint: Path | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Train a model, export and check its graphs, and write a model-repository version.

        Args:
            out: the model repository root; the version lands in ``out/name/version``.
            name: the model name; None for the family's default.
            version: the version folder, a positive integer.
            data: one of the exporter's ``datasets``; None for the first.
            seed: seeds the weights, the shuffling, the noise and the evaluation samples.
            model_config: the model's shape; None for the family's default.
            train_config: epochs, batch size, learning rate, step budget; None for the default.
            eval_limit: evaluate on the first this many test examples (images, or
                characters of a validation text); None for all.
            command: the command line for the model card; None writes the
                equivalent ``python -m`` command.
            checkpoint: also save the PyTorch checkpoint here.
            overwrite: replace an existing version folder.

        Returns:
            The version folder.
        """
        default_model, default_train = self.default_configs()
        name = name or self.default_name
        data = data or self.datasets[0]
        if data not in self.datasets:
            raise ValueError(f"data must be one of {', '.join(self.datasets)}, got {data!r}")
        repository.check_free(out, name, version, overwrite=overwrite)  # fail before training
        training.seed_everything(seed)
        train, test, dataset = self.load_data(data)
        run = Run(
            out=out, name=name, version=version, data=data, dataset=dataset, seed=seed,
            model_config=model_config or default_model,
            train_config=train_config or default_train,
            train=train, test=test, eval_limit=eval_limit,
        )  # fmt: skip
        model = self.build(run)
        logger.info("training %s: %d parameters", name, sum(p.numel() for p in model.parameters()))
        trained = self.fit(model, run)
        logger.info("metrics: %s", trained.metrics)
        if checkpoint is not None:
            training.save_checkpoint(model, checkpoint)
        with repository.staged_version(out, name, version, overwrite=overwrite) as folder:
            graphs, parity = self.export(model, folder)
            card = Card(
                description=self.description(model, run),
                dataset=dataset,
                command=command or self.equivalent_command(run),
                seed=seed,
                epochs=trained.result.epochs,
                steps=trained.result.steps,
                training_time_s=trained.result.training_time_s,
                hyperparameters=trained.hyperparameters,
                metrics=trained.metrics,
                final_losses=trained.final_losses,
                parity=parity,
                files=repository.file_records(folder, [g.file for g in graphs.values()]),
                framework=framework_versions(),
                created_utc=repository.utc_now_iso(),
            )
            spec = ModelSpec(
                name=name, family=self.family, graphs=graphs, card=card,
                **self.sections(model, run),
            )  # fmt: skip
            repository.write_config(folder, spec)
        return repository.version_dir(out, name, version)

    def equivalent_command(self, run: Run) -> str:
        """The command line that repeats a library call, for the model card."""
        return cli.equivalent_command(
            self.prog, run.out, run.name, run.version, run.data, run.seed, run.train_config,
            self.flags(run),
        )  # fmt: skip

    def main(self, argv: list[str] | None = None) -> None:
        """The command line: the shared flags, the family's own, then train and export."""
        module = sys.modules[type(self).__module__]
        parser = cli.build_parser(
            self.prog, (module.__doc__ or "").split("\n\n")[0], self.default_name,
            datasets=self.datasets, **self.parser_options,
        )  # fmt: skip
        self.add_flags(parser)
        cli.run(
            self.prog,
            sys.argv[1:] if argv is None else argv,
            parser,
            self.configs,
            self.train_and_export,
            quick_eval=self.quick_eval,
        )


@functools.cache
def exporters() -> dict[str, Exporter]:
    """Every family's exporter in this package: family -> its :class:`Exporter`, by family.

    A module that fails to import is logged and skipped.
    """
    package = importlib.import_module("genserve.exporters")
    found: dict[str, Exporter] = {}
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        try:
            module = importlib.import_module(info.name)
        except Exception as exc:  # a half-written exporter must not hide the others
            logger.warning("exporter module %s does not import: %s", info.name, exc)
            continue
        for value in vars(module).values():
            if isinstance(value, Exporter) and type(value).__module__ == module.__name__:
                found[value.family] = value
    return dict(sorted(found.items()))
