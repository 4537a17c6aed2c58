"""Run one family service: `python -m genserve.families --family vae --models models`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genserve.families import FAMILIES, model_class
from genserve.runtime.batcher import BatchPolicy
from genserve.runtime.limits import add_limit_flags
from genserve.runtime.model import LoadContext
from genserve.runtime.registry import ModelRegistry
from genserve.runtime.scheduler import Admission, StepPolicy
from genserve.runtime.session import SessionOptions
from genserve.server.logs import add_logging_flags, setup_logging_from
from genserve.server.server import (
    ServerConfig,
    add_tls_flags,
    run_process,
    serve,
    server_config_from,
)
from genserve.server.servicer import FamilyServicer

logger = logging.getLogger("genserve.families")


@dataclass(frozen=True)
class FamilyConfig:
    """Everything a family process needs."""

    family: str
    """Which family to serve."""
    models: Path
    """The model repository root."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """Ports and limits."""
    session: SessionOptions = field(default_factory=SessionOptions)
    """Execution provider and threads."""
    batching_overrides: dict[str, Any] = field(default_factory=dict)
    """BatchPolicy fields that replace every model's own (e.g. max_batch_size 1: batching off)."""
    stepping_overrides: dict[str, Any] = field(default_factory=dict)
    """StepPolicy fields that replace every model's own (e.g. max_running 1: step batching off;
    admission "request": request-level batching)."""
    poll_s: float = 5.0
    """How often to look for new model versions; 0 never."""
    session_workers: int = 2
    """Threads running sessions concurrently (one batch each)."""


def _given(**values: object) -> dict[str, object]:
    """The flags that were given (not None): the policy fields they override."""
    return {name: value for name, value in values.items() if value is not None}


def parse_args(argv: list[str] | None = None) -> FamilyConfig:
    parser = argparse.ArgumentParser(prog="genserve-family", description=__doc__)
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES))
    parser.add_argument("--models", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--metrics-port", type=int, default=0, help="0 serves no /metrics")
    parser.add_argument("--grace-s", type=float, default=10.0)
    parser.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument(
        "--no-intra-op-spinning",
        action="store_true",
        help="let idle ONNX Runtime threads sleep instead of spinning (saves CPU on busy cores)",
    )
    parser.add_argument("--session-workers", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, help="override every model's policy")
    parser.add_argument("--max-queue-delay-ms", type=float, help="override every model's policy")
    parser.add_argument("--max-queue-size", type=int, help="override every model's policy")
    parser.add_argument(
        "--max-batch-tokens", type=int, help="override every token-batched model's policy"
    )
    parser.add_argument(
        "--instances", type=int, help="override every batched model's batches run at once"
    )
    parser.add_argument("--max-running", type=int, help="override every model's step slots")
    parser.add_argument("--max-waiting", type=int, help="override every model's step queue bound")
    parser.add_argument(
        "--step-admission",
        choices=[a.value for a in Admission],
        help="override when waiting sequences join a step: 'step' (at any step boundary) "
        "or 'request' (only when the running set is empty: request-level batching)",
    )
    parser.add_argument(
        "--fixed-delay",
        action="store_true",
        help="always wait out max_queue_delay_ms (no adaptive delay)",
    )
    parser.add_argument("--poll-s", type=float, default=5.0, help="new-version poll; 0 never")
    add_logging_flags(parser)
    add_limit_flags(parser)
    add_tls_flags(parser)
    args = parser.parse_args(argv)
    setup_logging_from(parser, args)
    overrides = _given(
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size,
        max_batch_tokens=args.max_batch_tokens,
        instances=args.instances,
        adaptive_delay=False if args.fixed_delay else None,
    )
    stepping = _given(
        max_running=args.max_running,
        max_waiting=args.max_waiting,
        admission=args.step_admission,
    )
    try:
        BatchPolicy(**overrides)  # quotes a bad value now rather than at load
        StepPolicy(**stepping)
        return FamilyConfig(
            family=args.family,
            models=args.models,
            server=server_config_from(args),
            session=SessionOptions(
                args.provider, args.intra_op_threads, not args.no_intra_op_spinning
            ),
            batching_overrides=overrides,
            stepping_overrides=stepping,
            poll_s=args.poll_s,
            session_workers=args.session_workers,
        )
    except ValueError as exc:
        parser.error(str(exc))


async def run(config: FamilyConfig) -> None:
    """Load the family's models and serve them until SIGTERM."""
    executor = ThreadPoolExecutor(config.session_workers, thread_name_prefix="session")
    context = LoadContext(
        config.session, executor, config.batching_overrides, config.stepping_overrides
    )
    registry = ModelRegistry(config.models, config.family, model_class(config.family), context)
    poller: asyncio.Task | None = None

    async def ready() -> None:
        nonlocal poller
        await registry.refresh()
        if not registry.names():
            logger.warning("no %s model loaded from %s yet", config.family, config.models)
        if config.poll_s > 0:
            poller = asyncio.create_task(registry.poll(config.poll_s))

    async def cleanup() -> None:
        if poller is not None:
            poller.cancel()
        await registry.close()
        executor.shutdown(wait=True)

    await serve(
        config.server,
        FamilyServicer(registry, config.server.limits),
        known_models=lambda: set(registry.names()),
        ready=ready,
        cleanup=cleanup,
        model_health=lambda: dict.fromkeys(registry.names(), True),
        relay=True,
    )


def main(argv: list[str] | None = None) -> None:
    run_process(run(parse_args(argv)))


if __name__ == "__main__":
    main()
