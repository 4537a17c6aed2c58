"""A family process's life: graceful shutdown, new versions, broken versions."""

from __future__ import annotations

import json
import shutil
import signal
import threading

import pytest

from genserve.client import Client, GenserveError
from genserve.runtime.repository import sha256_of
from genserve.runtime.supervisor import Supervisor

from .conftest import TINY, scrape, start_family, wait_for


def test_sigterm_finishes_in_flight_calls_then_exits_cleanly(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=15) as sup:
        # A long queue delay keeps the call in flight when SIGTERM arrives.
        child, target, metrics = start_family(
            sup, tiny_repo, "--max-queue-delay-ms", "800", "--fixed-delay"
        )
        results: dict[str, object] = {}

        def call() -> None:
            with Client(target, timeout_s=20, retries=0) as client:
                try:
                    results["images"] = client.generate(TINY, 4, seed=1).images
                except GenserveError as exc:
                    results["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        in_flight = ("genserve_in_flight_requests", (("method", "Generate"),))
        assert wait_for(lambda: scrape(metrics).get(in_flight, 0) >= 1), "the call never arrived"
        child.popen.send_signal(signal.SIGTERM)
        caller.join(20)
        assert child.popen.wait(15) == 0
        assert "error" not in results, results.get("error")
        assert results["images"].shape == (4, 1, 28, 28)
        log = child.log_tail(200)
        assert "finishing in-flight calls" in log and "stopped" in log


def test_a_new_version_is_picked_up_and_a_broken_one_refused(tiny_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo / TINY, repo / TINY)
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        child, target, _ = start_family(sup, repo, "--poll-s", "0.3")
        with Client(target, timeout_s=10) as client:
            assert client.generate(TINY, 1, seed=1).model_version == "1"

            shutil.copytree(repo / TINY / "1", repo / TINY / "2")
            assert wait_for(lambda: client.list_models()[0].version == "2")
            assert client.generate(TINY, 1, seed=1).model_version == "2"

            broken = repo / TINY / "3"
            shutil.copytree(repo / TINY / "1", broken)
            (broken / "decoder.onnx").write_bytes(b"not an onnx graph")
            config = json.loads((broken / "config.json").read_text())
            config["card"]["files"]["decoder.onnx"]["sha256"] = sha256_of(broken / "decoder.onnx")
            (broken / "config.json").write_text(json.dumps(config))
            assert wait_for(lambda: "refused model version" in child.log_tail(400))
            assert client.list_models()[0].version == "2"
            assert client.generate(TINY, 2, seed=1).images.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("damage", ["hash", "config"])
def test_a_damaged_only_version_serves_nothing_but_the_process_stays_up(
    tiny_repo, tmp_path, damage
):
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo / TINY, repo / TINY)
    folder = repo / TINY / "1"
    if damage == "hash":
        (folder / "encoder.onnx").write_bytes((folder / "encoder.onnx").read_bytes() + b"\0")
    else:
        (folder / "config.json").write_text("{not json")
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        child, target, _ = start_family(sup, repo)
        with Client(target, timeout_s=10) as client:
            assert client.list_models() == []
        assert "refused model version" in child.log_tail(200)
