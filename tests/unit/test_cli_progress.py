"""The command line's progress bar and preview strip, and the SDK's preview events.

The bar is drawn on fake streams with an injected clock (a terminal: one line
redrawn in place; a log: a plain line per tenth of the way). The strip is
checked for its layout. The command line and both clients run against a fake
ModelService whose GenerateStream sends progress, previews and the result.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from genserve.client import AsyncClient, Client, Preview, StepProgress, cli, images
from genserve.client._progress import ProgressBar, bar_line, log_line, preview_strip
from genserve.client.results import StreamDecoder
from genserve.client.tensors import from_numpy
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc, tensor_pb2

from .clock import ManualClock

H, W = 4, 5  # the fake model's images


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# The bar.


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    stream, clock = _Terminal(), ManualClock()
    bar = ProgressBar(stream, label="diffusion-tiny", clock=clock)
    for step in range(1, 21):
        clock.now += 0.25
        bar.update(step, 20)
    bar.close()
    out = stream.getvalue()
    assert out.count("\r") == 20 and out.count("\n") == 1 and out.endswith("\n")
    last = out.rstrip("\n").split("\r")[-1]
    assert last.startswith("diffusion-tiny [" + "#" * 24 + "]")
    assert "20/20 100%" in last and "5.0s" in last and "4.0 steps/s" in last


def test_the_terminal_line_shows_step_percent_elapsed_and_rate() -> None:
    line = bar_line(5, 20, 2.5, label="m")
    assert line == "m [######------------------]  5/20  25%  2.5s  2.0 steps/s"
    assert bar_line(3, 784, 6.0).endswith("  3/784   0%  6.0s  2.0 s/step")
    assert "1m05s" in bar_line(10, 10, 65.0)
    assert " 783/784  99% " in bar_line(783, 784, 1.0)  # rounded down: 100% only at the end


def test_a_shorter_redraw_blanks_the_rest_of_the_old_line() -> None:
    stream, clock = _Terminal(), ManualClock()
    bar = ProgressBar(stream, clock=clock)
    clock.now += 1.0
    bar.update(1, 10)  # 1.0 steps/s
    clock.now += 999.0
    bar.update(2, 10)  # 500.0 s/step, 16m40s: longer
    clock.now = 100.5
    bar.update(3, 10)  # 6.0 steps/s, 0.5s: shorter
    drawn = stream.getvalue().split("\r")[1:]
    assert len(drawn[2]) == len(drawn[1]) and drawn[2].rstrip() == bar_line(3, 10, 0.5)


def test_a_log_gets_a_plain_line_per_tenth_and_the_end() -> None:
    stream, clock = io.StringIO(), ManualClock()  # not a terminal
    bar = ProgressBar(stream, label="pixelcnn", clock=clock)
    for step in range(1, 785):
        clock.now += 0.01
        bar.update(step, 784)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 11  # 0%, 10%, ..., 100%
    assert lines[0] == log_line(1, 784, 0.01, label="pixelcnn")
    assert lines[-1].startswith("pixelcnn: step 784/784 (100%), 7.8s, 100.0 steps/s")


def test_close_without_a_drawn_line_writes_nothing() -> None:
    stream = _Terminal()
    bar = ProgressBar(stream)
    bar.close()
    assert stream.getvalue() == ""


# The strip.


def _columns(samples: int, steps: int) -> list[np.ndarray]:
    """Column j holds sample i as a flat image of value 10 * i + j (uint8)."""
    return [
        np.stack([np.full((1, H, W), 10 * i + j, np.uint8) for i in range(samples)])
        for j in range(steps)
    ]


def test_the_strip_has_a_row_per_sample_and_a_column_per_step_in_order() -> None:
    strip = preview_strip(_columns(3, 4))
    pad = 2
    assert strip.shape == (3 * (H + pad) + pad, 4 * (W + pad) + pad)
    for i in range(3):
        for j in range(4):
            top, left = pad + i * (H + pad), pad + j * (W + pad)
            assert (strip[top : top + H, left : left + W] == 10 * i + j).all()


def test_the_strip_scales_and_refuses_mismatched_columns() -> None:
    assert preview_strip(_columns(2, 3), scale=2).shape == (
        2 * (2 * H + 2) + 2,
        3 * (2 * W + 2) + 2,
    )
    with pytest.raises(ValueError, match="one shape"):
        preview_strip([np.zeros((2, 1, H, W)), np.zeros((3, 1, H, W))])
    with pytest.raises(ValueError, match="at least one column"):
        preview_strip([])


# The SDK and the command line against a fake GenerateStream.


def _images(n: int, value: float) -> tensor_pb2.Tensor:
    return from_numpy(np.full((n, 1, H, W), value, np.float32))


class _FakeStream(model_service_pb2_grpc.ModelServiceServicer):
    """GenerateStream: 6 steps with previews as asked; `gpt-*` models send text instead."""

    STEPS = 6

    def GenerateStream(self, request, context) -> Iterator[pb.GenerateStreamResponse]:
        inner, n = request.request, request.request.num_samples
        for step in range(1, self.STEPS + 1):
            yield pb.GenerateStreamResponse(
                progress=pb.StepProgress(step=step, total_steps=self.STEPS)
            )
            if inner.model_name.startswith("gpt"):
                yield pb.GenerateStreamResponse(token=pb.TokenDelta(text=f"{step}"))
            elif self._previews_after(step, request.preview_every_steps):
                preview = tensor_pb2.Images(tensor=_images(n, step / 10))
                yield pb.GenerateStreamResponse(preview=preview)
        result = pb.GenerateResponse(model_name=inner.model_name, seed=7)
        if inner.model_name.startswith("gpt"):
            result.texts.append("123456")
        else:
            result.images.tensor.CopyFrom(_images(n, 1.0))
        yield pb.GenerateStreamResponse(result=result)

    def _previews_after(self, step: int, every: int) -> bool:
        """As diffusion does: every `every` steps, but not after the last (the result is)."""
        return every > 0 and step % every == 0 and step < self.STEPS


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_FakeStream(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_a_preview_carries_the_step_it_follows() -> None:
    decode = StreamDecoder()
    events = [
        decode(pb.GenerateStreamResponse(progress=pb.StepProgress(step=3, total_steps=6))),
        decode(pb.GenerateStreamResponse(preview=tensor_pb2.Images(tensor=_images(2, 0.5)))),
    ]
    assert events[0] == StepProgress(3, 6)
    assert isinstance(events[1], Preview) and events[1].step == 3
    assert events[1].images.shape == (2, 1, H, W) and events[1].images.dtype == np.float32


async def test_both_clients_give_previews_as_images_with_their_steps(addr: str) -> None:
    with Client(addr) as client:
        sync = list(client.generate_stream("diffusion", 2, preview_every_steps=2))
    async with AsyncClient(addr) as client:
        stream = client.generate_stream("diffusion", 2, preview_every_steps=2)
        asynchronous = [event async for event in stream]
    for events in (sync, asynchronous):
        previews = [e for e in events if isinstance(e, Preview)]
        assert [p.step for p in previews] == [2, 4]
        assert [float(p.images[0, 0, 0, 0]) for p in previews] == pytest.approx([0.2, 0.4])


def test_the_cli_writes_the_strip_beside_the_grid(addr: str, tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    argv = ["--addr", addr, "generate", "-m", "diffusion", "-n", "3", "-o", str(out)]
    assert cli.main([*argv, "--preview-every", "2"]) == 0
    strip = images.from_png_bytes((tmp_path / "grid-previews.png").read_bytes())
    assert strip.shape == (1, 3 * (H + 2) + 2, 3 * (W + 2) + 2)  # previews at 2, 4, then final
    err = capsys.readouterr().err
    assert "step 6/6 (100%)" in err and "\r" not in err  # stderr is not a terminal here
    assert "previews after steps 2, 4 and the final images" in err


def test_the_cli_writes_the_strip_where_told(addr: str, tmp_path) -> None:
    argv = ["--addr", addr, "generate", "-m", "diffusion", "-o", str(tmp_path / "g.png")]
    strip_path = tmp_path / "strip.png"
    assert cli.main([*argv, "--preview-every", "4", "--preview-out", str(strip_path)]) == 0
    strip = images.from_png_bytes(strip_path.read_bytes())
    assert strip.shape == (1, H + 4, 2 * (W + 2) + 2)


def test_text_streaming_prints_the_tokens_as_before(addr: str, capsys) -> None:
    assert cli.main(["--addr", addr, "generate", "-m", "gpt-tiny", "--stream"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "123456\n"
    assert "step 1/6" in captured.err and "seed: 7" in captured.err


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_preview_interval_is_an_argparse_error(value: str, capsys) -> None:
    argv = ["generate", "-m", "diffusion", "-o", "g.png", "--preview-every", value]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert f"argument --preview-every: must be a whole number >= 1, got '{value}'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preview-every", "2"], "--preview-every needs -o FILE.png for the final images"),
        (["--preview-out", "s.png"], "--preview-out needs --preview-every K"),
    ],
)
def test_preview_options_are_checked_before_any_call(extra, message, capsys) -> None:
    argv = ["--addr", "127.0.0.1:1", "generate", "-m", "diffusion", *extra]  # nothing listens
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
