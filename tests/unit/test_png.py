"""PNG input: headers are refused before decoding, only PNGs reach Pillow, errors leak nothing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from genserve.server import png

pytestmark = pytest.mark.unit

GREY = (1, 28, 28)
RGB = (3, 28, 28)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_model_sized_png_decodes_to_its_pixels():
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    data = encoded(Image.fromarray(pixels))
    png.check_header(png.read_header(data), len(data), GREY)
    out = png.decode(data, GREY)
    assert out.shape == GREY and out.dtype == np.float32
    assert np.array_equal(np.rint(out[0] * 255).astype(np.uint8), pixels)


def test_an_rgb_png_decodes_channels_first():
    pixels = np.zeros((28, 28, 3), np.uint8)
    pixels[..., 2] = 255
    out = png.decode(encoded(Image.fromarray(pixels)), RGB)
    assert out.shape == RGB and out[2].min() == 1.0 and out[:2].max() == 0.0


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_refused_by_their_first_bytes(fmt):
    data = encoded(Image.new("L", (28, 28)), fmt)
    with pytest.raises(png.PngError, match="is not a PNG"):
        png.read_header(data)


def test_a_huge_png_is_refused_from_its_header_alone():
    # The header of a 13000x13000 image; no pixel data follows at all.
    header = png.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 0, 0, 0, 0))
    with pytest.raises(png.PngError, match="must be 28x28 pixels, got 13000x13000"):
        png.check_header(png.read_header(header), len(header), GREY)


@pytest.mark.parametrize(
    ("mode", "shape"), [("RGB", GREY), ("L", RGB), ("LA", GREY), ("P", GREY), ("RGBA", RGB)]
)
def test_wrong_channels_alpha_or_palette_are_refused(mode, shape):
    data = encoded(Image.new(mode, (28, 28)))
    with pytest.raises(png.PngError, match="must be an 8-bit"):
        png.check_header(png.read_header(data), len(data), shape)


def test_a_sixteen_bit_png_is_refused():
    data = encoded(Image.new("I;16", (28, 28)))
    with pytest.raises(png.PngError, match="8-bit greyscale"):
        png.check_header(png.read_header(data), len(data), GREY)


def test_a_padded_png_is_refused_by_its_length():
    data = encoded(Image.new("L", (28, 28)))
    padded = data[:-12] + chunk(b"tEXt", b"x" * 100_000) + data[-12:]
    with pytest.raises(png.PngError, match="bytes; a 28x28 PNG needs at most"):
        png.check_header(png.read_header(padded), len(padded), GREY)


def test_ancillary_chunks_never_reach_the_decoder():
    # A zTXt chunk that would inflate to 4 MB is dropped, not decompressed.
    data = encoded(Image.new("L", (28, 28), 255))
    bomb = chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * 4_000_000, 9))
    with_bomb = data[:33] + bomb + data[33:]
    assert len(with_bomb) < png.max_png_bytes(GREY)
    assert png.decode(with_bomb, GREY).min() == 1.0
    assert b"zTXt" not in png._essential(with_bomb)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:20],  # cut inside the header
        lambda d: d[:45],  # cut inside a chunk
        lambda d: d[:-12],  # no IEND
        lambda d: d[:33] + chunk(b"IEND", b""),  # no image data
        lambda d: d[:41] + bytes(len(d) - 53) + d[-12:],  # zeroed IDAT
    ],
)
def test_corrupt_pngs_fail_with_fixed_messages(damage):
    data = damage(encoded(Image.new("L", (28, 28), 7)))
    with pytest.raises(png.PngError) as caught:
        png.check_header(png.read_header(data), len(data), GREY)
        png.decode(data, GREY)
    message = str(caught.value)
    assert "0x" not in message and "object" not in message and "Error" not in message
