"""Build request messages from plain Python and numpy arguments.

Shared by the sync and asyncio clients. Arguments that cannot make a valid
request raise InvalidArgumentError naming the argument, before any network call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from genserve.client.errors import FieldViolation, InvalidArgumentError
from genserve.client.images import normalize_images
from genserve.client.tensors import TensorFormatError, from_numpy
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import tensor_pb2

_FORMATS = {"tensor": tensor_pb2.OUTPUT_FORMAT_TENSOR, "png": tensor_pb2.OUTPUT_FORMAT_PNG}

# Images given as encoded files rather than arrays.
ImageFiles = Sequence[bytes]


@dataclass(frozen=True)
class Sampling:
    """Sampler parameters; None leaves the model's default (see SamplerParams)."""

    steps: int | None = None
    guidance_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop_sequences: Sequence[str] | None = None
    truncation: float | None = None
    eta: float | None = None

    def to_proto(self) -> pb.SamplerParams | None:
        params = {f.name: getattr(self, f.name) for f in fields(self)}
        params = {k: v for k, v in params.items() if v is not None}
        if isinstance(params.get("stop_sequences"), str):
            raise _invalid("stop_sequences", "must be a list of strings, not one string")
        return pb.SamplerParams(**params) if params else None


def generate_request(
    model: str,
    num_samples: int | None,
    *,
    seed: int | None,
    class_labels: int | Sequence[int] | None,
    latents: Any,
    prompt: str | None,
    output_format: str,
    sampling: Sampling,
) -> pb.GenerateRequest:
    """A GenerateRequest; num_samples defaults to the latents' or labels' count, else 1."""
    labels = _labels(class_labels)
    request = pb.GenerateRequest(
        model_name=model,
        seed=_seed(seed),
        output_format=output_format_code(output_format),
        class_labels=labels,
        prompt=prompt or "",
        sampler=sampling.to_proto(),
    )
    if latents is not None:
        array = np.asarray(latents, dtype=np.float32)
        array = array[None] if array.ndim == 1 else array
        request.latents.CopyFrom(from_numpy(array))
        num_samples = len(array) if num_samples is None else num_samples
    if num_samples is None:
        num_samples = len(labels) if len(labels) > 1 else 1
    request.num_samples = num_samples
    return request


def encode_request(model: str, images: Any | None, texts: Sequence[str] | None) -> pb.EncodeRequest:
    """An EncodeRequest for either images or texts."""
    if (images is None) == (texts is None):
        raise _invalid("images", "give exactly one of images and texts")
    if isinstance(texts, str):
        texts = [texts]
    request = pb.EncodeRequest(model_name=model, texts=texts or ())
    if images is not None:
        request.images.CopyFrom(image_input(images))
    return request


def decode_request(model: str, latents: Any, output_format: str) -> pb.DecodeRequest:
    """A DecodeRequest for latents of shape (N, D) or (D,)."""
    array = np.asarray(latents, dtype=np.float32)
    array = array[None] if array.ndim == 1 else array
    return pb.DecodeRequest(
        model_name=model,
        latents=from_numpy(array),
        output_format=output_format_code(output_format),
    )


def reconstruct_request(model: str, images: Any, output_format: str) -> pb.ReconstructRequest:
    """A ReconstructRequest."""
    return pb.ReconstructRequest(
        model_name=model,
        images=image_input(images),
        output_format=output_format_code(output_format),
    )


def complete_request(
    model: str,
    images: Any,
    mask: Any,
    *,
    class_labels: int | Sequence[int] | None,
    seed: int | None,
    output_format: str,
    sampling: Sampling,
) -> pb.CompleteRequest:
    """A CompleteRequest; the mask may be (N, 1, H, W), (N, H, W) or (H, W)."""
    return pb.CompleteRequest(
        model_name=model,
        images=image_input(images),
        mask=_mask(mask),
        class_labels=_labels(class_labels),
        seed=_seed(seed),
        output_format=output_format_code(output_format),
        sampler=sampling.to_proto(),
    )


def image_input(images: Any) -> tensor_pb2.ImageInput:
    """Images as an ImageInput: a list of encoded files, or an array (see normalize_images)."""
    if isinstance(images, bytes) or (
        isinstance(images, Sequence) and images and all(isinstance(i, bytes) for i in images)
    ):
        return tensor_pb2.ImageInput(pngs=[images] if isinstance(images, bytes) else images)
    try:
        return tensor_pb2.ImageInput(tensor=from_numpy(normalize_images(images)))
    except (ValueError, TypeError) as exc:
        raise _invalid("images", str(exc)) from exc


def output_format_code(output_format: str) -> int:
    """The OutputFormat value for "tensor" or "png"."""
    try:
        return _FORMATS[output_format]
    except KeyError:
        problem = f"must be 'tensor' or 'png', got {output_format!r}"
        raise _invalid("output_format", problem) from None


def _mask(mask: Any) -> tensor_pb2.Tensor:
    array = np.asarray(mask)
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    try:
        return from_numpy(array)
    except TensorFormatError:
        return from_numpy(array.astype(np.float32))


def _labels(class_labels: int | Sequence[int] | None) -> list[int]:
    if class_labels is None:
        return []
    if isinstance(class_labels, (int, np.integer)):
        return [int(class_labels)]
    return [int(label) for label in class_labels]


def _seed(seed: int | None) -> int | None:
    if seed is not None and not 0 <= seed < 2**64:
        raise _invalid("seed", f"must be in [0, 2**64), got {seed}")
    return seed


def _invalid(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {problem}", violations=[FieldViolation(field, problem)])
