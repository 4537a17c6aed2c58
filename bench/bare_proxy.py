"""The floor of a gRPC hop in Python: a proxy that forwards every unary call's bytes unread.

    python bench/bare_proxy.py --port 50070 --backend 127.0.0.1:50061

No routing, parsing, interceptor, metrics, auth, retries or deadlines: one
grpc.aio server (on uvloop when installed, as genserve's processes run) whose
generic handler passes the request bytes to one backend channel and the
response bytes back. `bench/front_door.py` measures it beside the gateway, so
the gateway's CPU per call can be read against what the hop itself costs.
With `--stored`, each method's first answer is kept and every later call
gets it back without reaching the backend: what receiving and answering a
call costs a grpc.aio server, with no hop onwards. Benchmarks only; never a
way to serve.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from genserve.server.server import run_process


def _same(data: bytes) -> bytes:
    return data


class _Forward(grpc.GenericRpcHandler):
    """Every method becomes a unary call to the same method on the backend."""

    def __init__(self, channel: grpc.aio.Channel, stored: bool) -> None:
        self._channel = channel
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._stored = stored
        self._answers: dict[str, bytes] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._channel.unary_unary(
                method, request_serializer=_same, response_deserializer=_same
            )

        async def forward(request: bytes, context) -> bytes:
            if method in self._answers:
                return self._answers[method]
            answer = await call(request, timeout=30.0)
            if self._stored and "Health" not in method:
                self._answers[method] = answer
            return answer

        return grpc.unary_unary_rpc_method_handler(
            forward, request_deserializer=_same, response_serializer=_same
        )


async def serve(port: int, backend: str, stored: bool) -> None:
    channel = grpc.aio.insecure_channel(backend)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Forward(channel, stored),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="host:port of the backend")
    parser.add_argument(
        "--stored", action="store_true", help="answer each method with its first answer, kept"
    )
    args = parser.parse_args()
    run_process(serve(args.port, args.backend, args.stored))


if __name__ == "__main__":
    main()
