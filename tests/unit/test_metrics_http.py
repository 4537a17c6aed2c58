"""The /metrics endpoint closes half-sent requests and bounds its connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from genserve.runtime import metrics
from genserve.runtime.metrics_http import THREAD_NAME, MetricsServer, MetricsServerLimits

pytestmark = pytest.mark.unit

_CLIENT_TIMEOUT_S = 5.0
"""How long a test waits for any one reply or close; far above the server's timeouts."""


@contextlib.contextmanager
def metrics_server(timeout_s: float, max_connections: int) -> Iterator[MetricsServer]:
    server = metrics.serve_metrics(
        0, "127.0.0.1", timeout_s=timeout_s, max_connections=max_connections
    )
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def connection_threads() -> int:
    return sum(t.name == THREAD_NAME for t in threading.enumerate())


def wait_until(predicate: Callable[[], bool], timeout_s: float = _CLIENT_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def half_sent(port: int) -> socket.socket:
    """A connection that sent the start of a request and never its end."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=_CLIENT_TIMEOUT_S)
    sock.sendall(b"GET /metr")
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return received


def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=_CLIENT_TIMEOUT_S) as response:
        return response.read().decode()


def test_half_sent_requests_are_closed_after_the_timeout_and_scrapes_go_on():
    baseline = connection_threads()
    with metrics_server(timeout_s=0.5, max_connections=16) as server:
        stuck = [half_sent(server.port) for _ in range(12)]
        try:
            assert wait_until(lambda: server.open_connections == 12)
            assert "genserve_requests_total" in scrape(server.port)
            for sock in stuck:  # a TimeoutError here: the server never closed it
                assert read_until_closed(sock) == b""
        finally:
            for sock in stuck:
                sock.close()
        assert wait_until(lambda: server.open_connections == 0)
        assert wait_until(lambda: connection_threads() == baseline)


def test_connections_beyond_the_bound_are_refused_at_once():
    baseline = connection_threads()
    # The timeout is far longer than the test: only the bound can close the extra ones.
    with metrics_server(timeout_s=60, max_connections=4) as server:
        held = [half_sent(server.port) for _ in range(4)]
        try:
            assert wait_until(lambda: server.open_connections == 4)
            extra = [half_sent(server.port) for _ in range(20)]
            for sock in extra:
                reply = read_until_closed(sock)  # a TimeoutError here: it was not closed
                assert reply == b"" or reply.startswith(b"HTTP/1.0 503 "), reply
                sock.close()
            assert connection_threads() - baseline == 4
        finally:
            for sock in held:
                sock.close()  # the server's read sees the close and ends the thread
        assert wait_until(lambda: server.open_connections == 0)
        assert wait_until(lambda: connection_threads() == baseline)
        assert "genserve_requests_total" in scrape(server.port)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"timeout_s": 0}, "timeout_s must be > 0, got 0"),
        ({"max_connections": 0}, "max_connections must be >= 1, got 0"),
    ],
)
def test_bad_limits_quote_the_value(limits, message):
    with pytest.raises(ValueError, match=message):
        MetricsServerLimits(**limits)
