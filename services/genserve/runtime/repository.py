"""The model repository: `models/<model-name>/<version>/config.json` plus graphs.

A version folder holds the ONNX graph files and a config.json naming the
family, each graph's file and tensor signature, the batching policy, sampler
defaults, labels and the model card (with the sha256 of every file). Loading
checks all of it and quotes whatever is wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.runtime.batcher import BatchPolicy
from genserve.runtime.scheduler import StepPolicy

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")


class ModelConfigError(ValueError):
    """A version folder whose config or files are wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    """The tensor's name in the ONNX graph."""
    dtype: str
    """One of DTYPES."""
    shape: tuple[int, ...]
    """Dimensions; -1 for a dynamic one such as the batch axis."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a model."""

    name: str
    """The graph's role, e.g. "encoder"."""
    path: Path
    """The .onnx file."""
    inputs: tuple[TensorSpec, ...]
    """The graph's inputs."""
    outputs: tuple[TensorSpec, ...]
    """The graph's outputs."""


@dataclass(frozen=True)
class ModelConfig:
    """A loaded, checked config.json of one model version."""

    name: str
    """The model's name; equals its folder's name."""
    family: str
    """The family that serves it, e.g. "vae"."""
    version: str
    """The version folder's name (digits)."""
    path: Path
    """The version folder."""
    graphs: dict[str, GraphSpec]
    """Graphs by role."""
    batching: BatchPolicy
    """Request batching policy for its one-shot graphs (the `batching` section)."""
    stepping: StepPolicy = field(default_factory=StepPolicy)
    """Step scheduling policy for its iterative samplers (the `stepping` section)."""
    max_num_samples: int = 256
    """The most samples one request may ask for."""
    params: dict[str, Any] = field(default_factory=dict)
    """Family parameters, e.g. latent_dim and image_shape."""
    labels: tuple[str, ...] = ()
    """Class names, for class-conditional models."""
    card: dict[str, Any] = field(default_factory=dict)
    """The model card: data, command, seed, metrics, parity, file hashes."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The config file as read."""


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor(where: str, spec: Any) -> TensorSpec:
    if not isinstance(spec, dict) or not {"name", "dtype", "shape"} <= spec.keys():
        raise ModelConfigError(f"{where}: needs name, dtype and shape, got {spec!r}")
    if spec["dtype"] not in DTYPES:
        raise ModelConfigError(f"{where}.dtype: {spec['dtype']!r} is not one of {DTYPES}")
    return TensorSpec(str(spec["name"]), spec["dtype"], tuple(int(d) for d in spec["shape"]))


def _graph(folder: Path, name: str, spec: Any) -> GraphSpec:
    where = f"graphs.{name}"
    if not isinstance(spec, dict) or "file" not in spec:
        raise ModelConfigError(f"{where}: needs a file, got {spec!r}")
    path = folder / spec["file"]
    if not path.is_file():
        raise ModelConfigError(f"{where}.file: {spec['file']!r} does not exist in {folder}")
    inputs = tuple(_tensor(f"{where}.inputs[{i}]", t) for i, t in enumerate(spec.get("inputs", [])))
    outputs = tuple(
        _tensor(f"{where}.outputs[{i}]", t) for i, t in enumerate(spec.get("outputs", []))
    )
    return GraphSpec(name, path, inputs, outputs)


def _check_hashes(folder: Path, card: dict[str, Any]) -> None:
    """Every file the card lists must have the sha256 the card records."""
    for file_name, entry in card.get("files", {}).items():
        expected = entry.get("sha256") if isinstance(entry, dict) else entry
        actual = sha256_of(folder / file_name)
        if expected and actual != expected:
            raise ModelConfigError(
                f"card.files.{file_name}: sha256 {actual} does not match the card's {expected}"
            )


def _policy(kind: type, section: str, raw: dict[str, Any]):
    """One typed policy section of config.json; its defaults when absent."""
    values = raw.get(section, {})
    if not isinstance(values, dict):
        raise ModelConfigError(f"{section}: must be an object, got {values!r}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"{section}: {exc}") from None


def load_config(folder: Path) -> ModelConfig:
    """Read and check one version folder.

    Raises:
        ModelConfigError: naming the bad key and quoting the bad value.
    """
    config_path = folder / CONFIG_FILE
    try:
        raw = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"{config_path} is missing") from None
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{config_path} is not valid JSON: {exc}") from None
    name = folder.parent.name
    if raw.get("name", name) != name:
        raise ModelConfigError(f"name: {raw['name']!r} differs from its folder {name!r}")
    if not isinstance(raw.get("family"), str):
        raise ModelConfigError(f"family: needs a family name, got {raw.get('family')!r}")
    graphs = {g: _graph(folder, g, spec) for g, spec in raw.get("graphs", {}).items()}
    batching = _policy(BatchPolicy, "batching", raw)
    stepping = _policy(StepPolicy, "stepping", raw)
    max_num_samples = int(raw.get("max_num_samples", 256))
    if max_num_samples < 1:
        raise ModelConfigError(f"max_num_samples: must be >= 1, got {max_num_samples}")
    card = raw.get("card", {})
    _check_hashes(folder, card)
    return ModelConfig(
        name=name,
        family=raw["family"],
        version=folder.name,
        path=folder,
        graphs=graphs,
        batching=batching,
        stepping=stepping,
        max_num_samples=max_num_samples,
        params=dict(raw.get("params", {})),
        labels=tuple(raw.get("labels", [])),
        card=card,
        raw=raw,
    )


FolderFingerprint = tuple[tuple[str, int, int, int], ...]
"""Per file of a version folder: (relative name, size, mtime_ns, ctime_ns), sorted."""


def fingerprint(folder: Path) -> FolderFingerprint:
    """What a version folder holds, from file metadata alone (no file is read).

    Any write, truncation, rename or new file changes it: sizes and both
    timestamps are compared, so even a copy that restores the old mtime shows
    (ctime cannot be set back). A folder that vanishes reads as empty.
    """
    entries = []
    try:
        paths = list(folder.rglob("*"))
    except FileNotFoundError:
        return ()
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue  # removed between listing and stat
        if stat.S_ISREG(info.st_mode):
            name = path.relative_to(folder).as_posix()
            entries.append((name, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return tuple(sorted(entries))


def versions(model_dir: Path) -> list[Path]:
    """A model's version folders, newest (highest number) first."""
    found = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name), reverse=True)


def family_of(version_dir: Path) -> str | None:
    """The family a version folder declares, or None if its config is unreadable."""
    try:
        return json.loads((version_dir / CONFIG_FILE).read_text()).get("family")
    except (OSError, json.JSONDecodeError):
        return None


def scan(root: Path, family: str | None = None) -> dict[str, list[Path]]:
    """Models under root (of one family when given): name -> versions, newest first."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist")
    models: dict[str, list[Path]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        found = versions(model_dir)
        if not found:
            continue
        declared = family_of(found[0])
        # An unreadable config is kept so that loading it logs why it is refused.
        if family is None or declared is None or declared == family:
            models[model_dir.name] = found
    return models


def families(root: Path) -> list[str]:
    """The families that have at least one model under root."""
    return sorted({f for v in scan(root).values() if (f := family_of(v[0])) is not None})
