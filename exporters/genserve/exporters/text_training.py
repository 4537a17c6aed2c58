"""What the character-level text exporters share: data, training windows, sampling.

- :class:`TextExporter`: the pipeline's hooks every text family shares: the
  data (Shakespeare, from :mod:`text_data`), a flag per network size, the
  model built for the vocabulary (every character of the training text),
  and the config sections (network, vocabulary, step policy, limits).
- :func:`window_starts` and :func:`window_batch`: the training examples are
  windows of ``context + 1`` characters (inputs and next-character targets)
  starting every ``context`` characters; the shared loop shuffles their starts.
- :func:`sample_text`: a continuation drawn with the service's own rule
  (:func:`genserve.runtime.tokens.draw`, one uniform number per token from a
  seeded generator) from a next-token function, for the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genserve.exporters import cli, pipeline, training
from genserve.exporters.text_data import CARD, load_shakespeare
from genserve.runtime.schema import StepPolicy
from genserve.runtime.tokens import draw
from genserve.runtime.vocab import CharVocabulary

CARD_PROMPT = "ROMEO:\n"
"""The prompt of the sample on the model card."""
CARD_TOKENS = 300
CARD_TEMPERATURE = 0.8


class TextExporter(pipeline.Exporter):
    """An exporter of a character-level model trained on Shakespeare."""

    datasets = ("shakespeare",)
    model_class: ClassVar[type[nn.Module]]
    """The network; built from its config dataclass (``default_configs``'s first)."""
    config_flags: ClassVar[tuple[str, ...]] = ()
    """Config fields with a flag each (``--name``; a bool is a switch)."""
    max_running: ClassVar[int] = 64
    """Samples its step runs at once."""

    def load_data(self, data: str) -> tuple[str, str, str]:
        corpus = load_shakespeare()
        return corpus.train, corpus.validation, CARD

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        defaults = self.default_configs()[0]
        for name in self.config_flags:
            flag, default = "--" + name.replace("_", "-"), getattr(defaults, name)
            if isinstance(default, bool):
                parser.add_argument(flag, action="store_true")
            else:
                parser.add_argument(flag, type=type(default), default=default)

    def configs(self, args: argparse.Namespace) -> tuple[Any, training.TrainConfig]:
        config_class = type(self.default_configs()[0])
        fields = {name: getattr(args, name) for name in self.config_flags}
        return config_class(**fields), cli.train_config(args)

    def flags(self, run: pipeline.Run) -> list[str]:
        flags = []
        for name in self.config_flags:
            flag, value = "--" + name.replace("_", "-"), getattr(run.model_config, name)
            flags += ([flag] if value else []) if isinstance(value, bool) else [flag, str(value)]
        return flags

    def build(self, run: pipeline.Run) -> nn.Module:
        vocab = vocabulary(run)
        model = self.model_class(dataclasses.replace(run.model_config, vocab_size=len(vocab)))
        model.vocabulary = vocab
        return model

    def limits(self, model: nn.Module) -> dict[str, int]:
        """The config's max_prompt_chars and max_new_tokens."""
        return {"max_prompt_chars": 2048, "max_new_tokens": 1024}

    def sections(self, model: nn.Module, run: pipeline.Run) -> dict:
        return {
            "stepping": StepPolicy(max_running=self.max_running, max_waiting=1024),
            "max_num_samples": 16,
            "params": {
                "network": dataclasses.asdict(model.config),
                "vocabulary": model.vocabulary.chars,
                **self.limits(model),
            },
        }


def validation_text(run: pipeline.Run) -> str:
    """The held-out text the metrics are measured on: its first ``eval_limit`` characters."""
    return run.test[: run.eval_limit]


def vocabulary(run: pipeline.Run) -> CharVocabulary:
    """The run's vocabulary: every character of its training text."""
    return CharVocabulary.of(run.train)


def tokens_of(text: str, vocab: CharVocabulary) -> torch.Tensor:
    """int64 (N,) token ids of a text every character of which the vocabulary knows."""
    return torch.from_numpy(vocab.encode(text, "text"))


def window_starts(tokens: torch.Tensor, context: int) -> torch.Tensor:
    """Starts of the non-overlapping windows of ``context + 1`` tokens, (N,) int64."""
    return torch.arange(0, len(tokens) - context, context)  # s + context + 1 <= len


def window_batch(
    tokens: torch.Tensor, starts: torch.Tensor, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T) and their next-token targets (B, T) for windows at ``starts``."""
    offsets = starts[:, None] + torch.arange(context + 1)[None]  # (B, T + 1)
    windows = tokens[offsets]
    return windows[:, :-1], windows[:, 1:]


def train_next_char(
    model: nn.Module,
    tokens: torch.Tensor,
    config: training.TrainConfig,
    seed: int,
    *,
    shift_windows: bool = False,
) -> training.TrainResult:
    """Next-character cross-entropy on shuffled windows of ``model.config.context``
    characters, with the shared loop; ``model(x)`` returns the logits (B, T, V), alone
    or first of a tuple.

    With ``shift_windows`` each window starts a random 0 to context - 1 characters
    after its slot, drawn anew every time, so no two epochs see the same windows.
    """
    context = model.config.context
    last_start = len(tokens) - context - 1
    shifts = torch.Generator().manual_seed(seed + 1)

    def loss_fn(starts: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if shift_windows:
            offsets = torch.randint(0, context, starts.shape, generator=shifts)
            starts = (starts + offsets).clamp(max=last_start)
        x, y = window_batch(tokens, starts, context)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, {"nats/char": loss.item()}

    order = torch.Generator().manual_seed(seed)
    return training.train(model, loss_fn, window_starts(tokens, context), config, generator=order)


def sample_text(
    next_logits: Callable[[np.ndarray], np.ndarray],
    vocab: CharVocabulary,
    *,
    prompt: str = CARD_PROMPT,
    tokens: int = CARD_TOKENS,
    temperature: float = CARD_TEMPERATURE,
    seed: int = 0,
) -> str:
    """The prompt and a continuation of ``tokens`` characters.

    Args:
        next_logits: token ids so far (T,) -> the next token's logits (V,).
        vocab: the model's vocabulary.
    """
    rng = np.random.default_rng(seed)
    ids = list(vocab.encode(prompt))
    one = np.ones(1)
    for _ in range(tokens):
        logits = next_logits(np.array(ids, np.int64))[None].astype(np.float32)
        ids.append(
            int(draw(logits, one * temperature, one.astype(np.int64) * 0, one, rng.random(1))[0])
        )
    return vocab.decode(ids)


def card_sample(text: str) -> dict[str, Any]:
    """The card's sample record."""
    return {"prompt": CARD_PROMPT, "temperature": CARD_TEMPERATURE, "seed": 0, "text": text}
