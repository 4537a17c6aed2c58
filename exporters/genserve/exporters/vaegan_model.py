"""The VAE-GAN's networks, config and losses; training and export are in vaegan.py.

Symbols (the paper's, section 2): x an image, z = Enc(x) a sample of
q(z|x) = N(mean, exp(log_variance)), x~ = Dec(z) its reconstruction, z_p ~ p(z) =
N(0, I) and x_p = Dec(z_p) a prior sample; Dis_l(x) the discriminator's l-th
layer, Dis(x) its real-vs-fake logit. Losses, each per image and averaged over
the batch:

    L_prior = KL(q(z|x) || p(z))
    L_llike = 1/2 |Dis_l(x~) - Dis_l(x)|^2 + pixel_weight * BCE(x, x~)
    L_GAN   = log Dis(x) + log(1 - Dis(x~)) + log(1 - Dis(x_p))

    encoder:       L_prior + L_llike
    decoder:       gamma * L_llike - L_GAN   (non-saturating: -log Dis(x~) - log Dis(x_p))
    discriminator: -L_GAN                    (the two fake terms weighted 1/2 each)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genserve.exporters import vae

LOSS_NAMES = ("encoder", "decoder", "discriminator")


@dataclass(frozen=True)
class VAEGANConfig:
    """Shape and loss weights of the VAE-GAN; stored in checkpoints so a model can be rebuilt."""

    latent_dim: int = 16
    """Size D of the latent z."""
    channels: tuple[int, int] = (16, 32)
    """Encoder conv widths at 14x14 and 7x7 (the decoder mirrors them)."""
    hidden_dim: int = 256
    """Width of the fully connected layer between the 7x7 features and z."""
    disc_channels: tuple[int, int, int] = (32, 64, 64)
    """Discriminator conv widths at 14x14, 7x7 and 7x7; the last one is the layer Dis_l."""
    gamma: float = 0.1
    """Weight of L_llike (content) against L_GAN (style) in the decoder's loss."""
    pixel_weight: float = 1.0
    """Weight of the pixel-wise BCE (nats per image) inside L_llike."""
    ema_decay: float = 0.999
    """Decay of the moving average of the encoder's and decoder's weights that is exported
    (0 exports the last weights)."""

    def __post_init__(self) -> None:
        self.vae_config()  # checks latent_dim and channels
        if len(self.disc_channels) != 3 or min(self.disc_channels) < 1:
            raise ValueError(
                f"disc_channels must be three positive widths, got {self.disc_channels}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.gamma < 0 or self.pixel_weight < 0:
            raise ValueError(
                f"gamma and pixel_weight must be >= 0, got {self.gamma} and {self.pixel_weight}"
            )

    def vae_config(self) -> vae.VAEConfig:
        """The shape of the encoder and decoder (validated there)."""
        return vae.VAEConfig(self.latent_dim, self.channels, self.hidden_dim)


class Discriminator(nn.Module):
    """Dis: image (B, 1, 28, 28) -> real-vs-fake logit (B,) and features Dis_l (B, C3, 7, 7)."""

    def __init__(self, config: VAEGANConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.disc_channels
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(1, c1, 4, stride=2, padding=1)),  # 28 -> 14
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(c1, c2, 4, stride=2, padding=1)),  # 14 -> 7
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(c2, c3, 3, padding=1)),  # Dis_l, taken before its activation
        )
        self.head = nn.Sequential(nn.LeakyReLU(0.2), spectral_norm(nn.Linear(c3 * 7 * 7, 1)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(image)  # (B, C3, 7, 7)
        logit = self.head(features.flatten(1)).squeeze(1)  # (B,)
        return logit, features


class VAEGAN(nn.Module):
    """A VAE (the exported encoder and decoder) and the discriminator that trains it."""

    def __init__(self, config: VAEGANConfig) -> None:
        super().__init__()
        self.config = config
        self.vae = vae.VAE(config.vae_config())
        self.discriminator = Discriminator(config)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters each of the three losses updates, by :data:`LOSS_NAMES`."""
        modules = (self.vae.encoder, self.vae.decoder, self.discriminator)
        return {name: list(m.parameters()) for name, m in zip(LOSS_NAMES, modules, strict=True)}

    def losses(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The encoder's, decoder's and discriminator's losses on one batch, and their parts.

        Each loss must only update its own network: pass the groups of
        :meth:`parameter_groups` as ``backward(inputs=...)``.
        """
        c = self.config
        mean, log_variance = self.vae.encoder(image)  # (B, D) each
        # 1. z = mean + sigma * eps ~ q(z|x); z_p ~ N(0, I).
        eps = torch.randn(mean.shape, generator=generator)
        z = mean + torch.exp(0.5 * log_variance) * eps  # (B, D)
        z_p = torch.randn(mean.shape, generator=generator)  # (B, D)
        # 2. x~ = Dec(z), x_p = Dec(z_p). Separate calls (and separate Dis calls below)
        #    keep each backward pass to the images its loss depends on.
        reconstruction_logits = self.vae.decoder.logits(z)  # (B, 1, 28, 28)
        reconstruction = torch.sigmoid(reconstruction_logits)
        prior_sample = self.vae.decoder(z_p)  # (B, 1, 28, 28)
        # 3. Dis and Dis_l on x, x~ and x_p.
        real_logit, real_features = self.discriminator(image)  # (B,), (B, C3, 7, 7)
        reconstruction_logit, reconstruction_features = self.discriminator(reconstruction)
        prior_logit, _ = self.discriminator(prior_sample)
        # 4. L_prior: KL(N(mean, var) || N(0, 1)) in closed form.
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - log_variance - 1).sum(1)  # (B,)
        # 5. L_llike: Gaussian in Dis_l's space (Dis_l(x) is the target) plus pixel BCE.
        feature = 0.5 * (reconstruction_features - real_features.detach()).pow(2).flatten(1).sum(1)
        pixel = F.binary_cross_entropy_with_logits(reconstruction_logits, image, reduction="none")
        pixel = pixel.flatten(1).sum(1)  # (B,)
        llike = (feature + c.pixel_weight * pixel).mean()
        # 6. L_GAN, with the generator's side non-saturating.
        real, fake = torch.ones_like(real_logit), torch.zeros_like(real_logit)
        bce = F.binary_cross_entropy_with_logits
        fooled = bce(reconstruction_logit, real) + bce(prior_logit, real)
        spotted = bce(reconstruction_logit, fake) + bce(prior_logit, fake)
        real_loss = bce(real_logit, real)
        losses = {
            "encoder": kl.mean() + llike,
            "decoder": c.gamma * llike + fooled,
            "discriminator": real_loss + 0.5 * spotted,
        }
        parts = {
            "kl": kl.mean().item(),
            "feature": feature.mean().item(),
            "bce": pixel.mean().item(),
            "gan_g": fooled.item(),
        }
        return losses, parts
