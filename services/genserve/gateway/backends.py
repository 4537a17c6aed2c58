"""The gateway's backends: which models each serves, and whether it is healthy.

A backend is a gRPC target: `host:port`, or `dns:///name:port` for a headless
Kubernetes Service, in which case gRPC's round_robin policy spreads calls over
every pod behind the name. The pool asks each backend for ListModels every
`refresh_s`; a backend that fails to answer is ejected from routing until it
answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

import grpc

from genserve.runtime import metrics
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

logger = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),  # the gateway retries itself, knowing what is safe
]


@dataclass(eq=False)
class Backend:
    """One backend target and what it last reported."""

    target: str
    channel: grpc.aio.Channel
    stub: model_service_pb2_grpc.ModelServiceStub
    models: dict[str, pb.ModelInfo] = field(default_factory=dict)
    healthy: bool = False

    async def refresh(self, timeout_s: float) -> None:
        """Ask for the backend's models; mark it unhealthy if it does not answer."""
        try:
            response = await self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if self.healthy:
                logger.warning("backend %s ejected: %s", self.target, exc.code().name)
            self.healthy = False
        else:
            if not self.healthy:
                names = ", ".join(m.name for m in response.models) or "no models"
                logger.info("backend %s up: %s", self.target, names)
            self.healthy = True
            self.models = {m.name: m for m in response.models}
        metrics.BACKEND_UP.labels(backend=self.target).set(1 if self.healthy else 0)


class BackendPool:
    """Routes model names to healthy backends.

    Args:
        targets: gRPC targets of the family services.
        refresh_s: how often to ask every backend for its models.
        timeout_s: how long one ListModels may take.
    """

    def __init__(self, targets: list[str], refresh_s: float = 2.0, timeout_s: float = 2.0) -> None:
        if not targets:
            raise ValueError("the gateway needs at least one backend target")
        self.backends = [self._connect(t) for t in targets]
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._task: asyncio.Task | None = None
        self._turn = itertools.count()

    @staticmethod
    def _connect(target: str) -> Backend:
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        return Backend(target, channel, model_service_pb2_grpc.ModelServiceStub(channel))

    async def refresh(self) -> None:
        """Refresh every backend at once."""
        await asyncio.gather(*(b.refresh(self._timeout_s) for b in self.backends))

    async def start(self, wait_s: float = 10.0) -> None:
        """Refresh until every backend answered or wait_s passed, then keep refreshing."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        await self.refresh()
        while not all(b.healthy for b in self.backends) and loop.time() < give_up:
            await asyncio.sleep(0.2)
            await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for backend in self.backends:
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

    def mark_failed(self, backend: Backend) -> None:
        """Eject a backend that answered UNAVAILABLE until its next good refresh."""
        if backend.healthy:
            logger.warning("backend %s ejected after UNAVAILABLE", backend.target)
        backend.healthy = False
        metrics.BACKEND_UP.labels(backend=backend.target).set(0)
