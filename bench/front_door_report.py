"""The front-door benchmark's Markdown section and its goals, from `bench/front_door.py`'s results.

The section sits between the markers below in docs/benchmarks.md; a rewrite
replaces only it and keeps its "Reading" part, which people write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iterative_report import (
    errors_text,
    mark,
    markdown_table,
    num,
    render_footer,
    render_goals,
    replace_section,
)

BEGIN = "<!-- bench/front_door.py: begin -->"
END = "<!-- bench/front_door.py: end -->"
READING_HEADING = "### Reading the front-door numbers"
MARKERS = (BEGIN, END, READING_HEADING)
GATEWAY_CPU_GOAL_MS = 0.5
"""The most CPU the gateway may add to a forwarded unary call."""
SERVICE_CPU_GOAL_MS = 1.0
"""The most CPU the family service may spend on a Decode of one row at 32 callers."""
SERVICE_GOAL_CONCURRENCY = 32
P50_GAP_GOAL_MS = 0.5
"""The most the gateway may add to p50 latency at concurrency 1."""

Results = dict[str, Any]


def find(results: Results, tree: str, path: str, concurrency: int) -> dict[str, Any] | None:
    for cell in results["cells"]:
        if (cell["tree"], cell["path"], cell["concurrency"]) == (tree, path, concurrency):
            return cell
    return None


def _cpu(cell: dict[str, Any] | None, role: str) -> float | None:
    return None if cell is None else cell["cpu_ms_per_call"].get(role)


def judge_goals(results: Results) -> list[dict[str, Any]]:
    """The issue's three goals, judged on the "after" tree."""
    concurrencies = results["settings"]["concurrency"]
    goals = []
    gateway = [(c, _cpu(find(results, "after", "gateway", c), "gateway")) for c in concurrencies]
    gateway = [(c, v) for c, v in gateway if v is not None]
    if gateway:
        worst = max(v for _, v in gateway)
        goals.append({
            "goal": f"the gateway adds at most {GATEWAY_CPU_GOAL_MS} CPU-ms per forwarded call",
            "seen": ", ".join(f"{v:.2f} at concurrency {c}" for c, v in gateway),
            "met": worst <= GATEWAY_CPU_GOAL_MS,
        })  # fmt: skip
    service = _cpu(find(results, "after", "direct", SERVICE_GOAL_CONCURRENCY), "service")
    if service is not None:
        goals.append({
            "goal": f"the family service spends at most {SERVICE_CPU_GOAL_MS} CPU-ms per "
            f"Decode of one row at {SERVICE_GOAL_CONCURRENCY} callers",
            "seen": f"{service:.2f}",
            "met": service <= SERVICE_CPU_GOAL_MS,
        })  # fmt: skip
    direct, through = find(results, "after", "direct", 1), find(results, "after", "gateway", 1)
    if direct and through:
        gap = through["latency_ms"]["p50"] - direct["latency_ms"]["p50"]
        goals.append({
            "goal": f"p50 through the gateway at concurrency 1 at most {P50_GAP_GOAL_MS} ms "
            "above direct",
            "seen": f"{through['latency_ms']['p50']:.2f} against {direct['latency_ms']['p50']:.2f}"
            f" ms (+{gap:.2f})",
            "met": gap <= P50_GAP_GOAL_MS,
        })  # fmt: skip
    return goals


def render_cells(results: Results) -> str:
    """One row per tree, path and concurrency."""
    columns = [
        "tree", "path", "concurrency", "req/s", "rounds' req/s", "p50 ms", "p99 ms",
        "service CPU-ms/call", "gateway CPU-ms/call", "rounds' CPU-ms/call (service / gateway)",
        "errors",
    ]  # fmt: skip
    order = {"before": 0, "after": 1, "after, no relay": 2, "bare proxy": 3, "bare server": 4}
    cells = sorted(
        results["cells"], key=lambda c: (c["path"], c["concurrency"], order.get(c["tree"], 2))
    )
    rows = [
        [
            cell["tree"],
            cell["path"],
            cell["concurrency"],
            f"{cell['requests_per_s']:.0f}",
            ", ".join(f"{r:.0f}" for r in cell["rounds_requests_per_s"]),
            num(cell["latency_ms"]["p50"], 2),
            num(cell["latency_ms"]["p99"], 2),
            num(_cpu(cell, "service"), 2),
            num(_cpu(cell, "gateway"), 2),
            ", ".join(
                " / ".join(f"{v:.2f}" for v in r.values()) for r in cell["rounds_cpu_ms_per_call"]
            ),
            errors_text(cell["errors"]),
        ]
        for cell in cells
    ]
    return markdown_table(columns, rows, left={"tree", "path", "rounds' req/s"})


def render_section(results: Results, reading: str) -> str:
    s = results["settings"]
    trees = s["trees"]
    keys = "on" if s["api_keys"].get("after") else "off"
    return f"""{BEGIN}
## Front door: CPU per call, family service and gateway, before and after

- Call: {s["call"]} on `{s["model"]}`, closed loop, at concurrency
  {", ".join(map(str, s["concurrency"]))}; **direct** to the family service, or through
  the **gateway**.
- Trees: **before** is commit `{trees["before"]}` (before the front-door work),
  **after** is `{trees["after"]}`. Each runs its own vae family service and gateway,
  metrics on in both; API keys {keys} at the after gateway (every call sends a valid key;
  the before tree has none). **bare proxy**: `bench/bare_proxy.py` in front of the after
  tree's family service, a grpc.aio server whose one generic handler passes request and
  response bytes through unread (no routing, interceptor, metrics, auth or retries): the
  floor of a Python gRPC hop on this machine. **bare server**: the same proxy with
  `--stored`, answering every call with its method's first answer, kept: what receiving and
  answering a call costs a grpc.aio server, with no hop onwards (its "service" column is
  idle). **after, no relay**: the after gateway with
  `--no-relay` (each forwarded call an RPC of its own, not carried on a Relay stream), in
  front of the same family service.
- CPU-ms per call: the process's own user+system CPU time (`/proc/<pid>/stat`, all
  threads) over the measured window, divided by the calls answered. The load generator
  shares the machine's cores but is not charged.
- Each cell: {s["warmup_s"]:g} s warmup, {s["duration_s"]:g} s measured, {s["rounds"]}
  rounds, the trees taking turns; the median round by req/s is shown.

{render_goals(results)}

{render_cells(results)}

{render_footer(results, MARKERS, reading)}"""


def write_section(path: Path, results: Results) -> None:
    """Put the section into `path`, replacing its old one."""
    replace_section(path, MARKERS, lambda kept: render_section(results, kept))


def print_tables(results: Results) -> None:
    for goal in results["goals"]:
        print(f"{mark(goal['met'])} {goal['goal']}: {goal['seen']}")
    print(render_cells(results))
