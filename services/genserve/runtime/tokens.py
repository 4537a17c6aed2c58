"""Choosing the next token, and knowing when a text is done: the text families' sampling rule.

`draw` turns a batch of next-token logits into token ids, each row with its
own temperature, top-k and top-p, from one uniform number per row that the
row's own generator drew, so a row's token never depends on the other rows
of the batch (nanoGPT's ``generate`` and vLLM's sampler, one row at a time
in effect):

1. temperature 0 takes the most likely token (greedy); otherwise the logits
   are divided by the temperature;
2. tokens are ranked by probability; top-k keeps the k best (0 keeps all);
3. top-p keeps the smallest leading set whose probability reaches p;
4. the kept probabilities are renormalised and the token is found by
   inverse CDF: the first whose cumulative probability exceeds u.

`StopText` follows one sample's text as tokens arrive: it says when the text
ends with a stop sequence (which the result leaves out, as vLLM and OpenAI
do) and holds back, while streaming, any tail that could still turn out to
be the start of one, so a streamed stop sequence never reaches the caller.
"""

from __future__ import annotations

import enum

import numpy as np


class FinishReason(str, enum.Enum):
    """Why a sample's generation ended."""

    STOP = "stop"
    """Its text reached a stop sequence."""
    LENGTH = "length"
    """It generated max_new_tokens tokens, or reached the model's context."""
    CANCELLED = "cancelled"
    """The caller went away or the deadline passed first."""


def draw(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    top_p: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """The next token of every row.

    Args:
        logits: float32 (B, V).
        temperature: (B,), >= 0; 0 is greedy.
        top_k: (B,) int, >= 0; 0 keeps every token.
        top_p: (B,) in (0, 1].
        u: (B,) uniform numbers in [0, 1), one per row from the row's own generator.

    Returns:
        int64 (B,) token ids.
    """
    batch, vocabulary = logits.shape
    greedy = temperature <= 0
    # 1. Temperature (rows that are greedy divide by 1; their draw is replaced below).
    z = logits.astype(np.float64) / np.where(greedy, 1.0, temperature)[:, None]
    # 2. Rank: order[b, r] is the token of rank r; ties keep the lower id first.
    order = np.argsort(-z, axis=1, kind="stable")
    ranked = np.take_along_axis(z, order, axis=1)
    p = np.exp(ranked - ranked[:, :1])
    p /= p.sum(axis=1, keepdims=True)
    ranks = np.arange(vocabulary)[None, :]
    keep = (top_k[:, None] <= 0) | (ranks < top_k[:, None])
    # 3. Top-p: a token stays while the probability before it is still short of p.
    before = np.cumsum(p, axis=1) - p
    keep &= before < top_p[:, None]
    keep[:, 0] = True  # the best token always stays
    # 4. Inverse CDF over what is kept.
    cdf = np.cumsum(np.where(keep, p, 0.0), axis=1)
    rank = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
    rank = np.minimum(rank, keep.sum(axis=1) - 1)
    chosen = order[np.arange(batch), rank]
    return np.where(greedy, order[:, 0], chosen).astype(np.int64)


class StopText:
    """One sample's generated text, watched for stop sequences.

    Each token costs the same however long the text is: a stop sequence is
    looked for only in the last few characters, and only the text not yet
    streamed is kept apart from the rest.

    Args:
        stop_sequences: non-empty strings; the text ends at the first that it ends with.
    """

    def __init__(self, stop_sequences: tuple[str, ...] = ()) -> None:
        self._stops = tuple(s for s in stop_sequences if s)
        self._keep = max((len(s) for s in self._stops), default=1) - 1
        self._pieces: list[str] = []
        self._tail = ""
        """The last ``_keep`` characters: where a stop sequence may have begun."""
        self._pending = ""
        """The text not yet streamed."""
        self.stopped = False

    @property
    def text(self) -> str:
        """The text so far, without the stop sequence it ended with."""
        return "".join(self._pieces)

    def push(self, piece: str) -> bool:
        """Add newly generated text; True once the text ends with a stop sequence.

        Text after a stop sequence is never added.
        """
        if self.stopped:
            return True
        window = self._tail + piece
        found = [i for i in (window.find(stop) for stop in self._stops) if i >= 0]
        if found:  # cut the stop sequence and anything after it
            cut = len(window) - min(found)  # characters to drop from the end
            text = (self.text + piece)[:-cut]
            self._pieces = [text]
            self._pending = self._pending + piece
            self._pending = self._pending[: max(len(self._pending) - cut, 0)]
            self.stopped = True
            return True
        self._pieces.append(piece)
        self._tail = window[-self._keep :] if self._keep else ""
        self._pending += piece
        return False

    def unsent(self, final: bool = False) -> str:
        """Text not yet streamed that can no longer become part of a stop sequence.

        Args:
            final: the text is complete: hold nothing back.
        """
        held = 0 if final or self.stopped else self._held_back(self._pending)
        piece, self._pending = (
            self._pending[: len(self._pending) - held],
            self._pending[len(self._pending) - held :],
        )
        return piece

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of ``text`` that a stop sequence starts with."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
