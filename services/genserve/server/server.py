"""Building and running a genserve gRPC process.

`serve` builds a grpc.aio server with the serving interceptor and the bounds
of `Limits`, registers the ModelService servicer (and any further services a
process adds, such as the gateway's Open Inference Protocol), standard health
checking (Check, Watch and List) and reflection, serves
/metrics over HTTP, and on SIGTERM or SIGINT marks itself NOT_SERVING, stops
taking new calls, lets in-flight calls finish within the grace period, then
runs the caller's cleanup.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from genserve.runtime import memory, metrics
from genserve.runtime.limits import Limits, limits_from, raise_fd_limit
from genserve.server.interceptors import KnownModels, ServingInterceptor
from genserve.server.relay import RelayServicer
from genserve.v1 import model_service_pb2, model_service_pb2_grpc

logger = logging.getLogger(__name__)

MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
MODEL_HEALTH_POLL_S = 0.5
"""How often per-model health statuses are brought up to date."""
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_TRANSPORT_OPTIONS = [
    # HTTP/2 bandwidth-delay probing triples the CPU a large message costs to
    # receive (4 MiB: 12.9 -> 4.2 ms on loopback, docs/limits.md); on a
    # cluster network the default windows are enough.
    ("grpc.http2.bdp_probe", 0),
]

EVENT_LOOP_ENV = "GENSERVE_EVENT_LOOP"
"""Set to "asyncio" to run on asyncio's own event loop even where uvloop is installed."""

ModelHealth = Callable[[], Mapping[str, bool]]
"""Model name -> whether a call for it can be served now."""
AddService = Callable[[grpc.aio.Server], str]
"""Adds one more servicer to the server and returns its full service name, which
reflection lists and health reports beside ModelService."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS port: its certificate chain and key, and the CA whose client
    certificates it requires (mutual TLS), if any."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """The server credentials, read from the files now."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key and --tls-client-ca: serve the gRPC port over TLS."""
    group = parser.add_argument_group("TLS (plaintext without these)")
    group.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the gRPC port")
    group.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates this CA signed (mTLS)"
    )


def tls_from(args: argparse.Namespace) -> TlsFiles | None:
    """The TlsFiles add_tls_flags' flags name, or None for plaintext.

    Raises:
        ValueError: a certificate without its key (or the reverse), a client CA
            without a certificate, or a file that cannot be read.
    """
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not path.is_file():
            raise ValueError(f"{flag}: {path} is not a readable file")
    return TlsFiles(cert, key, client_ca)


def server_config_from(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of a process's --host, --port, --metrics-port, --grace-s, limit
    and TLS flags.

    Raises:
        ValueError: a bound is out of range, or a TLS file is missing.
    """
    return ServerConfig(
        args.host, args.port, args.metrics_port, args.grace_s, limits_from(args), tls_from(args)
    )


@dataclass(frozen=True)
class ServerConfig:
    """Where and how a genserve process listens."""

    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 in a container."""
    port: int = 50051
    """gRPC port."""
    metrics_port: int = 0
    """HTTP port for /metrics; 0 serves no metrics."""
    grace_s: float = 10.0
    """How long in-flight calls may take to finish on shutdown."""
    limits: Limits = field(default_factory=Limits)
    """Bounds on messages, calls and connections."""
    tls: TlsFiles | None = None
    """Serve the gRPC port over TLS (mutual with a client CA); None for plaintext."""
    reuse_port: bool = False
    """Share the port with other processes that ask the same (SO_REUSEPORT; the gateway's
    workers). Off, a second process on a taken port fails to start, as it should."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")


class HealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 Health with List: every service's status in one answer."""

    async def List(self, request, context):
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


class _ModelHealthSync:
    """Keeps one health-checker service per model in step with `model_health`.

    A model that goes away reads NOT_SERVING; a name never seen reads
    NOT_FOUND, as the health protocol answers for unknown services.
    """

    def __init__(self, servicer: HealthServicer, model_health: ModelHealth) -> None:
        self._servicer = servicer
        self._model_health = model_health
        self._shown: dict[str, bool] = {}

    async def update(self) -> None:
        now = dict(self._model_health())
        for name in self._shown.keys() - now.keys():
            now[name] = False
        for name, serving in now.items():
            if self._shown.get(name) != serving:
                status = health_pb2.HealthCheckResponse.SERVING if serving else NOT_SERVING
                await self._servicer.set(name, status)
        self._shown = now

    async def run(self) -> None:
        while True:
            await asyncio.sleep(MODEL_HEALTH_POLL_S)
            await self.update()


def run_process(main: Coroutine[None, None, None]) -> None:
    """Run a process's main coroutine to the end, on uvloop where it is installed.

    uvloop runs grpc.aio's callbacks for less CPU than asyncio's own loop: a
    gateway hop (Decode of one row, forwarded) took 0.80 against 0.87 CPU-ms per
    call at 32 callers, 1.05 against 1.10 at one (bench/front_door.py's load).
    `GENSERVE_EVENT_LOOP=asyncio` keeps asyncio's loop.
    """
    choice = os.environ.get(EVENT_LOOP_ENV, "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise SystemExit(f"{EVENT_LOOP_ENV} must be uvloop or asyncio, got {choice!r}")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            logger.info("uvloop is not installed; running on asyncio's event loop")
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def serve(
    config: ServerConfig,
    servicer: model_service_pb2_grpc.ModelServiceServicer,
    *,
    known_models: KnownModels,
    ready: Callable[[], Awaitable[None]] | None = None,
    cleanup: Callable[[], Awaitable[None]] | None = None,
    model_health: ModelHealth | None = None,
    extra_services: Sequence[AddService] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    relay: bool = False,
) -> None:
    """Run a ModelService process until SIGTERM or SIGINT.

    Args:
        config: ports and limits.
        servicer: the ModelService implementation.
        known_models: names allowed as metric labels.
        ready: awaited after the port is bound and before health turns
            SERVING (e.g. loading models).
        cleanup: awaited after the server stopped (e.g. draining batchers).
        model_health: model name -> whether it can be served now; each
            model is then a service of the gRPC health checker, kept in step
            every MODEL_HEALTH_POLL_S.
        extra_services: more services to serve beside ModelService, each
            with its own health status and reflection entry.
        interceptors: more interceptors, inside the serving one (which maps
            their errors to status codes and counts their refusals).
        relay: serve RelayService too, which runs unary ModelService calls
            carried many to a stream message (the gateway's way in).
    """
    options = [*config.limits.grpc_options(), *_TRANSPORT_OPTIONS]
    options.append(("grpc.so_reuseport", int(config.reuse_port)))
    options += [  # take the gateway's keepalive pings (every 1 s by default), even between calls
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ]
    open_files = raise_fd_limit()
    if open_files < config.limits.max_connections + 256:
        logger.warning(
            "open-file limit %d leaves little room above max_connections %d",
            open_files,
            config.limits.max_connections,
        )
    interceptor = ServingInterceptor(known_models, config.limits)
    server = grpc.aio.server(interceptors=[interceptor, *interceptors], options=options)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    relayed = RelayServicer(servicer, interceptor, config.limits) if relay else None
    if relayed is not None:
        extra_services = [*extra_services, relayed.add_to]
    services = ("", MODEL_SERVICE, *(add(server) for add in extra_services))
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*services[1:], health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{config.host}:{config.port}"
    if config.tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, config.tls.credentials())
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    for name in services:
        await health_servicer.set(name, NOT_SERVING)
    if config.metrics_port:
        metrics.serve_metrics(
            config.metrics_port,
            config.host,
            timeout_s=config.limits.metrics_timeout_s,
            max_connections=config.limits.metrics_max_connections,
        )
    await server.start()
    trimming = asyncio.create_task(memory.trim_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            await ready()
        if model_health is not None:  # models first: SERVING promises they answer
            sync = _ModelHealthSync(health_servicer, model_health)
            await sync.update()
            syncing = asyncio.create_task(sync.run())
        for name in services:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("serving on %s%s", address, "" if config.tls is None else " (TLS)")
        await stop.wait()
        logger.info("shutting down: finishing in-flight calls (grace %.1fs)", config.grace_s)
        if model_health is not None:
            syncing.cancel()
        await health_servicer.enter_graceful_shutdown()
        if relayed is not None:
            relayed.drain()
        await server.stop(config.grace_s)
    finally:
        trimming.cancel()
        if cleanup is not None:
            await cleanup()
        await server.stop(0)
        logger.info("stopped")
