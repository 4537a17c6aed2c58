"""Every committed model: loadable, fully carded, parity-checked, free of machine paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genserve.runtime.repository import CONFIG_FILE, load_config, scan
from genserve.runtime.schema import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = [v for versions in scan(ROOT / "models").values() for v in versions]
CARD_KEYS = {"dataset", "command", "seed", "training_time_s", "metrics", "parity", "files"}
MACHINE_PATHS = (b"/work/", b"/root/", b"/home/", b"/tmp/", b"site-packages")


def test_the_repository_is_not_empty():
    assert VERSIONS


@pytest.mark.parametrize("folder", VERSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_version_loads_with_a_complete_card(folder):
    config = load_config(folder)  # checks the sha256 of every file against the card
    missing = [key for key in sorted(CARD_KEYS) if getattr(config.card, key) is None]
    assert not missing, f"card lacks {missing}"
    assert config.card.parity["max_abs_diff"] <= 1e-4
    # Every file of the folder is recorded: the graphs, and any other (an encoder's tokenizer).
    assert set(config.card.files) == {p.name for p in folder.iterdir() if p.name != CONFIG_FILE}
    assert config.card.metrics, "the card records no quality metrics"


@pytest.mark.parametrize("folder", VERSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_config_reads_and_writes_back_unchanged_through_the_schema(folder):
    text = (folder / CONFIG_FILE).read_text()
    spec = ModelSpec.from_json(json.loads(text))
    assert json.dumps(spec.to_json(), indent=2) + "\n" == text


@pytest.mark.parametrize("folder", VERSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_graph_carries_a_path_of_the_machine_that_exported_it(folder):
    for graph in folder.glob("*.onnx"):
        data = graph.read_bytes()
        found = [marker.decode() for marker in MACHINE_PATHS if marker in data]
        assert not found, f"{graph.name} contains {found}: run python -m genserve.exporters.scrub"


def test_the_repository_stays_small_enough_to_commit():
    # About half is the pretrained sentence encoder (MiniLM-L6, float16 weights, 44 MB);
    # the trained models together are about 45 MB.
    total = sum(f.stat().st_size for f in (ROOT / "models").rglob("*") if f.is_file())
    assert total < 96 * 1024 * 1024, f"models/ holds {total / 2**20:.1f} MiB"
