"""The models one process serves, loaded from the repository and kept fresh.

Each model is served at its newest version that loads. A poll looks for new
version folders: a new one is loaded beside the old, swapped in when ready,
and the old one drained; one that fails to load is refused with one log line
and the previous version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from genserve.runtime import errors, metrics
from genserve.runtime.model import LoadContext, ServedModel
from genserve.runtime.repository import ModelConfigError, load_config, scan

logger = logging.getLogger(__name__)

ModelFactory = Callable[..., ServedModel]


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
        self._refused: set[Path] = set()
        self._loaded_once = False

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

    async def refresh(self) -> bool:
        """Load whatever is newer than what is served; True if anything changed."""
        changed = False
        for name, version_dirs in scan(self.root, self.family).items():
            current = self._models.get(name)
            for folder in version_dirs:  # newest first
                if current is not None and int(folder.name) <= int(current.config.version):
                    break
                if folder in self._refused:
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
                    await current.close()
                break
        self._loaded_once = True
        return changed

    async def _load(self, folder: Path) -> ServedModel | None:
        """Load and start one version, or log why not and remember the refusal."""
        started = time.monotonic()
        try:
            config = load_config(folder)
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, self._factory, config, self._context)
            await model.start()
        except (ModelConfigError, errors.GenserveError, OSError) as exc:
            logger.error("refused model version %s: %s", folder, exc)
            self._refused.add(folder)
            return None
        except Exception as exc:
            logger.error("refused model version %s: %s: %s", folder, type(exc).__name__, exc)
            self._refused.add(folder)
            return None
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

    async def close(self) -> None:
        """Drain and stop every model."""
        for model in self._models.values():
            await model.close()
