"""Pseudo-anomalies inside the cord (paper Appendix A.1, method.md section 7).

For each 2D image, 1-3 elliptical regions are placed on the cord centre line:
* width  = U(0.7, 1.0) x the local cord width ``w`` (measured across the cord axis),
* length = U(1, 4) x ``w`` (this project reads "1-4 times the width" as the cord width
  ``w``, like the width; the ellipse's long axis follows the local cord axis),
* values ~ Normal(mu, sigma) with ``mu`` drawn uniformly between the mean of the cord and the
  mean of the CSF of that image, and ``sigma`` drawn uniformly between their standard
  deviations (a T2 hyperintensity is brighter than the cord and darker than CSF); values are
  clipped to [0, 1] and replace the image inside the mask; the mask is clipped to the cord.

When an image has no CSF mask, the CSF statistics are estimated from the brightest quarter
of a 1-3 pixel ring around the cord.

Randomness: pass ``rng`` as a ``numpy.random.Generator``, an int seed, or a
``torch.Generator`` (a numpy Generator is then seeded from one draw of it), so a result can
be reproduced exactly. Everything is vectorised over the batch (chunks of images).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

__all__ = ["as_numpy_rng", "cord_axis", "add_pseudo_anomalies"]


def as_numpy_rng(rng: Any = None, generator: Any = None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a ``torch.Generator``."""
    rng = generator if rng is None else rng
    if rng is None:
        raise ValueError("pass rng (numpy Generator, int seed or torch.Generator) for reproducible anomalies")
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    try:
        if isinstance(rng, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=rng).item())
            return np.random.default_rng(seed)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"rng must be a numpy Generator, an int or a torch.Generator, got {type(rng).__name__}")


def cord_axis(cord: np.ndarray, half_window: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre line of the cord per row: (centre col, slope dcol/drow, width across the axis).

    cord: (N, H, W) bool. Returns three (N, H) float arrays; rows without cord give width 0.
    The slope is a least-squares fit of the centre over rows ``r +- half_window``.
    """
    cord = np.asarray(cord, bool)
    N, H, W = cord.shape
    cnt = cord.sum(2).astype(np.float64)
    centre = (cord * np.arange(W)).sum(2) / np.maximum(cnt, 1)
    has = cnt > 0
    d = np.arange(-half_window, half_window + 1)
    rows = np.clip(np.arange(H)[:, None] + d[None, :], 0, H - 1)  # (H, 2k+1)
    c_n = centre[:, rows]  # (N, H, 2k+1)
    w_n = has[:, rows] & (np.abs(np.arange(H)[:, None] + d[None, :] - rows) == 0)
    dd = np.broadcast_to(d, c_n.shape).astype(np.float64)
    sw = w_n.sum(2)
    mean_d = (w_n * dd).sum(2) / np.maximum(sw, 1)
    mean_c = (w_n * c_n).sum(2) / np.maximum(sw, 1)
    cov = (w_n * (dd - mean_d[..., None]) * (c_n - mean_c[..., None])).sum(2)
    var = (w_n * (dd - mean_d[..., None]) ** 2).sum(2)
    slope = np.where(var > 0, cov / np.maximum(var, 1e-9), 0.0)
    width = cnt / np.sqrt(1 + slope**2)
    return centre, slope, width


def _stats(images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(mask.sum((1, 2)), 1)
    mu = (images * mask).sum((1, 2)) / n
    var = ((images - mu[:, None, None]) ** 2 * mask).sum((1, 2)) / n
    return mu, np.sqrt(var)


def add_pseudo_anomalies(images, cord, csf=None, rng: Any = None, generator: Any = None,
                         n_range: tuple[int, int] = (1, 3), width_range: tuple[float, float] = (0.7, 1.0),
                         length_range: tuple[float, float] = (1.0, 4.0), min_width: float = 2.0,
                         chunk: int = 64, return_params: bool = False):
    """Add 1-3 elliptical pseudo-anomalies inside the cord of every image (Appendix A.1).

    images: (N, H, W) float in [0, 1]; cord, csf: (N, H, W) masks (csf may be ``None`` or
    empty per image). numpy arrays or torch tensors (the result has the same type).
    Returns ``(anomalous, mask)``: float32 (N, H, W) and uint8 (N, H, W); with
    ``return_params`` also a list of per-anomaly dicts (image, row, col, width, length,
    cord_width, mu, sigma). Images whose cord is narrower than ``min_width`` pixels
    everywhere are returned unchanged with an empty mask.
    """
    is_torch = hasattr(images, "detach")
    to_np = (lambda a: a.detach().cpu().numpy()) if is_torch else np.asarray
    imgs = to_np(images).astype(np.float32)
    if imgs.ndim == 2:
        imgs = imgs[None]
    cordm = to_np(cord).reshape(imgs.shape) > 0
    csfm = np.zeros_like(cordm) if csf is None else (to_np(csf).reshape(imgs.shape) > 0)
    g = as_numpy_rng(rng, generator)
    lo_n, hi_n = n_range
    if not (1 <= lo_n <= hi_n):
        raise ValueError(f"n_range must satisfy 1 <= low <= high, got {n_range}")
    N, H, W = imgs.shape
    out = imgs.copy()
    mask = np.zeros((N, H, W), np.uint8)
    params: list[dict[str, float]] = []
    rr = np.arange(H, dtype=np.float32)[:, None]
    cc = np.arange(W, dtype=np.float32)[None, :]
    for s in range(0, N, chunk):
        sl = slice(s, min(s + chunk, N))
        im, cm, fm = imgs[sl], cordm[sl], csfm[sl]
        n = im.shape[0]
        centre, slope, width = cord_axis(cm)
        valid = width >= min_width
        # CSF stats (fallback: brightest quarter of a ring around the cord)
        no_csf = ~fm.any((1, 2))
        if no_csf.any():
            st = np.zeros((3, 3, 3), bool)
            st[1] = ndi.generate_binary_structure(2, 1)
            ring = ndi.binary_dilation(cm[no_csf], st, iterations=3) & ~ndi.binary_dilation(cm[no_csf], st)
            est = np.zeros_like(ring)
            for i, (a, r_) in enumerate(zip(im[no_csf], ring)):
                if r_.any():
                    est[i] = r_ & (a >= np.percentile(a[r_], 75))
            fm = fm.copy()
            fm[no_csf] = est
        mu_c, sd_c = _stats(im, cm)
        mu_f, sd_f = _stats(im, fm)
        K = hi_n
        k_n = g.integers(lo_n, hi_n + 1, size=n)
        active = (np.arange(K)[None, :] < k_n[:, None]) & valid.any(1)[:, None]  # (n, K)
        keys = g.random((n, K, H)) * valid[:, None, :]
        row = keys.argmax(2)  # (n, K) random valid row
        ii = np.arange(n)[:, None]
        c0 = centre[ii, row]
        s0 = slope[ii, row]
        w0 = width[ii, row]
        wf = g.uniform(*width_range, size=(n, K))
        lf = g.uniform(*length_range, size=(n, K))
        a = np.maximum(wf * w0 / 2, 0.5)  # half width (across)
        b = np.maximum(lf * w0 / 2, 0.5)  # half length (along)
        alpha = g.random((n, K))
        beta = g.random((n, K))
        mu = mu_c[:, None] + alpha * (mu_f - mu_c)[:, None]
        sd = sd_c[:, None] + beta * (sd_f - sd_c)[:, None]
        z = g.standard_normal((n, H, W)).astype(np.float32)
        norm = np.sqrt(1 + s0**2)
        m_any = np.zeros((n, H, W), bool)
        vals = np.zeros((n, H, W), np.float32)
        for k in range(K):  # K <= 3: vectorised over images and pixels
            dr = rr[None] - row[:, k, None, None].astype(np.float32)
            dc = cc[None] - c0[:, k, None, None].astype(np.float32)
            along = (dr + s0[:, k, None, None] * dc) / norm[:, k, None, None]
            across = (-s0[:, k, None, None] * dr + dc) / norm[:, k, None, None]
            inside = (along / b[:, k, None, None]) ** 2 + (across / a[:, k, None, None]) ** 2 <= 1.0
            inside &= cm & active[:, k, None, None]
            empty = active[:, k] & ~inside.any((1, 2))
            for i in np.flatnonzero(empty):  # tiny ellipse between pixels: take the centre pixel
                r_i, c_i = int(row[i, k]), int(np.clip(round(c0[i, k]), 0, W - 1))
                if cm[i, r_i, c_i]:
                    inside[i, r_i, c_i] = True
                else:
                    active[i, k] = False
            v = (mu[:, k, None, None] + sd[:, k, None, None] * z).astype(np.float32)
            vals = np.where(inside, v, vals)
            m_any |= inside
            if return_params:
                for i in np.flatnonzero(active[:, k]):
                    params.append({"image": int(s + i), "row": int(row[i, k]), "col": float(c0[i, k]),
                                   "width": float(2 * a[i, k]), "length": float(2 * b[i, k]),
                                   "cord_width": float(w0[i, k]), "mu": float(mu[i, k]), "sigma": float(sd[i, k]),
                                   "cord_mean": float(mu_c[i]), "csf_mean": float(mu_f[i]),
                                   "n_pixels": int(inside[i].sum())})
        out[sl] = np.where(m_any, np.clip(vals, 0.0, 1.0), im)
        mask[sl] = m_any
    if is_torch:
        res = (torch.from_numpy(out), torch.from_numpy(mask))
    else:
        res = (out, mask)
    return (*res, params) if return_params else res
