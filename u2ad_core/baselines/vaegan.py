"""VAE-GAN baseline (Larsen et al. 2016; paper section 4.5, Appendix B.1).

A VAE (:class:`~u2ad_core.baselines.vae.VAE`) whose decoder doubles as the generator of a
GAN. The discriminator sees real images, reconstructions and decoded prior samples; its last
feature map also measures the reconstruction ("learned similarity", Larsen's L_llike^Dis_l).

Per batch: (1) discriminator step, binary cross-entropy, real vs. (reconstruction, prior
sample); (2) encoder + decoder step on
``kl_weight * KL + pixel SSE + feature_weight * feature SSE + adv_weight * GAN loss``
(the feature and GAN terms use the just-updated discriminator). One optimiser serves
encoder and decoder (Larsen update the two with different terms; a single weighted loss
is the usual simplification). At inference the reconstruction is the decoder's output for
the posterior mean, as for the VAE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import BaselineConfig

from .common import Method, StepInfo
from .nets import ConvEncoder
from .vae import VAE, kl_divergence

__all__ = ["VAEGAN", "METHOD"]


class VAEGAN(nn.Module):
    """``vae`` (encoder + decoder) and ``disc``, a conv discriminator ``(B, 1, H, W) -> (B, 1)``."""

    def __init__(self, image_size: tuple[int, int], latent_dim: int = 128, width: int = 32, levels: int = 4):
        super().__init__()
        self.vae = VAE(image_size, latent_dim, width, levels)
        self.disc = ConvEncoder(image_size, 1, width, levels, norm=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        return self.vae(x, generator)


def _build(cfg: BaselineConfig, image_size):
    return VAEGAN(image_size, cfg.vaegan.latent_dim, cfg.width, cfg.levels)


def _optimizers(model: VAEGAN, cfg: BaselineConfig):
    lr = cfg.vaegan.lr
    return {"vae": torch.optim.Adam(model.vae.parameters(), lr=lr, betas=(0.5, 0.999)),
            "disc": torch.optim.Adam(model.disc.parameters(), lr=lr, betas=(0.5, 0.999))}


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _train_step(model: VAEGAN, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    c = cfg.vaegan
    recon, mu, logvar = model.vae(x, g)
    z_p = torch.randn(mu.shape, generator=g).to(x.device)
    x_p = model.vae.decoder(z_p)
    # (1) discriminator
    d_loss = _bce(model.disc(x), 1.0) + 0.5 * (_bce(model.disc(recon.detach()), 0.0)
                                               + _bce(model.disc(x_p.detach()), 0.0))
    opts["disc"].zero_grad(set_to_none=True)
    d_loss.backward()
    opts["disc"].step()
    # (2) encoder + decoder
    logit_r, feat_r = model.disc.features(recon)
    logit_p = model.disc(x_p)
    with torch.no_grad():
        feat_x = model.disc.features(x)[1]
    kl = kl_divergence(mu, logvar).mean()
    pix = (recon - x).pow(2).flatten(1).sum(1).mean()
    feat = (feat_r - feat_x).pow(2).sum(1).mean()
    adv = _bce(logit_r, 1.0) + _bce(logit_p, 1.0)
    loss = c.kl_weight * kl + pix + c.feature_weight * feat + c.adv_weight * adv
    opts["vae"].zero_grad(set_to_none=True)
    loss.backward()
    opts["vae"].step()
    opts["disc"].zero_grad(set_to_none=True)  # drop the gradients (2) left in the discriminator
    return {k: float(v.detach()) for k, v in (("loss", loss), ("pix", pix), ("feat", feat), ("kl", kl),
                                              ("adv", adv), ("d_loss", d_loss))}


def _reconstruct(model: VAEGAN, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model.vae(x)[0]


METHOD = Method(
    name="vaegan", label="VAE-GAN", kind="uad", reference="Larsen et al. 2016",
    sub_config=lambda b: b.vaegan, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct,
)
