"""Closed-loop gRPC load generator for genserve (the project's stand-in for ghz).

`concurrency` workers share one grpc.aio channel; each sends a request, waits
for the answer, and sends the next, until `requests` have been sent or
`duration_s` has passed (whichever comes first; at least one must be given, so
a run always ends by itself). An optional warmup phase runs first and is not
counted. Latency percentiles are over successful calls; failed calls are
counted by status code name.

    python bench/loadgen.py --target 127.0.0.1:50051 --model vae-fashion \\
        --concurrency 8 --duration-s 10 --warmup-s 2

Other scripts call `run_load(...)` (or `run_load_async` inside an event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from genserve.v1 import model_service_pb2, model_service_pb2_grpc, tensor_pb2

CALLS = ("generate", "decode", "describe")
_DECODE_REQUESTS = 64
"""Distinct Decode requests a run cycles through (each a different latent code)."""
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]
_LOCAL_NAMES = ("localhost", "ip6-localhost")

Call = Callable[[int], Awaitable[Any]]


@dataclass
class _Budget:
    """When a phase stops: after `requests` started or at `deadline` (monotonic s)."""

    requests: int | None
    deadline: float | None
    started: int = 0

    def take(self) -> int | None:
        """The index of the next request to send, or None when the phase is over."""
        if self.requests is not None and self.started >= self.requests:
            return None
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return None
        self.started += 1
        return self.started - 1


@dataclass
class _Tally:
    """What one phase saw: latencies of successes and failures by code name."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, like numpy's default.

    Returns NaN for an empty sequence.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine (loopback address, localhost or unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
            break
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or "]" in target else target
    host = host.strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _decode_requests(model: str, num_samples: int, latent_dim: int) -> list[Any]:
    """Decode requests of `num_samples` standard-normal latent codes each."""
    requests = []
    for i in range(_DECODE_REQUESTS):
        draw = random.Random(i)
        values = [draw.gauss(0.0, 1.0) for _ in range(num_samples * latent_dim)]
        latents = tensor_pb2.Tensor(
            dtype=tensor_pb2.DATA_TYPE_FLOAT32,
            shape=[num_samples, latent_dim],
            data=struct.pack(f"<{len(values)}f", *values),
        )
        requests.append(model_service_pb2.DecodeRequest(model_name=model, latents=latents))
    return requests


async def _make_call(
    stub: model_service_pb2_grpc.ModelServiceStub,
    call: str,
    model: str,
    num_samples: int,
    timeout_s: float,
    metadata: Sequence[tuple[str, str]],
) -> Call:
    """A coroutine function that sends request number `i` of the chosen kind."""
    options = {"timeout": timeout_s, "metadata": tuple(metadata)}
    if call == "generate":

        def send(i: int) -> Awaitable[Any]:
            request = model_service_pb2.GenerateRequest(
                model_name=model, num_samples=num_samples, seed=i
            )
            return stub.Generate(request, **options)

        return send
    if call == "decode":
        described = model_service_pb2.DescribeModelRequest(model_name=model)
        info = (await stub.DescribeModel(described, **options)).info
        requests = _decode_requests(model, num_samples, info.latent_dim)
        return lambda i: stub.Decode(requests[i % len(requests)], **options)
    if call == "describe":
        request = model_service_pb2.DescribeModelRequest(model_name=model)
        return lambda i: stub.DescribeModel(request, **options)
    raise ValueError(f"call must be one of {', '.join(CALLS)}, got {call!r}")


async def _worker(send: Call, budget: _Budget, tally: _Tally) -> None:
    """Send requests one after another until the budget is spent."""
    while (index := budget.take()) is not None:
        started = time.perf_counter()
        try:
            await send(index)
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1
        else:
            tally.latencies_s.append(time.perf_counter() - started)


async def _phase(
    send: Call, concurrency: int, requests: int | None, duration_s: float | None
) -> tuple[_Tally, float]:
    """Run one closed-loop phase; returns what it saw and its wall time in seconds."""
    started = time.monotonic()
    deadline = started + duration_s if duration_s is not None else None
    budget, tally = _Budget(requests, deadline), _Tally()
    await asyncio.gather(*(_worker(send, budget, tally) for _ in range(concurrency)))
    return tally, time.monotonic() - started


def _report(tally: _Tally, elapsed_s: float) -> dict[str, Any]:
    """The JSON-ready summary of a measured phase."""
    ok = len(tally.latencies_s)
    total = ok + sum(tally.errors.values())
    latencies_ms = [s * 1000 for s in tally.latencies_s]

    def ms(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)

    return {
        "requests": total,
        "ok": ok,
        "errors": dict(sorted(tally.errors.items())),
        "duration_s": round(elapsed_s, 3),
        "requests_per_s": round(total / elapsed_s, 2) if elapsed_s > 0 else 0.0,
        "latency_ms": {
            "p50": ms(percentile(latencies_ms, 50)),
            "p95": ms(percentile(latencies_ms, 95)),
            "p99": ms(percentile(latencies_ms, 99)),
            "mean": ms(sum(latencies_ms) / ok) if ok else None,
            "max": ms(max(latencies_ms)) if ok else None,
        },
    }


def _validate(
    target: str,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    allow_remote: bool,
) -> None:
    """Refuse a run that would not end by itself or that leaves this machine."""
    if requests is None and duration_s is None:
        raise ValueError("give requests or duration_s, so the run ends by itself")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not allow_remote and not is_loopback_target(target):
        raise ValueError(f"target {target!r} is not on loopback; allow it with --allow-remote")


async def run_load_async(
    target: str,
    model: str,
    *,
    call: str = "generate",
    num_samples: int = 1,
    concurrency: int = 1,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    warmup_s: float = 0.0,
    timeout_s: float = 30.0,
    metadata: Sequence[tuple[str, str]] = (),
    allow_remote: bool = False,
) -> dict[str, Any]:
    """Load `target` with closed-loop calls and report throughput, latency and errors.

    Args:
        target: gRPC target, e.g. "127.0.0.1:50051".
        model: The model name to call.
        call: "generate" (Generate with `num_samples`), "decode" (Decode of
            `num_samples` latent codes) or "describe" (DescribeModel).
        num_samples: Samples per Generate or Decode request.
        concurrency: Requests in flight at once (one worker each).
        requests: Stop after this many requests.
        duration_s: Stop sending after this many seconds.
        warmup_requests: Uncounted requests sent first.
        warmup_s: Uncounted seconds of load sent first (after warmup_requests).
        timeout_s: Deadline of each call.
        metadata: Sent with every call, e.g. an authorization header.
        allow_remote: Allow a target that is not on loopback.

    Returns:
        requests, ok, errors (count by status code name), duration_s,
        requests_per_s (all completed calls), latency_ms (p50, p95, p99, mean,
        max over successful calls), and the run's settings.

    Raises:
        ValueError: The run would not be bounded, or the target is remote.
    """
    _validate(target, concurrency, requests, duration_s, allow_remote)
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        send = await _make_call(stub, call, model, num_samples, timeout_s, metadata)
        if warmup_requests > 0:
            await _phase(send, concurrency, warmup_requests, None)
        if warmup_s > 0:
            await _phase(send, concurrency, None, warmup_s)
        tally, elapsed_s = await _phase(send, concurrency, requests, duration_s)
    settings = {
        "target": target,
        "model": model,
        "call": call,
        "num_samples": num_samples,
        "concurrency": concurrency,
    }
    return {**settings, **_report(tally, elapsed_s)}


def run_load(target: str, model: str, **options: Any) -> dict[str, Any]:
    """`run_load_async` in a fresh event loop; the same arguments and result."""
    return asyncio.run(run_load_async(target, model, **options))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="gRPC host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--call", choices=CALLS, default="generate")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    budget = parser.add_argument_group("when to stop (one or both)")
    budget.add_argument("--requests", type=int)
    budget.add_argument("--duration-s", type=float)
    parser.add_argument("--warmup-requests", type=int, default=0)
    parser.add_argument("--warmup-s", type=float, default=0.0)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="deadline of each call")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    args = parser.parse_args(argv)
    if args.requests is None and args.duration_s is None:
        parser.error("give --requests or --duration-s (or both), so the run ends by itself")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one load test and print its report as JSON."""
    args = parse_args(argv)
    options = vars(args).copy()
    target, model = options.pop("target"), options.pop("model")
    try:
        report = run_load(target, model, **options)
    except ValueError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
