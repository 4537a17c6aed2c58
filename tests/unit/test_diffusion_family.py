"""The diffusion family's sampler in process: its DDIM schedule and update rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from genserve.exporters import data, diffusion, diffusion_model, evaluate, training
from genserve.exporters.served import ServedRunner
from genserve.families.diffusion import DdimRule, DiffusionModel
from genserve.runtime.model import GenerateParams, LoadContext, SamplerParams
from genserve.runtime.repository import load_config
from genserve.runtime.session import SessionOptions

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

T = 50
CLASSIFIER_DIR = Path(__file__).resolve().parents[2] / "bench" / "quality"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> DiffusionModel:
    folder = diffusion.train_and_export(
        out=tmp_path_factory.mktemp("diffusion"),
        name="diffusion-tiny",
        model_config=diffusion_model.DiffusionConfig(channels=8, time_dim=16, timesteps=T),
        train_config=training.TrainConfig(epochs=1, batch_size=16, max_steps=1),
    )
    return DiffusionModel(load_config(folder), LoadContext(SessionOptions()))


@pytest.mark.parametrize("steps", [1, 2, 7, T])
def test_every_schedule_runs_from_the_noisiest_step_down(model, steps):
    (sample,) = model.samples(GenerateParams(1, seed=1, sampler=SamplerParams(steps=steps)))
    timesteps = list(sample.timesteps)
    assert timesteps[0] == T - 1 and len(timesteps) == steps
    assert timesteps == sorted(set(timesteps), reverse=True)
    assert steps == 1 or timesteps[-1] == 0


def test_with_the_true_noise_the_last_step_recovers_the_image():
    rule = DdimRule(diffusion_model.DiffusionConfig(timesteps=T).alphas_cumprod())
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 1, 28, 28))
    noise = rng.standard_normal(x0.shape)
    t = np.array([T - 1, 10])
    a = rule.alpha(t)[:, None, None, None]
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise  # Ho et al., eq. 4
    out = rule.step(x_t, noise, t, np.array([-1, -1]), np.zeros(2), np.zeros_like(x0))
    np.testing.assert_allclose(out, x0, atol=1e-5)


def test_the_evaluation_samples_it_through_the_served_ddim_loop(model):
    labels = np.arange(5) % 10
    with ServedRunner(model.config.path) as runner:
        assert runner.can_sample and not runner.can_reconstruct
        images = runner.generate(5, seed=3, labels=labels)
        again = runner.generate(5, seed=3, labels=labels)
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.tobytes() == again.tobytes()  # seeded, so the scores can be repeated


@pytest.mark.skipif(
    not (data.fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)
def test_the_evaluation_scores_it_with_class_accuracy_and_draws_a_grid(model, tmp_path):
    classifier = evaluate.EvalClassifier.load(CLASSIFIER_DIR)
    test_images = data.load_fashion_mnist("test").images[:200]
    _, features = classifier.run(test_images, "test")
    found = evaluate.Model(model.name, model.config.path, model.config)
    grid = tmp_path / "grid.png"
    q = evaluate.evaluate_model(
        found, classifier, evaluate.Gaussian.fit(features), test_images,
        samples=20, seed=0, grid=grid,
    )  # fmt: skip
    assert q.fd > 0 and 0.0 <= q.class_accuracy <= 1.0 and q.reconstruction_mse is None
    png = grid.read_bytes()
    assert int.from_bytes(png[20:24], "big") == 2 * (10 * 30 + 2)  # a row per class (80 > 64)
