"""kill -9 of one of two replicas behind a gateway: calls through both protocols, and streams.

Two replicas of a family service share a model repository behind one gateway.

- Under load from genserve's own client (ModelService) and from the stock
  `tritonclient.grpc.InferenceServerClient` (Open Inference Protocol) at the
  same time, one replica is killed with SIGKILL: no seeded call fails through
  either protocol, and every one returns the bytes it returned before.
- Diffusion streams served by both replicas are running when one replica is
  killed: each stream on it ends with UNAVAILABLE well within its deadline
  (not DEADLINE_EXCEEDED, so it did not hang), and the others finish normally.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton

from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import (
    TINY,
    Caller,
    Load,
    Started,
    diffusion_request,
    model_service_caller,
    scrape,
    start,
    status_name,
    total,
    train_tiny_diffusion,
    wait_for,
)

pytestmark = pytest.mark.integration

SEED, SAMPLES = 7, 2
DIFFUSION = "diffusion-tiny"
STREAMS = 6
STREAM_STEPS = 1000
"""Steps of each stream: enough that none ends before the kill."""
STREAM_DEADLINE_S = 60.0
"""Each stream's deadline: a stream that hangs on the killed replica ends DEADLINE_EXCEEDED."""


@contextmanager
def replicas_behind_gateway(
    log_dir: Path, family: str, repo: Path
) -> Iterator[tuple[list[Started], str]]:
    """Two `family` replicas over `repo` and a gateway to both; yields them and its target."""
    with Supervisor(log_dir=log_dir, grace_s=5) as sup:
        replicas = [
            start(sup, "genserve.families", "--family", family, "--models", str(repo))
            for _ in range(2)
        ]
        backends = [arg for replica in replicas for arg in ("--backend", replica.target)]
        gateway = start(sup, "genserve.gateway", *backends, "--refresh-s", "0.5")
        yield replicas, gateway.target


def kill(replica: Started) -> None:
    """SIGKILL a replica and reap it."""
    replica.child.popen.kill()
    replica.child.popen.wait(10)


def served_calls(replica: Started, method: str) -> float:
    """Calls of `method` the replica answered so far, by its own metrics."""
    return total(scrape(replica.metrics), "genserve_requests_total", method=method)


@contextmanager
def oip_caller(target: str) -> Iterator[Callable[[], bytes]]:
    """The stock tritonclient and a seeded OIP infer of the tiny VAE's images."""
    settings = {"num_samples": SAMPLES, "seed": SEED}
    with triton.InferenceServerClient(target) as client:

        def call() -> bytes:
            result = client.infer(TINY, [], parameters=settings, client_timeout=10)
            return result.as_numpy("images").tobytes()

        yield call


def test_kill_9_of_a_replica_fails_no_call_through_either_protocol(tiny_repo, tmp_path):
    with replicas_behind_gateway(tmp_path / "logs", "vae", tiny_repo) as (replicas, gateway):
        callers = []
        for label, connect in (
            ("ModelService", partial(model_service_caller, gateway, TINY, SAMPLES, SEED)),
            ("OIP", partial(oip_caller, gateway)),
        ):
            with connect() as call:
                callers.append(Caller(label, connect, call()))
        assert callers[0].expected == callers[1].expected  # one seed, one result, either way
        with Load(callers) as load:
            # Both replicas answer calls before one is killed (the gateway
            # forwards an OIP infer to a replica as a Generate).
            assert load.progress()
            assert wait_for(lambda: all(served_calls(r, "Generate") > 0 for r in replicas))
            kill(replicas[1])
            assert load.progress(calls=50)
        assert load.failures() == {}, load.codes
        assert load.mismatches.total() == 0, load.mismatches
        assert replicas[0].child.is_running()


class Stream:
    """One GenerateStream read on a thread of its own: its events and how it ended."""

    def __init__(self, stub: model_service_pb2_grpc.ModelServiceStub, seed: int) -> None:
        request = pb.GenerateStreamRequest(request=diffusion_request(DIFFUSION, seed, STREAM_STEPS))
        self.call = stub.GenerateStream(request, timeout=STREAM_DEADLINE_S)
        self.events: queue.Queue = queue.Queue()
        self.started = threading.Event()
        self.code: str | None = None
        self.results = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.started.set()
                self.results += event.HasField("result")
            self.code = "OK"
        except grpc.RpcError as exc:
            self.code = status_name(exc)
        finally:
            self.started.set()

    def wait(self) -> str | None:
        """How the stream ended; None if it had not within its deadline and a margin."""
        self._thread.join(STREAM_DEADLINE_S + 10)
        return self.code


def in_flight_streams(replica: Started) -> float:
    return total(scrape(replica.metrics), "genserve_in_flight_requests", method="GenerateStream")


@pytest.fixture(scope="module")
def diffusion_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("diffusion-models")
    train_tiny_diffusion(repo, DIFFUSION, timesteps=STREAM_STEPS)
    return repo


def test_streams_on_a_killed_replica_end_unavailable_and_the_others_finish(
    diffusion_repo, tmp_path
):
    with replicas_behind_gateway(tmp_path / "logs", "diffusion", diffusion_repo) as (
        replicas,
        gateway,
    ):
        with grpc.insecure_channel(gateway) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            streams = [Stream(stub, seed) for seed in range(STREAMS)]
            # Every stream has sent an event (so the gateway can no longer retry
            # it elsewhere) and each replica holds some of them.
            assert all(s.started.wait(STREAM_DEADLINE_S) for s in streams)
            assert all(s.code is None for s in streams), [s.code for s in streams]
            held = [in_flight_streams(r) for r in replicas]
            assert sum(held) == STREAMS and all(held), held
            kill(replicas[1])
            codes = [s.wait() for s in streams]
        assert sorted(codes) == sorted(["OK"] * int(held[0]) + ["UNAVAILABLE"] * int(held[1]))
        assert all(s.results == 1 for s, code in zip(streams, codes, strict=True) if code == "OK")
        assert replicas[0].child.is_running()
