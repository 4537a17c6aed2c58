"""Open Inference Protocol tensors and parameters: BYTES encoding, bounds, and every refusal."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from genserve.gateway import oip_params as p
from genserve.gateway import oip_tensors as t
from genserve.gateway.oip_params import ParameterSpec
from genserve.gateway.oip_tensors import TensorSpec
from genserve.inference import grpc_service_pb2 as oip
from genserve.runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit

LATENTS = TensorSpec("latents", ("FP32",), (-1, 4), max_rows=8)
TEXTS = TensorSpec("texts", ("BYTES",), (-1,), max_rows=4)
IMAGES = TensorSpec("images", ("FP32", "UINT8"), (-1, 1, 2, 2), max_rows=100, max_elements=12)
SPECS = {s.name: s for s in (LATENTS, TEXTS, IMAGES)}


def refused(field: str):
    """pytest.raises for an InvalidArgument naming `field`."""
    return pytest.raises(InvalidArgument, match="^" + re.escape(field) + "[:.[]")


# -- BYTES -------------------------------------------------------------------------------------


def test_bytes_round_trip_with_tritonclients_own_encoding():
    elements = [b"", b"ROMEO:\n", "Kühe".encode(), bytes(range(256))]
    ours = t.encode_bytes(elements)
    theirs = serialize_byte_tensor(np.array(elements, dtype=np.object_)).item()
    assert ours == theirs
    assert t.decode_bytes("x", theirs, len(elements)) == elements
    assert list(deserialize_bytes_tensor(ours)) == elements


@pytest.mark.parametrize(
    ("data", "count", "field"),
    [
        (struct.pack("<I", 5) + b"abc", 1, "x[0]"),  # length past the end
        (struct.pack("<I", t.MAX_BYTES_ELEMENT + 1), 1, "x[0]"),  # over the element bound
        (struct.pack("<I", 1) + b"ab", 1, "x"),  # bytes left over
        (b"\x01\x00", 1, "x"),  # not even a length
        (struct.pack("<I", 0), 1 << 40, "x"),  # a count the data cannot hold, refused unread
        (struct.pack("<I", 1) + b"a" + b"\x00" * 3, 2, "x[1]"),  # second length cut short
    ],
)
def test_bad_bytes_are_refused_naming_the_element(data, count, field):
    with refused(field):
        t.decode_bytes("x", data, count)


# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [[2, 5], [0, 4], [9, 4], [-1, 4], [2], [2, 4, 1], [1] * 9, [1 << 62, 4], [2, -4]],
)
def test_a_shape_that_does_not_fit_is_refused(shape):
    with refused("latents.shape"):
        t.check_shape("latents", shape, LATENTS)


def test_a_fitting_shape_passes_and_the_element_bound_holds():
    assert t.check_shape("latents", [8, 4], LATENTS) == (8, 4)
    assert t.check_shape("images", [3, 1, 2, 2], IMAGES) == (3, 1, 2, 2)
    with refused("images.shape"):
        t.check_shape("images", [4, 1, 2, 2], IMAGES)  # 16 elements, at most 12


# -- inputs ------------------------------------------------------------------------------------


def request(*inputs: tuple[str, str, list[int], bytes | None]) -> oip.ModelInferRequest:
    """A request of (name, datatype, shape, raw bytes or None) inputs."""
    message = oip.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in inputs:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw is not None:
            message.raw_input_contents.append(raw)
    return message


def test_raw_inputs_are_read_unchanged():
    latents = np.arange(8, dtype=np.float32).reshape(2, 4)
    texts = t.encode_bytes([b"a", b"bc"])
    found = t.read_inputs(
        request(("latents", "FP32", [2, 4], latents.tobytes()), ("texts", "BYTES", [2], texts)),
        SPECS,
        "generate of model m",
    )
    assert found["latents"].genserve().data == latents.tobytes()
    assert list(found["latents"].genserve().shape) == [2, 4]
    assert found["texts"].texts() == ["a", "bc"]


def test_typed_contents_are_read_too():
    message = request(("latents", "FP32", [1, 4], None), ("texts", "BYTES", [1], None))
    message.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    message.inputs[1].contents.bytes_contents.append(b"hi")
    found = t.read_inputs(message, SPECS, "m")
    assert np.frombuffer(found["latents"].data, "<f4").tolist() == [1.0, 2.0, 3.0, 4.0]
    assert found["texts"].elements == (b"hi",)


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ([("latents", "INT32", [1, 4], bytes(16))], "inputs.latents.datatype"),
        ([("latents", "FP32", [1, 4], bytes(15))], "inputs.latents"),
        ([("latents", "FP32", [2, 4], bytes(16))], "inputs.latents"),
        ([("bogus", "FP32", [1], bytes(4))], "inputs[0].name"),
        ([("latents", "FP32", [1, 4], bytes(16))] * 2, "inputs.latents"),
        ([("texts", "BYTES", [1], struct.pack("<I", 2) + b"\xff\xfe")], "inputs.texts[0]"),
        ([("images", "UINT8", [4, 1, 2, 2], bytes(16))], "inputs.images.shape"),
        ([("latents", "FP32", [1, 4], bytes(16))] * 9, "inputs"),
    ],
)
def test_bad_inputs_are_refused_naming_the_tensor(inputs, field):
    with refused(field):
        found = t.read_inputs(request(*inputs), SPECS, "m")
        found["texts"].texts()


def test_raw_contents_must_match_the_inputs_one_to_one():
    message = request(("latents", "FP32", [1, 4], bytes(16)), ("texts", "BYTES", [1], None))
    with refused("raw_input_contents"):
        t.read_inputs(message, SPECS, "m")


def test_typed_contents_must_match_the_shape():
    message = request(("latents", "FP32", [2, 4], None))
    message.inputs[0].contents.fp32_contents.extend([1.0] * 7)
    with refused("inputs.latents.contents"):
        t.read_inputs(message, SPECS, "m")


def test_shared_memory_and_other_input_parameters_are_refused():
    message = request(("latents", "FP32", [1, 4], bytes(16)))
    message.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with refused("inputs.latents.parameters"):
        t.read_inputs(message, SPECS, "m")


# -- parameters --------------------------------------------------------------------------------

PARAMETERS = {
    "seed": ParameterSpec("int", 0, (1 << 64) - 1),
    "steps": ParameterSpec("int", 0, (1 << 31) - 1),
    "temperature": ParameterSpec("float"),
    "stop_sequences": ParameterSpec("str"),
    "flag": ParameterSpec("bool"),
}


def parameters(**values: oip.InferParameter) -> dict[str, oip.InferParameter]:
    message = oip.ModelInferRequest()
    for key, value in values.items():
        message.parameters[key].CopyFrom(value)
    return message.parameters


def test_parameters_become_plain_values():
    given = parameters(
        seed=oip.InferParameter(uint64_param=(1 << 64) - 1),
        steps=oip.InferParameter(int64_param=20),
        temperature=oip.InferParameter(int64_param=1),  # tritonclient sends 1 as an integer
        stop_sequences=oip.InferParameter(string_param='["\\n"]'),
        flag=oip.InferParameter(bool_param=True),
    )
    assert p.read_parameters(given, PARAMETERS, "generate") == {
        "seed": (1 << 64) - 1,
        "steps": 20,
        "temperature": 1.0,
        "stop_sequences": '["\\n"]',
        "flag": True,
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seed", oip.InferParameter(int64_param=-1)),
        ("steps", oip.InferParameter(int64_param=1 << 31)),
        ("steps", oip.InferParameter(double_param=2.5)),
        ("temperature", oip.InferParameter(double_param=float("nan"))),
        ("temperature", oip.InferParameter(double_param=1e39)),  # past float32
        ("temperature", oip.InferParameter(string_param="hot")),
        ("stop_sequences", oip.InferParameter(string_param="x" * 5000)),
        ("flag", oip.InferParameter()),
        ("sequence_id", oip.InferParameter(int64_param=1)),
    ],
)
def test_bad_parameters_are_refused_naming_them(key, value):
    with refused(f"parameters.{key}"):
        p.read_parameters(parameters(**{key: value}), PARAMETERS, "generate")


def test_too_many_parameters_are_refused_before_any_is_read():
    many = parameters(**{f"p{i}": oip.InferParameter(int64_param=i) for i in range(33)})
    with refused("parameters"):
        p.read_parameters(many, PARAMETERS, "generate")


def test_a_seed_past_int64_goes_back_as_uint64():
    response = oip.ModelInferResponse()
    p.put_parameter(response.parameters, "seed", 1 << 63)
    p.put_parameter(response.parameters, "small", 5)
    assert response.parameters["seed"].uint64_param == 1 << 63
    assert response.parameters["small"].int64_param == 5


# -- outputs -----------------------------------------------------------------------------------


def test_requested_outputs_are_checked():
    message = oip.ModelInferRequest()
    assert t.requested_outputs(message, SPECS, "m") is None
    message.outputs.add(name="latents")
    assert t.requested_outputs(message, SPECS, "m") == {"latents"}
    message.outputs.add(name="nope")
    with refused("outputs[1].name"):
        t.requested_outputs(message, SPECS, "m")
    classified = oip.ModelInferRequest()
    classified.outputs.add(name="latents").parameters["classification"].int64_param = 3
    with refused("outputs.latents.parameters"):
        t.requested_outputs(classified, SPECS, "m")


def test_outputs_go_in_raw_output_contents():
    response = oip.ModelInferResponse()
    t.put_outputs(
        response, [t.OutputTensor.of_texts("text", ["a", "bé"]), t.OutputTensor.of_ints("n", [3])]
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("text", "BYTES", [2]),
        ("n", "INT32", [1]),
    ]
    assert list(deserialize_bytes_tensor(response.raw_output_contents[0])) == [b"a", "bé".encode()]
    assert np.frombuffer(response.raw_output_contents[1], "<i4").tolist() == [3]
