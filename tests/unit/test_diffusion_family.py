"""The diffusion family's sampler in process: its DDIM schedule and update rule."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from genserve.exporters import diffusion, diffusion_model, training
from genserve.families.diffusion import DdimRule, DiffusionModel
from genserve.runtime.model import GenerateParams, LoadContext, SamplerParams
from genserve.runtime.repository import load_config
from genserve.runtime.session import SessionOptions

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

T = 50


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
