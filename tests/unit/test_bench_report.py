"""The benchmark report: rewritten from raw results with its table, chart and reading kept."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import run_benchmarks

pytestmark = pytest.mark.unit


def cell(path: str, batching: str, concurrency: int, rounds: list[float]) -> dict:
    median = sorted(rounds)[len(rounds) // 2]
    return {
        "path": path,
        "batching": batching,
        "concurrency": concurrency,
        "requests_per_s": median,
        "rounds_requests_per_s": rounds,
        "latency_ms": {"p50": 1000 * concurrency / median, "p99": 2000 * concurrency / median},
        "errors": {"RESOURCE_EXHAUSTED": 3} if concurrency == 64 and batching == "off" else {},
    }


@pytest.fixture
def raw(tmp_path) -> Path:
    cells = [
        cell(path, batching, c, [100.0 * c**0.5 * (k + 1), 90.0 * c**0.5 * (k + 1), 110.0])
        for path in ("direct", "gateway")
        for k, batching in enumerate(("on", "fixed", "off"))
        for c in (1, 8, 64)
    ]
    results = {
        "command": "python bench/run_benchmarks.py --out docs/benchmarks.md",
        "machine": {
            "cpu": "Test CPU", "cores": 2, "gpu": None, "onnxruntime": "onnxruntime 1.0, CPU",
            "python": "3.11", "os": "Linux", "date": "2026-01-01 00:00 UTC",
        },
        "settings": {
            "model": "vae-fashion", "duration_s": 5.0, "warmup_s": 1.0, "rounds": 3,
            "batching_policy": {"max_batch_size": 64}, "json_out": "latest.json",
        },
        "cells": cells,
        "raw_onnxruntime": [
            {"batch": 1, "runs_per_s": 7853.0, "rows_per_s": 7853.0,
             "latency_ms": {"p50": 0.108, "p99": 0.216}},
            {"batch": 64, "runs_per_s": 136.3, "rows_per_s": 8722.5,
             "latency_ms": {"p50": 7.842, "p99": 9.138}},
        ],
    }  # fmt: skip
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(results))
    return path


def test_from_json_rewrites_table_and_chart_and_keeps_the_reading(raw, tmp_path):
    out, chart = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "images" / "b.png"
    out.parent.mkdir()
    out.write_text("# old\n\n## Reading the numbers\n\nOur reading.\n")
    argv = ["--from-json", str(raw), "--out", str(out), "--chart", str(chart)]
    assert run_benchmarks.main([*argv, "--json-out", str(tmp_path / "copy.json")]) == 0

    report = out.read_text()
    assert "![requests/s and p99 latency against concurrency](images/b.png)" in report
    assert "| gateway | 64 | off |" in report and "3 (RESOURCE_EXHAUSTED 3)" in report
    assert "| direct | 8 | fixed |" in report and "in\n  3 rounds" in report
    assert "| 64 | 136 | 8722 | 7.84 | 9.14 |" in report  # the raw ONNX Runtime ceiling
    assert report.rstrip().endswith("Our reading.")
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


def test_bad_rounds_are_refused_before_anything_starts(capsys):
    assert run_benchmarks.main(["--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err


def test_a_rewrite_keeps_the_sections_other_benchmarks_wrote(raw, tmp_path):
    out = tmp_path / "benchmarks.md"
    theirs = "<!-- bench/iterative.py: begin -->\n## Diffusion\n\nTheir table.\n"
    theirs += "<!-- bench/iterative.py: end -->\n"
    out.write_text(f"# old\n\n## Reading the numbers\n\nOur reading.\n\n{theirs}")
    argv = ["--from-json", str(raw), "--out", str(out), "--chart", ""]
    assert run_benchmarks.main([*argv, "--json-out", str(tmp_path / "copy.json")]) == 0
    report = out.read_text()
    assert report.endswith(theirs)
    assert report.count("Our reading.") == 1 and "| gateway | 64 | off |" in report
