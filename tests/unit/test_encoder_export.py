"""The encoder exporter: float16 storage, the parity sentences, and the committed card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("torch")
from genserve.exporters import encoder
from genserve.exporters.data import DatasetMissing

pytestmark = pytest.mark.unit

CONFIG = Path(__file__).resolve().parents[2] / "models" / "encoder-minilm" / "1" / "config.json"


def _matmul_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, weight.shape[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_big_weights_are_stored_as_float16_and_cast_back():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 32)).astype(np.float32)  # 2,048 values: halved
    bias = rng.standard_normal(32).astype(np.float32)  # 32 values: kept
    model = _matmul_model(weight, bias)

    assert encoder.store_half(model) == 1
    onnx.checker.check_model(model, full_check=True)
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    assert kinds == {"w__fp16": onnx.TensorProto.FLOAT16, "b": onnx.TensorProto.FLOAT}
    x = rng.standard_normal((3, 64)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    want = x @ weight.astype(np.float16).astype(np.float32) + bias
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_parity_runs_on_200_or_more_distinct_sentences():
    try:
        sentences = encoder.parity_sentences()
    except DatasetMissing as missing:
        pytest.skip(str(missing))
    assert len(set(sentences)) == len(sentences) >= 200
    assert set(encoder.MODERN_SENTENCES) <= set(sentences)


def test_the_committed_card_meets_the_parity_goal():
    card = json.loads(CONFIG.read_text())["card"]
    assert card["parity"]["sentences"] >= 200
    assert card["parity"]["min_cosine"] >= encoder.MIN_COSINE
    assert card["command"] == (
        "python -m genserve.exporters.encoder --out models --name encoder-minilm --version 1"
    )
