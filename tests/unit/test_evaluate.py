"""Sample-quality evaluation: the Fréchet distance, class accuracy, goals, the classifier, a run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from genserve.exporters import data, evaluate, quality_report
from genserve.exporters.evaluate import Gaussian, Quality, frechet_distance

pytestmark = pytest.mark.unit

CLASSIFIER_DIR = Path(__file__).resolve().parents[2] / "bench" / "quality"
needs_fashion = pytest.mark.skipif(
    not (data.fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


def _features(n: int = 4000, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim))
    return rng.standard_normal((n, dim)) @ mixing  # correlated, full-rank covariance


def test_fd_of_a_set_with_itself_is_zero():
    stats = Gaussian.fit(_features())
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_a_mean_shift_is_the_squared_shift():
    x = _features()
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0, 0.0, 1.0])
    got = frechet_distance(Gaussian.fit(x), Gaussian.fit(x + shift))
    assert got == pytest.approx(shift @ shift, rel=1e-9)  # equal covariances: only |Δμ|²


def test_fd_is_symmetric_and_matches_the_closed_form_for_diagonal_covariances():
    a, b = Gaussian.fit(_features(seed=1)), Gaussian.fit(_features(seed=2) + 0.3)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    sigma_a, sigma_b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.5])
    diag_a = Gaussian(np.zeros(3), np.diag(sigma_a**2))
    diag_b = Gaussian(np.ones(3), np.diag(sigma_b**2))
    expected = 3.0 + np.sum((sigma_a - sigma_b) ** 2)  # |Δμ|² + sum of (sigma_a - sigma_b)²
    assert frechet_distance(diag_a, diag_b) == pytest.approx(expected, rel=1e-9)


def test_fd_agrees_with_scipys_matrix_square_root():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = Gaussian.fit(_features(seed=3)), Gaussian.fit(_features(seed=4) * 1.5)
    root = linalg.sqrtm(a.covariance @ b.covariance).real
    shift = a.mean - b.mean
    trace = np.trace(a.covariance + b.covariance - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(shift @ shift + trace, rel=1e-6)


def test_class_accuracy_is_the_share_of_argmax_hits():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    assert evaluate.class_accuracy(logits, np.array([0, 1, 2, 2])) == 0.75
    with pytest.raises(ValueError, match="as many labels"):
        evaluate.class_accuracy(logits, np.array([0, 1]))


def test_goals_say_what_is_met_what_is_missed_and_what_was_not_measured():
    rows = [
        Quality("vae-fashion", "vae", fd=30.0),
        Quality("gan-fashion", "gan", fd=12.0),
        Quality("cgan-fashion", "gan", fd=8.0, class_accuracy=0.80),
        Quality("ae-fashion", "ae", fd=1.0, fd_of_reconstructions=True),
    ]
    found = quality_report.goals(rows, 2.0, _evaluations())
    goals = dict((text.split(":")[0], (ok, text)) for ok, text in found)
    # The unconditional GAN stands for the family even though the conditional one scores better.
    assert goals["GAN beats VAE FD"] == (
        True,
        "GAN beats VAE FD: `gan-fashion` 12.00 < `vae-fashion` 30.00",
    )
    ok, text = goals["VAE-GAN beats VAE FD"]
    assert not ok and "not measured" in text
    ok, text = goals["best model within 5x floor"]  # the autoencoder is not ranked
    assert ok and text.endswith("`cgan-fashion` at 4.0x (8.00 vs 2.00)")
    assert goals["conditional accuracy ≥ 85%"] == (
        False,
        "conditional accuracy ≥ 85%: `cgan-fashion` 80.0%",
    )
    ok, text = goals["Diffusion has the lowest FD"]
    assert not ok and "no `diffusion` model yet" in text


def test_a_familys_own_goals_come_from_its_exporter():
    rows = [
        Quality("vae-fashion", "vae", fd=30.0),
        Quality("diffusion-fashion", "diffusion", fd=6.0, class_accuracy=0.93),
        Quality("cgan-fashion", "gan", fd=8.0, class_accuracy=0.80),
    ]
    found = dict(
        (text.split(":")[0], (ok, text))
        for ok, text in quality_report.goals(rows, 2.0, _evaluations())
    )
    assert found["Diffusion has the lowest FD"] == (
        True,
        "Diffusion has the lowest FD: `diffusion-fashion` 6.00 < `cgan-fashion` 8.00",
    )
    assert found["Diffusion class accuracy ≥ 90% with guidance"][0]


def _evaluations() -> dict[str, quality_report.Evaluation]:
    """Each family's evaluation, as its exporter declares it."""
    pytest.importorskip("torch")
    from genserve.exporters import pipeline

    evaluations = {family: e.evaluation for family, e in pipeline.exporters().items()}
    assert {"ae", "aae", "diffusion", "gan", "vae", "vaegan"} <= set(evaluations)
    return evaluations


def test_the_committed_classifier_has_logits_and_features_and_the_recorded_sha256():
    card = json.loads((CLASSIFIER_DIR / evaluate.CLASSIFIER_CARD).read_text())
    path = CLASSIFIER_DIR / evaluate.CLASSIFIER_ONNX
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["files"][path.name]["sha256"]
    assert card["test_accuracy"] >= 0.90
    graph = onnx.load(path).graph
    assert [o.name for o in graph.output] == ["logits", "features"]
    logits, features = evaluate.EvalClassifier.load(CLASSIFIER_DIR).run(
        np.zeros((3, 1, 28, 28), np.float32), "test"
    )
    assert logits.shape == (3, 10) and features.shape == (3, card["feature_dim"])


def _decoder(path, latent_dim: int = 4, *, conditional: bool = False) -> None:
    """A stand-in decoder or generator: image = sigmoid(latent @ W [+ E[label]])."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((latent_dim, 784)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["latent", "W"], ["h"])]
    inputs = [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["B", latent_dim])]
    initializers = [weight, shape]
    if conditional:
        table = rng.standard_normal((10, 784)).astype(np.float32)
        initializers.append(numpy_helper.from_array(table, "E"))
        inputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["B"]))
        nodes += [
            helper.make_node("Gather", ["E", "label"], ["e"]),
            helper.make_node("Add", ["h", "e"], ["h2"]),
        ]
    nodes += [
        helper.make_node("Sigmoid", ["h2" if conditional else "h"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["image"]),
    ]
    output = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, 28, 28])
    graph = helper.make_graph(nodes, "decoder", inputs, [output], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _encoder(path, outputs: list[str], latent_dim: int = 4) -> None:
    """A stand-in encoder: every output = flatten(image) @ W."""
    weight = np.random.default_rng(1).standard_normal((784, latent_dim)).astype(np.float32) / 28
    shape = numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["image", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["code"]),
        *(helper.make_node("Identity", ["code"], [name]) for name in outputs),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, 28, 28])
    dims = ["B", latent_dim]
    codes = [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims) for o in outputs]
    initializers = [numpy_helper.from_array(weight, "W"), shape]
    graph = helper.make_graph(nodes, "encoder", [image], codes, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _write_model(root, name: str, family: str, graph: str, *, conditional: bool = False):
    """A model of stand-in graphs; a "vae" also gets an encoder (its family encodes)."""
    folder = root / name / "1"
    folder.mkdir(parents=True)
    _decoder(folder / f"{graph}.onnx", conditional=conditional)
    inputs = [{"name": "latent", "dtype": "float32", "shape": [-1, 4]}]
    if conditional:
        inputs.append({"name": "label", "dtype": "int64", "shape": [-1]})
    graphs = {graph: {"file": f"{graph}.onnx", "inputs": inputs, "outputs": []}}
    if family == "vae":
        _encoder(folder / "encoder.onnx", ["mean", "log_variance"])
        graphs["encoder"] = {"file": "encoder.onnx"}
    config = {
        "name": name,
        "family": family,
        "graphs": graphs,
        "params": {"latent_dim": 4, "conditional": conditional},
        "labels": list(data.FASHION_CLASSES) if conditional else [],
        "card": {"files": {f"{graph}.onnx": {"sha256": "stale", "bytes": 0}}},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@needs_fashion
def test_a_run_writes_the_table_the_grids_and_the_cards(tmp_path):
    models = tmp_path / "models"
    vae = _write_model(models, "vae-fashion", "vae", "decoder")
    cgan = _write_model(models, "cgan-fashion", "gan", "generator", conditional=True)
    (models / "empty").mkdir()
    out = tmp_path / "docs" / "quality.md"
    argv = ["--models", str(models), "--out", str(out), "--samples", "200", "--update-cards"]
    evaluate.main([*argv, "--classifier", str(CLASSIFIER_DIR)])

    report = out.read_text()
    assert "| `vae-fashion` v1 | vae |" in report and "| `cgan-fashion` v1 | gan |" in report
    assert "*floor: real training images*" in report and "**baseline**" in report
    assert str(tmp_path) not in report  # no paths from outside the repository
    for name, rows in (("vae-fashion", 8), ("cgan-fashion", 10)):
        png = (tmp_path / "docs" / "images" / f"{name}-samples.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert int.from_bytes(png[20:24], "big") == 2 * (rows * 30 + 2)  # height, scale 2
    for folder in (vae, cgan):
        card = json.loads((folder / "config.json").read_text())["card"]
        quality = card["metrics"]["quality"]
        assert quality["fd"] > 0 and quality["fd_floor"] > 0 and quality["samples"] == 200
        for file_name, record in card["files"].items():
            body = (folder / file_name).read_bytes()
            assert record == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
    cgan_quality = json.loads((cgan / "config.json").read_text())["card"]["metrics"]["quality"]
    assert 0.0 <= cgan_quality["class_accuracy"] <= 1.0


def test_only_models_of_images_are_scored():
    root = Path(__file__).resolve().parents[2] / "models"
    found = evaluate.find_models(root)
    scored = {m.name for m in evaluate.image_models(found)}
    assert "vae-fashion" in scored and "diffusion-fashion" in scored
    skipped = {m.name for m in found} - scored
    assert "encoder-minilm" in skipped  # Encode only: no image to score
    for model in found:
        if "vocabulary" in model.config.params:  # text models have their own section
            assert model.name in skipped
