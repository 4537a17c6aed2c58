"""The models one process serves, loaded from the repository and kept fresh.

Each model is served at its newest version that loads. A poll looks for new
version folders: a new one is loaded beside the old and swapped in when
ready. Calls (and streams) hold the version they started on (`use`): new
calls go to the new version, and the old one is closed when its last call
ends, so a swap fails no call. A version that fails to load is refused with one log line
and the previous version keeps serving. A refused version is not tried again
while its folder is unchanged (no reload storm); once its files have changed
and then held still for one poll, it is tried again, so a version copied in
file by file is served once it is whole, and a slow copy is not re-read at
every poll.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from genserve.runtime import errors, metrics
from genserve.runtime.model import LoadContext, ServedModel
from genserve.runtime.repository import (
    FolderFingerprint,
    ModelConfigError,
    fingerprint,
    load_config,
    scan,
)

logger = logging.getLogger(__name__)

ModelFactory = Callable[..., ServedModel]


@dataclass
class _Refusal:
    """A version folder that failed to load, and what its files looked like."""

    refused_as: FolderFingerprint
    """The folder's fingerprint taken just before the load that failed."""
    last_seen: FolderFingerprint
    """The fingerprint at the latest poll; a retry waits until it holds still."""


class ModelRegistry:
    """Name -> served model for one family.

    Args:
        root: the model repository.
        family: the family this process serves.
        factory: builds a ServedModel from (config, context).
        context: how graphs are opened.
    """

    def __init__(
        self, root: Path, family: str, factory: ModelFactory, context: LoadContext
    ) -> None:
        self.root = root
        self.family = family
        self._factory = factory
        self._context = context
        self._models: dict[str, ServedModel] = {}
        self._refused: dict[Path, _Refusal] = {}
        self._loaded_once = False
        self._calls: collections.Counter[ServedModel] = collections.Counter()
        """Calls running on each model version."""
        self._drained: dict[ServedModel, asyncio.Event] = {}
        """Swapped-out versions still running calls: set when their last call ends."""
        self._retiring: set[asyncio.Task] = set()

    @property
    def loaded(self) -> bool:
        """Whether the first scan of the repository has finished."""
        return self._loaded_once

    def names(self) -> list[str]:
        return sorted(self._models)

    def models(self) -> list[ServedModel]:
        return [self._models[n] for n in self.names()]

    def get(self, name: str, call: str | None) -> ServedModel:
        """The model serving `name`, if it supports `call` (None: any call).

        Raises:
            InvalidArgument: no name was given.
            NotFound: no such model here.
            Unimplemented: its family does not support the call.
        """
        if not name:
            raise errors.InvalidArgument("model_name", "is required")
        model = self._models.get(name)
        if model is None:
            if not self._loaded_once:
                raise errors.Unavailable("models are still loading; retry shortly")
            raise errors.NotFound(name, self.names())
        if call is not None and call not in model.calls:
            raise errors.Unimplemented(name, model.family, call, list(model.calls))
        return model

    @contextlib.asynccontextmanager
    async def use(self, name: str, call: str | None) -> AsyncIterator[ServedModel]:
        """The model serving `name` (see `get`), held for one call or stream.

        A version swapped out while the call runs stays open until the call
        ends, and is closed after the last one.
        """
        model = self.get(name, call)
        self._calls[model] += 1
        try:
            yield model
        finally:
            self._calls[model] -= 1
            if not self._calls[model]:
                del self._calls[model]
                if model in self._drained:
                    self._drained[model].set()

    async def refresh(self) -> bool:
        """Load whatever is newer than what is served; True if anything changed."""
        changed = False
        found = scan(self.root, self.family)
        self._forget_gone(found)
        for name, version_dirs in found.items():
            current = self._models.get(name)
            for folder in version_dirs:  # newest first
                if current is not None and int(folder.name) <= int(current.config.version):
                    break
                if not self._worth_trying(folder):
                    continue
                loaded = await self._load(folder)
                if loaded is None:
                    continue
                self._models[name] = loaded
                changed = True
                if current is not None:
                    logger.info(
                        "model %s: version %s replaces %s",
                        name,
                        folder.name,
                        current.config.version,
                    )
                    metrics.MODEL_LOADED.labels(model=name, version=current.config.version).set(0)
                    await self._retire(current)
                break
        self._loaded_once = True
        return changed

    def _worth_trying(self, folder: Path) -> bool:
        """False for a refused folder unchanged since, or still changing."""
        refusal = self._refused.get(folder)
        if refusal is None:
            return True
        now = fingerprint(folder)
        if now == refusal.refused_as:
            return False
        if now != refusal.last_seen:  # still being written: wait until it holds still
            refusal.last_seen = now
            return False
        logger.info("model version %s changed since it was refused; loading it again", folder)
        return True

    def _forget_gone(self, found: dict[str, list[Path]]) -> None:
        """Drop refusals of version folders that are no longer in the repository."""
        present = {folder for folders in found.values() for folder in folders}
        for folder in self._refused.keys() - present:
            del self._refused[folder]

    def _refuse(self, folder: Path, seen: FolderFingerprint, reason: str) -> None:
        """Log one line, count it, and remember the folder as it was before loading."""
        logger.error("refused model version %s: %s", folder, reason)
        metrics.MODEL_LOAD_FAILURES.labels(model=folder.parent.name).inc()
        self._refused[folder] = _Refusal(refused_as=seen, last_seen=seen)

    async def _load(self, folder: Path) -> ServedModel | None:
        """Load and start one version, or log why not and remember the refusal."""
        started = time.monotonic()
        # Taken before reading, so a file that changes during the load is retried.
        seen = fingerprint(folder)
        try:
            loop = asyncio.get_running_loop()
            # Off the event loop: checking the card's hashes reads every graph.
            config = await loop.run_in_executor(None, load_config, folder)
            model = await loop.run_in_executor(None, self._factory, config, self._context)
            await model.start()
        except (ModelConfigError, errors.GenserveError, OSError) as exc:
            self._refuse(folder, seen, str(exc))
            return None
        except Exception as exc:
            self._refuse(folder, seen, f"{type(exc).__name__}: {exc}")
            return None
        self._refused.pop(folder, None)
        elapsed = time.monotonic() - started
        metrics.MODEL_LOAD_DURATION.labels(model=config.name).observe(elapsed)
        metrics.MODEL_LOADED.labels(model=config.name, version=config.version).set(1)
        logger.info("loaded model %s version %s in %.2fs", config.name, config.version, elapsed)
        return model

    async def poll(self, interval_s: float) -> None:
        """Refresh every interval_s seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                logger.exception("model repository poll failed")

    async def _retire(self, model: ServedModel) -> None:
        """Close a swapped-out version now, or after its last running call."""
        if not self._calls[model]:
            await model.close()
            return
        drained = self._drained[model] = asyncio.Event()
        logger.info(
            "model %s version %s closes after its %d running calls",
            model.config.name,
            model.config.version,
            self._calls[model],
        )

        async def close_when_drained() -> None:
            await drained.wait()
            del self._drained[model]
            await model.close()
            logger.info("model %s version %s closed", model.config.name, model.config.version)

        task = asyncio.create_task(close_when_drained())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Drain and stop every model, swapped-out versions still draining included."""
        for drained in self._drained.values():
            drained.set()  # the server has stopped: no call is left to wait for
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for model in self._models.values():
            await model.close()
