"""PNG input, checked before it is decoded.

`read_header` reads the signature and the IHDR chunk (33 bytes, constant
time) so a request can be refused on format, size, bit depth or channels
before a single row is inflated. `decode` then keeps only the chunks a pixel
needs (IHDR, IDAT, IEND): ancillary chunks such as zTXt or iCCP never reach a
decompressor, and nothing but a PNG ever reaches Pillow's plugins. It is
meant to run off the event loop.

Error messages are fixed sentences: they never quote a decoder's exception,
an object or a byte the caller sent.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = len(SIGNATURE) + 8 + 13 + 4  # signature, IHDR length+type, IHDR body, CRC
_KEPT = (b"IHDR", b"IDAT", b"IEND")
_CHANNELS = {0: 1, 2: 3}
"""PNG colour type -> channels, for the types genserve takes: greyscale and RGB."""
_MODES = {1: "L", 3: "RGB"}


class PngError(ValueError):
    """Bytes that are not a PNG genserve takes; the message is safe to show a caller."""


@dataclass(frozen=True)
class PngHeader:
    """What the IHDR chunk says about an image."""

    width: int
    height: int
    bit_depth: int
    color_type: int

    @property
    def channels(self) -> int | None:
        """1 for greyscale, 3 for RGB, None for any other colour type."""
        return _CHANNELS.get(self.color_type)


def read_header(data: bytes) -> PngHeader:
    """The IHDR of a PNG, reading only its first 33 bytes.

    Raises:
        PngError: not a PNG, or its header is malformed.
    """
    if not data.startswith(SIGNATURE):
        raise PngError("is not a PNG (JPEG, GIF, BMP, TIFF and others are not accepted)")
    if len(data) < _IHDR_END:
        raise PngError("is a truncated PNG")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise PngError("is a malformed PNG: it must start with a 13-byte IHDR chunk")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29]
    )
    if compression or filtering or interlace > 1 or not width or not height:
        raise PngError("is a malformed PNG: bad IHDR fields")
    return PngHeader(width, height, depth, color)


def check_header(header: PngHeader, size: int, shape: tuple[int, int, int]) -> None:
    """Refuse a PNG that is not 8-bit, of the model's channels and size, or is padded.

    Args:
        header: what read_header returned.
        size: the PNG's length in bytes.
        shape: the model's (channels, height, width).
    """
    channels, height, width = shape
    if (header.width, header.height) != (width, height):
        raise PngError(f"must be {width}x{height} pixels, got {header.width}x{header.height}")
    if header.channels != channels or header.bit_depth != 8:
        kind = "8-bit greyscale" if channels == 1 else "8-bit RGB"
        raise PngError(f"must be an {kind} PNG (no alpha, no palette)")
    if size > max_png_bytes(shape):
        raise PngError(
            f"is {size} bytes; a {width}x{height} PNG needs at most {max_png_bytes(shape)}"
        )


def max_png_bytes(shape: tuple[int, int, int]) -> int:
    """The longest PNG of this shape genserve reads: its raw rows stored, plus slack for chunks."""
    channels, height, width = shape
    raw = height * (1 + width * channels)
    return 2 * raw + 4096


def decode(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """A checked PNG as float32 (C, H, W) in [0, 1]; call off the event loop.

    Raises:
        PngError: the chunks or the image data are corrupt.
    """
    channels = shape[0]
    try:
        image = Image.open(io.BytesIO(_essential(data)), formats=["PNG"])
        image.load()
    except PngError:
        raise
    except Exception:
        raise PngError("is a corrupt PNG: its image data cannot be decoded") from None
    if image.mode != _MODES[channels] or image.size != (shape[2], shape[1]):
        raise PngError("is a corrupt PNG: its data disagrees with its header")
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _essential(data: bytes) -> bytes:
    """The PNG with only IHDR, IDAT and IEND; the chunk structure checked."""
    kept = [SIGNATURE]
    at, seen_data = len(SIGNATURE), False
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        end = at + 12 + length
        if end > len(data):
            raise PngError("is a truncated PNG: a chunk runs past the end")
        if kind in _KEPT:
            kept.append(data[at:end])
        seen_data |= kind == b"IDAT"
        if kind == b"IEND":
            break
        at = end
    else:
        raise PngError("is a truncated PNG: it has no IEND chunk")
    if not seen_data:
        raise PngError("is a malformed PNG: it has no image data")
    return b"".join(kept)
