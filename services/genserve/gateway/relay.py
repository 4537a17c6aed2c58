"""The gateway's end of a Relay stream: unary calls to one backend, many to a message.

A `RelayClient` keeps one RelayService stream open to its backend
(`genserve.server.relay` is the other end); the backend sends a call over it
when other calls are in flight (`Backend.unary`). A call is queued; one writer task
sends every call waiting as one RelayRequest, and one reader task hands each
reply to the call it answers. Under load, many calls share each message, and
a hop costs a fraction of the CPU of one gRPC call per request
(docs/benchmarks.md, the front-door section).

Failures look like the unary call's: a reply's status becomes the
`grpc.aio.AioRpcError` the call would have raised, with its trailing
metadata; a stream that breaks fails every call on it with UNAVAILABLE, which
the forwarder may retry elsewhere (the next call opens a new stream); a call
past its timeout is cancelled on the backend and fails DEADLINE_EXCEEDED; a
call whose caller went away is cancelled on the backend. A backend without
RelayService (UNIMPLEMENTED) is remembered, and its calls go as unary calls.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence

import grpc

from genserve.runtime import metrics
from genserve.server.relay import metadata_entries, metadata_pairs, status_code, take_batch
from genserve.v1 import relay_pb2, relay_pb2_grpc

logger = logging.getLogger(__name__)
_SENT = metrics.RELAY_CALLS_PER_MESSAGE.labels(direction="sent")

REQUEST_BUDGET_BYTES = 1 << 20
"""Calls share a message up to this many bytes. A bigger request goes as a unary call
(a family service takes messages of 4 MiB at most)."""


class RelayUnsupported(Exception):
    """The stream could not carry the call: send it as an RPC of its own.

    `permanent` when the backend has no RelayService at all; otherwise the
    stream failed before it answered any call, and the next stream may do.
    """

    def __init__(self, permanent: bool) -> None:
        super().__init__("the backend has no RelayService" if permanent else "no relay stream")
        self.permanent = permanent


def _error(code: grpc.StatusCode, details: str, trailing=()) -> grpc.aio.AioRpcError:
    """The error a unary call that ended with `code` raises."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def _unavailable(why: str) -> grpc.aio.AioRpcError:
    return _error(grpc.StatusCode.UNAVAILABLE, why)


class _Stream:
    """One open Relay stream: its call, its unanswered calls and its two tasks."""

    def __init__(self, stub: relay_pb2_grpc.RelayServiceStub, target: str) -> None:
        self.call = stub.Relay()
        self.target = target
        self.pending: dict[int, asyncio.Future] = {}
        self.outgoing: deque[relay_pb2.RelayCall] = deque()
        self.cancelled: list[int] = []
        self.broken: Exception | None = None
        self.answered = False
        """Whether any reply came back: a stream that fails before one carried nothing."""
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write())
        self._reader = asyncio.create_task(self._read())

    def send(self, call: relay_pb2.RelayCall) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending[call.id] = future
        self.outgoing.append(call)
        self._wake.set()
        return future

    def cancel(self, call_id: int) -> None:
        if self.pending.pop(call_id, None) is not None and self.broken is None:
            self.cancelled.append(call_id)
            self._wake.set()

    async def _write(self) -> None:
        first = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.outgoing or self.cancelled:
                    calls = take_batch(self.outgoing, REQUEST_BUDGET_BYTES) if self.outgoing else []
                    ids, self.cancelled = self.cancelled, []
                    _SENT.observe(len(calls))
                    await self.call.write(relay_pb2.RelayRequest(calls=calls, cancelled_ids=ids))
                    if first:
                        # A family service answers a new stream with its headers at once;
                        # a backend without RelayService ends it (UNIMPLEMENTED). Writing
                        # again on an ended call would turn its status into INTERNAL.
                        first = False
                        await self.call.initial_metadata()
                        if self.call.done():
                            return
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the reader sees why the stream ended and fails the calls

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.answered = True
                for reply in response.replies:
                    future = self.pending.pop(reply.id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
            self._break(_unavailable(f"relay stream to {self.target} ended"))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._break(RelayUnsupported(permanent=True))
            elif not self.answered:  # it carried nothing: its calls go as RPCs
                self._break(RelayUnsupported(permanent=False))
            else:
                self._break(_unavailable(f"relay stream to {self.target} broke: {exc.code().name}"))
        except asyncio.CancelledError:
            self._break(_unavailable(f"relay stream to {self.target} closed"))
            raise

    def _break(self, error: Exception) -> None:
        """Fail every unanswered call with `error`."""
        self.broken = error
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        self._writer.cancel()

    def close(self) -> None:
        self._reader.cancel()
        self._writer.cancel()
        self.call.cancel()


class RelayClient:
    """Unary calls to one backend over a Relay stream, opened when first needed.

    Args:
        channel: the backend's channel.
        target: the backend's address, for messages.
    """

    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self._stub = relay_pb2_grpc.RelayServiceStub(channel)
        self._target = target
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self.supported = True
        """False once the backend answered that it has no RelayService."""

    async def call(
        self,
        method: str,
        request: bytes,
        *,
        timeout_s: float | None,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> bytes:
        """Run a unary ModelService `method` with the serialized `request`; its response bytes.

        Raises:
            grpc.aio.AioRpcError: the call's status when not OK, as the unary call would.
            RelayUnsupported: the stream could not carry the call (send it as a unary call).
        """
        stream = self._open()
        call_id = next(self._ids)
        call = relay_pb2.RelayCall(
            id=call_id, method=method, request=request, metadata=metadata_entries(metadata),
            timeout_s=timeout_s or 0.0,
        )  # fmt: skip
        future = stream.send(call)
        try:
            reply = await asyncio.wait_for(future, timeout_s) if timeout_s else await future
        except asyncio.TimeoutError:
            stream.cancel(call_id)
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            stream.cancel(call_id)
            raise
        except RelayUnsupported as exc:
            if exc.permanent and self.supported:
                self.supported = False
                logger.info("%s has no RelayService; calling it unary", self._target)
            raise
        if reply.code:
            trailing = metadata_pairs(reply.trailing_metadata)
            raise _error(status_code(reply.code), reply.message, trailing)
        return reply.response

    def _open(self) -> _Stream:
        if self._stream is None or self._stream.broken is not None:
            self._stream = _Stream(self._stub, self._target)
        return self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
