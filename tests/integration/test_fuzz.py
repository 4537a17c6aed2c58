"""Fuzz every RPC of every service the gateway and a family service expose.

Over 5,000 calls in all (random bytes, mutated valid requests and
hypothesis-built messages), discovered through reflection so services added
later are covered. No call may answer INTERNAL or UNKNOWN; afterwards both
processes are alive and healthy and a seeded call returns the bytes it
returned before. The calls by status code are printed in the run's summary
(tests/integration/conftest.py).
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genserve.client import Client

from . import fuzzing
from .conftest import TINY

RANDOM_CALLS = 1200
"""Calls of random bytes per process."""
MUTATED_CALLS = 1200
"""Calls of mutated valid requests per process."""
HYPOTHESIS_CALLS = 700
"""Hypothesis-built requests per process."""
CALL_TIMEOUT_S = 5.0
FORBIDDEN = {"INTERNAL", "UNKNOWN"}
SEED = 20261130


@pytest.fixture(scope="module", params=["gateway", "service"])
def process(request, deployment):
    """One process to fuzz: its name, channel, methods and a seeded result from before."""
    target = getattr(deployment, request.param)
    with Client(target, timeout_s=30) as client:
        before = client.generate(TINY, 3, seed=11).images.tobytes()
    with grpc.insecure_channel(target) as channel:
        methods = fuzzing.discover(channel)
        yield request.param, target, channel, methods
    with Client(target, timeout_s=30) as client:
        after = client.generate(TINY, 3, seed=11).images.tobytes()
        assert {m.name for m in client.list_models()} >= {TINY, "vae-fashion"}
    assert after == before, f"the {request.param}'s seeded output changed after fuzzing"
    assert not deployment.supervisor.exited(), "a process died while being fuzzed"


def _record(process: str, codes: list[str]) -> None:
    fuzzing.TALLY.setdefault(process, Counter()).update(codes)
    forbidden = [c for c in codes if c in FORBIDDEN]
    assert not forbidden, f"{len(forbidden)} calls answered {sorted(set(forbidden))}"


def test_every_service_is_discovered(process):
    name, _, _, methods = process
    services = {m.path.split("/")[1] for m in methods}
    assert {
        "genserve.v1.ModelService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert len(methods) >= 12, f"{name} exposes only {[m.path for m in methods]}"


def _fire(channel, jobs) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(
            pool.map(lambda job: fuzzing.send(channel, job[0], job[1], CALL_TIMEOUT_S), jobs)
        )


def test_random_bytes_are_never_internal(process):
    name, _, channel, methods = process
    rng = random.Random(SEED)
    jobs = [(rng.choice(methods), fuzzing.random_bytes(rng)) for _ in range(RANDOM_CALLS)]
    _record(name, _fire(channel, jobs))


def test_mutated_requests_are_never_internal(process):
    name, _, channel, methods = process
    rng = random.Random(SEED + 1)
    valid = list(fuzzing.corpus(methods, [TINY, "vae-fashion"]))
    jobs = []
    for _ in range(MUTATED_CALLS):
        method, payload = rng.choice(valid)
        jobs.append((method, fuzzing.mutate(rng, payload)))
    _record(name, _fire(channel, jobs))


def test_hypothesis_requests_are_never_internal(process):
    name, _, channel, methods = process
    strategies = {
        m.path: fuzzing.message_strategy(m.request, [TINY, "vae-fashion"]) for m in methods
    }
    codes: list[str] = []

    @fuzzing.fixed_examples(HYPOTHESIS_CALLS)
    @given(st.data())
    def one_call(data) -> None:
        method = data.draw(st.sampled_from(methods))
        message = data.draw(strategies[method.path])
        code = fuzzing.send(channel, method, message.SerializeToString(), CALL_TIMEOUT_S)
        codes.append(code)
        assert code not in FORBIDDEN, f"{method.path} answered {code} to {message!r:.300}"

    try:
        one_call()
    finally:
        fuzzing.TALLY.setdefault(name, Counter()).update(codes)
