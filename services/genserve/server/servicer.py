"""The ModelService servicer of a family process: thin, one method per RPC.

Each method finds the model, converts the request to plain Python, awaits the
model and converts the result back. Errors are raised, never returned; the
error interceptor maps them to status codes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging

import grpc
import numpy as np

from genserve.client import tensors
from genserve.runtime import errors, metrics
from genserve.runtime.limits import Limits
from genserve.runtime.model import (
    COMPLETE,
    DECODE,
    ENCODE,
    GENERATE,
    GENERATE_STREAM,
    RECONSTRUCT,
    ServedModel,
    StreamEvent,
    deadline_from,
)
from genserve.runtime.registry import ModelRegistry
from genserve.runtime.tokens import FinishReason
from genserve.server import convert
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc, tensor_pb2

logger = logging.getLogger(__name__)

_CALL_ENUM = {
    GENERATE: pb.MODEL_CALL_GENERATE,
    GENERATE_STREAM: pb.MODEL_CALL_GENERATE_STREAM,
    ENCODE: pb.MODEL_CALL_ENCODE,
    DECODE: pb.MODEL_CALL_DECODE,
    RECONSTRUCT: pb.MODEL_CALL_RECONSTRUCT,
    COMPLETE: pb.MODEL_CALL_COMPLETE,
}
_DTYPE_ENUM = {
    "float32": tensor_pb2.DATA_TYPE_FLOAT32,
    "float16": tensor_pb2.DATA_TYPE_FLOAT16,
    "int64": tensor_pb2.DATA_TYPE_INT64,
    "int32": tensor_pb2.DATA_TYPE_INT32,
    "uint8": tensor_pb2.DATA_TYPE_UINT8,
    "bool": tensor_pb2.DATA_TYPE_BOOL,
}


def model_info(model: ServedModel) -> pb.ModelInfo:
    """The ListModels entry of a served model."""
    return pb.ModelInfo(
        name=model.name,
        family=model.family,
        version=model.config.version,
        calls=[_CALL_ENUM[c] for c in model.calls],
        labels=list(model.config.labels),
        latent_dim=model.latent_dim,
        image_shape=list(model.image_shape),
        max_num_samples=model.config.max_num_samples,
    )


def _graph_signatures(model: ServedModel) -> list[pb.GraphSignature]:
    def spec(t):
        return pb.TensorSignature(name=t.name, dtype=_DTYPE_ENUM[t.dtype], shape=list(t.shape))

    return [
        pb.GraphSignature(
            name=role, inputs=[spec(t) for t in g.inputs], outputs=[spec(t) for t in g.outputs]
        )
        for role, g in model.config.graphs.items()
    ]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    return deadline_from(context.time_remaining())


def _holding(call: str | None):
    """Run a unary method with the model its request names held for the whole call.

    The method receives the model first; a version swapped out meanwhile is
    closed only after the call ends (`ModelRegistry.use`).
    """

    def wrap(method):
        @functools.wraps(method)
        async def unary(self, request, context):
            async with self._registry.use(request.model_name, call) as model:
                return await method(self, model, request, context)

        return unary

    return wrap


def _holding_stream(call: str):
    """`_holding` for a server-streaming method: the model is held until the stream ends.

    The stream is written with ``context.write`` from a coroutine, not yielded
    from an async generator: when the caller cancels, the cancellation lands
    in this frame, so the method's generator (and the samplers under it) are
    closed at once. gRPC does not close a generator handler that it stops
    while sending; one left to the garbage collector keeps its samples
    running to the end and its model version held.
    """

    def wrap(method):
        @functools.wraps(method)
        async def stream(self, request, context) -> None:
            async with (
                self._registry.use(request.request.model_name, call) as model,
                contextlib.aclosing(method(self, model, request, context)) as events,
            ):
                async for event in events:
                    await context.write(event)

        return stream

    return wrap


class FamilyServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService over the models of one family process.

    Args:
        registry: the models this process serves.
        limits: bounds on what one request may carry.
    """

    def __init__(self, registry: ModelRegistry, limits: Limits | None = None) -> None:
        self._registry = registry
        self._limits = limits or Limits()

    async def ListModels(self, request, context):
        if not self._registry.loaded:  # an empty list would tell a gateway "serves nothing"
            raise errors.Unavailable("models are still loading; retry shortly")
        models = [
            model_info(m)
            for m in self._registry.models()
            if not request.family or m.family == request.family
        ]
        return pb.ListModelsResponse(models=models)

    @_holding(None)
    async def DescribeModel(self, model, request, context):
        return pb.DescribeModelResponse(
            info=model_info(model),
            graphs=_graph_signatures(model),
            config_json=json.dumps(model.config.to_json(), sort_keys=True),
        )

    @_holding(GENERATE)
    async def Generate(self, model, request, context):
        convert.check_output_format(request.output_format)
        params = convert.generate_params(request, model, _deadline(context))
        output = await model.generate(params)
        return await self._generate_response(model, params.seed, output, request.output_format)

    @_holding_stream(GENERATE_STREAM)
    async def GenerateStream(self, model, request, context):
        inner = request.request
        convert.check_output_format(inner.output_format)
        if request.preview_every_steps < 0:
            raise convert.InvalidArgument(
                "preview_every_steps", f"must be >= 0, got {request.preview_every_steps}"
            )
        params = convert.generate_params(inner, model, _deadline(context))
        events = model.generate_stream(params, request.preview_every_steps)
        async with contextlib.aclosing(events):
            async for event in events:
                yield await self._stream_response(model, params.seed, inner, event)

    async def _stream_response(
        self, model, seed: int, inner: pb.GenerateRequest, event: StreamEvent
    ) -> pb.GenerateStreamResponse:
        """The message of one stream event."""
        if event.result is not None:
            result = await self._generate_response(model, seed, event.result, inner.output_format)
            return pb.GenerateStreamResponse(result=result)
        if event.progress is not None:
            step, total = event.progress
            return pb.GenerateStreamResponse(progress=pb.StepProgress(step=step, total_steps=total))
        if event.token is not None:
            index, text = event.token
            return pb.GenerateStreamResponse(token=pb.TokenDelta(sample_index=index, text=text))
        preview = await convert.images_out(event.preview, inner.output_format)
        return pb.GenerateStreamResponse(preview=preview)

    async def _generate_response(self, model, seed, output, output_format) -> pb.GenerateResponse:
        response = pb.GenerateResponse(
            model_name=model.name, model_version=model.config.version, seed=seed
        )
        if output.images is not None:
            response.images.CopyFrom(await convert.images_out(output.images, output_format))
            metrics.SAMPLES_GENERATED.labels(model=model.name).inc(len(output.images))
        if output.latents is not None:
            response.latents.CopyFrom(tensors.from_numpy(output.latents))
        if output.texts is not None:
            response.texts.extend(output.texts)
            metrics.SAMPLES_GENERATED.labels(model=model.name).inc(len(output.texts))
        for stats in output.text_stats or ():
            response.text_stats.add(
                finish_reason=_FINISH_REASONS[stats.finish_reason],
                prompt_tokens=stats.prompt_tokens,
                completion_tokens=stats.completion_tokens,
            )
        return response

    @_holding(ENCODE)
    async def Encode(self, model, request, context):
        has_images = request.HasField("images")
        if not has_images and not request.texts and not model.image_shape:
            raise convert.InvalidArgument("texts", "must hold at least one text")
        if has_images == bool(request.texts):
            raise convert.InvalidArgument("images", "set exactly one of images and texts")
        if model.image_shape and not has_images:
            raise convert.InvalidArgument("texts", f"model {model.name} encodes images, not texts")
        if not model.image_shape and has_images:
            raise convert.InvalidArgument("images", f"model {model.name} encodes texts, not images")
        images = (
            await convert.images("images", request.images, model, self._limits)
            if has_images
            else None
        )
        encoding = await model.encode(images, list(request.texts), _deadline(context))
        response = pb.EncodeResponse(
            model_name=model.name,
            model_version=model.config.version,
            embeddings=tensors.from_numpy(encoding.embeddings),
        )
        if encoding.log_variance is not None:
            response.log_variance.CopyFrom(tensors.from_numpy(encoding.log_variance))
        return response

    @_holding(DECODE)
    async def Decode(self, model, request, context):
        convert.check_output_format(request.output_format)
        if not request.HasField("latents"):
            raise convert.InvalidArgument("latents", "is required")
        latents = convert.latents("latents", request.latents, model, rows=None)
        output = await model.decode(latents, _deadline(context))
        return pb.DecodeResponse(
            model_name=model.name,
            model_version=model.config.version,
            images=await convert.images_out(output.images, request.output_format),
        )

    @_holding(RECONSTRUCT)
    async def Reconstruct(self, model, request, context):
        convert.check_output_format(request.output_format)
        if not request.HasField("images"):
            raise convert.InvalidArgument("images", "is required")
        images = await convert.images("images", request.images, model, self._limits)
        output = await model.reconstruct(images, _deadline(context))
        return pb.ReconstructResponse(
            model_name=model.name,
            model_version=model.config.version,
            images=await convert.images_out(output.images, request.output_format),
        )

    @_holding(COMPLETE)
    async def Complete(self, model, request, context):
        convert.check_output_format(request.output_format)
        images = await convert.images("images", request.images, model, self._limits)
        mask = convert.finite_float32("mask", convert.tensor_field("mask", request.mask))
        n = images.shape[0]
        shape = (1, *images.shape[2:])
        if mask.ndim != 4 or mask.shape[0] not in (1, n) or tuple(mask.shape[1:]) != shape:
            raise convert.InvalidArgument(
                "mask.shape",
                f"must be (1 or {n}, {', '.join(map(str, shape))}), got {list(mask.shape)}",
            )
        if not np.isin(mask, (0.0, 1.0)).all():
            raise convert.InvalidArgument("mask", "every value must be 0 (unknown) or 1 (known)")
        params = convert.GenerateParams(
            num_samples=n,
            seed=convert.seed_of(request),
            class_labels=convert.class_labels("class_labels", request.class_labels, model, n),
            sampler=convert.sampler(request.sampler),
            deadline=_deadline(context),
        )
        output = await model.complete(images, mask, params)
        return pb.CompleteResponse(
            model_name=model.name,
            model_version=model.config.version,
            seed=params.seed,
            images=await convert.images_out(output.images, request.output_format),
        )


_FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
