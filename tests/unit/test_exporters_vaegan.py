"""The VAE-GAN exporter: graph contract, parity, the adversarial step, the version folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genserve.exporters import onnx_export, training, vae, vaegan, vaegan_model  # noqa: E402
from genserve.runtime.schema import to_json  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TINY = vaegan_model.VAEGANConfig(
    latent_dim=16, channels=(4, 8), hidden_dim=16, disc_channels=(4, 8, 8)
)


def test_untrained_graphs_have_the_vae_contract_and_match_pytorch(tmp_path):
    training.seed_everything(0)
    model = vaegan_model.VAEGAN(TINY).eval()
    graphs, parity = vae.export_graphs(model.vae, tmp_path)

    assert parity["batch_sizes"] == [1, 7, 64]
    assert parity["max_abs_diff"] <= onnx_export.PARITY_ATOL
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
    (images,) = onnx_export.cpu_session(tmp_path / "decoder.onnx").run(
        None, {"latent": np.random.default_rng(0).standard_normal((5, 16), dtype=np.float32)}
    )
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_one_training_step_gives_finite_losses_and_moves_all_three_networks():
    generator = training.seed_everything(0)
    model = vaegan_model.VAEGAN(TINY)
    before = {k: [p.detach().clone() for p in v] for k, v in model.parameter_groups().items()}
    data = torch.rand(32, 1, 28, 28, generator=generator)
    config = training.TrainConfig(epochs=1, batch_size=32, max_steps=1)

    result, final = vaegan.train(model, data, config, generator=generator)

    assert result.steps == 1 and not model.training
    assert set(final) >= {"encoder", "decoder", "discriminator", "kl", "feature", "bce"}
    assert all(math.isfinite(v) for v in final.values())
    for name, params in model.parameter_groups().items():
        moved = any(not torch.equal(p, q) for p, q in zip(params, before[name], strict=True))
        assert moved, f"the {name} did not change"


def test_train_and_export_writes_a_vaegan_version_folder(tmp_path):
    folder = vaegan.train_and_export(
        out=tmp_path,
        name="vaegan-digits",
        version=2,
        data="mnist5k",
        model_config=TINY,
        train_config=training.TrainConfig(epochs=1, batch_size=32, max_steps=2),
        eval_limit=50,
    )

    assert folder == tmp_path / "vaegan-digits" / "2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "decoder.onnx",
        "encoder.onnx",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert list(config) == [
        "name", "family", "graphs", "batching", "max_num_samples", "params", "labels", "card",
    ]  # fmt: skip
    assert config["family"] == "vaegan" and config["max_num_samples"] == 256
    assert config["params"] == {"latent_dim": 16, "image_shape": [1, 28, 28]}
    assert config["labels"] == []
    card = config["card"]
    assert card["steps"] == 2 and "--max-steps 2" in card["command"]
    assert card["parity"]["max_abs_diff"] <= onnx_export.PARITY_ATOL
    assert card["metrics"]["test_images_evaluated"] == 50
    assert 0 < card["metrics"]["test_reconstruction_mse"] < 1
    assert card["metrics"]["test_kl_nats"] >= 0
    assert {"encoder", "decoder", "discriminator"} <= set(card["final_losses"])


def test_checkpoint_rebuilds_the_same_model(tmp_path):
    training.seed_everything(0)
    model = vaegan_model.VAEGAN(TINY).eval()
    training.save_checkpoint(model, tmp_path / "vaegan.pt")
    restored = vaegan.load_checkpoint(tmp_path / "vaegan.pt")
    assert restored.config == TINY
    latent = torch.randn(3, 16)
    assert torch.equal(restored.vae.decoder(latent), model.vae.decoder(latent))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"disc_channels": (4, 0, 8)}, r"\(4, 0, 8\)"),
        ({"gamma": -1.0}, "-1.0"),
        ({"ema_decay": 1.0}, "1.0"),
        ({"latent_dim": 0}, "0"),
    ],
)
def test_bad_config_values_are_quoted(fields, message):
    with pytest.raises(ValueError, match=message):
        vaegan_model.VAEGANConfig(**fields)
