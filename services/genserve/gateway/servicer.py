"""The gateway's ModelService: route by model name and forward.

Deadlines pass on as the time the caller has left; cancellation passes on
because a cancelled handler cancels its backend call; the request id and
authorization pass on as metadata. A call that is safe to repeat (anything but
an unseeded Generate or Complete, and GenerateStream before its first event)
is retried on UNAVAILABLE, on another backend when there is one.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from genserve.gateway.backends import Backend, BackendPool
from genserve.runtime import metrics
from genserve.runtime.errors import Forwarded, InvalidArgument, NotFound, Unavailable
from genserve.runtime.interceptors import REQUEST_ID_KEY, request_id
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

logger = logging.getLogger(__name__)

_FORWARDED_METADATA = ("authorization",)
_RETRY_BACKOFF_S = (0.05, 0.2, 0.5)


def _safe_to_retry(method: str, request) -> bool:
    """Unseeded sampling would give a different answer on a retry."""
    if method in ("Generate", "Complete"):
        return request.HasField("seed")
    return True


def _forwarded(exc: grpc.aio.AioRpcError) -> Forwarded:
    return Forwarded(exc.code(), exc.details() or exc.code().name, exc.trailing_metadata() or ())


class GatewayServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService that forwards every model call to a backend that serves it.

    Args:
        pool: the backends and what they serve.
        attempts: the most tries of a call that is safe to retry.
    """

    def __init__(self, pool: BackendPool, attempts: int = 3) -> None:
        self._pool = pool
        self._attempts = max(1, attempts)

    def _backends(self, model_name: str) -> list[Backend]:
        if not model_name:
            raise InvalidArgument("model_name", "is required")
        found = self._pool.route(model_name)
        if found:
            return found
        if any(model_name in b.models for b in self._pool.backends):
            raise Unavailable(f"every backend serving model {model_name!r} is unhealthy")
        raise NotFound(model_name, sorted(self._pool.model_names()))

    @staticmethod
    def _call_options(context) -> dict:
        incoming = dict(context.invocation_metadata() or ())
        metadata = [(REQUEST_ID_KEY, request_id.get())]
        metadata += [(k, incoming[k]) for k in _FORWARDED_METADATA if k in incoming]
        return {"timeout": context.time_remaining(), "metadata": metadata}

    async def _unary(self, method: str, model_name: str, request, context):
        """Forward one unary call, retrying on UNAVAILABLE when that is safe."""
        backends = self._backends(model_name)
        attempts = self._attempts if _safe_to_retry(method, request) else 1
        for attempt in range(attempts):
            backend = backends[attempt % len(backends)]
            try:
                response = await getattr(backend.stub, method)(
                    request, **self._call_options(context)
                )
            except grpc.aio.AioRpcError as exc:
                metrics.BACKEND_REQUESTS.labels(backend=backend.target, code=exc.code().name).inc()
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                    raise _forwarded(exc) from None
                if len(backends) > 1:
                    self._pool.mark_failed(backend)
                logger.info("retrying %s on UNAVAILABLE from %s", method, backend.target)
                await asyncio.sleep(_RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)])
            else:
                metrics.BACKEND_REQUESTS.labels(backend=backend.target, code="OK").inc()
                return response
        raise AssertionError("unreachable")

    async def ListModels(self, request, context):
        models = [
            m for m in self._pool.models() if not request.family or m.family == request.family
        ]
        return pb.ListModelsResponse(models=models)

    async def DescribeModel(self, request, context):
        return await self._unary("DescribeModel", request.model_name, request, context)

    async def Generate(self, request, context):
        return await self._unary("Generate", request.model_name, request, context)

    async def Encode(self, request, context):
        return await self._unary("Encode", request.model_name, request, context)

    async def Decode(self, request, context):
        return await self._unary("Decode", request.model_name, request, context)

    async def Reconstruct(self, request, context):
        return await self._unary("Reconstruct", request.model_name, request, context)

    async def Complete(self, request, context):
        return await self._unary("Complete", request.model_name, request, context)

    async def GenerateStream(self, request, context):
        backends = self._backends(request.request.model_name)
        attempts = self._attempts if _safe_to_retry("Generate", request.request) else 1
        for attempt in range(attempts):
            backend = backends[attempt % len(backends)]
            sent = 0
            try:
                call = backend.stub.GenerateStream(request, **self._call_options(context))
                async for event in call:
                    sent += 1
                    yield event
            except grpc.aio.AioRpcError as exc:
                metrics.BACKEND_REQUESTS.labels(backend=backend.target, code=exc.code().name).inc()
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and sent == 0
                if not retry or attempt + 1 == attempts:
                    raise _forwarded(exc) from None
                await asyncio.sleep(_RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)])
            else:
                metrics.BACKEND_REQUESTS.labels(backend=backend.target, code="OK").inc()
                return
