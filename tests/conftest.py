"""Shared test settings: the repository root and tier markers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/integration are the integration tier, the rest are unit."""
    for item in items:
        tier = "integration" if "integration" in item.path.parts else "unit"
        item.add_marker(getattr(pytest.mark, tier))
