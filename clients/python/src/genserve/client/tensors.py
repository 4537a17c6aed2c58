"""Convert between numpy arrays and genserve.v1.Tensor messages.

Tensors travel as raw little-endian bytes with a dtype and a shape.
"""

from __future__ import annotations

import math

import numpy as np

from genserve.v1 import tensor_pb2

_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}
_FROM_NUMPY: dict[str, int] = {dt.str.lstrip("<>|="): code for code, dt in _TO_NUMPY.items()}
MAX_DIMS = 8
"""The most dimensions a Tensor may have."""


class TensorFormatError(ValueError):
    """A Tensor message whose dtype, shape and byte length do not agree."""


def dtype_of(code: int) -> np.dtype:
    """The numpy dtype for a DataType code.

    Raises:
        TensorFormatError: the code is unspecified or unknown.
    """
    try:
        return _TO_NUMPY[code]
    except KeyError:
        names = ", ".join(tensor_pb2.DataType.Name(c) for c in _TO_NUMPY)
        raise TensorFormatError(f"dtype {code} is not supported; use one of {names}") from None


def to_numpy(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor message into a numpy array (a read-only view of its bytes).

    The shape is checked with exact integer arithmetic before any byte is
    looked at, so no shape can overflow or make numpy allocate.

    Raises:
        TensorFormatError: the dtype is unknown, the shape has more than
            MAX_DIMS dimensions or a negative one, or the byte length does not
            match the shape.
    """
    dtype = dtype_of(tensor.dtype)
    if len(tensor.shape) > MAX_DIMS:
        raise TensorFormatError(
            f"shape has {len(tensor.shape)} dimensions; at most {MAX_DIMS} are allowed"
        )
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorFormatError(f"shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: never overflows
    if len(tensor.data) != expected:
        needs = expected if expected < 1 << 63 else "more than 2**63"
        raise TensorFormatError(
            f"shape {list(shape)} of {dtype.name} needs {needs} bytes, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def from_numpy(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode a numpy array as a Tensor message (little-endian, row-major).

    Raises:
        TensorFormatError: the array's dtype has no DataType.
    """
    array = np.asarray(array)
    key = array.dtype.str.lstrip("<>|=")
    if key not in _FROM_NUMPY:
        raise TensorFormatError(f"numpy dtype {array.dtype} has no genserve DataType")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return tensor_pb2.Tensor(
        dtype=_FROM_NUMPY[key],
        shape=list(array.shape),
        data=np.ascontiguousarray(little).tobytes(),
    )
