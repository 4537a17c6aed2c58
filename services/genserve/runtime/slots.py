"""Per-slot state of an iterative sampler, allocated once, read and written in place by steps.

The step scheduler gives every running sequence a slot (``Sequence.slot``,
0 .. max_running - 1) that it keeps until it leaves. A sampler keeps the
state each step feeds back (the image being denoised, a recurrent state, a
KV cache) in a :class:`SlotTensor`: one preallocated row per slot. A step
reads its batch's rows in one gather, runs the session, and writes the new
rows back; a sequence that joins writes its first row into its slot. Nothing
is allocated per step and nothing grows with the number of sequences seen.

On the CPU the storage is a NumPy array. The interface is the one a CUDA
holder keeps: there the rows live in one ``onnxruntime.OrtValue`` on the
device (``OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)``),
a step binds the gathered rows as the session's input and the next state's
buffer as its output with ``IOBinding`` (``bind_ortvalue_input`` /
``bind_ortvalue_output``), and only what a caller must see (a finished
image, a preview, a token's logits) is copied to the host. Samplers never
touch the storage directly, only :meth:`read`, :meth:`write` and
:meth:`fetch`, so swapping the holder does not change a sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class SlotTensor:
    """One state tensor of shape ``shape`` per slot, for ``slots`` slots.

    Args:
        slots: the number of slots (the step policy's max_running).
        shape: one slot's shape.
        dtype: the element type.
    """

    def __init__(self, slots: int, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.rows = np.zeros((slots, *shape), dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """One slot's shape."""
        return self.rows.shape[1:]

    def read(self, slots: Sequence[int]) -> np.ndarray:
        """The rows of ``slots`` stacked in that order, (len(slots), *shape): a step's input."""
        return self.rows[np.asarray(slots, np.int64)]

    def write(self, slots: Sequence[int], values: np.ndarray) -> None:
        """Store a step's new rows, one per slot, in place."""
        values = np.asarray(values, self.rows.dtype)
        if values.shape != (len(slots), *self.shape):
            raise ValueError(f"expected {(len(slots), *self.shape)} rows, got {values.shape}")
        self.rows[np.asarray(slots, np.int64)] = values

    def fetch(self, slot: int) -> np.ndarray:
        """A host copy of one slot's row, for a caller (the result, a preview)."""
        return self.rows[slot].copy()
