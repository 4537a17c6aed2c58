"""A class-conditional gated PixelCNN over quantised grey levels, and its fast sampling graphs.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders": a vertical stack sees the rows above, a horizontal stack the
pixels to the left in the same row; each layer is a gated unit
tanh(a) * sigmoid(b) with the class embedding added to both halves. Intensities
in [0, 1] are quantised to ``levels`` grey levels and each pixel is a
categorical over them, so the likelihood is exact and bits/dim is its
negative log2 per pixel.

Sampling draws pixels in raster order. The *naive* sampler runs the whole
network on the whole image for every pixel (784 calls of the full graph per
28x28 image). The *fast* sampler splits the network the way its receptive
field allows (after Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models", which caches per-layer activations):

- :class:`RowLinks` runs the vertical stack once per row, on a window of
  the rows just above (as many as its receptive field reaches), and returns
  what every layer's horizontal stack takes from outside the row there: the
  down-shifted vertical features through the link convolution, plus the
  layer's class embedding. The vertical stack at row r only sees rows above
  r, and the class is the sample's, so these stay valid for the whole row.
- :class:`RowPixels` runs the horizontal stack on a window of one row's
  columns (``columns_window`` of them, as many as its receptive field
  reaches) with those links, and returns the window's logits. Every
  horizontal convolution is 1 x k, so a pixel's output never reads another
  row, and it reads only the columns of its window.

Per image that is H calls of the vertical stack on a few rows and H * W
calls of a horizontal stack on a few columns, instead of H * W calls of the
whole network on every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PixelCnnConfig:
    """The network's shape and its quantisation."""

    channels: int = 16
    """Width of both stacks."""
    layers: int = 7
    """Gated layers; the first is masked (it never sees the pixel it predicts)."""
    kernel: int = 3
    """Kernel width of the gated layers; odd."""
    first_kernel: int = 7
    """Kernel width of the first layer; odd."""
    levels: int = 4
    """Grey levels a pixel takes: level k is intensity k / (levels - 1)."""
    num_classes: int = 10
    """Classes the model is conditioned on."""

    def __post_init__(self) -> None:
        checks = {
            "channels": self.channels >= 2,
            "layers": self.layers >= 1,
            "kernel": self.kernel >= 3 and self.kernel % 2 == 1,
            "first_kernel": self.first_kernel >= 3 and self.first_kernel % 2 == 1,
            "levels": 2 <= self.levels <= 256,
            "num_classes": self.num_classes >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range, got {getattr(self, name)!r}")

    @property
    def rows_window(self) -> int:
        """Rows :class:`RowLinks` reads: the vertical receptive field, the rows just above.

        The links of row r depend on rows r - reach .. r - 1 only: the first
        layer reads ``first_kernel // 2`` rows above the row it computes, each
        later one ``kernel // 2`` more, and the links read the row above.
        """
        return self.first_kernel // 2 + (self.layers - 1) * (self.kernel // 2) + 1

    @property
    def columns_window(self) -> int:
        """Columns :class:`RowPixels` reads: the horizontal receptive field, the column included.

        Column c's logits depend on columns c - reach + 1 .. c of its row
        only (the first layer reads ``first_kernel // 2`` columns to the
        left, each later one ``kernel // 2`` more), so a window of columns
        max(0, c - reach + 1) .. that + reach - 1 gives them exactly: the zero
        padding a window brings in at its left, at every layer, reaches no
        further right than column c - 1.
        """
        return self.first_kernel // 2 + (self.layers - 1) * (self.kernel // 2) + 1


def quantise(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Intensities in [0, 1] -> int64 levels in [0, levels), nearest level."""
    return torch.round(images.clamp(0.0, 1.0) * (levels - 1)).long()


def network_input(levels_: torch.Tensor, levels: int) -> torch.Tensor:
    """Levels -> the network's input scale [-1, 1], float32."""
    return levels_.float() * (2.0 / (levels - 1)) - 1.0


class GatedLayer(nn.Module):
    """One layer of both stacks; ``first`` masks the current pixel out of the horizontal one."""

    def __init__(self, c_in: int, c: int, k: int, num_classes: int, *, first: bool) -> None:
        super().__init__()
        self.first, self.half = first, k // 2
        self.vertical = nn.Conv2d(c_in, 2 * c, (self.half + 1, k))
        self.horizontal = nn.Conv2d(c_in, 2 * c, (1, self.half if first else self.half + 1))
        self.link = nn.Conv2d(2 * c, 2 * c, 1)
        self.residual = nn.Conv2d(c, c, 1)
        self.v_class = nn.Embedding(num_classes, 2 * c)
        self.h_class = nn.Embedding(num_classes, 2 * c)

    def vertical_pre(self, v: torch.Tensor) -> torch.Tensor:
        """The vertical convolution: row r sees input rows r - k//2 .. r. (B, 2C, H, W)."""
        return self.vertical(F.pad(v, (self.half, self.half, self.half, 0)))

    def vertical_out(self, pre: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return gate(pre + self.v_class(label)[:, :, None, None])

    def links(self, pre: torch.Tensor) -> torch.Tensor:
        """What the horizontal stack takes from the vertical: row r gets row r - 1's features."""
        shifted = F.pad(pre, (0, 0, 1, 0))[:, :, :-1]  # (B, 2C, H, W), row 0 all zeros
        return self.link(shifted)

    def conditioning(self, link: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """What the horizontal stack adds from outside its row: the link and the class."""
        return link + self.h_class(label)[:, :, None, None]

    def horizontal_out(self, h: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """The horizontal stack on any number of rows; column c sees columns <= c (< c first)."""
        if self.first:  # columns c - k//2 .. c - 1
            pre = self.horizontal(F.pad(h, (self.half, 0)))[..., :-1]
        else:  # columns c - k//2 .. c
            pre = self.horizontal(F.pad(h, (self.half, 0)))
        out = self.residual(gate(pre + conditioning))
        return out if self.first else h + out


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class PixelCnn(nn.Module):
    """x (B, 1, H, W) in [-1, 1], label (B,) int64 -> logits (B, levels, H, W)."""

    def __init__(self, config: PixelCnnConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.layers = nn.ModuleList(
            GatedLayer(
                1 if i == 0 else c,
                c,
                config.first_kernel if i == 0 else config.kernel,
                config.num_classes,
                first=i == 0,
            )
            for i in range(config.layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, config.levels, 1)
        )

    def conditionings(self, x: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's conditioning of the horizontal stack at every row: (B, 2C, H, W) each."""
        out, v = [], x
        for layer in self.layers:
            pre = layer.vertical_pre(v)
            out.append(layer.conditioning(layer.links(pre), label))
            v = layer.vertical_out(pre, label)
        return out

    def horizontal(self, x: torch.Tensor, conditionings: list[torch.Tensor]) -> torch.Tensor:
        """The horizontal stack and head on rows x (B, 1, R, W) -> logits (B, levels, R, W)."""
        h = x
        for layer, conditioning in zip(self.layers, conditionings, strict=True):
            h = layer.horizontal_out(h, conditioning)
        return self.head(h)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.horizontal(x, self.conditionings(x, label))


class RowLinks(nn.Module):
    """The fast sampler's once-per-row graph.

    x (B, 1, R, W), the R = ``rows_window`` image rows just above the row
    (rows above the image may hold anything), label (B,), row (B,) int64, the
    image row -> links (B, layers * 2C, 1, W): every layer's conditioning at
    that row, the layers' channels one after another, as a one-row feature map.

    Each layer computes only the rows the next one reads, ending at the row
    above (the first layer ``layers`` rows, the last one row), where the whole
    network computes every row of the image; the rows above the image are
    zeroed at every layer, as the whole network's zero padding makes them.
    """

    def __init__(self, model: PixelCnn) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, label: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        image_rows = row[:, None] - height + torch.arange(height, device=x.device)  # (B, R)
        inside = (image_rows >= 0).to(x.dtype)[:, None, :, None]  # (B, 1, R, 1)
        out, v = [], x * inside
        for layer in self.model.layers:
            pre = layer.vertical(F.pad(v, (layer.half, layer.half)))  # `half` fewer rows, same last
            inside = inside[:, :, layer.half :]
            above = pre[:, :, -1:] * inside[:, :, -1:]  # the row above: zeros above the image
            out.append(layer.conditioning(layer.link(above), label))
            v = layer.vertical_out(pre, label) * inside
        return torch.cat(out, dim=1)


class RowPixels(nn.Module):
    """The fast sampler's once-per-pixel graph.

    row (B, 1, 1, K), a window of K = ``columns_window`` columns of the current
    row (pixels at and right of the one to draw may hold anything), links
    (B, layers * 2C, 1, K), the same columns of the row's links -> logits
    (B, levels, K); a window's last column is exact wherever it starts, and
    so is every column of a window that starts at the image's left edge.
    """

    def __init__(self, model: PixelCnn) -> None:
        super().__init__()
        self.model = model

    def forward(self, row: torch.Tensor, links: torch.Tensor) -> torch.Tensor:
        per_layer = links.chunk(len(self.model.layers), dim=1)  # (B, 2C, 1, K) each
        return self.model.horizontal(row, list(per_layer))[:, :, 0]


def nll_bits_per_dim(model: PixelCnn, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of images in [0, 1] (B, 1, H, W), in bits per pixel."""
    target = quantise(images, model.config.levels)[:, 0]  # (B, H, W)
    logits = model(network_input(target[:, None], model.config.levels), labels)
    return F.cross_entropy(logits, target) / torch.log(torch.tensor(2.0))
