"""Image helpers: normalise inputs, tile a batch into a grid, read and write PNG.

Arrays in genserve are float32 in [0, 1], shape (N, C, H, W) with C = 1 or 3.
PNG support needs Pillow (`pip install 'genserve-client[png]'`), imported only
when a PNG is read or written.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np

_PIL_HINT = "PNG support needs Pillow: pip install 'genserve-client[png]'"


def normalize_images(images: Any) -> np.ndarray:
    """Bring a batch of images to float32 in [0, 1], shape (N, C, H, W).

    Args:
        images: An array of shape (N, C, H, W) or (N, H, W) (one channel):
            floats in [0, 1], uint8 in [0, 255], or bool.

    Returns:
        A float32 array of shape (N, C, H, W).

    Raises:
        ValueError: the array has another number of dimensions or dtype.
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise ValueError(f"images must be float in [0, 1], uint8 or bool, got dtype {array.dtype}")


def grid(images: Any, nrow: int | None = None, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Tile a batch of images into one picture, row by row.

    Args:
        images: A batch as accepted by `normalize_images`, with 1 or 3 channels.
        nrow: Images per row; by default the batch is laid out near-square.
        padding: Black pixels between images and around the border.
        scale: Integer factor by which each image is enlarged (nearest
            neighbour) before tiling; padding is not scaled.

    Returns:
        A uint8 array of shape (rows, cols) for one channel or (rows, cols, 3).

    Raises:
        ValueError: the batch is empty, has 2 or 4+ channels, or an argument is
            out of range.
    """
    batch = normalize_images(images)
    n, c, h, w = batch.shape
    if n == 0 or c not in (1, 3):
        raise ValueError(f"grid needs at least one image with 1 or 3 channels, got {batch.shape}")
    if scale < 1 or padding < 0 or (nrow is not None and nrow < 1):
        raise ValueError(f"need scale >= 1, padding >= 0, nrow >= 1; got {scale, padding, nrow}")
    ncol = min(nrow or math.ceil(math.sqrt(n)), n)
    nrows = math.ceil(n / ncol)
    pixels = _to_uint8(batch).transpose(0, 2, 3, 1)  # (N, H, W, C)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    out = np.zeros((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(pixels):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        out[top : top + h, left : left + w] = image
    return out[..., 0] if c == 1 else out


def to_png_bytes(image: Any) -> bytes:
    """Encode one image as an 8-bit PNG file.

    Args:
        image: (H, W), (H, W, C) as returned by `grid`, or (C, H, W) as in a
            batch, with C = 1, 3 or 4; uint8, or float in [0, 1]. A 3-D array
            whose first axis is 1, 3 or 4 long is read as (C, H, W).

    Returns:
        The PNG file's bytes.

    Raises:
        ImportError: Pillow is not installed.
        ValueError: the array is not an image.
    """
    buffer = io.BytesIO()
    _pil().fromarray(_to_hwc_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(array: Any, path: str | os.PathLike[str]) -> None:
    """Write one image (for example a `grid`) to a PNG file.

    Args:
        array: An image as accepted by `to_png_bytes`.
        path: Where to write the file.

    Raises:
        ImportError: Pillow is not installed.
        ValueError: the array is not an image.
    """
    _pil().fromarray(_to_hwc_uint8(array)).save(os.fspath(path), format="PNG")


def from_png_bytes(data: bytes) -> np.ndarray:
    """Decode a PNG (or any image Pillow reads) into float32 in [0, 1], shape (C, H, W).

    Grayscale images give C = 1; everything else is converted to RGB, C = 3.

    Raises:
        ImportError: Pillow is not installed.
        ValueError: the bytes are not an image.
    """
    pil = _pil()
    try:
        picture = pil.open(io.BytesIO(data))
        picture.load()
    except (OSError, pil.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image: {exc}") from exc
    if picture.mode not in ("L", "RGB"):
        picture = picture.convert("L" if picture.mode in ("1", "I", "I;16", "F") else "RGB")
    pixels = np.asarray(picture, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)


def read_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """Read an image file of any format Pillow reads as float32 (C, H, W) in [0, 1].

    The server takes only 8-bit greyscale or RGB PNGs; reading files here lets
    a caller send palette, alpha, 16-bit or JPEG files in the model's channels.

    Args:
        path: The file.
        channels: 1 for greyscale, 3 for RGB.

    Raises:
        ImportError: Pillow is not installed.
        ValueError: the file is not an image, or channels is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    pil = _pil()
    try:
        with pil.open(os.fspath(path)) as picture:
            pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"), np.uint8)
    except (OSError, pil.DecompressionBombError) as exc:
        raise ValueError(f"{os.fspath(path)} is not a readable image: {exc}") from exc
    pixels = pixels[:, :, None] if channels == 1 else pixels
    return pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped) or uint8 to uint8."""
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _to_hwc_uint8(image: Any) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, C) for Pillow."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = _to_uint8(array.astype(np.float32))
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"not an image: shape {np.asarray(image).shape}")
    return np.ascontiguousarray(array)


def _pil() -> Any:
    """The PIL.Image module, or an ImportError that says how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(_PIL_HINT) from exc
    return Image
