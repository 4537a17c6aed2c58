"""The GPT benchmark's window accounting and goals, from streams and results made up here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from iterative_load import Reading, Window
from textgen_load import Stream, summarize
from textgen_report import judge_goals, render_section

pytestmark = pytest.mark.unit

STEPS = {
    "genserve_step_batch_size_sum": 0.0,
    "genserve_step_batch_size_count": 0.0,
    "genserve_step_duration_seconds_sum": 0.0,
}


def _window(start: float, end: float, cpu_s: float) -> Window:
    return Window((), Reading(start, 0.0, STEPS), Reading(end, cpu_s, STEPS))


def test_only_tokens_and_first_tokens_inside_the_window_count():
    streams = [
        Stream(9.0, [(9.5, 1), (10.5, 1), (11.0, 2)], ended=11.0),  # first token before
        Stream(10.0, [(10.2, 1), (10.4, 1)]),  # cancelled at the end: its tokens count
        Stream(11.5, [(12.5, 1)], ended=12.5),  # after the window
    ]
    cell = summarize(streams, _window(10.0, 12.0, cpu_s=0.5), concurrency=2)
    assert cell["tokens"] == 5 and cell["tokens_per_s"] == 2.5
    assert cell["ttft_ms"]["count"] == 1 and cell["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert cell["texts"] == 1  # only the first ended inside
    assert cell["cpu_ms_per_token"] == pytest.approx(100.0)
    assert cell["inter_token_ms"]["p50"] == pytest.approx(500.0)  # gaps 1.0, 0.5, 0.2


def _cell(mode: str, concurrency: int, tokens_per_s: float) -> dict:
    return {"mode": mode, "concurrency": concurrency, "tokens_per_s": tokens_per_s}


def test_goals_compare_continuous_with_the_other_modes_at_32_streams():
    results = {
        "cells": [
            _cell("continuous", 32, 6000.0),
            _cell("static", 32, 3000.0),
            _cell("one", 32, 1200.0),
            _cell("one", 1, 900.0),
        ],
        "parity": {"seed": 7, "max_new_tokens": 64, "identical": True},
        "overhead": [
            {"context": 16, "overhead_ms": 0.4},
            {"context": 254, "overhead_ms": 0.8},
        ],
    }
    goals = judge_goals(results)
    over_one = next(g for g in goals if "one's" in g["goal"])
    over_static = next(g for g in goals if "static's" in g["goal"])
    flat = next(g for g in goals if "flat" in g["goal"])
    assert (over_one["met"], over_one["ratio"]) == (False, 5.0)
    assert (over_static["met"], over_static["ratio"]) == (True, 2.0)
    assert flat["met"] is False  # 2x is not flat


def test_the_section_renders_from_results():
    cell = {
        "mode": "continuous",
        "concurrency": 1,
        "tokens_per_s": 500.0,
        "rounds_tokens_per_s": [500.0],
        "ttft_ms": {"p50": 10.0, "p95": 20.0},
        "inter_token_ms": {"p50": 2.0},
        "texts_per_s": 5.0,
        "cpu_ms_per_token": 2.0,
        "sequences_per_step": 1.0,
        "step_calls_per_s": 500.0,
        "step_busy_share": 0.5,
        "errors": {},
    }
    results = {
        "command": "python bench/textgen.py",
        "machine": {
            "cpu": "x",
            "cores": 2,
            "onnxruntime": "ort",
            "python": "3",
            "os": "linux",
            "date": "today",
        },
        "elapsed_s": 10.0,
        "settings": {
            "model": "gpt-shakespeare",
            "version": "1",
            "max_running": 32,
            "network": {"layers": 4, "width": 192, "context": 256},
            "temperature": 0.8,
            "prompt_chars": [8],
            "new_tokens": [32],
            "warmup_s": 1,
            "duration_s": 2,
            "rounds": 1,
            "provider": "cpu",
            "intra_op_threads": 0,
            "overhead_batch": 8,
            "overhead_steps": 10,
            "json_out": "bench/results/textgen.json",
        },
        "cells": [cell],
        "overhead": [
            {"context": 16, "batch": 8, "step_ms": 1.0, "session_ms": 0.6, "overhead_ms": 0.4}
        ],
        "ceiling": {
            "context": 128,
            "batch": 32,
            "one_step_ms": 0.5,
            "batch_step_ms": 6.0,
            "ratio": 2.67,
        },
        "goals": [],
    }
    section = render_section(results, "people wrote this")
    assert (
        "| 1 | continuous | 500 | 500 |" in section  # and the rounds' tokens/s
        and "| 16 | 8 | 1.000 | 0.600 | **0.400** |" in section
    )
    assert "0.500 ms for one text, 6.000 ms for 32" in section and "**2.7x**" in section
    assert "people wrote this" in section
