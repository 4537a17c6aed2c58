"""Class-conditional gated PixelCNN for 28x28 grey images, quantised to a few levels.

Trains the network of ``pixelcnn_model`` on Fashion-MNIST (or the 5k MNIST
digits), exports three graphs, checks each against PyTorch and the fast pair
against the whole network, and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.pixelcnn --out models --name pixelcnn-fashion \\
        --version 1 --epochs 2 --seed 0 --threads 2

- ``pixelcnn.onnx``: (x, label) -> logits (B, levels, 28, 28), the whole
  network; the naive sampler and the likelihood use it.
- ``rows.onnx``: (x, label, row) -> links, once per row of the fast sampler, on
  a window of ``rows_window`` rows ending at that row.
- ``pixels.onnx``: (row, links, label) -> logits (B, levels, 28), once per pixel.
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
from genserve.exporters.pixelcnn_model import (
    PixelCnn,
    PixelCnnConfig,
    RowLinks,
    RowPixels,
    nll_bits_per_dim,
)
from genserve.exporters.quality_report import Evaluation
from genserve.exporters.vae import IMAGE_SHAPE
from genserve.runtime.schema import GraphSpec, StepPolicy

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.pixelcnn"
FAST_ATOL = 1e-4
"""How far the fast pair's logits may be from the whole network's (ONNX Runtime, CPU)."""


def train_pixelcnn(
    model: PixelCnn, images: np.ndarray, labels: np.ndarray, config: training.TrainConfig, seed: int
) -> training.TrainResult:
    """Maximum likelihood with the shared loop; batches are indices into the data."""
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = nll_bits_per_dim(model, x[index], y[index])
        return loss, {"bits/dim": loss.item()}

    order = torch.Generator().manual_seed(seed)
    return training.train(model, loss_fn, torch.arange(len(x)), config, generator=order)


@torch.no_grad()
def bits_per_dim(model: PixelCnn, images: np.ndarray, labels: np.ndarray) -> float:
    """The test negative log-likelihood in bits per pixel, over every image given."""
    total = 0.0
    for i in range(0, len(images), 500):
        x, y = torch.from_numpy(images[i : i + 500]), torch.from_numpy(labels[i : i + 500])
        total += nll_bits_per_dim(model, x, y).item() * len(x)
    return round(total / len(images), 4)


SINGLE_THREADED = ("rows", "pixels")
"""The fast sampler's graphs: a one-row step is many tiny ops, and a second intra-op thread
only adds a hand-off per op (its config says intra_op_threads 1)."""


def export_graphs(model: PixelCnn, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
    """Write the three graphs and check them; the graphs and parity records."""
    config = model.config
    height, width = IMAGE_SHAPE[1:]
    links_shape = (config.layers, 2 * config.channels, width)

    def image(n: int, rng: np.random.Generator, rows: int = height) -> np.ndarray:
        levels = rng.integers(0, config.levels, (n, 1, rows, width))
        return (levels * (2.0 / (config.levels - 1)) - 1.0).astype(np.float32)

    def label(n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, config.num_classes, n, dtype=np.int64)

    graphs = {
        "pixelcnn": (model, ["x", "label"], ["logits"], lambda n, rng: {
            "x": image(n, rng), "label": label(n, rng)}),
        "rows": (RowLinks(model), ["x", "label", "row"], ["links"], lambda n, rng: {
            "x": image(n, rng, config.rows_window), "label": label(n, rng),
            "row": rng.integers(0, config.rows_window, n, dtype=np.int64)}),
        "pixels": (RowPixels(model), ["row", "links", "label"], ["logits"], lambda n, rng: {
            "row": image(n, rng)[:, :, :1],
            "links": rng.standard_normal((n, *links_shape), dtype=np.float32),
            "label": label(n, rng)}),
    }  # fmt: skip
    written, diffs = {}, {}
    for role, (module, inputs, outputs, make_inputs) in graphs.items():
        path = folder / f"{role}.onnx"
        example = tuple(
            torch.from_numpy(a) for a in make_inputs(2, np.random.default_rng(0)).values()
        )
        with warnings.catch_warnings():  # the inputs share one batch Dim; torch says so
            warnings.filterwarnings(
                "ignore", r".*The axis name: batch will not be used", UserWarning
            )
            onnx_model = onnx_export.export_onnx(
                module, example, path, input_names=inputs, output_names=outputs
            )
        diffs[f"{role}_max_abs_diff"] = onnx_export.check_parity(module, path, make_inputs)
        threads = 1 if role in SINGLE_THREADED else None
        written[role] = onnx_export.graph_spec(onnx_model, path, intra_op_threads=threads)
    diffs["fast_vs_whole_max_abs_diff"] = fast_vs_whole(folder, config, image, label)
    batch_sizes = list(onnx_export.PARITY_BATCH_SIZES)
    return written, {"batch_sizes": batch_sizes, "max_abs_diff": max(diffs.values()), **diffs}


def fast_vs_whole(folder: Path, config: PixelCnnConfig, image, label) -> float:
    """The largest gap between the fast pair's logits and the whole network's, every row.

    Each row's links come from the window the served sampler gives them
    (:func:`window_of`), so this checks the window is wide enough too.

    Raises:
        onnx_export.ParityError: the gap is above :data:`FAST_ATOL`.
    """
    whole, rows, pixels = (
        onnx_export.cpu_session(folder / f"{role}.onnx") for role in ("pixelcnn", "rows", "pixels")
    )
    rng = np.random.default_rng(1)
    x, y = image(4, rng), label(4, rng)
    want = whole.run(None, {"x": x, "label": y})[0]  # (B, levels, H, W)
    worst = 0.0
    for r in range(x.shape[2]):
        start, row = window_of(r, config.rows_window)
        window = x[:, :, start : start + config.rows_window]
        places = np.full(len(x), row, np.int64)
        (links,) = rows.run(None, {"x": window, "label": y, "row": places})
        (got,) = pixels.run(None, {"row": x[:, :, r : r + 1], "links": links, "label": y})
        worst = max(worst, float(np.abs(got - want[:, :, r]).max()))
    if not worst <= FAST_ATOL:
        raise onnx_export.ParityError(f"fast graphs differ from the whole network by {worst:.3g}")
    logger.info("fast graphs match the whole network: max abs diff %.3g", worst)
    return worst


def window_of(row: int, rows_window: int) -> tuple[int, int]:
    """(first image row of the window for ``row``, ``row``'s place in it); as the service does."""
    start = max(0, row - rows_window + 1)
    return start, row - start


class PixelCnnExporter(pipeline.Exporter):
    """The PixelCNN's hooks: maximum likelihood, the whole graph and the fast pair."""

    family = "pixelcnn"
    prog = PROG
    default_name = "pixelcnn-fashion"
    evaluation = Evaluation(
        sampling="every pixel drawn in raster order by the fast sampler, at temperature 1"
    )
    quick_eval = False
    parser_options = {"epochs": 2, "batch_size": 64, "learning_rate": 3e-3}

    def default_configs(self) -> tuple[PixelCnnConfig, training.TrainConfig]:
        return PixelCnnConfig(), training.TrainConfig(epochs=2, batch_size=64, learning_rate=3e-3)

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--channels", type=int, default=PixelCnnConfig.channels)
        parser.add_argument("--layers", type=int, default=PixelCnnConfig.layers)
        parser.add_argument("--levels", type=int, default=PixelCnnConfig.levels)

    def configs(self, args: argparse.Namespace) -> tuple[PixelCnnConfig, training.TrainConfig]:
        model_config = PixelCnnConfig(
            channels=args.channels, layers=args.layers, levels=args.levels
        )
        return model_config, cli.train_config(args)

    def flags(self, run: pipeline.Run) -> list[str]:
        config = run.model_config
        return [
            "--channels", str(config.channels), "--layers", str(config.layers),
            "--levels", str(config.levels),
        ]  # fmt: skip

    def build(self, run: pipeline.Run) -> PixelCnn:
        run.check_classes(run.model_config.num_classes)
        return PixelCnn(run.model_config)

    def fit(self, model: PixelCnn, run: pipeline.Run) -> pipeline.Trained:
        train, test = run.train, run.test
        result = train_pixelcnn(model, train.images, train.labels, run.train_config, run.seed)
        metrics = {
            "final_train_bits_per_dim": round(result.last_epoch_loss, 4),
            "test_bits_per_dim": bits_per_dim(model, test.images, test.labels),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        return pipeline.Trained(result, metrics)

    def export(self, model: PixelCnn, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_graphs(model, folder)

    def description(self, model: PixelCnn, run: pipeline.Run) -> str:
        config, count = model.config, sum(p.numel() for p in model.parameters())
        return (
            f"Class-conditional gated PixelCNN ({config.layers} layers, {config.channels} "
            f"channels, {count:,} parameters) trained on {run.dataset_name}, intensities "
            f"quantised to {config.levels} grey levels (level k is k / {config.levels - 1}); "
            "bits/dim are of the quantised images. Sampled in raster order; the fast sampler "
            "runs rows.onnx once per row and pixels.onnx once per pixel."
        )

    def sections(self, model: PixelCnn, run: pipeline.Run) -> dict:
        config = model.config
        return {
            "stepping": StepPolicy(max_running=64, max_waiting=1024),
            "max_num_samples": 64,
            "params": {
                "image_shape": list(IMAGE_SHAPE),
                "network": dataclasses.asdict(config),
                "levels": config.levels,
                "rows_window": config.rows_window,
                "sampler": "fast",
            },
            "labels": tuple(run.train.classes),
        }


def load_checkpoint(path: Path) -> PixelCnn:
    """Rebuild the PixelCNN from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, PixelCnn, PixelCnnConfig)


EXPORTER = PixelCnnExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
