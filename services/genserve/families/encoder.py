"""Sentence encoder: texts -> mean-pooled, L2-normalised embeddings, batched by tokens.

The model's ``encoder.onnx`` takes ``input_ids`` and ``attention_mask``
(int64, (B, T)) and returns ``sentence_embedding`` (float32, (B, D)); pooling and
normalisation are inside the graph. Texts are tokenized here with the
``tokenizers`` library from the version's own ``tokenizer.json`` (padding
and truncation off: a text longer than the model's ``max_seq_length`` is
refused, never cut).

Every text is padded to a length bucket of its own (``params.length_buckets``,
the smallest that holds it) and batched only with texts of the same bucket,
by :class:`~genserve.runtime.token_batcher.TokenBatcher`, under a budget of
padded tokens per session run (``batching.max_batch_tokens``). A text
therefore always runs at the same padded length whatever is batched beside
it, and ONNX Runtime computes each row of a fixed-length batch alike, so its
embedding is byte-identical alone or batched. (That needed one change in the
graph: ONNX Runtime sums axis 1 of a (1, T, C) tensor in another order than
of a (B, T, C) one, so a ReduceSum for the mean pooling gave a lone text
other last bits; the exporter pools with a batched MatMul instead.)

Bounds, each refused with INVALID_ARGUMENT naming the field before work is
spent: at most ``max_num_samples`` texts (``texts``), each at most
``params.max_text_chars`` characters before tokenizing and
``params.max_seq_length`` tokens after (``texts[i]``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from genserve.runtime.errors import InvalidArgument
from genserve.runtime.limits import shown
from genserve.runtime.model import ENCODE, Encoding, LoadContext, ServedModel
from genserve.runtime.repository import ModelConfig
from genserve.runtime.token_batcher import TokenBatcher

GRAPH = "encoder"
OUTPUT = "sentence_embedding"


class EncoderTokenizer:
    """A model's ``tokenizer.json``, padding and truncation off.

    Args:
        path: the tokenizer file.
        max_tokens: the most tokens (special tokens included) a text may have.
    """

    def __init__(self, path: str | Path, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_tokens = max_tokens

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, [CLS] and [SEP] included; CPU work, keep off the event loop."""
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]


@dataclasses.dataclass(frozen=True)
class EncoderParams:
    """The family's ``params``, read and checked in one place."""

    embedding_dim: int
    max_seq_length: int
    max_text_chars: int
    tokenizer: str
    length_buckets: tuple[int, ...]

    @classmethod
    def of(cls, config: ModelConfig) -> EncoderParams:
        raw = config.params
        try:
            params = cls(
                embedding_dim=int(raw["embedding_dim"]),
                max_seq_length=int(raw["max_seq_length"]),
                max_text_chars=int(raw["max_text_chars"]),
                tokenizer=str(raw["tokenizer"]),
                length_buckets=tuple(sorted(int(b) for b in raw["length_buckets"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument("params", f"model {config.name}: {exc!r}") from None
        if not params.length_buckets or params.length_buckets[-1] < params.max_seq_length:
            raise InvalidArgument(
                "params.length_buckets",
                f"the longest must hold max_seq_length {params.max_seq_length}, "
                f"got {list(params.length_buckets)}",
            )
        if Path(params.tokenizer).name != params.tokenizer:
            raise InvalidArgument(
                "params.tokenizer", f"must be a file name, got {params.tokenizer!r}"
            )
        return params


class EncoderModel(ServedModel):
    """Sentence embedding transformer (MiniLM-L6 exported to ONNX): Encode of texts."""

    family = "encoder"
    calls = (ENCODE,)

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        super().__init__(config, context)
        self.params = EncoderParams.of(config)
        self.tokenizer = EncoderTokenizer(
            config.path / self.params.tokenizer, self.params.max_seq_length
        )
        graph = context.open_graph(config, GRAPH)
        policy = dataclasses.replace(config.batch_policy, **context.batching_overrides)
        self._batcher = TokenBatcher(
            graph.run,
            policy,
            self.params.length_buckets,
            output=OUTPUT,
            model=config.name,
            graph=GRAPH,
            executor=context.executor,
        )
        self.workers.append(self._batcher)

    async def encode(
        self, images: np.ndarray | None, texts: list[str], deadline: float | None
    ) -> Encoding:
        self._check_texts(texts)
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self.context.executor, self.tokenizer.encode, texts)
        for i, row in enumerate(ids):
            if len(row) > self.params.max_seq_length:
                raise InvalidArgument(
                    f"texts[{i}]",
                    f"has {len(row)} tokens; at most {self.params.max_seq_length} "
                    "(the model's max_seq_length, [CLS] and [SEP] included)",
                )
        embeddings = await self._batcher.submit(ids, deadline=deadline)
        return Encoding(embeddings=embeddings)

    def _check_texts(self, texts: list[str]) -> None:
        """Count and characters, before any tokenizing."""
        if not texts:
            raise InvalidArgument("texts", "must hold at least one text")
        most = self.config.max_num_samples
        if len(texts) > most:
            raise InvalidArgument("texts", f"at most {most} texts per request, got {len(texts)}")
        for i, text in enumerate(texts):
            if len(text) > self.params.max_text_chars:
                raise InvalidArgument(
                    f"texts[{i}]",
                    f"has {len(text)} characters; at most {self.params.max_text_chars} "
                    f"(starts {shown(text, 16)})",
                )
