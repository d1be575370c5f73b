"""Has a model learned to reconstruct a healthy cord? Residuals against trivial predictors.

A reconstruction method detects a lesion only if it reconstructs the healthy cord better than
something that knows nothing about cords. This module measures that, for any model, from plain
arrays (``images``, ``cord``, ``lesion`` and, on the phantom, the noise-free ``clean`` image and
the lesion-free ``twin``; all ``(N, H, W)``, same grid and intensity scale):

* :func:`cord_regions` splits the cord into its interior and its edge (the partial-volume rim);
* trivial predictors of a healthy cord, each ``(N, H, W)`` and equal to the image outside the
  cord: :func:`cord_mean_prediction` (every cord pixel = the slice's cord mean),
  :func:`running_mean_prediction` (leave-one-out running mean along the cord) and
  :func:`local_mean_prediction` (leave-one-out mean of a square neighbourhood inside the cord);
* :func:`residual_table`: per slice and pooled, RMS(image - prediction) / cord mean in the interior
  and at the edge, over healthy pixels only, and the noise floor RMS(image - clean) / cord mean;
* :func:`compare_predictors`: one tidy DataFrame, one row per predictor (a model's MC mean and
  the trivial ones), with the ratio to the cord-mean predictor, the multiple of the noise floor
  and the word "learned" (:func:`learned_verdict`);
* :func:`masked_context_prediction`: what interpolating the visible cord patches reaches under
  a masked-patch model's own masking (the information such a model has; a bound, not a model);
* :func:`check_dataset` / :func:`healthy_selection`: all of the above on a ``SliceData``'s
  lesion-free patients' middle slices;
* :func:`oracle_map`: the anomaly map ``x - healthy twin``, the ceiling of any reconstruction
  method on the phantom, shaped like any other anomaly map (``(N, H, W)`` float32, 0 outside the
  cord) for :func:`u2ad_core.baselines.common.evaluate_maps`.

Conventions (the numbers depend on them, so they are fixed here):

* **Normaliser.** A slice's *cord mean* is the mean of ``images`` over all its cord pixels (the
  value the cord-mean predictor predicts); a residual is divided by its own slice's cord mean
  before squaring, so slices of different brightness pool fairly.
* **Pooling.** The pooled value is the RMS over all healthy pixels of the region in all slices
  (pixel-weighted), not the mean of the per-slice values; per-group values (e.g. per patient,
  ``groups``) pool the same way within each group. :func:`compare_predictors` can summarise by
  the median of the per-slice values instead (``statistic="median"``, robust to a few slices
  where a model fails; the pooled value shows them). Measured on the cpu preset's renji_like
  middle slices of lesion-free patients with the paper's renormalisation after augmentation
  (2026-12-07), the two disagreed for U2AD S3 (interior 0.154 median, 0.468 pooled) because it
  over-predicted the few dim cords; without it they agree (0.138 / 0.149).
* **Healthy pixels.** Lesion pixels (``lesion > 0``) are excluded from every residual; the
  predictors themselves never see the lesion mask (a predictor must not know where the lesion is).
  Excluding whole slices or patients with lesions is the caller's choice (index the arrays).
* **Boundary.** Distances are measured to the nearest non-cord pixel *inside the image*: where
  the crop cuts the cord (the top and bottom rows of the ``cord_band`` crop) there is no edge.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from u2ad_core.metrics.verdicts import verdict

__all__ = [
    "LEARNED_MARGIN",
    "cord_regions",
    "cord_mean_prediction",
    "running_mean_prediction",
    "local_mean_prediction",
    "residual_table",
    "learned_verdict",
    "STATISTICS",
    "compare_predictors",
    "masked_context_prediction",
    "MASKED_CONTEXT",
    "healthy_selection",
    "check_dataset",
    "oracle_map",
]

LEARNED_MARGIN: float = 0.9
"""A model has "learned" the healthy cord when its interior residual is at most this multiple of
the cord-mean predictor's (the diagnostics issue's target: <= 0.9 x the cord mean)."""


def _stack(name: str, a, ndim: int = 3) -> np.ndarray:
    """``a`` as an array with ``ndim`` dims, or a clear error naming the argument."""
    arr = np.asarray(a)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims (N, H, W), got shape {arr.shape}")
    return arr


def _check(images, cord, /, **others) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray | None]]:
    """Validate ``images`` / ``cord`` ``(N, H, W)`` and optional arrays of the same shape."""
    x = _stack("images", images).astype(np.float64)
    c = _stack("cord", cord) > 0
    if c.shape != x.shape:
        raise ValueError(f"cord {c.shape} does not match images {x.shape}")
    out: dict[str, np.ndarray | None] = {}
    for k, v in others.items():
        if v is None:
            out[k] = None
            continue
        a = _stack(k, v)
        if a.shape != x.shape:
            raise ValueError(f"{k} {a.shape} does not match images {x.shape}")
        out[k] = a
    return x, c, out


def cord_regions(cord: np.ndarray, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Split the cord into ``(interior, edge)``, both bool ``(N, H, W)`` (or ``(H, W)``).

    cord: ``(N, H, W)`` or ``(H, W)`` mask (non-zero = cord). A cord pixel's distance is the
    Euclidean distance from its centre to the nearest non-cord pixel centre of the same slice
    (``scipy.ndimage.distance_transform_edt``); ``edge`` = cord pixels with distance <= ``width``,
    ``interior`` = the rest (distance > ``width``). For ``width=1`` the edge is exactly the cord
    pixels with a non-cord **4-neighbour** (4-connectivity: a pixel touching the background only
    diagonally is at distance sqrt(2) > 1 and counts as interior); for ``width=w`` it is the
    pixels within a Euclidean disc of radius ``w`` of the background. The image border is not a
    boundary (distances count only non-cord pixels inside the image); a slice with no non-cord
    pixel at all is all interior. ``width=0`` makes every cord pixel interior.
    """
    c = np.asarray(cord) > 0
    if c.ndim not in (2, 3):
        raise ValueError(f"cord must be (H, W) or (N, H, W), got shape {c.shape}")
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    squeeze = c.ndim == 2
    c3 = c[None] if squeeze else c
    dist = np.full(c3.shape, np.inf)
    for i, s in enumerate(c3):  # per slice: the EDT must not cross slices
        if (~s).any():
            dist[i] = ndimage.distance_transform_edt(s)
    edge = c3 & (dist <= width)
    interior = c3 & ~edge
    return (interior[0], edge[0]) if squeeze else (interior, edge)


def _slice_cord_mean(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``(N,)`` mean of ``x`` over each slice's cord (NaN for a slice without cord)."""
    n = c.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (x * c).sum(axis=(1, 2)) / np.maximum(n, 1), np.nan)


def cord_mean_prediction(images: np.ndarray, cord: np.ndarray) -> np.ndarray:
    """Every cord pixel = its slice's cord mean; the image elsewhere. ``(N, H, W)`` float32.

    images, cord: ``(N, H, W)``. The mean is over all cord pixels of the slice (lesions included:
    the predictor does not know where they are).
    """
    x, c, _ = _check(images, cord)
    m = _slice_cord_mean(x, c)
    return np.where(c, m[:, None, None], x).astype(np.float32)


def _loo_mean(x: np.ndarray, c: np.ndarray, weights_fn) -> np.ndarray:
    """Leave-one-out mean of the cord pixels of ``x`` under a linear filter ``weights_fn``
    (which sums over a window, centre included); slice cord mean where the window holds no other
    cord pixel; the image outside the cord. ``(N, H, W)`` float32."""
    xc = np.where(c, x, 0.0)
    cf = c.astype(np.float64)
    s = weights_fn(xc) - xc          # window sum without the centre
    n = weights_fn(cf) - cf          # number of other cord pixels in the window
    n = np.rint(n)                   # counts are integers; drop float round-off
    fallback = _slice_cord_mean(x, c)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        pred = np.where(n > 0, s / np.maximum(n, 1), fallback)
    return np.where(c, pred, x).astype(np.float32)


def running_mean_prediction(images: np.ndarray, cord: np.ndarray, length: int = 9) -> np.ndarray:
    """Leave-one-out running mean of ``length`` pixels along the cord. ``(N, H, W)`` float32.

    images, cord: ``(N, H, W)``, the cord running roughly along the rows (axis 1, superior-
    inferior) as in the book's sagittal ``cord_band`` crops. "Along the cord" is **along the row
    axis, column by column, within the cord mask**: the prediction at cord pixel ``(r, c)`` is the
    mean of the cord pixels ``(r + k, c)``, ``0 < |k| <= length // 2`` (the window of ``length``
    rows centred on the pixel, the pixel itself left out: ``length - 1`` neighbours when all are
    cord). Windows are cut by the cord mask and the image border, never wrapped; a cord pixel with
    no cord neighbour in its window gets the slice's cord mean; outside the cord the prediction is
    the image. ``length`` must be odd and >= 3. Exact inside the cord for a signal linear along
    the rows wherever the full window lies in the cord.
    """
    if length < 3 or length % 2 == 0:
        raise ValueError(f"length must be odd and >= 3, got {length}")
    x, c, _ = _check(images, cord)
    k = np.ones(length)
    return _loo_mean(x, c, lambda a: ndimage.correlate1d(a, k, axis=1, mode="constant", cval=0.0))


def local_mean_prediction(images: np.ndarray, cord: np.ndarray, size: int = 3) -> np.ndarray:
    """Leave-one-out mean of the cord pixels in the ``size x size`` square around each cord pixel.

    images, cord: ``(N, H, W)``; ``size`` odd >= 3. The same rules as
    :func:`running_mean_prediction` (window cut by the cord mask and the image border, slice cord
    mean when no neighbour, the image outside the cord). ``(N, H, W)`` float32.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"size must be odd and >= 3, got {size}")
    x, c, _ = _check(images, cord)
    k = np.ones((1, size, size))
    return _loo_mean(x, c, lambda a: ndimage.correlate(a, k, mode="constant", cval=0.0))


def _region_sums(x, pred, c, healthy, width):
    """Per slice and region: sum of squared normalised residuals and pixel counts.

    Returns ``(cord_mean (N,), {region: (ss (N,), n (N,))})`` with regions interior and edge.
    """
    interior, edge = cord_regions(c, width)
    m = _slice_cord_mean(x, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = ((x - pred) / m[:, None, None]) ** 2
    out = {}
    for name, reg in (("interior", interior), ("edge", edge)):
        sel = reg & healthy
        out[name] = (np.where(sel, r2, 0.0).sum(axis=(1, 2)), sel.sum(axis=(1, 2)))
    return m, out


def _rms(ss: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(ss / np.maximum(n, 1)), np.nan)


def residual_table(images: np.ndarray, prediction: np.ndarray, cord: np.ndarray,
                   lesion: np.ndarray | None = None, clean: np.ndarray | None = None,
                   groups: Sequence | None = None, width: int = 1) -> pd.DataFrame:
    """RMS(image - prediction) / cord mean in the cord's interior and edge, per slice and pooled.

    images, prediction, cord, lesion, clean: ``(N, H, W)`` (``lesion`` and ``clean`` optional);
    groups: ``(N,)`` labels (e.g. subject ids) for per-group rows, optional; width: the edge
    width of :func:`cord_regions`. Healthy pixels only (``lesion == 0``). Returns a DataFrame
    with one row per slice (``level="slice"``, ``slice`` its index), one per group
    (``level="group"``) when ``groups`` is given, and one pooled row (``level="pooled"``);
    columns ``level, slice, group, cord_mean, interior, edge, n_interior, n_edge`` and, when
    ``clean`` is given, ``noise_interior, noise_edge`` (the same measure of ``image - clean``:
    the floor no predictor of the noisy image can beat on average). A region without healthy
    pixels is NaN. Pooling is pixel-weighted (see the module docstring).
    """
    x, c, o = _check(images, cord, prediction=prediction, lesion=lesion, clean=clean)
    healthy = np.ones_like(c) if o["lesion"] is None else ~(o["lesion"] > 0)
    m, sums = _region_sums(x, o["prediction"].astype(np.float64), c, healthy, width)
    noise = None
    if o["clean"] is not None:
        _, noise = _region_sums(x, o["clean"].astype(np.float64), c, healthy, width)
    n_img = len(x)
    g = np.asarray(groups if groups is not None else [None] * n_img, dtype=object)
    if g.shape != (n_img,):
        raise ValueError(f"groups must have one label per slice ({n_img}), got shape {g.shape}")

    def select(idx, label) -> np.ndarray:
        """``(N,)`` bool: one slice, one group, or all slices."""
        if idx is not None:
            return np.arange(n_img) == idx
        return g == label if label is not None else np.ones(n_img, bool)

    def rows(level, idx, label) -> dict:
        sel = select(idx, label)
        ms = m[sel & np.isfinite(m)]
        row = {"level": level, "slice": idx, "group": label, "cord_mean": float(ms.mean()) if ms.size else np.nan}
        for prefix, table in (("", sums), ("noise_", noise or {})):
            for reg, (ss, n) in table.items():
                row[f"{prefix}{reg}"] = float(_rms(ss[sel].sum(), n[sel].sum()))
                if not prefix:
                    row[f"n_{reg}"] = int(n[sel].sum())
        return row

    out = [rows("slice", i, g[i]) for i in range(n_img)]
    if groups is not None:
        out += [rows("group", None, lab) for lab in pd.unique(g)]
    out.append(rows("pooled", None, None))
    return pd.DataFrame(out)


def learned_verdict(model_interior: np.ndarray, cord_mean_interior: np.ndarray,
                    margin: float = LEARNED_MARGIN) -> tuple[bool, str, float]:
    """Does a model beat the cord-mean predictor inside the cord by the margin?

    model_interior, cord_mean_interior: the interior residuals of the model and of the cord-mean
    predictor, either scalars (pooled values) or ``(G,)`` paired values (one per patient or
    slice). ``ratio`` = pooled model / cord-mean residual (the mean of the G ratios when paired).
    Returns ``(learned, word, ratio)``:

    * with G >= 2 paired values, the project's rule
      (:func:`u2ad_core.metrics.verdicts.verdict`) on ``margin - ratio_g`` against the std of
      the G ratios: ``"learned"`` when the mean of ``margin - ratio_g`` exceeds that std
      (``verdict`` says "better"), ``"not learned"`` when it is below minus the std ("worse"),
      else ``"no clear difference"``; ``learned`` is True only for "learned";
    * with one value (no spread), the plain threshold ``ratio <= margin``: ``"learned"`` or
      ``"not learned"``.

    ``"not measured"`` (learned False) when no ratio is finite.
    """
    a = np.atleast_1d(np.asarray(model_interior, dtype=np.float64))
    b = np.atleast_1d(np.asarray(cord_mean_interior, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"model values {a.shape} and cord-mean values {b.shape} are not paired")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = a / b
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return False, "not measured", float("nan")
    ratio = float(ratios.mean())
    if ratios.size == 1:
        ok = ratio <= margin
        return ok, "learned" if ok else "not learned", ratio
    word = verdict(float(np.mean(margin - ratios)), float(np.std(ratios, ddof=1)), higher_is_better=True)
    word = {"better": "learned", "worse": "not learned"}.get(word, word)
    return word == "learned", word, ratio


STATISTICS: tuple[str, ...] = ("pooled", "median", "mean")
"""How :func:`compare_predictors` summarises the slices: ``"pooled"`` (pixel-weighted RMS over all
slices), ``"median"`` / ``"mean"`` (of the per-slice values; the median is robust to a few slices
where a model fails, the pooled value is not, and shows them)."""


def _summary(t: pd.DataFrame, col: str, statistic: str) -> float:
    """One number of a :func:`residual_table` column: the pooled row, or the median / mean of the
    slice rows (NaN slices ignored)."""
    if statistic == "pooled":
        return float(t.loc[t.level == "pooled", col].iloc[0])
    v = t.loc[t.level == "slice", col].to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(np.median(v) if statistic == "median" else v.mean())


def compare_predictors(images: np.ndarray, cord: np.ndarray, predictions: Mapping[str, np.ndarray],
                       lesion: np.ndarray | None = None, clean: np.ndarray | None = None,
                       groups: Sequence | None = None, width: int = 1, length: int = 9,
                       size: int = 3, margin: float = LEARNED_MARGIN, statistic: str = "pooled") -> pd.DataFrame:
    """A model's reconstruction against the trivial predictors and the noise floor, one table.

    images, cord, lesion, clean: ``(N, H, W)``; predictions: name -> ``(N, H, W)`` (e.g.
    ``{"U2AD S3": mc_mean}``, the MC mean reconstruction); groups: ``(N,)`` patient ids, optional
    (the spread for :func:`learned_verdict`; without them the plain threshold on the summary
    ratio). The trivial rows ``"cord mean"``, ``"running mean (length)"`` and ``"local mean
    (size x size)"`` are added; statistic: one of :data:`STATISTICS`.

    Returns a DataFrame indexed by ``predictor`` with columns ``interior``, ``edge`` (RMS / cord
    mean of :func:`residual_table`, summarised by ``statistic``), ``interior_ratio`` /
    ``edge_ratio`` (to the cord-mean predictor's), ``interior_x_noise`` / ``edge_x_noise``
    (multiples of the noise floor, same statistic; NaN without ``clean``), ``share_below_margin``
    (the share of groups, or of slices without ``groups``, whose interior ratio to the cord-mean
    predictor is <= ``margin``), ``learned`` (bool) and ``verdict`` (the word of
    :func:`learned_verdict` on the interior: per-group pairs when ``groups`` is given, else the
    summary values), and a last row ``"noise floor"`` (``image - clean``) when ``clean`` is given.
    ``df.attrs`` holds ``margin``, ``width``, ``length``, ``size``, ``statistic``, ``n_groups``.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    preds: dict[str, np.ndarray] = {
        "cord mean": cord_mean_prediction(images, cord),
        f"running mean ({length})": running_mean_prediction(images, cord, length),
        f"local mean ({size}x{size})": local_mean_prediction(images, cord, size),
    }
    clash = set(preds) & set(predictions)
    if clash:
        raise ValueError(f"prediction names {sorted(clash)} are reserved for the trivial predictors")
    preds = {**dict(predictions), **preds}
    if clean is not None:
        preds["noise floor"] = np.asarray(clean)
    tables = {k: residual_table(images, p, cord, lesion, clean, groups, width) for k, p in preds.items()}
    base_t = tables["cord mean"]
    base = {c: _summary(base_t, c, statistic) for c in ("interior", "edge")}
    noise = {c: _summary(base_t, f"noise_{c}", statistic) if clean is not None else np.nan for c in base}
    level = "group" if groups is not None else "slice"
    rows = []
    for k, t in tables.items():
        row = {"predictor": k, **{c: _summary(t, c, statistic) for c in base}}
        for reg in base:
            row[f"{reg}_ratio"] = row[reg] / base[reg] if base[reg] > 0 else np.nan
            row[f"{reg}_x_noise"] = row[reg] / noise[reg] if noise[reg] > 0 else np.nan
        mine = t.loc[t.level == level, "interior"].to_numpy()
        ref = base_t.loc[base_t.level == level, "interior"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            r = mine / ref
        row["share_below_margin"] = float(np.mean(r[np.isfinite(r)] <= margin)) if np.isfinite(r).any() else np.nan
        if groups is None:
            mine, ref = row["interior"], base["interior"]
        ok, word, _ = learned_verdict(mine, ref, margin)
        row["learned"], row["verdict"] = bool(ok), word
        rows.append(row)
    df = pd.DataFrame(rows).set_index("predictor")
    df.attrs.update(margin=margin, width=width, length=length, size=size, statistic=statistic,
                    n_groups=int(len(pd.unique(np.asarray(groups, dtype=object)))) if groups is not None else 0)
    return df


def oracle_map(images: np.ndarray, twin: np.ndarray, one_sided: bool = True,
               cord: np.ndarray | None = None) -> np.ndarray:
    """The oracle anomaly map ``x - healthy twin``: the ceiling of any reconstruction method.

    images, twin: ``(N, H, W)``, the twin being the lesion-free image of the same anatomy,
    scanner and noise draw (``SliceData.twin`` on the phantom). ``one_sided=True`` gives the
    bright-only ``max(x - twin, 0)`` (T2 hyperintensities), ``False`` gives ``|x - twin|``.
    With ``cord`` ``(N, H, W)`` the map is zeroed outside the cord, as the baselines' maps are
    (:func:`u2ad_core.baselines.common.score_anomaly_maps` zeroes outside its ROI anyway).
    Returns ``(N, H, W)`` float32, ready for ``evaluate_maps(maps, data, preset)``.
    """
    if twin is None:
        raise ValueError("oracle_map needs the lesion-free twin (SliceData.twin is None for this dataset)")
    x, _, o = _check(images, np.ones(np.shape(images), bool), twin=twin, cord=cord)
    d = x - o["twin"].astype(np.float64)
    d = np.maximum(d, 0.0) if one_sided else np.abs(d)
    if o["cord"] is not None:
        d = np.where(o["cord"] > 0, d, 0.0)
    return d.astype(np.float32)


def healthy_selection(data, middle: bool = True) -> np.ndarray:
    """``(N,)`` bool: the slices of a ``SliceData`` on which a reconstruction is checked.

    The lesion-free patients (``patient_label == 0``; all slices when the dataset has no patient
    labels) and, with ``middle``, only their middle sagittal slice (``slice_offset == 0``).
    """
    n = len(data.images)
    sel = np.ones(n, bool)
    if getattr(data, "patient_label", None) is not None:
        sel &= np.asarray(data.patient_label) == 0
    if middle and getattr(data, "slice_offset", None) is not None:
        sel &= np.asarray(data.slice_offset) == 0
    return sel


_MASKED_CACHE: dict[str, np.ndarray] = {}


def _masked_context_cached(images: np.ndarray, cord: np.ndarray, patch: int, ratio: float, seed: int) -> np.ndarray:
    """:func:`masked_context_prediction` once per distinct input (a page checks several models on
    the same slices: chapter 09 a row per baseline, chapter 12 a point per snapshot)."""
    h = hashlib.sha1(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(cord > 0).tobytes())
    h.update(repr((images.shape, patch, float(ratio), int(seed))).encode())
    key = h.hexdigest()
    if key not in _MASKED_CACHE:
        if len(_MASKED_CACHE) >= 16:
            _MASKED_CACHE.pop(next(iter(_MASKED_CACHE)))
        _MASKED_CACHE[key] = masked_context_prediction(images, cord, patch=patch, mask_ratio=ratio, seed=seed)
    return _MASKED_CACHE[key].copy()


MASKED_CONTEXT = "masked context"
"""Row name of :func:`masked_context_prediction` in :func:`check_dataset`'s table."""


def check_dataset(data, predictions: Mapping[str, np.ndarray], *, middle: bool = True,
                  statistic: str = "median", margin: float = LEARNED_MARGIN, sel: np.ndarray | None = None,
                  masked_context: tuple[int, float] | None = (8, 0.75), seed: int = 0) -> pd.DataFrame:
    """:func:`compare_predictors` on a dataset's lesion-free patients (:func:`healthy_selection`).

    data: a ``SliceData`` (``images``, ``cord``, ``lesion``, ``subject`` and, on the phantom,
    ``clean`` for the noise floor); predictions: name -> ``(N, H, W)`` array or CPU tensor over
    *all* N slices of ``data`` (e.g. ``{"U2AD S3": mc.mean}``); ``sel``: ``(N,)`` bool to use
    instead of :func:`healthy_selection`. The verdict pairs the model with the cord-mean
    predictor per patient. ``masked_context``: ``(patch, mask_ratio)`` of the model, adds the
    row :data:`MASKED_CONTEXT` (:func:`masked_context_prediction`, K = 10 masks from ``seed``:
    what interpolating the visible cord patches reaches), ``None`` leaves it out.
    ``df.attrs`` adds ``n_slices`` and ``n_patients``.
    """
    sel = healthy_selection(data, middle) if sel is None else np.asarray(sel, bool)
    if not sel.any():
        raise ValueError("check_dataset: no slice selected (no lesion-free patient in this dataset?)")
    pick = {k: np.asarray(v, dtype=np.float32)[sel] for k, v in predictions.items()}
    if masked_context is not None:
        patch, ratio = masked_context
        pick[MASKED_CONTEXT] = _masked_context_cached(np.asarray(data.images)[sel], np.asarray(data.cord)[sel],
                                                      patch, ratio, seed)
    clean = getattr(data, "clean", None)
    lesion = getattr(data, "lesion", None)
    groups = np.asarray(data.subject)[sel]
    df = compare_predictors(np.asarray(data.images)[sel], np.asarray(data.cord)[sel], pick,
                            lesion=None if lesion is None else np.asarray(lesion)[sel],
                            clean=None if clean is None else np.asarray(clean)[sel],
                            groups=groups, statistic=statistic, margin=margin)
    df.attrs.update(n_slices=int(sel.sum()), n_patients=int(len(pd.unique(groups))))
    return df


def _interpolate_masked(x: np.ndarray, c: np.ndarray, hidden: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """One slice ``(H, W)``: predict the ``hidden`` cord pixels from the visible ones only.

    The visible pixels give a cross-cord profile (mean deviation from their row's mean, by
    distance to the cord's edge) and a level per row (row mean minus the profile), which is
    interpolated linearly along the rows; prediction = level + profile. 0 elsewhere.
    """
    vis = c & ~hidden
    rows = np.flatnonzero(vis.any(1))
    row_mean = np.full(x.shape[0], np.nan)
    row_mean[rows] = [x[r][vis[r]].mean() for r in rows]
    n_cls = int(dist.max()) + 1
    rr, cc = np.nonzero(vis)
    dev_sum = np.bincount(dist[rr, cc], weights=x[rr, cc] - row_mean[rr], minlength=n_cls)
    dev_n = np.bincount(dist[rr, cc], minlength=n_cls)
    dev = np.divide(dev_sum, dev_n, out=np.zeros(n_cls), where=dev_n > 0)
    lvl_sum = np.bincount(rr, weights=x[rr, cc] - dev[dist[rr, cc]], minlength=x.shape[0])
    lvl_n = np.bincount(rr, minlength=x.shape[0])
    level = np.interp(np.arange(x.shape[0]), rows, lvl_sum[rows] / lvl_n[rows])
    out = np.zeros_like(x)
    hr, hc = np.nonzero(hidden)
    out[hr, hc] = level[hr] + dev[dist[hr, hc]]
    return out


def masked_context_prediction(images: np.ndarray, cord: np.ndarray, patch: int = 8, mask_ratio: float = 0.75,
                              k: int = 10, seed: int = 0) -> np.ndarray:
    """A predictor that sees only what a masked-patch model sees: a bound for EdgeMAE's MC mean.

    For each slice, ``k`` times: hide ``round(mask_ratio * n)`` of its ``n`` cord patches
    (``patch x patch`` squares holding a cord pixel, as the model's ROI patches), then predict
    every hidden cord pixel by interpolating the visible cord pixels (a level per row, linear
    along the rows, plus the cross-cord profile by distance to the edge; no learning). The
    prediction is the mean over the masks that hid the pixel, as the Monte-Carlo mean is. A
    model that beats it has learned more than interpolation; one far above it has not learned
    what its visible context shows. images, cord: ``(N, H, W)`` (H, W multiples of ``patch``);
    returns ``(N, H, W)`` float32, the image outside the cord and where no mask hid a pixel.
    """
    x, c, _ = _check(images, cord)
    n, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {(h, w)} is not a multiple of the patch size {patch}")
    rng = np.random.default_rng(seed)
    out = x.astype(np.float32).copy()
    for i in range(n):
        ci = c[i]
        grid = ci.reshape(h // patch, patch, w // patch, patch).any((1, 3))
        roi = np.flatnonzero(grid.ravel())
        dist = np.minimum(np.rint(ndimage.distance_transform_edt(ci)).astype(int), 7)
        acc, cnt = np.zeros((h, w)), np.zeros((h, w))
        for _ in range(k):
            m = np.zeros(grid.size, bool)
            m[rng.choice(roi, int(round(mask_ratio * roi.size)), replace=False)] = True
            hidden = np.repeat(np.repeat(m.reshape(grid.shape), patch, 0), patch, 1) & ci
            if hidden.any() and (ci & ~hidden).any():
                acc[hidden] += _interpolate_masked(x[i], ci, hidden, dist)[hidden]
                cnt[hidden] += 1
        seen = cnt > 0
        out[i][seen] = (acc[seen] / cnt[seen]).astype(np.float32)
    return out
