"""RelayService on a family process: unary ModelService calls, many to a stream message.

One gRPC call costs a Python process about as much CPU as the work of a small
model (bench/front_door.py); one message on an open stream costs far less, and
one message can carry many calls. The gateway therefore sends a family
service its unary calls over one Relay stream, coalescing the calls that are
waiting into one message, and takes the answers back the same way
(`genserve.gateway.relay`).

Each relayed call runs exactly as the unary call would: through the serving
interceptor (admission and the concurrency limit, request id, priority, error
mapping, per-method metrics) into the same ModelService handler, with a
context that carries its metadata and deadline. Its status, message and
trailing metadata travel back in its reply. The stream's messages are
bounded (calls per message, calls running per stream, metadata entries), and
a call over its deadline is cut and answered DEADLINE_EXCEEDED, as gRPC
would; a cancelled id or a closed stream cancels the call's work. When the
process stops, each stream takes no more calls and ends once its running
calls have answered, so a drain takes no longer than its slowest call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from genserve.runtime import metrics
from genserve.runtime.errors import InvalidArgument, ResourceExhausted
from genserve.runtime.limits import Limits
from genserve.server.interceptors import ServingInterceptor
from genserve.v1 import model_service_pb2_grpc, relay_pb2, relay_pb2_grpc

logger = logging.getLogger(__name__)
_ANSWERED = metrics.RELAY_CALLS_PER_MESSAGE.labels(direction="answered")

MODEL_SERVICE_PREFIX = "/genserve.v1.ModelService/"
MAX_CALLS_PER_MESSAGE = 256
"""The most calls one RelayRequest may start."""
MAX_METADATA = 16
"""The most metadata entries a relayed call may carry."""
REPLY_BUDGET_BYTES = 1 << 20
"""Replies share a message up to this many bytes; a bigger reply goes alone."""


class RelayContext:
    """What a unary handler and the serving interceptor use of a grpc.aio context,
    for one relayed call: its metadata and deadline, and the status it ends with."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], timeout_s: float) -> None:
        self._metadata = metadata
        finite = math.isfinite(timeout_s) and timeout_s > 0
        self._deadline = time.monotonic() + timeout_s if finite else None
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple = ()

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = tuple(metadata)

    def code(self) -> grpc.StatusCode | None:
        return self.status

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self.status, self.details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()


@dataclass(frozen=True)
class _CallDetails:
    """grpc.HandlerCallDetails for a relayed call."""

    method: str
    invocation_metadata: tuple


class _Capture:
    """Stands in for a server to capture the ModelService method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers.update(handlers)


class _Outbox:
    """Replies waiting to go out, sent many to a message, and the end of the stream."""

    def __init__(self) -> None:
        self._replies: deque[relay_pb2.RelayReply] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, reply: relay_pb2.RelayReply) -> None:
        self._replies.append(reply)
        self._ready.set()

    def close(self) -> None:
        """No more replies will come: `batches` ends once it has sent those waiting."""
        self._closed = True
        self._ready.set()

    async def batches(self) -> AsyncIterator[list[relay_pb2.RelayReply]]:
        """The waiting replies, as many to a batch as REPLY_BUDGET_BYTES allows."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._replies:
                yield take_batch(self._replies, REPLY_BUDGET_BYTES)
            if self._closed:
                return


def take_batch(queue: deque, budget_bytes: int) -> list:
    """Take messages from the front of `queue` while they fit in `budget_bytes` together;
    the first is taken whatever its size, so a big one goes alone."""
    batch = [queue.popleft()]
    size = batch[0].ByteSize()
    while queue and size + (following := queue[0].ByteSize()) <= budget_bytes:
        batch.append(queue.popleft())
        size += following
    return batch


def metadata_entries(pairs) -> list[relay_pb2.RelayMetadata]:
    """gRPC metadata pairs as RelayMetadata entries (text values as UTF-8)."""
    return [
        relay_pb2.RelayMetadata(key=k, value=v if isinstance(v, bytes) else str(v).encode())
        for k, v in pairs
    ]


def metadata_pairs(entries) -> tuple[tuple[str, str | bytes], ...]:
    """RelayMetadata entries as gRPC metadata pairs: bytes for "-bin" keys, text otherwise."""
    return tuple(
        (m.key, m.value if m.key.endswith("-bin") else m.value.decode("utf-8", "replace"))
        for m in entries
    )


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The status code a reply's number stands for; UNKNOWN for a number gRPC has not."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


def _reply(
    call_id: int, code: grpc.StatusCode, message: str = "", trailing=()
) -> relay_pb2.RelayReply:
    return relay_pb2.RelayReply(
        id=call_id,
        code=code.value[0],
        message=message,
        trailing_metadata=metadata_entries(trailing),
    )


def _refusal(call_id: int, error) -> relay_pb2.RelayReply:
    return _reply(call_id, error.code, error.message, error.trailer())


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    """Runs relayed calls through `interceptor` into `servicer`'s unary handlers.

    Args:
        servicer: the process's ModelService.
        interceptor: the process's serving interceptor.
        limits: bounds on calls at once.
    """

    def __init__(
        self,
        servicer: model_service_pb2_grpc.ModelServiceServicer,
        interceptor: ServingInterceptor,
        limits: Limits,
    ) -> None:
        capture = _Capture()
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, capture)
        self._handlers = {n: h for n, h in capture.handlers.items() if h.unary_unary is not None}
        self._interceptor = interceptor
        self._max_running = limits.max_concurrent_rpcs
        self._draining = asyncio.Event()

    def add_to(self, server: grpc.aio.Server) -> str:
        """Register on `server`; returns the service's full name."""
        relay_pb2_grpc.add_RelayServiceServicer_to_server(self, server)
        return relay_pb2.DESCRIPTOR.services_by_name["RelayService"].full_name

    def drain(self) -> None:
        """The process is stopping: every stream takes no more calls, and ends once the
        calls it runs have answered (the gateway sends the rest elsewhere)."""
        self._draining.set()

    async def Relay(self, request_iterator, context) -> AsyncIterator[relay_pb2.RelayResponse]:
        await context.send_initial_metadata(())  # the gateway waits for these on a new stream
        outbox, running = _Outbox(), {}
        pump = asyncio.create_task(self._pump(request_iterator, running, outbox))
        try:
            async for batch in outbox.batches():
                _ANSWERED.observe(len(batch))
                yield relay_pb2.RelayResponse(replies=batch)
            await pump  # raises what ended the reading, e.g. a malformed message
        finally:
            pump.cancel()
            for task in running.values():
                task.cancel()

    async def _pump(self, requests, running: dict[int, asyncio.Task], outbox: _Outbox) -> None:
        """Read calls until the caller is done writing or the process drains, then let
        the running calls answer and close the outbox."""
        reader = asyncio.create_task(self._read(requests, running, outbox))
        draining = asyncio.create_task(self._draining.wait())
        try:
            await asyncio.wait({reader, draining}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # a malformed message ends the stream with its error
            else:
                reader.cancel()
            while running:
                await asyncio.wait(list(running.values()))
        finally:
            reader.cancel()
            draining.cancel()
            outbox.close()

    async def _read(self, requests, running: dict[int, asyncio.Task], outbox: _Outbox) -> None:
        """Start and cancel calls as messages arrive, until the caller is done writing."""
        async for message in requests:
            if len(message.calls) > MAX_CALLS_PER_MESSAGE:
                raise InvalidArgument(
                    "calls", f"at most {MAX_CALLS_PER_MESSAGE} per message, got "
                    f"{len(message.calls)}"
                )  # fmt: skip
            for call_id in message.cancelled_ids:
                task = running.get(call_id)
                if task is not None:
                    task.cancel()
            for call in message.calls:
                self._start(call, running, outbox)

    def _start(self, call, running: dict[int, asyncio.Task], outbox: _Outbox) -> None:
        if call.id in running:
            outbox.put(_refusal(call.id, InvalidArgument("id", "is already running")))
            return
        if len(running) >= self._max_running:
            busy = ResourceExhausted(f"at most {self._max_running} relayed calls at once")
            outbox.put(_refusal(call.id, busy))
            return
        task = asyncio.create_task(self._answer(call))
        running[call.id] = task

        def done(finished: asyncio.Task, call_id: int = call.id) -> None:
            running.pop(call_id, None)
            if not finished.cancelled():
                outbox.put(finished.result())

        task.add_done_callback(done)

    async def _answer(self, call) -> relay_pb2.RelayReply:
        """Run one call as its unary RPC would run; its reply."""
        handler = self._handlers.get(call.method)
        if handler is None:
            message = f"{call.method[:64]!r} is not a unary ModelService method"
            return _reply(call.id, grpc.StatusCode.UNIMPLEMENTED, message)
        metadata = metadata_pairs(call.metadata[:MAX_METADATA])
        details = _CallDetails(MODEL_SERVICE_PREFIX + call.method, metadata)

        async def continuation(_details):
            return handler

        served = await self._interceptor.intercept_service(continuation, details)
        context = RelayContext(metadata, call.timeout_s)
        request = served.request_deserializer(call.request)
        answer = served.unary_unary(request, context)
        remaining = context.time_remaining()
        try:
            response = await (answer if remaining is None else asyncio.wait_for(answer, remaining))
        except grpc.aio.AbortError:
            return _reply(call.id, context.status, context.details, context.trailing)
        except asyncio.TimeoutError:
            return _reply(call.id, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        body = served.response_serializer(response)
        return relay_pb2.RelayReply(
            id=call.id, response=body, trailing_metadata=metadata_entries(context.trailing)
        )
