"""A picture of a benchmark run: throughput and tail latency against concurrency.

One column per path (direct, gateway), one line per batching mode; the top row
is requests/s (the median round, with a bar spanning every round), the bottom
row p99 latency of the median round. Needs matplotlib (installed with the
exporters' dependencies); serving does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODES = {
    "on": ("tab:blue", "batching on (adaptive delay)"),
    "fixed": ("tab:orange", "fixed delay (Triton-style)"),
    "off": ("tab:gray", "batching off"),
}
PATHS = ("direct", "gateway")
HOPS = {"direct": "direct: client → service", "gateway": "gateway: client → gateway → service"}


def plot(cells: Sequence[dict[str, Any]], out: Path, title: str) -> None:
    """Write the chart of `cells` (run_benchmarks' results) as a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PATHS), figsize=(9, 6.5), sharex=True, squeeze=False)
    for column, path in enumerate(PATHS):
        throughput, latency = axes[0][column], axes[1][column]
        for batching, (color, label) in MODES.items():
            mine = sorted(
                (c for c in cells if c["path"] == path and c["batching"] == batching),
                key=lambda c: c["concurrency"],
            )
            if not mine:
                continue
            x = [c["concurrency"] for c in mine]
            y = [c["requests_per_s"] for c in mine]
            rounds = [c.get("rounds_requests_per_s") or [c["requests_per_s"]] for c in mine]
            spread = [
                [v - min(r) for v, r in zip(y, rounds, strict=True)],
                [max(r) - v for v, r in zip(y, rounds, strict=True)],
            ]
            throughput.errorbar(x, y, yerr=spread, color=color, marker="o", capsize=3, label=label)
            p99 = [c["latency_ms"]["p99"] for c in mine]
            latency.plot(x, p99, color=color, marker="o", label=label)
        throughput.set_title(
            f"{path}: client {'→ service' if path == 'direct' else '→ gateway → service'}"
        )
        for ax in (throughput, latency):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({c["concurrency"] for c in cells}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
        latency.set_xlabel("concurrent callers")
    axes[0][0].set_ylabel("requests/s (median; bar: all rounds)")
    axes[1][0].set_ylabel("p99 latency, ms")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, metadata={"Software": None})
    plt.close(fig)
