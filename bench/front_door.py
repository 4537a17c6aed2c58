"""CPU per call at the front door: the family service and the gateway, before and after.

    python bench/front_door.py --before 5b4cae5 --rounds 3 --report docs/benchmarks.md

For each source tree (this checkout, "after", and the commit given by
`--before`, checked out once into a git worktree under .cache/), it starts a
vae family service and a gateway in front of it on free loopback ports, with
metrics on in both and, where the tree has them, API keys on at the gateway
(the load sends a valid key). It then runs Decode of one latent code on
vae-fashion at each concurrency, direct to the family service and through
the gateway, the trees taking turns cell by cell and each round rotating who
goes first. A bare proxy (`bench/bare_proxy.py`: bytes in, bytes out, nothing
else) in front of the after tree's family service is measured beside the
gateways: what one gRPC hop in Python costs with no work of genserve's in it
(and, as "bare server", the same proxy answering from stored answers: what
receiving and answering a call costs with no hop onwards);
so is the after gateway with `--no-relay` (one RPC per forwarded call).

A cell reports req/s and latency (its median round by req/s) and each
process's CPU-ms per call: the process's own user+system CPU time over the
cell (from /proc/<pid>/stat, all its threads) divided by the calls answered.
A direct cell charges only the family service; a gateway cell charges both.
The load generator runs on the same machine but is not charged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from front_door_report import judge_goals, print_tables, write_section
from loadgen import run_load
from run_benchmarks import (
    REPO,
    BenchError,
    describe_machine,
    relative,
    run_in_tempdir,
    wait_for_model,
)
from steploop import median_round

from genserve.gateway.auth import hash_key
from genserve.runtime.supervisor import ChildProcess, Supervisor, free_ports, python_module_command

PATHS = ("direct", "gateway")
BARE_SERVER = "bare server"
"""The bare proxy answering from stored answers: a gRPC server's own cost per call."""
NO_RELAY = "after, no relay"
"""The after tree's gateway with --no-relay, in front of the after tree's family service."""
_API_KEY = "front-door-benchmark-key"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Tree:
    """A source tree whose services are measured."""

    label: str
    """"before" or "after"."""
    root: Path
    """The checkout: its services, client and models are used."""
    commit: str
    """The commit it was checked out at."""

    @property
    def env(self) -> dict[str, str]:
        """The environment that imports this tree's genserve first."""
        paths = [self.root / "services", self.root / "clients" / "python" / "src"]
        return {"PYTHONPATH": os.pathsep.join(map(str, paths))}

    @property
    def has_api_keys(self) -> bool:
        return (self.root / "services" / "genserve" / "gateway" / "auth.py").exists()


@dataclass(frozen=True)
class Deployment:
    """A family service and what stands in front of it."""

    label: str
    """"before", "after", "after, no relay" or "bare proxy"."""
    service: ChildProcess
    service_target: str
    gateway: ChildProcess
    gateway_target: str
    metadata: tuple[tuple[str, str], ...] = ()
    """Sent with every call (the API key, where the gateway checks keys)."""
    paths: tuple[str, ...] = PATHS
    """The paths measured: the bare proxy's service is the after tree's, measured there."""

    def target(self, path: str) -> str:
        return self.service_target if path == "direct" else self.gateway_target

    def charged(self, path: str) -> dict[str, ChildProcess]:
        """The processes a call on `path` runs through, by role."""
        if path == "direct":
            return {"service": self.service}
        return {"service": self.service, "gateway": self.gateway}


def cpu_seconds(pid: int) -> float:
    """The user+system CPU time a process has used, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def checkout(commit: str) -> Tree:
    """The tree at `commit`, checked out once into .cache/ as a detached worktree."""
    full = _git("rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    root = REPO / ".cache" / f"worktree-{full[:12]}"
    if not root.exists():
        _git("worktree", "add", "--detach", str(root), full)
    return Tree("before", root, full[:12])


def this_tree() -> Tree:
    commit = _git("rev-parse", "HEAD").strip()[:12]
    dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
    return Tree("after", REPO, commit + (" (uncommitted changes)" if dirty else ""))


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout


def start(sup: Supervisor, tree: Tree, work: Path, timeout_s: float) -> Deployment:
    """Start `tree`'s vae service and gateway (metrics on; API keys where it has them)."""
    port, metrics_port = free_ports(2)
    service = f"127.0.0.1:{port}"
    argv = python_module_command(
        "genserve.families",
        *("--family", "vae", "--models", str(tree.root / "models"), "--host", "127.0.0.1"),
        *("--port", str(port), "--metrics-port", str(metrics_port)),
    )
    child = sup.start(f"vae {tree.label}", argv, health_target=service, env=tree.env)
    sup.wait_healthy(child, timeout_s)
    return start_gateway(sup, tree, (child, service), tree.label, work, timeout_s)


def start_gateway(
    sup: Supervisor,
    tree: Tree,
    behind: tuple[ChildProcess, str],
    label: str,
    work: Path,
    timeout_s: float,
    *flags: str,
) -> Deployment:
    """`tree`'s gateway, with `flags`, in front of `behind` (a family service and its target)."""
    service, service_target = behind
    gw_port, gw_metrics_port = free_ports(2)
    gw_flags = ["--host", "127.0.0.1", "--port", str(gw_port), "--backend", service_target]
    gw_flags += ["--metrics-port", str(gw_metrics_port), *flags]
    metadata: tuple[tuple[str, str], ...] = ()
    if tree.has_api_keys:
        keys = work / f"keys-{tree.label}.json"
        keys.write_text(json.dumps({"keys": [{"id": "bench", "sha256": hash_key(_API_KEY)}]}))
        gw_flags += ["--api-keys", str(keys)]
        metadata = (("authorization", f"Bearer {_API_KEY}"),)
    gateway = f"127.0.0.1:{gw_port}"
    gw = sup.start(
        f"gateway {label}",
        python_module_command("genserve.gateway", *gw_flags),
        health_target=gateway,
        env=tree.env,
    )
    sup.wait_healthy(gw, timeout_s)
    paths = PATHS if label == tree.label else ("gateway",)
    return Deployment(label, service, service_target, gw, gateway, metadata, paths)


def start_bare_proxy(
    sup: Supervisor, behind: Deployment, timeout_s: float, label: str, *flags: str
) -> Deployment:
    """A bare proxy (bench/bare_proxy.py, with `flags`) in front of `behind`'s family service."""
    (port,) = free_ports(1)
    argv = [sys.executable, str(Path(__file__).parent / "bare_proxy.py"), "--port", str(port)]
    target = f"127.0.0.1:{port}"
    proxy = sup.start(
        label, [*argv, "--backend", behind.service_target, *flags], health_target=target
    )
    sup.wait_healthy(proxy, timeout_s)
    return Deployment(label, behind.service, behind.service_target, proxy, target, (), ("gateway",))


def measure_cell(
    deployment: Deployment, path: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One cell's load and the CPU each charged process spent on it."""
    processes = deployment.charged(path)
    options = {"call": "decode", "concurrency": concurrency, "metadata": deployment.metadata}
    # Warm up (uncounted), then measure with the processes' clocks read around it.
    run_load(deployment.target(path), args.model, duration_s=args.warmup_s, **options)
    before = {role: cpu_seconds(p.pid) for role, p in processes.items()}
    report = run_load(deployment.target(path), args.model, duration_s=args.duration_s, **options)
    spent = {role: cpu_seconds(p.pid) - before[role] for role, p in processes.items()}
    calls = max(report["ok"], 1)
    report["cpu_ms_per_call"] = {role: round(s * 1000 / calls, 3) for role, s in spent.items()}
    return report


def measure(deployments: Sequence[Deployment], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell `args.rounds` times, the trees taking turns; one median report per cell."""
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        turn = round_ % len(deployments)
        order = [*deployments[turn:], *deployments[:turn]]
        for path in PATHS:
            for concurrency in args.concurrency:
                for deployment in (d for d in order if path in d.paths):
                    label = f"round {round_ + 1}/{args.rounds} {path:7} c{concurrency:<3}"
                    print(f"  {label} {deployment.label:10} ...", end="", flush=True)
                    report = measure_cell(deployment, path, concurrency, args)
                    cpu = ", ".join(f"{k} {v:.2f}" for k, v in report["cpu_ms_per_call"].items())
                    print(f" {report['requests_per_s']:7.1f} req/s, CPU-ms/call {cpu}", flush=True)
                    key = (deployment.label, path, concurrency)
                    runs.setdefault(key, []).append(report)
    cells = []
    for (tree, path, concurrency), reports in runs.items():
        cells.append(
            {
                "tree": tree,
                "path": path,
                **median_round(reports, "requests_per_s"),
                "concurrency": concurrency,
                "rounds_cpu_ms_per_call": [r["cpu_ms_per_call"] for r in reports],
            }
        )
    return cells


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Start both trees' deployments, measure every cell, stop everything."""
    started = time.monotonic()
    trees = [checkout(args.before), this_tree()]
    with Supervisor(log_dir=work) as sup:
        print(f"starting {len(trees)} family services and gateways (logs in {work})", flush=True)
        timeout_s = args.startup_timeout_s
        deployments = [start(sup, tree, work, timeout_s) for tree in trees]
        after = deployments[-1]
        behind = (after.service, after.service_target)
        no_relay = start_gateway(sup, trees[-1], behind, NO_RELAY, work, timeout_s, "--no-relay")
        deployments.append(no_relay)
        deployments.append(start_bare_proxy(sup, after, timeout_s, "bare proxy"))
        deployments.append(start_bare_proxy(sup, after, timeout_s, BARE_SERVER, "--stored"))
        for deployment in deployments:
            for path in deployment.paths:
                target = deployment.target(path)
                wait_for_model(target, args.model, 30.0, metadata=deployment.metadata)
        cells = measure(deployments, args)
        machine = describe_machine(deployments[1].service.log_path)
    return {
        "command": command_line(args),
        "machine": machine,
        "settings": {
            "model": args.model,
            "call": "Decode of 1 latent code",
            "concurrency": args.concurrency,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "rounds": args.rounds,
            "trees": {t.label: t.commit for t in trees},
            "api_keys": {t.label: t.has_api_keys for t in trees},
            "json_out": relative(Path(args.json_out)),
        },
        "cells": cells,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def command_line(args: argparse.Namespace) -> str:
    parts = ["python", "bench/front_door.py", "--before", args.before]
    parts += ["--concurrency", *map(str, args.concurrency)]
    parts += ["--duration-s", str(args.duration_s), "--warmup-s", str(args.warmup_s)]
    parts += ["--rounds", str(args.rounds)]
    if args.report:
        parts += ["--report", relative(Path(args.report))]
    return " ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--model", default="vae-fashion")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--duration-s", type=float, default=5.0, help="measured time per cell")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="warmup per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--startup-timeout-s", type=float, default=120.0)
    parser.add_argument("--report", help="Markdown file whose front-door section is (re)written")
    parser.add_argument("--json-out", default=str(REPO / "bench" / "results" / "front_door.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_in_tempdir("genserve-front-door-", lambda work: run(args, work))
    if results is None:
        return 1
    results["goals"] = judge_goals(results)
    Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_tables(results)
    if args.report:
        write_section(Path(args.report), results)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
