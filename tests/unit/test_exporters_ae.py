"""Autoencoder and adversarial autoencoder exporters: graphs, parity, the repository contract."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genserve.exporters import aae, ae, onnx_export, training  # noqa: E402
from genserve.runtime.schema import BatchPolicy  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TINY_AE = ae.AEConfig(latent_dim=16, channels=(4, 8), hidden_dim=16)
TINY_AAE = aae.AAEConfig(latent_dim=8, channels=(4, 8), hidden_dim=16, discriminator_hidden_dim=8)
QUICK = {"epochs": 1, "batch_size": 32, "max_steps": 3}
CONFIG_KEYS = [
    "name",
    "family",
    "graphs",
    "batching",
    "max_num_samples",
    "params",
    "labels",
    "card",
]


def _signatures(latent_dim: int) -> dict:
    image = {"name": "image", "dtype": "float32", "shape": [-1, 1, 28, 28]}
    latent = {"name": "latent", "dtype": "float32", "shape": [-1, latent_dim]}
    threads = {"intra_op_threads": 1}
    return {
        "encoder": {"file": "encoder.onnx", "inputs": [image], "outputs": [latent], **threads},
        "decoder": {"file": "decoder.onnx", "inputs": [latent], "outputs": [image], **threads},
    }


def _check_version(folder, *, family: str, latent_dim: int) -> dict:
    """Assert what every ae/aae version folder promises; return its config."""
    config = json.loads((folder / "config.json").read_text())
    assert list(config) == CONFIG_KEYS
    assert config["family"] == family and config["labels"] == []
    assert config["graphs"] == _signatures(latent_dim)
    assert config["params"] == {"latent_dim": latent_dim, "image_shape": [1, 28, 28]}
    assert BatchPolicy(**config["batching"]) == BatchPolicy()  # every field, the defaults
    card = config["card"]
    assert card["parity"]["batch_sizes"] == [1, 7, 64]
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert card["steps"] == 3 and card["seed"] == 0
    assert card["metrics"]["test_images_evaluated"] == 100
    for name, record in card["files"].items():
        body = (folder / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
        assert b"stack_trace" not in body  # the exporter's traces name absolute source paths
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "decoder.onnx",
        "encoder.onnx",
    ]

    encoder = onnx_export.cpu_session(folder / "encoder.onnx")
    decoder = onnx_export.cpu_session(folder / "decoder.onnx")
    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    (latent,) = encoder.run(None, {"image": images})
    (reconstruction,) = decoder.run(None, {"latent": latent})
    assert latent.shape == (5, latent_dim)
    assert reconstruction.shape == (5, 1, 28, 28)
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0
    return config


def test_ae_train_and_export_writes_the_contract(tmp_path):
    folder = ae.train_and_export(
        out=tmp_path,
        name="ae-digits",
        data="mnist5k",
        model_config=TINY_AE,
        train_config=training.TrainConfig(**QUICK),
        eval_limit=100,
    )

    assert folder == tmp_path / "ae-digits" / "1"
    config = _check_version(folder, family="ae", latent_dim=16)
    metrics = config["card"]["metrics"]
    assert set(metrics) == {
        "test_reconstruction_mse",
        "test_reconstruction_bce_nats",
        "test_images_evaluated",
    }
    assert 0.0 < metrics["test_reconstruction_mse"] < 1.0
    assert "genserve.exporters.ae --out" in config["card"]["command"]
    assert "--max-steps 3" in config["card"]["command"]


def test_aae_train_and_export_writes_the_contract(tmp_path):
    folder = aae.train_and_export(
        out=tmp_path,
        name="aae-digits",
        data="mnist5k",
        model_config=TINY_AAE,
        train_config=aae.AAETrainConfig(**QUICK),
        eval_limit=100,
    )

    config = _check_version(folder, family="aae", latent_dim=8)
    metrics = config["card"]["metrics"]
    assert {"test_reconstruction_mse", "test_reconstruction_bce_nats"} <= set(metrics)
    assert metrics["latent_mean_abs"] >= 0.0 and metrics["latent_std"] > 0.0
    assert "--generator-learning-rate" in config["card"]["command"]


def test_aae_regularisation_phases_split_the_gradients():
    training.seed_everything(0)
    model = aae.AAE(TINY_AAE)
    z_q = model.encoder(torch.rand(4, 1, 28, 28))
    z_p = torch.randn(4, TINY_AAE.latent_dim)

    d_loss, _ = model.discriminator_loss(z_q, z_p)
    d_loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())

    g_loss, _ = model.generator_loss(z_q)
    g_loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_aae_training_moves_all_three_modules():
    training.seed_everything(0)
    model = aae.AAE(TINY_AAE)
    images = torch.rand(64, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = aae.train(model, images, aae.AAETrainConfig(epochs=2, batch_size=32), seed=0)

    changed = {
        k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])
    }
    assert changed == {"encoder", "decoder", "discriminator"}
    assert result.steps == 4 and result.epochs == 2.0
    assert not model.training


def test_latent_metrics_read_zero_and_one_for_the_prior():
    prior = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(0))
    metrics = aae.latent_metrics(torch.nn.Identity(), prior)
    assert metrics["latent_mean_abs"] == pytest.approx(0.0, abs=0.02)
    assert metrics["latent_std"] == pytest.approx(1.0, abs=0.02)


def test_checkpoints_rebuild_the_same_models(tmp_path):
    training.seed_everything(0)
    for module, model in ((ae, ae.AE(TINY_AE)), (aae, aae.AAE(TINY_AAE))):
        training.save_checkpoint(model.eval(), tmp_path / "model.pt")
        restored = module.load_checkpoint(tmp_path / "model.pt")
        assert restored.config == model.config
        image = torch.rand(3, 1, 28, 28)
        assert torch.equal(restored.encoder(image), model.encoder(image))


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="-1"):
        aae.AAEConfig(discriminator_hidden_dim=-1)
    with pytest.raises(ValueError, match="generator_learning_rate"):
        aae.AAETrainConfig(generator_learning_rate=0.0)
