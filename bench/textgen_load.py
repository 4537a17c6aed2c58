"""One cell of the GPT streaming workload: closed-loop GenerateStream clients and a window.

Each of `concurrency` clients streams one text after another. Request i of a
cell has seed i; its prompt length and max_new_tokens are drawn at random from
the workload's choices by the client's own generator (client k seeded with k),
so requests of different lengths overlap the way real callers' do. The prompt
is the start of a fixed passage, as long as drawn. The warmup lasts `warmup_s`
and until every client has had one text back (so a static batch of the first
arrivals has ended), but never longer than `MAX_WARMUP_FACTOR` x `warmup_s`;
then a window of `duration_s` is measured:

- tokens/s: the characters of every token event that *arrives* inside the
  window (a token is one character), over the window;
- time to first token: from sending a request to its first token event, for
  requests whose first token arrived inside the window (p50, p95);
- texts/s: texts whose result arrived inside the window;
- the family process's CPU time and step metrics at both ends of the window
  (`iterative_load.read`), for CPU seconds per token and sequences per step.

At the window's end the clients stop and streams still open are cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
from iterative_load import Answered, Caller, Service, Window, run_window
from loadgen import percentile

from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

PASSAGE = (
    "HAMLET:\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind "
    "to suffer\nThe slings and arrows of outrageous fortune,\nOr to take arms against a sea "
    "of troubles\nAnd by opposing end them. To die: to sleep;\nNo more; and by a sleep to say "
    "we end\nThe heart-ache and the thousand natural shocks\nThat flesh is heir to.\n"
)
"""Prompts are its first characters (every one of them is in the model's vocabulary)."""


@dataclass(frozen=True)
class Workload:
    """What every client sends."""

    model: str
    prompt_chars: tuple[int, ...]
    """Prompt lengths, each request's drawn at random."""
    new_tokens: tuple[int, ...]
    """max_new_tokens, each request's drawn at random."""
    temperature: float
    timeout_s: float


@dataclass
class Stream:
    """One streamed text: when it was sent, when each token event arrived, how it ended."""

    started: float
    tokens: list[tuple[float, int]] = field(default_factory=list)
    """(arrival time, characters) of each token event."""
    ended: float | None = None
    error: str | None = None


def request(
    workload: Workload, seed: int, prompt_chars: int, new_tokens: int
) -> pb.GenerateRequest:
    """A one-sample text request."""
    return pb.GenerateRequest(
        model_name=workload.model,
        num_samples=1,
        seed=seed,
        prompt=PASSAGE[:prompt_chars],
        sampler=pb.SamplerParams(temperature=workload.temperature, max_new_tokens=new_tokens),
    )


async def stream_one(
    stub: model_service_pb2_grpc.ModelServiceStub,
    req: pb.GenerateRequest,
    timeout_s: float,
    record: Stream,
) -> None:
    """Stream `req` into `record` as events arrive (so a cancelled stream keeps its tokens)."""
    record.started = time.perf_counter()
    call = stub.GenerateStream(pb.GenerateStreamRequest(request=req), timeout=timeout_s)
    try:
        async for event in call:
            if event.HasField("token"):
                record.tokens.append((time.perf_counter(), len(event.token.text)))
            elif event.HasField("result"):
                record.ended = time.perf_counter()
    except grpc.aio.AioRpcError as exc:
        record.error = exc.code().name
    finally:
        call.cancel()


async def run_cell_async(
    service: Service, workload: Workload, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Load `service` for the warmup and the window; returns the window's summary."""
    answered = Answered(concurrency)
    streams: list[Stream] = []

    async def client(caller: Caller, index: int) -> None:
        draws = random.Random(index)
        while (seed := caller.seed()) is not None:
            req = request(
                workload, seed, draws.choice(workload.prompt_chars),
                draws.choice(workload.new_tokens),
            )  # fmt: skip
            record = Stream(time.perf_counter())
            streams.append(record)  # visible while in flight: its tokens count
            await stream_one(caller.stub, req, workload.timeout_s, record)
            answered.add(index)

    window = await run_window(
        service, concurrency, client, partial(answered.warmup, warmup_s), duration_s
    )
    return summarize(streams, window, concurrency)


def run_cell(
    service: Service, workload: Workload, concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """`run_cell_async` in a fresh event loop."""
    return asyncio.run(run_cell_async(service, workload, concurrency, warmup_s, duration_s))


def _ms(seconds: list[float], q: float) -> float | None:
    return round(percentile(seconds, q) * 1000, 1) if seconds else None


def summarize(streams: list[Stream], window: Window, concurrency: int) -> dict[str, Any]:
    """Tokens/s, time to first token, texts/s, errors, CPU per token and step metrics."""
    start, end = window.before.at, window.after.at

    def inside(t: float | None) -> bool:
        return t is not None and start <= t < end

    tokens = sum(n for s in streams for t, n in s.tokens if inside(t))
    firsts = [s.tokens[0][0] - s.started for s in streams if s.tokens and inside(s.tokens[0][0])]
    gaps = [b[0] - a[0] for s in streams for a, b in itertools.pairwise(s.tokens) if inside(b[0])]
    texts = sum(1 for s in streams if inside(s.ended) and s.error is None)
    errors = Counter(s.error for s in streams if s.error and s.error != "CANCELLED")
    cpu_s = window.cpu_s
    return {
        "concurrency": concurrency,
        "window_s": round(window.seconds, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / window.seconds, 1),
        "texts": texts,
        "texts_per_s": round(texts / window.seconds, 3),
        "ttft_ms": {"p50": _ms(firsts, 50), "p95": _ms(firsts, 95), "count": len(firsts)},
        "inter_token_ms": {"p50": _ms(gaps, 50), "p95": _ms(gaps, 95)},
        "errors": dict(sorted(errors.items())),
        "server_cpu_s": round(cpu_s, 3),
        "cpu_ms_per_token": round(1000 * cpu_s / tokens, 3) if tokens else None,
        **window.step_rates(),
    }
