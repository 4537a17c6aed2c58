"""Diffusion exporter: the noise predictor's export contract, parity, loss and version folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genserve.exporters import diffusion, diffusion_model, onnx_export, training  # noqa: E402

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

TINY = diffusion_model.DiffusionConfig(channels=8, time_dim=16, timesteps=50)


def test_the_schedule_decreases_from_almost_one():
    alphas = TINY.alphas_cumprod()
    assert alphas.shape == (50,) and 0.99 < alphas[0] < 1.0
    assert np.all(np.diff(alphas) < 0)


def test_the_loss_trains_down_on_a_fixed_batch():
    training.seed_everything(0)
    model = diffusion_model.UNet(TINY)
    x0 = torch.rand(16, 1, 28, 28)
    labels = torch.arange(16) % 10
    alphas = torch.from_numpy(TINY.alphas_cumprod()).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        # The same t and noise every step: the loss on them must fall.
        loss = diffusion_model.noising_loss(
            model, x0, labels, alphas, label_dropout=0.0, generator=torch.Generator().manual_seed(1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_noise_graph_exports_with_its_contract_and_passes_parity(tmp_path):
    training.seed_everything(0)
    model = diffusion_model.UNet(TINY).eval()
    graphs, parity = diffusion.export_noise(model, tmp_path)
    assert parity["max_abs_diff"] <= onnx_export.PARITY_ATOL
    signature = graphs["noise"]
    assert [t.name for t in signature.inputs] == ["x", "t", "label"]
    assert [t.dtype for t in signature.inputs] == ["float32", "int64", "int64"]
    assert signature.outputs[0].shape == (-1, 1, 28, 28)


def test_a_rows_noise_does_not_depend_on_the_batch_it_runs_in(tmp_path):
    # Step batching may put a sequence beside any others: its prediction must not change.
    training.seed_everything(0)
    diffusion.export_noise(diffusion_model.UNet(TINY).eval(), tmp_path)
    session = onnx_export.cpu_session(tmp_path / "noise.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 50, 9, dtype=np.int64)
    label = rng.integers(0, 11, 9, dtype=np.int64)
    (together,) = session.run(None, {"x": x, "t": t, "label": label})
    (alone,) = session.run(None, {"x": x[4:5], "t": t[4:5], "label": label[4:5]})
    assert together[4:5].tobytes() == alone.tobytes()


def test_a_quick_run_writes_a_complete_version(tmp_path):
    folder = diffusion.train_and_export(
        out=tmp_path,
        name="diffusion-tiny",
        model_config=TINY,
        train_config=training.TrainConfig(epochs=1, batch_size=16, max_steps=2),
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["family"] == "diffusion" and config["params"]["null_label"] == 10
    assert config["params"]["schedule"]["timesteps"] == 50
    assert config["stepping"]["max_running"] >= 1 and len(config["labels"]) == 10
    card = config["card"]
    assert card["steps"] == 2 and "--timesteps 50" in card["command"]
    assert card["parity"]["max_abs_diff"] <= onnx_export.PARITY_ATOL
    assert card["metrics"]["test_noising_loss"] > 0


def test_the_weight_average_forgets_the_initial_weights():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(-100.0)  # the "random" initial weights
    average = diffusion.WeightAverage(model)
    with torch.no_grad():
        model.weight.fill_(1.0)  # what training settles on
    for _ in range(2000):
        average.update()
    target = torch.nn.Linear(2, 1)
    average.copy_to(target)
    # A fixed 0.999 from the first step would still hold 0.999^2000 = 13.5% of -100 here.
    assert torch.allclose(target.weight, torch.ones_like(target.weight), atol=1e-3)
