"""The model families genserve serves, each a ServedModel subclass.

Families are imported lazily so a process loads only the one it serves.
"""

from __future__ import annotations

import importlib

from genserve.runtime.model import ServedModel

# family name -> "module:class"
FAMILIES: dict[str, str] = {
    "ae": "genserve.families.latent:AeModel",
    "diffusion": "genserve.families.diffusion:DiffusionModel",
    "aae": "genserve.families.latent:AaeModel",
    "gan": "genserve.families.latent:GanModel",
    "vae": "genserve.families.latent:VaeModel",
    "vaegan": "genserve.families.latent:VaeGanModel",
}


def model_class(family: str) -> type[ServedModel]:
    """The ServedModel subclass of a family.

    Raises:
        ValueError: naming the known families.
    """
    try:
        module_name, class_name = FAMILIES[family].split(":")
    except KeyError:
        raise ValueError(
            f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}"
        ) from None
    return getattr(importlib.import_module(module_name), class_name)
