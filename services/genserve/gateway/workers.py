"""Gateway worker processes that share one port, so the gateway can use more cores.

One gateway process runs one event loop, which uses about one core. With
`--workers N` the gateway process starts N worker processes instead of
serving itself; each binds the same port with SO_REUSEPORT, and the kernel
spreads incoming connections across them (a connection stays with the worker
that took it). Worker i serves /metrics on `--metrics-port` + i, so a
Prometheus scrape sees every worker. API-key rate limits and stream caps are
kept per worker.

The parent only watches: it passes SIGTERM and SIGINT on to every worker and
returns once they have all stopped; a worker that dies without being told to
is started again (at most once every `RESTART_BACKOFF_S`), so one crash does
not take a share of the port's connections down with it. A worker gets
SIGTERM when its parent dies, however it died, so none is left behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

WORKER_INDEX_FLAG = "--worker-index"
"""The flag the parent adds to a worker's command line (not for people to type)."""
RESTART_BACKOFF_S = 1.0
"""The shortest time between two starts of the same worker."""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a worker before it runs: a SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_command(argv: Sequence[str], index: int) -> list[str]:
    """The command line of worker `index`: the parent's own flags plus its index."""
    return [sys.executable, "-m", "genserve.gateway", *argv, WORKER_INDEX_FLAG, str(index)]


class Workers:
    """Starts, watches and stops the worker processes.

    Args:
        argv: the gateway's command line, passed on to every worker.
        count: how many workers.
    """

    def __init__(self, argv: Sequence[str], count: int) -> None:
        self._argv = list(argv)
        self._count = count
        self._children: dict[int, subprocess.Popen] = {}
        self._started_at: dict[int, float] = {}
        self._stopping = False

    def run(self) -> int:
        """Run the workers until a signal stops them; returns the exit status (0: clean)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for index in range(self._count):
            self._start(index)
        worst = 0
        while self._children:
            pid, status = os.wait()
            index = next((i for i, c in self._children.items() if c.pid == pid), None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self._children.pop(index).returncode = code
            if self._stopping:
                worst = max(worst, abs(code))
                continue
            logger.error(
                "gateway worker %d (pid %d) died with %d; starting it again", index, pid, code
            )
            pause_s = self._started_at[index] + RESTART_BACKOFF_S - time.monotonic()
            if pause_s > 0:
                time.sleep(pause_s)
            if not self._stopping:
                self._start(index)
        logger.info("all %d gateway workers stopped", self._count)
        return 1 if worst else 0

    def _start(self, index: int) -> None:
        child = subprocess.Popen(
            worker_command(self._argv, index),
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # no worker outlives a parent that was killed
        )
        self._children[index] = child
        self._started_at[index] = time.monotonic()
        logger.info("gateway worker %d started (pid %d)", index, child.pid)

    def _stop(self, signum: int, frame) -> None:
        """Pass the signal on to every worker; they finish their calls and exit."""
        self._stopping = True
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signum)
