"""The reference docs stay true to the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from genserve.runtime import metrics

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"


def exported_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric genserve exports: full name -> (type, label names)."""
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            found[name] = (value._type, tuple(value._labelnames))
    return found


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The metrics table of docs/observability.md: name -> (type, label names)."""
    text = (DOCS / "observability.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(genserve_\w+)` \| (\w+) \| ([\w, ]+) \|", text, re.MULTILINE)
    return {name: (kind, tuple(re.split(r",\s*", labels))) for name, kind, labels in rows}


def test_every_metric_is_documented_with_its_type_and_labels():
    assert documented_metrics() == exported_metrics()
