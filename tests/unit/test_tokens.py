"""The text families' sampling rule and stop sequences, and the character vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from genserve.runtime.errors import InvalidArgument
from genserve.runtime.tokens import StopText, draw
from genserve.runtime.vocab import CharVocabulary

pytestmark = pytest.mark.unit

LOGITS = np.log(np.array([[0.1, 0.5, 0.15, 0.25]], np.float32))  # ranks: 1, 3, 2, 0


def one(u: float, temperature=1.0, top_k=0, top_p=1.0, logits=LOGITS) -> int:
    rows = len(logits)
    return int(
        draw(
            logits,
            np.full(rows, temperature),
            np.full(rows, top_k),
            np.full(rows, top_p),
            np.full(rows, u),
        )[0]
    )


def test_inverse_cdf_walks_the_tokens_from_most_to_least_likely():
    # Cumulative over ranks 1, 3, 2, 0: 0.5, 0.75, 0.9, 1.0.
    assert [one(u) for u in (0.0, 0.49, 0.51, 0.74, 0.8, 0.95, 0.999)] == [1, 1, 3, 3, 2, 0, 0]


def test_temperature_zero_is_greedy_whatever_the_draw():
    assert {one(u, temperature=0.0) for u in (0.0, 0.5, 0.99)} == {1}


def test_top_k_and_top_p_keep_only_the_leading_tokens():
    assert {one(u, top_k=2) for u in np.linspace(0, 0.999, 50)} == {1, 3}
    assert {one(u, top_p=0.7) for u in np.linspace(0, 0.999, 50)} == {1, 3}  # 0.5 < 0.7 <= 0.75
    assert {one(u, top_p=0.5) for u in np.linspace(0, 0.999, 50)} == {1}


def test_low_temperature_sharpens_and_high_flattens():
    sharp = [one(u, temperature=0.25) for u in np.linspace(0, 0.999, 200)]
    flat = [one(u, temperature=4.0) for u in np.linspace(0, 0.999, 200)]
    assert sharp.count(1) > 150 and flat.count(1) < 80


def test_a_rows_token_does_not_depend_on_the_other_rows():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 80)).astype(np.float32)
    params = (rng.uniform(0, 2, 8), rng.integers(0, 10, 8), rng.uniform(0.1, 1, 8), rng.random(8))
    together = draw(logits, *params)
    alone = [int(draw(logits[i : i + 1], *(p[i : i + 1] for p in params))[0]) for i in range(8)]
    assert together.tolist() == alone


def test_a_stop_sequence_ends_the_text_and_is_left_out():
    text = StopText(("\n\n", "END"))
    assert not any(text.push(c) for c in "To be")
    assert text.push("EN") is False and text.push("Dxx") is True
    assert text.text == "To be" and text.stopped
    assert text.push("more") is True and text.text == "To be"


def test_streaming_holds_back_what_may_become_a_stop_sequence():
    text = StopText(("ENDS",))
    sent = []
    for piece in ["a", "E", "N", "D", "x", "E", "N", "D", "S", "!"]:
        text.push(piece)
        sent.append(text.unsent())
    assert "".join(sent) == "aENDx" and text.text == "aENDx"
    assert sent[1:4] == ["", "", ""], "E, EN, END might have begun ENDS"
    unfinished = StopText(("ENDS",))
    unfinished.push("xEN")
    assert unfinished.unsent() == "x" and unfinished.unsent(final=True) == "EN"


def test_the_vocabulary_round_trips_and_names_unknown_characters():
    vocab = CharVocabulary.of("hello world\n")
    assert vocab.decode(vocab.encode("lower\n")) == "lower\n"
    with pytest.raises(InvalidArgument, match=r"prompt.*'Z', 'é'"):
        vocab.encode("hello Zé Z")
    with pytest.raises(ValueError):
        CharVocabulary("aa")
