"""The text families in process: batching never changes a text; stops, streams, bad input.

A tiny LSTM and a tiny GPT are trained for a few steps on the Shakespeare
corpus and exported by the real exporters; their texts are gibberish, which
is all these tests need: the same gibberish alone and batched.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("torch")

from genserve.exporters import gpt, gpt_model, lstm, lstm_model, training
from genserve.families.gpt import GptModel
from genserve.families.lstm import LstmModel
from genserve.runtime import metrics
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.model import GenerateParams, LoadContext, SamplerParams
from genserve.runtime.repository import load_config
from genserve.runtime.session import SessionOptions
from genserve.runtime.tokens import FinishReason

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]

PROMPT = "ROMEO:\n"
EVAL_CHARS = 4000
"""Validation characters the tiny models are measured on."""


CONTEXT = 96
"""The tiny GPT's context: room for every test's prompt and tokens."""
FAMILIES = {
    "lstm": (lstm, lstm_model.LstmConfig(hidden=24, layers=2, context=16), LstmModel),
    "gpt": (
        gpt,
        gpt_model.GptConfig(context=CONTEXT, layers=2, heads=2, width=16),
        GptModel,
    ),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def folder(request, tmp_path_factory):
    exporter, model_config, _ = FAMILIES[request.param]
    return exporter.train_and_export(
        out=tmp_path_factory.mktemp(request.param),
        name=f"{request.param}-tiny",
        model_config=model_config,
        train_config=training.TrainConfig(epochs=1, batch_size=16, max_steps=20),
        eval_limit=EVAL_CHARS,
    )


@pytest.fixture
async def model(folder):
    config = load_config(folder)
    served = FAMILIES[config.family][2](config, LoadContext(SessionOptions()))
    await served.start()
    yield served
    await served.close()


def params(seed: int, n: int = 1, prompt: str = PROMPT, **sampler) -> GenerateParams:
    return GenerateParams(n, seed=seed, prompt=prompt, sampler=SamplerParams(**sampler))


def test_the_card_holds_the_validation_loss_a_sample_and_greedy_parity(folder):
    card = json.loads((folder / "config.json").read_text())["card"]
    assert card["metrics"]["validation_nats_per_char"] > 0
    assert card["metrics"]["sample"]["text"].startswith(PROMPT)
    assert card["parity"]["greedy_tokens_match"] == 64
    assert "Shakespeare" in card["dataset"]


async def test_batching_never_changes_a_text(model):
    alone = await model.generate(params(1, max_new_tokens=30, temperature=0.8, top_k=20))
    crowd = await asyncio.gather(
        model.generate(params(1, max_new_tokens=30, temperature=0.8, top_k=20)),
        model.generate(params(2, 3, max_new_tokens=45, top_p=0.9)),
        model.generate(params(3, prompt="A much longer prompt, to prefill.\n", max_new_tokens=7)),
        model.generate(params(4, 2, temperature=0.0, max_new_tokens=60)),
    )
    assert crowd[0].texts == alone.texts and len(alone.texts[0]) == 30
    assert [len(t) for t in crowd[1].texts] == [45] * 3
    assert crowd[3].texts[0] == crowd[3].texts[1], "greedy samples agree whatever their seed"


async def test_a_stop_sequence_ends_the_text_and_never_reaches_the_stream(model):
    free = (await model.generate(params(5, max_new_tokens=40))).texts[0]
    stop = free[10:12]
    cut = free[: free.index(stop)]
    result = await model.generate(params(5, max_new_tokens=40, stop_sequences=(stop,)))
    assert result.texts == [cut]
    assert result.text_stats[0].finish_reason is FinishReason.STOP
    assert result.text_stats[0].completion_tokens == len(cut) + len(stop)
    events = [e async for e in model.generate_stream(params(5, stop_sequences=(stop,)), 0)]
    streamed = "".join(e.token[1] for e in events if e.token)
    assert streamed == cut and events[-1].result.texts == [cut]


async def test_text_streams_before_the_request_ends_and_length_ends_it(model):
    events = []
    async for event in model.generate_stream(params(6, 2, max_new_tokens=25), 0):
        events.append(event)
    tokens = [e for e in events if e.token]
    assert events[-1].result is not None and len(tokens) >= 25, "text arrives token by token"
    for index in (0, 1):
        text = "".join(e.token[1] for e in tokens if e.token[0] == index)
        assert text == events[-1].result.texts[index]
    stats = events[-1].result.text_stats
    assert [s.finish_reason for s in stats] == [FinishReason.LENGTH] * 2
    assert [(s.prompt_tokens, s.completion_tokens) for s in stats] == [(len(PROMPT), 25)] * 2


async def test_a_stream_left_early_leaves_the_batch_and_counts_as_cancelled(model):
    cancelled = metrics.TEXTS_FINISHED.labels(model=model.name, reason="cancelled")
    before = cancelled._value.get()
    stream = model.generate_stream(params(7, max_new_tokens=CONTEXT - len(PROMPT)), 0)
    async for event in stream:
        if event.token:
            break
    await stream.aclose()
    assert cancelled._value.get() == before + 1
    while model.worker.scheduler.num_running:  # it leaves at the next step boundary
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (params(1, prompt=""), "prompt"),
        (params(1, prompt="x" * 5000), "prompt"),
        (params(1, prompt="Zoë"), "prompt"),
        (params(1, max_new_tokens=10_000), "sampler.max_new_tokens"),
        (params(1, stop_sequences=tuple("abcdefghi")), "sampler.stop_sequences"),
        (params(1, stop_sequences=("ok", "y" * 65)), "sampler.stop_sequences[1]"),
    ],
)
async def test_bad_input_names_its_field(model, given, field):
    with pytest.raises(InvalidArgument) as caught:
        await model.generate(given)
    assert caught.value.field == field


async def test_a_gpt_text_ends_when_its_context_is_full(model):
    if model.family != "gpt":
        pytest.skip("only the GPT has a context")
    with pytest.raises(InvalidArgument, match=r"^prompt: "):
        await model.generate(params(1, prompt="a" * CONTEXT))
    result = await model.generate(params(1, prompt="a" * (CONTEXT - 5), max_new_tokens=50))
    stats = result.text_stats[0]
    assert (stats.finish_reason, stats.completion_tokens) == (FinishReason.LENGTH, 5)
