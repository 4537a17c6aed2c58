"""The gateway in front of several backends: failover, ejection, deadlines."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genserve.client import Client, DeadlineExceededError, UnavailableError
from genserve.runtime.supervisor import Supervisor

from .conftest import TINY, scrape, start, start_family, total, wait_for


def test_seeded_calls_survive_a_backend_dying(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        first, first_target, _ = start_family(sup, tiny_repo)
        _, second_target, _ = start_family(sup, tiny_repo)
        _, gateway, gateway_metrics = start(
            sup, "genserve.gateway", "--backend", first_target, "--backend", second_target,
            "--refresh-s", "0.5",
        )  # fmt: skip
        with Client(gateway, timeout_s=10, retries=0) as client:
            expected = client.generate(TINY, 2, seed=3).images
            first.popen.kill()
            first.popen.wait(5)
            for _ in range(10):
                assert client.generate(TINY, 2, seed=3).images.tobytes() == expected.tobytes()

            def only_second_up() -> bool:
                up = scrape(gateway_metrics)
                return (
                    total(up, "genserve_gateway_backend_up", backend=first_target) == 0
                    and total(up, "genserve_gateway_backend_up", backend=second_target) == 1
                )

            assert wait_for(only_second_up, timeout_s=5)
            assert [m.name for m in client.list_models()] == [TINY]


def test_with_every_backend_gone_calls_are_unavailable_not_internal(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        family, target, _ = start_family(sup, tiny_repo)
        _, gateway, _ = start(sup, "genserve.gateway", "--backend", target, "--refresh-s", "0.3")
        with Client(gateway, timeout_s=10, retries=0) as client:
            assert client.generate(TINY, 1, seed=1).images.shape == (1, 1, 28, 28)
            assert model_health(gateway, TINY) == health_pb2.HealthCheckResponse.SERVING
            family.popen.kill()
            family.popen.wait(5)
            with pytest.raises(UnavailableError):
                client.generate(TINY, 1, seed=1)
            assert wait_for(lambda: model_health(gateway, TINY) == NOT_SERVING, timeout_s=5)
            with pytest.raises(UnavailableError, match="unhealthy"):
                client.generate(TINY, 1, seed=1)


NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_health(target: str, model: str) -> int:
    """The gateway's health status for one model."""
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=model)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_the_callers_deadline_reaches_the_backend_queue(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        _, target, family_metrics = start_family(
            sup, tiny_repo, "--max-queue-delay-ms", "1500", "--fixed-delay"
        )
        _, gateway, _ = start(sup, "genserve.gateway", "--backend", target)
        before = scrape(family_metrics)
        with Client(gateway, retries=0) as client:
            with pytest.raises(DeadlineExceededError):
                client.generate(TINY, 1, seed=1, timeout_s=0.3)
            # A second call queues behind the first: once it is back, the first
            # call's batch would have run too, had its request been kept.
            client.generate(TINY, 1, seed=2, timeout_s=10)
        after = scrape(family_metrics)
        assert growth(before, after, "genserve_queue_dropped_total") == 1
        assert growth(before, after, "genserve_batch_size_count") == 1  # one batch ran
        assert growth(before, after, "genserve_batch_size_sum") == 1  # with one row: the second


def growth(before: dict, after: dict, name: str) -> float:
    """How much a sample of the tiny VAE's decoder grew between two scrapes."""
    labels = {"model": TINY, "graph": "decoder"}
    return total(after, name, **labels) - total(before, name, **labels)
