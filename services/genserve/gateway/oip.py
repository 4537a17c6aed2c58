"""The gateway's Open Inference Protocol service: KServe v2 gRPC, `inference.GRPCInferenceService`.

The stock `tritonclient[grpc]` and KServe clients call genserve models through
it unchanged. Every model RPC is translated into genserve's own ModelService
request and handed to the gateway's `Forwarder`, so routing, retries,
deadlines, cancellation and drawn seeds are the same as for ModelService
callers; the answer is translated back. Triton's extensions are served too:
ModelConfig, and ModelStreamInfer, where every request may get several
responses (text as it is generated, step progress, previews) and its last one
carries `triton_final_response` = true, as Triton marks a decoupled model's.
ModelStatistics, the repository, shared-memory, trace and log RPCs answer
UNIMPLEMENTED, and ServerMetadata does not advertise them.

On a stream, up to MAX_STREAM_REQUESTS requests run at once (the next is read
when one ends); a request that fails gets an `error_message` response
("[StatusCode.INVALID_ARGUMENT] inputs.prompt: ...") and the stream goes on,
as Triton's does. The tensor mapping of every model kind is in docs/oip.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata

import grpc

from genserve.gateway import oip_models as models
from genserve.gateway.oip_models import CallSpec, ModelSpec
from genserve.gateway.oip_params import (
    FINAL,
    FINAL_EMPTY,
    put_parameter,
    read_parameters,
    triton_priority,
)
from genserve.gateway.oip_tensors import OutputTensor, put_outputs, read_inputs, requested_outputs
from genserve.gateway.servicer import Forwarder
from genserve.inference import grpc_service_pb2 as oip
from genserve.inference import grpc_service_pb2_grpc
from genserve.runtime.errors import GenserveError, InvalidArgument, Unavailable, Unimplemented
from genserve.runtime.limits import Limits, shown
from genserve.runtime.priority import ask_priority
from genserve.server.interceptors import request_id
from genserve.v1 import model_service_pb2 as pb

logger = logging.getLogger(__name__)

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("model_configuration", "parameters")
"""What ServerMetadata advertises: ModelConfig, and request and response parameters."""
MAX_ID_CHARS = 256
"""Longest request id; it is echoed in the response."""
MAX_STREAM_REQUESTS = 16
"""Requests running at once on one ModelStreamInfer stream."""
_STREAM_BACKLOG = 64
"""Responses that may queue for a slow reader; past that, the requests making them wait."""
_END = object()

Emit = Callable[[oip.ModelStreamInferResponse], Awaitable[None]]


@functools.cache
def _version() -> str:
    try:
        return metadata.version("genserve-server")
    except metadata.PackageNotFoundError:
        return "0"


class VersionNotFound(GenserveError):
    """The request names a version of the model that is not the one served."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_name: str, version: str, serving: str) -> None:
        super().__init__(
            f"model {shown(model_name)} version {shown(version, 16)} is not served; "
            f"it serves version {serving}"
        )


@dataclass(frozen=True)
class _Prepared:
    """One checked OIP inference request and the genserve request that does it."""

    request: oip.ModelInferRequest
    model: ModelSpec
    call: CallSpec
    message: object
    """The ModelService request."""
    params: dict
    wanted: frozenset[str] | None
    """The outputs asked for; None for all."""

    def response(
        self, outputs: list[OutputTensor], version: str, *, seed: int | None = None
    ) -> oip.ModelInferResponse:
        """A response carrying the outputs the request asked for."""
        response = oip.ModelInferResponse(
            model_name=self.model.name, model_version=version, id=self.request.id
        )
        put_outputs(response, [o for o in outputs if self.wanted is None or o.name in self.wanted])
        if seed is not None:
            put_parameter(response.parameters, "seed", seed)
        return response


class OipServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over the gateway's backends.

    Args:
        forwarder: the gateway's routing and forwarding.
        limits: bounds on names and images.
    """

    def __init__(self, forwarder: Forwarder, limits: Limits | None = None) -> None:
        self._forwarder = forwarder
        self._limits = limits or Limits()

    def add_to(self, server: grpc.aio.Server) -> str:
        """Register on a server; returns the service's full name."""
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)
        return SERVICE

    # -- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        ready = any(b.healthy for b in self._forwarder.pool.backends)
        return oip.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request, context):
        self._check_name("name", request.name)
        serving = self._forwarder.pool.route(request.name)
        ready = bool(serving) and request.version in ("", serving[0].models[request.name].version)
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(
            name=models.PLATFORM, version=_version(), extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request, context):
        model, version = await self._described(request.name, request.version, context)
        return models.model_metadata(model, version)

    async def ModelConfig(self, request, context):
        model, version = await self._described(request.name, request.version, context)
        return oip.ModelConfigResponse(config=models.model_config(model, version))

    # -- inference -----------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        prepared = self._prepare(request, streaming=False)
        response = await self._forwarder.call(prepared.call.method, prepared.message, context)
        outputs = models.outputs_of(prepared.call, response)
        return prepared.response(outputs, response.model_version, seed=models.seed_of(response))

    async def ModelStreamInfer(self, request_iterator, context):
        responses: asyncio.Queue = asyncio.Queue(_STREAM_BACKLOG)
        room = asyncio.Semaphore(MAX_STREAM_REQUESTS)
        running: set[asyncio.Task] = set()

        async def serve_one(request: oip.ModelInferRequest) -> None:
            try:
                await self._stream_one(request, context, responses.put)
            finally:
                room.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await room.acquire()
                    task = asyncio.create_task(serve_one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:  # the caller sent its last request: finish the running ones
                    await asyncio.wait(set(running))
                await responses.put(_END)
            except Exception as exc:  # e.g. bytes that are no request: ends the stream
                await responses.put(exc)

        reader = asyncio.create_task(read())
        try:
            while (item := await responses.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:  # the caller left or the stream failed: stop every request at once
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _stream_one(self, request: oip.ModelInferRequest, context, emit: Emit) -> None:
        """Serve one request of a stream; its failure becomes an error_message response."""
        try:
            prepared = self._prepare(request, streaming=True)
            if prepared.call.method == "Generate":
                await self._stream_generate(prepared, context, emit)
                return
            response = await self._forwarder.call(prepared.call.method, prepared.message, context)
            outputs = models.outputs_of(prepared.call, response)
            last = prepared.response(outputs, response.model_version)
            await _emit_last(prepared, last, emit)
        except GenserveError as exc:
            await emit(self._stream_error(request, exc.code, exc.message))
        except Exception:
            logger.exception("unexpected error in a ModelStreamInfer request")
            message = f"internal error (request id {request_id.get()}); see the server log"
            await emit(self._stream_error(request, grpc.StatusCode.INTERNAL, message))

    async def _stream_generate(self, prepared: _Prepared, context, emit: Emit) -> None:
        """A Generate as a GenerateStream: each event one response, the result the last."""
        streamed = _Events(prepared)
        stream = pb.GenerateStreamRequest(
            request=prepared.message,
            preview_every_steps=prepared.params.get("preview_every_steps", 0),
        )
        finished = False
        async with contextlib.aclosing(self._forwarder.stream(stream, context)) as events:
            async for event in events:  # read to its end, so the forwarder sees it succeed
                if event.WhichOneof("event") == "result":
                    await _emit_last(prepared, streamed.result(event.result), emit)
                    finished = True
                    continue
                response = streamed.step(event)
                if response is not None:
                    put_parameter(response.parameters, FINAL, False)
                    await emit(oip.ModelStreamInferResponse(infer_response=response))
        if not finished:
            raise Unavailable("the backend's stream ended before its result; retry")

    def _stream_error(
        self, request: oip.ModelInferRequest, code: grpc.StatusCode, message: str
    ) -> oip.ModelStreamInferResponse:
        """An error_message response, in tritonclient's "[StatusCode.X] message" form."""
        name = request.model_name if len(request.model_name) <= self._limits.max_name_chars else ""
        echo = oip.ModelInferResponse(
            model_name=name, id=request.id if len(request.id) <= MAX_ID_CHARS else ""
        )
        return oip.ModelStreamInferResponse(
            error_message=f"[{code}] {message}", infer_response=echo
        )

    # -- requests ------------------------------------------------------------------------------

    def _check_name(self, field: str, name: str) -> None:
        if len(name) > self._limits.max_name_chars:
            raise InvalidArgument(
                field, f"must be at most {self._limits.max_name_chars} characters"
            )

    def _model_info(self, field: str, name: str, version: str) -> pb.ModelInfo:
        """The served model's info, when it serves that version (any, when "").

        Raises:
            NotFound: no backend serves the model, or not that version.
        """
        self._check_name(field, name)
        info = self._forwarder.model_info(name)
        if version and version != info.version:
            raise VersionNotFound(name, version, info.version)
        return info

    async def _described(self, name: str, version: str, context) -> tuple[ModelSpec, str]:
        """The model's OIP view with its exact tensor widths (DescribeModel), and its version.

        Embeddings are as wide as the first output of the model's "encoder"
        graph, and a second output of it is the log-variance.
        """
        self._model_info("name", name, version)
        request = pb.DescribeModelRequest(model_name=name)
        described = await self._forwarder.call("DescribeModel", request, context)
        encoder = next((g for g in described.graphs if g.name == "encoder"), None)
        width = None
        if encoder is not None and encoder.outputs and encoder.outputs[0].shape:
            width = max(int(encoder.outputs[0].shape[-1]), 0) or None
        variational = encoder is not None and len(encoder.outputs) > 1
        model = models.model_spec(
            described.info, self._limits, embedding_dim=width, variational=variational
        )
        return model, described.info.version

    def _prepare(self, request: oip.ModelInferRequest, *, streaming: bool) -> _Prepared:
        """Check an inference request and build the ModelService request that does it.

        Raises:
            InvalidArgument: naming the tensor or parameter.
            NotFound: an unknown model or version.
        """
        if len(request.id) > MAX_ID_CHARS:
            raise InvalidArgument("id", f"must be at most {MAX_ID_CHARS} characters")
        info = self._model_info("model_name", request.model_name, request.model_version)
        model = models.model_spec(info, self._limits)
        if not model.calls:
            raise Unimplemented(model.name, info.family, "ModelInfer", [])
        call = model.call_for(request.parameters)
        specs = call.stream_parameters() if streaming else call.parameters
        params = read_parameters(request.parameters, specs, call.name)
        asked = triton_priority(int(params.get("priority", 0)))
        if asked is not None:  # this request's task only: a stream's others keep theirs
            ask_priority(asked)
        what = f"{call.name} of model {model.name}"
        inputs = read_inputs(request, call.inputs, what)
        wanted = requested_outputs(request, call.outputs, what)
        message = models.genserve_request(model, call, inputs, params)
        return _Prepared(request, model, call, message, params, wanted)


class _Events:
    """Turns one request's GenerateStream events into OIP responses.

    Text arrives as pieces: each response's `text` holds every sample's new
    text ("" for a sample with none), so the pieces of a sample, the last
    response's included, add up to the text ModelInfer returns.
    """

    def __init__(self, prepared: _Prepared) -> None:
        self._prepared = prepared
        self._texts = ["" for _ in range(prepared.message.num_samples)]

    def step(self, event: pb.GenerateStreamResponse) -> oip.ModelInferResponse | None:
        """The response of a token, progress or preview event."""
        kind = event.WhichOneof("event")
        version = self._prepared.model.info.version
        if kind == "token":
            index = event.token.sample_index
            if not 0 <= index < len(self._texts):
                return None
            pieces = [""] * len(self._texts)
            pieces[index] = event.token.text
            self._texts[index] += event.token.text
            return self._prepared.response([OutputTensor.of_texts("text", pieces)], version)
        if kind == "progress":
            response = self._prepared.response([], version)
            put_parameter(response.parameters, "step", event.progress.step)
            put_parameter(response.parameters, "total_steps", event.progress.total_steps)
            return response
        if kind == "preview" and event.preview.HasField("tensor"):
            preview = OutputTensor.of_tensor("images", event.preview.tensor)
            return self._prepared.response([preview], version)
        return None

    def result(self, result: pb.GenerateResponse) -> oip.ModelInferResponse:
        """The last response: the result's outputs, a text output holding what is left."""
        outputs = models.outputs_of(self._prepared.call, result)
        if "text" in self._prepared.call.outputs:
            rest = [
                full[len(sent) :] if full.startswith(sent) else full
                for full, sent in zip(result.texts, self._texts, strict=False)
            ]
            text = OutputTensor.of_texts("text", rest)
            outputs = [text if o.name == "text" else o for o in outputs]
        return self._prepared.response(outputs, result.model_version, seed=result.seed)


async def _emit_last(prepared: _Prepared, last: oip.ModelInferResponse, emit: Emit) -> None:
    """Send a request's last response, marked final; or unmarked, then an empty final one
    when the request asked for that (triton_enable_empty_final_response)."""
    empty_final = prepared.params.get(FINAL_EMPTY, False)
    put_parameter(last.parameters, FINAL, not empty_final)
    await emit(oip.ModelStreamInferResponse(infer_response=last))
    if empty_final:
        final = oip.ModelInferResponse(
            model_name=last.model_name, model_version=last.model_version, id=last.id
        )
        put_parameter(final.parameters, FINAL, True)
        await emit(oip.ModelStreamInferResponse(infer_response=final))
