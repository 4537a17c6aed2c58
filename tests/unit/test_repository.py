"""The model repository loader: what it accepts and how it names what is wrong."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from genserve.runtime.repository import (
    ModelConfigError,
    families,
    load_config,
    scan,
    sha256_of,
)
from genserve.runtime.schema import BatchPolicy, ModelSpec, StepPolicy


def write_version(root: Path, model="m", version="1", family="vae", **overrides) -> Path:
    folder = root / model / version
    folder.mkdir(parents=True)
    (folder / "g.onnx").write_bytes(b"graph bytes")
    config = {
        "name": model,
        "family": family,
        "graphs": {
            "decoder": {
                "file": "g.onnx",
                "inputs": [{"name": "latent", "dtype": "float32", "shape": [-1, 4]}],
                "outputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, 2, 2]}],
            }
        },
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 1.0, "max_queue_size": 16},
        "params": {"latent_dim": 4, "image_shape": [1, 2, 2]},
        "card": {"files": {"g.onnx": {"sha256": sha256_of(folder / "g.onnx")}}},
    }
    config.update(overrides)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_good_version_loads_with_its_policy_and_signature(tmp_path):
    config = load_config(write_version(tmp_path))
    assert (config.name, config.family, config.version) == ("m", "vae", "1")
    assert config.batching.max_batch_size == 8
    assert config.graphs["decoder"].inputs[0].shape == (-1, 4)
    assert config.stepping is None and config.step_policy == StepPolicy()  # the defaults


def test_the_stepping_section_is_a_typed_step_policy(tmp_path):
    folder = write_version(tmp_path, stepping={"max_running": 8, "max_waiting": 40})
    assert load_config(folder).stepping == StepPolicy(max_running=8, max_waiting=40)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"family": 3}, "family"),
        ({"name": "other"}, "differs from its folder"),
        ({"batching": {"max_batch_size": 0}}, "max_batch_size must be >= 1, got 0"),
        ({"batching": {"max_batch_sise": 4}}, "batching"),
        ({"stepping": {"max_running": 0}}, "stepping: max_running must be >= 1, got 0"),
        ({"stepping": [8]}, "stepping: must be an object, got [8]"),
        ({"stepping": {"admission": "never"}}, "stepping.admission: must be one of"),
        ({"batching": {"max_batch_size": "8"}}, "batching.max_batch_size: must be an integer"),
        ({"batching": {"adaptive_delay": 1}}, "batching.adaptive_delay: must be true or false"),
        ({"batchng": {}}, "batchng: unknown key"),
        ({"labels": "abc"}, "labels: must be a list, got 'abc'"),
        ({"params": [1]}, "params: must be an object"),
        ({"card": {"files": {"g.onnx": {}}}}, "card.files.g.onnx.sha256: is missing"),
        ({"graphs": {"decoder": {"file": "g.onnx", "inputs": [
            {"name": "x", "dtype": "float32", "shape": [-2]}]}}},
            "graphs.decoder.inputs[0].shape[0]: must be >= -1, got -2"),
        ({"max_num_samples": 0}, "max_num_samples: must be >= 1, got 0"),
        ({"graphs": {"decoder": {"file": "missing.onnx"}}}, "'missing.onnx' does not exist"),
        (
            {"graphs": {"decoder": {"file": "g.onnx", "inputs": [
                {"name": "x", "dtype": "float64", "shape": [1]}]}}},
            "graphs.decoder.inputs[0].dtype: 'float64'",
        ),
    ],
)  # fmt: skip
def test_a_bad_config_names_the_key_and_quotes_the_value(tmp_path, overrides, message):
    with pytest.raises(ModelConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(write_version(tmp_path, **overrides))


def test_a_file_whose_hash_differs_from_the_card_is_refused(tmp_path):
    folder = write_version(tmp_path)
    (folder / "g.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelConfigError, match="sha256"):
        load_config(folder)


def test_scan_lists_versions_newest_first_and_filters_by_family(tmp_path):
    write_version(tmp_path, "a", "1")
    write_version(tmp_path, "a", "10")
    write_version(tmp_path, "a", "2")
    write_version(tmp_path, "b", "1", family="gan")
    (tmp_path / "a" / "notes").mkdir()
    found = scan(tmp_path, "vae")
    assert list(found) == ["a"]
    assert [p.name for p in found["a"]] == ["10", "2", "1"]
    assert families(tmp_path) == ["gan", "vae"]


def test_scan_of_a_missing_repository_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_a_spec_built_in_code_writes_every_field_it_sets_and_reads_back_equal():
    spec = ModelSpec(
        family="diffusion",
        name="d",
        stepping=StepPolicy(max_running=8, admission="request"),
        params={"schedule": {"timesteps": 10}},
        labels=("a", "b"),
    )
    written = spec.to_json()
    assert list(written) == ["name", "family", "graphs", "stepping", "max_num_samples",
                             "params", "labels"]  # fmt: skip
    assert written["stepping"] == {"max_running": 8, "max_waiting": 256, "admission": "request"}
    assert ModelSpec.from_json(json.loads(json.dumps(written))) == spec


def test_a_file_written_before_a_policy_gained_a_field_writes_back_without_it():
    raw = {"family": "vae", "batching": {"max_batch_size": 64}}
    spec = ModelSpec.from_json(raw)
    assert spec.batching == BatchPolicy(max_batch_size=64)  # the rest are the defaults
    assert spec.to_json() == raw
    changed = dataclasses.replace(
        spec, batching=BatchPolicy(max_batch_size=64, adaptive_delay=False)
    )
    assert changed.to_json()["batching"] == {"max_batch_size": 64, "adaptive_delay": False}
