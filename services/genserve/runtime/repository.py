"""The model repository: `models/<model-name>/<version>/config.json` plus graphs.

A version folder holds the ONNX graph files and a config.json naming the
family, each graph's file and tensor signature, the batching policy, sampler
defaults, labels and the model card (with the sha256 of every file); its
schema is `genserve.runtime.schema`. Loading checks all of it, and that the
files are there and are those the card records, and quotes whatever is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path

from genserve.runtime.schema import NOT_IN_FILE, Card, ModelConfigError, ModelSpec

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelSpec):
    """A loaded, checked config.json of one model version, and where the version lies."""

    version: str = field(metadata=NOT_IN_FILE)
    """The version folder's name (digits)."""
    path: Path = field(metadata=NOT_IN_FILE)
    """The version folder."""

    def graph_path(self, role: str) -> Path:
        """The .onnx file of one graph."""
        return self.path / self.graphs[role].file


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_files(folder: Path, spec: ModelSpec) -> None:
    """Every graph file exists, and every file the card lists has the sha256 it records."""
    for role, graph in spec.graphs.items():
        if not (folder / graph.file).is_file():
            raise ModelConfigError(f"graphs.{role}.file: {graph.file!r} does not exist in {folder}")
    for file_name, record in ((spec.card or Card()).files or {}).items():
        actual = sha256_of(folder / file_name)
        if record.sha256 and actual != record.sha256:
            raise ModelConfigError(
                f"card.files.{file_name}: sha256 {actual} does not match the card's {record.sha256}"
            )


def read_config(folder: Path) -> ModelConfig:
    """Read one version folder's config.json, checked against the schema; no other file is read.

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
    spec = ModelSpec.from_json(raw)
    name = folder.parent.name
    if spec.name not in (None, name):
        raise ModelConfigError(f"name: {spec.name!r} differs from its folder {name!r}")
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}
    return ModelConfig(**{**fields, "name": name}, version=folder.name, path=folder)


def load_config(folder: Path) -> ModelConfig:
    """Read and check one version folder: its config, and that its files are the card's.

    Raises:
        ModelConfigError: naming the bad key and quoting the bad value.
    """
    config = read_config(folder)
    _check_files(folder, config)
    return config


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
