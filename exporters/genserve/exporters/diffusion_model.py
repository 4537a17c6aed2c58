"""The DDPM noise predictor: a small UNet with timestep and class embeddings.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; classifier-free
guidance after Ho & Salimans 2022: the label is dropped to a null class
(index ``num_classes``) during training, so one network predicts both the
conditional and the unconditional noise.

Symbols (the papers' -> here): x_t -> ``x``, t -> ``t`` (an integer in
[0, T)), epsilon_theta(x_t, t, y) -> ``UNet(x, t, label)``, beta_t ->
``betas[t]``, alpha-bar_t -> ``alphas_cumprod[t]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiffusionConfig:
    """The network's shape and the noise schedule it is trained on."""

    channels: int = 32
    """Width at 28x28; 2x at 14x14 and 7x7."""
    time_dim: int = 128
    """Width of the timestep (plus class) embedding."""
    num_classes: int = 10
    """Classes; the null class (unconditional) is index num_classes."""
    timesteps: int = 1000
    """T, the trained number of noising steps."""
    beta_start: float = 1e-4
    """beta_1 of the linear schedule."""
    beta_end: float = 0.02
    """beta_T of the linear schedule."""

    def __post_init__(self) -> None:
        checks = {
            "channels": self.channels >= 4 and self.channels % 4 == 0,
            "time_dim": self.time_dim >= 8 and self.time_dim % 2 == 0,
            "num_classes": self.num_classes >= 1,
            "timesteps": self.timesteps >= 2,
            "beta_start": 0 < self.beta_start < self.beta_end < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range, got {getattr(self, name)!r}")

    @property
    def null_label(self) -> int:
        """The label meaning "no class": the unconditional half of guidance."""
        return self.num_classes

    def alphas_cumprod(self) -> np.ndarray:
        """alpha-bar_t for t in [0, T), float64, from the linear beta schedule."""
        betas = np.linspace(self.beta_start, self.beta_end, self.timesteps, dtype=np.float64)
        return np.cumprod(1.0 - betas)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * frequencies[None]  # (B, half)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added in between; a 1x1 skip if widths differ."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(4, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """epsilon_theta: x (B, 1, 28, 28), t (B,) int64, label (B,) int64 -> noise (B, 1, 28, 28)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        c, e = config.channels, config.time_dim
        self.time = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.label = nn.Embedding(config.num_classes + 1, e)  # + the null class
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.down28 = ResBlock(c, c, e)
        self.to14 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.down14 = ResBlock(2 * c, 2 * c, e)
        self.to7 = nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)
        self.middle = ResBlock(2 * c, 2 * c, e)
        self.up7 = ResBlock(4 * c, 2 * c, e)
        self.up14 = ResBlock(4 * c, 2 * c, e)
        self.up28 = ResBlock(3 * c, c, e)
        self.head = nn.Sequential(nn.GroupNorm(4, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.config.time_dim)) + self.label(label)  # (B, E)
        h28 = self.down28(self.stem(x), emb)  # (B, C, 28, 28)
        h14 = self.down14(self.to14(h28), emb)  # (B, 2C, 14, 14)
        h7 = self.middle(self.to7(h14), emb)  # (B, 2C, 7, 7)
        u7 = self.up7(torch.cat([h7, h7], dim=1), emb)  # (B, 2C, 7, 7)
        u14 = F.interpolate(u7, scale_factor=2.0, mode="nearest")  # (B, 2C, 14, 14)
        u14 = self.up14(torch.cat([u14, h14], dim=1), emb)
        u28 = F.interpolate(u14, scale_factor=2.0, mode="nearest")  # (B, 2C, 28, 28)
        u28 = self.up28(torch.cat([u28, h28], dim=1), emb)  # (B, C, 28, 28)
        return self.head(u28)  # (B, 1, 28, 28)


def noising_loss(
    model: UNet,
    x0: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    label_dropout: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The simple DDPM loss: || epsilon - epsilon_theta(x_t, t, y) ||^2, y dropped at random.

    Args:
        model: the noise predictor.
        x0: clean images in [0, 1], (B, 1, 28, 28); scaled to [-1, 1] here.
        labels: their classes, (B,).
        alphas_cumprod: alpha-bar_t as a float32 tensor of length T.
        label_dropout: the chance a label is replaced by the null class.
        generator: the random source for t, epsilon and the dropout.
    """
    b = len(x0)
    x0 = x0 * 2.0 - 1.0
    # 1. t ~ U{0..T-1}, epsilon ~ N(0, I).
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    # 2. x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) epsilon  (Ho et al., eq. 4)
    a = alphas_cumprod[t][:, None, None, None]
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    # 3. Classifier-free guidance: some labels become the null class.
    drop = torch.rand(b, generator=generator) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, model.config.null_label), labels)
    return F.mse_loss(model(x_t, t, labels), noise)
