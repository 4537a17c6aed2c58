"""The /metrics HTTP endpoint: bounded in connections and in time per connection.

prometheus_client's own start_http_server gives every connection a thread
with no socket timeout, so a client that sends half a request holds a thread
forever. This server serves the same exposition (prometheus_client's
MetricsHandler, on any path) with:

- a socket timeout per connection: a request that does not arrive, or a reader
  that stops reading, is closed after `timeout_s` without progress;
- at most `max_connections` connections at once: one more is answered 503 and
  closed at once, without a thread;
- daemon threads, so a stuck connection never holds the process open.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import HTTPServer
from typing import Any

from prometheus_client.exposition import MetricsHandler

logger = logging.getLogger(__name__)

THREAD_NAME = "metrics-http"
"""The name of every connection thread, so tests and profiles can find them."""

_REFUSAL_LOG_EVERY_S = 60.0
_BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\n"
    b"Retry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


@dataclass(frozen=True)
class MetricsServerLimits:
    """Bounds of the /metrics endpoint."""

    timeout_s: float = 5.0
    """Socket timeout per connection: a half-sent request is closed after this."""
    max_connections: int = 32
    """Connections served at once; one more is answered 503 and closed."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections!r}")


class MetricsServer(HTTPServer):
    """An HTTP server of Prometheus metrics, one daemon thread per connection.

    Args:
        address: (host, port) to bind; port 0 picks a free one.
        limits: the timeout and the connection bound.
    """

    request_queue_size = 128

    def __init__(self, address: tuple[str, int], limits: MetricsServerLimits) -> None:
        self.address_family = _family_of(address[0])
        handler = type("_TimedMetricsHandler", (MetricsHandler,), {"timeout": limits.timeout_s})
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._lock = threading.Lock()
        self._open = 0
        self._refused_unlogged = 0
        self._refusal_logged_at = -_REFUSAL_LOG_EVERY_S
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.port

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    @property
    def open_connections(self) -> int:
        """Connections being served right now."""
        with self._lock:
            return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a daemon thread, or refuse it when all slots are taken."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        with self._lock:
            self._open += 1
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), name=THREAD_NAME, daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread could be started
            self._release()
            self.shutdown_request(request)
            raise

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        """Answer 503 without blocking (a fresh socket's send buffer is empty) and close."""
        self._log_refusal(client_address)
        try:
            request.setblocking(False)
            request.send(_BUSY_RESPONSE)
        except OSError:
            pass
        self.shutdown_request(request)

    def _log_refusal(self, client_address: Any) -> None:
        """One warning per _REFUSAL_LOG_EVERY_S, counting the refusals in between."""
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at < _REFUSAL_LOG_EVERY_S:
            return
        logger.warning(
            "metrics: all %d connections busy; refused %d (latest from %s)",
            self.limits.max_connections,
            self._refused_unlogged,
            client_address[0],
        )
        self._refused_unlogged, self._refusal_logged_at = 0, now

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection in one line instead of a traceback on stderr."""
        logger.debug("metrics: connection from %s failed", client_address[0], exc_info=True)


def _family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 host, else AF_INET."""
    infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


def start_metrics_server(
    port: int, host: str = "127.0.0.1", limits: MetricsServerLimits | None = None
) -> MetricsServer:
    """Bind host:port and serve /metrics from a daemon thread; returns the server.

    Stop it with `server.shutdown()` then `server.server_close()`.
    """
    server = MetricsServer((host, port), limits or MetricsServerLimits())
    threading.Thread(target=server.serve_forever, name="metrics-accept", daemon=True).start()
    return server
