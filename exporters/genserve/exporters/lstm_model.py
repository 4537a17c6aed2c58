"""The character-level LSTM language model (Karpathy's char-rnn, in PyTorch).

One graph serves both the prompt and every later token: ``lstm.onnx`` maps
(tokens (B, T), h (B, L, H), c (B, L, H)) to (the logits after the last
token (B, V), h, c). The prompt runs with T = its length from a zero state;
each new token runs with T = 1 from the state the last call returned. The
state is laid out batch first so the service keeps one row of it per
running slot and passes the rows of a step straight in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LstmConfig:
    """The network's shape."""

    vocab_size: int = 80
    """Characters in the vocabulary."""
    embedding: int = 64
    """Width of a character's embedding."""
    hidden: int = 512
    """Width of each layer's hidden and cell state."""
    layers: int = 2
    """Stacked LSTM layers."""
    context: int = 128
    """Characters per training window (truncated backpropagation through time)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embedding", "hidden", "layers", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


class CharLstm(nn.Module):
    """Embedding, stacked LSTM, linear head: next-character logits at every position."""

    def __init__(self, config: LstmConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        self.lstm = nn.LSTM(config.embedding, config.hidden, config.layers, batch_first=True)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def forward(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens (B, T) -> logits (B, T, V) and the state after, each (L, B, H)."""
        out, state = self.lstm(self.embed(tokens), state)  # (B, T, H)
        return self.head(out), state


class LstmGraph(nn.Module):
    """What ``lstm.onnx`` computes: the logits after the last token, and the state, batch first."""

    def __init__(self, model: CharLstm) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())  # (L, B, H)
        logits, (h, c) = self.model(tokens, state)
        return logits[:, -1], h.transpose(0, 1), c.transpose(0, 1)  # (B, V), (B, L, H) x 2
