"""DAE baseline (Kascenas et al. 2022; paper section 4.5, Appendix B.1).

A U-Net is trained to remove *coarse* Gaussian noise: noise of standard deviation
``noise_std`` drawn on a grid ``noise_scale`` times coarser than the image and upsampled
bilinearly, added to the whole image; the loss is the mean squared error to the clean image.
At inference the paper adds the same kind of noise to the whole image and keeps the cord part
of the denoised output (Appendix B.1, ``noise_at_inference=True``); Kascenas et al. feed the
clean image instead (``noise_at_inference=False``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from u2ad_core.core.config import BaselineConfig

from .common import Method, StepInfo
from .nets import UNet

__all__ = ["coarse_noise", "METHOD"]


def coarse_noise(shape: tuple[int, int, int, int], std: float, scale: int, generator: torch.Generator) -> torch.Tensor:
    """Coarse Gaussian noise ``(B, C, H, W)`` on the CPU: N(0, std^2) on a
    ``ceil(H/scale) x ceil(W/scale)`` grid, bilinearly upsampled to ``H x W``."""
    b, c, h, w = shape
    s = max(1, int(scale))
    small = torch.randn((b, c, math.ceil(h / s), math.ceil(w / s)), generator=generator) * float(std)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _noise(x: torch.Tensor, g: torch.Generator, cfg: BaselineConfig) -> torch.Tensor:
    return coarse_noise(tuple(x.shape), cfg.dae.noise_std, cfg.dae.noise_scale, g).to(x.device, x.dtype)


def _build(cfg: BaselineConfig, image_size):
    return UNet(image_size, cfg.width, cfg.levels, time_dim=0, out_act="sigmoid")


def _optimizers(model, cfg: BaselineConfig):
    return {"dae": torch.optim.Adam(model.parameters(), lr=cfg.dae.lr)}


def _train_step(model, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    loss = F.mse_loss(model(x + _noise(x, g, cfg)), x)
    opts["dae"].zero_grad(set_to_none=True)
    loss.backward()
    opts["dae"].step()
    return {"loss": float(loss.detach())}


def _reconstruct(model, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model(x + _noise(x, g, cfg) if cfg.dae.noise_at_inference else x)


METHOD = Method(
    name="dae", label="DAE", kind="uad", reference="Kascenas et al. 2022",
    sub_config=lambda b: b.dae, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct,
)
