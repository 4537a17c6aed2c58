"""kill -9 of one of two replicas behind a gateway: calls through both protocols, and streams.

Two replicas of a family service share a model repository behind one gateway.

- Under load from genserve's own client (ModelService) and from the stock
  `tritonclient.grpc.InferenceServerClient` (Open Inference Protocol) at the
  same time, one replica is killed with SIGKILL: no seeded call fails through
  either protocol, and every one returns the bytes it returned before.
- Diffusion streams served by both replicas are running when one replica is
  killed: each stream on it ends with UNAVAILABLE well within its deadline
  (not DEADLINE_EXCEEDED, so it did not hang), and the others finish normally.

Both run twice: in plaintext, and with the front door on (TLS to the gateway,
mutual TLS from the gateway to the replicas, every call carrying an API key).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton

from genserve.client import Client
from genserve.gateway.auth import hash_key
from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from ..certs import Certs, make_certs
from .conftest import (
    TINY,
    Caller,
    Load,
    Started,
    diffusion_request,
    scrape,
    status_name,
    total,
    train_tiny_diffusion,
    wait_for,
    wait_serving,
)

pytestmark = pytest.mark.integration

SEED, SAMPLES = 7, 2
DIFFUSION = "diffusion-tiny"
STREAMS = 6
STREAM_STEPS = 1000
"""Steps of each stream: enough that none ends before the kill."""
STREAM_DEADLINE_S = 60.0
"""Each stream's deadline: a stream that hangs on the killed replica ends DEADLINE_EXCEEDED."""


@dataclass(frozen=True)
class Door:
    """How callers reach the gateway and the gateway its replicas: plaintext, or TLS
    with an API key on every call and mutual TLS to the replicas."""

    certs: Certs | None = None
    keys_file: Path | None = None

    @classmethod
    def secure(cls, folder: Path) -> Door:
        keys_file = folder / "keys.json"
        keys_file.write_text(json.dumps({"keys": [{"id": "load", "sha256": hash_key(KEY)}]}))
        return cls(make_certs(folder), keys_file)

    def replica_flags(self) -> list[str]:
        if self.certs is None:
            return []
        c = self.certs
        return [
            "--tls-cert", str(c.server_cert), "--tls-key", str(c.server_key),
            "--tls-client-ca", str(c.ca),
        ]  # fmt: skip

    def gateway_flags(self) -> list[str]:
        if self.certs is None:
            return []
        c = self.certs
        return [
            "--tls-cert", str(c.server_cert), "--tls-key", str(c.server_key),
            "--backend-tls-ca", str(c.ca), "--backend-tls-cert", str(c.client_cert),
            "--backend-tls-key", str(c.client_key), "--api-keys", str(self.keys_file),
        ]  # fmt: skip

    def target(self, port: int) -> str:
        """The name the certificates are for, on TLS; the loopback address otherwise."""
        return f"{'localhost' if self.certs else '127.0.0.1'}:{port}"

    def credentials(self, client_cert: bool = False) -> grpc.ChannelCredentials | None:
        return None if self.certs is None else self.certs.credentials(client_cert)

    def channel(self, target: str, client_cert: bool = False) -> grpc.Channel:
        credentials = self.credentials(client_cert)
        if credentials is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, credentials)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {KEY}")] if self.keys_file else []


KEY = "replica-kill-key"
DOORS = {"plaintext": lambda folder: Door(), "tls-keys": Door.secure}


@pytest.fixture(params=sorted(DOORS))
def door(request, tmp_path) -> Door:
    return DOORS[request.param](tmp_path)


def _start(sup: Supervisor, door: Door, module: str, *args: str, client_cert: bool) -> Started:
    """`python -m module` on free loopback ports, once it says SERVING over `door`."""
    port, metrics_port = free_ports(2)
    argv = python_module_command(
        module, "--port", str(port), "--metrics-port", str(metrics_port), *args
    )
    child = sup.start(f"{module}-{port}", argv)
    target = door.target(port)
    with door.channel(target, client_cert) as channel:
        wait_serving(channel)
    return Started(child, target, f"http://127.0.0.1:{metrics_port}/metrics")


@contextmanager
def replicas_behind_gateway(
    log_dir: Path, family: str, repo: Path, door: Door
) -> Iterator[tuple[list[Started], str]]:
    """Two `family` replicas over `repo` and a gateway to both; yields them and its target."""
    with Supervisor(log_dir=log_dir, grace_s=5) as sup:
        family_args = ["--family", family, "--models", str(repo), *door.replica_flags()]
        replicas = [
            _start(sup, door, "genserve.families", *family_args, client_cert=True) for _ in range(2)
        ]
        backends = [arg for replica in replicas for arg in ("--backend", replica.target)]
        gateway_args = [*backends, "--refresh-s", "0.5", *door.gateway_flags()]
        gateway = _start(sup, door, "genserve.gateway", *gateway_args, client_cert=False)
        yield replicas, gateway.target


def kill(replica: Started) -> None:
    """SIGKILL a replica and reap it."""
    replica.child.popen.kill()
    replica.child.popen.wait(10)


def served_calls(replica: Started, method: str) -> float:
    """Calls of `method` the replica answered so far, by its own metrics."""
    return total(scrape(replica.metrics), "genserve_requests_total", method=method)


@contextmanager
def oip_caller(target: str, door: Door) -> Iterator[Callable[[], bytes]]:
    """The stock tritonclient and a seeded OIP infer of the tiny VAE's images."""
    settings = {"num_samples": SAMPLES, "seed": SEED}
    tls = {"ssl": True, "root_certificates": str(door.certs.ca)} if door.certs else {}
    headers = dict(door.metadata)
    with triton.InferenceServerClient(target, **tls) as client:

        def call() -> bytes:
            result = client.infer(TINY, [], parameters=settings, headers=headers, client_timeout=10)
            return result.as_numpy("images").tobytes()

        yield call


@contextmanager
def model_service_caller(target: str, door: Door) -> Iterator[Callable[[], bytes]]:
    """genserve's Client (no retries of its own) and a seeded Generate of the tiny VAE."""
    options = {"metadata": door.metadata, "credentials": door.credentials()}
    with Client(target, timeout_s=10, retries=0, **options) as client:
        yield lambda: client.generate(TINY, SAMPLES, seed=SEED).images.tobytes()


def test_kill_9_of_a_replica_fails_no_call_through_either_protocol(tiny_repo, tmp_path, door):
    logs = tmp_path / "logs"
    with replicas_behind_gateway(logs, "vae", tiny_repo, door) as (replicas, gateway):
        callers = []
        for label, connect in (
            ("ModelService", partial(model_service_caller, gateway, door)),
            ("OIP", partial(oip_caller, gateway, door)),
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

    def __init__(
        self, stub: model_service_pb2_grpc.ModelServiceStub, seed: int, metadata: list
    ) -> None:
        request = pb.GenerateStreamRequest(request=diffusion_request(DIFFUSION, seed, STREAM_STEPS))
        self.call = stub.GenerateStream(request, timeout=STREAM_DEADLINE_S, metadata=metadata)
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
    diffusion_repo, tmp_path, door
):
    logs = tmp_path / "logs"
    with replicas_behind_gateway(logs, "diffusion", diffusion_repo, door) as (replicas, gateway):
        with door.channel(gateway) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            streams = [Stream(stub, seed, door.metadata) for seed in range(STREAMS)]
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
