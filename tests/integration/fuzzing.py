"""Fuzzing any gRPC process: discover its methods by reflection, send it hostile bytes.

`discover` asks a process's reflection service for every method of every
service it exposes, so services added later are fuzzed without a change here.
Three sources of request bytes:

- `random_bytes`: uniform noise and noise shaped like protobuf (tags, varints);
- `mutate`: bit flips, truncations, splices and repeats of valid requests;
- `message_strategy`: hypothesis-built messages of the method's request type,
  every field drawn from its protobuf type with extremes favoured, model
  names drawn from the served ones so calls get past the first check, and
  tensors whose dtype, shape and bytes agree often enough to reach a model.

`send` makes one call of any kind (unary, server-streaming, bidi) and returns
the status code the caller saw.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_EXTREME_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)
_EXTREME_FLOATS = (0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 1e308, float("nan"), float("inf"))
_INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_MAX_DEPTH = 3

TALLY: dict[str, Counter] = {}
"""Process name -> fuzz calls by status code, for the run's summary."""


@dataclass(frozen=True)
class Method:
    """One RPC a process exposes."""

    path: str
    """/package.Service/Method"""
    request: type
    """The request message class."""
    client_streaming: bool
    server_streaming: bool


def discover(channel: grpc.Channel) -> list[Method]:
    """Every method of every service the process lists through reflection."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    methods = []
    for service_name in database.get_services():
        service = pool.FindServiceByName(service_name)
        for m in service.methods:
            methods.append(
                Method(
                    path=f"/{service.full_name}/{m.name}",
                    request=message_factory.GetMessageClass(m.input_type),
                    client_streaming=m.client_streaming,
                    server_streaming=m.server_streaming,
                )
            )
    return methods


def send(
    channel: grpc.Channel,
    method: Method,
    payload: bytes,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> str:
    """Send raw request bytes (with `metadata`); the status code name the caller sees.

    A stream is read up to its first message and then cancelled by the
    caller; that is not a server status, so it counts as OK.
    """
    ident = _identity
    try:
        if method.client_streaming:
            call = channel.stream_stream(method.path, ident, ident)(
                iter([payload]), timeout=timeout_s, metadata=metadata
            )
            return _drain(call)
        if method.server_streaming:
            return _drain(
                channel.unary_stream(method.path, ident, ident)(
                    payload, timeout=timeout_s, metadata=metadata
                )
            )
        channel.unary_unary(method.path, ident, ident)(
            payload, timeout=timeout_s, metadata=metadata
        )
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def _identity(data: bytes) -> bytes:
    return data


def _drain(call) -> str:
    for _ in call:
        call.cancel()
        break
    return "OK"


def fixed_examples(calls: int) -> settings:
    """Hypothesis settings for `calls` reproducible examples against live processes: the
    same examples every run, no deadline per example, no example database."""
    return settings(
        max_examples=calls,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def random_bytes(rng: random.Random) -> bytes:
    """Noise: uniform bytes, or a run of protobuf-looking tag/length/value triples."""
    if rng.random() < 0.5:
        return rng.randbytes(rng.choice((0, 1, 7, 64, 512, 4096)))
    out = bytearray()
    for _ in range(rng.randint(1, 12)):
        field, wire = rng.randint(1, 20), rng.choice((0, 1, 2, 5, 3, 7))
        out += _varint(field << 3 | wire)
        if wire == 0:
            out += _varint(rng.choice(_EXTREME_INTS) % 2**64)
        elif wire == 2:
            body = rng.randbytes(rng.randint(0, 64))
            length = len(body) if rng.random() < 0.7 else rng.choice((2**31, 2**63, 10**6))
            out += _varint(length) + body
        else:
            out += rng.randbytes(8 if wire == 1 else 4)
    return bytes(out)


def mutate(rng: random.Random, valid: bytes) -> bytes:
    """A valid request, damaged: flipped bits, cut, spliced or repeated."""
    data = bytearray(valid)
    kind = rng.randrange(4)
    if kind == 0 and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1 and data:
        del data[rng.randrange(len(data)) :]
    elif kind == 2:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 32))
    else:
        data = data * rng.randint(2, 5)
    return bytes(data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def message_strategy(message_class: type, names: list[str]) -> st.SearchStrategy:
    """Messages of `message_class`, every field drawn from its type."""
    return _message(message_class.DESCRIPTOR, names, 0).map(
        lambda fields: _build(message_class, fields)
    )


def _build(message_class: type, fields: dict):
    message = message_class()
    for name, value in fields.items():
        _assign(message, message_class.DESCRIPTOR.fields_by_name[name], value)
    return message


def _assign(message, field: FieldDescriptor, value) -> None:
    if field.is_repeated:
        target = getattr(message, field.name)
        for item in value:
            target.add().CopyFrom(item) if _is_message(field) else target.append(item)
    elif _is_message(field):
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _is_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE


def _message(descriptor: Descriptor, names: list[str], depth: int) -> st.SearchStrategy:
    if descriptor.full_name == "genserve.v1.Tensor":
        return _tensor_fields()
    optional = {
        f.name: _field(f, names, depth)
        for f in descriptor.fields
        if not (_is_message(f) and f.message_type.GetOptions().map_entry)
        and (depth < _MAX_DEPTH or not _is_message(f))
    }
    return st.fixed_dictionaries({}, optional=optional)


def _field(field: FieldDescriptor, names: list[str], depth: int) -> st.SearchStrategy:
    if _is_message(field):
        inner = field.message_type
        one = _message(inner, names, depth + 1).map(
            lambda fields, inner=inner: _build(message_factory.GetMessageClass(inner), fields)
        )
    else:
        one = _scalar(field, names)
    if field.is_repeated:
        return st.lists(one, max_size=6) | st.lists(one, min_size=200, max_size=300)
    return one


def _scalar(field: FieldDescriptor, names: list[str]) -> st.SearchStrategy:
    kind = field.type
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        extremes = [v for v in _EXTREME_INTS if low <= v <= high]
        return (
            st.sampled_from(extremes)
            | st.integers(low, high)
            | st.integers(-3, 300).filter(lambda v: low <= v <= high)
        )
    if kind == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.sampled_from(values) | st.integers(-(2**31), 2**31 - 1)
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.sampled_from(_EXTREME_FLOATS) | st.floats(width=width)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        text = st.text(max_size=40) | st.text(min_size=1000, max_size=5000)
        return st.sampled_from(names) | text if field.name in ("model_name", "service") else text
    return _bytes()


def _bytes() -> st.SearchStrategy:
    """Noise, or a PNG header of any size and colour type followed by noise."""
    header = st.builds(
        lambda w, h, depth, color, tail: (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
            + struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
            + b"\x00\x00\x00\x00"
            + tail
        ),
        st.sampled_from((0, 1, 28, 2**31 - 1, 2**32 - 1)),
        st.sampled_from((0, 1, 28, 2**31 - 1, 2**32 - 1)),
        st.sampled_from((1, 8, 16)),
        st.sampled_from((0, 2, 3, 4, 6)),
        st.binary(max_size=200),
    )
    return st.binary(max_size=300) | header


def _tensor_fields() -> st.SearchStrategy:
    """Tensor fields that agree (dtype, shape, bytes) half the time, with extreme values."""

    def consistent(dtype: int, shape: list[int], fill: float) -> dict:
        itemsize = {1: 4, 2: 2, 3: 8, 4: 4, 5: 1, 6: 1}[dtype]
        count = 1
        for d in shape:
            count *= d
        pattern = struct.pack("<f", fill) if dtype == 1 else bytes(itemsize)
        data = (pattern * (count * itemsize // len(pattern) + 1))[: count * itemsize]
        return {"dtype": dtype, "shape": shape, "data": data}

    agreeing = st.builds(
        consistent,
        st.integers(1, 6),
        st.lists(st.sampled_from((0, 1, 2, 16, 28)), min_size=1, max_size=4),
        st.sampled_from((0.0, 0.5, 1.0, -1.0, 1e30, -3.4e38, float("nan"), float("inf"))),
    )
    anything = st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.integers(-5, 10),
            "shape": st.lists(st.sampled_from(_EXTREME_INTS[:8]), max_size=40),
            "data": st.binary(max_size=64),
        },
    )
    return agreeing | anything


def corpus(methods: list[Method], names: list[str]) -> Iterator[tuple[Method, bytes]]:
    """Valid requests to mutate: each method's empty request, and one naming each model."""
    for method in methods:
        yield method, b""
        fields = method.request.DESCRIPTOR.fields_by_name
        for name in names:
            if "model_name" in fields:
                message = method.request(model_name=name)
                for numeric in ("num_samples",):
                    if numeric in fields:
                        setattr(message, numeric, 2)
                yield method, message.SerializeToString()
