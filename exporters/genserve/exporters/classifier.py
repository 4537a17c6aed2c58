"""The evaluation classifier: a small CNN on Fashion-MNIST that scores generated images.

Trains on the 60,000 training images, records its accuracy on the 10,000 test
images, and writes ``fashion-classifier.onnx`` (image -> ``logits``, ``features``)
and its card ``fashion-classifier.json`` to ``--out``::

    python -m genserve.exporters.classifier --out bench/quality --epochs 8 --seed 0

``features`` is the penultimate layer (the input of the last linear layer):
:mod:`genserve.exporters.evaluate` takes the Fréchet distance between the
Gaussians fitted to it, and reads ``logits`` for class-conditional accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genserve.exporters import onnx_export, repository, training
from genserve.exporters.data import FASHION_CLASSES, DatasetMissing, load_fashion_mnist
from genserve.runtime.schema import to_json

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.classifier"
ONNX_FILE = "fashion-classifier.onnx"
CARD_FILE = "fashion-classifier.json"
OUTPUT_NAMES = ("logits", "features")
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ClassifierConfig:
    """Shape of the CNN."""

    channels: tuple[int, int, int] = (32, 64, 64)
    """Conv widths at 28x28, 14x14 and 7x7."""
    feature_dim: int = 128
    """Width of the penultimate layer: the features the Fréchet distance uses."""
    dropout: float = 0.3
    """Dropout on the features while training."""
    num_classes: int = len(FASHION_CLASSES)
    """Number of logits."""


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class Classifier(nn.Module):
    """image (B, 1, 28, 28) in [0, 1] -> logits (B, K), features (B, F)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.channels
        self.config = config
        self.body = nn.Sequential(
            _conv_block(1, c1),
            nn.MaxPool2d(2),  # 28 -> 14
            _conv_block(c1, c2),
            nn.MaxPool2d(2),  # 14 -> 7
            _conv_block(c2, c3, stride=2),  # 7 -> 4
        )
        self.penultimate = nn.Sequential(nn.Linear(c3 * 4 * 4, config.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(image - 0.5)  # (B, C3, 4, 4)
        features = self.penultimate(h.flatten(1))  # (B, F)
        logits = self.head(self.dropout(features))  # (B, K)
        return logits, features


def train_classifier(
    config: ClassifierConfig, train_config: training.TrainConfig, *, seed: int
) -> tuple[Classifier, training.TrainResult]:
    """Train on the Fashion-MNIST training set with random horizontal flips."""
    generator = training.seed_everything(seed)
    flips = torch.Generator().manual_seed(seed + 1)
    train = load_fashion_mnist("train")
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model = Classifier(config)

    def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        batch = images[index]  # (B, 1, 28, 28)
        flip = torch.rand(len(batch), generator=flips) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        logits, _ = model(batch)
        loss = F.cross_entropy(logits, labels[index])
        return loss, {"ce": loss.item()}

    # The training loop batches its data along the first axis: hand it the indices.
    result = training.train(
        model, loss_fn, torch.arange(len(images)), train_config, generator=generator
    )
    return model, result


def onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of the exported graph, the one evaluation actually runs."""
    session = onnx_export.cpu_session(path)
    hits = 0
    for start in range(0, len(images), 1000):
        logits, _ = session.run(list(OUTPUT_NAMES), {"image": images[start : start + 1000]})
        hits += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return hits / len(images)


def export_classifier(model: Classifier, out: Path, card: dict) -> Path:
    """Write the ONNX graph (checked against PyTorch) and its card to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    onnx_model = onnx_export.export_onnx(
        model,
        (torch.rand(2, *IMAGE_SHAPE),),
        path,
        input_names=["image"],
        output_names=OUTPUT_NAMES,
    )
    parity = onnx_export.check_parity(
        model, path, lambda n, rng: {"image": rng.random((n, *IMAGE_SHAPE), dtype=np.float32)}
    )
    test = load_fashion_mnist("test")
    card = {
        **card,
        "test_accuracy": round(onnx_accuracy(path, test.images, test.labels), 4),
        "test_images": len(test),
        "feature_dim": model.config.feature_dim,
        "classes": list(FASHION_CLASSES),
        "onnx": {"file": ONNX_FILE, **onnx_export.graph_signature(onnx_model)},
        "parity": {"batch_sizes": list(onnx_export.PARITY_BATCH_SIZES), "max_abs_diff": parity},
        "files": to_json(repository.file_records(out, [ONNX_FILE])),
        "framework": {
            "torch": torch.__version__.split("+")[0],
            "onnx_opset": onnx_export.ONNX_OPSET,
        },
        "created_utc": repository.utc_now_iso(),
    }
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/quality"), help="folder to write")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (a quick run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("genserve").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)  # named __main__ under python -m
    torch.set_num_threads(args.threads)
    try:
        train_config = training.TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_steps=args.max_steps,
        )
        model, result = train_classifier(ClassifierConfig(), train_config, seed=args.seed)
    except (DatasetMissing, ValueError) as e:
        sys.exit(f"{PROG}: error: {e}")
    card = {
        "description": "Small CNN (3 conv blocks, 128-d penultimate layer) trained on the "
        "Fashion-MNIST training set; scores generated images for docs/quality.md.",
        "dataset": "Fashion-MNIST, 60,000 train / 10,000 test images "
        "(Debian package dataset-fashion-mnist)",
        "command": f"{PROG} {shlex.join(argv)}",
        "seed": args.seed,
        "epochs": result.epochs,
        "steps": result.steps,
        "training_time_s": result.training_time_s,
    }
    path = export_classifier(model, args.out, card)
    logger.info(
        "test accuracy %.4f", json.loads((args.out / CARD_FILE).read_text())["test_accuracy"]
    )
    print(path)


if __name__ == "__main__":
    main()
