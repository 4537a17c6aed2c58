"""API keys at the gateway: the keys file, reloads, token buckets, stream caps, and the
interceptor in a real grpc.aio server on loopback. A test clock stands in for time."""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from genserve.gateway.auth import (
    AuthInterceptor,
    KeyFileError,
    KeyStore,
    RateLimited,
    hash_key,
    new_key_entry,
    parse_keys,
)
from genserve.runtime.errors import STATUS_DETAILS_KEY, ResourceExhausted, Unauthenticated
from genserve.runtime.priority import call_priority
from genserve.server.interceptors import ServingInterceptor

from .clock import ManualClock

pytestmark = pytest.mark.unit


def write_keys(path, *entries) -> None:
    path.write_text(json.dumps({"keys": list(entries)}))


@pytest.fixture
def store(tmp_path):
    clock = ManualClock()
    path = tmp_path / "keys.json"
    write_keys(
        path,
        {"id": "a", "sha256": hash_key("key-a"), "rate_per_s": 2, "burst": 2, "max_streams": 1},
        {"id": "gone", "sha256": hash_key("key-gone"), "revoked": True},
        {"id": "low", "sha256": hash_key("key-low"), "priority": "low"},
    )
    return KeyStore(path, reload_s=1.0, clock=clock)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "key-a", "Bearer wrong", "Bearer key-gone", "Basic key-a", "Bearer " + "x" * 300],
)
def test_no_wrong_or_revoked_key_is_refused_with_one_message(store, authorization):
    with pytest.raises(Unauthenticated, match="a valid API key is required"):
        store.authenticate(authorization)


def test_a_listed_key_is_admitted_whatever_the_scheme_s_case(store):
    assert store.authenticate("Bearer key-a").id == "a"
    assert store.authenticate("bearer key-a").id == "a"


def test_the_bucket_refuses_past_its_burst_says_when_to_retry_and_refills(store):
    key = store.authenticate("Bearer key-a")
    store.take(key)
    store.take(key)
    with pytest.raises(RateLimited) as refused:
        store.take(key)
    assert refused.value.wait_s == pytest.approx(0.5)  # 2 calls/s: the next token in 0.5 s
    (retry,) = refused.value.details()
    assert retry.retry_delay.ToNanoseconds() == 500_000_000
    store.clock.now += 0.5
    store.take(key)


def test_a_key_opens_at_most_its_streams(store):
    key = store.authenticate("Bearer key-a")
    with store.stream(key), pytest.raises(ResourceExhausted, match="1 streams open"):
        store.stream(key).__enter__()
    with store.stream(key):  # the place came back
        pass


def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_old_keys(store):
    write_keys(
        store.path,
        {"id": "a", "sha256": hash_key("key-a"), "revoked": True},
        {"id": "b", "sha256": hash_key("key-b")},
    )
    assert store.authenticate("Bearer key-a").id == "a"  # not looked at before reload_s
    store.clock.now += 1.0
    with pytest.raises(Unauthenticated):
        store.authenticate("Bearer key-a")
    assert store.authenticate("Bearer key-b").id == "b"
    store.path.write_text("{not json")
    store.clock.now += 1.0
    assert store.authenticate("Bearer key-b").id == "b"


ZEROS, ONES = "0" * 64, "1" * 64


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ([{"id": "a", "sha256": "abc"}], "keys[0].sha256"),
        ([{"id": "a", "sha256": ZEROS, "rate_per_s": 0}], "keys[0].rate_per_s"),
        ([{"id": "a", "sha256": ZEROS, "colour": 1}], "keys[0]: unknown fields"),
        ([{"id": "a", "sha256": ZEROS, "priority": "top"}], "keys[0].priority"),
        ([{"id": "a", "sha256": ZEROS}, {"id": "a", "sha256": ONES}], "keys[1].id"),
    ],
)
def test_a_bad_keys_file_names_what_is_wrong(keys, named):
    with pytest.raises(KeyFileError) as bad:
        parse_keys(json.dumps({"keys": keys}))
    assert str(bad.value).startswith(named)
    with pytest.raises(KeyFileError, match='"keys" list'):
        parse_keys("[]")


def test_a_new_key_is_admitted_by_its_entry_and_only_its_hash_is_stored():
    key, entry = new_key_entry("ci")
    assert key not in json.dumps(entry)
    assert parse_keys(json.dumps({"keys": [entry]}))[hash_key(key)].id == "ci"


async def test_the_interceptor_refuses_counts_and_lets_health_checks_through(store):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def echo(request, context):
        return request

    async def priority(request, context):
        return call_priority.get().name.encode()

    async def count(request, context):
        for i in range(3):
            yield bytes([i])

    handlers = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Priority": grpc.unary_unary_rpc_method_handler(priority),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server = grpc.aio.server(interceptors=[ServingInterceptor(set), AuthInterceptor(store)])
    server.add_generic_rpc_handlers((handlers,))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo_call = channel.unary_unary("/test.Echo/Echo")
            count_call = channel.unary_stream("/test.Echo/Count")
            with pytest.raises(grpc.aio.AioRpcError) as no_key:
                await echo_call(b"hi")
            assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer key-a"),)
            assert await echo_call(b"hi", metadata=good) == b"hi"
            assert [r async for r in count_call(b"", metadata=good)] == [b"\0", b"\1", b"\2"]
            with pytest.raises(grpc.aio.AioRpcError) as limited:  # the bucket of 2 is spent
                await echo_call(b"hi", metadata=good)
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = status_pb2.Status.FromString(
                dict(limited.value.trailing_metadata())[STATUS_DETAILS_KEY]
            )
            retry = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(retry) and retry.retry_delay.ToNanoseconds() > 0
            ask = channel.unary_unary("/test.Echo/Priority")
            low = (("authorization", "Bearer key-low"), ("x-priority", "high"))
            assert await ask(b"", metadata=low) == b"LOW"  # the key caps what a call asks
            store.clock.now += 10.0  # key-a's bucket refills
            lower = (*good, ("x-priority", "low"))
            assert await ask(b"", metadata=lower) == b"LOW"
            assert await ask(b"", metadata=good) == b"NORMAL"
            probe = health_pb2_grpc.HealthStub(channel)
            answer = await probe.Check(health_pb2.HealthCheckRequest())  # no key needed
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
