"""Start, health-check and stop genserve processes on loopback.

A small process supervisor shared by `genserve-up`, the benchmarks and the
integration tests. It starts each child as `python -m <module> ...` with the
same interpreter, waits until the child answers the standard grpc.health.v1
Check RPC with SERVING (failing fast, with the tail of the child's log, if the
child exits first), and stops children with SIGTERM, a grace period, then
SIGKILL. `Supervisor` is a context manager that stops everything it started,
newest first, even when the block raises or the user presses Ctrl-C.

Children start in their own session, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops them gracefully in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_HEALTH_POLL_S = 0.1
_HEALTH_RPC_TIMEOUT_S = 1.0
_LOG_TAIL_LINES = 40


class ProcessError(RuntimeError):
    """A supervised process failed to start or become healthy."""


class ProcessExitedError(ProcessError):
    """The process exited before it became healthy."""


class HealthTimeoutError(ProcessError):
    """The process kept running but was not SERVING within the timeout."""


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return `count` distinct TCP ports that are free on `host` right now.

    All sockets are held open until every port is picked, so the ports are
    distinct; another process may still take one before the caller binds it.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = LOOPBACK) -> int:
    """Return one TCP port that is free on `host` right now."""
    return free_ports(1, host)[0]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP server could bind `host:port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def python_module_command(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def read_log_tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or a note saying why there are none."""
    if path is None:
        return "(output was not captured; see the terminal)"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class ChildProcess:
    """One started child: its name, OS process, log file and health target.

    `healthy` turns True once `wait_healthy` has seen it SERVING.
    """

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        *,
        health_target: str | None,
        log_path: Path | None,
        log_file: IO[bytes] | None,
    ) -> None:
        self.name = name
        self.popen = popen
        self.health_target = health_target
        self.log_path = log_path
        self.healthy = False
        self._log_file = log_file

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while the process runs."""
        return self.popen.poll()

    def is_running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of this child's log."""
        return read_log_tail(self.log_path, lines)

    def close_log(self) -> None:
        """Close the supervisor's handle on the log file (the file stays)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __repr__(self) -> str:
        return f"ChildProcess(name={self.name!r}, pid={self.pid}, rc={self.returncode})"


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    health_target: str | None = None,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ChildProcess:
    """Start `argv` as a child process in its own session.

    Args:
        name: A short name for messages, e.g. "family vae".
        argv: The command; see `python_module_command`.
        health_target: "host:port" that answers grpc.health.v1, if any.
        log_path: File that receives stdout and stderr; None inherits ours.
        env: Extra environment variables on top of ours.
        cwd: Working directory; None keeps ours.

    Returns:
        The started child.
    """
    log_file = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file is not None else None,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    logger.info("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    return ChildProcess(
        name, popen, health_target=health_target, log_path=log_path, log_file=log_file
    )


def check_health(target: str, service: str = "", timeout_s: float = _HEALTH_RPC_TIMEOUT_S) -> bool:
    """Whether `target` answers grpc.health.v1 Check with SERVING for `service`."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_healthy(child: ChildProcess, timeout_s: float = 60.0, service: str = "") -> None:
    """Block until `child` reports SERVING on its health target.

    Raises:
        ProcessExitedError: The child exited first; the message holds its log tail.
        HealthTimeoutError: Not SERVING within `timeout_s`; the message holds its log tail.
        ValueError: The child has no health target.
    """
    if child.health_target is None:
        raise ValueError(f"{child.name} has no health target to wait on")
    deadline = time.monotonic() + timeout_s
    while True:
        if not child.is_running():
            raise ProcessExitedError(_failure_message(child, f"exited with {child.returncode}"))
        if check_health(child.health_target, service):
            child.healthy = True
            logger.info("%s is SERVING on %s", child.name, child.health_target)
            return
        if time.monotonic() >= deadline:
            raise HealthTimeoutError(
                _failure_message(child, f"was not SERVING within {timeout_s:g} s")
            )
        time.sleep(_HEALTH_POLL_S)


def _failure_message(child: ChildProcess, what: str) -> str:
    """A message naming the child and what went wrong, ending with its log tail."""
    where = f" on {child.health_target}" if child.health_target else ""
    log = f" (log: {child.log_path})" if child.log_path else ""
    return f"{child.name}{where} {what}{log}; last output:\n{child.log_tail()}"


def stop_process(child: ChildProcess, grace_s: float = 10.0) -> int:
    """Stop `child`: SIGTERM, wait up to `grace_s`, then SIGKILL.

    Returns:
        The child's exit status (negative for a signal, as in subprocess).
    """
    try:
        if child.is_running():
            child.popen.send_signal(signal.SIGTERM)
            try:
                child.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %g s; killing it", child.name, grace_s)
                child.popen.kill()
                child.popen.wait()
    finally:
        child.close_log()
    return child.popen.returncode


def kill_process(child: ChildProcess) -> None:
    """Kill `child` at once with SIGKILL and reap it."""
    try:
        if child.is_running():
            child.popen.kill()
        child.popen.wait()
    finally:
        child.close_log()


class Supervisor:
    """Starts children and stops all of them on exit, newest first.

    Args:
        log_dir: Where each child's log goes as `<name>.log`; None inherits output.
        grace_s: How long each child gets to stop after SIGTERM.

    Usage::

        with Supervisor(log_dir=tmp) as sup:
            svc = sup.start("family vae", python_module_command(...), health_target=addr)
            sup.wait_healthy(svc)
            ...
    """

    def __init__(self, *, log_dir: Path | None = None, grace_s: float = 10.0) -> None:
        self.log_dir = log_dir
        self.grace_s = grace_s
        self.children: list[ChildProcess] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        health_target: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ChildProcess:
        """Start a child and remember it; see `start_process`."""
        log_path = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"{_file_name(name)}.log"
        child = start_process(
            name, argv, health_target=health_target, log_path=log_path, env=env, cwd=cwd
        )
        self.children.append(child)
        return child

    def wait_healthy(self, child: ChildProcess, timeout_s: float = 60.0) -> None:
        """Wait until `child` is SERVING; see `wait_healthy`."""
        wait_healthy(child, timeout_s)

    def wait_all_healthy(self, timeout_s: float = 60.0) -> None:
        """Wait until every child with a health target has been SERVING once."""
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.health_target is not None and not child.healthy:
                wait_healthy(child, max(deadline - time.monotonic(), 0.0))

    def exited(self) -> list[ChildProcess]:
        """The children that have exited on their own."""
        return [child for child in self.children if not child.is_running()]

    def stop_all(self) -> None:
        """Stop every child, newest first; a second Ctrl-C kills the rest at once."""
        remaining = list(reversed(self.children))
        try:
            while remaining:
                try:
                    stop_process(remaining[0], self.grace_s)
                except Exception:
                    logger.exception("could not stop %s", remaining[0].name)
                remaining.pop(0)
        except KeyboardInterrupt:
            for child in remaining:
                kill_process(child)
            raise
        finally:
            self.children.clear()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _file_name(name: str) -> str:
    """A process name turned into a safe file name: "family vae" -> "family-vae"."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)
