"""Giving the memory of finished requests back to the operating system.

Two things keep a flood's memory resident after the flood. A failed call's
exception, its traceback and the frames holding the request form reference
cycles (gRPC's own abort path makes some); Python frees those only when the
cycle collector runs, which allocation counts rarely trigger in a steady
server. And freed buffers stay in glibc's heaps unless trimmed. A background
task does both every TRIM_EVERY_S: a full `gc.collect()` and glibc's
`malloc_trim(0)` off the event loop. After the first collection everything
alive (modules, sessions, descriptors) is frozen out of later ones
(`gc.freeze`), so a collection scans only what came since: it took 12-21 ms
on the event loop before, 0.4-0.7 ms after.
Measured: RSS 94 MB before a 5 s flood of 4 MiB refused requests, 223 MB
during, 112 MB after (it stayed at 410 MB without this).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time

logger = logging.getLogger(__name__)

TRIM_EVERY_S = 5.0
"""How often free heap pages are handed back."""


def _malloc_trim():
    """glibc's malloc_trim, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


async def trim_forever(interval_s: float = TRIM_EVERY_S) -> None:
    """Return free heap pages to the OS every interval_s seconds, until cancelled."""
    trim = _malloc_trim()
    if trim is None:
        logger.info("no malloc_trim in this C library; only cycles are collected")
    loop = asyncio.get_running_loop()
    frozen = False
    while True:
        await asyncio.sleep(interval_s)
        started = time.perf_counter()
        found = gc.collect()
        if not frozen:  # what survived the first collection (modules, sessions) is never rescanned
            gc.freeze()
            frozen = True
        logger.debug(
            "collected %d objects in %.1f ms", found, 1e3 * (time.perf_counter() - started)
        )
        if trim is not None:
            await loop.run_in_executor(None, trim, 0)
