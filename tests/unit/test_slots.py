"""SlotTensor: per-slot state read and written in place, one row per slot."""

from __future__ import annotations

import numpy as np
import pytest

from genserve.runtime.slots import SlotTensor

pytestmark = pytest.mark.unit


def test_a_step_reads_its_slots_in_batch_order_and_writes_them_back():
    state = SlotTensor(4, (2,), np.float32)
    state.write([3, 0], np.array([[3, 3], [0, 0]]))
    np.testing.assert_array_equal(state.read([0, 3]), [[0, 0], [3, 3]])
    state.write([0, 3], state.read([0, 3]) + 1)
    np.testing.assert_array_equal(state.rows, [[1, 1], [0, 0], [0, 0], [4, 4]])


def test_storage_is_allocated_once_and_fetch_returns_a_copy():
    state = SlotTensor(2, (1, 3, 3), np.float32)
    storage = state.rows
    state.write([1], np.ones((1, 1, 3, 3)))
    row = state.fetch(1)
    state.write([1], np.zeros((1, 1, 3, 3)))
    assert state.rows is storage
    assert row.sum() == 9, "a fetched row does not change when the slot is reused"


def test_rows_of_the_wrong_shape_are_refused():
    state = SlotTensor(2, (3,), np.float32)
    with pytest.raises(ValueError, match="expected"):
        state.write([0, 1], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="slots"):
        SlotTensor(0, (3,), np.float32)
