"""A character vocabulary: text <-> token ids for the character-level text models.

The vocabulary is the model's own, stored in its config (``params.vocabulary``,
one string of distinct characters; a token id is a character's index in it),
so the service tokenizes exactly as training did, with no tokenizer files.
A prompt character outside it is refused, naming the field and the first few
characters that are not in it: silently dropping or replacing them would
change what the caller asked for.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from genserve.runtime.errors import InvalidArgument

MAX_SHOWN = 5
"""Characters an error quotes at most."""


class CharVocabulary:
    """Distinct characters, each a token id.

    Args:
        chars: the characters in id order; no repeats.

    Raises:
        ValueError: ``chars`` is empty or repeats a character.
    """

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("a vocabulary needs at least one character and no repeats")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def of(cls, text: str) -> CharVocabulary:
        """Every character of ``text``, sorted by code point."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self._ids

    def encode(self, text: str, field: str = "prompt") -> np.ndarray:
        """Token ids of ``text``, int64 (len(text),).

        Raises:
            InvalidArgument: ``text`` has characters outside the vocabulary; names ``field``.
        """
        ids = [self._ids.get(c, -1) for c in text]
        if -1 in ids:
            unknown = _first_distinct(c for c in text if c not in self._ids)
            shown = ", ".join(repr(c) for c in unknown)
            raise InvalidArgument(
                field,
                f"has characters this model does not know: {shown}; it knows "
                f"{len(self)} characters (DescribeModel shows them in params.vocabulary)",
            )
        return np.array(ids, np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (each in range)."""
        return "".join(self.chars[i] for i in ids)


def _first_distinct(chars: Iterable[str]) -> list[str]:
    """The first MAX_SHOWN distinct characters, in order of appearance."""
    seen: list[str] = []
    for c in chars:
        if c not in seen:
            seen.append(c)
            if len(seen) == MAX_SHOWN:
                break
    return seen
