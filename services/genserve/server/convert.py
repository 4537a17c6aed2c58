"""Protobuf to checked plain Python, and back. Every bad field is named.

Only servicers call this module; nothing past them sees protobuf.
"""

from __future__ import annotations

import asyncio
import io
import math
import secrets

import numpy as np
from PIL import Image

from genserve.client import tensors
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.limits import Limits
from genserve.runtime.model import GenerateParams, SamplerParams, ServedModel
from genserve.server import png
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import tensor_pb2


def tensor_field(field: str, message: tensor_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor, naming the field when its dtype, shape or bytes are off."""
    try:
        return tensors.to_numpy(message)
    except tensors.TensorFormatError as exc:
        raise InvalidArgument(field, str(exc)) from None


def finite_float32(field: str, array: np.ndarray) -> np.ndarray:
    """Cast to float32 and refuse NaN or infinity."""
    if array.dtype.kind not in "fiub":
        raise InvalidArgument(field, f"must be numeric, got {array.dtype}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise InvalidArgument(field, f"contains {bad} NaN or infinite values")
    return out


def num_samples(field: str, value: int, model: ServedModel) -> int:
    """1 to the model's max_num_samples."""
    cap = model.config.max_num_samples
    if not 1 <= value <= cap:
        raise InvalidArgument(field, f"must be between 1 and {cap}, got {value}")
    return value


def seed_of(request) -> int:
    """The request's seed, or a fresh one the response will report."""
    if request.HasField("seed"):
        return int(request.seed)
    return secrets.randbits(63)


def latents(
    field: str, message: tensor_pb2.Tensor, model: ServedModel, rows: int | None
) -> np.ndarray:
    """float32 (rows, latent_dim), finite."""
    array = tensor_field(field, message)
    d = model.latent_dim
    if array.ndim != 2 or array.shape[1] != d or (rows is not None and array.shape[0] != rows):
        want = f"({rows if rows is not None else 'N'}, {d})"
        raise InvalidArgument(f"{field}.shape", f"must be {want}, got {list(array.shape)}")
    if array.shape[0] < 1:
        raise InvalidArgument(f"{field}.shape", "needs at least one row")
    if array.shape[0] > model.config.max_num_samples:
        raise InvalidArgument(
            f"{field}.shape", f"at most {model.config.max_num_samples} rows, got {array.shape[0]}"
        )
    return finite_float32(field, array)


async def images(
    field: str, message: pb.ImageInput, model: ServedModel, limits: Limits
) -> np.ndarray:
    """float32 (N, C, H, W) in [0, 1], from a tensor or PNG files.

    Every PNG's header is checked (format, size, bit depth, channels, length)
    and the request's pixels are bounded before anything is decoded; the
    decoding itself runs off the event loop.
    """
    shape, cap = model.image_shape, model.config.max_num_samples
    pngs = png_headers(field, message, shape, cap, limits)
    if pngs:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _decode_pngs, field, pngs, shape)
    array = tensor_field(f"{field}.tensor", message.tensor)
    if array.ndim != 4 or tuple(array.shape[1:]) != shape:
        raise InvalidArgument(
            f"{field}.tensor.shape",
            f"must be (N, {', '.join(map(str, shape))}), got {list(array.shape)}",
        )
    _check_count(field, array.shape[0], shape, cap, limits)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    array = finite_float32(f"{field}.tensor", array)
    if array.min() < 0.0 or array.max() > 1.0:
        raise InvalidArgument(
            f"{field}.tensor",
            f"values must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]",
        )
    return array


def png_headers(
    field: str, message: pb.ImageInput, shape: tuple[int, ...], cap: int, limits: Limits
) -> list[bytes]:
    """The request's PNGs once every header is checked; [] when it carries a tensor.

    Cheap and decodes nothing, so the gateway runs it too before forwarding.

    Args:
        field: the ImageInput's field name, for errors.
        message: the images.
        shape: the model's (C, H, W).
        cap: the model's max_num_samples.
        limits: the pixel bound.
    """
    has_tensor, has_pngs = message.HasField("tensor"), len(message.pngs) > 0
    if has_tensor == has_pngs:
        raise InvalidArgument(field, "set exactly one of tensor and pngs")
    if has_tensor:
        return []
    _check_count(field, len(message.pngs), shape, cap, limits)
    pngs = []
    for i in range(len(message.pngs)):  # one at a time: the first bad one ends the copying
        data = message.pngs[i]
        try:
            png.check_header(png.read_header(data), len(data), shape)
        except png.PngError as exc:
            raise InvalidArgument(f"{field}.pngs[{i}]", str(exc)) from None
        pngs.append(data)
    return pngs


def _check_count(field: str, count: int, shape: tuple[int, ...], cap: int, limits: Limits) -> None:
    """1 to max_num_samples images, and no more pixels than the limit."""
    if not 1 <= count <= cap:
        raise InvalidArgument(field, f"needs 1 to {cap} images, got {count}")
    pixels = count * math.prod(shape)
    if pixels > limits.max_image_pixels:
        most = limits.max_image_pixels // math.prod(shape)
        raise InvalidArgument(
            field,
            f"carries {pixels} pixel values; at most {limits.max_image_pixels} ({most} images)",
        )


def _decode_pngs(field: str, pngs: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """Decode checked PNGs into one (N, C, H, W) batch; runs in an executor."""
    out = np.empty((len(pngs), *shape), np.float32)
    for i, data in enumerate(pngs):
        try:
            out[i] = png.decode(data, shape)
        except png.PngError as exc:
            raise InvalidArgument(f"{field}.pngs[{i}]", str(exc)) from None
    return out


def class_labels(field: str, values, model: ServedModel, rows: int) -> np.ndarray | None:
    """None, or int64 (rows,) in range: one label for all or one per sample."""
    if not values:
        return None
    n_classes = len(model.config.labels)
    if not n_classes:
        raise InvalidArgument(field, f"model {model.name} is not class-conditional")
    array = np.asarray(values, dtype=np.int64)
    if len(array) not in (1, rows):
        raise InvalidArgument(field, f"give one label or {rows}, got {len(array)}")
    bad = array[(array < 0) | (array >= n_classes)]
    if bad.size:
        raise InvalidArgument(field, f"must be between 0 and {n_classes - 1}, got {int(bad[0])}")
    return np.broadcast_to(array, (rows,)).copy()


def sampler(message: pb.SamplerParams) -> SamplerParams:
    """Checked sampler settings; ranges that need the model are checked by the family."""
    values = {f: getattr(message, f) if message.HasField(f) else None for f in _SAMPLER_RANGES}
    for name, value in values.items():
        allowed, described = _SAMPLER_RANGES[name]
        if value is not None and (not np.isfinite(value) or not allowed(value)):
            raise InvalidArgument(f"sampler.{name}", f"must be {described}, got {value:g}")
    return SamplerParams(stop_sequences=tuple(message.stop_sequences), **values)


# Each optional sampler field: a check of its value, and the range in words.
_SAMPLER_RANGES = {
    "steps": (lambda v: v >= 1, ">= 1"),
    "guidance_scale": (lambda v: v >= 0, ">= 0"),
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_k": (lambda v: v >= 0, ">= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "truncation": (lambda v: 0.05 <= v <= 4.0, "in [0.05, 4]"),
    "eta": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
}


def generate_params(
    request: pb.GenerateRequest, model: ServedModel, deadline: float | None
) -> GenerateParams:
    """Check a GenerateRequest against the model."""
    n = num_samples("num_samples", request.num_samples, model)
    given = latents("latents", request.latents, model, n) if request.HasField("latents") else None
    return GenerateParams(
        num_samples=n,
        seed=seed_of(request),
        class_labels=class_labels("class_labels", request.class_labels, model, n),
        prompt=request.prompt,
        latents=given,
        sampler=sampler(request.sampler),
        deadline=deadline,
    )


async def images_out(array: np.ndarray, output_format: int) -> tensor_pb2.Images:
    """Images as a float32 tensor, or as one PNG per image (encoded off the event loop)."""
    if output_format == tensor_pb2.OUTPUT_FORMAT_PNG:
        loop = asyncio.get_running_loop()
        pngs = await loop.run_in_executor(None, lambda: [to_png(img) for img in array])
        return tensor_pb2.Images(pngs=pngs)
    return tensor_pb2.Images(tensor=tensors.from_numpy(np.ascontiguousarray(array, np.float32)))


def to_png(image: np.ndarray) -> bytes:
    """One (C, H, W) float image in [0, 1] as 8-bit PNG bytes."""
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    mode_array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(mode_array).save(buffer, format="PNG")
    return buffer.getvalue()


def check_output_format(value: int) -> None:
    """Only the enum's known values."""
    if value not in tensor_pb2.OutputFormat.values():
        raise InvalidArgument("output_format", f"unknown value {value}")
