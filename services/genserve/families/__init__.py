"""The model families genserve serves, found by looking, not listed.

A family is a ServedModel subclass with a ``family`` name, defined in a module
of this package (one module may define several, as ``latent`` does). Adding a
family is adding its module: nothing here names one. Family modules import
only the runtime and NumPy at module level (never torch), so finding them all
costs little; a module that fails to import is logged and skipped, and asking
for a family it would have served says why.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
from typing import Any

from genserve.runtime.model import ServedModel

logger = logging.getLogger(__name__)


@functools.cache
def _discover() -> tuple[dict[str, type[ServedModel]], dict[str, str]]:
    """(family -> its ServedModel subclass, module -> why it failed to import)."""
    found: dict[str, type[ServedModel]] = {}
    broken: dict[str, str] = {}
    for module_info in pkgutil.iter_modules(__path__, f"{__name__}."):
        if module_info.name.endswith(".__main__"):
            continue
        try:
            module = importlib.import_module(module_info.name)
        except Exception as exc:  # a half-written family must not take the others down
            broken[module_info.name] = f"{type(exc).__name__}: {exc}"
            logger.warning("family module %s does not import: %s", module_info.name, exc)
            continue
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and issubclass(cls, ServedModel) and cls.family):
                continue
            if cls.__module__ != module.__name__:
                continue  # imported from another family module, found there
            if cls.family in found:
                other = found[cls.family]
                raise ValueError(
                    f"family {cls.family!r} is declared twice: by {other.__module__}."
                    f"{other.__qualname__} and {cls.__module__}.{cls.__qualname__}"
                )
            found[cls.family] = cls
    return dict(sorted(found.items())), broken


def families() -> dict[str, type[ServedModel]]:
    """Every family this package serves: name -> ServedModel subclass, by name."""
    return dict(_discover()[0])


def model_class(family: str) -> type[ServedModel]:
    """The ServedModel subclass of a family.

    Raises:
        ValueError: naming the known families (and any family module that failed to import).
    """
    found, broken = _discover()
    if family in found:
        return found[family]
    message = f"unknown family {family!r}; known: {', '.join(found)}"
    if broken:
        message += "; modules that failed to import: " + "; ".join(
            f"{name} ({why})" for name, why in broken.items()
        )
    raise ValueError(message)


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":  # name -> class, found on first use
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
