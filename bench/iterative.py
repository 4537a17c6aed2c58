"""Measure diffusion under a mixed workload: step batching, request-level, one at a time.

    python bench/iterative.py --models models --model diffusion-fashion \\
        --report docs/benchmarks.md

In one run it starts the diffusion family service three times on free
loopback ports, all with the same session options:

- step: the model's own step policy (waiting requests join at the next step);
- request: `--step-admission request` (they join only an empty running set);
- one: `--max-running 1` (one sample, two rows with guidance, per step).

Closed-loop clients then send Generate (1 sample, guidance 3, steps drawn
at random from 10, 20 and 50) at concurrency 1, 4 and 16 (`bench/iterative_load.py`);
the modes take turns cell by cell for several rounds and each cell keeps its
median round. Each round also measures the ceiling: the family's own DDIM step
on raw ONNX Runtime in this process at a few batch sizes
(`bench/iterative_raw.py`). Results go to bench/results/iterative.json and,
with --report, into that Markdown file's diffusion section (only that one;
`bench/iterative_report.py`). `--quick` runs one round of short cells. The
driver is shared with bench/pixelcnn.py (`bench/steploop.py`).

Everything is bounded: each cell lasts warmup + window and cancels what is
still in flight; calls have a deadline; every service is stopped at the end,
on an error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steploop
from iterative_load import MAX_WARMUP_FACTOR, Service, Workload, run_cell
from iterative_raw import image_alone, measure_batch, open_model
from iterative_report import judge_goals, render_cells, render_steps, write_section
from raw_ort import newest_version

from genserve.families.diffusion import DiffusionModel
from genserve.runtime.session import SessionOptions
from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb

MODES = {"step": [], "request": ["--step-admission", "request"], "one": ["--max-running", "1"]}
QUICK = {"rounds": 1, "warmup_s": 1.0, "duration_s": 4.0, "raw_s": 1.5}
PARITY_SEED = 7
STARTUP_S = 20.0
"""About what starting three services and the checks take, for the estimate."""


def start_services(sup: Supervisor, args: argparse.Namespace) -> dict[str, Service]:
    """One family service per mode on loopback; waits until each generates with the model."""
    variants = {mode: (Path(args.models), flags) for mode, flags in MODES.items()}
    services = steploop.start_family_services(sup, "diffusion", variants, args)
    one_step = pb.GenerateRequest(
        model_name=args.model, num_samples=1, seed=0, sampler=pb.SamplerParams(steps=1)
    )
    for service in services.values():
        steploop.generate_when_ready(service.target, one_step, args.startup_timeout_s)
    return services


def check_parity(service: Service, model: DiffusionModel, workload: Workload) -> dict[str, Any]:
    """One sample served and run by the raw loop: the same bytes, or how far apart."""
    steps = min(workload.mix)
    request = pb.GenerateRequest(
        model_name=workload.model,
        num_samples=1,
        seed=PARITY_SEED,
        class_labels=[PARITY_SEED % 10],
        sampler=pb.SamplerParams(steps=steps, guidance_scale=workload.guidance_scale),
    )
    reply, _ = steploop.generate_when_ready(service.target, request, workload.timeout_s)
    served = reply.images.tensor.data
    raw = image_alone(model, PARITY_SEED, steps, workload.guidance_scale)
    diff = np.abs(np.frombuffer(served, np.float32) - np.frombuffer(raw, np.float32)).max()
    return {
        "seed": PARITY_SEED,
        "steps": steps,
        "identical": served == raw,
        "max_abs_diff": float(diff),
    }


def measure(
    sup: Supervisor,
    services: dict[str, Service],
    model: DiffusionModel,
    workload: Workload,
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every cell and the ceiling, `rounds` times; returns the median cells and ceiling rows."""
    ceiling: dict[int, list[dict[str, Any]]] = {}

    def cell(mode: str, concurrency: int) -> dict[str, Any]:
        measured = run_cell(services[mode], workload, concurrency, args.warmup_s, args.duration_s)
        return {"mode": mode, **measured}

    def raw_loop(round_: int) -> None:
        for rows in args.raw_rows:
            print(f"  round {round_ + 1}/{args.rounds} raw loop {rows:4} rows ...", end="")
            row = measure_batch(model, rows, workload.mix, workload.guidance_scale, args.raw_s)
            print(f" {row['images_per_s']:7.2f} images/s", flush=True)
            ceiling.setdefault(rows, []).append(row)

    cells = steploop.measure_rounds(sup, list(services), args, cell, raw_loop)
    return cells, [steploop.median_round(runs) for runs in ceiling.values()]


def run(args: argparse.Namespace, defaults: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start the services, measure, stop them; returns the results."""
    folder = newest_version(Path(args.models), args.model)
    session = SessionOptions(args.provider, args.intra_op_threads)
    model = open_model(folder, session)
    workload = Workload(args.model, tuple(args.mix), args.guidance_scale, args.call_timeout_s)
    log_dir = Path(args.log_dir or tmp)
    with Supervisor(log_dir=log_dir) as sup:
        print(f"starting {len(MODES)} diffusion services (logs in {log_dir})", flush=True)
        services = start_services(sup, args)
        parity = check_parity(services["step"], model, workload)
        print(f"  raw loop against the served sample: {parity}", flush=True)
        cells, ceiling = measure(sup, services, model, workload, args)
        log = sup.children[0].log_path
    settings = {
        "mix": list(args.mix),
        "guidance_scale": args.guidance_scale,
        "concurrency": list(args.concurrency),
        "warmup_s": args.warmup_s,
        "max_warmup_s": MAX_WARMUP_FACTOR * args.warmup_s,
        "duration_s": args.duration_s,
        "rounds": args.rounds,
        "raw_rows": list(args.raw_rows),
        "raw_s": args.raw_s,
    }
    measured = {
        "parity": parity,
        "cells": sorted(cells, key=lambda c: (c["concurrency"], list(MODES).index(c["mode"]))),
        "ceiling": sorted(ceiling, key=lambda r: r["rows"]),
    }
    return steploop.collect_results(BENCH, args, defaults, folder, log, settings, measured)


def estimate_s(args: argparse.Namespace) -> tuple[float, float]:
    """How long a run with these options takes: at least, and at most (longest warmups)."""
    cells = len(args.concurrency) * len(MODES)
    raw = len(args.raw_rows) * (args.raw_s + 0.5)
    least = STARTUP_S + args.rounds * (cells * (args.warmup_s + args.duration_s + 0.5) + raw)
    return least, least + args.rounds * cells * (MAX_WARMUP_FACTOR - 1) * args.warmup_s


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """Command-line options (--quick applied), and the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steploop.add_model_options(parser, "diffusion-fashion", [1, 4, 16])
    parser.add_argument("--mix", type=int, nargs="+", default=[10, 20, 50], help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--warmup-s", type=float, default=4.0, help="warmup per cell")
    parser.add_argument("--duration-s", type=float, default=16.0, help="measured window per cell")
    parser.add_argument("--rounds", type=int, default=3, help="times every cell is measured")
    parser.add_argument("--raw-rows", type=int, nargs="+", default=[2, 8, 16, 32, 64, 128])
    parser.add_argument("--raw-s", type=float, default=3.0, help="raw loop time per batch size")
    args, defaults = steploop.parse_options(parser, BENCH, argv)
    bad = [n for n in ("rounds", "warmup_s", "duration_s", "raw_s") if getattr(args, n) < 0]
    if bad or args.rounds < 1 or args.duration_s <= 0 or min(args.concurrency + args.mix) < 1:
        parser.error("rounds, concurrency and mix must be >= 1 and durations above 0")
    return args, defaults


def print_tables(results: dict[str, Any]) -> None:
    """The goals and the cell tables, for the terminal."""
    for goal in results["goals"]:
        met = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        print(f"{met}: {goal['goal']}: {goal['seen']}")
    print(render_cells(results), render_steps(results), sep="\n\n")


BENCH = steploop.Bench("iterative", "diffusion", QUICK, judge_goals, print_tables, write_section)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write the JSON and, with --report, the Markdown section."""
    args, defaults = parse_args(argv)
    least, most = estimate_s(args)
    estimate = f"this takes {least / 60:.1f} to {most / 60:.1f} minutes"
    return steploop.main(BENCH, args, partial(run, args, defaults), estimate)


if __name__ == "__main__":
    sys.exit(main())
