"""The server interceptor: errors to status codes, per-RPC metrics, request ids.

Every RPC of a genserve process passes through `ServingInterceptor`:

- a GenserveError becomes its status code, its message and rich details
  (google.rpc.Status in the `grpc-status-details-bin` trailer);
- a servicer base class's NotImplementedError becomes UNIMPLEMENTED;
- any other exception becomes INTERNAL with a generic message, and the
  traceback goes to the log with the request id;
- the call's priority comes from its `x-priority` metadata (high, normal or
  low; see :mod:`genserve.runtime.priority`), for the queues its work joins;
- the request id comes from the `x-request-id` metadata when it is short and
  safe to log, or is made here; it is set in a context variable for logs and
  forwarding, and is sent back;
- a request that does not parse is INVALID_ARGUMENT (one log line), not the
  UNKNOWN gRPC would answer; a model name over the limit is refused before
  any handler sees it;
- more than `max_concurrent_rpcs` calls at once are refused with
  RESOURCE_EXHAUSTED (health Check is exempt, so probes see the truth);
- requests, durations and in-flight counts are recorded with a bounded
  `model` label (unknown names become "unknown"), refusals included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from genserve.runtime import metrics
from genserve.runtime.errors import (
    Cancelled,
    GenserveError,
    InvalidArgument,
    ResourceExhausted,
    rich_status,
)
from genserve.runtime.limits import Limits
from genserve.runtime.priority import PRIORITY_KEY, call_priority, parse_priority

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

KnownModels = Callable[[], set[str]]
_EXEMPT = frozenset({"/grpc.health.v1.Health/Check"})
"""Methods never refused for concurrency: a prober must see the process's real health."""


class _Unparseable:
    """Stands in for a request whose bytes are not a valid message."""


_UNPARSEABLE = _Unparseable()


class MalformedRequest(InvalidArgument):
    """The request's bytes do not parse as the method's message."""

    def __init__(self, method: str) -> None:
        super().__init__("request", f"is not a valid {method} request message")


def _tolerant(deserializer: Callable | None) -> Callable | None:
    """A deserializer that returns _UNPARSEABLE instead of raising on bad bytes."""
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception:
            return _UNPARSEABLE

    return parse


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def _model_name(request) -> str:
    """The model a request names, "" when it names none."""
    name = getattr(request, "model_name", None)
    if name is None and hasattr(request, "request"):
        name = getattr(request.request, "model_name", None)
    return name or ""


def _with_id(trailer: tuple) -> tuple:
    return (*trailer, (REQUEST_ID_KEY, request_id.get()))


async def _abort(context, exc: BaseException, method: str) -> None:
    """Abort the RPC with the status the exception maps to."""
    if isinstance(exc, GenserveError):
        await context.abort(exc.code, exc.message, trailing_metadata=_with_id(exc.trailer()))
    if isinstance(exc, NotImplementedError):  # a servicer base class's unimplemented method
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
    logger.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id.get()}); see the server log",
        trailing_metadata=_with_id(rich_status(grpc.StatusCode.INTERNAL, "internal error", [])),
    )


def _code_name(context, failed: BaseException | None) -> str:
    if isinstance(failed, GenserveError):
        return failed.code.name
    if isinstance(failed, NotImplementedError):
        return "UNIMPLEMENTED"
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
        limits: the bounds on concurrent calls, names and request ids.
    """

    def __init__(self, known_models: KnownModels, limits: Limits | None = None) -> None:
        self._known = known_models
        self._limits = limits or Limits()
        self._active = 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full_method = handler_call_details.method
        method = full_method.rsplit("/", 1)[-1]
        incoming = dict(handler_call_details.invocation_metadata or ())
        call = _Call(method, incoming, exempt=full_method in _EXEMPT)
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=self._wrap_unary(handler.unary_unary, call),
                request_deserializer=parse,
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=self._wrap_stream(handler.unary_stream, call),
                request_deserializer=parse,
            )
        if handler.stream_stream is not None:  # server reflection
            return handler._replace(
                stream_stream=self._wrap_bidi(handler.stream_stream, call),
                request_deserializer=parse,
            )
        return handler

    def _admit(self, call: _Call, request) -> None:
        """Refuse what must not reach a handler."""
        if request is _UNPARSEABLE:
            logger.warning("refused an unparseable %s request", call.method)
            raise MalformedRequest(call.method)
        if len(_model_name(request)) > self._limits.max_name_chars:
            raise InvalidArgument(
                "model_name", f"must be at most {self._limits.max_name_chars} characters"
            )
        if not call.exempt and self._active > self._limits.max_concurrent_rpcs:
            raise ResourceExhausted(
                f"the server is at its limit of {self._limits.max_concurrent_rpcs} "
                "concurrent calls; retry with backoff"
            )

    def _model_label(self, request) -> str:
        """A bounded metric label: a served model's name, "unknown", or ""."""
        name = "" if request is _UNPARSEABLE else _model_name(request)
        if not name:
            return ""
        return name if name in self._known() else "unknown"

    @contextlib.asynccontextmanager
    async def _serving(self, call: _Call, request, context):
        """Around one RPC: request id, admission, in-flight gauge, error mapping, metrics."""
        rid = self._limits.request_id(call.incoming.get(REQUEST_ID_KEY)) or os.urandom(8).hex()
        request_id.set(rid)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        method, started, failed = call.method, time.monotonic(), None
        model = self._model_label(request)
        in_flight = metrics.child(metrics.IN_FLIGHT, method)
        in_flight.inc()
        self._active += 1
        try:
            call_priority.set(parse_priority(call.incoming.get(PRIORITY_KEY)))
            self._admit(call, request)
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
            self._active -= 1
            in_flight.dec()
            code = _code_name(context, failed)
            failed = None  # the exception's traceback holds this frame: break the cycle
            metrics.child(metrics.REQUESTS, method, model, code).inc()
            metrics.child(metrics.REQUEST_DURATION, method, model).observe(
                time.monotonic() - started
            )

    def _wrap_unary(self, behavior, call: _Call):
        async def wrapped(request, context):
            async with self._serving(call, request, context):
                return await behavior(request, context)

        return wrapped

    def _wrap_stream(self, behavior, call: _Call):
        if not inspect.isasyncgenfunction(behavior):
            # A handler that writes with context.write (health Watch) and returns None.
            async def writes(request, context):
                async with self._serving(call, request, context):
                    await behavior(request, context)

            return writes

        async def yields(request, context):
            async with self._serving(call, request, context):
                async for response in behavior(request, context):
                    yield response

        return yields

    def _wrap_bidi(self, behavior, call: _Call):
        async def checked(requests):
            async for request in requests:
                if request is _UNPARSEABLE:
                    self._admit(call, request)  # raises MalformedRequest
                yield request

        async def bidi(requests, context):
            async with self._serving(call, None, context):
                async for response in behavior(checked(requests), context):
                    yield response

        return bidi


@dataclass(frozen=True)
class _Call:
    """What the interceptor knows of a call before its request arrives."""

    method: str
    """The RPC's short name, e.g. Generate."""
    incoming: dict
    """The caller's metadata."""
    exempt: bool
    """Never refused for concurrency."""


def _is_abort(exc: BaseException) -> bool:
    """context.abort raises AbortError, which must pass through untouched."""
    return isinstance(exc, grpc.aio.AbortError)
