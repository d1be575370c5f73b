"""Realism report: the same figures on phantom slices and on real MRI, with stated bands.

:func:`measure_slice` computes, on one preprocessed 2D sagittal slice ``image`` (H, W) in
[0, 1] (rows superior -> inferior, columns anterior -> posterior) with its masks (H, W):

=========================  ==========================================================================
figure                     definition
=========================  ==========================================================================
``csf_cord_ratio``         mean CSF / mean cord (normal cord: a lesion and its 1.5625 mm halo are
                           left out of this and the next two figures). CSF: the CSF mask when it covers >= 10 mm^2, else
                           the brightest quartile of a 1-4 mm ring around the cord.
``cord_cv``                std / mean of the cord core: the cord eroded by 1.5625 mm (2 px at the
                           authors' 0.78 mm, at least 1 px; the whole cord when that leaves < 4 px).
``along_cord_variation``   the cord rows cut into consecutive blocks of 12.5 mm (16 px at 0.78 mm);
                           (max - min) of the block means of the cord core over their median
                           (complete blocks with >= 4 core pixels only; needs >= 2 blocks).
``noise_rel_cord``         ``noise_std`` / mean of the cord core.
``noise_std``              background noise: square tiles of 15.625 mm (20 px at 0.78 mm) along the
                           image border; "air" tiles have a mean below 5 % of the image's 99th
                           percentile, some spread, and at most 5 % of their pixels at the tile's
                           minimum (zero padding, air clipped to 0 by a foreground normalisation,
                           or a constant background carry no noise); the median standard deviation
                           of the (up to) 3 darkest air tiles. NaN without air.
``cord_ap_mm``             median over rows of the cord width (pixels per row) in mm.
``vertebral_spacing_mm``   median distance between consecutive vertebra centroids, S -> I: from
                           ``vertebrae`` (given centroids), else the label map (vertebral-body
                           components >= 20 mm^2, or disc components >= 5 mm^2 when there are more
                           of them: :func:`level_centroids`), else the segment map (distance along
                           the cord centreline between consecutive segment boundaries, which are the
                           lines through the centroids).
``lesion_z``               (mean lesion - mean reference cord) / std reference cord; reference = the
                           cord core minus the lesion dilated by 1.5625 mm (a fuzzy edge's halo).
``lesion_peak_percentile`` percentile rank (0-100) of the brightest lesion pixel among all cord pixels.
``lesion_area_mm2``        lesion pixels x pixel area.
``lesion_length_mm``       extent of the lesion along the cord (rows spanned x pixel size).
``lesion_width_fraction``  widest lesion row (AP pixels) over the median cord width of the lesion rows.
=========================  ==========================================================================

Every figure is NaN where it cannot be computed (no cord, no air, no lesion, ...). Lengths
are in mm so that slices of different pixel sizes compare; rows are taken as "along the
cord" (the cervical cord is within about 20 degrees of vertical in these crops).

The real references are stored in :data:`REFERENCES` (values computed by
:func:`reference_figures` from ``../shared/data/real``; a test recomputes them), the bands
in :func:`bands`. :func:`measure_dataset` measures a dataset file (the preset's view: what the
model sees), :func:`measure_cohort` a raw cohort in the authors' view (their pixel size, field
of view and normalisation, as the real references), :func:`summarise` gives median and IQR per
group and :func:`compare_to_bands` puts them beside the bands::

    df = measure_cohort("data/cpu/raw/renji_like")          # or measure_dataset(load_dataset(p), "renji_like")
    compare_to_bands(summarise(df))                         # one row per group and figure
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from u2ad_core.core import labels as L
from u2ad_core.core.config import DataConfig
from u2ad_core.core.context import repo_root
from u2ad_core.data.io import AUTHORS_PIXEL_MM, DataError, DataWarning, SubjectFiles, read_array, scan_cohort
from u2ad_core.data.preprocess import preprocess_subject

__all__ = [
    "FIGURES",
    "LESION_FIGURES",
    "FIGURE_INFO",
    "AUTHORS_VIEW",
    "measure_slice",
    "air_noise",
    "level_centroids",
    "spacing_from_points",
    "spacing_from_segments",
    "measure_dataset",
    "measure_subject",
    "measure_cohort",
    "summarise",
    "default_real_dir",
    "reference_figures",
    "REFERENCES",
    "reference_table",
    "BAND_RULES",
    "LESION_BANDS",
    "bands",
    "NOT_MEASURED",
    "KNOWN_DEPARTURES",
    "compare_to_bands",
]

ERODE_MM = 2 * AUTHORS_PIXEL_MM  # 1.5625 mm: 2 px at the authors' pixel size
BLOCK_MM = 16 * AUTHORS_PIXEL_MM  # 12.5 mm: the 16-pixel blocks at 0.78 mm
PATCH_MM = 20 * AUTHORS_PIXEL_MM  # 15.625 mm: the README's 20 x 20 corner at 0.78 mm
RING_MM = (1.0, 4.0)  # CSF ring around the cord when there is no CSF mask
MIN_CSF_MM2 = 10.0  # a CSF mask smaller than this is not used (ring instead)
MIN_BODY_MM2 = 20.0  # vertebral-body components smaller than this are specks (as preprocess)
MIN_DISC_MM2 = 5.0  # disc components smaller than this are specks
AIR_LEVEL = 0.05  # air tile: mean below this fraction of the image's 99th percentile (real air: 1.5-3.5 %)
N_AIR_TILES = 3

FIGURES: tuple[str, ...] = (
    "csf_cord_ratio", "cord_cv", "along_cord_variation", "noise_rel_cord", "noise_std", "cord_ap_mm",
    "vertebral_spacing_mm", "lesion_z", "lesion_peak_percentile", "lesion_area_mm2", "lesion_length_mm",
    "lesion_width_fraction",
)
LESION_FIGURES: tuple[str, ...] = tuple(f for f in FIGURES if f.startswith("lesion_"))
FIGURE_INFO: dict[str, str] = {
    "csf_cord_ratio": "CSF / cord mean",
    "cord_cv": "cord CV (std / mean)",
    "along_cord_variation": "along-cord variation ((max-min)/median of 12.5 mm blocks)",
    "noise_rel_cord": "air noise std / cord mean",
    "noise_std": "air noise std (in [0, 1] units)",
    "cord_ap_mm": "cord AP diameter (mm)",
    "vertebral_spacing_mm": "vertebral spacing (mm)",
    "lesion_z": "lesion z (vs the rest of the cord)",
    "lesion_peak_percentile": "lesion peak percentile among cord pixels",
    "lesion_area_mm2": "lesion area (mm^2)",
    "lesion_length_mm": "lesion length along the cord (mm)",
    "lesion_width_fraction": "lesion width / cord AP diameter",
}

AUTHORS_VIEW = DataConfig(pixel_mm=AUTHORS_PIXEL_MM, image_size=(256, 256), crop="cord_band")
"""The authors' geometry (0.78 mm pixels, 200 mm field of view, 256 x 256), centred on the
cervical cord (C2-T1 span): the view in which the real references are measured."""


# --------------------------------------------------------------------------------------
# One slice
# --------------------------------------------------------------------------------------
def _px(mm: float, pixel_mm: float) -> int:
    """A length in mm as a whole number of pixels (at least 1)."""
    return max(1, int(round(mm / pixel_mm)))


def _mask(a: np.ndarray | None, shape: tuple[int, int], what: str) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"measure_slice: {what} has shape {a.shape}, the image {shape}")
    return a > 0


def air_noise(image: np.ndarray, pixel_mm: float) -> float:
    """Background noise std of ``image`` (H, W) from its darkest border tiles (see the module docstring)."""
    image = np.asarray(image, np.float64)
    H, W = image.shape
    t = min(_px(PATCH_MM, pixel_mm), H, W)
    starts_r = np.unique(np.r_[np.arange(0, H - t + 1, t), H - t])
    starts_c = np.unique(np.r_[np.arange(0, W - t + 1, t), W - t])
    border = {(r, c) for r in (0, H - t) for c in starts_c} | {(r, c) for c in (0, W - t) for r in starts_r}
    tiles = np.stack([image[r:r + t, c:c + t] for r, c in sorted(border)])  # (n, t, t)
    flat = tiles.reshape(len(tiles), -1)
    # zero padding, air clipped to 0, or a constant background: > 5 % of the pixels at the tile's minimum
    constant = ((flat == flat.min(1, keepdims=True)).mean(1) > 0.05) | (flat.std(1) < 1e-4)
    air = (flat.mean(1) < AIR_LEVEL * np.percentile(image, 99)) & ~constant
    if not air.any():
        return float("nan")
    means = np.where(air, flat.mean(1), np.inf)
    pick = np.argsort(means)[: min(N_AIR_TILES, int(air.sum()))]
    return float(np.median(flat[pick].std(1)))


def _row_centres(cord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with cord and the mean cord column of each."""
    w = cord.sum(1)
    rows = np.flatnonzero(w)
    cols = (cord * np.arange(cord.shape[1])).sum(1)[rows] / w[rows]
    return rows, cols


def spacing_from_points(points: np.ndarray, pixel_mm: float) -> float:
    """Median distance (mm) between consecutive vertebra centroids; ``points`` (n, 2) (row, col) or (n,) rows."""
    pts = np.asarray(points, np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    if len(pts) < 2:
        return float("nan")
    pts = pts[np.argsort(pts[:, 0])]
    return float(np.median(np.linalg.norm(np.diff(pts, axis=0), axis=1)) * pixel_mm)


def label_centroids(labels: np.ndarray, value: int, pixel_mm: float, min_mm2: float) -> np.ndarray:
    """Centroids (n, 2) (row, col), superior first, of the components of ``labels == value`` >= ``min_mm2``."""
    m = np.asarray(labels) == value
    lab, n = ndi.label(m)
    if n == 0:
        return np.zeros((0, 2))
    idx = np.arange(1, n + 1)
    keep = ndi.sum_labels(m, lab, idx) * pixel_mm**2 >= min_mm2
    cms = np.array(ndi.center_of_mass(m, lab, idx)).reshape(-1, 2)[keep]
    return cms[np.argsort(cms[:, 0])]


def level_centroids(labels: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Vertebra-level points from a label map: body centroids (label 2, >= 20 mm^2), or disc
    centroids (label 1, >= 5 mm^2) when the discs give more components (bodies merged across
    discs, as in the authors' ``spine_generic_*`` samples). Consecutive discs are one level apart too."""
    bodies = label_centroids(labels, L.VERTEBRAL_BODY, pixel_mm, MIN_BODY_MM2)
    discs = label_centroids(labels, L.DISC, pixel_mm, MIN_DISC_MM2)
    return discs if len(discs) > len(bodies) else bodies


def spacing_from_segments(segments: np.ndarray, cord: np.ndarray, pixel_mm: float) -> float:
    """Median length (mm) along the cord centreline of the segments bounded by two boundaries.

    segments, cord (H, W). Each cord row takes the segment value most of its cord pixels have;
    a boundary lies between two consecutive cord rows whose values differ, at the midpoint of
    their centres; a segment (value > 0) between two boundaries measures one vertebral spacing.
    """
    cord = np.asarray(cord) > 0
    rows, cols = _row_centres(cord)
    if len(rows) < 2:
        return float("nan")
    seg = np.asarray(segments).astype(np.int64)
    onehot = (seg[rows][..., None] == np.arange(len(L.SEGMENTS) + 1)) & cord[rows][..., None]  # (n, W, 7)
    val = onehot.sum(1).argmax(1)  # (n,)
    step = (np.diff(rows) == 1) & (np.diff(val) != 0)
    b = np.flatnonzero(step)  # boundary between rows[b] and rows[b + 1]
    if len(b) < 2:
        return float("nan")
    pts = np.stack([rows[b] + 0.5, 0.5 * (cols[b] + cols[b + 1])], 1)
    inside = val[b[:-1] + 1]  # value just after each boundary
    # a segment between two boundaries must be one run of cord rows with one value
    contiguous = np.array([np.all(np.diff(rows[b[i] + 1:b[i + 1] + 1]) == 1)
                           and (val[b[i] + 1:b[i + 1] + 1] == inside[i]).all() for i in range(len(b) - 1)], bool)
    d = np.linalg.norm(np.diff(pts, axis=0), axis=1)[(inside > 0) & contiguous]
    return float(np.median(d) * pixel_mm) if len(d) else float("nan")


def measure_slice(image: np.ndarray, cord: np.ndarray | None = None, csf: np.ndarray | None = None,
                  labels: np.ndarray | None = None, lesion: np.ndarray | None = None, pixel_mm: float = 1.0,
                  segments: np.ndarray | None = None, vertebrae: np.ndarray | None = None) -> dict[str, float]:
    """The realism figures of one slice (definitions in the module docstring).

    image (H, W) in [0, 1], rows S->I, columns A->P. Masks (H, W), any may be ``None``:
    ``cord``, ``csf``, ``lesion`` (binary); ``labels`` (the authors' label map: 1 disc, 2 body,
    3 cord, 4 CSF, 6 hyperintensity; it fills cord / csf / lesion when those are not given and
    gives the vertebral levels); ``segments`` (0 none, 1..6). ``vertebrae``: centroids (n, 2) (row, col)
    or rows (n,), in pixels. ``pixel_mm``: pixel size. Returns ``{figure: float}`` for every
    name in :data:`FIGURES`, NaN where a figure cannot be computed.
    """
    img = np.asarray(image, np.float64)
    if img.ndim != 2:
        raise ValueError(f"measure_slice: image must be 2D (H, W), got shape {img.shape}")
    shape = img.shape
    lab = None if labels is None else np.asarray(labels)
    if lab is not None and lab.shape != shape:
        raise ValueError(f"measure_slice: labels has shape {lab.shape}, the image {shape}")
    if cord is None and lab is not None:
        cord = np.isin(lab, (L.CORD, L.HYPERINTENSITY))
    if csf is None and lab is not None:
        csf = lab == L.CSF
    if lesion is None and lab is not None:
        lesion = lab == L.HYPERINTENSITY
    cord_m = _mask(cord, shape, "cord")
    csf_m = _mask(csf, shape, "csf")
    les_m = _mask(lesion, shape, "lesion")
    p = float(pixel_mm)
    nan = float("nan")
    out = dict.fromkeys(FIGURES, nan)
    out["noise_std"] = air_noise(img, p)
    if vertebrae is not None and len(vertebrae) >= 2:
        out["vertebral_spacing_mm"] = spacing_from_points(vertebrae, p)
    elif lab is not None and len(level_centroids(lab, p)) >= 2:
        out["vertebral_spacing_mm"] = spacing_from_points(level_centroids(lab, p), p)
    elif segments is not None and cord_m is not None and cord_m.any():
        out["vertebral_spacing_mm"] = spacing_from_segments(segments, cord_m, p)
    if cord_m is None or not cord_m.any():
        return out

    e = _px(ERODE_MM, p)
    # tissue figures describe the normal cord: a lesion (dilated by the erosion margin, its
    # fuzzy edge) is left out of them; the lesion figures use their own reference below
    les_halo = (ndi.binary_dilation(les_m, iterations=e) if les_m is not None and les_m.any()
                else np.zeros(shape, bool))
    tissue = cord_m & ~les_halo
    if not tissue.any():
        tissue = cord_m
    core = ndi.binary_erosion(cord_m, iterations=e) & ~les_halo
    if core.sum() < 4:
        core = tissue
    cvals = img[core]
    cmean = float(cvals.mean())
    # CSF: mask when large enough, else the brightest quartile of a 1-4 mm ring around the cord
    if csf_m is not None and csf_m.sum() * p * p >= MIN_CSF_MM2:
        csf_vals = img[csf_m]
    else:
        r1 = _px(RING_MM[0], p)
        r4 = max(r1 + 1, _px(RING_MM[1], p))
        ring = ndi.binary_dilation(cord_m, iterations=r4) & ~ndi.binary_dilation(cord_m, iterations=r1)
        vals = img[ring]
        csf_vals = vals[vals >= np.percentile(vals, 75)] if vals.size else vals
    if cmean > 0:
        if csf_vals.size:
            out["csf_cord_ratio"] = float(csf_vals.mean() / img[tissue].mean())
        out["cord_cv"] = float(cvals.std() / cmean)
        out["noise_rel_cord"] = out["noise_std"] / cmean
    # along-cord variation: complete blocks of BLOCK_MM rows from the first cord row
    rows = np.flatnonzero(cord_m.any(1))
    n = _px(BLOCK_MM, p)
    nb = (rows[-1] - rows[0] + 1) // n
    if nb >= 2:
        r0 = rows[0]
        block = np.full(shape[0], -1)
        block[r0:r0 + nb * n] = np.arange(nb * n) // n
        bidx = np.broadcast_to(block[:, None], shape)[core]
        ok = bidx >= 0
        cnt = np.bincount(bidx[ok], minlength=nb)
        sums = np.bincount(bidx[ok], weights=cvals[ok], minlength=nb)
        means = sums[cnt >= 4] / cnt[cnt >= 4]
        if len(means) >= 2 and np.median(means) > 0:
            out["along_cord_variation"] = float((means.max() - means.min()) / np.median(means))
    widths = cord_m.sum(1)
    out["cord_ap_mm"] = float(np.median(widths[widths > 0]) * p)

    if les_m is not None and les_m.any():
        ref = core
        lv = img[les_m]
        if ref.sum() >= 4:
            rv = img[ref]
            sd = float(rv.std())
            out["lesion_z"] = float((lv.mean() - rv.mean()) / sd) if sd > 0 else nan
        allc = img[cord_m | les_m]
        out["lesion_peak_percentile"] = float(100.0 * (allc <= lv.max()).mean())
        out["lesion_area_mm2"] = float(les_m.sum() * p * p)
        lrows = np.flatnonzero(les_m.any(1))
        out["lesion_length_mm"] = float((lrows[-1] - lrows[0] + 1) * p)
        cw = (cord_m | les_m).sum(1)[lrows]
        out["lesion_width_fraction"] = float(les_m.sum(1)[lrows].max() / np.median(cw))
    return out


# --------------------------------------------------------------------------------------
# Many slices
# --------------------------------------------------------------------------------------
def _frame(rows: list[dict[str, Any]]):

    cols = ["cohort", "subject", "site", "slice_offset", "patient_label", "view", "pixel_mm", *FIGURES]
    return pd.DataFrame(rows, columns=cols)


def measure_dataset(data, cohort: str = "", pixel_mm: float | None = None, middle_only: bool = True,
                    noise: bool | None = None):
    """The figures of every slice of a :class:`~u2ad_core.data.datasets.SliceData` (the preset's view).

    ``pixel_mm`` defaults to the dataset manifest's ``data_config.pixel_mm``; ``middle_only``
    keeps the middle slices (``slice_offset == 0``). Vertebral spacing comes from the segment
    maps (the file keeps no centroids). ``noise``: measure the air noise; by default only for
    files from the authors' arrays (layout ``u2ad_arrays``), because the project's foreground
    normalisation clips air to 0 and any dark tile left in a crop is tissue, not air.
    Returns a pandas DataFrame, one row per slice: cohort, subject, site, slice_offset,
    patient_label, view (``"preset"``), pixel_mm, then :data:`FIGURES`.
    """
    if pixel_mm is None:
        pixel_mm = (data.manifest.get("data_config") or {}).get("pixel_mm")
        if pixel_mm is None:
            raise ValueError(f"measure_dataset: {data.path}: no pixel size in the manifest; pass pixel_mm")
    if noise is None:
        noise = data.manifest.get("layout") == "u2ad_arrays"
    d = data.middle() if middle_only else data
    rows = []
    for i in range(len(d)):
        m = measure_slice(d.images[i], d.cord[i], d.csf[i] if d.csf[i].any() else None, lesion=d.lesion[i],
                          segments=d.segments[i], pixel_mm=float(pixel_mm))
        if not noise:
            m["noise_std"] = m["noise_rel_cord"] = float("nan")
        rows.append({"cohort": cohort, "subject": str(d.subject[i]), "site": str(d.site[i]),
                     "slice_offset": int(d.slice_offset[i]), "patient_label": int(d.patient_label[i]),
                     "view": "preset", "pixel_mm": float(pixel_mm), **m})
    return _frame(rows)


def measure_subject(sf, view: DataConfig = AUTHORS_VIEW, intensity: str = "authors") -> dict[str, float]:
    """The figures of one subject's middle slice, preprocessed in ``view`` (default: the authors' view).

    ``sf``: a :class:`~u2ad_core.data.io.SubjectFiles` (an authors' array keeps its intensities).
    Vertebral spacing from the preprocessing's vertebra centroids; CSF from the CSF mask when
    there is one (else the ring estimate).
    """

    if Path(sf.image).suffix == ".npy":  # the authors' arrays: already normalised, kept as they are
        intensity = "none"
    o = preprocess_subject(sf, view, 1, intensity=intensity)
    pts = np.array(list(o["centroids_rc"].values())) if o["centroids_rc"] else None
    return measure_slice(o["images"][0], o["cord"][0], o["csf"][0] if o["csf"][0].any() else None,
                         lesion=o["lesion"][0], segments=o["segments"][0], vertebrae=pts, pixel_mm=view.pixel_mm)


def measure_cohort(input_dir: str | Path, cohort: str | None = None, view: DataConfig = AUTHORS_VIEW,
                   intensity: str = "authors", max_subjects: int | None = None):
    """The figures of the middle slice of each subject of a raw cohort folder (any layout of :mod:`u2ad_core.data.io`).

    By default in the authors' view (:data:`AUTHORS_VIEW`, ``intensity="authors"``: their
    pixel size, field of view and normalisation, as the real references), so that every figure
    compares. ``max_subjects``: the first N subjects (sorted). Subjects that fail to load are
    skipped with their error in the ``error`` column. Returns a DataFrame as
    :func:`measure_dataset` (``view`` = ``"authors"`` or ``"custom"``).
    """

    input_dir = Path(input_dir)
    c = scan_cohort(input_dir)
    subs = c.subjects[:max_subjects] if max_subjects else c.subjects
    name = cohort or input_dir.name
    tag = "authors" if (view == AUTHORS_VIEW and intensity == "authors") else "custom"
    rows = []
    for sf in subs:
        try:
            m = measure_subject(sf, view, intensity)
            err = ""
        except DataError as exc:
            m, err = dict.fromkeys(FIGURES, float("nan")), str(exc)
        rows.append({"cohort": name, "subject": sf.subject, "site": sf.site, "slice_offset": 0,
                     "patient_label": sf.patient_label, "view": tag, "pixel_mm": float(view.pixel_mm), **m,
                     "error": err})
    df = _frame(rows)
    df["error"] = [r["error"] for r in rows]
    return df


def summarise(df, by: Iterable[str] = ("cohort", "site"), figures: Iterable[str] = FIGURES):
    """Median, quartiles and count per group and figure (NaNs ignored).

    ``df``: rows of :func:`measure_dataset` / :func:`measure_cohort`. Returns a long DataFrame:
    the ``by`` columns, figure, median, q25, q75, n (slices where the figure is defined).
    """

    by = list(by)
    out = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for f in figures:
            v = g[f].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            q = np.percentile(v, (25, 50, 75)) if v.size else (np.nan,) * 3
            out.append({**dict(zip(by, key)), "figure": f, "median": q[1], "q25": q[0], "q75": q[2], "n": int(v.size)})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------
# Real references
# --------------------------------------------------------------------------------------
def default_real_dir() -> Path:
    """``../shared/data/real`` beside the project checkout (may not exist)."""

    return repo_root().parent / "shared" / "data" / "real"


def reference_figures(real_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Recompute the real references from ``real_dir`` (default :func:`default_real_dir`).

    The authors' arrays (``u2ad_official/*.npy``) are measured as they are (0.78 mm, their
    normalisation; label 7 ignored); the SCT ``t2`` subject and the PAM50 template are read
    with :mod:`u2ad_core.data.io` and preprocessed in :data:`AUTHORS_VIEW` with the authors'
    normalisation. Returns ``{reference name: {figure: value}}`` for the references of
    :data:`REFERENCES`; raises ``FileNotFoundError`` naming the missing folder.
    """


    real = Path(real_dir) if real_dir is not None else default_real_dir()
    if not real.is_dir():
        raise FileNotFoundError(f"{real}: real MRI folder not found (it lives in ../shared/data/real)")
    out: dict[str, dict[str, float]] = {}
    for ref in REFERENCES:
        path = real / ref["file"]
        if path.suffix == ".npy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)  # label 7 in clinical_dcm_1: known, ignored
                image, lab = read_array(path)
            out[ref["name"]] = measure_slice(image, labels=lab, pixel_mm=AUTHORS_PIXEL_MM)
        else:
            d = path.parent
            if ref["name"] == "sct_t2":
                sf = SubjectFiles("t2", d / "t2.nii.gz", cord=d / "t2_seg-manual.nii.gz",
                                  levels=d / "t2_seg-manual_labeled.nii.gz")
            else:
                sf = SubjectFiles("pam50", d / "PAM50_small_t2.nii.gz", cord=d / "PAM50_small_cord.nii.gz",
                                  csf=d / "PAM50_small_csf_derived.nii.gz", discs=d / "PAM50_small_label_disc.nii.gz",
                                  levels=d / "PAM50_small_levels.nii.gz")
            out[ref["name"]] = measure_subject(sf, AUTHORS_VIEW, "authors")
    return out


_U2AD = "zhibaishouheilab/U2AD @ de704dc1c2f38f755eae0cde99cdd87f606a5bcc"
_SCT = "spinalcordtoolbox/sct_testing_data @ af4c7e8783c9dcf8bcfc6c53b190af46260bb875"
_CORD = ("csf_cord_ratio", "cord_cv", "along_cord_variation", "cord_ap_mm")
_NOISE = ("noise_rel_cord", "noise_std")
_SG_NOTE = ("no cord mask (no cord or CSF figures); bodies merged across discs, spacing from disc centroids; "
            "spine_generic_1..3 are neighbouring slices of one subject")

REFERENCES: tuple[dict[str, Any], ...] = (
    {"name": "clinical_dcm_1", "file": "u2ad_official/clinical_dcm_1.npy",
     "source": f"{_U2AD}, data/private/train/1.npy", "kind": "clinical DCM patient", "pixel_mm": AUTHORS_PIXEL_MM,
     "bands": (*_CORD, *_NOISE, "vertebral_spacing_mm"),
     "note": "mid-sagittal clinical slice with cord, CSF, discs, bodies, herniation; no hyperintensity label "
             "(no lesion figures); label 7 ignored",
     "values": {"csf_cord_ratio": 1.70568, "cord_cv": 0.124913, "along_cord_variation": 0.212086,
                "noise_rel_cord": 0.0385095, "noise_std": 0.00753086, "cord_ap_mm": 4.6875,
                "vertebral_spacing_mm": 21.3757}},
    {"name": "clinical_dcm_3", "file": "u2ad_official/clinical_dcm_3.npy",
     "source": f"{_U2AD}, data/private/train/3.npy", "kind": "clinical DCM patient", "pixel_mm": AUTHORS_PIXEL_MM,
     "bands": ("noise_std", "vertebral_spacing_mm"),
     "note": "off-midline slice (171 cord pixels): cord figures not used for bands; air and bones are",
     "values": {"csf_cord_ratio": 1.35796, "cord_cv": 0.0573683, "noise_rel_cord": 0.0290403, "noise_std": 0.005538,
                "cord_ap_mm": 3.125, "vertebral_spacing_mm": 20.784}},
    {"name": "spine_generic_1", "file": "u2ad_official/spine_generic_1.npy",
     "source": f"{_U2AD}, data/public/train/1.npy", "kind": "healthy (Spine Generic)", "pixel_mm": AUTHORS_PIXEL_MM,
     "bands": ("noise_std", "vertebral_spacing_mm"), "note": _SG_NOTE,
     "values": {"noise_std": 0.00168008, "vertebral_spacing_mm": 16.4046}},
    {"name": "spine_generic_2", "file": "u2ad_official/spine_generic_2.npy",
     "source": f"{_U2AD}, data/public/train/2.npy", "kind": "healthy (Spine Generic)", "pixel_mm": AUTHORS_PIXEL_MM,
     "bands": ("noise_std", "vertebral_spacing_mm"), "note": _SG_NOTE,
     "values": {"noise_std": 0.00155635, "vertebral_spacing_mm": 16.5733}},
    {"name": "spine_generic_3", "file": "u2ad_official/spine_generic_3.npy",
     "source": f"{_U2AD}, data/public/train/3.npy", "kind": "healthy (Spine Generic)", "pixel_mm": AUTHORS_PIXEL_MM,
     "bands": ("noise_std", "vertebral_spacing_mm"), "note": _SG_NOTE,
     "values": {"noise_std": 0.00158303, "vertebral_spacing_mm": 17.7463}},
    {"name": "sct_t2", "file": "sct_testing_data/t2/t2.nii.gz", "source": f"{_SCT}, t2/",
     "kind": "healthy research T2w (1 mm)", "pixel_mm": AUTHORS_PIXEL_MM, "bands": (*_CORD, "vertebral_spacing_mm"),
     "note": "cropped around the cord (no air: no noise figure); no CSF mask (ring estimate); spacing from the "
             "level-labelled cord (levels approximate, README); authors' view and normalisation",
     "values": {"csf_cord_ratio": 2.16603, "cord_cv": 0.127432, "along_cord_variation": 0.163721,
                "cord_ap_mm": 8.59375, "vertebral_spacing_mm": 15.9604}},
    {"name": "pam50", "file": "sct_testing_data/template/PAM50_small_t2.nii.gz", "source": f"{_SCT}, template/",
     "kind": "template (average of 50 healthy)", "pixel_mm": AUTHORS_PIXEL_MM,
     "bands": ("csf_cord_ratio", "cord_ap_mm", "vertebral_spacing_mm"),
     "note": "noise-free average, straight cord: CV, along-cord variation and noise not used for bands; spacing "
             "from the disc labels; authors' view and normalisation",
     "values": {"csf_cord_ratio": 2.6656, "cord_cv": 0.0587692, "along_cord_variation": 0.139466,
                "cord_ap_mm": 7.03125, "vertebral_spacing_mm": 17.0}},
)
"""The real references: file (under ``../shared/data/real``), source repository and commit,
pixel size of the measurement, which figures enter the bands, what the file cannot give, and
the stored values (recomputed by ``tests/test_realism.py``)."""


# --------------------------------------------------------------------------------------
# Bands and the comparison
# --------------------------------------------------------------------------------------
BAND_RULES: dict[str, tuple[str, float, float, str]] = {
    # figure: (kind, low, high, why). "rel": [real min * low, real max * high]; "abs": [min - low, max + high]
    "csf_cord_ratio": ("rel", 1 / 1.25, 1.25, "real range widened by 25 % (the ratio depends on TE/TR and scanner)"),
    "cord_cv": ("rel", 0.5, 1.5, "real range widened by 50 % (texture + noise; two references)"),
    "along_cord_variation": ("rel", 0.5, 1.5, "real range widened by 50 % (two references)"),
    "noise_rel_cord": ("rel", 0.5, 2.0, "one clinical reference, halved / doubled"),
    "noise_std": ("rel", 0.5, 2.0, "real range halved / doubled (research 3D to clinical 2D scans)"),
    "cord_ap_mm": ("abs", 1.5, 1.5, "real range widened by 1.5 mm (about 2 px at 0.78 mm)"),
    "vertebral_spacing_mm": ("rel", 0.85, 1.15, "real range widened by 15 %"),
}
"""How each figure's band is made from the references that enter it (``REFERENCES[i]["bands"]``)."""

LESION_BANDS: dict[str, str] = {
    "lesion_z": "project band: from 0.5 (a faint, fuzzy Chen type 1 lesion: a judgement) to the CSF level, "
                "(csf_cord_ratio - 1) / cord_cv of clinical_dcm_1 (an intense type 2 lesion approaches CSF signal)",
    "lesion_peak_percentile": "project band: the brightest lesion pixel in the top decile of the cord (>= 90)",
    "lesion_area_mm2": "project band: from 5 mm^2 to the longest band length x the widest real cord",
    "lesion_length_mm": "project band: from 3 mm (focal) to 3 x the median real vertebral spacing (multisegmental)",
    "lesion_width_fraction": "project band: 0.2-1; clinical series split lesions at half the cord diameter, both "
                             "occur; a lesion lies within the cord",
}
"""No real file has a lesion label: lesion bands are literature-informed judgements (Chen et al.,
Radiology 2001: type 1 faint / fuzzy, type 2 intense / sharp), stated as such."""

_NO_AIR = {"authors": "no air tile in the crop (zero padding, or a field of view without air)",
           "preset": "not measured in the preset's view: the project's foreground normalisation clips air to 0 "
                     "(measure_cohort's authors' view keeps it)"}
NOT_MEASURED: dict[str, dict[str, str]] = {
    view: {"noise_rel_cord": why, "noise_std": why, **{f: "no lesion in this group" for f in LESION_FIGURES}}
    for view, why in _NO_AIR.items()
}
"""Why a figure is not measured, by view (``"authors"``: :func:`measure_cohort`; ``"preset"``:
:func:`measure_dataset`)."""

KNOWN_DEPARTURES: dict[str, dict[str, str]] = {
    "authors": {},
    "preset": {
        "csf_cord_ratio": "the project's foreground normalisation maps dark tissue (not air) to 0, which raises "
                          "ratios of means; the references use the authors' normalisation (compare in their view)",
        "cord_cv": "std / mean depends on the normalisation offset and the pixel size (anti-aliased resampling "
                   "averages noise); the references are at 0.78 mm in the authors' normalisation",
        "along_cord_variation": "(max - min) / median of block means depends on the normalisation offset; the "
                                "references use the authors' normalisation",
    },
}
"""Explained departures, by view and figure, quoted by :func:`compare_to_bands` for a figure outside its
band. Nothing is listed for the authors' view: a departure there is a calibration target."""


def reference_table():
    """The stored references as a DataFrame: name, kind, file, source, pixel_mm, figures for
    bands, note, then one column per figure (NaN where the file cannot give it)."""

    rows = []
    for r in REFERENCES:
        rows.append({"name": r["name"], "kind": r["kind"], "file": r["file"], "source": r["source"],
                     "pixel_mm": r["pixel_mm"], "bands": ", ".join(r["bands"]), "note": r["note"],
                     **{f: r["values"].get(f, float("nan")) for f in FIGURES}})
    return pd.DataFrame(rows)


def _ref_values(fig: str) -> dict[str, float]:
    return {r["name"]: r["values"][fig] for r in REFERENCES
            if fig in r["bands"] and np.isfinite(r["values"].get(fig, np.nan))}


def bands():
    """The band of every figure: DataFrame with figure, lo, hi, real_min, real_max, references, rule."""

    rows = []
    for fig, (kind, a, b, why) in BAND_RULES.items():
        v = _ref_values(fig)
        lo_r, hi_r = min(v.values()), max(v.values())
        lo, hi = (lo_r * a, hi_r * b) if kind == "rel" else (lo_r - a, hi_r + b)
        rows.append({"figure": fig, "lo": lo, "hi": hi, "real_min": lo_r, "real_max": hi_r,
                     "references": ", ".join(f"{k} {x:.3g}" for k, x in v.items()), "rule": why})
    dcm = next(r for r in REFERENCES if r["name"] == "clinical_dcm_1")["values"]
    spacing = float(np.median(list(_ref_values("vertebral_spacing_mm").values())))
    ap_max = max(_ref_values("cord_ap_mm").values())
    les = {
        "lesion_z": (0.5, (dcm["csf_cord_ratio"] - 1) / dcm["cord_cv"]),
        "lesion_peak_percentile": (90.0, 100.0),
        "lesion_length_mm": (3.0, 3 * spacing),
        "lesion_area_mm2": (5.0, 3 * spacing * ap_max),
        "lesion_width_fraction": (0.2, 1.0),
    }
    for fig in LESION_FIGURES:
        lo, hi = les[fig]
        rows.append({"figure": fig, "lo": lo, "hi": hi, "real_min": np.nan, "real_max": np.nan,
                     "references": "none (no real lesion label)", "rule": LESION_BANDS[fig]})
    return pd.DataFrame(rows).set_index("figure").loc[list(FIGURES)].reset_index()


def compare_to_bands(summary, view: str = "authors", departures: Mapping[str, str] | None = None):
    """Phantom beside real: each row of ``summary`` (:func:`summarise`) with its figure's band.

    Adds lo, hi, real_min, real_max, references, rule, status (``"inside band"``,
    ``"outside band"`` or ``"not measured"``: judged on the group's median) and reason (why a
    figure is not measured, or the known, explained departure of a figure outside its band:
    ``departures``, default ``KNOWN_DEPARTURES[view]``; empty when none is known).
    ``view``: ``"authors"`` (:func:`measure_cohort`) or ``"preset"`` (:func:`measure_dataset`).
    """
    if view not in KNOWN_DEPARTURES:
        raise ValueError(f"compare_to_bands: view must be one of {sorted(KNOWN_DEPARTURES)}, got {view!r}")
    dep = KNOWN_DEPARTURES[view] if departures is None else departures
    why_not = NOT_MEASURED[view]
    b = bands().set_index("figure")
    out = summary.join(b, on="figure")
    med = out["median"].to_numpy(np.float64)
    ok = np.isfinite(med)
    inside = ok & (med >= out["lo"].to_numpy()) & (med <= out["hi"].to_numpy())
    out["status"] = np.where(~ok, "not measured", np.where(inside, "inside band", "outside band"))
    out["reason"] = [why_not.get(f, "") if s == "not measured" else (dep.get(f, "") if s == "outside band" else "")
                     for f, s in zip(out["figure"], out["status"])]
    return out
