"""Open Inference Protocol request parameters: checked plain values in, typed values out.

Sampler settings, the seed, the sample count and the call travel as request
parameters (`InferParameter`). Each call takes a known set of them; any other
is INVALID_ARGUMENT naming it, and so is one of the wrong type or outside its
range. Integers fit the genserve field they go to (int32, or uint64 for a
seed) and floats are finite 32-bit values, so nothing a client sends can
fail when the ModelService request is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from genserve.inference import grpc_service_pb2 as oip
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.limits import cut
from genserve.runtime.priority import Priority

MAX_PARAMETERS = 32
"""Request parameters one request may carry."""
MAX_STRING_PARAMETER_CHARS = 2048
"""Longest string parameter (e.g. stop_sequences as JSON)."""
_MAX_FLOAT32 = float(np.finfo(np.float32).max)
FINAL = "triton_final_response"
"""The response parameter that marks the last response of a streamed request."""
FINAL_EMPTY = "triton_enable_empty_final_response"
"""The request parameter that asks for the final mark on an empty response of its own."""


@dataclass(frozen=True)
class ParameterSpec:
    """One request parameter: its kind and, for integers, its range."""

    kind: str
    """"int", "float", "str" or "bool"."""
    low: int = 0
    high: int = (1 << 31) - 1


INT32 = ParameterSpec("int", 0, (1 << 31) - 1)
SAMPLER = {
    "steps": INT32, "top_k": INT32, "max_new_tokens": INT32,
    "temperature": ParameterSpec("float"), "top_p": ParameterSpec("float"),
    "guidance_scale": ParameterSpec("float"), "truncation": ParameterSpec("float"),
    "eta": ParameterSpec("float"), "stop_sequences": ParameterSpec("str"),
}  # fmt: skip
"""Sampler settings: genserve's SamplerParams fields; the backend checks their ranges."""
EVERY_CALL = {
    "call": ParameterSpec("str"),
    "priority": ParameterSpec("int", 0, (1 << 64) - 1),  # Triton's: see triton_priority
}
"""What every call takes."""
SAMPLING = {"seed": ParameterSpec("int", 0, (1 << 64) - 1), **SAMPLER}
"""What the sampling calls (generate, complete) take."""
STREAMING = {"preview_every_steps": INT32, FINAL_EMPTY: ParameterSpec("bool")}
"""What ModelStreamInfer takes besides."""


def triton_priority(level: int) -> Priority | None:
    """Triton's request priority (1 the highest; 0 the default) as genserve's: 1 high,
    2 normal, 3 and above low; None for 0."""
    if level == 0:
        return None
    return {1: Priority.HIGH, 2: Priority.NORMAL}.get(level, Priority.LOW)


def read_parameters(
    parameters: Mapping[str, oip.InferParameter], specs: Mapping[str, ParameterSpec], call: str
) -> dict[str, int | float | str | bool]:
    """The request's parameters as plain values, each checked against its spec.

    Integers accept int64_param or uint64_param; floats also accept an integer;
    a float must be finite.

    Raises:
        InvalidArgument: naming `parameters.<key>`.
    """
    if len(parameters) > MAX_PARAMETERS:
        raise InvalidArgument(
            "parameters", f"at most {MAX_PARAMETERS} parameters, got {len(parameters)}"
        )
    values: dict[str, int | float | str | bool] = {}
    for key, parameter in parameters.items():
        spec = specs.get(key)
        if spec is None:
            takes = ", ".join(sorted(specs))
            raise InvalidArgument(
                f"parameters.{cut(key, 32)}", f"is not a parameter of {call} (it takes: {takes})"
            )
        values[key] = _parameter_value(f"parameters.{key}", parameter, spec)
    return values


def _parameter_value(field: str, parameter: oip.InferParameter, spec: ParameterSpec):
    which = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, which) if which else None
    if spec.kind == "int" and which in ("int64_param", "uint64_param"):
        if not spec.low <= value <= spec.high:
            raise InvalidArgument(field, f"must be between {spec.low} and {spec.high}, got {value}")
        return int(value)
    if spec.kind == "float" and which in ("double_param", "int64_param", "uint64_param"):
        if not (math.isfinite(value) and abs(value) <= _MAX_FLOAT32):
            raise InvalidArgument(field, f"must be a finite 32-bit float, got {value:g}")
        return float(value)
    if spec.kind == "str" and which == "string_param":
        if len(value) > MAX_STRING_PARAMETER_CHARS:
            raise InvalidArgument(
                field, f"has {len(value)} characters; at most {MAX_STRING_PARAMETER_CHARS}"
            )
        return value
    if spec.kind == "bool" and which == "bool_param":
        return bool(value)
    wanted = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a bool"}
    raise InvalidArgument(field, f"must be {wanted[spec.kind]}, got {which or 'no value'}")


def put_parameter(parameters, key: str, value: bool | int | float | str) -> None:
    """Set one response parameter from a plain value (ints past int64 as uint64_param)."""
    target = parameters[key]
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value >= 1 << 63:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value
