"""Write one version folder of the model repository: ``<out>/<name>/<version>/``.

The folder is assembled in a hidden staging folder beside it and renamed into
place only when everything in it is written, so a service watching the
repository never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path, names: list[str]) -> dict[str, dict]:
    """``{file name: {"sha256": ..., "bytes": ...}}`` for the model card."""
    return {
        name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
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


def write_config(folder: Path, config: dict) -> Path:
    """Write ``config.json`` (indented, keys in the given order, newline at the end)."""
    path = folder / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
