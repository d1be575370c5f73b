"""Anomaly map, post-processing, anomaly curve along the cord, segment and patient scores.

Paper section 3.5 and method.md section 5 (this part is absent from the authors' code).
Everything below works on stacks of N slices at once (numpy arrays ``(N, H, W)``, H = rows
= superior-inferior, W = columns = anterior-posterior):
1. **ROI** -- the cord mask, optionally eroded ``erode_cord`` times (:func:`cord_roi`). The
   lesion ground truth is never used to build it.
2. **Anomaly map** -- ``|x - mean of K MC reconstructions|`` inside the ROI, 0 outside
   (:func:`anomaly_map`); ``ScoreConfig.sided = "bright"`` keeps only the positive residual
   ``max(x - mean, 0)`` (a T2 hyperintensity is bright), ``"abs"`` / ``None`` the paper's
   ``|x - mean|``. The sign is applied to the residual itself, before step 3
   (:func:`apply_sided`; the same switch drives every baseline's map).
3. **Post-processing** (:func:`postprocess`), each step switchable for the ablation:
   drop the bottom ``drop_bottom`` fraction of the map's values *within the ROI* of each
   slice (values ``<=`` that quantile become 0), label connected components of what remains
   (8-connectivity by default, never across slices), score each component by the sum of its
   values and keep the ``top_components`` best per slice.
4. **Anomaly curve** (:func:`anomaly_curve`): the mean of the map across the cord width at
   each longitudinal position. ``curve="rows"`` is the paper's reading (position = image row,
   mean over the ROI pixels of that row); ``curve="centreline"`` (default) follows a curved
   cord: the per-row cord centre is smoothed into a centreline and each ROI pixel is assigned
   to its *nearest* centreline point, so the mean is taken across the cord's local width
   rather than along an oblique image row. In both cases the curve is indexed by image row
   (the row of the centreline point): ``curves[n, j]`` is NaN where there is no cord.
5. **Scores**: segment score = max of the curve over the curve points whose segment is
   ``C2-3`` ... ``C7-T1`` (a point's segment is the most frequent non-zero value of the
   segment map among the ROI pixels assigned to it); NaN when the segment is absent from the
   slice. Patient score = max of the curve (NaN for a slice without cord) over
   ``patient_span``: ``"cord"`` is the paper's whole curve; ``"segments"`` (default) only the
   points inside C2-3 ... C7-T1, because where the crop cuts the cord (top and bottom rows)
   the reconstruction lacks context and its error would dominate every patient's score; a
   slice without any segment falls back to the whole curve.

:func:`score_dataset` runs one batched Monte-Carlo inference
(:func:`u2ad_core.method.uncertainty.mc_uncertainty`) over all slices of a
:class:`~u2ad_core.data.datasets.SliceData` and returns a :class:`ScoreResult` with the maps,
the curves and a pandas table (one row per slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from u2ad_core.core.config import SIDES, ScoreConfig, to_dict
from u2ad_core.core.labels import SEGMENTS
from u2ad_core.core.runtime import make_generator
from u2ad_core.method.uncertainty import mc_uncertainty

__all__ = [
    "ScoreResult",
    "cord_roi",
    "apply_sided",
    "anomaly_map",
    "postprocess",
    "centreline",
    "curve_assignment",
    "anomaly_curve",
    "point_segments",
    "segment_scores",
    "patient_scores",
    "top_segments",
    "score_maps",
    "score_dataset",
    "scores_table",
    "SEGMENT_COLUMNS",
]

SEGMENT_COLUMNS: tuple[str, ...] = SEGMENTS
"""Columns of the scores table that hold segment scores (``C2-3`` ... ``C7-T1``)."""


def _as_stack(a: np.ndarray, name: str, ndim: int = 3) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == ndim - 1:
        a = a[None]
    if a.ndim != ndim:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got {a.shape}")
    return a


def _structure_2d(connectivity: int) -> np.ndarray:
    """3D structuring element that connects pixels inside one slice only (axis 0 = slices)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    return s


# --------------------------------------------------------------------------------------
# ROI and map
# --------------------------------------------------------------------------------------
def cord_roi(cord: np.ndarray, erode: int = 0) -> np.ndarray:
    """Scoring ROI: the cord mask ``(N, H, W)`` eroded ``erode`` times (4-connected), bool.

    A slice whose cord would vanish under erosion keeps its un-eroded mask (scores from a
    thin cord are better than none); pass ``erode=0`` to use the mask as is.
    """
    cord = _as_stack(cord, "cord") > 0
    if erode <= 0:
        return cord
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(cord, structure=s, iterations=int(erode))
    empty = ~eroded.reshape(len(eroded), -1).any(1)
    eroded[empty] = cord[empty]
    return eroded


def apply_sided(residual: np.ndarray, sided: str | None, default: str = "abs") -> np.ndarray:
    """The sign rule of :attr:`~u2ad_core.core.config.ScoreConfig.sided` on a signed residual.

    residual: any shape, ``x - x_hat`` (positive = brighter than expected). ``sided``:
    ``"abs"`` -> ``|residual|`` (paper 3.5); ``"bright"`` -> ``max(residual, 0)``
    (hyperintensities only); ``None`` -> the caller's ``default`` rule (``"abs"`` or
    ``"bright"``). Same shape and dtype. Apply it to the raw residual, before any filtering.
    """
    if sided not in SIDES:
        raise ValueError(f"sided must be one of {SIDES}, got {sided!r}")
    rule = default if sided is None else sided
    if rule == "abs":
        return np.abs(residual)
    if rule == "bright":
        return np.maximum(residual, 0)
    raise ValueError(f"default sidedness must be 'abs' or 'bright', got {default!r}")


def anomaly_map(images: np.ndarray, recon_mean: np.ndarray, roi: np.ndarray,
                sided: str | None = None) -> np.ndarray:
    """AnoMap = ``|x - mean of K reconstructions|`` inside ``roi``, 0 outside.

    images, recon_mean: ``(N, H, W)`` float; roi: ``(N, H, W)`` bool -> ``(N, H, W)`` float32.
    ``sided`` (:attr:`~u2ad_core.core.config.ScoreConfig.sided`): ``None`` or ``"abs"`` =
    ``|x - mean|`` (paper), ``"bright"`` = ``max(x - mean, 0)``; applied to the raw residual,
    before any post-processing (:func:`apply_sided`).
    """
    images = _as_stack(images, "images").astype(np.float32, copy=False)
    recon_mean = _as_stack(recon_mean, "recon_mean").astype(np.float32, copy=False)
    roi = _as_stack(roi, "roi") > 0
    if not (images.shape == recon_mean.shape == roi.shape):
        raise ValueError(
            f"images {images.shape}, recon_mean {recon_mean.shape} and roi {roi.shape} differ"
        )
    return np.where(roi, apply_sided(images - recon_mean, sided), 0.0).astype(np.float32)


def postprocess(
    maps: np.ndarray,
    roi: np.ndarray,
    drop_bottom: float = 0.2,
    top_components: int = 3,
    connectivity: int = 8,
) -> np.ndarray:
    """Paper 3.5.1 post-processing of anomaly maps, all slices at once.

    maps: ``(N, H, W)`` float (0 outside the ROI); roi: ``(N, H, W)`` bool.

    - ``drop_bottom`` in ``[0, 1)``: per slice, the ``drop_bottom`` quantile ``q`` of the map
      values inside the ROI; values ``<= q`` are set to 0 (``0`` switches the step off).
    - ``top_components``: label connected components of the non-zero pixels (per slice,
      ``connectivity`` 8 or 4), score each by its sum and keep the ``top_components``
      highest (ties broken by label order); ``0`` switches the step off.

    Returns the post-processed maps ``(N, H, W)`` float32 (a new array).
    """
    maps = _as_stack(maps, "maps").astype(np.float32)
    roi = _as_stack(roi, "roi") > 0
    if maps.shape != roi.shape:
        raise ValueError(f"maps {maps.shape} and roi {roi.shape} differ")
    if not 0.0 <= drop_bottom < 1.0:
        raise ValueError(f"drop_bottom must be in [0, 1), got {drop_bottom!r}")
    out = np.where(roi, maps, 0.0).astype(np.float32)
    n = len(out)
    if drop_bottom > 0 and n:
        vals = np.where(roi, out, np.nan).reshape(n, -1)
        has = roi.reshape(n, -1).any(1)
        q = np.full(n, np.inf, dtype=np.float32)
        if has.any():
            q[has] = np.nanquantile(vals[has], drop_bottom, axis=1)
        out[out <= q[:, None, None]] = 0.0
    if top_components and top_components > 0 and n:
        labels, n_lab = ndimage.label(out > 0, structure=_structure_2d(connectivity))
        if n_lab:
            flat = labels.ravel()
            sums = np.bincount(flat, weights=out.ravel(), minlength=n_lab + 1)[1:]
            # slice of each label (labels never cross slices)
            lab_slice = np.zeros(n_lab, dtype=np.int64)
            nz = np.flatnonzero(flat)
            lab_slice[flat[nz] - 1] = nz // (out.shape[1] * out.shape[2])
            order = np.lexsort((np.arange(n_lab), -sums, lab_slice))  # by slice, then -sum
            sorted_slice = lab_slice[order]
            first = np.searchsorted(sorted_slice, sorted_slice, side="left")
            rank = np.empty(n_lab, dtype=np.int64)
            rank[order] = np.arange(n_lab) - first
            keep = np.concatenate([[False], rank < int(top_components)])
            out[~keep[labels]] = 0.0
    return out


# --------------------------------------------------------------------------------------
# Curve along the cord
# --------------------------------------------------------------------------------------
def centreline(roi: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Smoothed cord centreline: column of the cord centre for each row, ``(N, H)`` float.

    Per row, the mean column of the ROI pixels; rows between the first and last cord row
    that have no cord pixel are linearly interpolated; then a Gaussian filter (``sigma``
    rows, ``mode="nearest"``) smooths it. NaN outside the cord's longitudinal extent.
    """
    roi = _as_stack(roi, "roi") > 0
    n, h, w = roi.shape
    count = roi.sum(2)
    colsum = (roi * np.arange(w)[None, None, :]).sum(2)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = colsum / count
    out = np.full((n, h), np.nan)
    rows = np.arange(h)
    for i in range(n):
        valid = count[i] > 0
        if not valid.any():
            continue
        r = rows[valid]
        span = np.arange(r[0], r[-1] + 1)
        c = np.interp(span, r, centre[i, valid])
        if sigma and sigma > 0 and len(c) > 1:
            c = ndimage.gaussian_filter1d(c, float(sigma), mode="nearest")
        out[i, span] = c
    return out


def curve_assignment(
    roi: np.ndarray, method: str = "centreline", sigma: float = 4.0
) -> np.ndarray:
    """Curve point of every ROI pixel: ``(N, H, W)`` int64, -1 outside the ROI.

    ``"rows"``: the pixel's own row (paper). ``"centreline"``: the row of the nearest point
    (Euclidean distance) of the smoothed centreline (:func:`centreline`), i.e. each pixel is
    averaged with the pixels across the cord's local width.
    """
    roi = _as_stack(roi, "roi") > 0
    n, h, w = roi.shape
    rows = np.broadcast_to(np.arange(h)[None, :, None], roi.shape)
    if method == "rows":
        return np.where(roi, rows, -1).astype(np.int64)
    if method != "centreline":
        raise ValueError(f"curve method must be 'centreline' or 'rows', got {method!r}")
    line = centreline(roi, sigma)
    out = np.full(roi.shape, -1, dtype=np.int64)
    for i in range(n):
        ys, xs = np.nonzero(roi[i])
        if not len(ys):
            continue
        pr = np.flatnonzero(np.isfinite(line[i]))
        pc = line[i, pr]
        # (P, R) squared distances; P ~ cord pixels, R ~ cord rows (a few hundred)
        d2 = (ys[:, None] - pr[None, :]) ** 2 + (xs[:, None] - pc[None, :]) ** 2
        out[i, ys, xs] = pr[np.argmin(d2, axis=1)]
    return out


def anomaly_curve(maps: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """AnoCurve: mean of ``maps`` over the ROI pixels assigned to each curve point.

    maps: ``(N, H, W)``; assign: ``(N, H, W)`` int from :func:`curve_assignment`.
    Returns ``(N, H)`` float64, NaN at points with no pixel. Zeros left by the
    post-processing count in the mean (the mean is across the whole cord width).
    """
    maps = _as_stack(maps, "maps")
    assign = _as_stack(assign, "assign")
    n, h, _ = maps.shape
    inside = assign >= 0
    idx = (np.arange(n)[:, None, None] * h + assign)[inside]
    s = np.bincount(idx, weights=maps[inside].astype(np.float64), minlength=n * h)
    c = np.bincount(idx, minlength=n * h)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = s / c
    curve[c == 0] = np.nan
    return curve.reshape(n, h)


def point_segments(segments: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """Segment value (0 none, 1..6) of each curve point, ``(N, H)`` int.

    The most frequent non-zero segment value among the ROI pixels assigned to the point
    (ties: the lower value); 0 when none of them has a segment.
    """
    segments = _as_stack(segments, "segments").astype(np.int64)
    assign = _as_stack(assign, "assign")
    n, h, _ = segments.shape
    nseg = len(SEGMENTS) + 1
    ok = (assign >= 0) & (segments > 0) & (segments < nseg)
    idx = ((np.arange(n)[:, None, None] * h + assign) * nseg + segments)[ok]
    counts = np.bincount(idx, minlength=n * h * nseg).reshape(n, h, nseg)
    counts[..., 0] = 0
    best = counts.argmax(2)
    best[counts.max(2) == 0] = 0
    return best


def segment_scores(curves: np.ndarray, point_seg: np.ndarray) -> np.ndarray:
    """Segment score = max of the curve over each segment's points: ``(N, 6)``, NaN if absent."""
    curves = np.asarray(curves, dtype=np.float64)
    values = np.arange(1, len(SEGMENTS) + 1)
    match = (point_seg[:, :, None] == values[None, None, :]) & np.isfinite(curves)[:, :, None]
    filled = np.where(match, np.nan_to_num(curves)[:, :, None], -np.inf)
    out = filled.max(1)
    out[~match.any(1)] = np.nan
    return out


def patient_scores(curves: np.ndarray, point_seg: np.ndarray | None = None) -> np.ndarray:
    """Patient score = max of the curve, ``(N,)``; NaN for a slice without cord.

    With ``point_seg`` ``(N, H)``, only points inside a segment (value > 0) count, for the
    slices that have any segment point (others use the whole curve).
    """
    curves = np.asarray(curves, dtype=np.float64)
    if point_seg is not None:
        inseg = np.asarray(point_seg) > 0
        use = inseg & np.isfinite(curves)
        has = use.any(1)
        curves = np.where(has[:, None] & ~inseg, np.nan, curves)
    finite = np.isfinite(curves)
    out = np.where(finite, curves, -np.inf).max(1) if curves.shape[1] else np.full(len(curves), -np.inf)
    out[~finite.any(1)] = np.nan
    return out


def top_segments(seg_scores: np.ndarray) -> np.ndarray:
    """Name of the top-scoring segment per row of ``(N, 6)`` scores ('' when all are NaN)."""
    seg_scores = np.asarray(seg_scores, dtype=np.float64)
    has = np.isfinite(seg_scores).any(1)
    idx = np.where(np.isfinite(seg_scores), seg_scores, -np.inf).argmax(1)
    names = np.array(SEGMENTS, dtype=object)[idx]
    names[~has] = ""
    return names.astype(str)


# --------------------------------------------------------------------------------------
# Whole pipeline
# --------------------------------------------------------------------------------------
@dataclass
class ScoreResult:
    """Everything :func:`score_maps` / :func:`score_dataset` computes for N slices.

    maps ``(N, H, W)`` post-processed anomaly maps; raw_maps ``(N, H, W)`` the map before
    post-processing (use it for threshold-free pixel metrics); roi ``(N, H, W)`` bool;
    curves ``(N, H)`` (NaN off the cord); point_segments ``(N, H)`` int (segment of each
    curve point); centreline ``(N, H)`` column of the cord centre per row (NaN off the cord);
    recon ``(N, H, W)`` mean of the K reconstructions; eu ``(N, H, W)`` MC variance
    (or None); table: one row per slice (see :func:`scores_table`).
    """

    maps: np.ndarray
    raw_maps: np.ndarray
    roi: np.ndarray
    curves: np.ndarray
    point_segments: np.ndarray
    centreline: np.ndarray
    recon: np.ndarray
    eu: np.ndarray | None
    table: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def segment_scores(self) -> np.ndarray:
        """``(N, 6)`` segment scores (columns ``C2-3`` ... ``C7-T1`` of the table)."""
        return self.table[list(SEGMENT_COLUMNS)].to_numpy(dtype=np.float64)


def scores_table(
    curves: np.ndarray,
    point_seg: np.ndarray,
    subject=None,
    slice_index=None,
    patient_label=None,
    lesion_segments=None,
    slice_offset=None,
    patient_span: str = "segments",
) -> pd.DataFrame:
    """One row per slice: subject, slice_index, patient_label, lesion_segments,
    patient_score, top_segment, then one column per segment (``C2-3`` ... ``C7-T1``).
    ``patient_span``: ``"segments"`` or ``"cord"`` (see :func:`patient_scores`)."""
    if patient_span not in ("segments", "cord"):
        raise ValueError(f"patient_span must be 'segments' or 'cord', got {patient_span!r}")
    n = len(curves)
    seg = segment_scores(curves, point_seg)
    cols: dict[str, Any] = {
        "subject": np.asarray(subject if subject is not None else [f"slice{i}" for i in range(n)]).astype(str),
        "slice_index": np.asarray(slice_index if slice_index is not None else np.arange(n)).astype(int),
    }
    if slice_offset is not None:
        cols["slice_offset"] = np.asarray(slice_offset).astype(int)
    cols["patient_label"] = np.asarray(
        patient_label if patient_label is not None else np.full(n, -1)
    ).astype(int)
    cols["lesion_segments"] = np.asarray(
        lesion_segments if lesion_segments is not None else [""] * n, dtype=object
    ).astype(str)
    cols["patient_score"] = patient_scores(curves, point_seg if patient_span == "segments" else None)
    cols["top_segment"] = top_segments(seg)
    for j, name in enumerate(SEGMENT_COLUMNS):
        cols[name] = seg[:, j]
    return pd.DataFrame(cols)


def score_maps(
    images: np.ndarray,
    recon_mean: np.ndarray,
    cord: np.ndarray,
    segments: np.ndarray,
    score_cfg: ScoreConfig = ScoreConfig(),
    eu: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> ScoreResult:
    """Scores from images and their mean MC reconstruction (no model needed).

    images, recon_mean: ``(N, H, W)`` float in [0, 1]; cord, segments: ``(N, H, W)`` uint8;
    eu: optional ``(N, H, W)`` MC variance (kept for reconstruction metrics); meta: optional
    per-slice columns for the table (subject, slice_index, patient_label, lesion_segments,
    slice_offset). The map's sign follows ``score_cfg.sided`` (:func:`anomaly_map`), applied
    to the residual before the post-processing.
    """
    images = _as_stack(images, "images")
    segments = _as_stack(segments, "segments")
    roi = cord_roi(cord, score_cfg.erode_cord)
    raw = anomaly_map(images, recon_mean, roi, score_cfg.sided)
    maps = postprocess(
        raw, roi, score_cfg.drop_bottom, score_cfg.top_components, score_cfg.connectivity
    )
    assign = curve_assignment(roi, score_cfg.curve, score_cfg.centreline_sigma)
    curves = anomaly_curve(maps, assign)
    pseg = point_segments(segments, assign)
    if score_cfg.curve == "rows":
        with np.errstate(invalid="ignore", divide="ignore"):
            w = images.shape[2]
            line = (roi * np.arange(w)).sum(2) / roi.sum(2)
    else:
        line = centreline(roi, score_cfg.centreline_sigma)
    table = scores_table(curves, pseg, patient_span=score_cfg.patient_span, **(meta or {}))

    return ScoreResult(
        maps=maps, raw_maps=raw, roi=roi, curves=curves, point_segments=pseg,
        centreline=line, recon=_as_stack(recon_mean, "recon_mean").astype(np.float32),
        eu=None if eu is None else _as_stack(eu, "eu").astype(np.float32),
        table=table, config=to_dict(score_cfg),
    )


def score_dataset(
    model,
    data,
    score_cfg: ScoreConfig = ScoreConfig(),
    mc_k: int | None = None,
    mask_ratio: float = 0.75,
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    ddof: int = 1,
    mc: Any = None,
) -> ScoreResult:
    """Score every slice of ``data`` (a :class:`~u2ad_core.data.datasets.SliceData`) with ``model``.

    One batched :func:`~u2ad_core.method.uncertainty.mc_uncertainty` call over all N slices
    (ROI = the un-eroded cord mask, ``mc_k`` reconstructions per ROI patch, default
    ``score_cfg.k``; randomness from a ``torch.Generator`` seeded with ``seed``), then
    :func:`score_maps`. For detection pass ``data.middle()`` (the middle sagittal slice).
    ``mc``: precomputed maps for these N slices (any object with ``mean`` and ``eu``
    ``(N, H, W)``, e.g. :func:`u2ad_core.method.train.mc_maps` rows); then ``model`` is not run, and
    ``config["mc_k"]`` records the maps' own ``k`` (an attribute of :class:`~u2ad_core.method.uncertainty.MCResult`
    and :class:`~u2ad_core.method.train.Maps`), or ``mc_k`` when they carry none, or None (unknown);
    a ``mc_k`` that contradicts the maps' ``k`` is an error.
    """
    images = np.asarray(data.images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"data.images must be a non-empty (N, H, W) array, got {images.shape}")
    cord = np.asarray(data.cord)
    if mc is not None:
        k_maps = getattr(mc, "k", None)
        if k_maps is not None and mc_k is not None and int(k_maps) != int(mc_k):
            raise ValueError(f"score_dataset: mc_k={mc_k} but the maps given were computed with k={k_maps}")
        k = int(k_maps) if k_maps is not None else (int(mc_k) if mc_k is not None else None)
    else:
        k = int(mc_k if mc_k is not None else score_cfg.k)
    if mc is None:
        mc = mc_uncertainty(
            model, images, cord > 0, k=k, mask_ratio=mask_ratio, generator=make_generator(seed),
            ddof=ddof, batch_size=batch_size, device=device, progress=progress,
        )
    mean = _to_numpy(mc.mean)
    if mean.shape != images.shape:
        raise ValueError(f"MC mean {mean.shape} does not match data.images {images.shape}")
    eu = _to_numpy(mc.eu) if getattr(mc, "eu", None) is not None else None
    meta = {
        "subject": getattr(data, "subject", None),
        "slice_index": getattr(data, "slice_index", None),
        "patient_label": getattr(data, "patient_label", None),
        "lesion_segments": getattr(data, "lesion_segments", None),
        "slice_offset": getattr(data, "slice_offset", None),
    }
    res = score_maps(images, mean, cord, data.segments, score_cfg, eu=eu, meta=meta)
    res.config.update({"mc_k": k, "mask_ratio": float(mask_ratio), "seed": int(seed)})
    return res


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
