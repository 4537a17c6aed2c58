"""The diffusion benchmark's Markdown section, and its goals judged from the results.

`bench/iterative.py` owns one section of docs/benchmarks.md, between the
BEGIN and END markers below; a rewrite replaces only that section (appending
it the first time) and keeps its "Reading the numbers" part, which people
write.

The pieces that are not about diffusion (`replace_section`, `markdown_table`,
`render_goals`, `quick_note`, `render_footer`, `find_cell`, `rounds_text`, `ratio`,
`mark`, `num`, `errors_text`) serve the PixelCNN section too
(`bench/pixelcnn_report.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench/iterative.py: begin -->"
END = "<!-- bench/iterative.py: end -->"
READING_HEADING = "### Reading the diffusion numbers"
MARKERS = (BEGIN, END, READING_HEADING)
READING_PLACEHOLDER = "_To be written: what the tables show and why._\n"
MODE_NAMES = {
    "step": "step batching",
    "request": "request-level",
    "one": "one at a time",
}
P50_GAIN_GOAL = 2.0
"""Step batching's shortest requests: at least this much lower p50 than request-level."""
CEILING_SHARE_GOAL = 0.85
"""Served images/s: at least this share of the raw loop's best."""


def find_cell(
    results: dict[str, Any], key: str, variant: str, concurrency: int
) -> dict[str, Any] | None:
    """The cell whose `key` ("mode", "sampler") is `variant` at `concurrency`, if measured."""
    for cell in results["cells"]:
        if cell[key] == variant and cell["concurrency"] == concurrency:
            return cell
    return None


def best_ceiling(results: dict[str, Any]) -> dict[str, Any] | None:
    """The raw loop's row count with the most images/s."""
    return max(results.get("ceiling", []), key=lambda r: r["images_per_s"], default=None)


def mark(ok: bool | None) -> str:
    """A goal's mark: met, not met or not measured (None)."""
    return "❔" if ok is None else ("✅" if ok else "❌")


def judge_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals at the highest concurrency measured: what was seen, and met or not."""
    top = max(results["settings"]["concurrency"])
    shortest = str(min(results["settings"]["mix"]))
    step = find_cell(results, "mode", "step", top)
    request = find_cell(results, "mode", "request", top)
    ceiling = best_ceiling(results)
    goals = []
    if step and request:
        fast = step["by_steps"][shortest]["latency_ms"]["p50"]
        slow = request["by_steps"][shortest]["latency_ms"]["p50"]
        gain = slow / fast if fast and slow else None
        goals.append({
            "goal": f"concurrency {top}: {shortest}-step p50 at least {P50_GAIN_GOAL:g}x "
            "lower with step batching than request-level",
            "seen": f"{num(fast, 0)} ms against {num(slow, 0)} ms"
            + (f" ({gain:.2f}x)" if gain is not None else ""),
            "met": None if gain is None else gain >= P50_GAIN_GOAL,
        })  # fmt: skip
        goals.append({
            "goal": f"concurrency {top}: step batching's images/s at least request-level's",
            "seen": f"{step['images_per_s']:.2f} against {request['images_per_s']:.2f} images/s",
            "met": step["images_per_s"] >= request["images_per_s"],
        })  # fmt: skip
    if step and ceiling:
        share = step["images_per_s"] / ceiling["images_per_s"]
        goals.append({
            "goal": f"served (step batching, concurrency {top}) at least "
            f"{CEILING_SHARE_GOAL:.0%} of the raw loop's best",
            "seen": f"{step['images_per_s']:.2f} of {ceiling['images_per_s']:.2f} images/s "
            f"({share:.0%}; raw at {ceiling['rows']} rows)",
            "met": share >= CEILING_SHARE_GOAL,
        })  # fmt: skip
    return goals


def num(value: float | None, digits: int = 1) -> str:
    """`value` with `digits` decimals; "-" for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def errors_text(errors: dict[str, int]) -> str:
    """Errors by status code: their total, then each code's count."""
    if not errors:
        return "0"
    return f"{sum(errors.values())} (" + ", ".join(f"{k} {v}" for k, v in errors.items()) + ")"


def rounds_text(row: dict[str, Any], spec: str, key: str = "images_per_s") -> str:
    """Every round's `key` of a median row (`steploop.median_round`), each formatted with
    `spec`."""
    return ", ".join(format(r, spec) for r in row.get(f"rounds_{key}", ()))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def markdown_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], left: Collection[str] = ()
) -> str:
    """A Markdown table of `rows` under `columns`, right-aligned but for the `left` columns."""
    align = "|" + "|".join("---" if c in left else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(map(str, cells)) + " |" for cells in rows]
    return "\n".join(["| " + " | ".join(columns) + " |", align, *body])


def render_cells(results: dict[str, Any]) -> str:
    """One row per concurrency and mode: throughput, cost, batch, share of the ceiling."""
    ceiling = best_ceiling(results)
    columns = [
        "concurrency", "mode", "images/s", "rounds' images/s", "% of ceiling", "CPU s/image",
        "sequences/step", "steps/s", "step loop busy", "errors",
    ]  # fmt: skip
    rows = [
        [
            cell["concurrency"],
            MODE_NAMES[cell["mode"]],
            f"{cell['images_per_s']:.2f}",
            rounds_text(cell, ".2f"),
            f"{cell['images_per_s'] / ceiling['images_per_s']:.0%}" if ceiling else "-",
            num(cell["cpu_s_per_image"], 3),
            num(cell["sequences_per_step"]),
            num(cell["step_calls_per_s"]),
            f"{cell['step_busy_share']:.0%}",
            errors_text(cell["errors"]),
        ]
        for cell in results["cells"]
    ]
    return markdown_table(columns, rows, left={"mode", "rounds' images/s"})


def render_steps(results: dict[str, Any]) -> str:
    """One row per concurrency, mode and step count: images/s and latency."""
    columns = ["concurrency", "mode", "steps", "images/s", "p50 ms", "p99 ms", "images"]
    rows = [
        [
            cell["concurrency"],
            MODE_NAMES[cell["mode"]],
            steps,
            f"{row['images_per_s']:.2f}",
            num(row["latency_ms"]["p50"], 0),
            num(row["latency_ms"]["p99"], 0),
            row["images"],
        ]
        for cell in results["cells"]
        for steps, row in cell["by_steps"].items()
    ]
    return markdown_table(columns, rows, left={"mode"})


def render_goals(results: dict[str, Any]) -> str:
    """The goals table: each goal, what was seen, met or not."""
    rows = [[g["goal"], g["seen"], mark(g["met"])] for g in results["goals"]]
    return markdown_table(["goal", "seen", "met"], rows, left={"goal", "seen", "met"})


def quick_note(settings: dict[str, Any]) -> str:
    """The warning under a section's title when it shows a --quick run; else nothing."""
    if not settings.get("quick"):
        return ""
    return (
        "\n> **Quick run** (`--quick`: one round of short cells): for trying the benchmark, "
        "not for citing.\n"
    )


def render_footer(results: dict[str, Any], markers: tuple[str, str, str], reading: str) -> str:
    """A section's end: the machine, the command, the raw results, the reading, the end marker.

    `markers` are the section's (begin, end, reading heading), as `replace_section` takes them.
    """
    machine, (_, end, heading) = results["machine"], markers
    gpu = f"- GPU: {machine['gpu']}\n" if machine.get("gpu") else ""
    return f"""- CPU: {machine["cpu"]} ({machine["cores"]} cores)
{gpu}- {machine["onnxruntime"]}
- Python {machine["python"]}, {machine["os"]}
- Measured {machine["date"]} in {results["elapsed_s"]:.0f} s

```
{results["command"]}
```

Raw results: `{results["settings"]["json_out"]}`.

{heading}

{reading.strip()}

{end}
"""


def render_ceiling(ceiling: Sequence[dict[str, Any]]) -> str:
    """One row per row count of the raw loop; the best in bold."""
    best = max(ceiling, key=lambda r: r["images_per_s"], default=None)
    columns = [
        "rows per step", "samples per step", "steps/s", "step p50 ms", "sample-steps/s",
        "images/s", "rounds' images/s",
    ]  # fmt: skip
    rows = [
        [
            row["rows"],
            row["samples_per_step"],
            f"{row['steps_per_s']:.1f}",
            f"{row['step_ms']['p50']:.1f}",
            f"{row['sample_steps_per_s']:.0f}",
            f"**{row['images_per_s']:.2f}**" if row is best else f"{row['images_per_s']:.2f}",
            rounds_text(row, ".2f"),
        ]
        for row in ceiling
    ]
    return markdown_table(columns, rows, left={"rounds' images/s"})


def _parity_line(parity: dict[str, Any] | None) -> str:
    """A bullet saying whether the raw loop and the service made the same image."""
    if not parity:
        return ""
    outcome = (
        "byte-identical"
        if parity["identical"]
        else f"different (max abs diff {parity['max_abs_diff']:g})"
    )
    return (
        f"- The raw loop computes what the service does: one {parity['steps']}-step sample "
        f"(seed {parity['seed']}) came out {outcome} from the two.\n"
    )


def render_section(results: dict[str, Any], reading: str = READING_PLACEHOLDER) -> str:
    """The whole section, markers included."""
    s = results["settings"]
    mix = ", ".join(map(str, s["mix"]))
    rows = 1 if s["guidance_scale"] == 1.0 else 2  # a guided sample adds an unconditional row
    rows_each = "two rows" if rows == 2 else "one row"
    parity_line = _parity_line(results.get("parity"))
    return f"""{BEGIN}
## Diffusion: step batching under a mixed workload
{quick_note(s)}
Step (continuous) batching against request-level batching and one request at a time.

- Call: Generate with 1 sample on `{s["model"]}`, guidance scale {s["guidance_scale"]:g} (so
  every sample is {rows_each} of a step's session call: conditional and unconditional),
  eta 0, class label = seed mod 10; closed loop: each of *concurrency* clients sends its
  next request as soon as the previous one returns, its DDIM steps drawn at random from
  {mix} (client k's draws seeded with k; drawn, not taken in turn, because with turns a
  client's 10-step request always follows its 50-step one, which ends a request-level
  batch, so it never waits behind one).
- **step batching**: the model's own policy (`max_running {s["max_running"]}` sequences,
  {rows * s["max_running"]} rows); waiting requests join at the next step. **request-level**:
  the same slots with `--step-admission request`: waiting requests join only when the
  running set is empty, so a batch runs until its longest request ends. **one at a
  time**: `--max-running 1`, one sample ({rows_each}) per step.
- Each cell: {s["warmup_s"]:g} s warmup (longer until every client has had an answer, at
  most {s["max_warmup_s"]:g} s), then a {s["duration_s"]:g} s window; requests that end inside
  it count, calls still running at its end are cancelled. {s["rounds"]} round(s); the
  modes take turns cell by cell and each round rotates who goes first. A cell shows
  its median round (by images/s) and every round's images/s.
- CPU s/image: the family process's user + system time over the window
  (`/proc/PID/stat`) per image finished in it. sequences/step and steps/s: from the
  service's `genserve_step_batch_size` histogram over the window; step loop busy: the
  share of the window spent in steps (`genserve_step_duration_seconds`).
- The ceiling: the family's own batched DDIM step (`DiffusionModel._step`: one
  session call, the guidance arithmetic, `DdimRule`) run back to back in one process on
  raw ONNX Runtime, its batch always full (a finished sample is replaced at once, steps
  in turn from the same mix); images/s = sample-steps/s / {sum(s["mix"]) / len(s["mix"]):.2f}
  (the mix's mean steps). Measured once per round, the median shown (`bench/iterative_raw.py`).
- Service and raw loop open the graph alike: provider `{s["provider"]}`, intra-op threads
  {s["intra_op_threads"]} (0: ONNX Runtime's choice). The clients run on the same machine
  and share its cores with the service; the raw loop has the machine to itself.
{parity_line}
{render_goals(results)}

{render_cells(results)}

{render_steps(results)}

The ceiling (raw ONNX Runtime, in-process):

{render_ceiling(results["ceiling"])}

{render_footer(results, MARKERS, reading)}"""


def _reading_of(section: str, heading: str, end: str) -> str:
    """The people-written text under `heading` in an old section, or the placeholder."""
    start = section.find(heading)
    if start < 0:
        return READING_PLACEHOLDER
    body = section[start + len(heading) :].replace(end, "")
    following = re.search(r"^#{1,3} ", body, flags=re.MULTILINE)
    body = body[: following.start()] if following else body
    return body.strip() + "\n" if body.strip() else READING_PLACEHOLDER


def write_section(path: Path, results: dict[str, Any]) -> None:
    """Put the section into `path`: replace the old one between the markers, else append.

    A begin marker whose end marker is gone (a hand edit) owns the rest of the file.
    """
    replace_section(path, MARKERS, lambda kept: render_section(results, kept))


def replace_section(
    path: Path, markers: tuple[str, str, str], render: Callable[[str], str]
) -> None:
    """Replace the section between `markers` (begin, end) in `path`, else append it.

    `render` gets the people-written text under the old section's reading heading
    (`markers[2]`; a placeholder when there is none) and returns the whole new
    section, markers included. Each benchmark owning a section passes its own markers.
    A begin marker whose end marker is gone (a hand edit) owns the rest of the file.
    """
    begin, end, heading = markers
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start = text.find(begin)
    if start < 0:
        head, old, tail = text, "", ""
    else:
        stop = text.find(end, start)
        stop = len(text) if stop < 0 else stop + len(end)
        head, old, tail = text[:start], text[start:stop], text[stop:]
    section = render(_reading_of(old, heading, end))
    if head and not head.endswith("\n\n"):
        head = head.rstrip("\n") + "\n\n"
    tail = "\n" + tail.lstrip("\n") if tail.strip() else ""
    path.write_text(head + section + tail, encoding="utf-8")
