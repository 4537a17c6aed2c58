"""The encoder family on the committed encoder-minilm model, in process.

Batch invariance, meaning, and every bound refused by field before work is spent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from genserve.families.encoder import EncoderModel
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.model import LoadContext
from genserve.runtime.repository import load_config
from genserve.runtime.session import SessionOptions

pytestmark = pytest.mark.unit

FOLDER = Path(__file__).resolve().parents[2] / "models" / "encoder-minilm" / "1"
TEXTS = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today after the central bank raised interest rates again.",
    "Hi",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "",
    "Dogs are loyal companions.",
]


@pytest.fixture
async def model():
    config = load_config(FOLDER)
    served = EncoderModel(config, LoadContext(SessionOptions(provider="cpu")))
    await served.start()
    yield served
    await served.close()


async def embed(model: EncoderModel, texts: list[str]) -> np.ndarray:
    return (await model.encode(None, texts, None)).embeddings


async def test_embeddings_are_unit_length_and_as_wide_as_the_model(model):
    out = await embed(model, TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


async def test_batching_never_changes_an_embedding(model):
    alone = [await embed(model, [t]) for t in TEXTS]
    together = await embed(model, TEXTS)  # one request, several buckets
    concurrent = await asyncio.gather(*(embed(model, [t, *TEXTS[:3]]) for t in TEXTS))
    for i, row in enumerate(alone):
        assert row[0].tobytes() == together[i].tobytes(), TEXTS[i]
        assert row[0].tobytes() == concurrent[i][0].tobytes(), TEXTS[i]


async def test_close_sentences_score_higher_than_unrelated_ones(model):
    a, b, c, d = await embed(
        model,
        [
            "A man is playing a guitar.",
            "Someone is playing an instrument.",
            "The stock market fell sharply today.",
            "Shares dropped on the exchange this morning.",
        ],
    )
    assert a @ b > a @ c + 0.3 and a @ b > a @ d + 0.3
    assert c @ d > c @ a + 0.3


async def test_bad_input_names_its_field(model):
    params = model.params
    cases = {
        "texts": [],
        "texts ": ["x"] * (model.config.max_num_samples + 1),
        "texts[1]": ["fine", "y" * (params.max_text_chars + 1)],
        "texts[2]": ["fine", "also fine", "word " * 300],  # few characters, too many tokens
    }
    for field, texts in cases.items():
        with pytest.raises(InvalidArgument) as caught:
            await embed(model, texts)
        assert caught.value.field == field.strip(), caught.value.message


def test_a_config_whose_buckets_cannot_hold_max_seq_length_is_refused():
    config = load_config(FOLDER)
    params = {**config.params, "length_buckets": [16, 32]}
    with pytest.raises(InvalidArgument, match="length_buckets"):
        EncoderModel(dataclasses.replace(config, params=params), LoadContext(SessionOptions()))
