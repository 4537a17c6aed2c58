"""The PixelCNN family in process: fast and naive samplers agree, Complete keeps known pixels."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from genserve.exporters import pixelcnn, pixelcnn_model, training
from genserve.families.pixelcnn import PixelCnnModel
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.model import GenerateParams, LoadContext
from genserve.runtime.repository import load_config
from genserve.runtime.session import SessionOptions

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

LEVELS = 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny trained PixelCNN, and a copy of it whose config asks for the naive sampler."""
    root = tmp_path_factory.mktemp("pixelcnn")
    fast = pixelcnn.train_and_export(
        out=root,
        name="pixelcnn-tiny",
        model_config=pixelcnn_model.PixelCnnConfig(channels=4, layers=2, levels=LEVELS),
        train_config=training.TrainConfig(epochs=1, batch_size=64, max_steps=30),
    )
    naive = root / "pixelcnn-naive" / "1"
    shutil.copytree(fast, naive)
    config = json.loads((naive / "config.json").read_text())
    config["name"], config["params"]["sampler"] = "pixelcnn-naive", "naive"
    (naive / "config.json").write_text(json.dumps(config))
    return fast, naive


async def served(folder):
    model = PixelCnnModel(load_config(folder), LoadContext(SessionOptions()))
    await model.start()
    return model


def test_the_fast_graphs_run_on_one_thread_unless_the_operator_sets_a_count(folders):
    config = load_config(folders[0])
    chosen = LoadContext(SessionOptions())  # ONNX Runtime's choice: the config's 1 applies
    assert chosen.open_graph(config, "pixels").options.intra_op_threads == 1
    assert chosen.open_graph(config, "rows").options.intra_op_threads == 1
    assert chosen.open_graph(config, "pixelcnn").options.intra_op_threads == 0
    operator = LoadContext(SessionOptions(intra_op_threads=2))
    assert operator.open_graph(config, "pixels").options.intra_op_threads == 2


async def test_the_fast_sampler_draws_the_same_images_as_the_naive_one(folders):
    fast, naive = [await served(folder) for folder in folders]
    params = GenerateParams(3, seed=7, class_labels=np.array([0, 5, 9]))
    try:
        got = await fast.generate(params)
        want = await naive.generate(params)
    finally:
        await fast.close()
        await naive.close()
    assert got.images.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(got.images, want.images)
    assert set(np.unique(got.images * (LEVELS - 1)).round(4)) <= set(range(LEVELS))
    assert len(np.unique(got.images)) > 1, "a trained model draws more than one level"


async def test_a_sample_is_the_same_alone_and_among_other_requests(folders):
    model = await served(folders[0])
    params = GenerateParams(1, seed=3, class_labels=np.array([2]))
    try:
        alone = await model.generate(params)
        crowd = [GenerateParams(2, seed=s, class_labels=np.array([1, 4])) for s in (10, 11)]
        together, *_ = await asyncio.gather(
            model.generate(params), *(model.generate(p) for p in crowd)
        )
    finally:
        await model.close()
    np.testing.assert_array_equal(alone.images, together.images)


async def test_complete_keeps_every_known_pixel_exactly_and_draws_the_rest(folders):
    model = await served(folders[0])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)  # not on the levels
    mask = np.zeros((1, 1, 28, 28), np.float32)
    mask[..., :14, :] = 1.0  # the top half is known
    params = GenerateParams(2, seed=5, class_labels=np.array([3, 3]))
    try:
        out = (await model.complete(images, mask, params)).images
        full = (await model.complete(images, np.ones_like(mask), params)).images
    finally:
        await model.close()
    np.testing.assert_array_equal(out[..., :14, :], images[..., :14, :])
    drawn = out[..., 14:, :] * (LEVELS - 1)
    np.testing.assert_array_equal(drawn, drawn.round())  # unknown pixels are drawn levels
    np.testing.assert_array_equal(full, images)


async def test_the_stream_counts_every_pixel_and_previews_the_canvas(folders):
    model = await served(folders[0])
    params = GenerateParams(2, seed=1, class_labels=np.array([0, 1]))
    try:
        events = [e async for e in model.generate_stream(params, preview_every_steps=392)]
        plain = await model.generate(params)
    finally:
        await model.close()
    progress = [e.progress for e in events if e.progress]
    assert progress == [(i, 784) for i in range(1, 785)]
    (preview,) = [e.preview for e in events if e.preview is not None]
    assert preview.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(preview[..., :14, :], plain.images[..., :14, :])
    assert not preview[..., 14:, :].any(), "rows not drawn yet are blank in the preview"
    np.testing.assert_array_equal(events[-1].result.images, plain.images)


async def test_a_version_exported_again_from_its_graph_s_weights_draws_the_same_images(folders):
    source = folders[0]
    again = pixelcnn.reexport(source, source.parent.parent, 2, "the test")
    config = load_config(again)
    assert config.card.extra["exported_from"] == {
        "version": 1,
        "weights": "read back from that version's pixelcnn.onnx",
        "command": "the test",
    }
    assert config.card.metrics == load_config(source).card.metrics  # the same network
    params = GenerateParams(2, seed=4, class_labels=np.array([6, 8]))
    first, second = [await served(folder) for folder in (source, again)]
    try:
        want, got = await first.generate(params), await second.generate(params)
    finally:
        await first.close()
        await second.close()
    np.testing.assert_array_equal(got.images, want.images)


def test_a_pixels_graph_of_another_format_is_refused_naming_the_graph(folders, tmp_path):
    old = tmp_path / "pixelcnn-old" / "1"
    shutil.copytree(folders[0], old)
    config = json.loads((old / "config.json").read_text())
    config["name"] = "pixelcnn-old"
    (old / "pixels.onnx").write_bytes((old / "rows.onnx").read_bytes())  # inputs x, label, row
    config["graphs"]["pixels"]["inputs"] = config["graphs"]["rows"]["inputs"]
    config["graphs"]["pixels"]["outputs"] = config["graphs"]["rows"]["outputs"]
    config["card"]["files"]["pixels.onnx"] = config["card"]["files"]["rows.onnx"]
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match=r"graphs\.pixels: .*another format.*--reexport"):
        PixelCnnModel(load_config(old), LoadContext(SessionOptions()))
