"""What the step-loop benchmarks share: services, rounds, results, command line and main.

`bench/iterative.py` (diffusion: step batching, request-level, one at a time)
and `bench/pixelcnn.py` (the fast PixelCNN sampler against the naive one) both
start one family service per variant on free loopback ports, let the variants
take turns cell by cell for several rounds, keep each cell's median round,
and write a JSON file and one Markdown section. This module is that driver;
one cell's load is `iterative_load.run_window`, the section's shared pieces
are in `iterative_report`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from iterative_load import Service
from run_benchmarks import REPO, BenchError, describe_machine, relative, run_in_tempdir

from genserve.runtime.repository import load_config
from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

Results = dict[str, Any]
_LOADING = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
"""What a family service answers while its model is still loading."""


@dataclass(frozen=True)
class Bench:
    """One step-loop benchmark: its names and its report functions."""

    name: str
    """The script's stem: bench/<name>.py writes bench/results/<name>.json."""
    section: str
    """Its Markdown section's name, in the help and the messages ("diffusion")."""
    quick: dict[str, float]
    """What --quick sets, among the options left at their defaults."""
    judge_goals: Callable[[Results], list[dict[str, Any]]]
    print_tables: Callable[[Results], None]
    """Show the goals and the tables on the terminal."""
    write_section: Callable[[Path, Results], None]
    """(Re)write the benchmark's section of a Markdown file."""

    def default_json_out(self, quick: bool) -> str:
        """Where the raw results go unless --json-out says otherwise."""
        return str(REPO / "bench" / "results" / f"{self.name}{'-quick' if quick else ''}.json")


def start_family_services(
    sup: Supervisor,
    family: str,
    variants: dict[str, tuple[Path, Sequence[str]]],
    args: argparse.Namespace,
) -> dict[str, Service]:
    """One `family` service per variant on loopback, with the same session options; all healthy.

    Args:
        variants: variant -> (its model repository, its extra command-line flags).
    """
    ports = iter(free_ports(2 * len(variants)))
    services = {}
    for variant, (models, flags) in variants.items():
        port, metrics_port = next(ports), next(ports)
        argv = python_module_command(
            "genserve.families",
            *("--family", family, "--models", str(models), "--host", "127.0.0.1"),
            *("--port", str(port), "--metrics-port", str(metrics_port), "--poll-s", "0"),
            *("--provider", args.provider, "--intra-op-threads", str(args.intra_op_threads)),
            *flags,
        )
        child = sup.start(f"{family}-{variant}", argv, health_target=f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        services[variant] = Service(f"127.0.0.1:{port}", child.pid, url)
    sup.wait_all_healthy(args.startup_timeout_s)
    return services


def generate_when_ready(
    target: str, request: pb.GenerateRequest, timeout_s: float
) -> tuple[pb.GenerateResponse, float]:
    """Send `request`, retried while the model loads (after SERVING); the reply and its seconds."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while True:
            started = time.perf_counter()
            try:
                reply = stub.Generate(request, timeout=timeout_s)
                return reply, time.perf_counter() - started
            except grpc.RpcError as exc:
                if exc.code() not in _LOADING or time.monotonic() >= deadline:
                    raise BenchError(
                        f"{target} cannot serve {request.model_name}: "
                        f"{exc.code().name} {exc.details()}"
                    ) from exc
            time.sleep(0.2)


def median_round(runs: list[dict[str, Any]], key: str = "images_per_s") -> dict[str, Any]:
    """The median run by `key`, with every run's value of it (as `rounds_<key>`)."""
    median = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    return {**median, f"rounds_{key}": [r[key] for r in runs]}


def measure_rounds(
    sup: Supervisor,
    variants: Sequence[str],
    args: argparse.Namespace,
    run_cell: Callable[[str, int], dict[str, Any]],
    after_round: Callable[[int], None] | None = None,
    key: str = "images_per_s",
) -> list[dict[str, Any]]:
    """Every cell (concurrency x variant) `args.rounds` times; the median round of each.

    The variants take turns cell by cell and each round rotates who goes first.
    `run_cell(variant, concurrency)` measures one cell; `after_round(round)`, when
    given, runs at the end of every round. A cell's rate `key` (``<unit>s_per_s``)
    picks its median round. Stops with BenchError once a service exits.
    """
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    width = max(map(len, variants))
    for round_ in range(args.rounds):
        turn = round_ % len(variants)
        order = [*variants[turn:], *variants[:turn]]
        for concurrency in args.concurrency:
            for variant in order:
                label = f"concurrency {concurrency:3} {variant:{width}}"
                print(f"  round {round_ + 1}/{args.rounds} {label} ...", end="", flush=True)
                cell = run_cell(variant, concurrency)
                if sup.exited():
                    raise BenchError(f"a service exited: {sup.exited()}")
                unit = key.removesuffix("_per_s")
                print(f" {cell[key]:9.3f} {unit}/s ({cell[unit]})", flush=True)
                cells.setdefault((concurrency, variant), []).append(cell)
        if after_round is not None:
            after_round(round_)
    return [median_round(runs, key) for runs in cells.values()]


def collect_results(
    bench: Bench,
    args: argparse.Namespace,
    defaults: argparse.Namespace,
    folder: Path,
    log: Path | None,
    settings: dict[str, Any],
    measured: dict[str, Any],
) -> Results:
    """The results of a run, goals judged (`main` adds the time it took).

    Args:
        folder: the measured model's version folder.
        log: a service's log, which names the onnxruntime provider it used.
        settings: the benchmark's own settings, between the model's and the session's.
        measured: the rest of the results ("parity", "cells", ...), in order.
    """
    results = {
        "command": command_line(bench, args, defaults),
        "machine": describe_machine(log),
        "settings": {
            "model": args.model,
            "version": folder.name,
            **settings,
            "provider": args.provider,
            "intra_op_threads": args.intra_op_threads,
            "max_running": load_config(folder).stepping.max_running,
            "quick": args.quick,
            "json_out": relative(Path(args.json_out)),
        },
        **measured,
    }
    results["goals"] = bench.judge_goals(results)
    return results


def command_line(bench: Bench, args: argparse.Namespace, defaults: argparse.Namespace) -> str:
    """The command that reproduces this run (options left at their defaults omitted)."""
    parts = ["python", f"bench/{bench.name}.py"]
    for name, value in vars(args).items():
        if name in ("log_dir", "from_json") or value == getattr(defaults, name):
            continue
        if (args.quick and value == bench.quick.get(name)) or (
            name == "json_out" and value == bench.default_json_out(args.quick)
        ):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, relative(Path(value)) if name == "report" else str(value)]
    return " ".join(parts)


def add_model_options(parser: argparse.ArgumentParser, model: str, concurrency: list[int]) -> None:
    """The options every step-loop benchmark starts with: where the model is, how many clients."""
    parser.add_argument("--models", default="models", help="model repository")
    parser.add_argument("--model", default=model)
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)


def parse_options(
    parser: argparse.ArgumentParser, bench: Bench, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, argparse.Namespace]:
    """Add the options every step-loop benchmark ends with, parse `argv` and apply --quick.

    Returns the options and their defaults (to leave those out of the reproducing command).
    """
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0: ONNX Runtime's choice")
    parser.add_argument("--call-timeout-s", type=float, default=120.0, help="deadline per call")
    parser.add_argument("--startup-timeout-s", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="one round of short cells")
    parser.add_argument(
        "--json-out",
        help=f"raw results (default bench/results/{bench.name}.json, -quick with --quick)",
    )
    parser.add_argument(
        "--report", help=f"Markdown file whose {bench.section} section to (re)write"
    )
    parser.add_argument("--log-dir", help="keep the services' logs here (default: temporary)")
    parser.add_argument("--from-json", help="measure nothing: rewrite --report from this JSON")
    args, defaults = parser.parse_args(argv), parser.parse_args([])
    if args.quick:
        for name, value in bench.quick.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    args.json_out = args.json_out or bench.default_json_out(args.quick)
    return args, defaults


def check_cells(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2) rounds or concurrency below 1, a negative warmup or an empty window."""
    if args.rounds < 1 or args.warmup_s < 0 or args.duration_s <= 0 or min(args.concurrency) < 1:
        parser.error("rounds and concurrency must be >= 1, warmup >= 0 and the window above 0")


def main(
    bench: Bench, args: argparse.Namespace, run: Callable[[Path], Results], estimate: str
) -> int:
    """Measure with `run(temporary folder)` (or reread --from-json); write the JSON and section.

    Args:
        estimate: how long measuring takes, printed before it starts.

    Returns:
        The exit status: 0, 1 when the benchmark failed, 2 when the model is missing,
        130 on Ctrl-C (every service stopped, nothing written).
    """
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        results["goals"] = bench.judge_goals(results)
    else:
        if not any(Path(args.models, args.model).glob("*/config.json")):
            print(f"no {args.model} model under {args.models}/: export it first", file=sys.stderr)
            return 2
        print(estimate, flush=True)
        started = time.monotonic()
        try:
            measured = run_in_tempdir(f"genserve-{bench.name}-", run)
        except KeyboardInterrupt:
            print("\ninterrupted: every service was stopped, nothing written", file=sys.stderr)
            return 130
        if measured is None:
            return 1
        results = {**measured, "elapsed_s": round(time.monotonic() - started, 1)}
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {relative(out)} in {results['elapsed_s']:.0f} s")
    bench.print_tables(results)
    if args.report:
        bench.write_section(Path(args.report), results)
        print(f"wrote the {bench.section} section of {relative(Path(args.report))}")
    return 0
