"""VAE baseline (Kingma & Welling 2013; paper section 4.5, Appendix B.1).

A conv encoder maps the whole image to the mean and log-variance of a dense latent
``z`` (``latent_dim``); a conv decoder maps ``z`` back to an image. Training maximises the
ELBO: per image, the sum of squared errors plus ``kl_weight`` x KL(q(z|x) || N(0, I)).
At inference the decoder's output for the posterior mean is the reconstruction; only its
cord part is kept (:func:`u2ad_core.baselines.common.anomaly_maps`).
"""

from __future__ import annotations

import torch
from torch import nn

from u2ad_core.core.config import BaselineConfig

from .common import Method, StepInfo
from .nets import ConvDecoder, ConvEncoder

__all__ = ["VAE", "kl_divergence", "METHOD"]


class VAE(nn.Module):
    """``(B, 1, H, W)`` -> reconstruction ``(B, 1, H, W)``, mean and log-variance ``(B, z)``."""

    def __init__(self, image_size: tuple[int, int], latent_dim: int = 128, width: int = 32, levels: int = 4):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.encoder = ConvEncoder(image_size, 2 * self.latent_dim, width, levels)
        self.decoder = ConvDecoder(image_size, self.latent_dim, width, levels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, H, W) -> (mu, logvar)``, each ``(B, latent_dim)``; logvar clamped to [-10, 10]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Sample ``z = mu + sigma * eps`` (eps from ``generator``, CPU) and decode.

        Returns ``(recon (B, 1, H, W), mu, logvar)``; without a generator ``z = mu``.
        """
        mu, logvar = self.encode(x)
        z = mu
        if generator is not None:
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + torch.exp(0.5 * logvar) * eps
        return self.decoder(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image: ``(B, z) -> (B,)``."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def _build(cfg: BaselineConfig, image_size):
    return VAE(image_size, cfg.vae.latent_dim, cfg.width, cfg.levels)


def _optimizers(model: VAE, cfg: BaselineConfig):
    return {"vae": torch.optim.Adam(model.parameters(), lr=cfg.vae.lr)}


def _train_step(model: VAE, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    recon, mu, logvar = model(x, g)
    rec = (recon - x).pow(2).flatten(1).sum(1).mean()
    kl = kl_divergence(mu, logvar).mean()
    loss = rec + cfg.vae.kl_weight * kl
    opts["vae"].zero_grad(set_to_none=True)
    loss.backward()
    opts["vae"].step()
    return {"loss": float(loss.detach()), "rec": float(rec.detach()), "kl": float(kl.detach())}


def _reconstruct(model: VAE, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model(x)[0]


METHOD = Method(
    name="vae", label="VAE", kind="uad", reference="Kingma & Welling 2013",
    sub_config=lambda b: b.vae, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct,
)
