"""Signal-analysis baselines (paper Table 2, Appendix B.3): Z-scoring, SLIC, DBSCAN.

No training: each map comes from the intensities of the cord pixels of one image.
All take ``images`` ``(N, H, W)`` float in [0, 1] and ``cord`` ``(N, H, W)`` bool and return
maps ``(N, H, W)`` float32, zero outside the cord and zero where a pixel is not flagged.

- **Z-scoring**: ``z = (x - mean_cord) / std_cord`` per image; map = ``z`` where
  ``z > z_threshold`` (paper: 0.1).
- **SLIC**: :func:`skimage.segmentation.slic` splits the cord into about ``slic_segments``
  superpixels (paper: M = 100, compactness 10); each superpixel's mean intensity is
  z-scored against the other superpixels' means of the same image; map = that ``z`` over
  the superpixel where ``z > slic_z_threshold`` (paper: 2).
- **DBSCAN**: :class:`sklearn.cluster.DBSCAN` on the cord intensities (one feature;
  paper: eps 0.01, min_samples 100); map = for each noise point, its distance to the
  nearest clustered intensity (the paper's "distance to the nearest cluster"), 0 for
  clustered points.

``one_sided=True`` (this project's default; the paper does not say) counts only pixels
brighter than normal -- a T2 hyperintensity is bright -- and ``False`` takes ``|z|`` and
noise points on both sides.

``sided`` (:attr:`u2ad_core.core.config.ScoreConfig.sided`, through
:func:`~u2ad_core.baselines.common.anomaly_maps`) is the book-wide switch and wins over
``one_sided`` when set. It is applied to the signed score itself, before the threshold and the
superpixel / noise-point selection (:func:`u2ad_core.method.scoring.apply_sided`):
``"bright"`` -> ``max(z, 0)`` (DBSCAN: only noise points above the median clustered intensity),
``"abs"`` -> ``|z|`` (DBSCAN: noise points on both sides). With a threshold ``>= 0`` (the
paper's 0.1 and 2) ``"bright"`` equals ``one_sided=True`` and ``"abs"`` ``one_sided=False``
bit for bit; ``None`` is the ``one_sided`` rule, unchanged (``one_sided=True`` keeps the raw
``z``, so a negative threshold lets dark pixels through there, not with ``"bright"``).
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

from u2ad_core.core.config import SignalConfig
from u2ad_core.method.scoring import apply_sided

from .common import Method

__all__ = ["zscore_maps", "slic_maps", "dbscan_maps", "ZSCORE", "SLIC", "DBSCAN"]


def _check(images: np.ndarray, cord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, dtype=np.float64)
    cord = np.asarray(cord) > 0
    if images.ndim == 2:
        images, cord = images[None], cord[None]
    if images.ndim != 3 or images.shape != cord.shape:
        raise ValueError(f"images {images.shape} and cord {cord.shape} must both be (N, H, W)")
    return images, cord


def _side(z: np.ndarray, one_sided: bool, sided: str | None) -> np.ndarray:
    """``sided`` when set (``apply_sided``), else the ``one_sided`` rule (raw ``z`` or ``|z|``)."""
    if sided is None:
        return z if one_sided else np.abs(z)
    return apply_sided(z, sided)


def zscore_maps(images: np.ndarray, cord: np.ndarray, threshold: float = 0.1, one_sided: bool = True,
                sided: str | None = None) -> np.ndarray:
    """Per-image Z-score of every cord pixel, kept where it exceeds ``threshold`` (vectorised).

    ``sided`` (``"abs"`` / ``"bright"``) overrides ``one_sided`` (see the module docstring)."""
    x, m = _check(images, cord)
    cnt = m.sum((1, 2), keepdims=True)
    mean = np.where(m, x, 0).sum((1, 2), keepdims=True) / np.maximum(cnt, 1)
    var = np.where(m, (x - mean) ** 2, 0).sum((1, 2), keepdims=True) / np.maximum(cnt - 1, 1)
    z = (x - mean) / np.maximum(np.sqrt(var), 1e-6)
    score = _side(z, one_sided, sided)
    return np.where(m & (score > threshold), score, 0.0).astype(np.float32)


def slic_maps(images: np.ndarray, cord: np.ndarray, n_segments: int = 100, compactness: float = 10.0,
              z_threshold: float = 2.0, one_sided: bool = True, sided: str | None = None) -> np.ndarray:
    """SLIC superpixels inside the cord, z-scored by their mean intensity (one image at a time).

    ``sided`` overrides ``one_sided`` on the superpixel z-scores, before the threshold."""
    x, m = _check(images, cord)
    out = np.zeros(x.shape, dtype=np.float32)
    for i in range(len(x)):
        if m[i].sum() < 2:
            continue
        labels = slic(x[i], n_segments=int(n_segments), compactness=float(compactness), mask=m[i],
                      channel_axis=None, start_label=1)
        lab = labels[m[i]]
        n_lab = int(lab.max())
        cnt = np.bincount(lab, minlength=n_lab + 1)[1:]
        present = cnt > 0
        if present.sum() < 2:
            continue
        means = np.bincount(lab, weights=x[i][m[i]], minlength=n_lab + 1)[1:][present]
        z = (means - means.mean()) / max(means.std(ddof=1), 1e-6)
        score = _side(z, one_sided, sided)
        per_label = np.zeros(n_lab + 1)
        per_label[1:][present] = np.where(score > z_threshold, score, 0.0)
        out[i][m[i]] = per_label[lab]
    return out


def dbscan_maps(images: np.ndarray, cord: np.ndarray, eps: float = 0.01, min_samples: int = 100,
                one_sided: bool = True, sided: str | None = None) -> np.ndarray:
    """DBSCAN on each image's cord intensities; noise points scored by their distance to the
    nearest clustered intensity (0 when the image has no cluster).

    The sign of a noise point is that of ``v - median(clustered)``; ``sided="bright"`` keeps the
    positive ones (= ``one_sided=True``), ``"abs"`` all (= ``one_sided=False``)."""
    from sklearn.cluster import DBSCAN  # here, not at the top: it adds 1.3 s to importing u2ad_core.baselines

    x, m = _check(images, cord)
    out = np.zeros(x.shape, dtype=np.float32)
    for i in range(len(x)):
        v = x[i][m[i]]
        if v.size == 0:
            continue
        labels = DBSCAN(eps=float(eps), min_samples=int(min_samples)).fit_predict(v[:, None])
        clustered = np.sort(v[labels >= 0])
        noise = labels < 0
        if clustered.size == 0 or not noise.any():
            continue
        pos = np.searchsorted(clustered, v[noise])
        lo = clustered[np.clip(pos - 1, 0, clustered.size - 1)]
        hi = clustered[np.clip(pos, 0, clustered.size - 1)]
        dist = np.minimum(np.abs(v[noise] - lo), np.abs(v[noise] - hi))
        if sided is not None:  # signed distance: + above the median clustered intensity
            dist = apply_sided(np.where(v[noise] > np.median(clustered), dist, -dist), sided)
        elif one_sided:
            dist = np.where(v[noise] > np.median(clustered), dist, 0.0)
        score = np.zeros(v.size)
        score[noise] = dist
        out[i][m[i]] = score
    return out


ZSCORE = Method(
    name="zscore", label="Z-scoring", kind="signal", reference="paper Appendix B.3",
    sub_config=lambda b: b.signal,
    maps=lambda images, cord, c, sided=None: zscore_maps(images, cord, c.z_threshold, c.one_sided, sided),
    takes_sided=True,
)
SLIC = Method(
    name="slic", label="SLIC", kind="signal", reference="Achanta et al. 2012; paper Appendix B.3",
    sub_config=lambda b: b.signal,
    maps=lambda images, cord, c, sided=None: slic_maps(images, cord, c.slic_segments, c.slic_compactness,
                                                       c.slic_z_threshold, c.one_sided, sided),
    takes_sided=True,
)
DBSCAN = Method(
    name="dbscan", label="DBSCAN", kind="signal", reference="Ester et al. 1996; paper Appendix B.3",
    sub_config=lambda b: b.signal,
    maps=lambda images, cord, c, sided=None: dbscan_maps(images, cord, c.dbscan_eps, c.dbscan_min_samples,
                                                         c.one_sided, sided),
    takes_sided=True,
)

_ = SignalConfig  # the settings these maps read (documented in config.SignalConfig)
