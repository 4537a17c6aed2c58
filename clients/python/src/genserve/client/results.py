"""What client calls return: small dataclasses of numpy arrays, texts and names.

Each `from_proto` is the one place a response message becomes plain Python.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from genserve.client.tensors import to_numpy
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import tensor_pb2

_CALL_NAMES = {
    pb.MODEL_CALL_GENERATE: "Generate",
    pb.MODEL_CALL_GENERATE_STREAM: "GenerateStream",
    pb.MODEL_CALL_ENCODE: "Encode",
    pb.MODEL_CALL_DECODE: "Decode",
    pb.MODEL_CALL_RECONSTRUCT: "Reconstruct",
    pb.MODEL_CALL_COMPLETE: "Complete",
}


def call_name(call: int) -> str:
    """The RPC name for a ModelCall value, e.g. MODEL_CALL_GENERATE -> "Generate"."""
    return _CALL_NAMES.get(call, pb.ModelCall.Name(call) if call in pb.ModelCall.values() else "")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model's summary.

    Attributes:
        name: The model's name, e.g. "vae-fashion".
        family: The model family, e.g. "vae".
        version: The version being served.
        calls: The RPC names the model supports, e.g. ["Generate", "Encode"].
        labels: Class names indexed by class label; empty if unconditional.
        latent_dim: The latent width, 0 when the model has none.
        image_shape: (C, H, W) for image models, () otherwise.
        max_num_samples: The most samples one request may ask for.
    """

    name: str
    family: str
    version: str
    calls: list[str]
    labels: list[str]
    latent_dim: int
    image_shape: tuple[int, ...]
    max_num_samples: int

    @classmethod
    def from_proto(cls, info: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=info.name,
            family=info.family,
            version=info.version,
            calls=[call_name(c) for c in info.calls],
            labels=list(info.labels),
            latent_dim=info.latent_dim,
            image_shape=tuple(info.image_shape),
            max_num_samples=info.max_num_samples,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "image_shape": list(self.image_shape)}


@dataclass(frozen=True)
class TensorSignature:
    """One input or output of a model graph; -1 in `shape` marks a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GraphSignature:
    """One ONNX graph of a model, e.g. "encoder", with its inputs and outputs."""

    name: str
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]


@dataclass(frozen=True)
class ModelDescription:
    """A model's full description.

    Attributes:
        info: The summary also returned by `list_models`.
        graphs: The model's graphs and their tensor signatures.
        config: The model's config file: batching, sampler defaults, model card.
    """

    info: ModelInfo
    graphs: list[GraphSignature]
    config: dict[str, Any]

    @classmethod
    def from_proto(cls, response: pb.DescribeModelResponse) -> ModelDescription:
        def signatures(items: Any) -> list[TensorSignature]:
            return [TensorSignature(s.name, _dtype_name(s.dtype), tuple(s.shape)) for s in items]

        graphs = [
            GraphSignature(g.name, signatures(g.inputs), signatures(g.outputs))
            for g in response.graphs
        ]
        config = json.loads(response.config_json) if response.config_json else {}
        return cls(ModelInfo.from_proto(response.info), graphs, config)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "info": self.info.to_dict(),
            "graphs": [asdict(g) for g in self.graphs],
            "config": self.config,
        }


@dataclass(frozen=True)
class TextStats:
    """How one generated text ended and what it took.

    Attributes:
        finish_reason: "stop" (it reached a stop sequence, left out of the
            text) or "length" (max_new_tokens, or the model's context).
        prompt_tokens: Tokens in the prompt.
        completion_tokens: Tokens generated.
    """

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_proto(cls, stats: pb.TextStats) -> TextStats:
        reason = pb.FinishReason.Name(stats.finish_reason).removeprefix("FINISH_REASON_")
        return cls(reason.lower(), stats.prompt_tokens, stats.completion_tokens)


@dataclass
class GenerateResult:
    """Generated samples.

    Attributes:
        model_name: The model that produced them.
        model_version: Its version.
        seed: The seed used; the same request with it gives the same samples.
        images: float32 (N, C, H, W) in [0, 1] for image models in tensor format.
        pngs: One PNG file per image when PNG output was asked for.
        texts: One text per sample, for text models.
        latents: float32 (N, latent_dim), the codes the images came from, for
            latent models; pass them back as `latents=` to regenerate or edit.
        text_stats: For text models, how each text ended and its token counts.
    """

    model_name: str
    model_version: str
    seed: int
    images: np.ndarray | None = None
    pngs: list[bytes] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    latents: np.ndarray | None = None
    text_stats: list[TextStats] = field(default_factory=list)

    @classmethod
    def from_proto(cls, r: pb.GenerateResponse | pb.CompleteResponse) -> GenerateResult:
        images, pngs = _images(r.images)
        texts = list(getattr(r, "texts", ()))
        has_latents = isinstance(r, pb.GenerateResponse) and r.HasField("latents")
        latents = _array(r.latents) if has_latents else None
        stats = [TextStats.from_proto(s) for s in getattr(r, "text_stats", ())]
        return cls(r.model_name, r.model_version, r.seed, images, pngs, texts, latents, stats)


@dataclass
class ImagesResult:
    """Images from Decode or Reconstruct; `images` or `pngs` is set, as asked."""

    model_name: str
    model_version: str
    images: np.ndarray | None = None
    pngs: list[bytes] = field(default_factory=list)

    @classmethod
    def from_proto(cls, r: pb.DecodeResponse | pb.ReconstructResponse) -> ImagesResult:
        return cls(r.model_name, r.model_version, *_images(r.images))


@dataclass
class EncodeResult:
    """Codes of encoded inputs.

    Attributes:
        model_name: The model that encoded.
        model_version: Its version.
        embeddings: float32 (N, D): the posterior mean or the embedding.
        log_variance: float32 (N, D) for variational models, else None.
    """

    model_name: str
    model_version: str
    embeddings: np.ndarray
    log_variance: np.ndarray | None = None

    @classmethod
    def from_proto(cls, r: pb.EncodeResponse) -> EncodeResult:
        log_variance = _array(r.log_variance) if r.HasField("log_variance") else None
        return cls(r.model_name, r.model_version, _array(r.embeddings), log_variance)


@dataclass(frozen=True)
class StepProgress:
    """A stream event: the sampler finished `step` of `total_steps`."""

    step: int
    total_steps: int


@dataclass(frozen=True)
class TokenDelta:
    """A stream event: new text for sample `sample_index`."""

    sample_index: int
    text: str


@dataclass
class Preview:
    """A stream event: the partial images so far, one per sample.

    Attributes:
        images: float32 (N, C, H, W) in [0, 1], as in `GenerateResult.images`,
            when the stream asked for tensors (the default).
        pngs: One PNG file per image when PNG output was asked for.
        step: The sampler step the images were taken after: that of the last
            StepProgress before this preview; 0 when none came before it.
    """

    images: np.ndarray | None = None
    pngs: list[bytes] = field(default_factory=list)
    step: int = 0


StreamEvent = StepProgress | TokenDelta | Preview | GenerateResult


def stream_event(response: pb.GenerateStreamResponse, step: int = 0) -> StreamEvent | None:
    """One streamed response as an event; None for an event this client does not know.

    Args:
        response: The response.
        step: The step of the stream's last progress event, given to a preview.
    """
    kind = response.WhichOneof("event")
    if kind == "progress":
        return StepProgress(response.progress.step, response.progress.total_steps)
    if kind == "token":
        return TokenDelta(response.token.sample_index, response.token.text)
    if kind == "preview":
        return Preview(*_images(response.preview), step=step)
    if kind == "result":
        return GenerateResult.from_proto(response.result)
    return None


class StreamDecoder:
    """Turns one stream's responses into events, in order; a preview gets its step.

    Both clients use one per call:

        decode = StreamDecoder()
        for response in call:
            event = decode(response)
    """

    def __init__(self) -> None:
        self._step = 0

    def __call__(self, response: pb.GenerateStreamResponse) -> StreamEvent | None:
        event = stream_event(response, self._step)
        if isinstance(event, StepProgress):
            self._step = event.step
        return event


def _images(images: tensor_pb2.Images) -> tuple[np.ndarray | None, list[bytes]]:
    tensor = _array(images.tensor) if images.HasField("tensor") else None
    return tensor, list(images.pngs)


def _array(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """A writable copy, so callers may modify results in place."""
    return to_numpy(tensor).copy()


def _dtype_name(code: int) -> str:
    name = tensor_pb2.DataType.Name(code) if code in tensor_pb2.DataType.values() else str(code)
    return name.removeprefix("DATA_TYPE_").lower()
