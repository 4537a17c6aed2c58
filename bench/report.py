"""The benchmark report: Markdown from run_benchmarks' results.

The "## Reading the numbers" section is written by people; a rewrite keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

READING_HEADING = "## Reading the numbers"
READING_PLACEHOLDER = "_To be written: what the table shows and why._\n"


def _errors_cell(errors: dict[str, int]) -> str:
    """ "0", or the total with the codes, e.g. "12 (RESOURCE_EXHAUSTED 12)"."""
    if not errors:
        return "0"
    codes = ", ".join(f"{code} {count}" for code, count in errors.items())
    return f"{sum(errors.values())} ({codes})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(cells: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| path | concurrency | batching | req/s | rounds' req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for cell in cells:
        latency = cell["latency_ms"]
        rounds = ", ".join(f"{r:.0f}" for r in cell.get("rounds_requests_per_s", ()))
        lines.append(
            f"| {cell['path']} | {cell['concurrency']} | {cell['batching']} "
            f"| {cell['requests_per_s']:.1f} | {rounds} "
            f"| {_ms(latency['p50'])} | {_ms(latency['p99'])} "
            f"| {_errors_cell(cell['errors'])} |"
        )
    return "\n".join(lines)


def render_raw(raw: Sequence[dict[str, Any]] | None) -> str:
    """The raw ONNX Runtime ceiling as a short Markdown section, or nothing."""
    if not raw:
        return ""
    lines = [
        "",
        "The ceiling: the same decoder on raw ONNX Runtime, in one process with no gRPC,",
        "no queue and no tensor encoding, run back to back by one thread",
        "(`bench/raw_ort.py`):",
        "",
        "| batch | runs/s | rows/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in raw:
        latency = row["latency_ms"]
        lines.append(
            f"| {row['batch']} | {row['runs_per_s']:.0f} | {row['rows_per_s']:.0f} "
            f"| {latency['p50']:.2f} | {latency['p99']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def render_report(results: dict[str, Any], reading: str, chart: str | None = None) -> str:
    """The whole Markdown report."""
    machine, settings = results["machine"], results["settings"]
    gpu = f"- GPU: {machine['gpu']}\n" if machine["gpu"] else ""
    policy = ", ".join(f"{k} {v}" for k, v in settings["batching_policy"].items()) or "?"
    picture = f"![requests/s and p99 latency against concurrency]({chart})\n\n" if chart else ""
    return f"""# Benchmarks

Request batching on (adaptive delay), fixed delay and off, direct and through the gateway.

- Call: Generate with 1 sample on `{settings["model"]}`, closed loop: each of
  *concurrency* clients sends its next request as soon as the previous one returns.
- Batching **on**: the model's own policy (`{policy}`), whose adaptive delay
  stops waiting once a batch holds as many requests as recent batches did;
  **fixed**: the same policy but every batch waits out the queue delay unless it
  fills (`--fixed-delay`, how Triton's dynamic batcher behaves); **off**: the
  family service started with `--max-batch-size 1`.
- Path **direct**: client to family service; **gateway**: client to gateway to
  family service.
- Each cell: {settings["warmup_s"]:g} s warmup, then {settings["duration_s"]:g} s measured, in
  {settings["rounds"]} rounds. The three services take turns cell by cell and each round
  rotates who goes first, so the shared machine's drift falls on every mode alike.
  A cell shows its median round (req/s, latency) and every round's req/s.
  Latency percentiles are over successful calls; errors are counted by status code.
- The load generator (`bench/loadgen.py`: asyncio, one grpc.aio channel) runs on
  the same machine and shares its cores with the services.

{picture}{render_table(results["cells"])}
{render_raw(results.get("raw_onnxruntime"))}
## Machine

- CPU: {machine["cpu"]} ({machine["cores"]} cores)
{gpu}- {machine["onnxruntime"]}
- Python {machine["python"]}, {machine["os"]}
- Measured {machine["date"]}

## Command

```
make bench
# which runs:
{results["command"]}
```

Raw results: `{settings["json_out"]}`.

{READING_HEADING}

{reading}"""


def existing_reading(out: Path) -> str:
    """The body of the "Reading the numbers" section of a previous report, if any."""
    if not out.exists():
        return READING_PLACEHOLDER
    text = out.read_text(encoding="utf-8")
    start = text.find(READING_HEADING)
    if start < 0:
        return READING_PLACEHOLDER
    body = text[start + len(READING_HEADING) :]
    following = re.search(r"^(## |<!-- bench/)", body, flags=re.MULTILINE)
    body = body[: following.start()] if following else body
    return body.strip() + "\n" if body.strip() else READING_PLACEHOLDER


def other_sections(out: Path) -> str:
    """What other benchmarks wrote into a previous report: from their first marker on.

    Sections such as bench/iterative.py's sit between ``<!-- bench/...: begin -->``
    and ``end`` markers after this report's own text; a rewrite keeps them.
    """
    if not out.exists():
        return ""
    text = out.read_text(encoding="utf-8")
    marker = re.search(r"^<!-- bench/", text, flags=re.MULTILINE)
    return text[marker.start() :] if marker else ""
