"""The PixelCNN family end to end: a tiny trained model behind a gateway.

Train a tiny class-conditional PixelCNN with the real exporter, serve it in a
pixelcnn family process behind a gateway, and check through the gateway:
seeded results repeat; a request's bytes are the same alone and when its
pixels share steps with other requests at other positions (Generate and
Complete with other masks, joining mid-way); GenerateStream reports every
pixel, previews what is drawn so far and ends with Generate's result;
Complete keeps every known pixel exactly (PNG and tensor) and draws the rest;
bad input answers INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from genserve.client import tensors
from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc, tensor_pb2

from .conftest import scrape, start, total

MODEL = "pixelcnn-tiny"
LEVELS = 4  # the exporter's default quantisation: level k is k / 3
PIXELS = 28 * 28
PNG_LEVELS = {round(k * 255 / (LEVELS - 1)) for k in range(LEVELS)}  # {0, 85, 170, 255}
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from genserve.exporters import pixelcnn, pixelcnn_model, training

    repo = tmp_path_factory.mktemp("pixelcnn-models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only fight the other processes
    try:
        pixelcnn.train_and_export(
            out=repo,
            name=MODEL,
            model_config=pixelcnn_model.PixelCnnConfig(channels=4, layers=2, levels=LEVELS),
            train_config=training.TrainConfig(epochs=1, batch_size=64, max_steps=30),
        )
    finally:
        torch.set_num_threads(threads)
    with Supervisor(log_dir=tmp_path_factory.mktemp("pixelcnn-logs"), grace_s=5) as sup:
        family = start(sup, "genserve.families", "--family", "pixelcnn", "--models", str(repo))
        gateway = start(sup, "genserve.gateway", "--backend", family.target)
        yield gateway.target, family.metrics
        assert not sup.exited(), f"a process died: {sup.exited()}"


# -- requests ---------------------------------------------------------------------------------


def generate(seed: int, labels: list[int], **fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model_name=MODEL, num_samples=len(labels), seed=seed, class_labels=labels, **fields
    )


def complete(
    images: np.ndarray | list[bytes], mask: np.ndarray, seed: int, labels: list[int], **fields
) -> pb.CompleteRequest:
    """A Complete of float32 (N, 1, 28, 28) images, or of PNG files, with a numeric mask."""
    given = (
        tensor_pb2.ImageInput(pngs=images)
        if isinstance(images, list)
        else tensor_pb2.ImageInput(tensor=tensors.from_numpy(images))
    )
    return pb.CompleteRequest(
        model_name=MODEL,
        images=given,
        mask=tensors.from_numpy(mask),
        seed=seed,
        class_labels=labels,
        **fields,
    )


def top_rows_known(rows: int, n: int = 1, dtype=np.float32) -> np.ndarray:
    """A mask (n, 1, 28, 28) whose first `rows` rows are known."""
    mask = np.zeros((n, 1, 28, 28), dtype)
    mask[:, :, :rows] = 1
    return mask


def random_mask(n: int, seed: int) -> np.ndarray:
    """float32 (n, 1, 28, 28): about half the pixels known, scattered."""
    return (np.random.default_rng(seed).random((n, 1, 28, 28)) < 0.5).astype(np.float32)


def float_images(n: int, seed: int) -> np.ndarray:
    """float32 (n, 1, 28, 28) in [0, 1] that no grey level of the model can equal."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.01, 0.32, (n, 1, 28, 28)).astype(np.float32)


def png(pixels: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of uint8 (H, W)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def from_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def pixels_of(response) -> np.ndarray:
    """The float32 (N, 1, 28, 28) images of a Generate or Complete response."""
    return tensors.to_numpy(response.images.tensor)


async def call_all(target: str, *requests) -> list:
    """Send every request at once (Generate or Complete by its type); the responses, in order."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        calls = [
            (stub.Complete if isinstance(r, pb.CompleteRequest) else stub.Generate)(
                r, timeout=TIMEOUT_S
            )
            for r in requests
        ]
        return await asyncio.gather(*calls)


def call(target: str, request):
    (response,) = asyncio.run(call_all(target, request))
    return response


# -- Generate ---------------------------------------------------------------------------------


def test_a_seeded_request_gives_the_same_images_twice(deployment):
    target, _ = deployment
    first, again = (call(target, generate(5, [1, 7])) for _ in range(2))
    assert first.images.tensor.data == again.images.tensor.data
    assert first.seed == 5 and first.model_name == MODEL
    images = pixels_of(first)
    assert images.shape == (2, 1, 28, 28)
    drawn = set(np.unique(np.rint(images * (LEVELS - 1) * 1000)).astype(int).tolist())
    assert drawn <= {1000 * k for k in range(LEVELS)}, "every pixel is one of the grey levels"
    assert len(drawn) > 1, "a trained model draws more than one level"
    other = pixels_of(call(target, generate(6, [1, 7])))
    assert not np.array_equal(images, other), "another seed draws other images"


def test_batching_with_other_requests_at_other_positions_never_changes_a_result(deployment):
    target, metrics = deployment
    probe = generate(3, [2, 8])
    known = float_images(2, seed=0)
    completion = complete(known, top_rows_known(11, n=2), 4, [0, 6])
    # Each probe alone, one after the other.
    alone = [call(target, probe).images.tensor.data, call(target, completion).images.tensor.data]

    crowd = [
        generate(11, [3]),
        generate(12, [9, 4, 5]),
        complete(float_images(1, seed=1), top_rows_known(20), 13, [1]),  # starts at pixel 560
        complete(known, np.ones((1, 1, 28, 28), np.uint8), 14, [7]),  # nothing to draw
        complete(float_images(3, seed=2), random_mask(3, seed=3), 15, [5]),  # scattered pixels
    ]

    async def together() -> list:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            # A request already mid-way when the probes arrive: they join its steps.
            running = stub.GenerateStream(
                pb.GenerateStreamRequest(request=generate(16, [0, 2])), timeout=TIMEOUT_S
            )
            first = await running.read()
            assert first.progress.step >= 1
            answers = await call_all(target, *crowd, probe, *crowd, completion, *crowd)
            last = first
            while (event := await running.read()) is not grpc.aio.EOF:
                last = event
        assert last.HasField("result")
        return answers

    before = step_counts(metrics)
    answers = asyncio.run(together())
    rows, steps = (after - then for after, then in zip(step_counts(metrics), before, strict=True))
    assert answers[len(crowd)].images.tensor.data == alone[0]
    assert answers[2 * len(crowd) + 1].images.tensor.data == alone[1]
    # No request has more than 3 samples: a bigger mean batch means requests shared steps.
    assert rows / steps > 3, f"{rows:g} samples in {steps:g} steps: the requests never mixed"


def step_counts(metrics: str) -> tuple[float, float]:
    """(samples, steps) the family's step workers have run for the model so far."""
    samples = scrape(metrics)
    rows = total(samples, "genserve_step_batch_size_sum", model=MODEL)
    return rows, total(samples, "genserve_step_batch_size_count", model=MODEL)


def test_complete_with_nothing_known_is_generate(deployment):
    target, _ = deployment
    nothing = np.zeros((1, 1, 28, 28), np.float32)
    generated, completed = asyncio.run(
        call_all(
            target,
            generate(21, [4, 9]),
            complete(float_images(2, seed=5), nothing, 21, [4, 9]),
        )
    )
    assert completed.images.tensor.data == generated.images.tensor.data


# -- GenerateStream ---------------------------------------------------------------------------


def test_the_stream_reports_every_pixel_previews_and_ends_with_generates_result(deployment):
    target, _ = deployment
    expected = pixels_of(call(target, generate(9, [3, 6])))
    every = 200
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stream = pb.GenerateStreamRequest(request=generate(9, [3, 6]), preview_every_steps=every)
        events = list(stub.GenerateStream(stream, timeout=TIMEOUT_S))

    progress = [(e.progress.step, e.progress.total_steps) for e in events if e.HasField("progress")]
    assert progress == [(i, PIXELS) for i in range(1, PIXELS + 1)]
    assert events[-1].HasField("result")
    assert sum(e.HasField("result") for e in events) == 1
    assert events[-1].result.seed == 9
    final = pixels_of(events[-1].result)
    assert final.tobytes() == expected.tobytes()

    previews = [tensors.to_numpy(e.preview.tensor) for e in events if e.HasField("preview")]
    assert len(previews) == 3  # after pixels 200, 400 and 600
    flat_final = final.reshape(2, PIXELS)
    for k, preview in zip((200, 400, 600), previews, strict=True):
        assert preview.shape == (2, 1, 28, 28)
        flat = preview.reshape(2, PIXELS)
        np.testing.assert_array_equal(flat[:, :k], flat_final[:, :k])  # drawn so far
        assert not flat[:, k:].any(), f"pixels after {k} are not drawn yet"
    # Each preview follows the progress event of its pixel count.
    at = [i for i, e in enumerate(events) if e.HasField("preview")]
    assert at == [200, 401, 602]


def test_a_stream_without_previews_asked_sends_none(deployment):
    target, _ = deployment
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stream = pb.GenerateStreamRequest(request=generate(10, [1]))
        events = list(stub.GenerateStream(stream, timeout=TIMEOUT_S))
    assert not any(e.HasField("preview") for e in events)
    assert [e.progress.step for e in events[:-1]] == list(range(1, PIXELS + 1))
    assert events[-1].HasField("result")


# -- Complete ---------------------------------------------------------------------------------


def test_complete_keeps_known_png_pixels_exactly_and_draws_the_rest(deployment):
    target, _ = deployment
    rng = np.random.default_rng(7)
    sent = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    sent[sent % 85 == 0] = 1  # no known pixel looks like a drawn grey level
    mask = np.zeros((1, 1, 28, 28), np.uint8)  # one mask for both images, any numeric dtype
    mask[0, 0, :14] = 1  # the top half is known
    mask[0, 0, 20:, :7] = 1  # and a block further down, so drawing resumes after it
    known = mask[0, 0].astype(bool)
    sent[:, ~known] = 123  # ignored: the model draws these
    request = complete(
        [png(s) for s in sent], mask, 8, [2, 5], output_format=tensor_pb2.OUTPUT_FORMAT_PNG
    )
    response = call(target, request)

    got = np.stack([from_png(p) for p in response.images.pngs])
    assert got.shape == (2, 28, 28)
    np.testing.assert_array_equal(got[:, known], sent[:, known])
    drawn = got[:, ~known]
    assert set(np.unique(drawn).tolist()) <= PNG_LEVELS, "unknown pixels are drawn grey levels"
    assert len(np.unique(drawn)) > 1
    assert response.seed == 8


def test_complete_keeps_known_tensor_values_bit_for_bit(deployment):
    target, _ = deployment
    images = float_images(2, seed=9)
    mask = random_mask(2, seed=10)  # one mask per image
    got = pixels_of(call(target, complete(images, mask, 17, [3])))
    known = mask.astype(bool)
    assert got.shape == images.shape
    assert got[known].tobytes() == images[known].tobytes()
    levels = np.rint(got[~known] * (LEVELS - 1))
    np.testing.assert_allclose(got[~known], levels / (LEVELS - 1), atol=1e-6)
    assert not np.isin(got[~known], images).any(), "no unknown pixel kept the sent value"


def test_a_mask_of_all_ones_returns_the_images_unchanged(deployment):
    target, _ = deployment
    images = float_images(3, seed=11)
    response = call(target, complete(images, np.ones((3, 1, 28, 28), np.float32), 1, [0]))
    assert pixels_of(response).tobytes() == images.tobytes()


# -- bad input --------------------------------------------------------------------------------


def bad_requests() -> list:
    image = float_images(2, seed=12)
    half = top_rows_known(14)
    wrong_png = png(np.zeros((14, 14), np.uint8))
    return [
        pytest.param(complete(image, half[:, :, :14], 1, [0]), "mask.shape", id="mask-shape"),
        pytest.param(complete(image, half[0], 1, [0]), "mask.shape", id="mask-rank"),
        pytest.param(complete(image, half.repeat(3, 0), 1, [0]), "mask.shape", id="mask-count"),
        pytest.param(complete(image, half * 0.5, 1, [0]), "mask", id="mask-half"),
        pytest.param(complete(image, half * 2, 1, [0]), "mask", id="mask-two"),
        pytest.param(
            complete(image[:, :, :14, :14], half, 1, [0]), "images.tensor.shape", id="image-size"
        ),
        pytest.param(complete([wrong_png], half, 1, [0]), "images.pngs[0]", id="png-size"),
        pytest.param(complete(image, half, 1, [10]), "class_labels", id="complete-label"),
        pytest.param(generate(1, [10]), "class_labels", id="generate-label"),
        pytest.param(generate(1, [-1]), "class_labels", id="negative-label"),
    ]


@pytest.mark.parametrize(("request_", "field"), bad_requests())
def test_bad_input_names_the_field(deployment, request_, field):
    target, _ = deployment
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        call(target, request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details().startswith(f"{field}: "), caught.value.details()


def test_a_stream_with_a_label_outside_the_classes_names_the_field(deployment):
    target, _ = deployment
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stream = pb.GenerateStreamRequest(request=generate(1, [10]))
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.GenerateStream(stream, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("class_labels: ")


# -- listing ----------------------------------------------------------------------------------


def test_the_model_lists_its_family_and_calls(deployment):
    target, _ = deployment
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
        (only,) = stub.ListModels(pb.ListModelsRequest(family="pixelcnn"), timeout=30).models
        none = stub.ListModels(pb.ListModelsRequest(family="diffusion"), timeout=30).models
    assert (info.name, info.family, list(info.image_shape)) == (MODEL, "pixelcnn", [1, 28, 28])
    assert only == info and not none
    assert sorted(info.calls) == sorted(
        [pb.MODEL_CALL_GENERATE, pb.MODEL_CALL_GENERATE_STREAM, pb.MODEL_CALL_COMPLETE]
    )
    assert len(info.labels) == 10
