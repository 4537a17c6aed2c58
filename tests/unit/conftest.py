"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """Train and export on one torch thread (tiny models: more threads only add noise)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
