"""The engine stands apart from the gRPC edge, and serving never imports torch.

Every module of the engine (`genserve.runtime`) and of the families is imported
in a fresh interpreter; none may pull in the edge (`genserve.server`), the
protobuf API stubs (`genserve.v1`: protobuf types stop at the edge) or torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import importlib, json, pkgutil, sys
import genserve.families, genserve.runtime
names = []
for package in (genserve.runtime, genserve.families):
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "__main__":
            names.append(f"{package.__name__}.{info.name}")
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("genserve", "torch"))
print(json.dumps({"imported": names, "loaded": loaded}))
"""


def test_engine_and_families_import_neither_the_edge_nor_the_api_stubs_nor_torch():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    seen = json.loads(out)
    assert "genserve.runtime.batcher" in seen["imported"]
    assert any(m.startswith("genserve.families.") for m in seen["imported"])
    forbidden = [
        m
        for m in seen["loaded"]
        if m.startswith(("genserve.server", "genserve.v1", "genserve.gateway")) or m == "torch"
    ]
    assert forbidden == []
