"""The text models' section of docs/quality.md: goals, tables, and a rewrite that keeps the rest."""

from __future__ import annotations

import pytest

from genserve.exporters import text_quality
from genserve.exporters.text_quality import BEGIN, END, TextQuality


def _row(name: str, family: str, nats: float, peaks: list[float], goal: float) -> TextQuality:
    metrics = {
        "validation_nats_per_char": nats,
        "validation_bits_per_char": nats / 0.6931,
        "parameters": 1000,
    }
    if peaks:
        metrics["activation_peak_per_layer"] = peaks
    return TextQuality(name, family, "1", "", "", metrics, 100, 120.0, "ROMEO:\nWhat light", goal)


ROWS = [
    _row("lstm-shakespeare", "lstm", 1.62, [], 1.70),
    _row("gpt-shakespeare", "gpt", 1.58, [9.0, 20.5], 1.55),
    _row("gpt1-shakespeare", "gpt", 1.57, [7.0, 8.25], 1.55),
]


def test_each_goal_is_judged_on_the_validation_loss():
    section = text_quality.render_section(ROWS, "cmd")
    assert "- ✅ `lstm-shakespeare`: validation loss 1.620 nats/char, goal at most 1.70" in section
    assert "- ❌ `gpt-shakespeare`: validation loss 1.580 nats/char, goal at most 1.55" in section


def test_the_activation_table_has_a_column_per_block_and_only_models_with_peaks():
    section = text_quality.render_section(ROWS, "cmd")
    table = section.split("### Activation outliers")[1].split("### Samples")[0]
    assert "| model | block 1 | block 2 |" in table
    assert "| `gpt-shakespeare` | 9.0 | 20.5 |" in table
    assert "| `gpt1-shakespeare` | 7.0 | 8.2 |" in table
    assert "lstm-shakespeare" not in table
    assert "| `gpt-shakespeare` v1 | gpt | 1,000 | 1.580 |" in section  # largest: 20.5
    assert "| 20.5 |" in section.split("### Activation outliers")[0]


def test_the_samples_are_shown_as_text_blocks():
    section = text_quality.render_section(ROWS, "cmd")
    assert section.startswith(BEGIN) and section.endswith(END)
    assert section.count("```text\nROMEO:\nWhat light\n```") == 3


@pytest.mark.parametrize("old", ["# Sample quality\n\nimages\n", ""])
def test_the_section_is_appended_then_replaced_and_the_rest_is_kept(old):
    first = text_quality.replace_section(old, text_quality.render_section(ROWS, "cmd"))
    assert first.startswith(old.rstrip("\n")) and first.count(BEGIN) == 1
    again = text_quality.replace_section(first + "\ntrailer\n", f"{BEGIN}\nnew\n{END}")
    assert again.count(BEGIN) == 1 and "\nnew\n" in again and "ROMEO" not in again
    assert again.startswith(old.rstrip("\n")) and again.endswith("trailer\n")
    assert text_quality.kept_section(again) == f"{BEGIN}\nnew\n{END}"
    assert text_quality.kept_section(old) == ""
