"""A graph bound to fixed buffers reads their contents at each run and writes in place."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from genserve.runtime.session import Graph, SessionOptions

pytestmark = pytest.mark.unit


@pytest.fixture
def graph(tmp_path) -> Graph:
    """out = a * 2 + b, of float32 (B, 3)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["a", "two"], ["twice"]),
        helper.make_node("Add", ["twice", "b"], ["out"]),
    ]
    tensor = helper.make_tensor_value_info
    inputs = [tensor(name, TensorProto.FLOAT, ["B", 3]) for name in ("a", "b")]
    output = tensor("out", TensorProto.FLOAT, ["B", 3])
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [output], [two]),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.save(model, tmp_path / "g.onnx")
    return Graph(tmp_path / "g.onnx", SessionOptions(provider="cpu", intra_op_threads=1))


def test_a_bound_run_reads_the_inputs_as_they_are_then_and_writes_the_output_in_place(graph):
    a, b, out = (np.zeros((2, 3), np.float32) for _ in range(3))
    bound = graph.bind({"a": a, "b": b}, {"out": out})
    for step in range(3):  # fill in place, as a sampler does before every step
        a[:] = step
        b[1] = 10 * step
        bound.run()
        np.testing.assert_array_equal(out, graph.run({"a": a, "b": b})["out"])
        assert out[1, 0] == 2 * step + 10 * step


def test_bind_names_what_is_missing_and_refuses_a_strided_buffer(graph):
    a, out = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"inputs \['a', 'b'\]"):
        graph.bind({"a": a}, {"out": out})
    strided = np.zeros((2, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="b: a bound buffer must be C-contiguous"):
        graph.bind({"a": a, "b": strided}, {"out": out})
