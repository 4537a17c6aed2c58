"""The gateway's backends: which models each serves, and whether calls may go to it.

A backend is a gRPC target: `host:port`, or `dns:///name:port` for a headless
Kubernetes Service, in which case gRPC's round_robin policy spreads calls over
every pod behind the name. Three things keep calls off a backend that cannot
answer, whether it is dead, frozen or slow:

- outlier detection: `eject_after` failed calls in a row (UNAVAILABLE, or a
  try that ran out of the gateway's per-try time) take it out of routing;
  any answer clears the count;
- an active health check: every `refresh_s` each backend is asked for its
  models (ListModels) with a `check_timeout_s` deadline. A check answered
  UNAVAILABLE (connection refused or dropped, server draining) ejects it at
  once; `eject_after` timed-out checks in a row do too (one slow check on a
  busy machine ejects nothing). A check that passes puts it back;
- HTTP/2 keepalive: a connection whose ping goes unanswered for
  `backend_keepalive_timeout_s` (a frozen process still accepts TCP) is
  closed, which fails its calls with UNAVAILABLE at once, so the gateway
  retries them elsewhere and counts them against the backend.

Reconnect backoff is capped at `reconnect_max_s`, so a backend that comes back
after a long outage is connected to again within about that long and
re-admitted by the next check.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from genserve.gateway.relay import REQUEST_BUDGET_BYTES, RelayClient, RelayUnsupported
from genserve.runtime import metrics
from genserve.runtime.limits import grpc_ms
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

logger = logging.getLogger(__name__)

MIN_KEEPALIVE_S = 0.5
"""Family services take pings at most this often (server/server.py's ping options)."""
_INITIAL_RECONNECT_BACKOFF_S = 0.1
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_POSITIVE_FIELDS = (
    "refresh_s", "check_timeout_s", "backend_keepalive_timeout_s", "reconnect_max_s",
    "connect_timeout_s",
)  # fmt: skip


@dataclass(frozen=True)
class BackendTls:
    """TLS to the backends: the CA that signed their certificates, and the gateway's
    own certificate and key when they require one (mutual TLS)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--backend-tls-cert and --backend-tls-key go together")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"--backend-tls-{name}: {path} is not a readable file")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials, read from the files now."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


@dataclass(frozen=True)
class PoolConfig:
    """How the gateway watches its backends and when it stops routing to one."""

    refresh_s: float = 0.5
    """How often each backend is health-checked (asked for its models)."""
    check_timeout_s: float = 1.0
    """How long one health check may take before it counts as a failure."""
    eject_after: int = 3
    """Failed checks in a row, or failed calls in a row (UNAVAILABLE, or out of their
    try), that eject a backend."""
    backend_keepalive_s: float = 1.0
    """How often each backend connection is pinged; at least MIN_KEEPALIVE_S. (The
    gateway's own server keepalive, towards its callers, is in Limits.)"""
    backend_keepalive_timeout_s: float = 1.0
    """How long a ping may go unanswered before the connection and its calls are dropped."""
    reconnect_max_s: float = 1.0
    """The longest wait between two attempts to reconnect to a backend."""
    connect_timeout_s: float = 2.0
    """How long one connection attempt (TCP and HTTP/2 handshake) may take."""

    def __post_init__(self) -> None:
        for name in _POSITIVE_FIELDS:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.eject_after < 1:
            raise ValueError(f"eject_after must be >= 1, got {self.eject_after}")
        if self.backend_keepalive_s < MIN_KEEPALIVE_S:
            raise ValueError(
                f"backend_keepalive_s must be >= {MIN_KEEPALIVE_S} (family services refuse pings "
                f"more often), got {self.backend_keepalive_s}"
            )

    def channel_options(self) -> list[tuple[str, int | str]]:
        """The gRPC options of every backend channel."""
        initial_s = min(_INITIAL_RECONNECT_BACKOFF_S, self.reconnect_max_s)
        return [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),  # the gateway retries itself, knowing what is safe
            ("grpc.keepalive_time_ms", grpc_ms(self.backend_keepalive_s)),
            ("grpc.keepalive_timeout_ms", grpc_ms(self.backend_keepalive_timeout_s)),
            # Without this a ping already in flight keeps gRPC's one-minute timeout.
            ("grpc.http2.ping_timeout_ms", grpc_ms(self.backend_keepalive_timeout_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", grpc_ms(initial_s)),
            ("grpc.max_reconnect_backoff_ms", grpc_ms(self.reconnect_max_s)),
            ("grpc.min_reconnect_backoff_ms", grpc_ms(self.connect_timeout_s)),  # connect deadline
        ]


@dataclass(eq=False)
class Backend:
    """One backend target, what it last reported, and whether calls may go to it."""

    target: str
    channel: grpc.aio.Channel
    stub: model_service_pb2_grpc.ModelServiceStub
    eject_after: int = 3
    """Failed checks, or failed calls, in a row that eject this backend."""
    models: dict[str, pb.ModelInfo] = field(default_factory=dict)
    healthy: bool = False
    """Whether calls are routed here: a check passed and no ejection since."""
    check_failures: int = 0
    """Failed health checks in a row."""
    call_failures: int = 0
    """Failed calls in a row since the last answer or admission."""
    relay: RelayClient | None = None
    """Unary calls go over this Relay stream where the backend has one; None: as RPCs."""
    in_flight: int = 0
    """Unary calls forwarded here and not answered yet."""

    async def unary(self, method: str, request, *, timeout_s: float | None, metadata):
        """One unary ModelService call: over the relay stream when other calls to this
        backend are in flight and the request fits a relay message, else as an RPC.

        A lone call goes as an RPC of its own: it has nothing to share a message
        with, and one RPC costs less than a stream message each way.

        Raises:
            grpc.aio.AioRpcError: as the unary call would.
        """
        busy = self.in_flight > 0
        self.in_flight += 1
        try:
            if busy and self.relay is not None and self.relay.supported:
                body = request.SerializeToString()
                if len(body) <= REQUEST_BUDGET_BYTES:
                    try:
                        answer = await self.relay.call(
                            method, body, timeout_s=timeout_s, metadata=metadata
                        )
                    except RelayUnsupported:
                        pass
                    else:
                        return _RESPONSES[method].FromString(answer)
            call = getattr(self.stub, method)
            return await call(request, timeout=timeout_s, metadata=metadata)
        finally:
            self.in_flight -= 1

    async def check(self, timeout_s: float) -> None:
        """Ask for the backend's models: admit it if it answers, count a failure if not."""
        try:
            response = await self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.check_failures += 1
            at_once = exc.code() == grpc.StatusCode.UNAVAILABLE  # refused, dropped or draining
            self._eject_after(self.check_failures, "check", exc.code(), at_once=at_once)
        else:
            self.check_failures = 0
            self._admit(response.models)
        metrics.BACKEND_UP.labels(backend=self.target).set(1 if self.healthy else 0)

    def answered(self) -> None:
        """A call got an answer, even an error one: the backend is alive."""
        self.call_failures = 0

    def failed(self, code: grpc.StatusCode) -> None:
        """A call failed in a way that blames the backend: unreachable or too slow."""
        self.call_failures += 1
        self._eject_after(self.call_failures, "call", code)

    def _eject_after(
        self, in_a_row: int, reason: str, code: grpc.StatusCode, *, at_once: bool = False
    ) -> None:
        """Eject the backend once `in_a_row` failures reach eject_after, or `at_once`."""
        if not self.healthy or (in_a_row < self.eject_after and not at_once):
            return
        logger.warning(
            "backend %s ejected (%s): %d failed in a row, the last with %s",
            self.target, reason, in_a_row, code.name,
        )  # fmt: skip
        metrics.BACKEND_EJECTIONS.labels(backend=self.target, reason=reason).inc()
        self.healthy = False
        metrics.BACKEND_UP.labels(backend=self.target).set(0)

    def _admit(self, models: Iterable[pb.ModelInfo]) -> None:
        self.models = {m.name: m for m in models}
        if not self.healthy:
            names = ", ".join(self.models) or "no models"
            logger.info("backend %s up: %s", self.target, names)
            self.call_failures = 0
        self.healthy = True


_ONE_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]+")
_RESPONSES = {
    m: getattr(pb, f"{m}Response")
    for m in ("DescribeModel", "Generate", "Encode", "Decode", "Reconstruct", "Complete")
}
"""The response message of each unary call the gateway forwards."""


def _one_address(target: str) -> bool:
    """Whether `target` is one host:port (no scheme, no address list)."""
    return _ONE_ADDRESS.fullmatch(target) is not None


class BackendPool:
    """Routes model names to healthy backends and keeps checking them.

    Args:
        targets: gRPC targets of the family services.
        config: health checks, ejection, keepalive and reconnect bounds.
    """

    def __init__(
        self,
        targets: list[str],
        config: PoolConfig | None = None,
        tls: BackendTls | None = None,
        *,
        relay: bool = True,
    ) -> None:
        if not targets:
            raise ValueError("the gateway needs at least one backend target")
        self._config = config or PoolConfig()
        self._relay = relay
        self._credentials = None if tls is None else tls.credentials()
        self.backends = [self._connect(t) for t in targets]
        self._tasks: list[asyncio.Task] = []
        self._turn = itertools.count()

    def _connect(self, target: str) -> Backend:
        options = self._config.channel_options()
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        # One stream rides one connection: a target that resolves to several
        # addresses (dns:///, ipv4:a,b) keeps gRPC's per-call balancing instead.
        relay = RelayClient(channel, target) if self._relay and _one_address(target) else None
        return Backend(target, channel, stub, eject_after=self._config.eject_after, relay=relay)

    async def refresh(self) -> None:
        """Check every backend at once."""
        timeout_s = self._config.check_timeout_s
        await asyncio.gather(*(b.check(timeout_s) for b in self.backends))

    async def start(self, wait_s: float = 10.0) -> None:
        """Check until every backend answered or wait_s passed, then keep checking."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        await self.refresh()
        while not all(b.healthy for b in self.backends) and loop.time() < give_up:
            await asyncio.sleep(0.2)
            await self.refresh()
        self._tasks = [asyncio.create_task(self._watch(b)) for b in self.backends]

    async def _watch(self, backend: Backend) -> None:
        """Check one backend every refresh_s, apart from the others: a slow one holds none up."""
        while True:
            await asyncio.sleep(self._config.refresh_s)
            await backend.check(self._config.check_timeout_s)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for backend in self.backends:
            if backend.relay is not None:
                backend.relay.close()
            await backend.channel.close()

    def model_health(self) -> dict[str, bool]:
        """Every model any backend has reported: True while a healthy backend serves it."""
        health: dict[str, bool] = {}
        for backend in self.backends:
            for name in backend.models:
                health[name] = health.get(name, False) or backend.healthy
        return health

    def model_names(self) -> set[str]:
        return {name for b in self.backends if b.healthy for name in b.models}

    def models(self) -> list[pb.ModelInfo]:
        """Every model on a healthy backend, once each, sorted by name."""
        seen: dict[str, pb.ModelInfo] = {}
        for backend in self.backends:
            if backend.healthy:
                for name, info in backend.models.items():
                    seen.setdefault(name, info)
        return [seen[n] for n in sorted(seen)]

    def route(self, model_name: str) -> list[Backend]:
        """Healthy backends serving the model, rotated so load spreads across them."""
        found = [b for b in self.backends if b.healthy and model_name in b.models]
        if len(found) > 1:
            shift = next(self._turn) % len(found)
            found = found[shift:] + found[:shift]
        return found
