"""The ceiling a served call is measured against: the same graph on raw ONNX Runtime.

In this process, with no gRPC, no queue and no tensor encoding: one thread runs
the decoder of a generating model back to back, with the session options the
family service uses, at batch 1 (what one Generate(n=1) costs the graph) and at
the model's max batch size (what a full batch costs per row).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from genserve.runtime.session import Graph, SessionOptions


def newest_version(models: Path, model: str) -> Path:
    """The highest-numbered version folder of `model`."""
    versions = [p for p in (models / model).iterdir() if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def measure_raw(models: Path, model: str, duration_s: float, graph: str = "decoder") -> list[dict]:
    """Runs per second and per-run latency of `graph` at batch 1 and at the max batch size.

    Returns one dict per batch size: batch, runs, runs_per_s, rows_per_s, and
    latency_ms with p50 and p99.
    """
    folder = newest_version(models, model)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    spec = config["graphs"][graph]
    session = Graph(folder / spec["file"], SessionOptions())
    rng = np.random.default_rng(0)
    results = []
    for batch in (1, int(config["batching"]["max_batch_size"])):
        inputs = {
            i["name"]: rng.standard_normal((batch, *i["shape"][1:])).astype(i["dtype"])
            for i in spec["inputs"]
        }
        session.run(inputs)  # warm up
        latencies = []
        started = time.perf_counter()
        while (now := time.perf_counter()) - started < duration_s:
            session.run(inputs)
            latencies.append(time.perf_counter() - now)
        elapsed = time.perf_counter() - started
        results.append(_summary(batch, latencies, elapsed))
    return results


def _summary(batch: int, latencies: list[float], elapsed: float) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000
    return {
        "batch": batch,
        "runs": len(latencies),
        "runs_per_s": round(len(latencies) / elapsed, 1),
        "rows_per_s": round(batch * len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
        },
    }
