"""Write one version folder of the model repository: ``<out>/<name>/<version>/``.

The folder is assembled in a hidden staging folder beside it and renamed into
place only when everything in it is written, so a service watching the
repository never sees a half-written version. Its config.json is a
:class:`~genserve.runtime.schema.ModelSpec`, the schema the services read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genserve.runtime.repository import CONFIG_FILE, read_config, sha256_of
from genserve.runtime.schema import FileRecord, ModelSpec, to_json

__all__ = [
    "CONFIG_FILE",
    "check_free",
    "file_records",
    "read_config",
    "sha256_of",
    "staged_version",
    "utc_now_iso",
    "version_dir",
    "write_config",
]

logger = logging.getLogger(__name__)


def file_records(folder: Path, names: list[str]) -> dict[str, FileRecord]:
    """The model card's record of each named file: its sha256 and size."""
    return {
        name: FileRecord(sha256=sha256_of(folder / name), bytes=(folder / name).stat().st_size)
        for name in names
    }


def utc_now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def version_dir(out: Path, name: str, version: int) -> Path:
    """``<out>/<name>/<version>``, after checking the name and version."""
    if not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"model name must be a plain folder name, got {name!r}")
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    return Path(out) / name / str(version)


def check_free(out: Path, name: str, version: int, *, overwrite: bool = False) -> Path:
    """The version folder, after checking that it may be written.

    Raises:
        ValueError: the name or version is not valid.
        FileExistsError: the version exists and ``overwrite`` is false.
    """
    final = version_dir(out, name, version)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; choose another version or pass --overwrite")
    return final


@contextlib.contextmanager
def staged_version(
    out: Path, name: str, version: int, *, overwrite: bool = False
) -> Iterator[Path]:
    """Yield a staging folder; on a clean exit it becomes ``<out>/<name>/<version>``.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is false.
    """
    final = check_free(out, name, version, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=final.parent))
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final.chmod(0o755)  # mkdtemp makes the folder private to its owner
    logger.info("wrote %s", final)


def write_config(folder: Path, config: ModelSpec | Mapping[str, Any]) -> Path:
    """Write ``config.json``: indented, keys in the schema's order, newline at the end.

    A mapping is checked against the schema first, so nothing the services
    would refuse is written. The file is replaced in one step: a service
    reloading the folder never reads half of it.

    Raises:
        ModelConfigError: the config does not fit the schema; names the field.
    """
    spec = config if isinstance(config, ModelSpec) else ModelSpec.from_json(to_json(config))
    descriptor, temp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=folder)
    with os.fdopen(descriptor, "w") as f:
        f.write(json.dumps(spec.to_json(), indent=2) + "\n")
    os.chmod(temp, 0o644)
    path = folder / CONFIG_FILE
    os.replace(temp, path)
    return path
