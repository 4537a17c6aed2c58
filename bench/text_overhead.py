"""A text model's step overhead outside the session call, as the context grows.

Runs the family's own step (`GptModel.step` or `LstmModel.step`) in process
on a batch of samples whose texts are `context` tokens long (each step's new
token is taken back after it, so the length stays put), and splits each
step's time into the session call and everything else (the
cache rows, the token draw, stop sequences, bookkeeping). For the GPT the
overhead should stay flat as the context grows: the step hands the graph
its cache rows as a view and writes only the new token's keys and values::

    .venv/bin/python bench/text_overhead.py --model models/gpt-shakespeare/1 \\
        --contexts 16 128 254 --batch 8 --steps 200

Prints one JSON line per context: the mean step, session and overhead time
in milliseconds over `--steps` steps (after 10 unmeasured ones). A context
leaves room for two tokens: at most the model's context less two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from genserve.exporters.served import ServedRunner
from genserve.runtime.model import GenerateParams, SamplerParams
from genserve.runtime.scheduler import Sequence

WARMUP_STEPS = 10


class TimedGraph:
    """A graph whose run time is summed."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.seconds = 0.0

    def run(self, feeds):
        started = time.perf_counter()
        try:
            return self.graph.run(feeds)
        finally:
            self.seconds += time.perf_counter() - started


def measure(model, context: int, batch: int, steps: int) -> dict:
    """Mean step, session and overhead ms with ``batch`` samples ``context`` tokens long."""
    vocab = model.text.vocab.chars
    prompt = "".join(vocab[(i * 7) % len(vocab)] for i in range(context))
    params = GenerateParams(batch, seed=0, prompt=prompt, sampler=SamplerParams(max_new_tokens=2))
    samples = model.text.samples(params)
    sequences = [Sequence(state=s, slot=i) for i, s in enumerate(samples)]
    timed = model._graph = TimedGraph(model._graph)
    model.step(sequences)  # prefills every prompt and draws each sample's first token

    def step() -> None:
        model.step(sequences)
        for sample in samples:  # take the new token back: the context stays `context` + 1
            sample.tokens.pop()

    for _ in range(WARMUP_STEPS):
        step()
    timed.seconds, started = 0.0, time.perf_counter()
    for _ in range(steps):
        step()
    total = time.perf_counter() - started
    model._graph = timed.graph
    ms = 1000.0 / steps
    return {
        "context": context,
        "batch": batch,
        "step_ms": round(total * ms, 4),
        "session_ms": round(timed.seconds * ms, 4),
        "overhead_ms": round((total - timed.seconds) * ms, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a text model's version folder")
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    with ServedRunner(args.model, threads=args.threads) as runner:
        for context in args.contexts:
            print(json.dumps(measure(runner.model, context, args.batch, args.steps)), flush=True)


if __name__ == "__main__":
    main()
