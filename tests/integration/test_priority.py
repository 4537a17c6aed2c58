"""Call priority end to end: a high-priority call sent through the gateway behind a flood of
low-priority ones is served next, not after the flood.

Each flood call decodes 256 latents against a batch cap of 64, so it waits as four
parts; the high-priority call is sent once the family's queue holds many of them.
Order of completion is what is asserted, never time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from genserve.client.tensors import from_numpy
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import COMMITTED_VAE, family_behind_gateway, scrape, total, wait_for

FLOOD = 24
ROWS = 256


def decode(stub, priority: str, rows: int) -> None:
    request = pb.DecodeRequest(model_name=COMMITTED_VAE.name)
    request.latents.CopyFrom(from_numpy(np.zeros((rows, 16), np.float32)))
    stub.Decode(request, metadata=[("x-priority", priority)], timeout=120)


def test_a_high_priority_call_overtakes_a_low_priority_flood(model_repo, tmp_path):
    flags = ("--max-batch-size", "64", "--max-queue-delay-ms", "0", "--intra-op-threads", "1")
    with family_behind_gateway(tmp_path, "vae", model_repo, *flags) as served:
        channel = grpc.insecure_channel(served.gateway.target)
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        done: list[str] = []
        lock = threading.Lock()

        def call(name: str, priority: str, rows: int) -> None:
            decode(stub, priority, rows)
            with lock:
                done.append(name)

        def queued() -> float:
            return total(scrape(served.family.metrics), "genserve_queue_depth")

        with channel, ThreadPoolExecutor(FLOOD + 1) as pool:
            flood = [pool.submit(call, f"low{i}", "low", ROWS) for i in range(FLOOD)]
            assert wait_for(lambda: queued() >= FLOOD, timeout_s=60), "the flood never queued"
            with lock:
                before = len(done)
            urgent = pool.submit(call, "high", "high", 64)
            for future in [urgent, *flood]:
                future.result()
        overtaken_by = done.index("high") - before
        assert overtaken_by <= 1, (
            f"{overtaken_by} low-priority calls finished after the high-priority one was sent "
            f"and before it: {done}"
        )
        assert len(done) == FLOOD + 1
