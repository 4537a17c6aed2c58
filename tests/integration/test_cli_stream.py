"""`genserve generate --preview-every` against a real diffusion service behind a gateway.

Train a tiny DDPM noise predictor with the real exporter (as test_diffusion
does), serve it in a diffusion family process behind a gateway, run the command
line in-process, and check what a user sees: progress on stderr reaching N/N,
the grid, and a strip with a row per sample and a column per preview plus one
for the final images.
"""

from __future__ import annotations

import numpy as np
import pytest

from genserve.client import cli, images

from .conftest import family_behind_gateway, train_tiny_diffusion

MODEL = "diffusion-cli"
TIMESTEPS = 50
TILE = 28 + 2  # a 28x28 image and the grid's padding


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> str:
    repo = tmp_path_factory.mktemp("diffusion-cli-models")
    train_tiny_diffusion(repo, MODEL, TIMESTEPS)
    logs = tmp_path_factory.mktemp("diffusion-cli-logs")
    with family_behind_gateway(logs, "diffusion", repo) as served:
        yield served.gateway.target


def tile(picture: np.ndarray, row: int, col: int) -> np.ndarray:
    """One 28x28 image of a grid or strip (C, H, W) with padding 2."""
    top, left = 2 + row * TILE, 2 + col * TILE
    return picture[:, top : top + 28, left : left + 28]


def test_the_cli_streams_progress_and_writes_a_preview_strip(gateway, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = [
        "--addr", gateway, "generate", "--model", MODEL, "-n", "2", "--seed", "4",
        "--steps", "7", "--preview-every", "3", "-o", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0

    err = capsys.readouterr().err
    assert f"{MODEL}: step 7/7 (100%)" in err, err
    assert "previews after steps 3, 6 and the final images" in err
    strip = images.from_png_bytes((tmp_path / "grid-previews.png").read_bytes())
    assert strip.shape == (1, 2 * TILE + 2, 3 * TILE + 2)  # 2 samples x (2 previews + final)
    grid = images.from_png_bytes(out.read_bytes())  # the 2 final images side by side
    for sample in range(2):
        assert np.array_equal(tile(strip, sample, 2), tile(grid, 0, sample))
        assert not np.array_equal(tile(strip, sample, 0), tile(strip, sample, 2))
