"""Measure PixelCNN's fast sampler against the naive one, each served by a family service.

    python bench/pixelcnn.py --models models --model pixelcnn-fashion \\
        --report docs/benchmarks.md

The model's newest version folder is copied twice into a temporary model
repository: once with `params.sampler` "fast" (`rows.onnx` once per row,
`pixels.onnx` once per pixel) and once with "naive" (`pixelcnn.onnx`, the
whole network, once per pixel) under the name `<model>-naive`. The graphs and
their recorded sha256 are unchanged. One pixelcnn family service per sampler
starts on free loopback ports with the same session options, and:

1. one seeded request goes to both: the images must be byte-identical (printed
   and recorded), and its time is each sampler's lone-image latency;
2. closed-loop clients send Generate (1 sample, request i with seed i and
   class label i mod 10) at concurrency 1 and 4 (`bench/pixelcnn_load.py`);
   the samplers take turns cell by cell for several rounds, and each cell
   keeps its median round.

Results go to bench/results/pixelcnn.json and, with --report, into that
Markdown file's PixelCNN section (only that one; `bench/pixelcnn_report.py`).
`--quick` runs one round of short cells. The driver is shared with
bench/iterative.py (`bench/steploop.py`).

Everything is bounded: each cell lasts its stagger + warmup + window and
cancels what is still in flight; calls have a deadline; every service is
stopped at the end, on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steploop
from iterative_load import Service
from pixelcnn_load import NUM_CLASSES, Load, request, run_cell
from pixelcnn_report import judge_goals, render_cells, render_goals, write_section
from prometheus_client.parser import text_string_to_metric_families
from raw_ort import newest_version
from run_benchmarks import BenchError

from genserve.runtime.repository import load_config
from genserve.runtime.supervisor import Supervisor

SAMPLERS = ("fast", "naive")
QUICK = {"rounds": 1, "warmup_s": 1.0, "duration_s": 8.0}
PARITY_SEED = 7
STARTUP_S = 30.0
"""About what starting two services, warming them and the parity check take."""


def make_repositories(folder: Path, model: str, root: Path) -> dict[str, str]:
    """Copy the version `folder` once per sampler under `root/<sampler>/`; their model names."""
    names = {}
    for sampler in SAMPLERS:
        name = model if sampler == "fast" else f"{model}-naive"
        copy = root / sampler / name / folder.name
        shutil.copytree(folder, copy)
        config_path = copy / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["name"] = name
        config.setdefault("params", {})["sampler"] = sampler
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        names[sampler] = name
    return names


def start_services(
    sup: Supervisor, root: Path, names: dict[str, str], args: argparse.Namespace
) -> dict[str, Service]:
    """One family service per sampler on loopback; waits until each generates with its model."""
    variants = {sampler: (root / sampler, []) for sampler in SAMPLERS}
    services = steploop.start_family_services(sup, "pixelcnn", variants, args)
    for sampler, service in services.items():
        generate(service, names[sampler], 0, args.startup_timeout_s)  # loads and warms
        check_sampler(service, sampler)
    return services


def generate(service: Service, model: str, seed: int, timeout_s: float) -> tuple[bytes, float]:
    """One seeded image from `service`, retried while it loads; its bytes and seconds taken."""
    reply, seconds = steploop.generate_when_ready(service.target, request(model, seed), timeout_s)
    return reply.images.tensor.data, seconds


def check_sampler(service: Service, sampler: str) -> None:
    """The service's step metrics name `sampler` and no other (the config copy took effect)."""
    with urllib.request.urlopen(service.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    seen = {
        sample.labels.get("sampler")
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "genserve_step_batch_size_count" and sample.value > 0
    }
    if seen != {sampler}:
        raise BenchError(f"the {sampler} service stepped samplers {sorted(seen)}")


def check_parity(
    services: dict[str, Service], names: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """One seeded request to both services: the same bytes, or how far apart; and its times."""
    images, latency = {}, {}
    for sampler, service in services.items():
        images[sampler], latency[sampler] = generate(
            service, names[sampler], PARITY_SEED, timeout_s
        )
    fast, naive = (np.frombuffer(images[s], np.float32) for s in SAMPLERS)
    return {
        "seed": PARITY_SEED,
        "class_label": PARITY_SEED % NUM_CLASSES,
        "identical": images["fast"] == images["naive"],
        "pixels_differing": int(np.count_nonzero(fast != naive)) if fast.size == naive.size else -1,
        "max_abs_diff": float(np.abs(fast - naive).max()) if fast.size == naive.size else -1.0,
        "latency_s": {s: round(latency[s], 3) for s in SAMPLERS},
    }


def stagger_s(lone_s: float, concurrency: int, duration_s: float) -> float:
    """Client spacing: the lone-image latency, at most the window shared by the clients."""
    return min(lone_s, duration_s / concurrency)


def measure(
    sup: Supervisor,
    services: dict[str, Service],
    names: dict[str, str],
    parity: dict[str, Any],
    pixels: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Every cell `rounds` times, samplers taking turns; returns the median cells."""

    def cell(sampler: str, concurrency: int) -> dict[str, Any]:
        spacing = stagger_s(parity["latency_s"][sampler], concurrency, args.duration_s)
        load = Load(names[sampler], concurrency, spacing, args.call_timeout_s)
        measured = run_cell(services[sampler], load, args.warmup_s, args.duration_s, pixels)
        return {"sampler": sampler, "concurrency": concurrency, **measured}

    return steploop.measure_rounds(sup, SAMPLERS, args, cell)


def run(args: argparse.Namespace, defaults: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Make the two repositories, start the services, measure, stop them; returns the results."""
    folder = newest_version(Path(args.models), args.model)
    config = load_config(folder)
    pixels = int(np.prod(config.params["image_shape"][1:]))
    names = make_repositories(folder, args.model, tmp / "models")
    log_dir = Path(args.log_dir) if args.log_dir else tmp / "logs"
    with Supervisor(log_dir=log_dir) as sup:
        print(f"starting the fast and naive services (logs in {log_dir})", flush=True)
        services = start_services(sup, tmp / "models", names, args)
        parity = check_parity(services, names, args.call_timeout_s)
        print(f"  fast against naive, one seeded request: {parity}", flush=True)
        print(f"  measuring takes about {measure_s(args, parity) / 60:.1f} minutes", flush=True)
        cells = measure(sup, services, names, parity, pixels, args)
        log = sup.children[0].log_path
    settings = {
        "image_shape": list(config.params["image_shape"]),
        "pixels": pixels,
        "network": config.params.get("network"),
        "concurrency": list(args.concurrency),
        "lone_image_s": parity["latency_s"],
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "rounds": args.rounds,
    }
    measured = {
        "parity": parity,
        "cells": sorted(cells, key=lambda c: (c["concurrency"], SAMPLERS.index(c["sampler"]))),
    }
    return steploop.collect_results(BENCH, args, defaults, folder, log, settings, measured)


def measure_s(args: argparse.Namespace, parity: dict[str, Any] | None = None) -> float:
    """How long measuring takes: every cell's stagger, warmup and window, every round."""
    per_round = 0.0
    for concurrency in args.concurrency:
        for sampler in SAMPLERS:
            lone = parity["latency_s"][sampler] if parity else 0.0
            spacing = stagger_s(lone, concurrency, args.duration_s)
            per_round += (concurrency - 1) * spacing + args.warmup_s + args.duration_s + 0.5
    return args.rounds * per_round


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """Command-line options (--quick applied), and the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steploop.add_model_options(parser, "pixelcnn-fashion", [1, 4])
    parser.add_argument("--warmup-s", type=float, default=2.0, help="warmup per cell")
    parser.add_argument("--duration-s", type=float, default=16.0, help="measured window per cell")
    parser.add_argument("--rounds", type=int, default=3, help="times every cell is measured")
    args, defaults = steploop.parse_options(parser, BENCH, argv)
    steploop.check_cells(parser, args)
    return args, defaults


def print_tables(results: dict[str, Any]) -> None:
    """The goals and the cell table, for the terminal."""
    print(render_goals(results), render_cells(results), sep="\n\n")


BENCH = steploop.Bench("pixelcnn", "PixelCNN", QUICK, judge_goals, print_tables, write_section)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write the JSON and, with --report, the Markdown section."""
    args, defaults = parse_args(argv)
    estimate = f"this takes {(STARTUP_S + measure_s(args)) / 60:.1f} minutes and more"
    return steploop.main(BENCH, args, partial(run, args, defaults), estimate)


if __name__ == "__main__":
    sys.exit(main())
