"""The server interceptor: errors to status codes, per-RPC metrics, request ids.

Every RPC of a genserve process passes through `ServingInterceptor`:

- a GenserveError becomes its status code, its message and rich details
  (google.rpc.Status in the `grpc-status-details-bin` trailer);
- any other exception becomes INTERNAL with a generic message, and the
  traceback goes to the log with the request id;
- the request id comes from the `x-request-id` metadata or is made here, is
  set in a context variable for logs and forwarding, and is sent back;
- requests, durations and in-flight counts are recorded with a bounded
  `model` label (unknown names become "unknown").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Callable

import grpc

from genserve.runtime import metrics
from genserve.runtime.errors import Cancelled, GenserveError, rich_status

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

KnownModels = Callable[[], set[str]]


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def _model_of(request, known: KnownModels) -> str:
    name = getattr(request, "model_name", None)
    if name is None and hasattr(request, "request"):
        name = getattr(request.request, "model_name", None)
    if not name:
        return ""
    return name if name in known() else "unknown"


def _with_id(trailer: tuple) -> tuple:
    return (*trailer, (REQUEST_ID_KEY, request_id.get()))


async def _abort(context, exc: BaseException, method: str) -> None:
    """Abort the RPC with the status the exception maps to."""
    if isinstance(exc, GenserveError):
        await context.abort(exc.code, exc.message, trailing_metadata=_with_id(exc.trailer()))
    logger.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id.get()}); see the server log",
        trailing_metadata=_with_id(rich_status(grpc.StatusCode.INTERNAL, "internal error", [])),
    )


def _code_name(context, failed: BaseException | None) -> str:
    if isinstance(failed, GenserveError):
        return failed.code.name
    if failed is not None:
        return "INTERNAL"
    code = context.code()
    if code is None or code == 0:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code).name


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """Maps errors, records metrics and carries request ids for every RPC.

    Args:
        known_models: returns the names that may be used as metric labels.
    """

    def __init__(self, known_models: KnownModels) -> None:
        self._known = known_models

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        incoming = dict(handler_call_details.invocation_metadata or ())
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=self._wrap_unary(handler.unary_unary, method, incoming)
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=self._wrap_stream(handler.unary_stream, method, incoming)
            )
        return handler

    @contextlib.asynccontextmanager
    async def _serving(self, method: str, request, context, incoming: dict):
        """Around one RPC: request id, in-flight gauge, error mapping, metrics."""
        rid = incoming.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16]
        request_id.set(rid)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        model, started, failed = _model_of(request, self._known), time.monotonic(), None
        in_flight = metrics.IN_FLIGHT.labels(method=method)
        in_flight.inc()
        try:
            yield
        except asyncio.CancelledError:
            failed = Cancelled("the caller went away")
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            failed = exc
            await _abort(context, exc, method)
        finally:
            in_flight.dec()
            code = _code_name(context, failed)
            metrics.REQUESTS.labels(method=method, model=model, code=code).inc()
            metrics.REQUEST_DURATION.labels(method=method, model=model).observe(
                time.monotonic() - started
            )

    def _wrap_unary(self, behavior, method, incoming):
        async def wrapped(request, context):
            async with self._serving(method, request, context, incoming):
                return await behavior(request, context)

        return wrapped

    def _wrap_stream(self, behavior, method, incoming):
        async def wrapped(request, context):
            async with self._serving(method, request, context, incoming):
                async for response in behavior(request, context):
                    yield response

        return wrapped


def _is_abort(exc: BaseException) -> bool:
    """context.abort raises AbortError, which must pass through untouched."""
    return isinstance(exc, grpc.aio.AbortError)
