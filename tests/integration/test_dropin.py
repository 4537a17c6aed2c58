"""A version copied in file by file is refused while incomplete, then served."""

from __future__ import annotations

import shutil

from genserve.client import Client
from genserve.runtime.supervisor import Supervisor

from .conftest import TINY, scrape, start_family, total, wait_for

FAILURES = "genserve_model_load_failures_total"


def test_a_version_refused_while_half_copied_is_served_once_its_files_are_complete(
    tiny_repo, tmp_path
):
    repo = tmp_path / "models"
    shutil.copytree(tiny_repo / TINY, repo / TINY)
    source = repo / TINY / "1"
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        child, target, metrics_url = start_family(sup, repo, "--poll-s", "0.2")
        with Client(target, timeout_s=10) as client:
            assert client.list_models()[0].version == "1"

            # A non-atomic drop-in: config.json first, the graphs after a refusal.
            copy = repo / TINY / "2"
            copy.mkdir()
            shutil.copyfile(source / "config.json", copy / "config.json")
            assert wait_for(lambda: total(scrape(metrics_url), FAILURES, model=TINY) >= 1)
            assert f"refused model version {copy}" in child.log_tail(400)
            assert client.list_models()[0].version == "1"

            for graph in sorted(source.glob("*.onnx")):
                shutil.copyfile(graph, copy / graph.name)
            assert wait_for(lambda: client.list_models()[0].version == "2")

            assert client.describe_model(TINY).info.version == "2"
            assert client.generate(TINY, 2, seed=1).images.shape == (2, 1, 28, 28)
            refusals = child.log_tail(400).count("refused model version")
            assert refusals == total(scrape(metrics_url), FAILURES, model=TINY)
        assert not sup.exited()
