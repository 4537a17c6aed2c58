"""The gateway as a front door: TLS to callers, mutual TLS to its backend, API keys and
their rate limits, with real processes on loopback and certificates the test makes.

A vae family service requires a client certificate (mTLS); the gateway in front of it
serves TLS, presents its own certificate to the backend, and admits calls by API key.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from genserve.client.tensors import from_numpy
from genserve.gateway.auth import hash_key
from genserve.runtime.errors import STATUS_DETAILS_KEY
from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from ..certs import Certs, make_certs
from . import fuzzing
from .conftest import ROOT, wait_serving

KEY, REVOKED, LIMITED = "key-good", "key-revoked", "key-limited"
HOSTILE_CALLS = 800


@dataclass(frozen=True)
class FrontDoor:
    gateway: str
    family: str
    certs: Certs
    keys_file: Path

    def channel(self, target: str | None = None, client_cert: bool = False) -> grpc.Channel:
        return grpc.secure_channel(target or self.gateway, self.certs.credentials(client_cert))


def write_keys(path: Path, revoked: tuple[str, ...] = ()) -> None:
    entries = [
        {"id": "good", "sha256": hash_key(KEY)},
        {"id": "revoked", "sha256": hash_key(REVOKED), "revoked": True},
        {"id": "limited", "sha256": hash_key(LIMITED), "rate_per_s": 1, "burst": 2},
    ]
    for entry in entries:
        if entry["id"] in revoked:
            entry["revoked"] = True
    path.write_text(json.dumps({"keys": entries}, indent=1))


@pytest.fixture(scope="module")
def door(tmp_path_factory) -> Iterator[FrontDoor]:
    folder = tmp_path_factory.mktemp("front-door")
    certs = make_certs(folder)
    keys_file = folder / "keys.json"
    write_keys(keys_file)
    family_port, gateway_port = free_ports(2)
    family = python_module_command(
        "genserve.families", "--family", "vae", "--models", str(ROOT / "models"),
        "--host", "127.0.0.1", "--port", str(family_port), "--poll-s", "0",
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--tls-client-ca", str(certs.ca),
    )  # fmt: skip
    gateway = python_module_command(
        "genserve.gateway", "--backend", f"127.0.0.1:{family_port}",
        "--host", "127.0.0.1", "--port", str(gateway_port),
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--backend-tls-ca", str(certs.ca), "--backend-tls-cert", str(certs.client_cert),
        "--backend-tls-key", str(certs.client_key),
        "--api-keys", str(keys_file), "--api-keys-reload-s", "0",
    )  # fmt: skip
    with Supervisor(log_dir=folder / "logs") as sup:
        sup.start("family", family)
        sup.start("gateway", gateway)
        door = FrontDoor(f"localhost:{gateway_port}", f"localhost:{family_port}", certs, keys_file)
        with door.channel(door.family, client_cert=True) as channel:
            wait_serving(channel)
        with door.channel() as channel:
            wait_serving(channel)
        yield door


def decode(channel: grpc.Channel, key: str | None) -> pb.DecodeResponse:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = pb.DecodeRequest(model_name="vae-fashion")
    request.latents.CopyFrom(_latents())
    metadata = [] if key is None else [("authorization", f"Bearer {key}")]
    return stub.Decode(request, metadata=metadata, timeout=30)


def _latents():
    return from_numpy(np.zeros((1, 16), np.float32))


@pytest.mark.parametrize("key", [None, "key-wrong", REVOKED])
def test_no_wrong_or_revoked_key_is_unauthenticated(door, key):
    with door.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        decode(channel, key)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in refused.value.details()


def test_a_valid_key_is_served_over_tls_and_mtls_to_the_backend(door):
    with door.channel() as channel:
        response = decode(channel, KEY)
    assert response.images.tensor.shape == [1, 1, 28, 28]


def test_plaintext_and_certificate_less_callers_are_refused_at_the_handshake(door):
    plain = grpc.insecure_channel(door.gateway.replace("localhost", "127.0.0.1"))
    with plain, pytest.raises(grpc.RpcError) as refused:
        decode(plain, KEY)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    no_cert = door.channel(door.family, client_cert=False)  # the backend wants mTLS
    with no_cert, pytest.raises(grpc.RpcError) as refused:
        decode(no_cert, None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_rate_limit_trips_says_when_to_retry_and_recovers(door):
    with door.channel() as channel:
        codes, retry_s = [], None
        for _ in range(4):  # a burst of 2 at 1 call/s: the third or fourth is refused
            try:
                decode(channel, LIMITED)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                status = status_pb2.Status.FromString(
                    dict(exc.trailing_metadata())[STATUS_DETAILS_KEY]
                )
                info = error_details_pb2.RetryInfo()
                assert status.details[0].Unpack(info)
                retry_s = info.retry_delay.ToNanoseconds() / 1e9
                break
        assert codes[-1] == "RESOURCE_EXHAUSTED" and 0 < retry_s <= 1.0
        time.sleep(retry_s)  # what the server asked for: the next token is due then
        assert decode(channel, LIMITED).images.tensor.shape == [1, 1, 28, 28]


def test_a_key_revoked_in_the_file_is_refused_without_a_restart(door):
    with door.channel() as channel:
        decode(channel, KEY)
        write_keys(door.keys_file, revoked=("good",))
        try:
            with pytest.raises(grpc.RpcError) as refused:
                decode(channel, KEY)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            write_keys(door.keys_file)
        assert decode(channel, KEY).images.tensor.shape == [1, 1, 28, 28]


HOSTILE_METADATA = [
    (),
    (("authorization", "Bearer"),),
    (("authorization", "bearer  " + KEY),),
    (("authorization", "Basic " + KEY),),
    (("authorization", "Bearer " + "k" * 4000),),
    (("authorization", "Bearer " + KEY), ("x-priority", "urgent")),
    (("authorization", "Bearer " + KEY), ("x-priority", "h" * 2000)),
    (("authorization", "Bearer " + KEY), ("x-priority", "low")),
    (("authorization", "Bearer " + LIMITED),),
    (("authorization", "Bearer " + REVOKED),),
]
"""What a hostile caller puts beside its bytes: no key, malformed, oversized, revoked or
rate-limited keys, and priorities that are not one."""


def test_hostile_bytes_and_credentials_over_tls_are_never_internal(door):
    rng = random.Random(20261201)
    with door.channel() as channel:
        methods = fuzzing.discover(channel)  # reflection needs no key
        assert {m.path.split("/")[1] for m in methods} >= {
            "genserve.v1.ModelService", "inference.GRPCInferenceService",
        }  # fmt: skip
        valid = list(fuzzing.corpus(methods, ["vae-fashion"]))
        jobs = []
        for i in range(HOSTILE_CALLS):
            if i % 2:
                method, payload = rng.choice(valid)
                payload = fuzzing.mutate(rng, payload)
            else:
                method, payload = rng.choice(methods), fuzzing.random_bytes(rng)
            jobs.append((method, payload, rng.choice(HOSTILE_METADATA)))
        with ThreadPoolExecutor(8) as pool:
            codes = Counter(
                pool.map(lambda job: fuzzing.send(channel, job[0], job[1], 5.0, job[2]), jobs)
            )
        fuzzing.TALLY.setdefault("gateway (TLS, API keys)", Counter()).update(codes)
        assert not {"INTERNAL", "UNKNOWN"} & set(codes), codes
        assert codes["UNAUTHENTICATED"] and codes["RESOURCE_EXHAUSTED"], codes
        assert decode(channel, KEY).images.tensor.shape == [1, 1, 28, 28]  # still serving
