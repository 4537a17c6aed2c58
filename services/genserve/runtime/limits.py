"""Every bound a genserve process puts on what a client may send or hold.

One dataclass, `Limits`, with a documented default per bound; every process
takes the same `--max-...` flags (`add_limit_flags`), and docs/limits.md lists
them. Bounds are checked before work is spent: message bytes by gRPC before a
message is parsed, concurrent calls and names before a handler runs, image
headers before a pixel is decoded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import resource
from dataclasses import dataclass, field

from genserve.runtime.metrics_http import MetricsServerLimits

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")


def _bound(default: float, help_text: str):
    """A Limits field: its default and the sentence its flag and docs/limits.md show."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Limits:
    """Bounds on requests, calls and connections of one process."""

    max_receive_message_bytes: int = _bound(
        4 * 1024 * 1024,
        "Largest request message; gRPC refuses a bigger one (RESOURCE_EXHAUSTED) unread.",
    )
    max_send_message_bytes: int = _bound(64 * 1024 * 1024, "Largest response message.")
    max_concurrent_rpcs: int = _bound(
        1000,
        "Calls handled at once; more are refused with RESOURCE_EXHAUSTED (health Check exempt).",
    )
    max_pending_calls: int = _bound(
        20000, "Calls gRPC may hold before the handler picks them up; beyond, gRPC cancels them."
    )
    max_image_pixels: int = _bound(
        4 * 1024 * 1024,
        "Pixel values (width x height x channels, over all images) one request may carry.",
    )
    max_name_chars: int = _bound(
        128, "Longest model name; longer ones are refused, never echoed whole."
    )
    max_request_id_chars: int = _bound(
        64, "Longest caller-chosen x-request-id; a longer or unsafe one is replaced."
    )
    max_connections: int = _bound(4096, "Open client connections; more are closed at once.")
    connection_idle_s: float = _bound(
        10.0, "A connection with no call for this long is closed (GOAWAY)."
    )
    handshake_timeout_s: float = _bound(
        5.0, "A connection that has not finished its HTTP/2 handshake in this time is closed."
    )
    keepalive_s: float = _bound(
        10.0, "The server pings a connection that has been quiet this long."
    )
    keepalive_timeout_s: float = _bound(
        5.0, "A connection whose ping goes unanswered this long is closed (a half-open peer)."
    )
    metrics_timeout_s: float = _bound(
        MetricsServerLimits.timeout_s,
        "A /metrics HTTP connection that makes no progress this long is closed.",
    )
    metrics_max_connections: int = _bound(
        MetricsServerLimits.max_connections,
        "Open /metrics HTTP connections; one more is answered 503 at once.",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"{f.name} must be > 0, got {value}")

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC server options that enforce these bounds."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.server.max_pending_requests", self.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", self.max_pending_calls),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_connection_idle_ms", grpc_ms(self.connection_idle_s)),
            ("grpc.server_handshake_timeout_ms", grpc_ms(self.handshake_timeout_s)),
            ("grpc.keepalive_time_ms", grpc_ms(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", grpc_ms(self.keepalive_timeout_s)),
        ]

    def request_id(self, given: str | None) -> str | None:
        """A caller's x-request-id if it is short and safe to log, else None."""
        if given and len(given) <= self.max_request_id_chars and _REQUEST_ID.fullmatch(given):
            return given
        return None


def grpc_ms(seconds: float) -> int:
    """Seconds as a gRPC option's whole milliseconds, at least 1 (0 would mean "off")."""
    return max(1, round(seconds * 1000))


def cut(value: str, limit: int = 64) -> str:
    """A caller's string cut to `limit` characters ("..." marks a cut), for errors and logs."""
    return value if len(value) <= limit else value[:limit] + "..."


def shown(value: str, limit: int = 64) -> str:
    """A caller's string as it may appear in an error or a log: cut, then quoted."""
    return repr(cut(value, limit))


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit.

    Connections are bounded by `max_connections`; the soft limit must sit above
    that, with room for model files and backend channels, or a flood of
    connections would leave the process unable to open anything.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            logger.warning("could not raise the open-file limit from %d", soft)
    return soft


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per Limits field, e.g. --max-concurrent-rpcs; defaults from Limits."""
    group = parser.add_argument_group("limits (see docs/limits.md)")
    for f in dataclasses.fields(Limits):
        kind = int if f.type in ("int", int) else float
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=kind,
            default=f.default,
            dest=f"limit_{f.name}",
            metavar=kind.__name__.upper(),
            help=f"{f.metadata['help']} (default {f.default})",
        )


def limits_from(args: argparse.Namespace) -> Limits:
    """The Limits that add_limit_flags' flags describe.

    Raises:
        ValueError: a bound is not positive.
    """
    values = {f.name: getattr(args, f"limit_{f.name}") for f in dataclasses.fields(Limits)}
    return Limits(**values)
