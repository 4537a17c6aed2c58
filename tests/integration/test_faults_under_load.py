"""Faults under load: version swaps, a half-copied drop-in, SIGTERM and kill -9 of a replica.

Two replicas of a family service share one model repository behind a
gateway; callers send seeded Generate calls through the gateway the whole
time. In turn: a new version is renamed into place (a hot swap), another is
copied in file by file (refused, then served once complete), one replica is
stopped with SIGTERM and started again on its port, and the other is killed
with SIGKILL. No call may fail, every seeded call returns the bytes it
returned before the faults, and every process left is healthy at the end.
"""

from __future__ import annotations

import shutil
import signal
from functools import partial
from pathlib import Path

from genserve.client import Client
from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command

from .conftest import TINY, Caller, Load, model_service_caller, scrape, start, total, wait_for

FAILURES = "genserve_model_load_failures_total"


def start_replica(sup: Supervisor, repo: Path, port: int, metrics_port: int, run: int = 1):
    child = sup.start(
        f"replica-{port}-{run}",
        python_module_command(
            "genserve.families", "--family", "vae", "--models", str(repo), "--port", str(port),
            "--metrics-port", str(metrics_port), "--poll-s", "0.3",
        ),
        health_target=f"127.0.0.1:{port}",
    )  # fmt: skip
    sup.wait_healthy(child, timeout_s=60)
    return child


def served_version(target: str) -> str:
    with Client(target, timeout_s=5) as client:
        return client.describe_model(TINY).info.version


def test_swaps_drop_ins_and_dying_replicas_under_load_fail_no_call(tiny_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo / TINY, repo / TINY)
    v1 = repo / TINY / "1"
    ports = free_ports(4)
    replicas = [f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"]
    metrics = [f"http://127.0.0.1:{p}/metrics" for p in ports[2:]]
    with Supervisor(log_dir=tmp_path / "logs", grace_s=5) as sup:
        first = start_replica(sup, repo, ports[0], ports[2])
        second = start_replica(sup, repo, ports[1], ports[3])
        _, gateway, _ = start(
            sup, "genserve.gateway", "--backend", replicas[0], "--backend", replicas[1],
            "--refresh-s", "0.5",
        )  # fmt: skip
        with Client(gateway, timeout_s=10) as client:
            expected = client.generate(TINY, 2, seed=7).images.tobytes()
        connect = partial(model_service_caller, gateway, TINY, 2, 7)
        with Load([Caller("ModelService", connect, expected)], threads=4) as load:
            assert load.progress()

            # 1. A hot swap: version 2 written beside, then renamed into place.
            shutil.copytree(v1, repo / TINY / "incoming")
            (repo / TINY / "incoming").rename(repo / TINY / "2")
            assert wait_for(lambda: all(served_version(r) == "2" for r in replicas))
            assert load.progress()

            # 2. A non-atomic drop-in: config.json first, the graphs once it was refused.
            v3 = repo / TINY / "3"
            v3.mkdir()
            shutil.copyfile(v1 / "config.json", v3 / "config.json")
            assert wait_for(lambda: all(total(scrape(m), FAILURES) >= 1 for m in metrics))
            for graph in sorted(v1.glob("*.onnx")):
                shutil.copyfile(graph, v3 / graph.name)
            assert wait_for(lambda: all(served_version(r) == "3" for r in replicas))
            assert load.progress()

            # 3. SIGTERM one replica, then start it again on its port.
            first.popen.send_signal(signal.SIGTERM)
            first.popen.wait(30)
            assert load.progress()
            first = start_replica(sup, repo, ports[0], ports[2], run=2)
            assert wait_for(lambda: total(scrape(metrics[0]), "genserve_requests_total") > 50)

            # 4. kill -9 the other.
            second.popen.kill()
            second.popen.wait(10)
            assert load.progress(calls=50)
        assert load.failures() == {}, load.codes
        assert load.mismatches.total() == 0, load.mismatches
        assert first.is_running()
        with Client(gateway, timeout_s=10) as client:
            assert client.generate(TINY, 2, seed=7).images.tobytes() == expected
