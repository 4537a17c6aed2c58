"""Paths through a latent space, for interpolating between two samples or images."""

from __future__ import annotations

import numpy as np

from genserve.client.errors import FieldViolation, InvalidArgumentError

METHODS = ("slerp", "lerp")


def latent_path(
    start: np.ndarray, end: np.ndarray, frames: int, method: str = "slerp"
) -> np.ndarray:
    """`frames` codes from `start` to `end`, both included.

    Args:
        start: The first code, shape (D,).
        end: The last code, shape (D,).
        frames: How many codes, at least 2.
        method: "slerp" follows the great circle, which keeps Gaussian codes at
            a typical norm (the usual choice for GANs and VAEs); "lerp" is the
            straight line.

    Returns:
        float32 (frames, D).

    Raises:
        InvalidArgumentError: fewer than 2 frames, an unknown method, or codes
            of different shapes.
    """
    check_frames(frames)
    if method not in METHODS:
        raise _invalid("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    a, b = np.asarray(start, np.float64).ravel(), np.asarray(end, np.float64).ravel()
    if a.shape != b.shape:
        raise _invalid("latents", f"the two codes differ in shape: {a.shape} and {b.shape}")
    t = np.linspace(0.0, 1.0, frames)[:, None]
    if method == "lerp":
        return ((1 - t) * a + t * b).astype(np.float32)
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-6:  # (nearly) parallel codes: the straight line is the arc
        return ((1 - t) * a + t * b).astype(np.float32)
    path = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return path.astype(np.float32)


def check_frames(frames: int) -> None:
    """At least the two ends, and at most what one request may hold."""
    if not 2 <= frames <= 256:
        raise _invalid("frames", f"must be between 2 and 256, got {frames}")


def check_ends(seeds, images) -> None:
    """Exactly one of two seeds or two images."""
    if (seeds is None) == (images is None):
        raise _invalid("seeds", "give exactly one of seeds and images")
    ends = seeds if seeds is not None else images
    if len(ends) != 2:
        which = "seeds" if seeds is not None else "images"
        raise _invalid(which, f"needs exactly 2, got {len(ends)}")


def _invalid(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {problem}", violations=[FieldViolation(field, problem)])
