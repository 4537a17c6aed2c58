"""FD and class accuracy of a diffusion model at several guidance scales (and step counts).

Samples through the family's own serving code in process, as the evaluation
does, with labels in turn, and scores them with the evaluation classifier
against the Fashion-MNIST test images. Used to choose a model's
``params.default_guidance``::

    .venv/bin/python bench/guidance.py --model models/diffusion-fashion/1 \\
        --scales 1 2 3 4 --samples 2000

FD from fewer samples than the evaluation's 10,000 runs higher; compare
scales with each other, not with docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from genserve.exporters.data import load_fashion_mnist
from genserve.exporters.evaluate import (
    DEFAULT_CLASSIFIER,
    EvalClassifier,
    Gaussian,
    class_accuracy,
    frechet_distance,
)
from genserve.exporters.served import ServedRunner
from genserve.runtime.model import SamplerParams


def sweep(folder: Path, scales: list[float], steps: list[int], samples: int, seed: int) -> list:
    classifier = EvalClassifier.load(DEFAULT_CLASSIFIER)
    _, test_features = classifier.run(load_fashion_mnist("test").images, "test images")
    test = Gaussian.fit(test_features)
    rows = []
    with ServedRunner(folder, threads=0) as runner:
        labels = np.arange(samples, dtype=np.int64) % len(runner.config.labels)
        for step_count in steps:
            for scale in scales:
                started = time.perf_counter()
                sampler = SamplerParams(steps=step_count, guidance_scale=scale)
                images = runner.generate(samples, seed, labels, sampler)
                logits, features = classifier.run(images, f"steps {step_count} scale {scale}")
                row = {
                    "steps": step_count,
                    "guidance_scale": scale,
                    "samples": samples,
                    "fd": round(frechet_distance(Gaussian.fit(features), test), 2),
                    "class_accuracy": round(class_accuracy(logits, labels), 4),
                    "seconds": round(time.perf_counter() - started, 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a version folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rows = sweep(args.model, args.scales, args.steps, args.samples, args.seed)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
