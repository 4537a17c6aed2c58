"""GAN exporter: generator export contract and parity, WGAN-GP step, model-repository folder."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genserve.exporters import data, gan, gan_model, onnx_export, training  # noqa: E402
from genserve.runtime.schema import to_json  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TINY = gan_model.GANConfig(latent_dim=8, generator_channels=(8, 4), discriminator_channels=(4, 8))
TINY_CONDITIONAL = gan_model.GANConfig(
    latent_dim=8,
    num_classes=10,
    label_dim=4,
    generator_channels=(8, 4),
    discriminator_channels=(4, 8),
)


def _random_dataset(n: int = 64) -> data.ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, 28, 28), dtype=np.float32)
    return data.ImageDataset(images, rng.integers(0, 10, n), data.FASHION_CLASSES)


def _warm_batchnorm(generator: gan_model.Generator, config: gan_model.GANConfig) -> None:
    """Move the BatchNorm running statistics away from their initial values."""
    generator.train()
    label = torch.arange(16) % 10 if config.conditional else None
    with torch.no_grad():
        for _ in range(3):
            generator(3 * torch.randn(16, config.latent_dim) + 1, label)


@pytest.mark.parametrize("config", [TINY, TINY_CONDITIONAL], ids=["unconditional", "conditional"])
def test_untrained_generator_exports_with_the_contract_names_and_passes_parity(tmp_path, config):
    training.seed_everything(0)
    generator = gan_model.GAN(config).generator
    _warm_batchnorm(generator, config)
    graphs, parity = gan.export_generator(generator, config, tmp_path)

    assert not generator.training
    assert parity["batch_sizes"] == [1, 7, 64]
    assert parity["max_abs_diff"] <= 1e-4
    inputs = [{"name": "latent", "dtype": "float32", "shape": [-1, 8]}]
    if config.conditional:
        inputs.append({"name": "label", "dtype": "int64", "shape": [-1]})
    assert to_json(graphs) == {
        "generator": {
            "file": "generator.onnx",
            "inputs": inputs,
            "outputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
            "intra_op_threads": 1,
        }
    }
    assert [p.name for p in tmp_path.iterdir()] == ["generator.onnx"]
    session = onnx_export.cpu_session(tmp_path / "generator.onnx")
    feeds = {"latent": np.random.default_rng(1).standard_normal((10, 8), dtype=np.float32)}
    if config.conditional:
        feeds["label"] = np.arange(10, dtype=np.int64)
    (images,) = session.run(None, feeds)
    assert images.shape == (10, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0
    if config.conditional:  # the same latent under another label gives another image
        feeds["label"] = feeds["label"][::-1].copy()
        (relabelled,) = session.run(None, feeds)
        assert not np.allclose(images, relabelled)


@pytest.mark.parametrize("config", [TINY, TINY_CONDITIONAL], ids=["unconditional", "conditional"])
def test_gradient_penalty_is_finite_positive_and_differentiable(config):
    training.seed_everything(0)
    critic = gan_model.Discriminator(config)
    real, fake = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    label = torch.arange(6) if config.conditional else None
    penalty = gan_model.gradient_penalty(critic, real, fake, label)
    assert math.isfinite(penalty.item()) and penalty.item() > 0
    penalty.backward()
    assert all(p.grad is not None for p in critic.features.parameters())


def test_one_wgan_gp_step_takes_n_critic_critic_steps_and_moves_both_networks():
    training.seed_everything(0)
    model = gan_model.GAN(TINY_CONDITIONAL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = gan_model.GANTrainConfig(batch_size=8, loss="wgan-gp", max_steps=1)
    result = gan.train_gan(model, _random_dataset(), config, seed=0)

    assert config.learning_rate == 1e-4 and config.betas == (0.0, 0.9)
    assert result.steps == 1 and result.epochs == pytest.approx(5 / 8)
    losses = result.final_losses
    assert set(losses) == {"critic_loss", "wasserstein", "gp", "g_loss"}
    assert all(math.isfinite(v) for v in losses.values()) and losses["gp"] > 0
    after = model.state_dict()
    for prefix in ("generator.", "discriminator.", "generator."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix))
    assert not model.training


def test_bce_run_is_reproducible_with_a_seed():
    def run() -> dict[str, torch.Tensor]:
        training.seed_everything(0)
        model = gan_model.GAN(TINY)
        gan.train_gan(
            model, _random_dataset(), gan_model.GANTrainConfig(batch_size=8, max_steps=3), seed=0
        )
        return model.generator.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_bad_training_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="'hinge'"):
        gan_model.GANTrainConfig(loss="hinge")
    with pytest.raises(ValueError, match="n_critic"):
        gan_model.GANTrainConfig(loss="wgan-gp", n_critic=0)
    with pytest.raises(ValueError, match="num_classes"):
        gan_model.GANConfig(num_classes=1)


def test_train_and_export_writes_a_checked_conditional_version_folder(tmp_path):
    folder = gan.train_and_export(
        out=tmp_path,
        name="cgan-digits",
        version=2,
        data="mnist5k",
        model_config=TINY_CONDITIONAL,
        train_config=gan_model.GANTrainConfig(batch_size=16, max_steps=2),
        checkpoint=tmp_path / "cgan.pt",
    )

    assert folder == tmp_path / "cgan-digits" / "2"
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "cgan-digits" and config["family"] == "gan"
    assert list(config["graphs"]) == ["generator"]
    assert config["max_num_samples"] == 256
    assert config["params"] == {
        "latent_dim": 8,
        "image_shape": [1, 28, 28],
        "conditional": True,
        "loss": "bce",
    }
    assert config["labels"] == list(data.MNIST_CLASSES)
    card = config["card"]
    assert card["steps"] == 2 and card["seed"] == 0
    assert "--conditional" in card["command"] and "--max-steps 2" in card["command"]
    assert set(card["metrics"]["final_losses"]) == {"d_loss", "d_real", "d_fake", "g_loss"}
    assert card["parity"]["max_abs_diff"] <= 1e-4
    for name, record in card["files"].items():
        body = (folder / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}

    restored = gan.load_checkpoint(tmp_path / "cgan.pt")
    assert restored.config == TINY_CONDITIONAL
    session = onnx_export.cpu_session(folder / "generator.onnx")
    latent, label = np.zeros((3, 8), np.float32), np.array([0, 4, 9])
    (images,) = session.run(None, {"latent": latent, "label": label})
    with torch.no_grad():
        expected = restored.generator(torch.from_numpy(latent), torch.from_numpy(label))
    np.testing.assert_allclose(images, expected.numpy(), atol=1e-4)
