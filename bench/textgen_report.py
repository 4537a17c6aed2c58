"""The GPT benchmark's Markdown section, and its goals judged from the results.

`bench/textgen.py` owns one section of docs/benchmarks.md, between the BEGIN
and END markers below; a rewrite replaces only that section (appending it the
first time) and keeps its "Reading the GPT numbers" part, which people write
(`iterative_report.replace_section`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iterative_report import (
    errors_text,
    find_cell,
    markdown_table,
    num,
    quick_note,
    ratio,
    render_footer,
    render_goals,
    replace_section,
    rounds_text,
)

BEGIN = "<!-- bench/textgen.py: begin -->"
END = "<!-- bench/textgen.py: end -->"
READING_HEADING = "### Reading the GPT numbers"
MARKERS = (BEGIN, END, READING_HEADING)
GOAL_CONCURRENCY = 32
OVER_ONE_GOAL, OVER_STATIC_GOAL = 6.0, 1.5
"""Continuous batching's tokens/s at GOAL_CONCURRENCY streams: at least these many times
one-at-a-time's and static batching's."""
FLAT_GOAL = 1.5
CEILING_CONTEXT = 128
"""The context the batching ceiling is measured at (see :func:`render_ceiling`)."""
"""The step overhead at the largest context: at most this many times the one at the smallest."""


def judge_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Continuous against static and one at a time; parity; a flat step overhead."""
    goals = []
    cont = find_cell(results, "mode", "continuous", GOAL_CONCURRENCY)
    for rival, target in (("one", OVER_ONE_GOAL), ("static", OVER_STATIC_GOAL)):
        other = find_cell(results, "mode", rival, GOAL_CONCURRENCY)
        if not (cont and other):
            continue
        times = ratio(cont["tokens_per_s"], other["tokens_per_s"])
        goals.append({
            "goal": f"{GOAL_CONCURRENCY} streams: continuous batching's tokens/s at least "
            f"{target:g}x {rival}'s",
            "seen": f"{cont['tokens_per_s']:.0f} against {other['tokens_per_s']:.0f} tokens/s "
            f"({num(times, 1)}x)",
            "met": None if times is None else times >= target,
            "ratio": None if times is None else round(times, 2),
        })  # fmt: skip
    parity = results.get("parity")
    if parity:
        goals.append({
            "goal": "one seeded request gives the same text in every mode",
            "seen": f"seed {parity['seed']}, {parity['max_new_tokens']} tokens: "
            + ("identical" if parity["identical"] else "different"),
            "met": parity["identical"],
        })  # fmt: skip
    overhead = results.get("overhead") or []
    if len(overhead) >= 2:
        low, high = overhead[0], overhead[-1]
        times = ratio(high["overhead_ms"], low["overhead_ms"])
        goals.append({
            "goal": f"step overhead outside the session call stays flat: at context "
            f"{high['context']} at most {FLAT_GOAL:g}x that at {low['context']}",
            "seen": f"{high['overhead_ms']:.3f} against {low['overhead_ms']:.3f} ms "
            f"({num(times, 2)}x)",
            "met": None if times is None else times <= FLAT_GOAL,
        })  # fmt: skip
    return goals


def render_cells(results: dict[str, Any]) -> str:
    """One row per concurrency and mode: tokens/s, first-token and inter-token times, costs."""
    columns = [
        "streams", "mode", "tokens/s", "rounds' tokens/s", "TTFT p50 ms", "TTFT p95 ms",
        "inter-token p50 ms", "texts/s", "CPU ms/token", "texts/step", "steps/s",
        "step loop busy", "errors",
    ]  # fmt: skip
    rows = [
        [
            cell["concurrency"],
            cell["mode"],
            f"{cell['tokens_per_s']:.0f}",
            rounds_text(cell, ".0f", "tokens_per_s"),
            num(cell["ttft_ms"]["p50"], 0),
            num(cell["ttft_ms"]["p95"], 0),
            num(cell["inter_token_ms"]["p50"], 1),
            f"{cell['texts_per_s']:.2f}",
            num(cell["cpu_ms_per_token"], 3),
            num(cell["sequences_per_step"]),
            f"{cell['step_calls_per_s']:.0f}",
            f"{cell['step_busy_share']:.0%}",
            errors_text(cell["errors"]),
        ]
        for cell in results["cells"]
    ]
    return markdown_table(columns, rows, left={"mode", "rounds' tokens/s"})


def render_overhead(results: dict[str, Any]) -> str:
    """One row per context: the step's time, its session call's and the rest."""
    columns = ["context (tokens)", "texts per step", "step ms", "session ms", "overhead ms"]
    rows = [
        [
            row["context"],
            row["batch"],
            f"{row['step_ms']:.3f}",
            f"{row['session_ms']:.3f}",
            f"**{row['overhead_ms']:.3f}**",
        ]
        for row in results.get("overhead") or []
    ]
    return markdown_table(columns, rows)


def render_ceiling(results: dict[str, Any]) -> str:
    """How far batching alone can raise tokens/s on this machine: the graph's own scaling."""
    c = results.get("ceiling")
    if not c:
        return ""
    return (
        f"**Batching ceiling on this machine.** The same step in process at context "
        f"{c['context']}: {c['one_step_ms']:.3f} ms for one text, {c['batch_step_ms']:.3f} ms "
        f"for {c['batch']}. So batching {c['batch']} texts gives at most **{c['ratio']:.1f}x** "
        f"one text's tokens/s here, before any serving cost: the upper bound of continuous "
        f"batching's ratio over one at a time on this hardware."
    )


def print_tables(results: dict[str, Any]) -> None:
    """The goals and the tables, for the terminal."""
    print(
        render_goals(results), render_cells(results), render_overhead(results),
        render_ceiling(results), sep="\n\n",
    )  # fmt: skip


def render_section(results: dict[str, Any], reading: str) -> str:
    """The whole section, markers included."""
    s = results["settings"]
    net = s.get("network") or {}
    shape = f"{net.get('layers')} blocks, width {net.get('width')}, context {net.get('context')}"
    return f"""{BEGIN}
## GPT: continuous batching of streamed text
{quick_note(s)}
The gpt family service three times, with the same session options:

- **continuous**: the model's step policy (`max_running {s["max_running"]}`): new
  prompts are prefilled and join the running texts at the next step, finished texts
  leave at once; **static**: `--step-admission request`, a batch runs to completion
  before the next starts; **one**: `--max-running 1`, one text at a time.
- Model: `{s["model"]}` version {s["version"]} ({shape}).
- Call: GenerateStream, one sample, temperature {s["temperature"]:g}; request i of a cell
  has seed i; its prompt is the first *n* characters of a fixed passage, *n* drawn from
  {s["prompt_chars"]}, and its max_new_tokens drawn from {s["new_tokens"]}, by each
  client's own seeded generator. Closed loop: each of *streams* clients sends its next
  request as soon as its stream ends.
- Each cell: {s["warmup_s"]:g} s warmup (and until every client has had a text back),
  then a window of {s["duration_s"]:g} s. **tokens/s**: characters of the token events
  that arrived inside the window (a token is a character). **TTFT**: from sending a
  request to its first token event, for first tokens inside the window.
  **Inter-token**: the gap between a stream's successive token events. Streams still
  open at the window's end are cancelled. {s["rounds"]} round(s); the modes take turns
  cell by cell and each round rotates who goes first. A cell shows its median round
  (by tokens/s) and every round's tokens/s.
- CPU ms/token: the family process's user + system time over the window
  (`/proc/PID/stat`) per token. texts/step, steps/s and step loop busy: from the
  service's step metrics over the window.
- Provider `{s["provider"]}`, intra-op threads {s["intra_op_threads"]} (0: ONNX Runtime's
  choice). The clients run on the same machine and share its cores with the services.

{render_goals(results)}

{render_cells(results)}

**Step overhead as the context grows.** After the services stop, the family's own step
runs in this process on {s["overhead_batch"]} texts of *context* tokens each
({s["overhead_steps"]} steps per context, each step's new token taken back so the
context stays put). The step's time splits into the session call and the rest: the
cache rows handed to the graph as a view, the new keys and values written in place,
the draw, stop sequences and bookkeeping.

{render_overhead(results)}

{render_ceiling(results)}

{render_footer(results, MARKERS, reading)}"""


def write_section(path: Path, results: dict[str, Any]) -> None:
    """Put the GPT section into `path`, replacing its old one (keeping its reading)."""
    replace_section(path, MARKERS, lambda kept: render_section(results, kept))
