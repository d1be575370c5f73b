"""cDDPM: a diffusion model guided by an encoding of its own input (Behrendt et al. 2025).

Reference: F. Behrendt, D. Bhattacharya, R. Mieling, L. Maack, J. Krüger, R. Opfer,
A. Schlaefer, "Guided reconstruction with conditioned diffusion models for unsupervised
anomaly detection in brain MRIs", Computers in Biology and Medicine 186 (2025) 109660; code
FinnBehrendt/Conditioned-Diffusion-Models-UAD: ``src/models/DDPM_2D.py`` (training and test
step), ``src/models/modules/cond_DDPM.py`` (diffusion, loss), ``src/models/modules/OpenAI_Unet.py``
(how the condition enters), ``src/utils/utils_eval.py`` (post-filtering),
``configs/experiment/cDDPM/DDPM_cond_spark_2D.yaml`` (settings).

Idea. A diffusion model reconstructs a slice from a noised copy of itself; trained on healthy
slices only, it replaces what it never saw (a lesion) with healthy tissue. A plain DDPM also
loses the slice's own intensity characteristics (brightness, contrast), which shows up as
false positives everywhere. cDDPM gives the denoiser a vector computed from the *clean* input,
so the reconstruction keeps the slice's intensities while the noise still hides the lesion.

Equations. ``x`` ``(B, 1, H, W)`` in [0, 1]; inside the diffusion ``x0 = 2 x - 1``.

- Forward process: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``eps`` simplex-like
  noise (:func:`u2ad_core.baselines.anoddpm.simplex_noise`) and ``T = timesteps`` steps of the
  cosine schedule (Nichol & Dhariwal 2021), the default of the authors' ``GaussianDiffusion``:
  ``abar_t = f(t + 1) / f(0)``, ``f(u) = cos^2((u / T + s) / (1 + s) * pi / 2)``, ``s = 0.008``,
  betas clipped at 0.999 (:func:`cosine_betas`; ``schedule="linear"`` uses AnoDDPM's
  :func:`~u2ad_core.baselines.anoddpm.linear_betas`).
- Condition: ``c = E(x)`` ``(B, cond_dim)``, a convolutional encoder of the clean input.
- Denoiser: ``x0_hat = f(x_t, t, c)`` ``(B, 1, H, W)``, a U-Net that predicts the clean image
  (the authors' ``objective: pred_x0``); every block receives the time embedding and
  ``MLP(c)`` concatenated (:class:`u2ad_core.baselines.nets.UNet` with ``cond_dim``).
- Training: ``t ~ U{0, ..., T-1}``, loss ``mean |x0_hat - x0|`` (L1), encoder and U-Net
  trained together by one Adam optimiser.
- Inference (partial diffusion, one step back): for each level ``t_k`` of ``noise_levels``
  (counted from 1, so step index ``t_k - 1``, as the authors' ``t=t-1``) draw ``eps_k``,
  noise the slice to ``x_k`` and predict ``x0_hat_k = f(x_k, t_k - 1, E(x))``. The
  reconstruction is ``mean_k (x0_hat_k + 1) / 2`` clamped to [0, 1]: one U-Net pass per level,
  no reverse chain (the authors' ``test_step`` uses the one-step prediction). One level
  (``noise_levels=(500,)``, the authors' ``test_timesteps``) or the authors' ensemble
  ``(250, 500, 750)`` (``noise_ensemble: True``, the default).
- Map: ``|x - recon|`` in the cord (the authors' ``residualmode: l1``), then the median filter
  in the cord (:func:`roi_median`, through ``Method.map_filter``); 0 outside the cord.

The model keeps the levels it uses at inference in ``model.noise_levels`` (from the
configuration); set it on a trained model to compare one level with the ensemble without
retraining (the configuration, and so the run hash, keeps the trained value).

Faithful to the original: ``x0`` prediction with an L1 loss, T = 1000 with the cosine
schedule, simplex noise with the authors' octaves / persistence / frequency (AnoDDPM's),
the condition joining the time embedding through its own MLP (concatenated, as in their
``OpenAI_Unet.py``), cond_dim = 4 x U-Net width, U-Net width 128, Adam lr 1e-4, the ensemble
over t in {250, 500, 750} averaged before the residual, the median filter of kernel 5.

Changed, and why:

- U-Net: the project's small U-Net (:mod:`.nets`, shared with AnoDDPM and the DAE) instead of
  the OpenAI U-Net (3 residual blocks per level, attention, channel multipliers (1, 2, 2),
  half precision). The embedding enters each block as an added per-channel bias (a linear map
  of ``[time, condition]``) instead of a scale-and-shift of the normalised features. One U-Net
  for the project's diffusion baselines, small enough for the CPU presets.
- Encoder: the project's convolutional encoder (:class:`~u2ad_core.baselines.nets.ConvEncoder`,
  stride-2 convolutions, global average pooling, one linear layer) instead of a ResNet-50, and
  trained from scratch with the denoiser (the authors' ``pretrained_encoder=False`` run). Their
  best results pretrain the encoder first with SparK masked image modelling; that second
  training stage is not done here.
- Noise: the project's gradient noise, standardised to unit variance per image and drawn
  independently per image (as the project's AnoDDPM). The authors' ``gen_noise`` draws one
  OpenSimplex field per batch, shared by all its slices, and does not standardise it (its
  standard deviation is below 1, so a given ``t`` corrupts less there than here).
- Images: the preset's 2D sagittal slices (the authors: axial brain slices of 192 x 192
  downsampled to 96 x 96). The reconstruction is clamped to [0, 1].
- T is 1000 in every preset (AnoDDPM shrinks T on a CPU because its reverse chain costs one
  pass per step): here inference costs one pass per level whatever T, and with the cosine
  schedule the noise at level ``t_k`` depends only on ``t_k / T``.

The authors' post-filtering (``utils_eval._test_step``) on the cord ROI in 2D:

- Median filter of the residual, kernel 5: **applies**, in 2D (5 x 5) instead of 3D (their
  slices form a volume; ours are a few sagittal slices per patient, not a contiguous stack).
  It runs over cord pixels only: the authors filter the brain-masked residual, so zeros from
  outside the mask enter the window at the brain's rim; in a cord 6-10 pixels wide half of an
  edge pixel's window lies outside, and those zeros would pull the whole cord border down.
- Brain-mask erosion (``erodeBrainmask``, ``width // 25`` iterations, 2 px at 64 px, 10 px at
  256 px): **does not apply**. It trims the imprecise rim of a skull-stripped brain mask; the
  cord ROI is a segmentation only a few pixels wide, which that rule would largely erase. The
  shared ``score.erode_cord`` (0 by default) erodes the cord for every method alike.
- Removal of connected components of at most 7 voxels after thresholding: **not in the map**.
  It is part of their Dice computation on binarised 3D volumes; the project's scoring applies
  its own post-processing (bottom 20 % dropped, top-3 components) to every method.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from u2ad_core.core.config import BaselineConfig, CDDPMConfig

from .anoddpm import AnoDDPM, linear_betas
from .common import Method, StepInfo
from .nets import ConvEncoder, UNet

__all__ = ["cosine_betas", "roi_median", "CDDPM", "METHOD"]


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (the authors' ``cosine_beta_schedule``): ``(T,)``
    float64 betas with ``abar_t = f(t + 1) / f(0)``, clipped at 0.999."""
    t = int(timesteps)
    u = torch.linspace(0, t, t + 1, dtype=torch.float64) / t
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(0, 0.999)


def _check_levels(levels, timesteps: int) -> tuple[int, ...]:
    levels = tuple(int(v) for v in levels)
    if not levels or any(not 1 <= v <= timesteps for v in levels):
        raise ValueError(f"cddpm.noise_levels must be one or more steps in [1, timesteps={timesteps}], "
                         f"got {levels}")
    return levels


def roi_median(maps: np.ndarray, roi: np.ndarray, kernel: int = 5, chunk: int = 64) -> np.ndarray:
    """Median filter over ROI pixels only: ``(N, H, W)`` -> ``(N, H, W)`` float32, 0 outside.

    Each pixel of ``roi`` (bool ``(N, H, W)``) gets the median of the ROI pixels in its
    ``kernel x kernel`` window (itself included; the mean of the two middle values when their
    number is even); pixels outside the ROI neither count nor change. ``kernel`` <= 1 returns
    the map masked to the ROI. ``chunk``: slices per step (bounds the memory).
    """
    maps = np.asarray(maps, dtype=np.float32)
    roi = np.asarray(roi) > 0
    if maps.ndim != 3 or maps.shape != roi.shape:
        raise ValueError(f"roi_median: maps {maps.shape} and roi {roi.shape} must be the same (N, H, W)")
    k = int(kernel)
    if k <= 1:
        return np.where(roi, maps, 0.0).astype(np.float32)
    if k % 2 == 0:
        raise ValueError(f"roi_median: kernel must be odd (a centred window), got {k}")
    r = k // 2
    dy, dx = (a.ravel() for a in np.mgrid[-r:r + 1, -r:r + 1])
    out = np.zeros_like(maps)
    for s in range(0, len(maps), max(1, int(chunk))):
        part = roi[s:s + chunk]
        padded = np.pad(np.where(part, maps[s:s + chunk], np.nan), ((0, 0), (r, r), (r, r)),
                        constant_values=np.nan)
        n, y, x = np.nonzero(part)
        win = np.sort(padded[n[:, None], y[:, None] + r + dy, x[:, None] + r + dx], axis=1)  # NaN last
        c = np.isfinite(win).sum(axis=1)  # >= 1: the pixel itself
        rows = np.arange(len(win))
        out[s + n, y, x] = 0.5 * (win[rows, (c - 1) // 2] + win[rows, c // 2])
    return out


class CDDPM(nn.Module):
    """Encoder ``E`` of the clean input + U-Net ``f(x_t, t, E(x)) -> x0``, with the schedule.

    ``cfg.cond_dim = 0`` leaves out the encoder: an unconditioned DDPM with the same ``x0``
    objective (the authors' DDPM baseline, ``condition: False``).
    """

    def __init__(self, image_size: tuple[int, int], cfg: CDDPMConfig, levels: int = 4):
        super().__init__()
        if cfg.schedule not in ("cosine", "linear"):
            raise ValueError(f"cddpm.schedule must be 'cosine' or 'linear', got {cfg.schedule!r}")
        if cfg.unet_width < 1 or cfg.cond_dim < 0 or (cfg.cond_dim and cfg.encoder_width < 1):
            raise ValueError(f"cddpm: unet_width and encoder_width must be >= 1 and cond_dim >= 0, got "
                             f"{cfg.unet_width}, {cfg.encoder_width}, {cfg.cond_dim}")
        self.cfg = cfg
        self.image_size = tuple(image_size)
        self.timesteps = int(cfg.timesteps)
        self.noise_levels = _check_levels(cfg.noise_levels, self.timesteps)
        self.encoder = (ConvEncoder(image_size, cfg.cond_dim, cfg.encoder_width, levels, pool=True)
                        if cfg.cond_dim else None)
        w = int(cfg.unet_width)
        self.unet = UNet(image_size, w, levels, time_dim=max(16, 2 * w), out_act="none", cond_dim=cfg.cond_dim)
        betas = cosine_betas(self.timesteps) if cfg.schedule == "cosine" else linear_betas(self.timesteps)
        self.register_buffer("abar", torch.cumprod(1 - betas, 0).float(), persistent=False)

    # AnoDDPM's noise (standardised simplex-like, from cfg.octaves / persistence / frequency) and
    # forward process (x_t from x0 in [-1, 1], step indices t (B,), noise eps, through self.abar)
    noise = AnoDDPM.noise
    q_sample = AnoDDPM.q_sample

    def encode(self, x: torch.Tensor) -> torch.Tensor | None:
        """Condition ``(B, cond_dim)`` from the clean slices ``x`` ``(B, 1, H, W)`` in [0, 1]
        (``None`` without an encoder)."""
        return None if self.encoder is None else self.encoder(x)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted clean image ``(B, 1, H, W)`` in [-1, 1] (unclamped) from ``x_t``, ``t`` ``(B,)``
        and the condition ``(B, cond_dim)``."""
        return self.unet(x_t, t, cond)

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training loss (scalar): ``mean |f(x_t, t, E(x)) - x0|`` for clean slices ``x``
        ``(B, 1, H, W)`` in [0, 1], ``t`` uniform in ``{0, ..., T-1}``, simplex-like noise."""
        t = torch.randint(0, self.timesteps, (len(x),), generator=generator).to(x.device)
        x0 = x * 2 - 1
        x_t = self.q_sample(x0, t, self.noise(x.shape, generator, x.device))
        return F.l1_loss(self(x_t, t, self.encode(x)), x0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator, levels=None) -> torch.Tensor:
        """Mean of the one-step ``x0`` predictions over the noise levels: ``(B, 1, H, W)`` in [0, 1].

        ``x`` ``(B, 1, H, W)`` in [0, 1]; ``levels``: steps counted from 1 (default
        ``self.noise_levels``); one noise draw per level, in the order given. Costs one encoder
        pass and one U-Net pass per level.
        """
        levels = _check_levels(self.noise_levels if levels is None else levels, self.timesteps)
        x0, cond = x * 2 - 1, self.encode(x)
        total = torch.zeros_like(x)
        for level in levels:
            t = torch.full((len(x),), level - 1, dtype=torch.long, device=x.device)
            total += self(self.q_sample(x0, t, self.noise(x.shape, generator, x.device)), t, cond)
        return ((total / len(levels) + 1) / 2).clamp(0, 1)


def _build(cfg: BaselineConfig, image_size):
    return CDDPM(image_size, cfg.cddpm, cfg.levels)


def _optimizers(model: CDDPM, cfg: BaselineConfig):
    return {"cddpm": torch.optim.Adam(model.parameters(), lr=cfg.cddpm.lr)}


def _train_step(model: CDDPM, opts, x, roi, g, cfg: BaselineConfig, info: StepInfo) -> dict[str, float]:
    opt = opts["cddpm"]
    opt.zero_grad(set_to_none=True)
    loss = model.loss(x, g)
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach())}


def _reconstruct(model: CDDPM, x, roi, g, cfg: BaselineConfig) -> torch.Tensor:
    return model.reconstruct(x, g)


def _map_filter(maps: np.ndarray, roi: np.ndarray, cfg: CDDPMConfig) -> np.ndarray:
    return roi_median(maps, roi, cfg.median_kernel)


METHOD = Method(
    name="cddpm", label="cDDPM", kind="uad", reference="Behrendt et al. 2025",
    sub_config=lambda b: b.cddpm, build=_build, optimizers=_optimizers,
    train_step=_train_step, reconstruct=_reconstruct, map_filter=_map_filter, beyond_paper=True,
)
