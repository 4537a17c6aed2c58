"""Latent paths for interpolation strips."""

from __future__ import annotations

import numpy as np
import pytest

from genserve.client import InvalidArgumentError
from genserve.client.interpolation import check_ends, latent_path


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_the_path_starts_and_ends_at_the_given_codes(method):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    path = latent_path(a, b, 9, method)
    assert path.shape == (9, 16) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], a, atol=1e-5)
    np.testing.assert_allclose(path[-1], b, atol=1e-5)


def test_slerp_keeps_gaussian_codes_at_a_typical_norm_where_lerp_shrinks_them():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(64), rng.standard_normal(64)
    middle_slerp = latent_path(a, b, 3, "slerp")[1]
    middle_lerp = latent_path(a, b, 3, "lerp")[1]
    typical = (np.linalg.norm(a) + np.linalg.norm(b)) / 2
    assert abs(np.linalg.norm(middle_slerp) - typical) < 0.1 * typical
    assert np.linalg.norm(middle_lerp) < 0.85 * typical


def test_parallel_codes_fall_back_to_the_straight_line():
    a = np.ones(4)
    path = latent_path(a, 2 * a, 3, "slerp")
    np.testing.assert_allclose(path[1], 1.5 * a, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: latent_path(np.zeros(2), np.ones(2), 1), "frames"),
        (lambda: latent_path(np.zeros(2), np.ones(2), 4, "cubic"), "method"),
        (lambda: latent_path(np.zeros(2), np.ones(3), 4), "latents"),
        (lambda: check_ends(None, None), "seeds"),
        (lambda: check_ends([1, 2], [b"a", b"b"]), "seeds"),
        (lambda: check_ends([1, 2, 3], None), "seeds"),
        (lambda: check_ends(None, [b"a"]), "images"),
    ],
)
def test_bad_arguments_name_the_field(call, field):
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    assert caught.value.field == field
