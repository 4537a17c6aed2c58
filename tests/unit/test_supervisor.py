"""The process supervisor with a tiny real child, and genserve-up's planning."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from genserve.runtime import up
from genserve.runtime.supervisor import (
    HealthTimeoutError,
    ProcessExitedError,
    Supervisor,
    check_health,
    free_ports,
    port_is_free,
    start_process,
    stop_process,
    wait_healthy,
)

pytestmark = pytest.mark.unit

HELPER = Path(__file__).parent / "helpers" / "health_server.py"


def start_helper(tmp_path: Path, *options: str, name: str = "helper"):
    """Start the helper health server on a free port, logging to tmp_path."""
    port = free_ports(1)[0]
    argv = [sys.executable, str(HELPER), str(port), *options]
    return start_process(
        name, argv, health_target=f"127.0.0.1:{port}", log_path=tmp_path / f"{name}.log"
    )


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(port_is_free(port) for port in ports)


def test_wait_healthy_returns_once_serving_and_stop_is_graceful(tmp_path: Path) -> None:
    child = start_helper(tmp_path, "--delay-s", "0.3")
    try:
        wait_healthy(child, timeout_s=10)
        assert check_health(child.health_target)
    finally:
        started = time.monotonic()
        returncode = stop_process(child, grace_s=5)
    assert returncode == 0
    assert time.monotonic() - started < 5
    assert "stopping" in child.log_tail()


def test_wait_healthy_fails_fast_with_log_tail_when_child_exits(tmp_path: Path) -> None:
    child = start_helper(tmp_path, "--exit-code", "3")
    started = time.monotonic()
    with pytest.raises(ProcessExitedError) as info:
        wait_healthy(child, timeout_s=30)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "helper" in message and "exited with 3" in message
    assert "fatal: model repository is empty" in message
    stop_process(child)


def test_wait_healthy_times_out_with_log_tail(tmp_path: Path) -> None:
    child = start_helper(tmp_path, "--delay-s", "60")
    try:
        with pytest.raises(HealthTimeoutError, match=r"not SERVING within 0\.5 s") as info:
            wait_healthy(child, timeout_s=0.5)
        assert child.is_running()
    finally:
        stop_process(child, grace_s=5)
    assert "starting" in str(info.value)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    child = start_helper(tmp_path, "--ignore-sigterm")
    wait_healthy(child, timeout_s=10)
    started = time.monotonic()
    returncode = stop_process(child, grace_s=0.5)
    assert returncode == -9
    assert 0.5 <= time.monotonic() - started < 5


def test_supervisor_stops_everything_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), Supervisor(log_dir=tmp_path) as sup:
        port_a, port_b = free_ports(2)
        for name, port in (("a", port_a), ("b", port_b)):
            sup.start(
                name, [sys.executable, str(HELPER), str(port)], health_target=f"127.0.0.1:{port}"
            )
        sup.wait_all_healthy(timeout_s=10)
        children = list(sup.children)
        raise RuntimeError("boom")
    assert [child.returncode for child in children] == [0, 0]
    assert (tmp_path / "a.log").read_text().splitlines()[-1] == "stopping"


def write_config(models: Path, name: str, family: str) -> None:
    folder = models / name / "1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"family": family}))


def test_up_discovers_families_and_plans_ports(tmp_path: Path) -> None:
    write_config(tmp_path, "vae-fashion", "vae")
    write_config(tmp_path, "vae-digits", "vae")
    write_config(tmp_path, "gpt-shakespeare", "gpt")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "config.json").write_text("{not json")

    families = up.discover_families(tmp_path)
    assert families == {"gpt": ["gpt-shakespeare"], "vae": ["vae-digits", "vae-fashion"]}

    plans = up.plan_processes(
        families,
        models_dir=tmp_path,
        host="127.0.0.1",
        gateway_port=50051,
        first_family_port=50061,
        metrics_port=9100,
    )
    assert [(p.name, p.address, p.metrics_port) for p in plans] == [
        ("family gpt", "127.0.0.1:50061", 9101),
        ("family vae", "127.0.0.1:50062", 9102),
        ("gateway", "127.0.0.1:50051", 9100),
    ]
    gateway_argv = plans[-1].argv
    assert gateway_argv[1:3] == ["-m", "genserve.gateway"]
    assert "127.0.0.1:50061" in gateway_argv and "127.0.0.1:50062" in gateway_argv
    summary = up.format_summary(plans, tmp_path)
    assert "export GENSERVE_ADDR=127.0.0.1:50051" in summary
    assert "vae-digits, vae-fashion" in summary


def test_up_plans_replicas_on_consecutive_ports_all_behind_the_gateway(tmp_path: Path) -> None:
    families = {"gpt": ["gpt-shakespeare"], "lstm": ["lstm-shakespeare"], "vae": ["vae-fashion"]}
    replicas = up.replica_counts([("vae", 3), ("gpt", 2)], families)
    assert replicas == {"gpt": 2, "lstm": 1, "vae": 3}

    plans = up.plan_processes(
        families,
        models_dir=tmp_path,
        host="0.0.0.0",
        gateway_port=50051,
        first_family_port=50061,
        metrics_port=9100,
        replicas=replicas,
    )
    assert [(p.name, p.address, p.metrics_port) for p in plans] == [
        ("family gpt 1/2", "127.0.0.1:50061", 9101),
        ("family gpt 2/2", "127.0.0.1:50062", 9102),
        ("family lstm", "127.0.0.1:50063", 9103),
        ("family vae 1/3", "127.0.0.1:50064", 9104),
        ("family vae 2/3", "127.0.0.1:50065", 9105),
        ("family vae 3/3", "127.0.0.1:50066", 9106),
        ("gateway", "127.0.0.1:50051", 9100),
    ]
    gateway_argv = plans[-1].argv
    backends = [gateway_argv[i + 1] for i, arg in enumerate(gateway_argv) if arg == "--backend"]
    assert backends == [f"127.0.0.1:{port}" for port in range(50061, 50067)]
    summary = up.format_summary(plans, tmp_path)
    for plan in plans:
        assert f"{plan.name}  " in summary and plan.address in summary
        assert f"http://127.0.0.1:{plan.metrics_port}/metrics" in summary


def test_up_runs_one_replica_of_each_family_unless_asked() -> None:
    families = {"lstm": ["lstm-shakespeare"], "vae": ["vae-fashion"]}
    assert up.replica_counts([], families) == {"lstm": 1, "vae": 1}
    assert up.parse_args([]).replicas == []
    args = up.parse_args(["--replicas", "vae=2", "--replicas", "lstm=16", "--replicas", "vae=1"])
    assert up.replica_counts(args.replicas, families) == {"lstm": 16, "vae": 1}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("vae", "expected FAMILY=N"),
        ("=2", "expected FAMILY=N"),
        ("vae=two", "whole number"),
        ("vae=0", "1..16, got 0"),
        ("vae=17", "1..16, got 17"),
    ],
)
def test_up_refuses_a_bad_replica_count(value: str, says: str, capsys) -> None:
    with pytest.raises(up.ReplicasError, match=says):
        up.parse_replicas(value)
    with pytest.raises(SystemExit):
        up.parse_args(["--replicas", value])
    assert says in capsys.readouterr().err


def test_up_refuses_replicas_of_a_family_not_in_the_repository(tmp_path: Path, caplog) -> None:
    write_config(tmp_path, "vae-fashion", "vae")
    with pytest.raises(up.ReplicasError, match="no 'gan' model in the repository"):
        up.replica_counts([("gan", 2)], {"vae": ["vae-fashion"]})
    args = up.parse_args(["--models", str(tmp_path), "--replicas", "gan=2"])
    assert up.run(args) == 2
    assert "families there: vae" in caplog.text
