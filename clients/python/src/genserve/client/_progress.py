"""What the command line shows of a streamed generation: a progress bar and a preview strip.

On a terminal the bar is one line redrawn in place with a carriage return. When
stderr is a file or a pipe (a log), it prints a plain line at each tenth of the
way and at the end instead, so a 784-step PixelCNN run logs about ten lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from genserve.client import images as image_io

_BAR_WIDTH = 24


def bar_line(step: int, total: int, elapsed_s: float, *, label: str = "") -> str:
    """One terminal line: label, bar, step i/N, percent, elapsed time and rate.

    For example `diffusion-fashion [############------------] 10/20  50%  1.3s  7.7 steps/s`.
    """
    fraction = _fraction(step, total)
    filled = int(_BAR_WIDTH * fraction)
    bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
    steps = f"{step:>{len(str(total))}}/{total}"
    timing = f"{_duration(elapsed_s)}  {_rate(step, elapsed_s)}"
    prefix = f"{label} " if label else ""
    return f"{prefix}[{bar}] {steps} {int(100 * fraction):3d}%  {timing}"


def log_line(step: int, total: int, elapsed_s: float, *, label: str = "") -> str:
    """One plain line for a log, e.g. `diffusion-fashion: step 10/20 (50%), 1.3s, 7.7 steps/s`."""
    fraction = _fraction(step, total)
    rate = _rate(step, elapsed_s)
    prefix = f"{label}: " if label else ""
    return f"{prefix}step {step}/{total} ({int(100 * fraction)}%), {_duration(elapsed_s)}, {rate}"


class ProgressBar:
    """Shows a sampler's progress (step i of N) on a text stream, usually stderr.

    Args:
        stream: Where to write.
        label: Shown first on each line, e.g. the model's name.
        tty: Redraw one line in place (True) or print occasional plain lines
            (False); default: whether `stream` is a terminal.
        clock: A monotonic clock in seconds; elapsed time counts from creation.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        label: str = "",
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._tty = _isatty(stream) if tty is None else tty
        self._clock = clock
        self._start_s = clock()
        self._width = 0  # length of the terminal line drawn last; 0: no line open
        self._tenth = -1  # the last tenth of the way logged

    def update(self, step: int, total: int) -> None:
        """Show that `step` of `total` steps are done."""
        elapsed_s = self._clock() - self._start_s
        if self._tty:
            line = bar_line(step, total, elapsed_s, label=self._label)
            self._stream.write("\r" + line + " " * max(self._width - len(line), 0))
            self._width = len(line)
        else:
            tenth = int(10 * _fraction(step, total))
            if tenth <= self._tenth:
                return
            self._tenth = tenth
            self._stream.write(log_line(step, total, elapsed_s, label=self._label) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the terminal line, if one is drawn, so what follows starts on its own line."""
        if self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def preview_strip(columns: Sequence[Any], *, scale: int = 1) -> np.ndarray:
    """Tile batches of the same samples into one picture: a row per sample, a column per batch.

    Args:
        columns: Batches of N images each, left to right (previews in step
            order, then the final images), as accepted by `images.grid`.
        scale: Integer factor by which each image is enlarged.

    Returns:
        A uint8 picture as returned by `images.grid`.

    Raises:
        ValueError: no columns, or columns of different shapes.
    """
    if not columns:
        raise ValueError("a preview strip needs at least one column")
    batches = [image_io.normalize_images(column) for column in columns]
    if len({batch.shape for batch in batches}) != 1:
        shapes = ", ".join(str(batch.shape) for batch in batches)
        raise ValueError(f"preview columns must have one shape, got {shapes}")
    stacked = np.stack(batches, axis=1)  # (N, K, C, H, W): sample-major, so rows are samples
    n, k = stacked.shape[:2]
    return image_io.grid(stacked.reshape(n * k, *stacked.shape[2:]), nrow=k, scale=scale)


def _fraction(step: int, total: int) -> float:
    """Done so far, in [0, 1]; shown rounded down, so 100% means finished."""
    return min(max(step / total, 0.0), 1.0) if total > 0 else 1.0


def _duration(seconds: float) -> str:
    """4.2s, 1m05s or 1h02m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _rate(step: int, elapsed_s: float) -> str:
    """Steps per second, or seconds per step when slower than one a second."""
    if step <= 0 or elapsed_s <= 0:
        return "- steps/s"
    rate = step / elapsed_s
    return f"{rate:.1f} steps/s" if rate >= 1 else f"{1 / rate:.1f} s/step"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
