"""Open Inference Protocol tensors: checked on the way in, built on the way out.

An input tensor arrives as a name, a datatype, a shape, and its elements
either in `raw_input_contents` (little-endian bytes, what tritonclient sends)
or in the typed `contents` fields. Every size is checked before anything is
copied: the number of inputs, the rank, the shape against what the model
takes (exact integer arithmetic), then the byte length against the shape.
BYTES elements are 4-byte little-endian lengths, each followed by that many
bytes; each length is checked against what is left and against
MAX_BYTES_ELEMENT before the element is read. Every refusal is
INVALID_ARGUMENT naming the tensor or parameter (`inputs.prompt.shape`,
`parameters.temperature`), quoting at most a short cut of what was sent.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from genserve.client.tensors import MAX_DIMS
from genserve.inference import grpc_service_pb2 as oip
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.limits import shown
from genserve.v1 import tensor_pb2

MAX_INPUTS = 8
"""Input tensors one request may carry (a model takes at most four)."""
MAX_OUTPUTS = 8
"""Requested outputs one request may name."""
MAX_BYTES_ELEMENT = 64 * 1024
"""Longest BYTES element; prompts and texts have tighter bounds of their own per model."""

_ITEMSIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
    "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2,
}  # fmt: skip
"""Every fixed-size OIP datatype and its bytes per element; BYTES is the variable one."""
_CONTENTS = {
    "BOOL": ("bool_contents", "?"),
    "UINT8": ("uint_contents", "u1"),
    "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "FP32": ("fp32_contents", "<f4"),
}
"""Where the typed `contents` hold each datatype genserve takes, and its numpy dtype."""
DATATYPE_OF = {
    tensor_pb2.DATA_TYPE_FLOAT32: "FP32",
    tensor_pb2.DATA_TYPE_FLOAT16: "FP16",
    tensor_pb2.DATA_TYPE_INT64: "INT64",
    tensor_pb2.DATA_TYPE_INT32: "INT32",
    tensor_pb2.DATA_TYPE_UINT8: "UINT8",
    tensor_pb2.DATA_TYPE_BOOL: "BOOL",
}
"""A genserve Tensor's dtype as an OIP datatype."""
GENSERVE_DTYPE = {name: code for code, name in DATATYPE_OF.items()}
"""An OIP datatype as a genserve Tensor dtype."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a model takes or returns, as the Open Inference Protocol shows it."""

    name: str
    datatypes: tuple[str, ...]
    """The datatypes accepted; the first is the one metadata shows."""
    shape: tuple[int, ...]
    """The shape; -1 marks the sample axis (first) or a size that varies."""
    max_rows: int = 1
    """For an input whose first axis is -1: the most rows it may have (at least 1)."""
    max_elements: int | None = None
    """For an input: the most elements in all, when tighter than the shape gives."""

    def shown_shape(self, rows: str = "N") -> str:
        return "[" + ", ".join(rows if d < 0 else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class InputTensor:
    """One checked input: its shape, and its raw bytes or (BYTES) its elements."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes = b""
    """Little-endian elements, row-major, for fixed-size datatypes."""
    elements: tuple[bytes, ...] = ()
    """The elements of a BYTES tensor."""

    def genserve(self) -> tensor_pb2.Tensor:
        """The same tensor as a genserve Tensor (fixed-size datatypes genserve has)."""
        return tensor_pb2.Tensor(
            dtype=GENSERVE_DTYPE[self.datatype], shape=self.shape, data=self.data
        )

    def texts(self) -> list[str]:
        """The elements of a BYTES tensor as UTF-8 text."""
        out = []
        for i, element in enumerate(self.elements):
            try:
                out.append(element.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidArgument(f"inputs.{self.name}[{i}]", "is not valid UTF-8") from None
        return out

    def integers(self) -> list[int]:
        """The elements of an INT32 or INT64 tensor."""
        dtype = "<i4" if self.datatype == "INT32" else "<i8"
        return np.frombuffer(self.data, dtype=dtype).tolist()


# -- inputs ------------------------------------------------------------------------------------


def read_inputs(
    request: oip.ModelInferRequest, specs: Mapping[str, TensorSpec], what: str
) -> dict[str, InputTensor]:
    """Every input of the request, checked against what the model takes.

    Args:
        request: the request.
        specs: the inputs the call takes, by name.
        what: the call and model, for errors ("generate of model vae-fashion").

    Raises:
        InvalidArgument: naming the input and what is wrong with it.
    """
    inputs, raw = request.inputs, request.raw_input_contents
    if len(inputs) > MAX_INPUTS:
        raise InvalidArgument("inputs", f"at most {MAX_INPUTS} inputs, got {len(inputs)}")
    if raw and len(raw) != len(inputs):
        raise InvalidArgument(
            "raw_input_contents", f"holds {len(raw)} entries for {len(inputs)} inputs"
        )
    found: dict[str, InputTensor] = {}
    for i, tensor in enumerate(inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            takes = ", ".join(specs) or "none"
            raise InvalidArgument(
                f"inputs[{i}].name",
                f"{shown(tensor.name)} is not an input of {what} (it takes: {takes})",
            )
        if spec.name in found:
            raise InvalidArgument(f"inputs.{spec.name}", "is given twice")
        if raw and tensor.HasField("contents"):
            raise InvalidArgument(
                f"inputs.{spec.name}.contents", "must be empty when raw_input_contents is used"
            )
        found[spec.name] = _read_input(tensor, spec, raw[i] if raw else None)
    return found


def _read_input(
    tensor: oip.ModelInferRequest.InferInputTensor, spec: TensorSpec, raw: bytes | None
) -> InputTensor:
    field = f"inputs.{spec.name}"
    if tensor.parameters:
        key = next(iter(tensor.parameters))
        raise InvalidArgument(
            f"{field}.parameters",
            f"{shown(key)} is not supported (no shared memory; send the data in the request)",
        )
    if tensor.datatype not in spec.datatypes:
        raise InvalidArgument(
            f"{field}.datatype",
            f"must be {' or '.join(spec.datatypes)}, got {shown(tensor.datatype, 16)}",
        )
    shape = check_shape(field, tensor.shape, spec)
    count = math.prod(shape)
    if tensor.datatype == "BYTES":
        elements = (
            decode_bytes(field, raw, count)
            if raw is not None
            else _contents_bytes(field, tensor.contents, count)
        )
        return InputTensor(spec.name, tensor.datatype, shape, elements=tuple(elements))
    if raw is None:
        data = _contents_raw(field, tensor, count)
    else:
        expected = count * _ITEMSIZE[tensor.datatype]
        if len(raw) != expected:
            raise InvalidArgument(
                field,
                f"shape {list(shape)} of {tensor.datatype} needs {expected} bytes, got {len(raw)}",
            )
        data = raw
    return InputTensor(spec.name, tensor.datatype, shape, data=data)


def check_shape(field: str, shape: Sequence[int], spec: TensorSpec) -> tuple[int, ...]:
    """The shape, when it fits the spec: rank, fixed sizes, rows and elements bounded.

    Raises:
        InvalidArgument: naming `<field>.shape`.
    """
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(
            f"{field}.shape", f"has {len(shape)} dimensions; at most {MAX_DIMS} are allowed"
        )
    given = tuple(int(d) for d in shape)
    if not _fits(given, spec):
        rows = f" with N from 1 to {spec.max_rows}" if spec.shape and spec.shape[0] < 0 else ""
        raise InvalidArgument(
            f"{field}.shape", f"must be {spec.shown_shape()}{rows}, got {list(given)}"
        )
    count = math.prod(given)  # Python ints: exact
    if spec.max_elements is not None and count > spec.max_elements:
        raise InvalidArgument(
            f"{field}.shape",
            f"holds {count} elements; at most {spec.max_elements} in one request",
        )
    return given


def _fits(shape: tuple[int, ...], spec: TensorSpec) -> bool:
    """Same rank; fixed sizes equal; the sample axis 1 to max_rows; no size negative."""
    if len(shape) != len(spec.shape):
        return False
    for axis, (size, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want >= 0 and size != want:
            return False
        if want < 0 and not (1 <= size <= spec.max_rows if axis == 0 else size >= 0):
            return False
    return True


def decode_bytes(field: str, data: bytes, count: int) -> list[bytes]:
    """The `count` elements of a raw BYTES tensor: each a 4-byte little-endian length, then
    that many bytes.

    Raises:
        InvalidArgument: a length runs past the data or over MAX_BYTES_ELEMENT, or bytes
            are left over.
    """
    if count * 4 > len(data):
        raise InvalidArgument(
            field, f"{count} BYTES elements need at least {count * 4} bytes, got {len(data)}"
        )
    elements, offset = [], 0
    for i in range(count):
        if len(data) - offset < 4:
            raise InvalidArgument(f"{field}[{i}]", "its 4-byte length runs past the data")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if length > MAX_BYTES_ELEMENT:
            raise InvalidArgument(
                f"{field}[{i}]", f"has {length} bytes; at most {MAX_BYTES_ELEMENT}"
            )
        if length > len(data) - offset:
            raise InvalidArgument(
                f"{field}[{i}]", f"says {length} bytes but {len(data) - offset} are left"
            )
        elements.append(bytes(data[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise InvalidArgument(
            field, f"{len(data) - offset} bytes left over after its {count} elements"
        )
    return elements


def encode_bytes(elements: Iterable[bytes]) -> bytes:
    """A raw BYTES tensor: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _contents_bytes(field: str, contents: oip.InferTensorContents, count: int) -> list[bytes]:
    if len(contents.bytes_contents) != count:
        raise InvalidArgument(
            f"{field}.contents",
            f"holds {len(contents.bytes_contents)} elements; the shape needs {count}",
        )
    for i, element in enumerate(contents.bytes_contents):
        if len(element) > MAX_BYTES_ELEMENT:
            raise InvalidArgument(
                f"{field}[{i}]", f"has {len(element)} bytes; at most {MAX_BYTES_ELEMENT}"
            )
    return list(contents.bytes_contents)


def _contents_raw(field: str, tensor: oip.ModelInferRequest.InferInputTensor, count: int) -> bytes:
    """Typed contents as little-endian bytes, once their count matches the shape."""
    where, dtype = _CONTENTS[tensor.datatype]
    values = getattr(tensor.contents, where)
    if len(values) != count:
        raise InvalidArgument(
            f"{field}.contents", f"holds {len(values)} elements; the shape needs {count}"
        )
    if tensor.datatype == "UINT8" and any(v > 255 for v in values):
        raise InvalidArgument(f"{field}.contents", "UINT8 values must be at most 255")
    return np.asarray(values, dtype=dtype).tobytes()


# -- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTensor:
    """One output ready to send: datatype, shape and raw little-endian bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of_tensor(cls, name: str, tensor: tensor_pb2.Tensor) -> OutputTensor:
        """A genserve Tensor as an output, its bytes unchanged."""
        return cls(name, DATATYPE_OF[tensor.dtype], tuple(tensor.shape), tensor.data)

    @classmethod
    def of_texts(cls, name: str, texts: Sequence[str]) -> OutputTensor:
        """Strings as a BYTES tensor of shape [len(texts)], UTF-8."""
        return cls(name, "BYTES", (len(texts),), encode_bytes(t.encode("utf-8") for t in texts))

    @classmethod
    def of_ints(cls, name: str, values: Sequence[int]) -> OutputTensor:
        """Integers as an INT32 tensor of shape [len(values)]."""
        return cls(name, "INT32", (len(values),), np.asarray(values, dtype="<i4").tobytes())


def put_outputs(response: oip.ModelInferResponse, outputs: Iterable[OutputTensor]) -> None:
    """Add the outputs to the response, their bytes in raw_output_contents, as tritonclient reads
    them."""
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(output.data)


def requested_outputs(
    request: oip.ModelInferRequest, specs: Mapping[str, TensorSpec], what: str
) -> frozenset[str] | None:
    """The names of the outputs the request asks for; None for all.

    Raises:
        InvalidArgument: too many, an unknown name, or an output parameter
            (classification, shared memory) genserve does not offer.
    """
    asked = request.outputs
    if not asked:
        return None
    if len(asked) > MAX_OUTPUTS:
        raise InvalidArgument("outputs", f"at most {MAX_OUTPUTS} outputs, got {len(asked)}")
    names = set()
    for i, output in enumerate(asked):
        if output.name not in specs:
            gives = ", ".join(specs)
            raise InvalidArgument(
                f"outputs[{i}].name",
                f"{shown(output.name)} is not an output of {what} (it gives: {gives})",
            )
        unsupported = [k for k in output.parameters if k != "binary_data"]
        if unsupported:
            raise InvalidArgument(
                f"outputs.{output.name}.parameters", f"{shown(unsupported[0])} is not supported"
            )
        names.add(output.name)
    return frozenset(names)
