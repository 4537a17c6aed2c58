"""Overload and floods against real processes: bursts, connection floods, PNG floods.

- A burst of 5,000 concurrent calls: every call is OK or RESOURCE_EXHAUSTED
  (none CANCELLED by the server), and /metrics counts each one by code.
- A flood of connections that never finish their handshake, and of idle
  ones, is closed within seconds; a new client is served meanwhile.
- Under steady load, a flood of the largest PNG bombs that fit in a request
  sent to every call that takes images: normal callers see no failure, the
  model stays SERVING at the gateway throughout (watched with Health/Watch),
  the gateway refuses the bombs sent to it itself (none crosses to the
  family service), the family service refuses those sent to it directly,
  and the family process's memory settles back near its baseline.

Latency under the flood is measured by bench/hostile.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
import threading
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import ROOT, TINY, scrape, start, start_family, wait_for

sys.path.insert(0, str(ROOT / "bench"))
import hostile

BURST = 5000
ALLOWED = {"OK", "RESOURCE_EXHAUSTED"}


async def _burst(target: str, calls: int) -> Counter:
    """`calls` seeded Generate calls at once on one channel; the codes seen."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)

        async def one(i: int) -> str:
            request = pb.GenerateRequest(model_name=TINY, num_samples=1, seed=i)
            try:
                await stub.Generate(request, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        return Counter(await asyncio.gather(*(one(i) for i in range(calls))))


def _counted(metrics_url: str, method: str) -> Counter:
    counts: Counter = Counter()
    for (name, labels), value in scrape(metrics_url).items():
        labels = dict(labels)
        if name == "genserve_requests_total" and labels["method"] == method:
            counts[labels["code"]] += int(value)
    return counts


def test_a_burst_of_5000_calls_is_answered_ok_or_resource_exhausted_and_counted(
    tiny_repo, tmp_path
):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        _, service, service_metrics = start_family(sup, tiny_repo, "--max-concurrent-rpcs", "8")
        _, gateway, gateway_metrics = start(sup, "genserve.gateway", "--backend", service)
        direct = asyncio.run(_burst(service, BURST))
        assert set(direct) <= ALLOWED, direct
        # An aborted call's status can reach the caller just before the server counts it.
        assert wait_for(lambda: _counted(service_metrics, "Generate") == direct, timeout_s=10)
        via_gateway = asyncio.run(_burst(gateway, BURST))
        assert set(via_gateway) <= ALLOWED, via_gateway
        assert wait_for(lambda: _counted(gateway_metrics, "Generate") == via_gateway, timeout_s=10)
        print(f"\nburst of {BURST}: direct {dict(direct)}, via gateway {dict(via_gateway)}")


def test_a_call_over_the_concurrency_bound_is_refused_at_once_and_probes_are_not(
    tiny_repo, tmp_path
):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        _, service, service_metrics = start_family(sup, tiny_repo, "--max-concurrent-rpcs", "4")
        with grpc.insecure_channel(service) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(4)]
            for watch in watches:  # four calls in flight, held open by the server
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = pb.GenerateRequest(model_name=TINY, num_samples=1, seed=1)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Generate(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 4 concurrent calls" in refused.value.details()
            probe = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert probe.status == health_pb2.HealthCheckResponse.SERVING
            for watch in watches:
                watch.cancel()
            assert wait_for(lambda: _generates(stub, request))
        assert wait_for(
            lambda: _counted(service_metrics, "Generate")["RESOURCE_EXHAUSTED"] >= 1, timeout_s=10
        )


def _generates(stub, request) -> bool:
    try:
        stub.Generate(request, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        return False
    return True


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_silent_and_idle_connections_are_closed_and_new_clients_served(tiny_repo, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    flood = min(1000, hard - 200)
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        family, service, _ = start_family(
            sup, tiny_repo, "--handshake-timeout-s", "1", "--connection-idle-s", "1"
        )
        port = int(service.rsplit(":", 1)[1])
        baseline = _open_fds(family.pid)
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(flood)]
        try:
            assert wait_for(lambda: _open_fds(family.pid) > baseline + flood // 2, timeout_s=20)
            with grpc.insecure_channel(service) as channel:  # a new client, served meanwhile
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            # Silent ones are closed after the handshake timeout, the idle client after idle.
            assert wait_for(lambda: _open_fds(family.pid) <= baseline + 2, timeout_s=20)
            for sock in silent[:10]:
                assert _read_to_close(sock), "a silent connection is still open"
        finally:
            for sock in silent:
                sock.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _read_to_close(sock: socket.socket) -> bool:
    """Read what the server sent (its HTTP/2 settings) until it closes; False if it never does."""
    sock.settimeout(5)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _normal_load(target: str, calls: int, workers: int) -> tuple[Counter, set[bytes]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        codes: Counter = Counter()
        outputs: set[bytes] = set()

        async def worker(first: int) -> None:
            for _ in range(first, calls, workers):
                request = pb.GenerateRequest(model_name=TINY, num_samples=1, seed=5)
                try:
                    response = await stub.Generate(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                else:
                    codes["OK"] += 1
                    outputs.add(response.images.tensor.data)

        await asyncio.gather(*(worker(i) for i in range(workers)))
        return codes, outputs


def _watch(target: str, seen: list[int], stop: threading.Event) -> None:
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=TINY), timeout=300
        )
        stop_watch = threading.Thread(target=lambda: (stop.wait(), stream.cancel()), daemon=True)
        stop_watch.start()
        try:
            for event in stream:
                seen.append(event.status)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise


async def _flood(
    gateway: str, service: str, calls: int
) -> tuple[Counter, set[bytes], dict[str, Counter]]:
    """Normal calls through the gateway while two attackers flood it and two the service."""
    stop = asyncio.Event()
    attacks = {gateway: Counter(), service: Counter()}
    requests = hostile.bombs(4_000_000, TINY)  # as many bombs as fit under the 4 MiB bound
    tasks = [
        asyncio.create_task(hostile.attack(target, requests, 0, stop, attacks[target]))
        for target in (gateway, gateway, service, service)
    ]
    try:
        codes, outputs = await _normal_load(gateway, calls, workers=8)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return codes, outputs, attacks


def test_a_png_flood_under_load_fails_no_call_keeps_the_model_serving_and_gives_memory_back(
    tiny_repo, tmp_path
):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        family, service, service_metrics = start_family(sup, tiny_repo)
        _, gateway, _ = start(sup, "genserve.gateway", "--backend", service)
        codes, outputs = asyncio.run(_normal_load(gateway, 400, workers=8))
        assert codes == {"OK": 400} and len(outputs) == 1
        baseline_mb = _rss_mb(family.pid)
        seen: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(gateway, seen, stop), daemon=True)
        watcher.start()
        try:
            codes, flooded, attacks = asyncio.run(_flood(gateway, service, calls=1500))
        finally:
            stop.set()
            watcher.join(10)
        assert codes == {"OK": 1500}, codes
        assert flooded == outputs, "a seeded call changed under the flood"
        for target, refused in attacks.items():
            assert set(refused) == {"INVALID_ARGUMENT"} and refused.total() > 10, (target, refused)
        assert seen and set(seen) == {health_pb2.HealthCheckResponse.SERVING}, seen
        reached = _counted(service_metrics, "Encode") + _counted(service_metrics, "Reconstruct")
        assert reached.total() == attacks[service].total(), "bombs crossed the gateway"
        peak_mb = _rss_mb(family.pid)
        assert wait_for(lambda: _rss_mb(family.pid) < baseline_mb + 100, timeout_s=30), (
            f"resident memory {baseline_mb:.0f} MB before the flood, {_rss_mb(family.pid):.0f} "
            f"MB 30 s after it"
        )
        print(
            f"\nPNG flood: {attacks[gateway].total()} bomb requests refused by the gateway, "
            f"{attacks[service].total()} by the family service; family RSS "
            f"{baseline_mb:.0f} MB before, {peak_mb:.0f} MB at the end, "
            f"{_rss_mb(family.pid):.0f} MB after settling"
        )
