"""The text families end to end: a tiny LSTM and a tiny GPT, each in its process, one gateway.

Train both with the real exporters, serve each in its family process behind
one gateway, and check through the gateway: a text is the same alone and
alongside requests of other lengths and settings; GenerateStream sends text
before the request ends and ends with Generate's result; a stop sequence
ends a text and never reaches the stream; a stream the caller cancels
leaves the batch (the running gauge drops, the cancelled count rises); bad
input answers INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import NamedTuple

import grpc
import pytest

from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import scrape, start, total, wait_for

PROMPT = "ROMEO:\n"
EVAL_CHARS = 4000
"""Validation characters the tiny models are measured on."""
LONGER_PROMPT = "Another, longer prompt to prefill.\n"
CONTEXT = 1024
"""The tiny GPT's context, and the tokens of the stream the cancel test cancels."""
CANCELLED_SAMPLES = 16
"""Samples of the cancelled stream: every step streams this many tokens."""
TIMEOUT_S = 120
FAMILIES = ("lstm", "gpt")


class Deployment(NamedTuple):
    target: str
    """The gateway's."""
    metrics: dict[str, str]
    """Family -> its service's /metrics URL."""
    gateway_metrics: str
    pids: dict[str, int]
    """Family -> its service's process id."""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Deployment:
    """Both tiny text models served, each by its family process, behind one gateway."""
    torch = pytest.importorskip("torch")
    from genserve.exporters import gpt, gpt_model, lstm, lstm_model, training

    repo = tmp_path_factory.mktemp("text-models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only fight the other processes
    train = training.TrainConfig(epochs=1, batch_size=16, max_steps=20)
    try:
        lstm.train_and_export(
            out=repo, name="lstm-tiny", train_config=train, eval_limit=EVAL_CHARS,
            model_config=lstm_model.LstmConfig(hidden=128, layers=2, context=16),
        )  # fmt: skip
        gpt.train_and_export(
            out=repo, name="gpt-tiny", train_config=train, eval_limit=EVAL_CHARS,
            model_config=gpt_model.GptConfig(context=CONTEXT, layers=2, heads=2, width=64),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    with Supervisor(log_dir=tmp_path_factory.mktemp("text-logs"), grace_s=5) as sup:
        services = {
            family: start(sup, "genserve.families", "--family", family, "--models", str(repo))
            for family in FAMILIES
        }
        backends = [arg for s in services.values() for arg in ("--backend", s.target)]
        gateway = start(sup, "genserve.gateway", *backends)
        yield Deployment(
            gateway.target,
            {family: s.metrics for family, s in services.items()},
            gateway.metrics,
            {family: s.child.pid for family, s in services.items()},
        )
        assert not sup.exited(), f"a process died: {sup.exited()}"


def request(family: str, seed: int, n: int = 1, prompt: str = PROMPT, **sampler):
    return pb.GenerateRequest(
        model_name=f"{family}-tiny", num_samples=n, seed=seed, prompt=prompt,
        sampler=pb.SamplerParams(**sampler),
    )  # fmt: skip


async def _stub(target: str):
    channel = grpc.aio.insecure_channel(target)
    return channel, model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_text_is_the_same_alone_and_batched_with_others(deployment, family):
    target = deployment.target

    async def go():
        channel, stub = await _stub(target)
        async with channel:
            wanted = request(family, 11, max_new_tokens=40, temperature=0.7, top_k=30)
            alone = await stub.Generate(wanted, timeout=TIMEOUT_S)
            crowd = await asyncio.gather(
                stub.Generate(wanted, timeout=TIMEOUT_S),
                stub.Generate(request(family, 12, 4, max_new_tokens=70), timeout=TIMEOUT_S),
                stub.Generate(
                    request(family, 13, prompt=LONGER_PROMPT, max_new_tokens=9, top_p=0.8),
                    timeout=TIMEOUT_S,
                ),
                stub.Generate(request(family, 14, 2, temperature=0.0), timeout=TIMEOUT_S),
            )
            again = await stub.Generate(wanted, timeout=TIMEOUT_S)
        return alone, crowd, again

    alone, crowd, again = asyncio.run(go())
    assert list(crowd[0].texts) == list(alone.texts) == list(again.texts)
    assert len(alone.texts[0]) == 40 and alone.seed == 11
    stats = alone.text_stats[0]
    assert (stats.finish_reason, stats.prompt_tokens, stats.completion_tokens) == (
        pb.FINISH_REASON_LENGTH, len(PROMPT), 40,
    )  # fmt: skip
    assert crowd[3].texts[0] == crowd[3].texts[1], "greedy samples agree whatever their seed"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_stream_sends_text_first_and_a_stop_sequence_never(deployment, family):
    target = deployment.target
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(target))
    free = stub.Generate(request(family, 21, max_new_tokens=60), timeout=TIMEOUT_S).texts[0]
    stop = free[20:22]
    cut = free[: free.index(stop)]
    wanted = request(family, 21, max_new_tokens=60, stop_sequences=[stop])
    events = list(stub.GenerateStream(pb.GenerateStreamRequest(request=wanted), timeout=TIMEOUT_S))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"token"} and len(kinds) > 2
    assert "".join(e.token.text for e in events[:-1]) == cut
    result = events[-1].result
    assert list(result.texts) == [cut]
    assert result.text_stats[0].finish_reason == pb.FINISH_REASON_STOP


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cancelled_stream_leaves_the_batch(deployment, family):
    metrics, model = deployment.metrics, f"{family}-tiny"
    before = total(scrape(metrics[family]), "genserve_texts_finished_total", reason="cancelled")
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(deployment.target))
    wanted = request(family, 31, CANCELLED_SAMPLES, max_new_tokens=CONTEXT - len(PROMPT))
    call = stub.GenerateStream(pb.GenerateStreamRequest(request=wanted), timeout=TIMEOUT_S)
    assert next(call).WhichOneof("event") == "token"
    with held(deployment.pids[family]):  # its 1,000 steps wait until the cancel is on its way
        cancelled = gateway_cancels(deployment)
        call.cancel()
        assert wait_for(lambda: gateway_cancels(deployment) > cancelled), "no cancel passed on"

    def left() -> bool:
        samples = scrape(metrics[family])
        cancelled = total(samples, "genserve_texts_finished_total", reason="cancelled")
        running = total(samples, "genserve_sequences_running", model=model)
        return cancelled == before + CANCELLED_SAMPLES and running == 0

    if not wait_for(left):
        samples = scrape(metrics[family])
        finished = total(samples, "genserve_texts_finished_total", model=model)
        raise AssertionError(f"the cancelled samples stayed: {before=}, {finished=} in all")

    def routed() -> bool:  # the next tests go through the gateway to this service again
        samples = scrape(deployment.gateway_metrics)
        return total(samples, "genserve_gateway_backend_up") == len(FAMILIES)

    assert wait_for(routed), "the gateway no longer routes to the held service"


@contextlib.contextmanager
def held(pid: int):
    """Stop a process (SIGSTOP) for the block, then let it go on (SIGCONT).

    Kept short: the gateway drops a backend that leaves its keepalive ping
    unanswered for a second.
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def gateway_cancels(deployment: Deployment) -> float:
    """GenerateStream calls the gateway has ended as CANCELLED: each cancelled its backend call."""
    samples = scrape(deployment.gateway_metrics)
    return total(samples, "genserve_requests_total", method="GenerateStream", code="CANCELLED")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 3000}, "prompt"),
        ({"prompt": "Zoë"}, "prompt"),
        ({"max_new_tokens": 0}, "sampler.max_new_tokens"),
        ({"max_new_tokens": 100_000}, "sampler.max_new_tokens"),
        ({"temperature": -0.5}, "sampler.temperature"),
        ({"top_p": 0.0}, "sampler.top_p"),
        ({"top_p": 1.5}, "sampler.top_p"),
        ({"stop_sequences": ["s"] * 9}, "sampler.stop_sequences"),
        ({"stop_sequences": ["z" * 65]}, "sampler.stop_sequences[0]"),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_bad_input_names_its_field(deployment, family, fields, field):
    target = deployment.target
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(target))
    sampler = {k: v for k, v in fields.items() if k != "prompt"}
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(
            request(family, 1, prompt=fields.get("prompt", PROMPT), **sampler), timeout=TIMEOUT_S
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: "), caught.value.details()
