"""f-AnoGAN baseline (Schlegl et al. 2019; paper section 4.5, Appendix B.1).

Two stages, on *ROI images* ``x * cord`` (the paper feeds the product of the image and the
ROI mask):

1. WGAN-GP (Gulrajani et al. 2017): a generator ``G: z -> image`` and a critic ``D``; the
   critic is updated every batch with the Wasserstein loss plus ``gp_weight`` x the gradient
   penalty, the generator every ``n_critic`` batches. This stage takes the first
   ``gan_share`` of the epochs.
2. izi-f encoder: ``G`` and ``D`` frozen, an encoder ``E`` is trained so that
   ``G(E(x))`` reproduces ``x``: loss = MSE(x, G(E(x))) + ``kappa`` x MSE(f(x), f(G(E(x))))
   with ``f`` the critic's last feature map. The remaining epochs. (A run of a single epoch
   does both stages in every batch.)

At inference ``G(E(x * cord))`` is the reconstruction; its cord part is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import BaselineConfig

from .common import Method, StepInfo
from .nets import ConvDecoder, ConvEncoder

__all__ = ["FAnoGAN", "gradient_penalty", "critic_step", "gan_epochs", "METHOD"]


class FAnoGAN(nn.Module):
    """``generator`` ``(B, z) -> (B, 1, H, W)``, ``critic`` ``(B, 1, H, W) -> (B, 1)`` (no
    normalisation), ``encoder`` ``(B, 1, H, W) -> (B, z)``."""

    def __init__(self, image_size: tuple[int, int], latent_dim: int = 128, width: int = 32, levels: int = 4):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.generator = ConvDecoder(image_size, self.latent_dim, width, levels)
        self.critic = ConvEncoder(image_size, 1, width, levels, norm=False)
        self.encoder = ConvEncoder(image_size, self.latent_dim, width, levels)

    def forward(self, x_roi: torch.Tensor) -> torch.Tensor:
        """``G(E(x_roi))``: ``(B, 1, H, W) -> (B, 1, H, W)``."""
        return self.generator(self.encoder(x_roi))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """WGAN-GP penalty E[(||grad D(x_hat)||_2 - 1)^2] at random interpolates ``x_hat``."""
    a = torch.rand((len(real), 1, 1, 1), generator=g).to(real.device)
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_step(critic: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                gp_weight: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One WGAN-GP critic update on ``real`` and (detached) ``fake`` batches ``(B, 1, H, W)``:
    loss = E[D(fake)] - E[D(real)] + ``gp_weight`` x :func:`gradient_penalty` (the critic's
    outputs averaged over every element, so a PatchGAN map works too). Returns the detached
    ``(E[D(fake)] - E[D(real)], penalty, loss)``."""
    w = critic(fake).mean() - critic(real).mean()
    gp = gradient_penalty(critic, real, fake, g)
    loss = w + gp_weight * gp
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return w.detach(), gp.detach(), loss.detach()


def gan_epochs(epochs: int, share: float) -> int:
    """Epochs of the WGAN stage: ``round(epochs * share)`` kept in [1, epochs - 1]; a
    one-epoch run returns 1 (both stages in every batch)."""
    if epochs <= 1:
        return 1
    return min(epochs - 1, max(1, round(epochs * float(share))))


def _build(cfg: BaselineConfig, image_size):
    return FAnoGAN(image_size, cfg.fanogan.latent_dim, cfg.width, cfg.levels)


def _optimizers(model: FAnoGAN, cfg: BaselineConfig):
    c = cfg.fanogan
    kw = dict(lr=c.lr, betas=tuple(c.betas))
    return {"generator": torch.optim.Adam(model.generator.parameters(), **kw),
            "critic": torch.optim.Adam(model.critic.parameters(), **kw),
            "encoder": torch.optim.Adam(model.encoder.parameters(), **kw)}


def _gan_step(model: FAnoGAN, opts, real, g, c, step: int) -> dict[str, float]:
    z = torch.randn((len(real), model.latent_dim), generator=g).to(real.device)
    fake = model.generator(z)
    w, _, c_loss = critic_step(model.critic, opts["critic"], real, fake.detach(), c.gp_weight, g)
    out = {"critic": float(c_loss), "wasserstein": float(-w)}
    if step % max(1, int(c.n_critic)) == 0:
        g_loss = -model.critic(model.generator(z)).mean()
        opts["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        opts["generator"].step()
        opts["critic"].zero_grad(set_to_none=True)
        out["generator"] = float(g_loss.detach())
    return out


def _encoder_step(model: FAnoGAN, opts, real, c) -> dict[str, float]:
    for p in (*model.generator.parameters(), *model.critic.parameters()):
        p.requires_grad_(False)
    try:
        rec = model(real)
        f_rec = model.critic.features(rec)[1]
        with torch.no_grad():
            f_real = model.critic.features(real)[1]
        img = F.mse_loss(rec, real)
        feat = F.mse_loss(f_rec, f_real)
        loss = img + c.kappa * feat
        opts["encoder"].zero_grad(set_to_none=True)
        loss.backward()
        opts["encoder"].step()
    finally:
        for p in (*model.generator.parameters(), *model.critic.parameters()):
            p.requires_grad_(True)
    return {"izif": float(loss.detach()), "izif_img": float(img.detach()), "izif_feat": float(feat.detach())}


def _train_step(model: FAnoGAN, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    c = cfg.fanogan
    real = x * roi
    n_gan = gan_epochs(info.epochs, c.gan_share)
    out: dict[str, float] = {}
    if info.epoch < n_gan:
        out.update(_gan_step(model, opts, real, g, c, info.step))
    if info.epoch >= n_gan or info.epochs == 1:
        out.update(_encoder_step(model, opts, real, c))
    return out


def _reconstruct(model: FAnoGAN, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model(x * roi)


METHOD = Method(
    name="fanogan", label="f-AnoGAN", kind="uad", reference="Schlegl et al. 2019",
    sub_config=lambda b: b.fanogan, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct,
)
