"""Measure the GPT under streaming load: continuous batching, static batching, one at a time.

    python bench/textgen.py --models models --model gpt-shakespeare \\
        --report docs/benchmarks.md

In one run it starts the gpt family service three times on free loopback
ports, all with the same session options:

- continuous: the model's own step policy (new prompts are prefilled and join
  the running texts at the next step; finished texts leave at once);
- static: `--step-admission request` (a batch runs to completion before the
  next one starts);
- one: `--max-running 1` (one text at a time).

Before measuring, one seeded request goes to each: the three texts must be the
same. Closed-loop clients then stream texts (GenerateStream; prompt lengths and
output lengths drawn per request, `bench/textgen_load.py`) at concurrency 1, 8
and 32; the modes take turns cell by cell for several rounds and each cell
keeps its median round (by tokens/s). After the services stop, the family's
step runs in this process at contexts 16, 128 and the model's largest, and its
time is split into the session call and everything else
(`bench/text_overhead.py`): that overhead should stay flat as the context
grows. Results go to bench/results/textgen.json and, with --report, into that
Markdown file's GPT section (only that one; `bench/textgen_report.py`).
`--quick` runs one round of short cells.

Everything is bounded: each cell lasts warmup + window and cancels the streams
still open; calls have a deadline; every service is stopped at the end, on an
error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steploop
import text_overhead
from iterative_load import Service
from raw_ort import newest_version
from run_benchmarks import BenchError
from textgen_load import Workload, request, run_cell
from textgen_report import (
    CEILING_CONTEXT,
    GOAL_CONCURRENCY,
    judge_goals,
    print_tables,
    write_section,
)

from genserve.exporters.served import ServedRunner
from genserve.runtime.repository import load_config
from genserve.runtime.supervisor import Supervisor

MODES = {"continuous": [], "static": ["--step-admission", "request"], "one": ["--max-running", "1"]}
QUICK = {"rounds": 1, "warmup_s": 1.0, "duration_s": 4.0, "overhead_steps": 50}
PARITY_SEED = 7
STARTUP_S = 20.0
"""About what starting three services and the checks take, for the estimate."""


def workload(args: argparse.Namespace) -> Workload:
    return Workload(
        args.model, tuple(args.prompt_chars), tuple(args.new_tokens), args.temperature,
        args.call_timeout_s,
    )  # fmt: skip


def start_services(sup: Supervisor, args: argparse.Namespace) -> dict[str, Service]:
    """One family service per mode on loopback; waits until each generates with the model."""
    variants = {mode: (Path(args.models), flags) for mode, flags in MODES.items()}
    return steploop.start_family_services(sup, "gpt", variants, args)


def check_parity(services: dict[str, Service], args: argparse.Namespace) -> dict[str, Any]:
    """One seeded request to every mode (loading the model): the texts must be the same."""
    req = request(workload(args), PARITY_SEED, max(args.prompt_chars), max(args.new_tokens))
    texts, latency = {}, {}
    for mode, service in services.items():
        reply, latency[mode] = steploop.generate_when_ready(
            service.target, req, args.startup_timeout_s
        )
        texts[mode] = reply.texts[0]
    return {
        "seed": PARITY_SEED,
        "prompt_chars": len(req.prompt),
        "max_new_tokens": req.sampler.max_new_tokens,
        "identical": len(set(texts.values())) == 1,
        "text": texts["continuous"],
        "latency_s": {mode: round(s, 3) for mode, s in latency.items()},
    }


def measure_in_process(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The family's step in process, nothing served.

    ``overhead``: step, session and overhead ms at each context. ``ceiling``: the
    step at context CEILING_CONTEXT with one text and with GOAL_CONCURRENCY texts,
    so how many times one-at-a-time's tokens/s batching alone can give on this
    machine, before any serving cost.
    """
    context = load_config(folder).params["network"]["context"]
    contexts = sorted({16, CEILING_CONTEXT, context - 2})
    with ServedRunner(folder, threads=args.intra_op_threads) as runner:  # as the services
        overhead = [
            text_overhead.measure(runner.model, c, args.overhead_batch, args.overhead_steps)
            for c in contexts
        ]
        one, full = (
            text_overhead.measure(runner.model, CEILING_CONTEXT, batch, args.overhead_steps)
            for batch in (1, GOAL_CONCURRENCY)
        )
    ceiling = {
        "context": CEILING_CONTEXT,
        "batch": GOAL_CONCURRENCY,
        "one_step_ms": one["step_ms"],
        "batch_step_ms": full["step_ms"],
        "ratio": round(GOAL_CONCURRENCY * one["step_ms"] / full["step_ms"], 2),
    }
    return {"overhead": overhead, "ceiling": ceiling}


def run(args: argparse.Namespace, defaults: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Start the services, check parity, measure, stop them, measure the overhead."""
    folder = newest_version(Path(args.models), args.model)
    log_dir = Path(args.log_dir) if args.log_dir else tmp / "logs"
    load = workload(args)
    with Supervisor(log_dir=log_dir) as sup:
        print(f"starting the three services (logs in {log_dir})", flush=True)
        services = start_services(sup, args)
        parity = check_parity(services, args)
        print(f"  one seeded request to every mode: identical={parity['identical']}", flush=True)
        if not parity["identical"]:
            raise BenchError("the modes gave different texts for one seeded request")

        def cell(mode: str, concurrency: int) -> dict[str, Any]:
            measured = run_cell(services[mode], load, concurrency, args.warmup_s, args.duration_s)
            return {"mode": mode, **measured}

        cells = steploop.measure_rounds(sup, list(MODES), args, cell, key="tokens_per_s")
        log = sup.children[0].log_path
    print("  step overhead and batching ceiling in process ...", flush=True)
    in_process = measure_in_process(folder, args)
    config = load_config(folder)
    settings = {
        "network": config.params.get("network"),
        "concurrency": list(args.concurrency),
        "prompt_chars": list(args.prompt_chars),
        "new_tokens": list(args.new_tokens),
        "temperature": args.temperature,
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "rounds": args.rounds,
        "overhead_batch": args.overhead_batch,
        "overhead_steps": args.overhead_steps,
    }
    order = list(MODES)
    measured = {
        "parity": parity,
        "cells": sorted(cells, key=lambda c: (c["concurrency"], order.index(c["mode"]))),
        **in_process,
    }
    return steploop.collect_results(BENCH, args, defaults, folder, log, settings, measured)


def measure_s(args: argparse.Namespace) -> float:
    """How long measuring takes, about: every cell's warmup and window, every round."""
    cells = len(args.concurrency) * len(MODES)
    return args.rounds * cells * (args.warmup_s + args.duration_s + 0.5)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """Command-line options (--quick applied), and the defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steploop.add_model_options(parser, "gpt-shakespeare", [1, 8, 32])
    parser.add_argument("--prompt-chars", type=int, nargs="+", default=[8, 32, 96])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 64, 144])
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--warmup-s", type=float, default=3.0, help="warmup per cell")
    parser.add_argument("--duration-s", type=float, default=12.0, help="measured window per cell")
    parser.add_argument("--rounds", type=int, default=3, help="times every cell is measured")
    parser.add_argument("--overhead-batch", type=int, default=8, help="texts per in-process step")
    parser.add_argument("--overhead-steps", type=int, default=200, help="steps per context")
    args, defaults = steploop.parse_options(parser, BENCH, argv)
    steploop.check_cells(parser, args)
    return args, defaults


BENCH = steploop.Bench("textgen", "GPT", QUICK, judge_goals, print_tables, write_section)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; write the JSON and, with --report, the Markdown section."""
    args, defaults = parse_args(argv)
    estimate = f"this takes {(STARTUP_S + measure_s(args)) / 60:.1f} minutes and more"
    return steploop.main(BENCH, args, partial(run, args, defaults), estimate)


if __name__ == "__main__":
    sys.exit(main())
