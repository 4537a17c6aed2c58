"""Gateway workers: several processes on one port (SO_REUSEPORT), each with its own
/metrics; the parent restarts a worker that dies and stops them all on SIGTERM."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest

from genserve.runtime.supervisor import Supervisor, free_port, port_is_free, python_module_command
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import TINY, scrape, start_family, total, wait_for

pytestmark = pytest.mark.integration

WORKERS = 2
CONNECTIONS = 16
"""Separate connections: the kernel places each on a worker, so all of them landing on
one of two workers has a chance of 2 in 2**16."""


def _metrics_ports() -> int:
    """A free port whose next WORKERS - 1 ports are free too."""
    while True:
        first = free_port()
        if all(port_is_free(first + i) for i in range(1, WORKERS)):
            return first


def _workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(c) for c in children)


def _generate(target: str, seed: int) -> pb.GenerateResponse:
    # A channel of its own connection: grpc shares connections between equal channels.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = pb.GenerateRequest(model_name=TINY, num_samples=1, seed=seed)
        return stub.Generate(request, timeout=10)


def _routing(url: str) -> bool:
    """Whether the worker serving `url` has its backend up, so it routes calls."""
    try:
        return total(scrape(url), "genserve_gateway_backend_up") == 1
    except OSError:  # the worker is not listening yet
        return False


def test_workers_share_the_port_restart_after_a_crash_and_stop_together(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=10) as sup:
        family = start_family(sup, tiny_repo)
        port, metrics = free_port(), _metrics_ports()
        target = f"127.0.0.1:{port}"
        parent = sup.start(
            "gateway-workers",
            python_module_command(
                "genserve.gateway", "--backend", family.target, "--port", str(port),
                "--metrics-port", str(metrics), "--workers", str(WORKERS),
            ),
            health_target=target,
        )  # fmt: skip
        sup.wait_healthy(parent, timeout_s=60)
        urls = [f"http://127.0.0.1:{metrics + i}/metrics" for i in range(WORKERS)]
        assert wait_for(lambda: all(map(_routing, urls)), timeout_s=60)
        workers = _workers_of(parent.pid)
        assert len(workers) == WORKERS

        answers = [_generate(target, seed) for seed in range(CONNECTIONS)]
        assert [a.seed for a in answers] == list(range(CONNECTIONS))
        served = [total(scrape(url), "genserve_requests_total", method="Generate") for url in urls]
        assert all(n > 0 for n in served), f"Generate calls per worker: {served}"

        # A worker killed outright is started again, and serves again.
        killed = workers[0]
        os.kill(killed, signal.SIGKILL)

        def replaced() -> bool:
            now = _workers_of(parent.pid)
            return len(now) == WORKERS and killed not in now

        assert wait_for(replaced, timeout_s=30)
        assert wait_for(lambda: all(map(_routing, urls)), timeout_s=60)
        assert _generate(target, 99).seed == 99

        # SIGTERM to the parent stops every worker, and the parent exits cleanly.
        workers = _workers_of(parent.pid)
        parent.popen.send_signal(signal.SIGTERM)
        assert parent.popen.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        assert family.child.is_running()
