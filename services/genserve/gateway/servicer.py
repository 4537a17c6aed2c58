"""The gateway's ModelService: route by model name and forward.

Deadlines pass on as the time the caller has left, but one try of a unary
call never takes longer than `attempt_timeout_s`, so a call without a
deadline cannot hang on a backend that stopped answering. A stream is not
cut by that time (a long generation may stream for minutes); keepalive ends
one whose backend froze. Cancellation passes on because a cancelled
handler cancels its backend call; the request id and authorization pass on as
metadata. The gateway draws a seed for a Generate, Complete or GenerateStream
that has none (the response returns it), so every call is safe to repeat
(GenerateStream only before its first event) and is retried, on another
backend when there is one, after UNAVAILABLE or CANCELLED from the backend
(one shutting down) or after a try that ran out of its own time while the
caller still has some. Both count against the backend
(see `Backend.failed`); any other answer clears its count.

Images are checked at this edge too: the PNG headers, the image count and the
pixel bound of a request (cheap, nothing decoded) against the model's shape
as its backend reported it, so a flood of PNG bombs is refused here and never
crosses to a family service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from genserve.gateway.backends import Backend, BackendPool
from genserve.runtime import metrics
from genserve.runtime.errors import Forwarded, InvalidArgument, NotFound, Unavailable
from genserve.runtime.limits import Limits
from genserve.runtime.priority import PRIORITY_KEY, call_priority
from genserve.server import convert
from genserve.server.interceptors import REQUEST_ID_KEY, request_id
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

logger = logging.getLogger(__name__)

_FORWARDED_METADATA = ("authorization",)
_RETRY_BACKOFF_S = (0.05, 0.2, 0.5)
_BACKEND_GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
"""Codes that say the backend, not the call, failed. A CANCELLED that reaches the
gateway while its own caller still waits was the backend's doing (it shut down
with the call in flight): the call never finished there and may go elsewhere."""


@dataclass(frozen=True)
class ForwardConfig:
    """How the gateway forwards one call to the backends."""

    attempts: int = 3
    """The most tries of a call (GenerateStream: only before its first event)."""
    attempt_timeout_s: float = 30.0
    """The longest one try of a unary call may take: a call without a deadline gets
    this per try, one with a deadline the smaller of this and the time it has left.
    Streams are not cut by it."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if not self.attempt_timeout_s > 0:
            raise ValueError(f"attempt_timeout_s must be > 0, got {self.attempt_timeout_s}")


def _seeded(request) -> None:
    """Draw a seed for a sampling request that has none.

    The backend then samples from it and returns it, so the result can be
    replayed, and a retry on another backend gives the same answer, which
    makes every Generate and Complete safe to repeat.
    """
    if not request.HasField("seed"):
        request.seed = secrets.randbits(63)


def _forwarded(exc: grpc.aio.AioRpcError) -> Forwarded:
    return Forwarded(exc.code(), exc.details() or exc.code().name, exc.trailing_metadata() or ())


def _routable(pool: BackendPool, model_name: str) -> list[Backend]:
    """Healthy backends for the model, or the error that says why there are none."""
    if not model_name:
        raise InvalidArgument("model_name", "is required")
    found = pool.route(model_name)
    if found:
        return found
    if any(model_name in b.models for b in pool.backends):
        raise Unavailable(f"every backend serving model {model_name!r} is unhealthy")
    raise NotFound(model_name, sorted(pool.model_names()))


def _metadata(context) -> list[tuple[str, str]]:
    incoming = dict(context.invocation_metadata() or ())
    # The call's priority as admitted here (its x-priority, capped by its API key).
    priority = call_priority.get().name.lower()
    metadata = [(REQUEST_ID_KEY, request_id.get()), (PRIORITY_KEY, priority)]
    return metadata + [(k, incoming[k]) for k in _FORWARDED_METADATA if k in incoming]


class _Tries:
    """The tries of one forwarded call: where each goes, how long it may take,
    and whether another follows a failure.

    Args:
        pool: the backends.
        model_name: the model the call is for.
        config: tries and per-try time.
        context: the incoming call, for its deadline.
        capped: whether a try is cut at the per-try time; streams are not (they
            may run long, and keepalive ends one on a frozen backend).
    """

    def __init__(
        self,
        pool: BackendPool,
        model_name: str,
        config: ForwardConfig,
        *,
        context,
        capped: bool = True,
    ) -> None:
        self._pool = pool
        self._model_name = model_name
        self._attempt_timeout_s = config.attempt_timeout_s
        self._left = config.attempts
        self._context = context
        self._tried: list[Backend] = []
        self._cap = capped
        self._capped = False

    def pick(self) -> tuple[Backend, float]:
        """The next try's backend (one not tried yet when there is one) and timeout."""
        found = _routable(self._pool, self._model_name)
        backend = next((b for b in found if b not in self._tried), found[0])
        self._tried.append(backend)
        self._left -= 1
        remaining = self._context.time_remaining()
        self._capped = self._cap and (remaining is None or remaining > self._attempt_timeout_s)
        return backend, self._attempt_timeout_s if self._capped else remaining

    def succeeded(self, backend: Backend) -> None:
        metrics.child(metrics.BACKEND_REQUESTS, backend.target, "OK").inc()
        backend.answered()

    async def failed(
        self, backend: Backend, exc: grpc.aio.AioRpcError, *, may_retry: bool = True
    ) -> None:
        """Record a failed try; return after a short pause if another should follow, else raise.

        Raises:
            Forwarded: the backend's error, when no try follows.
        """
        code = exc.code()
        metrics.child(metrics.BACKEND_REQUESTS, backend.target, code.name).inc()
        blamed = self._blame(backend, code)
        if not (blamed and may_retry and self._left > 0):
            raise _forwarded(exc) from None
        logger.info("retrying a call on %s from %s", code.name, backend.target)
        pause_s = _RETRY_BACKOFF_S[min(len(self._tried), len(_RETRY_BACKOFF_S)) - 1]
        await asyncio.sleep(pause_s)

    def _blame(self, backend: Backend, code: grpc.StatusCode) -> bool:
        """Whether the failure is the backend's, counting it for ejection if so.

        A try that ran out of the caller's own time says nothing about the
        backend; one that ran out of the gateway's per-try time does.
        """
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if self._capped:
                backend.failed(code)
            return self._capped
        if code in _BACKEND_GONE:
            backend.failed(code)
            return True
        backend.answered()
        return False


_SEEDED = frozenset({"Generate", "Complete"})
"""Calls that sample: the gateway draws their seed when the caller gave none."""
_IMAGES_CHECKED = frozenset({"Encode", "Reconstruct", "Complete"})
"""Calls whose images are checked here before they are forwarded."""


class Forwarder:
    """Routes and forwards genserve calls, whatever protocol the caller spoke.

    The one place that knows how a call reaches a backend: routing by model
    name, the per-try time and the deadline, retries, seeds drawn for sampling
    calls, image headers checked at the edge, request ids and authorization
    passed on. Both the gateway's ModelService and its Open Inference Protocol
    service (`oip.py`) call it with genserve requests.

    Args:
        pool: the backends and what they serve.
        config: tries and per-try time.
        limits: bounds on what one request may carry.
    """

    def __init__(
        self, pool: BackendPool, config: ForwardConfig | None = None, limits: Limits | None = None
    ) -> None:
        self.pool = pool
        self._config = config or ForwardConfig()
        self._limits = limits or Limits()

    def model_info(self, model_name: str) -> pb.ModelInfo:
        """What a healthy backend reported of the model.

        Raises:
            NotFound: no backend serves it.
            Unavailable: every backend that serves it is unhealthy.
        """
        return _routable(self.pool, model_name)[0].models[model_name]

    async def call(self, method: str, request, context):
        """Forward one unary ModelService call (e.g. "Generate") to a backend serving its model.

        Args:
            method: the ModelService method.
            request: its request message; a sampling call without a seed gets one here.
            context: the incoming call, for its deadline and metadata.
        """
        if method in _SEEDED:
            _seeded(request)
        if method in _IMAGES_CHECKED:
            self._check_images(request.model_name, request)
        return await self._unary(method, request.model_name, request, context)

    async def stream(
        self, request: pb.GenerateStreamRequest, context
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        """Forward a GenerateStream and yield its events; retried only before the first.

        Close the iterator (`contextlib.aclosing`) when done with it: closing
        it cancels the backend's stream at once.
        """
        inner = request.request
        _seeded(inner)
        tries = self._tries(inner.model_name, context, capped=False)
        while True:
            backend, timeout_s = tries.pick()
            sent = 0
            call = backend.stub.GenerateStream(
                request, timeout=timeout_s, metadata=_metadata(context)
            )
            try:
                async for event in call:
                    sent += 1
                    yield event
            except grpc.aio.AioRpcError as exc:
                await tries.failed(backend, exc, may_retry=sent == 0)
            else:
                tries.succeeded(backend)
                return
            finally:  # a caller that left (the iterator closed) ends the backend's stream at once
                call.cancel()

    def _check_images(self, model_name: str, request) -> None:
        """Refuse bad PNG headers, counts or pixels before the request is forwarded."""
        if not request.HasField("images"):
            return
        serving = (b for b in self.pool.backends if b.healthy and model_name in b.models)
        info = next((b.models[model_name] for b in serving), None)
        if info is not None and len(info.image_shape) == 3:
            shape = tuple(info.image_shape)
            convert.png_headers("images", request.images, shape, info.max_num_samples, self._limits)

    def _tries(self, model_name: str, context, *, capped: bool = True) -> _Tries:
        return _Tries(self.pool, model_name, self._config, context=context, capped=capped)

    async def _unary(self, method: str, model_name: str, request, context):
        """Forward one unary call, retrying when that is safe and may help."""
        tries = self._tries(model_name, context)
        while True:
            backend, timeout_s = tries.pick()
            try:
                response = await backend.unary(
                    method, request, timeout_s=timeout_s, metadata=_metadata(context)
                )
            except grpc.aio.AioRpcError as exc:
                await tries.failed(backend, exc)
            else:
                tries.succeeded(backend)
                return response


class GatewayServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService that forwards every model call to a backend that serves it.

    Args:
        pool: the backends and what they serve.
        config: tries and per-try time.
        limits: bounds on what one request may carry.
    """

    def __init__(
        self, pool: BackendPool, config: ForwardConfig | None = None, limits: Limits | None = None
    ) -> None:
        self.forwarder = Forwarder(pool, config, limits)

    async def ListModels(self, request, context):
        models = [
            m
            for m in self.forwarder.pool.models()
            if not request.family or m.family == request.family
        ]
        return pb.ListModelsResponse(models=models)

    async def DescribeModel(self, request, context):
        return await self.forwarder.call("DescribeModel", request, context)

    async def Generate(self, request, context):
        return await self.forwarder.call("Generate", request, context)

    async def Encode(self, request, context):
        return await self.forwarder.call("Encode", request, context)

    async def Decode(self, request, context):
        return await self.forwarder.call("Decode", request, context)

    async def Reconstruct(self, request, context):
        return await self.forwarder.call("Reconstruct", request, context)

    async def Complete(self, request, context):
        return await self.forwarder.call("Complete", request, context)

    async def GenerateStream(self, request, context):
        async with contextlib.aclosing(self.forwarder.stream(request, context)) as events:
            async for event in events:
                await context.write(event)
