"""AnoDDPM baseline (Wyatt et al. 2022; paper section 4.5, Appendix B.1).

A denoising diffusion probabilistic model (Ho et al. 2020) whose noise is *simplex-like*
multi-octave gradient noise instead of white Gaussian noise, so that it corrupts structures
of the size of a lesion. Images are scaled to [-1, 1].

- Forward process: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with a linear beta
  schedule over ``timesteps`` steps (Ho et al.: 1e-4 ... 0.02 for T = 1000; for a shorter
  chain both ends are multiplied by 1000 / T so the chain reaches the same noise level).
- Training: a time-conditioned U-Net predicts ``eps`` from ``(x_t, t)``, ``t`` uniform,
  loss MSE.
- Inference (partial diffusion): noise the image to step ``partial_steps`` and run the
  reverse chain ``partial_steps`` steps back to ``t = 0`` (the paper: 40 of T = 1000). The
  CPU presets scale T and the partial steps down together (e.g. 10 of 250), so the
  corruption level ``partial_steps / T`` stays the paper's 4 %.

The noise (:func:`simplex_noise`) is vectorised 2D gradient ("Perlin") noise in torch: random
unit gradients on a lattice, quintic fade, ``octaves`` octaves each with twice the frequency
and ``persistence`` x the amplitude of the previous one, base period ``frequency`` pixels at
256 rows (scaled with the image height), standardised to zero mean and unit variance per
image so that it can stand in for N(0, I) in the DDPM equations. AnoDDPM's own code uses
OpenSimplex noise with 6 octaves, persistence 0.8 and frequency 64; gradient noise has the
same band-limited, multi-scale character (not the same values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import AnoDDPMConfig, BaselineConfig

from .common import Method, StepInfo
from .nets import UNet

__all__ = ["gradient_noise", "simplex_noise", "linear_betas", "AnoDDPM", "METHOD"]


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def gradient_noise(b: int, h: int, w: int, period: float, generator: torch.Generator) -> torch.Tensor:
    """One octave of 2D gradient ("Perlin") noise ``(b, h, w)`` (CPU, float32, about [-1, 1]).

    Lattice cells of ``p = max(2, round(period))`` pixels; random unit gradients at the
    lattice points (independent per image); the value at a pixel blends the dot products of
    its four corner gradients with its offsets from them, weighted by the quintic fade
    ``6t^5 - 15t^4 + 10t^3``. Because cells are whole pixels, every term is an upsampled
    lattice array times a fixed in-cell pattern (no gather). The lattice is shifted by a
    random whole-pixel offset per call, so lattice points (where the noise is 0) move.
    """
    p = max(2, int(round(float(period))))
    cy, cx = math.ceil(h / p) + 1, math.ceil(w / p) + 1  # cells covering h + p rows / w + p columns
    angle = 2 * math.pi * torch.rand((b, cy + 1, cx + 1), generator=generator)
    gx, gy = torch.cos(angle), torch.sin(angle)
    oy, ox = (int(v) for v in torch.randint(0, p, (2,), generator=generator))
    f = torch.arange(p, dtype=torch.float32) / p
    fy = f.repeat(cy)[:, None]  # (cy * p, 1): offset inside the cell, rows
    fx = f.repeat(cx)[None, :]  # (1, cx * p): columns
    u, v = _fade(fx), _fade(fy)

    def up(t: torch.Tensor) -> torch.Tensor:  # (b, cy, cx) -> (b, cy * p, cx * p)
        return t[:, :, None, :, None].expand(b, cy, p, cx, p).reshape(b, cy * p, cx * p)

    def corner(dy: int, dx: int) -> torch.Tensor:
        sl = (slice(None), slice(dy, dy + cy), slice(dx, dx + cx))
        return up(gx[sl]) * (fx - dx) + up(gy[sl]) * (fy - dy)

    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return ((top * (1 - v) + bottom * v) * math.sqrt(2.0))[:, oy:oy + h, ox:ox + w]


def simplex_noise(shape: tuple[int, ...], generator: torch.Generator, octaves: int = 6, persistence: float = 0.8,
                  frequency: float = 64.0, reference_rows: int = 256) -> torch.Tensor:
    """Multi-octave gradient noise, standardised per image: ``(B, 1, H, W)`` (or ``(B, H, W)``).

    Octave k has period ``frequency * H / reference_rows / 2**k`` pixels (at least 2) and
    amplitude ``persistence ** k``; the sum is shifted and scaled to mean 0, std 1 per image.
    """
    if len(shape) == 4:
        if shape[1] != 1:
            raise ValueError(f"simplex_noise: one channel expected, got shape {tuple(shape)}")
        return simplex_noise((shape[0], shape[2], shape[3]), generator, octaves, persistence, frequency,
                             reference_rows).unsqueeze(1)
    b, h, w = (int(s) for s in shape)
    base = float(frequency) * h / float(reference_rows)
    total = torch.zeros((b, h, w))
    for k in range(max(1, int(octaves))):
        total += (float(persistence) ** k) * gradient_noise(b, h, w, base / 2**k, generator)
    total -= total.mean(dim=(1, 2), keepdim=True)
    return total / total.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s linear schedule, both ends scaled by ``1000 / timesteps`` (float64, (T,))."""
    scale = 1000.0 / int(timesteps)
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), int(timesteps), dtype=torch.float64)


class AnoDDPM(nn.Module):
    """Time-conditioned U-Net ``eps_theta(x_t, t)`` with the diffusion schedule as buffers."""

    def __init__(self, image_size: tuple[int, int], cfg: AnoDDPMConfig, width: int = 32, levels: int = 4):
        super().__init__()
        if not 1 <= cfg.partial_steps <= cfg.timesteps:
            raise ValueError(f"anoddpm.partial_steps must be in [1, timesteps={cfg.timesteps}], "
                             f"got {cfg.partial_steps}")
        self.cfg = cfg
        self.image_size = tuple(image_size)
        self.unet = UNet(image_size, width, levels, time_dim=max(16, 2 * width), out_act="none")
        betas = linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        for name, v in (("betas", betas), ("alphas", alphas), ("abar", abar), ("post_var", post_var)):
            self.register_buffer(name, v.float(), persistent=False)

    def noise(self, shape, generator: torch.Generator, device) -> torch.Tensor:
        c = self.cfg
        return simplex_noise(tuple(shape), generator, c.octaves, c.persistence, c.frequency).to(device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t`` from ``x_0`` in [-1, 1], steps ``t`` (B,) and noise ``eps`` (B, 1, H, W)."""
        a = self.abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t)

    @torch.no_grad()
    def partial_reconstruct(self, x: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Noise ``x`` ((B, 1, H, W) in [0, 1]) to step ``steps`` and denoise back to step 0.

        Returns the reconstruction ``(B, 1, H, W)`` in [0, 1] (``steps`` network evaluations).
        """
        steps = int(steps or self.cfg.partial_steps)
        x0 = x * 2 - 1
        b = len(x)
        t0 = torch.full((b,), steps - 1, dtype=torch.long, device=x.device)
        xt = self.q_sample(x0, t0, self.noise(x.shape, generator, x.device))
        for t in range(steps - 1, -1, -1):
            tt = torch.full((b,), t, dtype=torch.long, device=x.device)
            eps = self.unet(xt, tt)
            mean = (xt - self.betas[t] / (1 - self.abar[t]).sqrt() * eps) / self.alphas[t].sqrt()
            if t > 0:
                xt = mean + self.post_var[t].sqrt() * self.noise(x.shape, generator, x.device)
            else:
                xt = mean
        return ((xt + 1) / 2).clamp(0, 1)


def _build(cfg: BaselineConfig, image_size):
    return AnoDDPM(image_size, cfg.anoddpm, cfg.width, cfg.levels)


def _optimizers(model: AnoDDPM, cfg: BaselineConfig):
    return {"ddpm": torch.optim.Adam(model.parameters(), lr=cfg.anoddpm.lr)}


def _train_step(model: AnoDDPM, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    t = torch.randint(0, model.cfg.timesteps, (len(x),), generator=g).to(x.device)
    eps = model.noise(x.shape, g, x.device)
    loss = F.mse_loss(model(model.q_sample(x * 2 - 1, t, eps), t), eps)
    opts["ddpm"].zero_grad(set_to_none=True)
    loss.backward()
    opts["ddpm"].step()
    return {"loss": float(loss.detach())}


def _reconstruct(model: AnoDDPM, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model.partial_reconstruct(x, g)


METHOD = Method(
    name="anoddpm", label="AnoDDPM", kind="uad", reference="Wyatt et al. 2022",
    sub_config=lambda b: b.anoddpm, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct,
)
