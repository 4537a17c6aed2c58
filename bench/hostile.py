"""Normal callers under hostile floods: latency, CPU and memory, in one run.

    python bench/hostile.py --json bench/results/hostile.json

Starts a vae family service and a gateway over models/ on free loopback
ports, then measures seeded Generate calls on vae-fashion through the
gateway (8 closed-loop callers) in three kinds of phase, taking turns for
`--rounds` rounds:

- baseline: the callers alone;
- bomb-flood: beside them, `--attackers` closed-loop callers send PNG bombs
  (one 8000x8000 greyscale PNG of 62 KB per request, 64 MB if decoded) to
  every call that takes images (Encode, Reconstruct), through the gateway;
- packed-flood: the same, with as many bombs as fit under the 4 MiB message
  bound in each request (67): a bandwidth flood;
- oversize-flood: the same attackers send 16 MiB requests, over the bound.

Attackers are closed-loop (each sends its next request when the last is
answered: a request flood as fast as the servers answer) unless
`--attack-rate` paces each at a fixed number of requests per second.

For every phase it reports the callers' req/s, p50 and p99, the CPU the
family and the gateway spent per normal call (from /proc, their own
accounting), the attack calls by status code, and the family's resident
memory; a Health/Watch stream on the gateway records any status other than
SERVING for the model. `--code DIR` runs the services from another checkout
(e.g. a worktree of an older commit), for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import tensor_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import run_load_async

REPO = Path(__file__).resolve().parents[1]
MODEL = "vae-fashion"
PHASES = ("baseline", "bomb-flood", "packed-flood", "oversize-flood")
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def bombs(request_bytes: int, model: str = MODEL) -> list[tuple[str, bytes]]:
    """Encode and Reconstruct requests for `model` of about `request_bytes`, full of PNG bombs."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG")
    one = buffer.getvalue()
    images = tensor_pb2.ImageInput(pngs=[one] * max(1, (request_bytes - 4096) // len(one)))
    return [
        ("Encode", pb.EncodeRequest(model_name=model, images=images).SerializeToString()),
        ("Reconstruct", pb.ReconstructRequest(model_name=model, images=images).SerializeToString()),
    ]


async def attack(
    target: str, requests: list[tuple[str, bytes]], rate: float, stop: asyncio.Event, codes: Counter
):
    """Send `requests` in turn until stopped: `rate` a second, or as fast as answered (0)."""
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        calls = [(channel.unary_unary(f"/genserve.v1.ModelService/{m}"), b) for m, b in requests]
        turn, due = 0, time.monotonic()
        while not stop.is_set():
            if rate > 0:
                due += 1 / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            call, payload = calls[turn % len(calls)]
            turn += 1
            try:
                await call(payload, timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1


async def phase(
    gateway: str, attackers: int, rate: float, requests, duration_s: float
) -> dict[str, Any]:
    stop, codes = asyncio.Event(), Counter()
    tasks = [
        asyncio.create_task(attack(gateway, requests, rate, stop, codes)) for _ in range(attackers)
    ]
    try:
        load = await run_load_async(gateway, MODEL, concurrency=8, duration_s=duration_s)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return {"load": load, "attacks": dict(codes)}


def watch(target: str, seen: Counter, stop: threading.Event) -> None:
    """Count the gateway's health statuses for the model until stopped."""
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=MODEL)
        )
        threading.Thread(target=lambda: (stop.wait(), stream.cancel()), daemon=True).start()
        try:
            for event in stream:
                seen[health_pb2.HealthCheckResponse.ServingStatus.Name(event.status)] += 1
        except grpc.RpcError:
            pass


def start(sup: Supervisor, code: Path | None) -> tuple[Any, Any, str]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = f"{code / 'services'}:{code / 'clients' / 'python' / 'src'}"
    service_port, gateway_port = free_ports(2)
    family = sup.start(
        "family-vae",
        python_module_command(
            "genserve.families", "--family", "vae", "--models", str(REPO / "models"),
            "--port", str(service_port),
        ),
        health_target=f"127.0.0.1:{service_port}",
        env=env,
    )  # fmt: skip
    sup.wait_healthy(family)
    gateway = sup.start(
        "gateway",
        python_module_command(
            "genserve.gateway", "--backend", f"127.0.0.1:{service_port}",
            "--port", str(gateway_port),
        ),
        health_target=f"127.0.0.1:{gateway_port}",
        env=env,
    )  # fmt: skip
    sup.wait_healthy(gateway)
    return family, gateway, f"127.0.0.1:{gateway_port}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    attacks = {
        "baseline": [],
        "bomb-flood": bombs(1),
        "packed-flood": bombs(4 * 2**20),
        "oversize-flood": bombs(16 * 2**20),
    }
    results: dict[str, list] = {p: [] for p in PHASES}
    seen: Counter = Counter()
    with tempfile.TemporaryDirectory() as logs, Supervisor(log_dir=Path(logs), grace_s=5) as sup:
        family, gateway, target = start(sup, args.code)
        asyncio.run(run_load_async(target, MODEL, concurrency=8, duration_s=2))  # warm up
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(target, seen, stop), daemon=True)
        watcher.start()
        rss_before = rss_mb(family.pid)
        for round_ in range(args.rounds):
            for name in PHASES:
                cpu = (cpu_s(family.pid), cpu_s(gateway.pid))
                attackers = args.attackers if attacks[name] else 0
                result = asyncio.run(
                    phase(target, attackers, args.attack_rate, attacks[name], args.duration_s)
                )
                ok = max(1, result["load"]["ok"])
                result["family_cpu_ms_per_call"] = 1e3 * (cpu_s(family.pid) - cpu[0]) / ok
                result["gateway_cpu_ms_per_call"] = 1e3 * (cpu_s(gateway.pid) - cpu[1]) / ok
                result["family_rss_mb"] = rss_mb(family.pid)
                results[name].append(result)
                print(f"round {round_ + 1} {name}: {summary(result)}", flush=True)
        peak = rss_mb(family.pid)
        deadline = time.monotonic() + args.settle_s
        while time.monotonic() < deadline and rss_mb(family.pid) > rss_before + 50:
            time.sleep(0.5)
        settled = rss_mb(family.pid)
        stop.set()
        watcher.join(10)
    return {
        "code": commit_of(args.code or REPO),
        "attackers": args.attackers,
        "attack_rate_per_attacker": args.attack_rate,
        "duration_s": args.duration_s,
        "phases": results,
        "health_seen": dict(seen),
        "family_rss_mb": {"before": rss_before, "after_last_phase": peak, "settled": settled},
    }


def commit_of(checkout: Path) -> str:
    """The short commit of a checkout, with "+changes" when its tree differs from it."""
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head + ("+changes" if dirty else "")


def summary(result: dict[str, Any]) -> str:
    load = result["load"]
    return (
        f"{load['requests_per_s']:.0f} req/s, p50 {load['latency_ms']['p50']:.1f} ms, "
        f"p99 {load['latency_ms']['p99']:.1f} ms, errors {load['errors']}, "
        f"family {result['family_cpu_ms_per_call']:.2f} / gateway "
        f"{result['gateway_cpu_ms_per_call']:.2f} CPU-ms per call, attacks {result['attacks']}, "
        f"family RSS {result['family_rss_mb']:.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=6.0, help="per phase")
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument(
        "--attack-rate", type=float, default=0.0, help="requests/s per attacker; 0: closed loop"
    )
    parser.add_argument("--settle-s", type=float, default=30.0, help="wait for memory to settle")
    parser.add_argument("--code", type=Path, help="run the services from this checkout")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = run(args)
    print(json.dumps({k: v for k, v in results.items() if k != "phases"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
