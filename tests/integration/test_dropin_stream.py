"""A new version dropped in while a diffusion stream runs: the stream ends on the old one.

Train a tiny DDPM noise predictor with the real exporter (as test_diffusion
does, with more timesteps so a stream can take many steps), serve it as
version 1 in a diffusion family process that polls its repository often,
behind a gateway. Start a long GenerateStream through the gateway, and once
it has reported its first step, move a copy in as version 2 while unary
calls keep coming. Once the model is described as version 2: the stream is
still running, every call so far succeeded, the next call gets version 2,
the stream reports every step and ends with a result from version 1, and
version 1 is closed after that last call ends.
"""

from __future__ import annotations

import re
import shutil
import threading

import grpc
import pytest

from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import diffusion_request, family_behind_gateway, train_tiny_diffusion, wait_for

MODEL = "diffusion-swap"
TIMESTEPS = 1000  # the most steps a request may ask for: a stream long enough to outlast a swap
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A version folder of a tiny trained diffusion model, outside any served repository."""
    return train_tiny_diffusion(tmp_path_factory.mktemp("diffusion-swap-trained"), MODEL, TIMESTEPS)


def request(seed: int, steps: int, n: int = 1, **sampler) -> pb.GenerateRequest:
    return diffusion_request(MODEL, seed, steps, n, **sampler)


class StreamReader(threading.Thread):
    """Reads a GenerateStream to its end as fast as events come, keeping every event."""

    def __init__(self, stub, stream: pb.GenerateStreamRequest) -> None:
        super().__init__(daemon=True)
        self.call = stub.GenerateStream(stream, timeout=TIMEOUT_S)
        self.events: list[pb.GenerateStreamResponse] = []
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as exc:
            self.error = exc

    def steps_seen(self) -> int:
        return sum(e.HasField("progress") for e in list(self.events))


class CallLoop(threading.Thread):
    """Short Generate calls one after another until stopped; each one's version or error."""

    def __init__(self, stub) -> None:
        super().__init__(daemon=True)
        self.stub = stub
        self.stop = threading.Event()
        self.versions: list[str] = []
        self.errors: list[grpc.RpcError] = []

    def run(self) -> None:
        seed = 100
        while not self.stop.is_set():
            try:
                response = self.stub.Generate(request(seed, 3), timeout=60)
            except grpc.RpcError as exc:
                self.errors.append(exc)
            else:
                self.versions.append(response.model_version)
            seed += 1


def test_a_stream_running_across_a_version_swap_ends_on_the_old_version(trained, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(trained, repo / MODEL / "1")
    staged = tmp_path / "staged"
    shutil.copytree(trained, staged)  # moved in whole, in one rename

    closed = re.compile(rf"model {MODEL} version 1 closed\b")
    with family_behind_gateway(tmp_path / "logs", "diffusion", repo, "--poll-s", "0.2") as served:
        family, gateway = served.family, served.gateway
        with (
            grpc.insecure_channel(gateway.target) as channel,
            grpc.insecure_channel(family.target) as direct,
        ):
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            listing = model_service_pb2_grpc.ModelServiceStub(direct)

            def version() -> str:
                """The version the family process serves now."""
                (info,) = listing.ListModels(pb.ListModelsRequest(), timeout=30).models
                return info.version

            assert version() == "1"
            long = request(7, TIMESTEPS, n=2, guidance_scale=2.0)
            reader = StreamReader(stub, pb.GenerateStreamRequest(request=long))
            calls = CallLoop(stub)
            reader.start()
            try:
                assert wait_for(lambda: reader.steps_seen() >= 1 or not reader.is_alive(), 60)
                assert reader.steps_seen() >= 1, f"the stream never started: {reader.error}"
                calls.start()
                assert wait_for(lambda: len(calls.versions) + len(calls.errors) >= 1, 60)

                (repo / MODEL / "2").parent.mkdir(exist_ok=True)
                staged.rename(repo / MODEL / "2")
                assert wait_for(lambda: version() == "2", 60), "version 2 was never served"
                log_at_swap = family.child.log_tail(5000)  # read before counting the steps
                steps_at_swap = reader.steps_seen()
                assert steps_at_swap < TIMESTEPS, (
                    "the stream ended before version 2 came in; it tests nothing (make it longer)"
                )
                assert not closed.search(log_at_swap), "version 1 closed under its stream"
                after = stub.Generate(request(8, 3), timeout=60)
                assert after.model_version == "2"
                assert wait_for(lambda: "2" in calls.versions or bool(calls.errors), 60)
                calls.stop.set()
                calls.join(timeout=120)
                reader.join(timeout=TIMEOUT_S)
            finally:
                calls.stop.set()
                reader.call.cancel()  # a no-op once the stream has ended
                calls.join(timeout=120)
                reader.join(timeout=120)

        assert reader.error is None, f"the stream failed: {reader.error}"
        events = reader.events
        progress = [
            (e.progress.step, e.progress.total_steps) for e in events if e.HasField("progress")
        ]
        assert progress == [(i, TIMESTEPS) for i in range(1, TIMESTEPS + 1)]
        assert events[-1].HasField("result")
        assert events[-1].result.model_version == "1"
        assert events[-1].result.images.tensor.shape[:] == [2, 1, 28, 28]

        assert not calls.errors, f"calls failed during the swap: {calls.errors}"
        assert calls.versions, "no call ran during the swap"
        assert calls.versions == sorted(calls.versions), "a call went back to version 1"
        assert calls.versions[-1] == "2"

        assert wait_for(lambda: closed.search(family.child.log_tail(5000)) is not None), (
            "version 1 was not closed after its last call"
        )
