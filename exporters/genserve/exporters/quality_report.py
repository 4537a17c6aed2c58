"""What an evaluation writes: the goals, docs/quality.md, the sample grids and card figures.

:mod:`genserve.exporters.evaluate` measures; this module only formats and
writes what it measured. A family's own goals and the line on how it samples
come from its exporter (:class:`Evaluation`); the goals every model shares
are here. Uses no torch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from genserve.exporters import repository
from genserve.runtime.schema import Card

if TYPE_CHECKING:
    from genserve.exporters.evaluate import Model, Quality

logger = logging.getLogger(__name__)

BASELINE_MODEL = "vae-fashion"
"""The model every other one is compared with."""
FD_FLOOR_GOAL = 5.0
"""The best model's FD should be within this many times the floor."""
CLASS_ACCURACY_GOAL = 0.85
"""Conditional models should put at least this share of samples in the requested class."""
GRID_SEED, GRID_COLUMNS, GRID_SCALE = 1, 8, 2
"""Sample grids: latent seed, images per row, integer upscaling."""


class Goal(Protocol):
    """A quality goal of one family."""

    def check(self, family: str, rows: list[Quality]) -> tuple[bool, str]:
        """Whether the family's models meet it, and the figures behind that."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """How a family's models are judged, as its exporter declares it."""

    sampling: str = ""
    """How Generate draws its samples, for the report's method (empty: it cannot sample)."""
    goals: tuple[Goal, ...] = ()
    """Goals of this family beside those every model has."""
    max_validation_nats: float | None = None
    """Text families: the validation loss their models should reach, nats per character."""


def _sampled(rows: list[Quality]) -> list[Quality]:
    """The rows with an FD of samples (not of reconstructions)."""
    return [q for q in rows if q.fd is not None and not q.fd_of_reconstructions]


def _lower_fd(goal: str, best: Quality, rival: Quality) -> tuple[bool, str]:
    """Whether ``best`` has a lower FD than ``rival``, with both figures."""
    ok = best.fd < rival.fd
    sign = "<" if ok else ">="
    return ok, f"{goal}: `{best.name}` {best.fd:.2f} {sign} `{rival.name}` {rival.fd:.2f}"


@dataclass(frozen=True)
class BeatsBaseline:
    """The family's best model (unconditional ones first) has a lower FD than the baseline."""

    label: str
    """The family's name in the goal, e.g. "GAN"."""

    def check(self, family: str, rows: list[Quality]) -> tuple[bool, str]:
        goal = f"{self.label} beats VAE FD"
        baseline = next((q for q in rows if q.name == BASELINE_MODEL and q.fd is not None), None)
        candidates = [q for q in _sampled(rows) if q.family == family]
        candidates = [q for q in candidates if q.class_accuracy is None] or candidates
        if baseline is None:
            return False, f"{goal}: not measured (`{BASELINE_MODEL}` is absent)"
        if not candidates:
            return False, f"{goal}: not measured (no `{family}` model yet)"
        return _lower_fd(goal, min(candidates, key=lambda q: q.fd), baseline)


@dataclass(frozen=True)
class LowestFd:
    """The family's best model has the lowest FD of every model that samples."""

    label: str

    def check(self, family: str, rows: list[Quality]) -> tuple[bool, str]:
        goal = f"{self.label} has the lowest FD"
        sampled = _sampled(rows)
        mine = [q for q in sampled if q.family == family]
        if not mine:
            return False, f"{goal}: not measured (no `{family}` model yet)"
        best = min(mine, key=lambda q: q.fd)
        others = [q for q in sampled if q.family != family]
        if not others:
            return True, f"{goal}: `{best.name}` {best.fd:.2f}, the only model that samples"
        return _lower_fd(goal, best, min(others, key=lambda q: q.fd))


@dataclass(frozen=True)
class ClassAccuracy:
    """The family's best conditional model puts at least this share in the requested class."""

    label: str
    minimum: float
    how: str = ""
    """How it is sampled for this, e.g. " with guidance"."""

    def check(self, family: str, rows: list[Quality]) -> tuple[bool, str]:
        goal = f"{self.label} class accuracy ≥ {self.minimum:.0%}{self.how}"
        mine = [q for q in rows if q.family == family and q.class_accuracy is not None]
        if not mine:
            return False, f"{goal}: not measured (no conditional `{family}` model yet)"
        best = max(mine, key=lambda q: q.class_accuracy)
        text = f"{goal}: `{best.name}` {best.class_accuracy:.1%}"
        return best.class_accuracy >= self.minimum, text


def goals(
    rows: list[Quality], floor: float, evaluations: Mapping[str, Evaluation]
) -> list[tuple[bool, str]]:
    """The goals, each with whether it is met and the figures behind it.

    Each family's own goals (from ``evaluations``, family -> its exporter's
    declaration) come first, then those of every model. A goal whose models
    are absent is not met, and says so.
    """
    out = [
        goal.check(family, rows)
        for family, evaluation in evaluations.items()
        for goal in evaluation.goals
    ]
    sampled = _sampled(rows)
    goal = f"best model within {FD_FLOOR_GOAL:g}x floor"
    if sampled:
        best = min(sampled, key=lambda q: q.fd)
        ratio = best.fd / floor
        text = f"{goal}: `{best.name}` at {ratio:.1f}x ({best.fd:.2f} vs {floor:.2f})"
        out.append((ratio <= FD_FLOOR_GOAL, text))
    else:
        out.append((False, f"{goal}: not measured (no model could sample)"))
    goal = f"conditional accuracy ≥ {CLASS_ACCURACY_GOAL:.0%}"
    conditional = [q for q in rows if q.class_accuracy is not None]
    for q in conditional:
        text = f"{goal}: `{q.name}` {q.class_accuracy:.1%}"
        out.append((q.class_accuracy >= CLASS_ACCURACY_GOAL, text))
    if not conditional:
        out.append((False, f"{goal}: not measured (no conditional model)"))
    return out


# -- outputs -------------------------------------------------------------------------------


def card_figures(q: Quality, floor: float, baseline_fd: float | None, run: dict) -> dict:
    """What ``--update-cards`` writes to ``card.metrics.quality``."""
    figures: dict = {}
    if q.fd is not None:
        figures["fd"] = round(q.fd, 3)
        figures["fd_of"] = "test reconstructions" if q.fd_of_reconstructions else "samples"
        figures["fd_floor"] = round(floor, 3)
        figures["fd_over_floor"] = round(q.fd / floor, 2)
        if baseline_fd is not None:
            figures["fd_baseline"] = round(baseline_fd, 3)
    if q.class_accuracy is not None:
        figures["class_accuracy"] = round(q.class_accuracy, 4)
    if q.reconstruction_mse is not None:
        figures["test_reconstruction_mse"] = round(q.reconstruction_mse, 5)
    return {**figures, **run}


def update_card(model: Model, q: Quality, figures: dict) -> bool:
    """Write ``figures`` to the card and refresh its file records; False if the graphs changed.

    The graphs' sha256 are taken again and must equal those taken before the
    evaluation, so figures never land on a version rewritten meanwhile.
    """
    config = repository.read_config(model.folder)
    records = repository.file_records(model.folder, model.graph_files())
    if records != q.file_hashes:
        logger.warning("%s changed during evaluation; its card is left alone", model.folder)
        return False
    card = config.card or Card()
    for name, record in records.items():
        old = (card.files or {}).get(name)
        if old is not None and old.sha256 != record.sha256:
            logger.warning("%s: card sha256 of %s was stale; corrected", model.name, name)
    card = dataclasses.replace(
        card,
        files={**(card.files or {}), **records},
        metrics={**(card.metrics or {}), "quality": figures},
    )
    repository.write_config(model.folder, dataclasses.replace(config, card=card))
    return True


def _markdown_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def render_report(
    rows: list[Quality],
    floor: float,
    classifier_card: dict,
    run: dict,
    evaluations: Mapping[str, Evaluation],
) -> str:
    """The Markdown of docs/quality.md: goals, table, method and sample grids."""
    accuracy = classifier_card["test_accuracy"]
    lines = [
        "# Sample quality",
        "",
        "Every model in `models/` (newest version) scored one way: the Fréchet distance (FD) "
        "between an evaluation classifier's features of its samples and of the 10,000 "
        "Fashion-MNIST test images. Lower is better. Written by `make eval`:",
        "",
        "```sh",
        run["command"],
        "```",
        "",
        "## Goals",
        "",
    ]
    lines += [f"- {'✅' if ok else '❌'} {text}" for ok, text in goals(rows, floor, evaluations)]
    lines += [
        "",
        "## Results",
        "",
        "| model | family | FD ↓ | FD / floor | class accuracy | recon. MSE | notes |",
        "|---|---|---:|---:|---:|---:|---|",
        f"| *floor: real training images* | — | {floor:.2f} | 1.0 | — | — | "
        f"{run['samples']:,} training images vs the test images |",
    ]
    for q in rows:
        fd, ratio = _cell(q.fd, ".2f"), _cell(None if q.fd is None else q.fd / floor, ".1f")
        if q.fd_of_reconstructions:
            fd, ratio = f"({fd})", f"({ratio})"
        lines.append(
            f"| `{q.name}` v{q.version} | {q.family} | {fd} | {ratio} | "
            f"{_cell(q.class_accuracy, '.1%')} | {_cell(q.reconstruction_mse, '.4f')} | "
            f"{_markdown_cell('; '.join(q.notes))} |"
        )
    for q in rows:
        if q.fd_of_reconstructions and q.fd is not None:
            lines += [
                "",
                f"For scale: `{q.name}`'s reconstructions of the test images themselves score "
                f"{q.fd:.2f}, {q.fd / floor:.0f}x the floor: these features tell real images "
                "from slightly blurred copies, so ratios to the floor run large.",
            ]
    lines += [
        "",
        "## How it is measured",
        "",
        f"- **Classifier**: `{run['classifier']}`, a small CNN trained on the 60,000 training "
        f"images; test accuracy **{accuracy:.2%}**, {classifier_card['feature_dim']}-d "
        f"penultimate features, sha256 `{run['classifier_sha256'][:16]}…`. Trained with "
        f"`{classifier_card['command']}`; its card is "
        f"`{Path(run['classifier']).with_suffix('.json').as_posix()}`.",
        "- **FD** = ‖μ₁ - μ₂‖² + Tr(Σ₁ + Σ₂ - 2(Σ₁Σ₂)^½) between Gaussians fitted to the "
        "features of two image sets (Heusel et al., 2017, with this classifier in place of "
        "Inception).",
        f"- **Samples**: {run['samples']:,} per model from its committed ONNX graphs, drawn by "
        "the family's own serving code in process (its Generate, default sampler settings) "
        f"on ONNX Runtime, seeded with {run['seed']} (requests of at most the model's "
        "max_num_samples; each further request's seed is drawn from that one). Conditional "
        "models get their labels in turn, the same number per class. "
        + " ".join(
            f"{family}: {evaluations[family].sampling}."
            for family in sorted({q.family for q in rows})
            if family in evaluations and evaluations[family].sampling
        ),
        f"- **Floor**: {run['samples']:,} training images (drawn with the same seed) against "
        "the test images: as close as a perfect model gets with this many samples. "
        f"**Baseline**: `{BASELINE_MODEL}`.",
        "- **Class accuracy** (conditional models): the share of samples whose arg-max "
        "class is the requested one.",
        "- **Recon. MSE**: mean squared error per pixel of encoder → decoder on all test "
        "images (the encoder's mean for VAE-type models). Autoencoders cannot sample, so "
        "their FD, in brackets, is of test reconstructions and is not ranked.",
        "- `--update-cards` also writes each model's figures to `card.metrics.quality` in "
        "its `config.json` and refreshes the card's sha256 records of its graphs.",
        "",
        "## Samples",
        "",
        f"8 x 8 samples from seed {GRID_SEED}; conditional models one row per class "
        "(top to bottom: labels 0 to 9); autoencoders alternate rows of test images and "
        "their reconstructions.",
        "",
    ]
    for q in rows:
        if q.fd is not None or q.reconstruction_mse is not None:
            image = f"![{q.name} samples](images/{q.name}-samples.png)"
            lines += [f"### `{q.name}`", "", image, ""]
        if q.completions:
            image = f"![{q.name} completions](images/{q.name}-completions.png)"
            lines += [
                f"Completions by `{q.name}` (Complete): top to bottom, test images, their "
                "top halves (the bottom half unknown), and the bottom half drawn from "
                "seeds 1, 2 and 3; known pixels are kept exactly.",
                "",
                image,
                "",
            ]
    return "\n".join(lines)


def completions_path(grid: Path) -> Path:
    """Where a model's completion picture goes: ``<name>-completions.png`` beside its grid."""
    return grid.with_name(grid.name.replace("-samples.png", "-completions.png"))
