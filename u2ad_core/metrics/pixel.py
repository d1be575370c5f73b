"""Pixel and region metrics of anomaly maps against lesion masks (the pseudo-anomaly set).

Pixel AUROC / AUPRC / best Dice (:func:`pixel_metrics`), AUPRO (:func:`aupro`,
:func:`pro_curve`), Dice at a given threshold (:func:`dice_at_threshold`), at a threshold chosen
on the training folds or at a fixed false-positive rate (:func:`threshold_at_fpr`,
:func:`dice_cv`, whose patient folds are :func:`u2ad_core.metrics.detection.stratified_folds`).

Every function takes ``(N, H, W)`` maps, lesion masks and ROIs and pools the ROI pixels of all
slices; a pixel is flagged when its map value is ``>= threshold``; a NaN map value counts as 0;
lesion pixels outside the ROI are ignored.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from u2ad_core.metrics.detection import _ratio, stratified_folds

__all__ = [
    "pixel_metrics",
    "best_dice_threshold",
    "dice_at_threshold",
    "threshold_at_fpr",
    "dice_cv",
    "pro_curve",
    "aupro",
]


def pixel_metrics(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray) -> dict[str, float]:
    """Pixel AUROC, AUPRC and best Dice over thresholds, pooled over all ROI pixels.

    maps: ``(N, H, W)`` anomaly maps; lesion: ``(N, H, W)`` ground-truth mask; roi: ``(N, H, W)``
    (only ROI pixels are scored). Best Dice = max over thresholds of 2PR / (P + R) from
    :func:`sklearn.metrics.precision_recall_curve` (the Dice of the pooled pixel set).
    """
    maps, lesion, roi = _pixel_arrays(maps, lesion, roi)
    y = lesion[roi].astype(int)
    s = maps[roi]
    out = {"n_pixels": int(y.size), "n_lesion_pixels": int(y.sum()),
           "auroc": float("nan"), "auprc": float("nan"), "best_dice": float("nan"),
           "best_dice_threshold": float("nan")}
    if y.any() and (y == 0).any():
        out["auroc"] = float(roc_auc_score(y, s))
        out["auprc"] = float(average_precision_score(y, s))
        out["best_dice"], out["best_dice_threshold"] = _best_dice(y, s)
    return out


def _pixel_arrays(maps, lesion, roi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps float64 with NaN -> 0, lesion bool inside the ROI, roi bool), all (N, H, W)."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0)
    lesion = np.asarray(lesion) > 0
    roi = np.asarray(roi) > 0
    if not (maps.shape == lesion.shape == roi.shape):
        raise ValueError(f"maps {maps.shape}, lesion {lesion.shape}, roi {roi.shape} differ")
    return maps, lesion & roi, roi


def _best_dice(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(best Dice, its threshold) over the pooled pixels ``y`` (0/1) with scores ``s`` (ties:
    the lowest threshold); requires a lesion pixel."""
    p, r, t = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)[:-1]
    i = int(np.argmax(d))
    return float(d[i]), float(t[i])


def best_dice_threshold(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray) -> float:
    """The threshold with the best Dice over the pooled ROI pixels (``pixel_metrics``'
    ``best_dice_threshold``); NaN without a lesion pixel. maps, lesion, roi: ``(N, H, W)``."""
    maps, lesion, roi = _pixel_arrays(maps, lesion, roi)
    y = lesion[roi]
    return _best_dice(y.astype(int), maps[roi])[1] if y.any() else float("nan")


def dice_at_threshold(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray, threshold: float) -> float:
    """Dice 2TP / (2TP + FP + FN) of the ROI pixels flagged by ``map >= threshold``, pooled
    over all slices. maps, lesion, roi: ``(N, H, W)``. NaN when there is no lesion pixel and
    nothing is flagged (0 / 0); a NaN threshold gives NaN."""
    maps, lesion, roi = _pixel_arrays(maps, lesion, roi)
    if np.isnan(threshold):
        return float("nan")
    flag = roi & (maps >= threshold)
    tp = int((flag & lesion).sum())
    return _ratio(2 * tp, int(flag.sum()) + int(lesion.sum()))


def threshold_at_fpr(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray, fpr: float) -> float:
    """The lowest threshold whose false-positive rate is at most ``fpr``.

    False-positive rate = flagged share of the ROI pixels outside the lesions. The threshold
    is the lowest ROI map value ``t`` with ``#(normal pixels >= t) <= floor(fpr * n_normal)``
    (between observed values nothing changes), so it flags as many lesion pixels as that
    rate allows; ``+inf`` (flag nothing) when even the highest value exceeds it. maps,
    lesion, roi: ``(N, H, W)``; fpr in [0, 1]. Raises ``ValueError`` when the ROI holds no
    pixel outside the lesions (the rate is undefined).
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    maps, lesion, roi = _pixel_arrays(maps, lesion, roi)
    normal = np.sort(maps[roi & ~lesion])
    if normal.size == 0:
        raise ValueError("threshold_at_fpr: no ROI pixel outside the lesions, so the false-positive rate is undefined")
    allowed = math.floor(fpr * normal.size + 1e-9)
    cand = np.unique(maps[roi])  # ascending
    n_flagged = normal.size - np.searchsorted(normal, cand, side="left")  # normals >= each candidate, decreasing
    ok = np.flatnonzero(n_flagged <= allowed)
    return float(cand[ok[0]]) if ok.size else float("inf")


def dice_cv(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray, subject: np.ndarray, n_folds: int = 5,
            n_repeats: int = 1, seed: int = 0, fpr: float = 0.05) -> pd.DataFrame:
    """Dice on held-out patients at thresholds chosen on the other folds.

    maps, lesion, roi: ``(N, H, W)``; subject: ``(N,)`` the patient of each slice. Patients
    are split by :func:`stratified_folds` (label: the patient has a lesion pixel in the ROI;
    repeat r uses seed ``seed + r``, as :func:`cross_validate`). For each test fold, on the
    pooled pixels of the training folds: ``dice_threshold`` = :func:`best_dice_threshold`
    and ``fpr_threshold`` = :func:`threshold_at_fpr` at ``fpr``; on the test fold: ``dice``
    (at ``dice_threshold``), ``dice_at_fpr`` and ``test_fpr`` (at ``fpr_threshold``). One row
    per (repeat, fold), with ``n_test`` (slices) and ``n_test_lesion_pixels``.
    """
    maps, lesion, roi = _pixel_arrays(maps, lesion, roi)
    subject = np.asarray(subject).astype(str)
    if subject.shape != maps.shape[:1]:
        raise ValueError(f"subject {subject.shape} must give one patient per slice of maps {maps.shape}")
    subjects, inverse = np.unique(subject, return_inverse=True)
    labels = np.zeros(len(subjects), int)
    np.maximum.at(labels, inverse, lesion.reshape(len(maps), -1).any(1).astype(int))
    rows = []
    for r in range(int(n_repeats)):
        for f, te in enumerate(stratified_folds(labels, n_folds, seed + r)):
            test = np.isin(inverse, te)
            tr = ~test
            thr = best_dice_threshold(maps[tr], lesion[tr], roi[tr])
            fthr = threshold_at_fpr(maps[tr], lesion[tr], roi[tr], fpr)
            normal = roi[test] & ~lesion[test]
            rows.append({"repeat": r, "fold": f, "n_test": int(test.sum()),
                         "n_test_lesion_pixels": int(lesion[test].sum()),
                         "dice_threshold": thr, "dice": dice_at_threshold(maps[test], lesion[test], roi[test], thr),
                         "fpr_threshold": fthr,
                         "dice_at_fpr": dice_at_threshold(maps[test], lesion[test], roi[test], fthr),
                         "test_fpr": _ratio(int((normal & (maps[test] >= fthr)).sum()), int(normal.sum()))})
    return pd.DataFrame(rows)


def pro_curve(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region overlap (PRO) against false-positive rate, at every distinct map value.

    maps, lesion, roi: ``(N, H, W)``. Regions are the connected components of the lesion
    mask in the ROI, 8-connected within a slice (slices never join). At threshold ``t``
    (flag ``map >= t``) the PRO is the mean over regions of the flagged share of each region,
    and the false-positive rate the flagged share of the ROI pixels outside the lesions
    (Bergmann et al. 2021, MVTec AD). Returns ``(fpr, pro, thresholds)``, each ``(T + 1,)``,
    from ``(0, 0, +inf)`` to ``(1, 1, lowest value)``, fpr and pro non-decreasing. Raises
    ``ValueError`` without a lesion region or without a pixel outside the lesions.
    """
    curve = _pro_points(*_pixel_arrays(maps, lesion, roi))
    if isinstance(curve, str):
        raise ValueError(curve)
    return curve


def _pro_points(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray):
    """:func:`pro_curve` on checked arrays; a message string when it is undefined."""
    if lesion.ndim != 3:
        raise ValueError(f"the PRO curve needs (N, H, W) maps, lesion and roi; got shape {lesion.shape}")
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = True
    regions, n_regions = ndimage.label(lesion, structure=in_plane)
    region = regions[roi]  # (P,) 0 outside the lesions, k for region k
    n_normal = int((region == 0).sum())
    if n_regions == 0 or n_normal == 0:
        return (f"the PRO curve needs a lesion region and a pixel outside the lesions in the ROI; got "
                f"{n_regions} region(s) and {n_normal} other pixel(s)")
    size = np.bincount(region, minlength=n_regions + 1)
    share = np.where(region > 0, 1.0 / (size[region] * n_regions), 0.0)  # each region sums to 1 / n_regions
    s = maps[roi]
    order = np.argsort(-s, kind="stable")
    s = s[order]
    last = np.r_[s[1:] != s[:-1], True]  # last pixel of each run of equal values
    fpr = np.cumsum(region[order] == 0)[last] / n_normal
    pro = np.minimum(np.cumsum(share[order])[last], 1.0)
    return np.r_[0.0, fpr], np.r_[0.0, pro], np.r_[np.inf, s[last]]


def aupro(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve (:func:`pro_curve`) for false-positive rates in
    ``[0, fpr_limit]``, divided by ``fpr_limit`` (MVTec AD's AUPRO; 1 for a perfect map).

    Exact: every distinct map value is a threshold, the curve is linear between them (and
    interpolated at ``fpr_limit``), integrated by the trapezoidal rule. maps, lesion, roi:
    ``(N, H, W)``. NaN without a lesion region or without a pixel outside the lesions.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    curve = _pro_points(*_pixel_arrays(maps, lesion, roi))
    if isinstance(curve, str):
        return float("nan")
    fpr, pro, _ = curve
    i = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points [:i] have fpr <= fpr_limit
    x, y = fpr[:i], pro[:i]
    if i < len(fpr):  # the curve crosses fpr_limit between points i - 1 and i
        w = (fpr_limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, pro[i - 1] + w * (pro[i] - pro[i - 1])]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / fpr_limit)

