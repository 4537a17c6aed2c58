"""Remove the exporter's absolute source paths from committed ONNX files.

`python -m genserve.exporters.scrub models` rewrites every `.onnx` file in the
repository without the per-node stack traces that older exports carried,
checks that the graph computes exactly what it did before, and updates the
sha256 and size that the model card records.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx

from genserve.exporters import onnx_export, repository

logger = logging.getLogger(__name__)

_NUMPY = {"float32": np.float32, "int64": np.int64}


def _example_inputs(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of batch 3 that match the graph's signature."""
    inputs = {}
    for tensor in onnx_export.graph_signature(onnx.load(path))["inputs"]:
        shape = [3, *tensor["shape"][1:]]
        if tensor["dtype"] == "int64":
            inputs[tensor["name"]] = rng.integers(0, 10, shape).astype(np.int64)
        else:
            inputs[tensor["name"]] = rng.random(shape, dtype=np.float32)
    return inputs


def scrub_file(path: Path) -> bool:
    """Strip one file in place if it carries stack traces; True if it changed."""
    model = onnx.load(path, load_external_data=False)
    before = model.SerializeToString()
    if onnx_export.strip_source_paths(model).SerializeToString() == before:
        return False
    inputs = _example_inputs(path, np.random.default_rng(0))
    old = onnx_export.cpu_session(before).run(None, inputs)
    new = onnx_export.cpu_session(model.SerializeToString()).run(None, inputs)
    if any(not np.array_equal(a, b) for a, b in zip(old, new, strict=True)):
        raise RuntimeError(f"{path}: outputs changed after stripping metadata")
    onnx.save(model, path)
    return True


def scrub_version(folder: Path) -> list[str]:
    """Scrub a version folder's graphs and update its card; the files changed."""
    changed = [p.name for p in sorted(folder.glob("*.onnx")) if scrub_file(p)]
    if changed:
        config = repository.read_config(folder)
        files = {**config.card.files, **repository.file_records(folder, changed)}
        card = dataclasses.replace(config.card, files=files)
        repository.write_config(folder, dataclasses.replace(config, card=card))
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genserve.exporters.scrub", description=__doc__)
    parser.add_argument("models", type=Path, help="model repository root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for folder in sorted(p for p in args.models.glob("*/*") if p.is_dir()):
        changed = scrub_version(folder)
        logger.info("%s: %s", folder, ", ".join(changed) if changed else "clean")


if __name__ == "__main__":
    main()
