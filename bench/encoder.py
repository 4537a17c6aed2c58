"""Measure the encoder: token-budget batching against batching off, beside its peers.

    python bench/encoder.py --models models --report docs/benchmarks.md

Two encoder family services over a copy of the model (`--model`, default
encoder-minilm) start on free loopback ports, each behind its own gateway:
**tokens**, the model's own policy (a `max_batch_tokens` budget, texts of one
length bucket per run), and **off** (`--max-batch-size 1`: one text per run).
Closed-loop clients send Encode with `--texts-per-call` sentences (mixed
lengths: lines of Shakespeare's validation plays and modern sentences, client
k starting at sentence k) through the gateway, at each concurrency; the modes
take turns cell by cell for `--rounds` rounds and each cell keeps its median
round. A cell reports sentences/s, p50/p99 per call, and the CPU time per
call of the family service and of the gateway, read from /proc/PID/stat at
both ends of its window (the processes' own accounting).

Beside them, what a user would otherwise run, each in its own virtual
environment under .venv-peers/ (never a genserve dependency; `make
encoder-peers` builds them): sentence-transformers in process on PyTorch with
the same weights, `encode` on batches of 1 and of the largest concurrency
(`bench/encoder_peer.py st`), and Infinity (`infinity-emb`) serving the same
folder over HTTP, loaded like genserve. A peer that is not installed, or does
not start offline, is recorded with the reason. The first sentences'
embeddings from genserve and from sentence-transformers are compared
(minimum cosine).

Results go to bench/results/encoder.json and, with --report, into that
Markdown file's encoder section (only that one). `--quick` runs one short
round. Every wait is bounded; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from encoder_http import InfinityPeer, last_lines
from encoder_report import write_section
from iterative_load import process_cpu_s
from loadgen import percentile
from run_benchmarks import REPO, describe_machine

from genserve.client import tensors
from genserve.runtime.supervisor import Supervisor, python_module_command
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

PEERS = REPO / ".venv-peers"
RESULTS = REPO / "bench" / "results" / "encoder.json"
MODES = {"tokens": (), "off": ("--max-batch-size", "1")}
MAX_CALLS_PER_CELL = 200_000
PARITY_SENTENCES = 64


def sentences(count: int = 2000) -> list[str]:
    """Mixed-length sentences: validation-play lines (four words or more), then modern ones."""
    from genserve.exporters.encoder import MODERN_SENTENCES, parity_sentences

    lines = parity_sentences(count - len(MODERN_SENTENCES))
    rng = np.random.default_rng(0)
    return [lines[i] for i in rng.permutation(len(lines))]


class Served:
    """One encoder family service and the gateway in front of it."""

    def __init__(self, sup: Supervisor, models: Path, mode: str) -> None:
        from genserve.runtime.supervisor import free_ports

        port, gateway_port = free_ports(2)
        self.family = sup.start(
            f"encoder-{mode}",
            python_module_command(
                "genserve.families", "--family", "encoder", "--models", str(models),
                "--port", str(port), "--poll-s", "0", *MODES[mode],
            ),
            health_target=f"127.0.0.1:{port}",
        )  # fmt: skip
        sup.wait_healthy(self.family, timeout_s=120)
        self.gateway = sup.start(
            f"gateway-{mode}",
            python_module_command(
                "genserve.gateway", "--backend", f"127.0.0.1:{port}", "--port", str(gateway_port)
            ),
            health_target=f"127.0.0.1:{gateway_port}",
        )
        sup.wait_healthy(self.gateway, timeout_s=60)
        self.target = f"127.0.0.1:{gateway_port}"

    def cpu_s(self) -> tuple[float, float]:
        return process_cpu_s(self.family.pid), process_cpu_s(self.gateway.pid)


async def closed_loop(
    send, texts: Sequence[str], per_call: int, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[list[float], dict[str, int], float, tuple[float, float]]:
    """Clients send back to back; (latencies, errors by code, window seconds, window ends)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.monotonic()
    window = (start + warmup_s, start + warmup_s + duration_s)

    async def client(k: int) -> None:
        index = k * per_call
        while (now := time.monotonic()) < window[1] and len(latencies) < MAX_CALLS_PER_CELL:
            batch = [texts[(index + i) % len(texts)] for i in range(per_call)]
            index += concurrency * per_call
            try:
                await send(batch, window[1] - now + 30)
            except Exception as exc:  # counted, never fatal to the run
                name = (
                    exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                )
                errors[name] = errors.get(name, 0) + 1
                continue
            ended = time.monotonic()
            if window[0] <= now and ended <= window[1]:
                latencies.append(ended - now)

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return latencies, errors, duration_s, window


def summary(latencies: list[float], errors: dict, seconds: float, per_call: int) -> dict[str, Any]:
    return {
        "calls": len(latencies),
        "sentences_per_s": round(len(latencies) * per_call / seconds, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
            "p99": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        },
        "errors": errors,
    }


def grpc_cell(served: Served, model: str, texts, concurrency: int, args) -> dict[str, Any]:
    """One measured cell against a served mode, with the processes' CPU time per call."""

    async def go():
        async with grpc.aio.insecure_channel(served.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)

            async def send(batch, timeout_s):
                await stub.Encode(
                    pb.EncodeRequest(model_name=model, texts=batch), timeout=timeout_s
                )

            loop = asyncio.create_task(
                closed_loop(
                    send, texts, args.texts_per_call, concurrency, args.warmup_s, args.duration_s
                )
            )
            await asyncio.sleep(args.warmup_s)
            before = served.cpu_s()
            result = await loop
            return result, before, served.cpu_s()

    (latencies, errors, seconds, _), before, after = asyncio.run(go())
    cell = summary(latencies, errors, seconds, args.texts_per_call)
    calls = max(1, cell["calls"])
    cell["cpu_ms_per_call"] = {
        "family": round((after[0] - before[0]) / calls * 1000, 2),
        "gateway": round((after[1] - before[1]) / calls * 1000, 2),
    }
    return cell


def genserve_embeddings(served: Served, model: str, texts: list[str]) -> np.ndarray:
    async def go():
        async with grpc.aio.insecure_channel(served.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            reply = await stub.Encode(pb.EncodeRequest(model_name=model, texts=texts), timeout=60)
            return tensors.to_numpy(reply.embeddings)

    return asyncio.run(go())


def run_st(texts: list[str], args, tmp: Path) -> dict[str, Any]:
    """sentence-transformers in process, in its own environment; or why it did not run."""
    python = PEERS / "sentence-transformers" / "bin" / "python"
    if not python.exists():
        return {"skipped": f"{python.relative_to(REPO)} is missing: run make encoder-peers"}
    (tmp / "sentences.json").write_text(json.dumps(texts))
    command = [
        str(python), str(REPO / "bench" / "encoder_peer.py"), "st", "--sentences",
        str(tmp / "sentences.json"), "--batch-sizes", "1", str(max(args.concurrency)),
        "--duration-s", str(args.duration_s), "--warmup-s", str(args.warmup_s),
        "--out", str(tmp / "st.json"), "--threads", str(args.peer_threads),
    ]  # fmt: skip
    limit = 600 + 4 * (args.duration_s + args.warmup_s)
    done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    if done.returncode != 0:
        return {"skipped": f"exited {done.returncode}: {last_lines(done.stderr)}"}
    return json.loads((tmp / "st.json").read_text())


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return round(float(cos.min()), 7)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    texts = sentences()
    repo = tmp / "models"
    shutil.copytree(Path(args.models) / args.model, repo / args.model)
    results: dict[str, Any] = {"settings": settings(args), "cells": []}
    with Supervisor(log_dir=tmp / "logs", grace_s=10) as sup:
        served = {mode: Served(sup, repo, mode) for mode in MODES}
        ours = genserve_embeddings(served["tokens"], args.model, texts[:PARITY_SENTENCES])
        rounds: dict[tuple[str, int], list[dict]] = {}
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                order = list(MODES)[round_ % 2 :] + list(MODES)[: round_ % 2]
                for mode in order:
                    cell = grpc_cell(served[mode], args.model, texts, concurrency, args)
                    print(f"round {round_} c={concurrency} {mode}: {cell}", file=sys.stderr)
                    rounds.setdefault((mode, concurrency), []).append(cell)
        for (mode, concurrency), cells in rounds.items():
            median = sorted(cells, key=lambda c: c["sentences_per_s"])[len(cells) // 2]
            every = [c["sentences_per_s"] for c in cells]
            results["cells"].append({
                "server": "genserve", "mode": mode, "concurrency": concurrency, **median,
                "rounds_sentences_per_s": every,
            })  # fmt: skip
        results["machine"] = describe_machine(sup_log(tmp))
    results["sentence_transformers"] = st = run_st(texts, args, tmp)
    if "parity_embeddings" in st:
        theirs = np.asarray(st.pop("parity_embeddings"), np.float32)
        results["parity"] = {"sentences": len(ours), "min_cosine": min_cosine(ours, theirs)}
    results["infinity"] = InfinityPeer(PEERS / "infinity", tmp).measure(
        texts, args, closed_loop, summary
    )
    return results


def sup_log(tmp: Path) -> Path | None:
    logs = sorted((tmp / "logs").glob("encoder-tokens*.log"))
    return logs[0] if logs else None


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model, "concurrency": args.concurrency, "duration_s": args.duration_s,
        "warmup_s": args.warmup_s, "rounds": args.rounds, "texts_per_call": args.texts_per_call,
        "quick": args.quick, "command": command_line(args),
    }  # fmt: skip


def command_line(args: argparse.Namespace) -> str:
    parts = ["python", "bench/encoder.py", "--models", str(args.models)]
    if args.quick:
        parts.append("--quick")
    parts += ["--concurrency", *map(str, args.concurrency), "--duration-s", str(args.duration_s)]
    parts += ["--warmup-s", str(args.warmup_s), "--rounds", str(args.rounds)]
    parts += ["--texts-per-call", str(args.texts_per_call)]
    if args.peer_threads:
        parts += ["--peer-threads", str(args.peer_threads)]
    if args.report:
        parts += ["--report", str(args.report)]
    return " ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--model", default="encoder-minilm")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts-per-call", type=int, default=1)
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=0,
        help="sentence-transformers' torch threads; 0: default",
    )
    parser.add_argument("--quick", action="store_true", help="one round of 2 s cells")
    parser.add_argument("--report", type=Path, help="rewrite this Markdown file's encoder section")
    parser.add_argument("--json-out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration_s, args.warmup_s = 1, 2.0, 0.5
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genserve-encoder-bench-") as tmp:
        results = run(args, Path(tmp))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    if args.report:
        write_section(args.report, results)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
