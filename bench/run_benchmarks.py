"""Measure request batching on, fixed and off, direct and through the gateway.

`make bench` runs `python bench/run_benchmarks.py --out docs/benchmarks.md`.
In one run it starts the vae family service three times, with a gateway in
front of each, all on free loopback ports:

- on: the models' own policies, with the adaptive queue delay;
- fixed: the same policies, but every batch waits out the queue delay unless
  it fills (`--fixed-delay`, how Triton's dynamic batcher behaves);
- off: `--max-batch-size 1`.

It then measures Generate (1 sample) on vae-fashion at concurrency 1, 8 and
64 for every {batching} x {path} cell, each after a warmup, and writes a
Markdown report and the raw JSON (bench/results/latest.json). The "## Reading
the numbers" section of an existing report is kept when it is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from genserve.runtime.supervisor import (
    ProcessError,
    Supervisor,
    free_ports,
    python_module_command,
)
from genserve.v1 import model_service_pb2, model_service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chart import plot
from loadgen import run_load
from raw_ort import measure_raw
from report import existing_reading, other_sections, render_report

REPO = Path(__file__).resolve().parents[1]
BATCHING_FLAGS = {"on": [], "fixed": ["--fixed-delay"], "off": ["--max-batch-size", "1"]}
PATHS = ("direct", "gateway")
_PROVIDER_LINE = re.compile(r"onnxruntime (\S+) using (\w+ExecutionProvider)")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


@dataclass(frozen=True)
class Deployment:
    """One family service and the gateway in front of it."""

    batching: str
    """"on", "fixed" or "off"."""
    service: str
    """The family service's host:port."""
    gateway: str
    """The gateway's host:port."""
    service_log: Path | None
    """The family service's log file."""

    def target(self, path: str) -> str:
        """The address a client dials for `path` ("direct" or "gateway")."""
        return self.service if path == "direct" else self.gateway


def start_deployments(sup: Supervisor, models: Path, startup_timeout_s: float) -> list[Deployment]:
    """Start a family service plus gateway per batching mode and wait until all serve."""
    deployments = []
    for batching, flags in BATCHING_FLAGS.items():
        port, metrics_port, gw_port, gw_metrics_port = free_ports(4)
        service = f"127.0.0.1:{port}"
        argv = python_module_command(
            "genserve.families",
            *("--family", "vae", "--models", str(models), "--host", "127.0.0.1"),
            *("--port", str(port), "--metrics-port", str(metrics_port), *flags),
        )
        child = sup.start(f"vae batching-{batching}", argv, health_target=service)
        gateway = f"127.0.0.1:{gw_port}"
        gw_argv = python_module_command(
            "genserve.gateway",
            *("--host", "127.0.0.1", "--port", str(gw_port)),
            *("--metrics-port", str(gw_metrics_port), "--backend", service),
        )
        sup.wait_healthy(child, startup_timeout_s)
        sup.start(f"gateway batching-{batching}", gw_argv, health_target=gateway)
        deployments.append(Deployment(batching, service, gateway, child.log_path))
    sup.wait_all_healthy(startup_timeout_s)
    return deployments


def wait_for_model(
    target: str, model: str, timeout_s: float, *, metadata: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Wait until `target` can describe `model`; returns the model's config.

    A gateway is SERVING before it has learnt its backends' models, so the
    first calls through it may answer NOT_FOUND for a moment. `metadata` goes
    with every call (an API key, where the gateway checks keys).
    """
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = model_service_pb2.DescribeModelRequest(model_name=model)
        while True:
            try:
                reply = stub.DescribeModel(request, timeout=5, metadata=tuple(metadata))
                return json.loads(reply.config_json or "{}")
            except grpc.RpcError as exc:
                if time.monotonic() >= deadline:
                    raise BenchError(f"{target} cannot serve {model}: {exc.details()}") from exc
            time.sleep(0.2)


def measure(
    deployments: Sequence[Deployment],
    model: str,
    concurrencies: Sequence[int],
    duration_s: float,
    warmup_s: float,
    rounds: int,
) -> list[dict[str, Any]]:
    """Run every cell `rounds` times; returns one loadgen report per cell, labelled.

    The deployments take turns cell by cell, and each round rotates who goes
    first, so a drift of the shared machine's speed falls on every batching
    mode alike. A cell reports its median round (by requests/s) and lists the
    requests/s of every round.
    """
    reports: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for round_ in range(rounds):
        turn = round_ % len(deployments)
        order = [*deployments[turn:], *deployments[:turn]]
        for path in PATHS:
            for concurrency in concurrencies:
                for deployment in order:
                    label = (
                        f"round {round_ + 1}/{rounds} {path:7} "
                        f"concurrency {concurrency:3} batching {deployment.batching:5}"
                    )
                    print(f"  {label} ...", end="", flush=True)
                    report = run_load(
                        deployment.target(path),
                        model,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                    )
                    print(f" {report['requests_per_s']:8.1f} req/s", flush=True)
                    key = (path, concurrency, deployment.batching)
                    reports.setdefault(key, []).append(report)
    cells = []
    for (path, _, batching), runs in reports.items():
        median = sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]
        every = [r["requests_per_s"] for r in runs]
        cells.append({"path": path, "batching": batching, **median, "rounds_requests_per_s": every})
    return cells


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, when nvidia-smi answers."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def onnxruntime_in_use(service_log: Path | None) -> str:
    """The onnxruntime version and provider the service logged, else what is available."""
    if service_log is not None and service_log.exists():
        found = _PROVIDER_LINE.search(service_log.read_text(errors="replace"))
        if found:
            return f"onnxruntime {found.group(1)}, {found.group(2)}"
    import onnxruntime

    available = ", ".join(onnxruntime.get_available_providers())
    return f"onnxruntime {onnxruntime.__version__} (provider not logged; available: {available})"


def describe_machine(service_log: Path | None) -> dict[str, Any]:
    """What the numbers were measured on; the onnxruntime provider as `service_log` names it."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "onnxruntime": onnxruntime_in_use(service_log),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_info(deployments: Sequence[Deployment]) -> dict[str, Any]:
    """What the numbers were measured on."""
    return describe_machine(deployments[0].service_log if deployments else None)


def relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it, else its name."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name


def command_line(args: argparse.Namespace, defaults: argparse.Namespace) -> str:
    """The command that reproduces this run (options left at defaults omitted)."""
    parts = ["python", "bench/run_benchmarks.py", "--out", relative(Path(args.out))]
    for name, value in vars(args).items():
        if name in ("out", "json_out", "log_dir", "chart", "from_json"):
            continue
        if value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return " ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """Command-line options, and the defaults (to print a short reproducing command)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks.md", help="Markdown report")
    parser.add_argument("--json-out", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--models", default="models", help="model repository")
    parser.add_argument("--model", default="vae-fashion")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured time per cell")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="warmup per cell")
    parser.add_argument("--rounds", type=int, default=5, help="times every cell is measured")
    parser.add_argument("--startup-timeout-s", type=float, default=120.0)
    parser.add_argument("--log-dir", help="keep the processes' logs here (default: temporary)")
    parser.add_argument(
        "--chart", default="docs/images/benchmarks.png", help="PNG chart; '' writes none"
    )
    parser.add_argument(
        "--from-json", help="measure nothing: rewrite the report and chart from this raw JSON"
    )
    return parser.parse_args(argv), parser.parse_args([])


def run(args: argparse.Namespace, defaults: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Start the deployments, measure every cell, stop everything; returns the results."""
    models = Path(args.models)
    with Supervisor(log_dir=log_dir) as sup:
        n = len(BATCHING_FLAGS)
        print(f"starting {n} family services and {n} gateways (logs in {log_dir})", flush=True)
        deployments = start_deployments(sup, models, args.startup_timeout_s)
        policy = {}
        for deployment in deployments:
            for path in PATHS:
                config = wait_for_model(deployment.target(path), args.model, 30.0)
                policy = policy or config.get("batching", {})
        cells = measure(
            deployments,
            args.model,
            args.concurrency,
            args.duration_s,
            args.warmup_s,
            args.rounds,
        )
        machine = machine_info(deployments)
    print("  raw onnxruntime, same decoder, in this process ...", flush=True)
    raw = measure_raw(models, args.model, args.duration_s)
    settings = {
        "model": args.model,
        "call": "generate",
        "num_samples": 1,
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "rounds": args.rounds,
        "batching_policy": policy,
        "json_out": relative(Path(args.json_out)),
    }
    command = command_line(args, defaults)
    return {
        "command": command,
        "machine": machine,
        "settings": settings,
        "cells": cells,
        "raw_onnxruntime": raw,
    }


def run_in_tempdir(prefix: str, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
    """`run(a temporary folder)`'s results, or None (the reason printed) when the benchmark fails.

    The folder, named `prefix` and a random part, is removed afterwards, on Ctrl-C too.
    """
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run(Path(tmp))
    except (ProcessError, BenchError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return None


def write_outputs(results: dict[str, Any], out: Path, json_out: Path, chart: Path | None) -> None:
    """Write the raw JSON, the chart and the Markdown report (keeping its reading section)."""
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    link = None
    if chart is not None:
        title = f"Generate(n=1) on {results['settings']['model']}, {results['machine']['cpu']}"
        plot(results["cells"], chart, title)
        link = os.path.relpath(chart, out.parent)
    reading, others = existing_reading(out), other_sections(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = render_report(results, reading, link)
    out.write_text(report + ("\n" + others if others else ""), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    args, defaults = parse_args(argv)
    chart = Path(args.chart) if args.chart else None
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        write_outputs(results, Path(args.out), Path(args.json_out), chart)
        print(f"rewrote {relative(Path(args.out))} from {args.from_json}")
        return 0
    if args.rounds < 1 or args.duration_s <= 0:
        print("--rounds must be at least 1 and --duration-s above 0", file=sys.stderr)
        return 2
    if not any(Path(args.models, args.model).glob("*/config.json")):
        print(f"no {args.model} model under {args.models}/: export it first", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = run_in_tempdir(
        "genserve-bench-", lambda tmp: run(args, defaults, Path(args.log_dir or tmp))
    )
    if results is None:
        return 1
    write_outputs(results, Path(args.out), Path(args.json_out), chart)
    written = f"{relative(Path(args.out))} and {relative(Path(args.json_out))}"
    print(f"wrote {written} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
