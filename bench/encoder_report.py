"""The encoder benchmark's Markdown section, and its goal judged from the results.

`bench/encoder.py` owns one section of docs/benchmarks.md, between the
BEGIN and END markers below; a rewrite replaces only that section (appending
it the first time) and keeps its "Reading the encoder numbers" part, which
people write (`iterative_report.replace_section`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iterative_report import markdown_table, num, replace_section

BEGIN = "<!-- bench/encoder.py: begin -->"
END = "<!-- bench/encoder.py: end -->"
READING_HEADING = "### Reading the encoder numbers"
MARKERS = (BEGIN, END, READING_HEADING)
READING_PLACEHOLDER = "(to be written by whoever runs the benchmark)"

INTRO = """\
## Encoder: token-budget batching, batching off, and what a user would otherwise run

`encoder-minilm` (all-MiniLM-L6-v2, ONNX, float16 weights computed in float32).
Closed-loop clients send Encode with {texts_per_call} sentence(s) per call
through the gateway: lines of Shakespeare's validation plays and modern
sentences, mixed lengths. **tokens**: the model's policy (length buckets,
`max_batch_tokens` 4096, at most 128 rows, adaptive delay up to 2 ms);
**off**: `--max-batch-size 1`, one text per `session.run`. CPU ms per call
is each process's own accounting (/proc/PID/stat) over the measured window.
Peers run from their own environments under `.venv-peers/` (`make
encoder-peers`): sentence-transformers in process on PyTorch with the same
weights (`encode` on batches of 1 and {top}: a batch of {top} is the
in-process answer to {top} concurrent callers), and Infinity over HTTP.
Each cell: {warmup_s:g} s warmup, {duration_s:g} s measured, median of
{rounds} round(s), the modes taking turns."""


def _cell(results: dict[str, Any], server: str, mode: str, concurrency: int) -> dict | None:
    for cell in results.get("cells", []):
        if (cell["server"], cell["mode"], cell["concurrency"]) == (server, mode, concurrency):
            return cell
    return None


def _rows(results: dict[str, Any]) -> list[list[object]]:
    rows = []
    for cell in [*results.get("cells", []), *results.get("infinity", {}).get("cells", [])]:
        cpu = cell.get("cpu_ms_per_call", {})
        rows.append([
            cell["concurrency"], cell["server"], cell["mode"], num(cell["sentences_per_s"]),
            ", ".join(f"{v:g}" for v in cell.get("rounds_sentences_per_s", [])),
            num(cell["latency_ms"]["p50"], 2), num(cell["latency_ms"]["p99"], 2),
            " + ".join(f"{k} {v:g}" for k, v in cpu.items()), sum(cell["errors"].values()),
        ])  # fmt: skip
    for cell in results.get("sentence_transformers", {}).get("cells", []):
        rows.append([
            f"batch {cell['batch_size']}", "sentence-transformers", "in process",
            num(cell["sentences_per_s"]), "", num(cell["latency_ms"]["p50"], 2),
            num(cell["latency_ms"]["p99"], 2), f"process {cell['cpu_ms_per_call']:g}", 0,
        ])  # fmt: skip
    return rows


def judge_goal(results: dict[str, Any]) -> dict[str, Any]:
    """Served at the top concurrency against sentence-transformers' batch of that size."""
    top = max(results["settings"]["concurrency"])
    served = _cell(results, "genserve", "tokens", top)
    peer = next(
        (c for c in results.get("sentence_transformers", {}).get("cells", [])
         if c["batch_size"] == top), None,
    )  # fmt: skip
    if not (served and peer):
        return {"goal": f"genserve at concurrency {top} >= in-process PyTorch", "met": None}
    return {
        "goal": f"genserve (tokens, through the gateway) at concurrency {top} serves at least "
        f"the sentences/s of sentence-transformers in process at batch {top}",
        "seen": f"{served['sentences_per_s']:g} against {peer['sentences_per_s']:g} sentences/s",
        "met": served["sentences_per_s"] >= peer["sentences_per_s"],
    }


def render_section(results: dict[str, Any], reading: str = READING_PLACEHOLDER) -> str:
    s = results["settings"]
    intro = INTRO.format(top=max(s["concurrency"]), **s)
    columns = [
        "concurrency", "server", "batching", "sentences/s", "rounds' sentences/s", "p50 ms",
        "p99 ms", "CPU ms per call", "errors",
    ]  # fmt: skip
    table = markdown_table(columns, _rows(results), left=("server", "batching", "CPU ms per call"))
    goal = judge_goal(results)
    mark = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
    lines = [BEGIN, intro, "", table, "", f"- Goal: {goal['goal']}: **{mark}** "
             f"({goal.get('seen', 'a side is missing')})."]  # fmt: skip
    parity = results.get("parity")
    if parity:
        lines.append(
            f"- Same embeddings as sentence-transformers: minimum cosine "
            f"{parity['min_cosine']} over {parity['sentences']} sentences."
        )
    for peer in ("sentence_transformers", "infinity"):
        skipped = results.get(peer, {}).get("skipped")
        if skipped:
            lines.append(f"- {peer.replace('_', '-')} did not run: {skipped}")
    machine = results.get("machine", {})
    lines += [
        f"- Machine: {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), "
        f"{machine.get('onnxruntime', '?')}, measured {machine.get('date', '?')}.",
        "", "Command:", "", "```", "make encoder-peers", s["command"], "```", "",
        READING_HEADING, "", reading.strip(), END,
    ]  # fmt: skip
    if s.get("quick"):
        lines.insert(2, "\n*A quick run (--quick): one short round; indicative only.*")
    return "\n".join(lines) + "\n"


def write_section(path: Path, results: dict[str, Any]) -> None:
    """Replace (or append) the encoder section of `path`."""
    replace_section(path, MARKERS, lambda reading: render_section(results, reading))
