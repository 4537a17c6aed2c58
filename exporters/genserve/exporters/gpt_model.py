"""A small character-level GPT (nanoGPT's ``model.py``, cut down) and its cached graph.

Training runs :class:`Gpt` on whole windows with a causal mask. Serving runs
:class:`GptStep`, exported as ``gpt.onnx``: it takes the new tokens of each
row, that row's past keys and values and how many of them are real, and
returns the next token's logits and the keys and values of the new tokens
only, which the service writes into the row's own cache in place::

    tokens (B, T) int64, past (B, layers, 2, heads, P, head_dim) float32,
    past_length (B,) int64
      -> logits (B, V) after each row's last token,
         present (B, layers, 2, heads, T, head_dim) for the new tokens

Row b's real past is ``past[b, ..., :past_length[b], :]``; later positions
are masked out, so the service can hand every row the same fixed-size
window (P = the context) and a row's result never depends on the rows
beside it. An empty past (P = 0) is the prompt pass. Positions of the new
tokens start at ``past_length``.

``softmax_one`` swaps attention's softmax for "softmax + 1"
(exp(s_i) / (1 + sum_j exp(s_j))), which lets a head give weight to none of
the keys; :func:`activation_peaks` measures what it is said to tame, the
largest absolute activation of each layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GptConfig:
    """The network's shape."""

    vocab_size: int = 80
    """Characters in the vocabulary."""
    context: int = 256
    """The most tokens (prompt plus generated) a row attends to."""
    layers: int = 4
    """Transformer blocks."""
    heads: int = 4
    """Attention heads per block."""
    width: int = 192
    """Embedding width (heads x head_dim)."""
    softmax_one: bool = False
    """Attention weights exp(s_i) / (1 + sum_j exp(s_j)) instead of softmax."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "layers", "heads", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def attention_weights(scores: torch.Tensor, softmax_one: bool) -> torch.Tensor:
    """Softmax over the last axis, or softmax + 1; masked scores are -inf."""
    if not softmax_one:
        return torch.softmax(scores, dim=-1)
    # exp(s_i) / (1 + sum exp(s_j)), shifted by m = max(0, max_j s_j) for stability.
    shift = scores.amax(dim=-1, keepdim=True).clamp(min=0.0)
    e = torch.exp(scores - shift)
    return e / (torch.exp(-shift) + e.sum(dim=-1, keepdim=True))


class Block(nn.Module):
    """Pre-norm attention and MLP, each added back to the residual stream."""

    def __init__(self, config: GptConfig) -> None:
        super().__init__()
        self.config = config
        self.norm1 = nn.LayerNorm(config.width)
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
        )

    def forward(
        self, x: torch.Tensor, past_kv: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C), past_kv (B, 2, H, P, D), mask (B, 1, T, P + T) bool (True: attend).

        Returns the new x and the new tokens' keys and values (B, 2, H, T, D).
        """
        b, t, c = x.shape
        h, d = self.config.heads, self.config.head_dim
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        keys = torch.cat([past_kv[:, 0], k], dim=2)  # (B, H, P + T, D)
        values = torch.cat([past_kv[:, 1], v], dim=2)
        scores = (q @ keys.transpose(-2, -1)) / math.sqrt(d)  # (B, H, T, P + T)
        scores = scores.masked_fill(~mask, float("-inf"))
        y = attention_weights(scores, self.config.softmax_one) @ values  # (B, H, T, D)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        x = x + self.mlp(self.norm2(x))
        return x, torch.stack([k, v], dim=1)


class Gpt(nn.Module):
    """Token and position embeddings, blocks, a final norm and a linear head."""

    def __init__(self, config: GptConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.width)
        self.positions = nn.Embedding(config.context, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)

    def forward(
        self,
        tokens: torch.Tensor,
        past: torch.Tensor | None = None,
        past_length: torch.Tensor | None = None,
        peaks: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T); past (B, L, 2, H, P, D) and past_length (B,), or None for none.

        Returns:
            logits (B, T, V) at every new position, and the new tokens' keys and
            values (B, L, 2, H, T, D). With ``peaks`` a list, each block's
            largest absolute output is appended to it.
        """
        b, t = tokens.shape
        config = self.config
        if past is None:
            past = tokens.new_zeros(
                (b, config.layers, 2, config.heads, 0, config.head_dim), dtype=torch.float32
            )
            past_length = tokens.new_zeros(b)
        p = past.shape[4]
        steps = torch.arange(t, device=tokens.device)
        positions = past_length[:, None] + steps[None]  # (B, T)
        # Row b, new token i sees past keys j < past_length[b] and new keys j' <= i.
        sees_past = torch.arange(p)[None, None, :] < past_length[:, None, None]  # (B, 1, P)
        sees_new = (steps[None, :] <= steps[:, None])[None]  # (1, T, T)
        mask = torch.cat([sees_past.expand(b, t, p), sees_new.expand(b, t, t)], dim=2)[:, None]
        x = self.tokens(tokens) + self.positions(positions)  # (B, T, C)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past[:, i], mask)
            present.append(kv)
            if peaks is not None:
                peaks.append(x.detach().abs().amax())
        return self.head(self.norm(x)), torch.stack(present, dim=1)


class GptStep(nn.Module):
    """What ``gpt.onnx`` computes: the logits after each row's last token, and the present."""

    def __init__(self, model: Gpt) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, past: torch.Tensor, past_length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, present = self.model(tokens, past, past_length)
        return logits[:, -1], present  # (B, V), (B, L, 2, H, T, D)


@torch.no_grad()
def activation_peaks(model: Gpt, tokens: torch.Tensor) -> list[float]:
    """The largest absolute residual-stream activation after each block, on ``tokens``."""
    peaks: list[torch.Tensor] = []
    model(tokens, peaks=peaks)
    return [round(float(p), 3) for p in peaks]


def next_token_loss(model: Gpt, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over every position."""
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
