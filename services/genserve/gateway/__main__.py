"""Run the gateway: `python -m genserve.gateway --backend 127.0.0.1:50061 ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging

from genserve.gateway.backends import BackendPool
from genserve.gateway.servicer import GatewayServicer
from genserve.runtime.logs import add_logging_flags, setup_logging_from
from genserve.runtime.server import ServerConfig, serve

logger = logging.getLogger("genserve.gateway")


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, list[str], float, int]:
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
    parser.add_argument("--refresh-s", type=float, default=2.0, help="backend model-list refresh")
    parser.add_argument("--attempts", type=int, default=3, help="tries of a retry-safe call")
    add_logging_flags(parser)
    args = parser.parse_args(argv)
    setup_logging_from(parser, args)
    try:
        server = ServerConfig(args.host, args.port, args.metrics_port, args.grace_s)
    except ValueError as exc:
        parser.error(str(exc))
    return server, args.backend, args.refresh_s, args.attempts


async def run(server: ServerConfig, targets: list[str], refresh_s: float, attempts: int) -> None:
    """Serve the gateway until SIGTERM."""
    pool = BackendPool(targets, refresh_s=refresh_s)

    async def ready() -> None:
        await pool.start()
        logger.info("routing %d models over %d backends", len(pool.model_names()), len(targets))

    await serve(
        server,
        GatewayServicer(pool, attempts),
        known_models=pool.model_names,
        ready=ready,
        cleanup=pool.close,
        model_health=pool.model_health,
    )


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(*parse_args(argv)))


if __name__ == "__main__":
    main()
