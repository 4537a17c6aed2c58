"""The PixelCNN benchmark's Markdown section, and its goals judged from the results.

`bench/pixelcnn.py` owns one section of docs/benchmarks.md, between the
BEGIN and END markers below; a rewrite replaces only that section (appending
it the first time) and keeps its "Reading the numbers" part, which people
write (`iterative_report.replace_section`, with the other pieces the two
sections share).
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

BEGIN = "<!-- bench/pixelcnn.py: begin -->"
END = "<!-- bench/pixelcnn.py: end -->"
READING_HEADING = "### Reading the PixelCNN numbers"
MARKERS = (BEGIN, END, READING_HEADING)
SPEEDUP_GOAL = 5.0
"""The fast sampler's images/s: at least this many times the naive one's."""


def judge_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Fast against naive at every concurrency, and their parity: what was seen, met or not."""
    goals = []
    for concurrency in results["settings"]["concurrency"]:
        fast = find_cell(results, "sampler", "fast", concurrency)
        naive = find_cell(results, "sampler", "naive", concurrency)
        if not (fast and naive):
            continue
        speedup = ratio(fast["images_per_s"], naive["images_per_s"])
        drawn = ratio(fast["drawn_images_per_s"], naive["drawn_images_per_s"])
        goals.append({
            "goal": f"concurrency {concurrency}: fast sampler's images/s at least "
            f"{SPEEDUP_GOAL:g}x the naive one's",
            "seen": f"{fast['images_per_s']:.2f} against {naive['images_per_s']:.3f} images/s"
            f" ({num(speedup, 1)}x; pixels drawn/s {num(drawn, 1)}x)",
            "met": None if speedup is None else speedup >= SPEEDUP_GOAL,
            "speedup": None if speedup is None else round(speedup, 2),
            "pixels_speedup": None if drawn is None else round(drawn, 2),
        })  # fmt: skip
    parity = results.get("parity")
    if parity:
        goals.append({
            "goal": "fast and naive give the same image for the same seed",
            "seen": f"seed {parity['seed']}, class {parity['class_label']}: "
            + _parity_outcome(parity),
            "met": parity["identical"],
        })  # fmt: skip
    return goals


def _parity_outcome(parity: dict[str, Any]) -> str:
    if parity["identical"]:
        return "byte-identical"
    return f"{parity['pixels_differing']} pixels differ (max abs diff {parity['max_abs_diff']:g})"


def render_cells(results: dict[str, Any]) -> str:
    """One row per concurrency and sampler: throughput, latency, cost, steps."""
    columns = [
        "concurrency", "sampler", "images/s", "rounds' images/s", "p50 ms", "p99 ms", "images",
        "CPU s/image", "pixels/s", "samples/step", "steps/s", "step loop busy", "errors",
    ]  # fmt: skip
    rows = [
        [
            cell["concurrency"],
            cell["sampler"],
            f"{cell['images_per_s']:.3g}",
            rounds_text(cell, ".3g"),
            num(cell["latency_ms"]["p50"], 0),
            num(cell["latency_ms"]["p99"], 0),
            cell["images"],
            num(cell["cpu_s_per_image"], 3),
            f"{cell['pixels_per_s']:.0f}",
            num(cell["sequences_per_step"]),
            f"{cell['step_calls_per_s']:.0f}",
            f"{cell['step_busy_share']:.0%}",
            errors_text(cell["errors"]),
        ]
        for cell in results["cells"]
    ]
    return markdown_table(columns, rows, left={"sampler", "rounds' images/s"})


def render_section(results: dict[str, Any], reading: str) -> str:
    """The whole section, markers included."""
    s = results["settings"]
    parity = results.get("parity")
    parity_line = (
        f"- Parity: before measuring, one request (seed {parity['seed']}, class "
        f"{parity['class_label']}) went to both services;\n  the images came out "
        f"{_parity_outcome(parity)}.\n"
        if parity
        else ""
    )
    lone = ", ".join(f"{k} {v:.2f} s" for k, v in s["lone_image_s"].items())
    side = "x".join(map(str, s["image_shape"][1:]))
    return f"""{BEGIN}
## PixelCNN: fast sampler against naive
{quick_note(s)}
The served fast sampler against the naive one, each in its own family service.

- **fast**: `rows.onnx` (the vertical stack, on the rows above) once per row of a
  sample, `pixels.onnx` (the horizontal stack, on the columns of the row that the pixel
  depends on) once per pixel; **naive**: `pixelcnn.onnx`, the whole network on the
  whole image, once per pixel ({s["pixels"]} calls per {side} image).
- Model: `{s["model"]}` version {s["version"]}. The naive service serves a copy of that
  version folder with `params.sampler` set to "naive" (as `{s["model"]}-naive`); the
  graphs are the same files.
- Call: Generate with 1 sample; request i of a cell has seed i and class label i mod
  10; closed loop: each of *concurrency* clients sends its next request as soon as
  the previous one returns. Both services keep the model's step policy
  (`max_running {s["max_running"]}`), so at concurrency 4 every step is one session
  call over the 4 samples.
- Each cell: client k starts k x *stagger* after the first, so that completions
  spread out instead of arriving in bursts of *concurrency*. *stagger* is the
  sampler's lone-image latency in the parity request ({lone}), at most
  window / *concurrency*. Then {s["warmup_s"]:g} s warmup and a window of
  {s["duration_s"]:g} s: requests that end inside it count, calls still running at its
  end are cancelled. {s["rounds"]} round(s); the samplers take turns cell by cell and
  each round rotates who goes first. A cell shows its median round (by images/s)
  and every round's images/s.
- CPU s/image: the family process's user + system time over the window
  (`/proc/PID/stat`) per image finished in it. pixels/s, samples/step and steps/s:
  from the service's `genserve_step_batch_size` histogram over the window (a step
  draws one pixel of each running sample, so pixels/s / {s["pixels"]} is images/s
  without the window's rounding to whole images). Step loop busy: the share of the
  window spent in steps (`genserve_step_duration_seconds`).
- Provider `{s["provider"]}`, intra-op threads {s["intra_op_threads"]} (0: ONNX
  Runtime's choice), alike for both. The clients run on the same machine and share
  its cores with the services.
{parity_line}
{render_goals(results)}

{render_cells(results)}

{render_footer(results, MARKERS, reading)}"""


def write_section(path: Path, results: dict[str, Any]) -> None:
    """Put the PixelCNN section into `path`, replacing its old one (keeping its reading)."""
    replace_section(path, MARKERS, lambda kept: render_section(results, kept))
