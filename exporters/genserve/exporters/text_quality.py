"""The text models' section of docs/quality.md: validation loss, activation peaks, served samples.

    python -m genserve.exporters.text_quality --models models --out docs/quality.md

Text models (a config whose params carry a character ``vocabulary``) are not
scored by the image evaluation (:mod:`genserve.exporters.evaluate`). Their
validation loss, in nats per character on the held-out plays, and the largest
absolute activation of each transformer block were measured at export by the
PyTorch model (the card also records the ONNX graph's parity with it). This
command reads those figures from each model's card, checks them against the
goal its exporter declares (:attr:`Evaluation.max_validation_nats`), and draws
the card's sample again through the family's own serving code in process
(:class:`genserve.exporters.served.ServedRunner`), so the section shows what a
caller of Generate gets. It rewrites only the part of the file between its two
markers (appending it when they are missing); the rest is what ``make eval``
wrote, and ``make eval`` keeps this part.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from genserve.exporters.served import ServedRunner
from genserve.exporters.text_training import CARD_PROMPT, CARD_TEMPERATURE, CARD_TOKENS
from genserve.runtime.model import SamplerParams
from genserve.runtime.repository import ModelConfig

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.text_quality"
BEGIN = "<!-- text models: written by python -m genserve.exporters.text_quality -->"
END = "<!-- end of text models -->"
SAMPLE_SEED = 0


def is_text_model(config: ModelConfig) -> bool:
    """Whether a model generates characters (its params carry a vocabulary)."""
    return "vocabulary" in config.params


@dataclass(frozen=True)
class TextQuality:
    """One text model's row: figures from its card and a sample drawn by the service."""

    name: str
    family: str
    version: str
    description: str
    command: str
    metrics: dict
    steps: int
    training_time_s: float
    sample: str
    """The prompt and the served continuation."""
    goal: float | None
    """The validation loss its exporter asks for (nats per character), if any."""

    @property
    def nats(self) -> float:
        return self.metrics["validation_nats_per_char"]

    @property
    def peaks(self) -> list[float]:
        """Largest absolute activation per block (empty when the card has none)."""
        return list(self.metrics.get("activation_peak_per_layer", []))


def served_sample(folder: Path) -> str:
    """The card's sample (prompt, temperature, seed, length) drawn by the serving code;
    a model whose cap on new tokens is lower (a GPT's context) stops at its cap."""
    with ServedRunner(folder) as runner:
        tokens = min(CARD_TOKENS, runner.config.params["max_new_tokens"])
        sampler = SamplerParams(temperature=CARD_TEMPERATURE, max_new_tokens=tokens)
        return CARD_PROMPT + runner.generate_text(CARD_PROMPT, SAMPLE_SEED, sampler)


def measure(name: str, folder: Path, config: ModelConfig, goal: float | None) -> TextQuality:
    """A text model's row; its card must hold the validation loss."""
    card = config.card
    if card is None or "validation_nats_per_char" not in (card.metrics or {}):
        raise ValueError(f"{name}: its card has no validation_nats_per_char")
    return TextQuality(
        name, config.family, folder.name, card.description, card.command, dict(card.metrics),
        card.steps, card.training_time_s, served_sample(folder), goal,
    )  # fmt: skip


def _goal_line(q: TextQuality) -> str:
    ok = q.nats <= q.goal
    return (
        f"- {'✅' if ok else '❌'} `{q.name}`: validation loss {q.nats:.3f} nats/char, "
        f"goal at most {q.goal:.2f}"
    )


def render_section(rows: list[TextQuality], command: str) -> str:
    """The Markdown between the markers: goals, table, activation peaks, samples."""
    lines = [
        BEGIN,
        "## Text models",
        "",
        "Character-level models trained on Shakespeare's plays (34 plays; 4 held out: "
        "hamlet, henry-v, the-tempest, twelfth-night). **Validation loss** is the mean "
        "next-character cross-entropy on the whole held-out text, in nats per character "
        "(bits = nats / ln 2), measured at export by the PyTorch model; the card records "
        "the ONNX graph's parity with it. Written by:",
        "",
        "```sh",
        command,
        "```",
        "",
        "### Goals",
        "",
    ]
    lines += [_goal_line(q) for q in rows if q.goal is not None]
    lines += [
        "",
        "| model | family | parameters | validation nats/char ↓ | bits/char | "
        "largest activation | steps | training |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q in rows:
        peak = f"{max(q.peaks):.1f}" if q.peaks else "—"
        lines.append(
            f"| `{q.name}` v{q.version} | {q.family} | {q.metrics.get('parameters', 0):,} | "
            f"{q.nats:.3f} | {q.metrics['validation_bits_per_char']:.3f} | {peak} | "
            f"{q.steps:,} | {q.training_time_s / 60:.0f} min |"
        )
    with_peaks = [q for q in rows if q.peaks]
    if with_peaks:
        depth = max(len(q.peaks) for q in with_peaks)
        lines += [
            "",
            "### Activation outliers",
            "",
            "The largest absolute value of each transformer block's output (the residual "
            'stream) over the first validation windows, per model. The "softmax + 1" '
            "attention denominator lets a head attend to nothing, which is said to tame "
            "these outliers; both GPTs share data, size, seed and training budget.",
            "",
            "| model | " + " | ".join(f"block {i + 1}" for i in range(depth)) + " |",
            "|---|" + "---:|" * depth,
        ]
        for q in with_peaks:
            cells = [f"{v:.1f}" for v in q.peaks] + ["—"] * (depth - len(q.peaks))
            lines.append(f"| `{q.name}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Samples",
        "",
        f"Each model's answer to Generate with prompt {CARD_PROMPT!r}, temperature "
        f"{CARD_TEMPERATURE}, seed {SAMPLE_SEED}, up to {CARD_TOKENS} new characters (a GPT "
        "stops when its context is full), drawn by its family's serving code on ONNX Runtime.",
        "",
    ]
    for q in rows:
        lines += [f"#### `{q.name}`", "", "```text", q.sample.rstrip(), "```", ""]
    lines.append(END)
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    """``document`` with the text between the markers (markers included) replaced by
    ``section``, or with ``section`` appended when the markers are missing."""
    begin, end = document.find(BEGIN), document.find(END)
    if begin == -1 or end < begin:
        return document.rstrip("\n") + "\n\n" + section + "\n"
    return document[:begin] + section + document[end + len(END) :]


def kept_section(document: str) -> str:
    """The text section of an existing document (markers included), or ''."""
    begin, end = document.find(BEGIN), document.find(END)
    return document[begin : end + len(END)] if begin != -1 and end > begin else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--out", type=Path, default=Path("docs/quality.md"), help="report to edit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    from genserve.exporters import evaluate, pipeline  # pipeline imports torch

    goals = {f: e.evaluation.max_validation_nats for f, e in pipeline.exporters().items()}
    try:
        models = [m for m in evaluate.find_models(args.models) if is_text_model(m.config)]
        rows = [measure(m.name, m.folder, m.config, goals.get(m.family)) for m in models]
    except (OSError, ValueError) as e:
        sys.exit(f"{PROG}: error: {e}")
    if not rows:
        sys.exit(f"{PROG}: error: no text models under {args.models}")
    shown = evaluate.display_path
    parts = ["--models", shown(args.models), "--out", shown(args.out)]
    command = f"{PROG} {shlex.join(parts)}"
    old = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(replace_section(old, render_section(rows, command)))
    for q in rows:
        print(f"{q.name}: {q.nats:.3f} nats/char, peaks {q.peaks}")
    print(f"wrote the text section of {args.out}")


if __name__ == "__main__":
    main()
