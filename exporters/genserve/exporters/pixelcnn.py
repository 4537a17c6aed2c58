"""Class-conditional gated PixelCNN for 28x28 grey images, quantised to a few levels.

Trains the network of ``pixelcnn_model`` on Fashion-MNIST (or the 5k MNIST
digits), exports three graphs, checks each against PyTorch and the fast pair
against the whole network, and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.pixelcnn --out models --name pixelcnn-fashion \\
        --version 1 --epochs 2 --seed 0 --threads 2

- ``pixelcnn.onnx``: (x, label) -> logits (B, levels, 28, 28), the whole
  network; the naive sampler and the likelihood use it.
- ``rows.onnx``: (x, label, row) -> links (B, layers * 2C, 1, 28), once per row
  of the fast sampler, on the ``rows_window`` rows just above that row.
- ``pixels.onnx``: (row, links) -> logits (B, levels, K), once per pixel, on a
  window of K = ``columns_window`` columns of the row ending at that pixel.

``--reexport FOLDER --version N`` writes version N from the weights of an
existing version FOLDER (read back from its ``pixelcnn.onnx``) with this
module's graphs, keeping that version's card: for when the graphs change and
the network does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from genserve.exporters import cli, onnx_export, pipeline, repository, training
from genserve.exporters.pixelcnn_model import (
    PixelCnn,
    PixelCnnConfig,
    RowLinks,
    RowPixels,
    nll_bits_per_dim,
)
from genserve.exporters.quality_report import Evaluation
from genserve.exporters.vae import IMAGE_SHAPE
from genserve.runtime.schema import Card, GraphSpec, ModelSpec, StepPolicy

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
    columns = columns_window(config)
    links_channels = config.layers * 2 * config.channels

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
            "row": rng.integers(0, height, n, dtype=np.int64)}),
        "pixels": (RowPixels(model), ["row", "links"], ["logits"], lambda n, rng: {
            "row": image(n, rng)[:, :, :1, :columns],
            "links": rng.standard_normal((n, links_channels, 1, columns), dtype=np.float32)}),
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
    """The largest gap between the fast pair's logits and the whole network's, every pixel.

    Each row's links come from the rows above it that the served sampler
    gives them (:func:`rows_above`), and each pixel's logits from its window of
    columns (:func:`window_of`), so this checks both windows are wide enough too.

    Raises:
        onnx_export.ParityError: the gap is above :data:`FAST_ATOL`.
    """
    whole, rows, pixels = (
        onnx_export.cpu_session(folder / f"{role}.onnx") for role in ("pixelcnn", "rows", "pixels")
    )
    rng = np.random.default_rng(1)
    x, y = image(4, rng), label(4, rng)
    want = whole.run(None, {"x": x, "label": y})[0]  # (B, levels, H, W)
    columns, worst = columns_window(config), 0.0
    for r in range(x.shape[2]):
        above = rows_above(x, r, config.rows_window)
        places = np.full(len(x), r, np.int64)
        (links,) = rows.run(None, {"x": above, "label": y, "row": places})
        for c in range(x.shape[3]):
            first, column = window_of(c, columns)
            span = slice(first, first + columns)
            (got,) = pixels.run(None, {"row": x[:, :, r : r + 1, span], "links": links[..., span]})
            worst = max(worst, float(np.abs(got[:, :, column] - want[:, :, r, c]).max()))
    if not worst <= FAST_ATOL:
        raise onnx_export.ParityError(f"fast graphs differ from the whole network by {worst:.3g}")
    logger.info("fast graphs match the whole network: max abs diff %.3g", worst)
    return worst


def rows_above(x: np.ndarray, row: int, count: int) -> np.ndarray:
    """Images x (B, 1, H, W) -> their ``count`` rows above ``row``, zeros above the image."""
    padded = np.pad(x, ((0, 0), (0, 0), (count, 0), (0, 0)))
    return padded[:, :, row : row + count]


def window_of(index: int, window: int) -> tuple[int, int]:
    """(first column of the window for column ``index``, ``index``'s place in it).

    As the service does: the window ends at ``index``, or starts at the image's edge.
    """
    start = max(0, index - window + 1)
    return start, index - start


def columns_window(config: PixelCnnConfig) -> int:
    """The columns ``pixels.onnx`` takes: the receptive field's, at most the image's width."""
    return min(config.columns_window, IMAGE_SHAPE[2])


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
        return describe(model, run.dataset_name)

    def main(self, argv: list[str] | None = None) -> None:
        """The command line; ``--reexport FOLDER`` exports an existing version's weights again."""
        args = sys.argv[1:] if argv is None else argv
        if "--reexport" not in args:
            super().main(argv)
            return
        parser = argparse.ArgumentParser(prog=f"{PROG} --reexport")
        parser.add_argument("--reexport", type=Path, required=True, help="a version folder")
        parser.add_argument("--out", type=Path, default=Path("models"), help="repository root")
        parser.add_argument("--version", type=int, required=True, help="the version to write")
        parser.add_argument("--overwrite", action="store_true")
        options = parser.parse_args(args)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        command = " ".join([PROG, *args])
        try:
            folder = reexport(
                options.reexport, options.out, options.version, command, options.overwrite
            )
        except (OSError, ValueError) as e:
            sys.exit(f"{PROG}: error: {e}")
        print(folder)

    def sections(self, model: PixelCnn, run: pipeline.Run) -> dict:
        return {**sections_of(model.config), "labels": tuple(run.train.classes)}


def describe(model: PixelCnn, dataset_name: str) -> str:
    """The card's description of a PixelCNN trained on ``dataset_name``."""
    config, count = model.config, sum(p.numel() for p in model.parameters())
    return (
        f"Class-conditional gated PixelCNN ({config.layers} layers, {config.channels} "
        f"channels, {count:,} parameters) trained on {dataset_name}, intensities "
        f"quantised to {config.levels} grey levels (level k is k / {config.levels - 1}); "
        "bits/dim are of the quantised images. Sampled in raster order; the fast sampler "
        "runs rows.onnx once per row and pixels.onnx once per pixel, on the "
        f"{columns_window(config)} columns that pixel's logits depend on."
    )


def sections_of(config: PixelCnnConfig) -> dict:
    """The config's family sections but the labels: step policy, sample cap, params."""
    return {
        "stepping": StepPolicy(max_running=64, max_waiting=1024),
        "max_num_samples": 64,
        "params": {
            "image_shape": list(IMAGE_SHAPE),
            "network": dataclasses.asdict(config),
            "levels": config.levels,
            "rows_window": config.rows_window,
            "columns_window": columns_window(config),
            "sampler": "fast",
        },
    }


def load_checkpoint(path: Path) -> PixelCnn:
    """Rebuild the PixelCNN from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, PixelCnn, PixelCnnConfig)


def load_version(folder: Path) -> tuple[PixelCnn, ModelSpec]:
    """The network of an exported version, its weights read back from ``pixelcnn.onnx``.

    Every weight is there but the last layer's vertical class embedding: that
    layer's vertical output feeds nothing, so the export dropped it (it stays
    as initialised, and nothing reads it).

    Raises:
        ValueError: the folder is not a PixelCNN version, or a weight is missing.
    """
    spec = repository.read_config(folder)
    if spec.family != "pixelcnn" or "network" not in spec.params:
        raise ValueError(f"{folder} is not a PixelCNN version (family {spec.family!r})")
    model = PixelCnn(PixelCnnConfig(**spec.params["network"]))
    wanted = model.state_dict()
    weights = {
        item.name: torch.from_numpy(numpy_helper.to_array(item).copy())
        for item in onnx.load(folder / "pixelcnn.onnx").graph.initializer
        if item.name in wanted
    }
    unused = {f"layers.{model.config.layers - 1}.v_class.weight"}
    missing = set(model.load_state_dict(weights, strict=False).missing_keys) - unused
    if missing:
        raise ValueError(f"{folder / 'pixelcnn.onnx'} lacks weights: {', '.join(sorted(missing))}")
    return model.eval(), spec


def reexport(source: Path, out: Path, version: int, command: str, overwrite: bool = False) -> Path:
    """Write ``version`` of the model in ``source`` from its weights, with this module's graphs.

    The card is the source's (training, data, metrics), with the new graphs'
    parity, files, versions and date, and an ``exported_from`` entry saying
    where the weights came from and by which ``command``.

    Returns:
        The version folder written.
    """
    model, spec = load_version(source)
    name = spec.name or source.parent.name
    old = spec.card or Card()
    with repository.staged_version(out, name, version, overwrite=overwrite) as folder:
        graphs, parity = export_graphs(model, folder)
        card = dataclasses.replace(
            old,
            description=describe(model, pipeline.dataset_name(old.dataset or "")),
            parity=parity,
            files=repository.file_records(folder, [g.file for g in graphs.values()]),
            framework=pipeline.framework_versions(),
            created_utc=repository.utc_now_iso(),
            extra={
                **old.extra,
                "exported_from": {
                    "version": int(source.name) if source.name.isdigit() else source.name,
                    "weights": "read back from that version's pixelcnn.onnx",
                    "command": command,
                },
            },
        )
        params = {**spec.params, **sections_of(model.config)["params"]}  # others stay
        repository.write_config(
            folder,
            ModelSpec(
                name=name, family=spec.family, graphs=graphs, card=card, labels=spec.labels,
                stepping=spec.stepping, max_num_samples=spec.max_num_samples, params=params,
            ),
        )  # fmt: skip
    return repository.version_dir(out, name, version)


EXPORTER = PixelCnnExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
