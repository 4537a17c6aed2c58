"""Relay streams from the gateway to a family service: calls answered as unary calls are,
many to a message, hostile streams refused, and a backend without RelayService still served.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from genserve.client.tensors import from_numpy
from genserve.runtime.errors import STATUS_DETAILS_KEY
from genserve.runtime.supervisor import Supervisor
from genserve.server.relay import MAX_CALLS_PER_MESSAGE, status_code
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc, relay_pb2, relay_pb2_grpc

from .conftest import TINY, Started, scrape, start, start_family, total, wait_for

pytestmark = pytest.mark.integration

CALLERS = 8
SEEDS = range(32)


def _generate(target: str, **fields) -> pb.GenerateResponse:
    with grpc.insecure_channel(target) as channel:
        request = pb.GenerateRequest(model_name=TINY, **fields)
        return model_service_pb2_grpc.ModelServiceStub(channel).Generate(request, timeout=30)


def _images_at_once(target: str, seeds: range) -> list[bytes]:
    """Seeded Generates, CALLERS at a time (a lone call goes as an RPC, not relayed)."""
    with ThreadPoolExecutor(CALLERS) as pool:
        answers = pool.map(lambda seed: _generate(target, num_samples=3, seed=seed), seeds)
        return [a.images.tensor.data for a in answers]


def _refusal(target: str, **fields) -> tuple[grpc.StatusCode, str, list]:
    """The code, message and field violations of a Generate that fails."""
    with pytest.raises(grpc.RpcError) as refused:
        _generate(target, **fields)
    error = refused.value
    violations = []
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    violations += [(v.field, v.description) for v in bad.field_violations]
    return error.code(), error.details(), violations


@pytest.fixture(scope="module")
def gateways(tiny_repo, tmp_path_factory) -> Iterator[tuple[Started, Started, Started]]:
    """A family service, a gateway that relays to it and one that does not."""
    with Supervisor(log_dir=tmp_path_factory.mktemp("relay-logs"), grace_s=5) as sup:
        family = start_family(sup, tiny_repo)
        relaying = start(sup, "genserve.gateway", "--backend", family.target)
        unary = start(sup, "genserve.gateway", "--backend", family.target, "--no-relay")
        _generate(relaying.target, num_samples=1, seed=0)  # both have learnt the model
        _generate(unary.target, num_samples=1, seed=0)
        yield family, relaying, unary
        assert not sup.exited(), sup.exited()


def test_relayed_calls_answer_byte_for_byte_as_unary_calls(gateways):
    family, relaying, unary = gateways
    before = scrape(family.metrics)
    assert _images_at_once(relaying.target, SEEDS) == _images_at_once(unary.target, SEEDS)
    relayed = total(scrape(family.metrics), "genserve_relay_calls_per_message_sum")
    relayed -= total(before, "genserve_relay_calls_per_message_sum")
    assert relayed > 0  # most calls met others in flight and were relayed
    # Errors come back the same: code, message and the field named in the details.
    # (Concurrent Generates keep the stream busy while they are compared.)
    with ThreadPoolExecutor(CALLERS) as pool:
        busy = [pool.submit(_generate, relaying.target, num_samples=64, seed=s) for s in range(64)]
        for fields in ({"num_samples": 0}, {"num_samples": 1, "class_labels": [99]}):
            assert _refusal(relaying.target, **fields) == _refusal(unary.target, **fields)
        code, _, violations = _refusal(relaying.target, num_samples=100_000)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == "num_samples"
        assert all(f.result().seed < 64 for f in busy)
    after = scrape(family.metrics)

    # The family counts each call under its own method, relayed or not.
    calls = 2 * len(SEEDS) + 64
    assert (
        total(after, "genserve_requests_total", method="Generate", code="OK")
        - total(before, "genserve_requests_total", method="Generate", code="OK")
        == calls
    )
    sent = total(scrape(relaying.metrics), "genserve_relay_calls_per_message_sum")
    assert sent > 0
    assert total(scrape(unary.metrics), "genserve_relay_calls_per_message_sum") == 0


def _relay(target: str, *messages: relay_pb2.RelayRequest) -> list[relay_pb2.RelayReply]:
    """Send `messages` on one Relay stream; every reply, in arrival order."""
    with grpc.insecure_channel(target) as channel:
        stream = relay_pb2_grpc.RelayServiceStub(channel).Relay(iter(messages), timeout=30)
        return [reply for response in stream for reply in response.replies]


def _decode_call(call_id: int, **fields) -> relay_pb2.RelayCall:
    request = pb.DecodeRequest(model_name=TINY, latents=from_numpy(np.zeros((1, 16), np.float32)))
    fields.setdefault("request", request.SerializeToString())
    return relay_pb2.RelayCall(id=call_id, method="Decode", **fields)


def test_a_relay_stream_answers_every_call_and_refuses_what_it_must(gateways):
    family, _, _ = gateways
    junk = relay_pb2.RelayCall(id=3, method="Decode", request=b"\xff\xff\xff")
    unknown = pb.DescribeModelRequest(model_name="no-such-model")
    calls = [
        _decode_call(1),
        _decode_call(1),  # the same id while the first runs
        relay_pb2.RelayCall(id=2, method="GenerateStream"),  # not a unary method
        junk,
        _decode_call(4, timeout_s=math.nan),  # no deadline, not an error
        _decode_call(5, timeout_s=1e-9),  # over before it starts
        relay_pb2.RelayCall(id=6, method="DescribeModel", request=unknown.SerializeToString()),
    ]
    replies = _relay(family.target, relay_pb2.RelayRequest(calls=calls))
    codes = sorted((r.id, status_code(r.code).name) for r in replies)
    assert codes == [
        (1, "INVALID_ARGUMENT"),
        (1, "OK"),
        (2, "UNIMPLEMENTED"),
        (3, "INVALID_ARGUMENT"),
        (4, "OK"),
        (5, "DEADLINE_EXCEEDED"),
        (6, "NOT_FOUND"),
    ]
    ok = next(r for r in replies if r.id == 4)
    assert pb.DecodeResponse.FromString(ok.response).images.tensor.shape == [1, 1, 28, 28]
    assert any(m.key == "x-request-id" for m in ok.trailing_metadata)


def test_a_relay_message_with_too_many_calls_ends_the_stream_invalid_argument(gateways):
    family, _, _ = gateways
    calls = [_decode_call(i) for i in range(MAX_CALLS_PER_MESSAGE + 1)]
    with pytest.raises(grpc.RpcError) as refused:
        _relay(family.target, relay_pb2.RelayRequest(calls=calls))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_CALLS_PER_MESSAGE}" in refused.value.details()
    assert _relay(family.target, relay_pb2.RelayRequest(calls=[_decode_call(1)]))[0].code == 0


def test_a_backend_without_relay_service_is_called_unary(gateways, tmp_path):
    """A gateway in front of a gateway (which serves no RelayService) falls back to RPCs."""
    _, relaying, _ = gateways
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        outer = start(sup, "genserve.gateway", "--backend", relaying.target)
        assert _images_at_once(outer.target, SEEDS) == _images_at_once(relaying.target, SEEDS)
        # The relay was tried, refused, and not tried again: a message or two went out
        # before the refusal came back, not one for each of the calls that met others.
        tried = total(scrape(outer.metrics), "genserve_relay_calls_per_message_sum")
        assert 1 <= tried <= CALLERS


def test_a_stopping_family_service_ends_its_relay_streams_instead_of_waiting_out_its_grace(
    tiny_repo, tmp_path
):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        family = start_family(sup, tiny_repo, "--grace-s", "120")
        gateway = start(sup, "genserve.gateway", "--backend", family.target)
        _images_at_once(gateway.target, SEEDS)  # calls at once: a relay stream is open
        assert total(scrape(family.metrics), "genserve_relay_calls_per_message_count") >= 1
        family.child.popen.send_signal(signal.SIGTERM)
        # An open stream would hold the server for its whole 120 s grace period.
        assert family.child.popen.wait(timeout=60) == 0


def test_a_caller_that_goes_away_cancels_its_relayed_call_on_the_backend(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        # Every batch waits 30 s for company: the calls stay in flight in the family.
        family = start_family(sup, tiny_repo, "--max-queue-delay-ms", "30000", "--fixed-delay")
        gateway = start(sup, "genserve.gateway", "--backend", family.target)

        def in_flight() -> float:
            samples = scrape(family.metrics)
            return total(samples, "genserve_in_flight_requests", method="Generate")

        def cancelled() -> float:
            samples = scrape(family.metrics)
            return total(samples, "genserve_requests_total", method="Generate", code="CANCELLED")

        with grpc.insecure_channel(gateway.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            assert wait_for(lambda: _described(stub), timeout_s=30)
            calls = []
            for seed in (1, 2):  # the second meets the first in flight: it is relayed
                request = pb.GenerateRequest(model_name=TINY, num_samples=1, seed=seed)
                calls.append(stub.Generate.future(request, timeout=60))
                assert wait_for(lambda n=seed: in_flight() == n, timeout_s=30)
            for call in calls:
                call.cancel()
            # Both end in the family at once, the relayed one by its cancelled id.
            assert wait_for(lambda: cancelled() == 2 and in_flight() == 0, timeout_s=20)
        assert total(scrape(gateway.metrics), "genserve_relay_calls_per_message_sum") == 1


def _described(stub) -> bool:
    try:
        stub.DescribeModel(pb.DescribeModelRequest(model_name=TINY), timeout=5)
        return True
    except grpc.RpcError:
        return False
