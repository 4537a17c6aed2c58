"""Run the gateway: `python -m genserve.gateway --backend 127.0.0.1:50061 ...`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from genserve.gateway.auth import AuthInterceptor, KeyFileError, KeyStore, parse_keys
from genserve.gateway.backends import BackendPool, BackendTls, PoolConfig
from genserve.gateway.oip import OipServicer
from genserve.gateway.servicer import ForwardConfig, GatewayServicer
from genserve.gateway.workers import WORKER_INDEX_FLAG, Workers
from genserve.runtime.limits import add_limit_flags
from genserve.server.logs import add_logging_flags, setup_logging_from
from genserve.server.server import (
    ServerConfig,
    add_tls_flags,
    run_process,
    serve,
    server_config_from,
)

logger = logging.getLogger("genserve.gateway")

_C = TypeVar("_C")

_FLAG_HELP = {
    "refresh_s": "health-check each backend this often",
    "check_timeout_s": "longest one health check may take",
    "eject_after": "failed checks, or failed calls (UNAVAILABLE, out of their try), in a row"
    " that eject a backend",
    "backend_keepalive_s": "ping each backend connection this often",
    "backend_keepalive_timeout_s": "drop a backend connection whose ping is unanswered this long",
    "reconnect_max_s": "longest wait between two reconnect attempts to a backend",
    "connect_timeout_s": "longest one connection attempt to a backend may take",
    "attempts": "tries of a retry-safe call",
    "attempt_timeout_s": "longest one try of a unary call; streams are not cut by it",
}
"""The help of each failover flag, one per PoolConfig and ForwardConfig field."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway process needs."""

    targets: tuple[str, ...]
    """The family services' gRPC targets."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Ports and limits towards the gateway's callers."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Health checks, ejection, keepalive and reconnect bounds."""
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    """Tries of a call and the time each may take."""
    backend_tls: BackendTls | None = None
    """TLS (mutual with a certificate) to the backends; None for plaintext."""
    api_keys: Path | None = None
    """The API keys file; None lets every caller in."""
    api_keys_reload_s: float = 2.0
    """How often, at most, the keys file is looked at for changes."""
    relay: bool = True
    """Send unary calls to the backends over Relay streams (see `relay.py`)."""
    workers: int = 1
    """Processes sharing the port (see `workers.py`); 1 serves in this process."""
    worker_index: int | None = None
    """Which worker this process is, when a parent started it."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")


def _add_failover_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per PoolConfig and ForwardConfig field, e.g. --refresh-s, with its default."""
    group = parser.add_argument_group("failover")
    for config in (PoolConfig(), ForwardConfig()):
        for f in dataclasses.fields(config):
            default = getattr(config, f.name)
            group.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=type(default),
                default=default,
                help=f"{_FLAG_HELP[f.name]} (default {default})",
            )


def _config_from(cls: type[_C], args: argparse.Namespace) -> _C:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    """The gateway's command line."""
    parser = argparse.ArgumentParser(prog="genserve-gateway", description=__doc__)
    parser.add_argument(
        "--backend",
        action="append",
        required=True,
        help="a family service's gRPC target, host:port or dns:///name:port; repeat for more",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--metrics-port", type=int, default=0, help="0 serves no /metrics")
    parser.add_argument("--grace-s", type=float, default=10.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT), one core's worth each; worker i "
        "serves /metrics on --metrics-port + i (default 1)",
    )
    parser.add_argument(WORKER_INDEX_FLAG, type=int, help=argparse.SUPPRESS)
    _add_failover_flags(parser)
    add_logging_flags(parser)
    add_limit_flags(parser)
    add_tls_flags(parser)
    parser.add_argument(
        "--no-relay",
        dest="relay",
        action="store_false",
        help="send every unary call to the backends as an RPC of its own, not over a Relay "
        "stream that carries many calls to a message",
    )
    group = parser.add_argument_group("TLS to the backends")
    group.add_argument("--backend-tls-ca", type=Path, help="CA of the backends' certificates")
    group.add_argument("--backend-tls-cert", type=Path, help="the gateway's certificate (mTLS)")
    group.add_argument("--backend-tls-key", type=Path, help="its private key")
    group = parser.add_argument_group("API keys")
    group.add_argument(
        "--api-keys",
        type=Path,
        help="JSON file of hashed API keys (python -m genserve.gateway.auth makes one); "
        "without it every caller is let in",
    )
    group.add_argument(
        "--api-keys-reload-s", type=float, default=2.0, help="look for changes this often"
    )
    return parser


def config_from(args: argparse.Namespace) -> GatewayConfig:
    """The GatewayConfig that build_parser's flags describe.

    Raises:
        ValueError: a bound is out of range, or a TLS or keys file is missing or wrong.
    """
    server = server_config_from(args)
    if args.workers > 1:
        index = args.worker_index or 0
        metrics_port = server.metrics_port + index if server.metrics_port else 0
        server = dataclasses.replace(server, reuse_port=True, metrics_port=metrics_port)
    return GatewayConfig(
        targets=tuple(args.backend),
        server=server,
        pool=_config_from(PoolConfig, args),
        forward=_config_from(ForwardConfig, args),
        backend_tls=_backend_tls(args),
        api_keys=_checked_keys_file(args.api_keys),
        api_keys_reload_s=args.api_keys_reload_s,
        relay=args.relay,
        workers=args.workers,
        worker_index=args.worker_index,
    )


def _checked_keys_file(path: Path | None) -> Path | None:
    """The keys file, once it reads and parses; a bad one is a usage error at start."""
    if path is not None:
        try:
            parse_keys(path.read_text())
        except OSError as exc:
            raise ValueError(f"--api-keys: cannot read {path}: {exc.strerror}") from None
        except KeyFileError as exc:
            raise ValueError(f"--api-keys: {path}: {exc}") from None
    return path


def _backend_tls(args: argparse.Namespace) -> BackendTls | None:
    if args.backend_tls_ca is None:
        if args.backend_tls_cert or args.backend_tls_key:
            raise ValueError("--backend-tls-cert and --backend-tls-key need --backend-tls-ca")
        return None
    return BackendTls(args.backend_tls_ca, args.backend_tls_cert, args.backend_tls_key)


def parse_args(argv: list[str] | None = None) -> GatewayConfig:
    """Read the command line and set up logging; a bad value is a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging_from(parser, args)
    try:
        return config_from(args)
    except ValueError as exc:
        parser.error(str(exc))


async def run(config: GatewayConfig) -> None:
    """Serve the gateway until SIGTERM."""
    pool = BackendPool(list(config.targets), config.pool, config.backend_tls, relay=config.relay)
    interceptors = []
    if config.api_keys is not None:
        interceptors.append(AuthInterceptor(KeyStore(config.api_keys, config.api_keys_reload_s)))

    async def ready() -> None:
        await pool.start()
        names = pool.model_names()
        logger.info("routing %d models over %d backends", len(names), len(config.targets))

    gateway = GatewayServicer(pool, config.forward, config.server.limits)
    oip = OipServicer(gateway.forwarder, config.server.limits)  # Open Inference Protocol
    await serve(
        config.server,
        gateway,
        known_models=pool.model_names,
        ready=ready,
        cleanup=pool.close,
        model_health=pool.model_health,
        extra_services=[oip.add_to],
        interceptors=interceptors,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_args(argv)
    if config.workers > 1 and config.worker_index is None:
        sys.exit(Workers(argv, config.workers).run())
    run_process(run(config))


if __name__ == "__main__":
    main()
