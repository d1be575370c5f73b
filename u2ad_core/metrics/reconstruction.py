"""Reconstruction quality inside a region: MSE, PSNR, SSIM and the mean uncertainties.

:func:`ssim_map` is SSIM per pixel, vectorised over a batch in torch (the definition of
``skimage.metrics.structural_similarity``, tested against it); :func:`reconstruction_metrics`
reduces it, with MSE, PSNR and the mean EU / AU, over a region of each image: the means over
the images (training's refresh, ``metrics.csv``) or, with ``reduce=False``, one value per image;
:func:`reconstruction_table` is the per-image form as a DataFrame (one row per image).

SSIM of a region is computed with the reconstruction pasted into the reference outside the
region: the 7 x 7 SSIM window of a pixel near the region's border then sees the reference, not
the reconstruction, beyond the border, so the number depends only on the reconstruction inside
the region, as MSE and PSNR do. For the cord (the ROI the Monte-Carlo reconstruction is pasted
onto the input outside of) this changes nothing; for a smaller region (a lesion inside the cord)
it keeps the rest of the cord's reconstruction out of the lesion's SSIM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["RECONSTRUCTION_COLUMNS", "ssim_map", "reconstruction_metrics", "reconstruction_table"]

RECONSTRUCTION_COLUMNS: tuple[str, ...] = ("mse", "psnr", "ssim", "au_mean", "eu_mean")
"""The per-image values of :func:`reconstruction_metrics`; ``eu_mean`` is the mean MC variance (the
paper's "variance"), ``au_mean`` the mean |image - mean|."""


def _symmetric_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad the last two dims by ``p`` with edge-repeating reflection (numpy 'symmetric',
    scipy.ndimage 'reflect', which skimage's SSIM uses)."""
    x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, win_size: int = 7, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM, vectorised over a batch: (N, H, W) x (N, H, W) -> (N, H, W).

    Same definition as ``skimage.metrics.structural_similarity(x, y, data_range=1,
    win_size=7, full=True)[1]`` (uniform 7 x 7 window, sample covariance, K1 = 0.01,
    K2 = 0.03, symmetric padding); tested against it.
    """
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    x = x.double().unsqueeze(1)
    y = y.double().unsqueeze(1)
    p = win_size // 2

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(_symmetric_pad(t, p), win_size, stride=1)

    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s[:, 0].float()


def reconstruction_metrics(
    images: torch.Tensor | np.ndarray,
    mean: torch.Tensor | np.ndarray,
    eu: torch.Tensor | np.ndarray | None,
    region: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray | None = None,
    reduce: bool = True,
) -> dict[str, Any]:
    """Reconstruction quality within a region (paper Table 3 / Figure A4 metrics).

    images, mean (MC mean reconstruction), eu (MC variance), region (bool ROI, e.g. the cord
    or a pseudo-anomaly mask): (N, H, W). ``reference`` (default ``images``) is what the
    reconstruction is compared with (the pre-anomaly ``original`` for Figure A4 (c)).

    Per image, over the region's pixels: MSE, PSNR = 10 log10(1 / MSE) (data range 1) and
    SSIM = mean of the SSIM map (:func:`ssim_map`, computed on the whole image with the
    reconstruction pasted into the reference outside the region) over the region's pixels;
    mean EU and mean AU = |image - mean| over the region. Returned values are means over the
    images that have a non-empty region (NaN when none has; ``eu_mean`` NaN when ``eu`` is None),
    with ``n`` the number of such images; ``reduce=False`` returns the per-image values instead,
    as (N,) numpy arrays (NaN for an empty region), keys :data:`RECONSTRUCTION_COLUMNS`.
    """
    t = lambda a: torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a  # noqa: E731
    img = t(images).float()
    mu = t(mean).float()
    reg = t(region).bool()
    ref = img if reference is None else t(reference).float()
    if img.shape != mu.shape or img.shape != reg.shape:
        raise ValueError(f"images {tuple(img.shape)}, mean {tuple(mu.shape)} and region "
                         f"{tuple(reg.shape)} must have the same (N, H, W) shape")
    counts = reg.flatten(1).sum(1).float()
    ok = counts > 0
    if reduce and not bool(ok.any()):
        nan = float("nan")
        return {"mse": nan, "psnr": nan, "ssim": nan, "eu_mean": nan, "au_mean": nan, "n": 0}
    rec = torch.where(reg, mu, ref)
    c = counts.clamp_min(1)
    mse = ((rec - ref) ** 2 * reg).flatten(1).sum(1) / c
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-12))
    ssim = (ssim_map(rec, ref) * reg).flatten(1).sum(1) / c
    au = ((img - mu).abs() * reg).flatten(1).sum(1) / c
    if not reduce:
        nan = torch.tensor(float("nan"))
        eu_mean = (t(eu).float() * reg).flatten(1).sum(1) / c if eu is not None else torch.full_like(mse, float("nan"))
        per = {"mse": mse, "psnr": psnr, "ssim": ssim, "au_mean": au, "eu_mean": eu_mean}
        return {k: torch.where(ok, v.float(), nan).cpu().numpy() for k, v in per.items()}
    out = {
        "mse": float(mse[ok].mean()),
        "psnr": float(psnr[ok].mean()),
        "ssim": float(ssim[ok].mean()),
        "au_mean": float(au[ok].mean()),
        "n": int(ok.sum()),
    }
    out["eu_mean"] = float(((t(eu).float() * reg).flatten(1).sum(1) / c)[ok].mean()) if eu is not None else float("nan")
    return out


def reconstruction_table(
    images: torch.Tensor | np.ndarray,
    mean: torch.Tensor | np.ndarray,
    eu: torch.Tensor | np.ndarray | None,
    region: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray | None = None,
) -> pd.DataFrame:
    """:func:`reconstruction_metrics` per image as a table: one row per image (N rows), columns
    :data:`RECONSTRUCTION_COLUMNS` (NaN for an image with an empty region; ``eu_mean`` NaN when
    ``eu`` is None). Arguments as :func:`reconstruction_metrics`; the table's column means over
    its non-NaN rows are the reduced values."""
    per = reconstruction_metrics(images, mean, eu, region, reference=reference, reduce=False)
    return pd.DataFrame({k: per[k] for k in RECONSTRUCTION_COLUMNS})
