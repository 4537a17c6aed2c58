"""Render a grid of samples of a model-repository version, drawn by its family's serving code.

    python -m genserve.exporters.grid --model-dir models/vae-fashion/1 \\
        --out docs/images/vae-fashion-samples.png --seed 1

The samples are what Generate with ``--seed`` returns (for a latent model, its
decoder on z ~ N(0, I) from NumPy's generator seeded by ``--seed``), so the
same model and seed give the same picture. Uses no torch.
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np

from genserve.exporters.served import ServedRunner


def sample_images(model_dir: Path, count: int, seed: int) -> np.ndarray:
    """``count`` samples of the version in ``model_dir``: (count, C, H, W) in [0, 1]."""
    with ServedRunner(model_dir) as runner:
        return runner.generate(count, seed)


def tile(images: np.ndarray, columns: int, *, pad: int = 2, scale: int = 2) -> np.ndarray:
    """Lay out (N, 1, H, W) images in rows of ``columns``, white gaps, upscaled.

    Returns:
        uint8 (rows * (H + pad) + pad, columns * (W + pad) + pad), times ``scale``.
    """
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad), dtype=np.float32)
    for i, image in enumerate(images[:, 0]):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        canvas[top : top + h, left : left + w] = image
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)


def write_png(path: Path, grey: np.ndarray) -> None:
    """Write an 8-bit greyscale PNG (stdlib only)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    height, width = grey.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, greyscale
    rows = b"".join(b"\x00" + row.tobytes() for row in grey)  # filter type 0 per row
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m genserve.exporters.grid", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="a version folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=8, help="the grid is rows x rows")
    parser.add_argument("--scale", type=int, default=2, help="integer upscaling")
    args = parser.parse_args(argv)
    images = sample_images(args.model_dir, args.rows * args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, tile(images, args.rows, scale=args.scale))
    print(args.out)


if __name__ == "__main__":
    main()
