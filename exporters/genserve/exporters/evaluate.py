"""Measure the sample quality of every model in the repository; write docs/quality.md.

    python -m genserve.exporters.evaluate --models models --out docs/quality.md --update-cards

For the newest version of each model, its family's own serving code
(:mod:`genserve.exporters.served`) runs its committed ONNX graphs on ONNX
Runtime (CPU) to draw 10,000 samples, as a caller of Generate would; the
evaluation classifier (``bench/quality/fashion-classifier.onnx``, see
:mod:`genserve.exporters.classifier`) maps them to penultimate-layer features,
and the Fréchet distance (FD) between the Gaussians fitted to those features
and to the 10,000 test images' is the score. The same figure for real training
images is the floor; ``vae-fashion`` is the baseline. Class-conditional models
also get the share of samples the classifier puts in the requested class;
models that encode and decode get the test reconstruction error, and those that
cannot sample are scored on their reconstructions. No family is named here:
what a family offers comes from its served model, and its own goals from its
exporter (:func:`genserve.exporters.pipeline.exporters`). Sampling and scoring
use no torch; finding the exporters imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from genserve.exporters import repository
from genserve.exporters.data import DatasetMissing, load_fashion_mnist
from genserve.exporters.grid import tile, write_png
from genserve.exporters.quality_report import (
    BASELINE_MODEL,
    GRID_COLUMNS,
    GRID_SCALE,
    GRID_SEED,
    card_figures,
    completions_path,
    render_report,
    update_card,
)
from genserve.exporters.served import ServedRunner
from genserve.exporters.text_quality import is_text_model, kept_section
from genserve.families import model_class
from genserve.runtime.model import DECODE, GENERATE
from genserve.runtime.repository import ModelConfig
from genserve.runtime.schema import ModelConfigError

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.evaluate"
CLASSIFIER_ONNX = "fashion-classifier.onnx"
CLASSIFIER_CARD = "fashion-classifier.json"
BATCH_SIZE = 500
"""Images per classifier session call."""
DEFAULT_SAMPLES = 10_000
DEFAULT_CLASSIFIER = Path("bench/quality")


# -- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gaussian:
    """Mean and covariance of a set of feature vectors, in float64."""

    mean: np.ndarray
    """(F,)"""
    covariance: np.ndarray
    """(F, F)"""

    @classmethod
    def fit(cls, features: np.ndarray) -> Gaussian:
        """Fit to (N, F) features (unbiased covariance)."""
        x = np.asarray(features, dtype=np.float64)
        return cls(x.mean(axis=0), np.cov(x, rowvar=False))


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """Fréchet distance between two Gaussians (Heusel et al., 2017).

    d² = |μa - μb|² + Tr(Σa + Σb - 2 (Σa Σb)^½). The trace of the square root is
    the sum of the square roots of the eigenvalues of Σa Σb, which are those of
    the symmetric matrix √Σa Σb √Σa: a symmetric eigensolver gives them without
    the complex round-off of a general matrix square root.
    """
    values, vectors = np.linalg.eigh(a.covariance)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T  # √Σa
    middle = sqrt_a @ b.covariance @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    shift = a.mean - b.mean
    trace = np.trace(a.covariance) + np.trace(b.covariance) - 2.0 * trace_sqrt
    return float(max(shift @ shift + trace, 0.0))


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max logit is the requested label."""
    if len(logits) != len(labels) or not len(labels):
        raise ValueError(f"need as many labels as logits rows, got {len(labels)} and {len(logits)}")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


# -- running graphs ------------------------------------------------------------------------


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_batched(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], desc: str
) -> list[np.ndarray]:
    """Run ``session`` over ``feeds`` in batches; concatenate every output."""
    n = len(next(iter(feeds.values())))
    parts: list[list[np.ndarray]] = []
    for start in tqdm(range(0, n, BATCH_SIZE), desc=desc, unit="batch", leave=False):
        parts.append(
            session.run(None, {k: v[start : start + BATCH_SIZE] for k, v in feeds.items()})
        )
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


@dataclass
class EvalClassifier:
    """The evaluation classifier's graph and card."""

    session: ort.InferenceSession
    card: dict

    @classmethod
    def load(cls, folder: Path) -> EvalClassifier:
        """Load it after checking the graph's sha256 against its card.

        Raises:
            FileNotFoundError: a file is missing (train it with ``python -m
                genserve.exporters.classifier``).
            ValueError: the graph is not the one the card describes.
        """
        card = json.loads((folder / CLASSIFIER_CARD).read_text())
        path = folder / CLASSIFIER_ONNX
        expected, actual = card["files"][CLASSIFIER_ONNX]["sha256"], repository.sha256_of(path)
        if actual != expected:
            raise ValueError(
                f"{CLASSIFIER_ONNX}: sha256 {actual} differs from its card's {expected}"
            )
        return cls(_session(path), card)

    def run(self, images: np.ndarray, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """``(logits (N, K), features (N, F))`` of (N, 1, 28, 28) images."""
        logits, features = _run_batched(self.session, {"image": images}, desc)
        return logits, features


# -- the models ----------------------------------------------------------------------------


@dataclass
class Model:
    """The newest version of one model in the repository."""

    name: str
    folder: Path
    config: ModelConfig

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def num_classes(self) -> int:
        """Classes a conditional model takes (0: it takes none)."""
        return len(self.config.labels)

    def graph_files(self) -> list[str]:
        return [g.file for g in self.config.graphs.values()]


def find_models(root: Path) -> list[Model]:
    """The newest numbered version of every model under ``root`` whose config reads."""
    found = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        if not versions:
            continue
        try:
            config = repository.read_config(versions[-1])
        except (OSError, ModelConfigError) as e:
            logger.warning("skipping %s: %s", versions[-1], e)
            continue
        found.append(Model(model_dir.name, versions[-1], config))
    return found


def image_models(models: list[Model]) -> list[Model]:
    """The models this evaluation scores: those whose family generates or decodes images.
    Text models have a section of their own (:mod:`genserve.exporters.text_quality`);
    sentence encoders have no quality figure here."""
    return [
        m
        for m in models
        if not is_text_model(m.config)
        and {GENERATE, DECODE} & set(model_class(m.config.family).calls)
    ]


def in_turn(count: int, num_classes: int) -> np.ndarray | None:
    """Labels 0..K-1 in turn (None for a model that takes no label)."""
    return np.arange(count, dtype=np.int64) % num_classes if num_classes else None


def completion_images(
    model: Model, runner: ServedRunner, test_images: np.ndarray, test_labels: np.ndarray
) -> np.ndarray:
    """The completion picture, in rows of :data:`GRID_COLUMNS`: test images, their top
    halves (the bottom blanked), then completions of the bottom half from seeds 1, 2, 3.

    The first test image of each class goes in a column (the first 8 classes);
    conditional models are given the image's class.
    """
    columns = [int(np.flatnonzero(test_labels == c)[0]) for c in range(GRID_COLUMNS)]
    originals = test_images[columns]
    mask = np.zeros((1, 1, *originals.shape[2:]), np.float32)
    mask[..., : originals.shape[2] // 2, :] = 1.0
    labels = test_labels[columns].astype(np.int64) if model.num_classes else None
    rows = [originals, originals * mask]
    rows += [runner.complete(originals, mask, seed, labels) for seed in (1, 2, 3)]
    return np.concatenate(rows)


def grid_images(model: Model, runner: ServedRunner, test_images: np.ndarray) -> np.ndarray:
    """The images of the model's sample grid, in rows of :data:`GRID_COLUMNS`.

    8 x 8 samples from seed 1 (for latent models, the latents of
    ``genserve.exporters.grid``); conditional models one row per class; models
    that cannot sample alternate rows of test images and their reconstructions.
    """
    if not runner.can_sample:
        originals = test_images[: 4 * GRID_COLUMNS].reshape(4, GRID_COLUMNS, *test_images.shape[1:])
        recons = runner.reconstruct(test_images[: 4 * GRID_COLUMNS]).reshape(originals.shape)
        return np.stack([originals, recons], axis=1).reshape(-1, *test_images.shape[1:])
    if model.num_classes:
        labels = np.repeat(np.arange(model.num_classes, dtype=np.int64), GRID_COLUMNS)
        return runner.generate(len(labels), GRID_SEED, labels)
    return runner.generate(GRID_COLUMNS * GRID_COLUMNS, GRID_SEED)


# -- evaluation ----------------------------------------------------------------------------


@dataclass
class Quality:
    """One row of the table."""

    name: str
    family: str
    version: str = ""
    fd: float | None = None
    """FD of samples (or, for autoencoders, reconstructions) vs the test images."""
    fd_of_reconstructions: bool = False
    class_accuracy: float | None = None
    reconstruction_mse: float | None = None
    """Mean squared error per pixel of test reconstructions."""
    notes: list[str] = field(default_factory=list)
    file_hashes: dict = field(default_factory=dict)
    """The card's ``files`` records of the graphs evaluated."""
    completions: bool = False
    """Whether a completion picture was written beside the sample grid."""


def evaluate_model(
    model: Model,
    classifier: EvalClassifier,
    test: Gaussian,
    test_images: np.ndarray,
    *,
    samples: int,
    seed: int,
    grid: Path | None = None,
    test_labels: np.ndarray | None = None,
) -> Quality:
    """Score one model through its family's serving code.

    A model that samples (Generate) gets the FD of ``samples`` samples and,
    when conditional, its class accuracy; one that encodes and decodes gets
    the reconstruction error of the test images, and, when it cannot sample,
    the FD of those reconstructions. With ``grid``, its sample grid is written
    there as a PNG; a model that completes images (Complete) also gets a
    picture of its completions of half-masked test images beside it (with
    ``test_labels``).
    """
    q = Quality(model.name, model.family, model.folder.name)
    q.file_hashes = repository.file_records(model.folder, model.graph_files())
    with ServedRunner(model.folder) as runner:
        if runner.can_sample:
            labels = in_turn(samples, model.num_classes)
            images = runner.generate(samples, seed, labels)
            logits, features = classifier.run(images, f"{model.name}: classify")
            q.fd = frechet_distance(Gaussian.fit(features), test)
            if labels is not None:
                q.class_accuracy = class_accuracy(logits, labels)
                q.notes.append(f"conditional: {samples // model.num_classes:,} per class")
        if runner.can_reconstruct:
            recons = runner.reconstruct(test_images)
            q.reconstruction_mse = float(np.mean((recons - test_images) ** 2))
            if not runner.can_sample:
                _, features = classifier.run(recons, f"{model.name}: classify")
                q.fd, q.fd_of_reconstructions = frechet_distance(Gaussian.fit(features), test), True
                q.notes.append("cannot sample: FD of test reconstructions, not comparable")
        if not (runner.can_sample or runner.can_reconstruct):
            q.notes.append(f"family {model.family!r} neither samples nor reconstructs images")
        elif grid is not None:
            images = grid_images(model, runner, test_images)
            write_png(grid, tile(images, GRID_COLUMNS, scale=GRID_SCALE))
        if runner.can_complete and grid is not None and test_labels is not None:
            images = completion_images(model, runner, test_images, test_labels)
            write_png(completions_path(grid), tile(images, GRID_COLUMNS, scale=GRID_SCALE))
            q.completions = True
    bits = (model.config.card.metrics or {}).get("test_bits_per_dim") if model.config.card else None
    if bits is not None:
        q.notes.append(f"test NLL {bits:.3f} bits/dim (from its card)")
    if model.name == BASELINE_MODEL:
        q.notes.insert(0, "**baseline**")
    return q


def evaluate_floor(
    classifier: EvalClassifier, train_images: np.ndarray, test: Gaussian, *, samples: int, seed: int
) -> float:
    """FD of ``samples`` real training images (drawn with ``seed``) against the test images."""
    subset = np.sort(np.random.default_rng(seed).choice(len(train_images), samples, replace=False))
    _, features = classifier.run(train_images[subset], "floor: training images")
    return frechet_distance(Gaussian.fit(features), test)


def display_path(path: Path) -> str:
    """``path`` relative to the working folder, or only its name when it lies outside."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, without paths from outside the repository."""
    parts = ["--models", display_path(args.models), "--out", display_path(args.out)]
    if args.samples != DEFAULT_SAMPLES:
        parts += ["--samples", str(args.samples)]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.classifier.resolve() != DEFAULT_CLASSIFIER.resolve():
        parts += ["--classifier", display_path(args.classifier)]
    if args.update_cards:
        parts.append("--update-cards")
    return f"{PROG} {shlex.join(parts)}"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--out", type=Path, default=Path("docs/quality.md"), help="report to write")
    parser.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help="samples per model (and floor images)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the latents and the floor")
    parser.add_argument(
        "--classifier", type=Path, default=DEFAULT_CLASSIFIER, help="folder of the classifier"
    )
    parser.add_argument(
        "--update-cards", action="store_true", help="write the figures into each model's card"
    )
    args = parser.parse_args(argv)
    if not 100 <= args.samples <= 60_000:
        parser.error(f"--samples must be between 100 and 60000, got {args.samples}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    try:
        classifier = EvalClassifier.load(args.classifier)
        test, train = load_fashion_mnist("test"), load_fashion_mnist("train")
        models = image_models(find_models(args.models))
    except (DatasetMissing, OSError, ValueError, KeyError) as e:
        sys.exit(f"{PROG}: error: {e}")
    _, test_features = classifier.run(test.images, "test images")
    test_stats = Gaussian.fit(test_features)
    floor = evaluate_floor(
        classifier, train.images, test_stats, samples=args.samples, seed=args.seed
    )
    images_dir = args.out.parent / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in tqdm(models, desc="models", unit="model"):
        try:
            grid = images_dir / f"{model.name}-samples.png"
            quality = evaluate_model(
                model, classifier, test_stats, test.images, samples=args.samples,
                seed=args.seed, grid=grid, test_labels=test.labels,
            )  # fmt: skip
            rows.append(quality)
        except Exception as e:  # a broken model becomes a row saying so, not a failed run
            logger.warning("%s: evaluation failed: %s", model.name, e)
            rows.append(
                Quality(model.name, model.family, model.folder.name, notes=[f"failed: {e}"])
            )
    run = {
        "samples": args.samples,
        "seed": args.seed,
        "test_images": len(test),
        "classifier": display_path(args.classifier / CLASSIFIER_ONNX),
        "classifier_sha256": classifier.card["files"][CLASSIFIER_ONNX]["sha256"],
        "classifier_test_accuracy": classifier.card["test_accuracy"],
        "command": _command(args),
    }
    from genserve.exporters import pipeline  # imports every exporter, and so torch

    evaluations = {family: e.evaluation for family, e in pipeline.exporters().items()}
    report = render_report(rows, floor, classifier.card, run, evaluations)
    text = kept_section(args.out.read_text()) if args.out.exists() else ""
    args.out.write_text(report + ("\n\n" + text + "\n" if text else ""))
    if args.update_cards:
        baseline = next((q.fd for q in rows if q.name == BASELINE_MODEL), None)
        for model, q in zip(models, rows, strict=True):
            if q.fd is not None or q.reconstruction_mse is not None:
                update_card(model, q, card_figures(q, floor, baseline, run))
    print(f"floor FD {floor:.3f}")
    for q in rows:
        print(f"{q.name}: FD {q.fd}, class accuracy {q.class_accuracy}, mse {q.reconstruction_mse}")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
