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


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_one: bool
) -> torch.Tensor:
    """Whole-window causal attention (B, H, T, D) with PyTorch's fused kernel, for training.

    Softmax + 1 is a softmax over one more key whose score is always 0 and whose
    value is 0: exp(s_i) / (exp(0) + sum_j exp(s_j)).
    """
    if not softmax_one:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    b, h, t, d = q.shape
    zero = q.new_zeros(b, h, 1, d)
    sees = torch.ones(t, t + 1, dtype=torch.bool, device=q.device).tril(diagonal=1)
    return F.scaled_dot_product_attention(
        q, torch.cat([zero, k], dim=2), torch.cat([zero, v], dim=2), attn_mask=sees
    )


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

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        h, d = self.config.heads, self.config.head_dim
        return tuple(z.view(b, t, h, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)

    def _rest(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), every token attending to itself and those before it."""
        q, k, v = self._qkv(x)
        return self._rest(x, causal_attention(q, k, v, self.config.softmax_one))

    def step(
        self,
        x: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        sees_past: torch.Tensor,
        sees_new: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New tokens x (B, T, C) after a cached past (B, H, P, D) each.

        ``sees_past`` (B, 1, 1, P) and ``sees_new`` (1, 1, T, T) are True where a
        new token attends. Past and new keys are scored as two blocks under one
        softmax, so the past is only read, never copied. Returns the new x and the
        new tokens' keys and values (B, H, T, D).
        """
        q, k, v = self._qkv(x)
        q = q * (1.0 / math.sqrt(self.config.head_dim))
        p = past_key.shape[2]
        scores = torch.cat(
            [
                (q @ past_key.transpose(-2, -1)).masked_fill(~sees_past, float("-inf")),
                (q @ k.transpose(-2, -1)).masked_fill(~sees_new, float("-inf")),
            ],
            dim=-1,
        )  # (B, H, T, P + T)
        w = attention_weights(scores, self.config.softmax_one)
        y = w[..., :p] @ past_value + w[..., p:] @ v
        return self._rest(x, y), k, v


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
        self, tokens: torch.Tensor, peaks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits (B, T, V) at every position of whole windows ``tokens`` (B, T).

        With ``peaks`` a list, each block's largest absolute output is appended to it.
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tokens(tokens) + self.positions(positions)[None]
        for block in self.blocks:
            x = block(x)
            if peaks is not None:
                peaks.append(x.detach().abs().amax())
        return self.head(self.norm(x))

    def step(
        self, tokens: torch.Tensor, past_length: torch.Tensor, past: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New tokens (B, T) after each row's cached past.

        ``past`` holds each layer's keys then values (B, H, P, D); row b's real
        past is its first ``past_length[b]`` positions. Returns the logits after
        each row's last token (B, V) and the new tokens' keys and values
        (B, L, 2, H, T, D).
        """
        t, p = tokens.shape[1], past[0].shape[2]
        steps = torch.arange(t, device=tokens.device)
        positions = past_length[:, None] + steps[None]  # (B, T)
        sees_past = (torch.arange(p)[None, :] < past_length[:, None])[:, None, None]  # (B,1,1,P)
        sees_new = (steps[None, :] <= steps[:, None])[None, None]  # (1, 1, T, T)
        x = self.tokens(tokens) + self.positions(positions)
        present = []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, past[2 * i], past[2 * i + 1], sees_past, sees_new)
            present.append(torch.stack([k, v], dim=1))
        return self.head(self.norm(x[:, -1])), torch.stack(present, dim=1)


def past_names(layers: int) -> list[str]:
    """The graph's cache inputs: each layer's keys, then its values."""
    return [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


class GptStep(nn.Module):
    """What ``gpt.onnx`` computes: :meth:`Gpt.step` with the cache as one input per tensor."""

    def __init__(self, model: Gpt) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, past_length: torch.Tensor, past: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.step(tokens, past_length, list(past))  # (B, V), (B, L, 2, H, T, D)


@torch.no_grad()
def activation_peaks(model: Gpt, tokens: torch.Tensor) -> list[float]:
    """The largest absolute residual-stream activation after each block, on ``tokens``."""
    peaks: list[torch.Tensor] = []
    model(tokens, peaks=peaks)
    return [round(float(p), 3) for p in peaks]


def next_token_loss(model: Gpt, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over every position."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
