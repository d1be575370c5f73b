"""Morphology-only baseline: how much of a detection score is anatomy (cord compression)?

On the DCM phantom, as in degenerative cervical myelopathy, hyperintensities sit at compressed
levels, and lesion patients were drawn with more severe compression. A score that never looks
at intensities but only at the cord and CSF masks can therefore separate lesion patients from
the others. This method measures how far: it reads **only** ``cord`` and ``csf``, never the
image (its :class:`~u2ad_core.baselines.common.Method` declares ``inputs=("cord", "csf")``,
so :func:`~u2ad_core.baselines.common.anomaly_maps` does not even pass the images), and its
map goes through exactly the same scoring and cross-validation as every other method.

Definitions, for N slices of H x W (rows = superior-inferior, columns = anterior-posterior):

- ``w`` ``(N, H)``: per-row AP width of the thecal contents, the number of pixels of the row
  in ``cord | csf``; defined (finite) only on rows that contain a cord pixel, NaN elsewhere.
  Widths are counted along image rows, so an oblique (curved) cord reads a little wider.
- ``m`` ``(N,)``: the median of ``w`` over the defined rows (the slice's normal width).
- local compression ``c = max(0, 1 - w / m)`` ``(N, H)``: 0 at normal width or wider, 1 where
  nothing is left; then smoothed along the rows with a Gaussian of ``sigma`` rows by
  normalised convolution over the defined rows (undefined rows neither contribute nor
  receive a value).
- map ``(N, H, W)`` float32: ``c`` of the pixel's row on every cord pixel, 0 elsewhere. Through
  the shared scoring (:func:`~u2ad_core.baselines.common.score_anomaly_maps`) its curve peaks
  at the most compressed level and the patient score is the most severe (smoothed)
  compression within ``score.patient_span``.
- :func:`compression_scores` ``(N,)``: the plain patient-level score
  ``1 - percentile_5(w) / median(w)``, no smoothing, no scoring pipeline ("compression-only
  AUROC" of a cohort).

Missing masks: a slice without any cord pixel has an all-zero map (the shared scoring then
gives it a NaN patient score) and a NaN :func:`compression_scores`; an all-zero CSF mask
(unknown CSF) leaves the width of the cord alone. Data without a ``csf`` field is refused
with an error by :func:`~u2ad_core.baselines.common.anomaly_maps`.

:func:`versus_anatomy` turns fold means and stds of patient AUROC into the words the book
uses: a method "beats anatomy" only when its mean AUROC exceeds the morphology's by more than
the larger of the two fold stds ("below anatomy" symmetrically; otherwise "no clear
difference").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from u2ad_core.metrics import compare, format_mean_std

from .common import Method

__all__ = ["MorphologyConfig", "row_widths", "compression_profile", "morphology_maps", "compression_scores",
           "versus_anatomy", "compare_with_anatomy", "anatomy_sentence", "LABEL", "METHOD"]

LABEL = "Morphology only"


@dataclass(frozen=True)
class MorphologyConfig:
    """Settings of the morphology-only baseline (project choices; not in the paper)."""

    sigma: float = 1.0  # rows, Gaussian smoothing of the compression profile along the cord
    percentile: float = 5.0  # compression_scores: 1 - P(percentile) / median of the widths


def _masks(cord: np.ndarray, csf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cord = np.asarray(cord) > 0
    csf = np.asarray(csf) > 0
    cord = cord[None] if cord.ndim == 2 else cord
    csf = csf[None] if csf.ndim == 2 else csf
    if cord.ndim != 3 or csf.shape != cord.shape:
        raise ValueError(f"cord {cord.shape} and csf {csf.shape} must both be (N, H, W) (or (H, W))")
    return cord, csf


def row_widths(cord: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """Per-row width of ``cord | csf`` in pixels, ``(N, H)`` float64, NaN on rows without cord.

    cord, csf: ``(N, H, W)`` (or ``(H, W)``) masks, any dtype (non-zero = inside).
    """
    cord, csf = _masks(cord, csf)
    w = (cord | csf).sum(2).astype(np.float64)
    return np.where(cord.any(2), w, np.nan)


def _median(w: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN rows (no cord) give NaN, as documented
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(w, axis=1)


def compression_profile(cord: np.ndarray, csf: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Local compression along the cord, ``(N, H)`` float64: ``max(0, 1 - w / median(w))``,
    Gaussian-smoothed over ``sigma`` rows (normalised convolution over the rows with cord;
    ``sigma <= 0`` switches smoothing off). NaN on rows without cord."""
    w = row_widths(cord, csf)
    valid = np.isfinite(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.clip(1.0 - w / _median(w)[:, None], 0.0, None)
    c = np.where(valid, c, 0.0)
    if sigma and sigma > 0:
        num = ndimage.gaussian_filter1d(c, float(sigma), axis=1, mode="constant")
        den = ndimage.gaussian_filter1d(valid.astype(np.float64), float(sigma), axis=1, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            c = num / den
    return np.where(valid, c, np.nan)


def morphology_maps(cord: np.ndarray, csf: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Anomaly maps ``(N, H, W)`` float32 from the masks alone: each cord pixel gets its row's
    smoothed compression (:func:`compression_profile`), every other pixel 0."""
    cord_b, _ = _masks(cord, csf)
    prof = np.nan_to_num(compression_profile(cord, csf, sigma), nan=0.0)
    return np.where(cord_b, prof[:, :, None], 0.0).astype(np.float32)


def compression_scores(cord: np.ndarray, csf: np.ndarray, percentile: float = 5.0) -> np.ndarray:
    """Patient-level compression ``1 - percentile_p(w) / median(w)`` per slice, ``(N,)``
    float64 (``p`` = ``percentile``, default 5; ``w`` = :func:`row_widths` over the rows with
    cord); NaN for a slice without cord. No intensity is used."""
    w = row_widths(cord, csf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanpercentile(w, float(percentile), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - lo / _median(w)


# --------------------------------------------------------------------------------------
# Words from numbers: a method against the morphology-only score
# --------------------------------------------------------------------------------------
def versus_anatomy(mean, std, ref_mean: float, ref_std: float) -> np.ndarray:
    """Verdict per method: ``"beats anatomy"`` when ``mean - ref_mean > max(std, ref_std)``,
    ``"below anatomy"`` when ``ref_mean - mean`` exceeds it, else ``"no clear difference"``;
    ``"n/a"`` when a number is missing (:func:`u2ad_core.metrics.compare`'s rule, its words
    renamed). ``mean``, ``std``: fold mean and std of each method's
    patient AUROC, scalars or ``(M,)``; ``ref_*``: the morphology baseline's."""
    mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), mean.shape)
    words = {"better": "beats anatomy", "worse": "below anatomy", "no clear difference": "no clear difference",
             "not measured": "n/a"}
    # the rule of u2ad_core.metrics.compare; an unknown std here means "cannot be compared" (n/a)
    return np.array([words[compare(m, s, ref_mean, ref_std) if np.isfinite(s) and np.isfinite(ref_std)
                           else "not measured"] for m, s in zip(mean, std)], dtype=object)


def compare_with_anatomy(rows: pd.DataFrame, reference: str = LABEL) -> pd.DataFrame:
    """Compare every row of a results table with the morphology row of the same cohort.

    ``rows``: :func:`~u2ad_core.baselines.common.results_row` rows (columns ``cohort``,
    ``strategy``, ``model``, ``patient_auroc_mean``, ``patient_auroc_std``), including one row
    per cohort whose ``model`` is ``reference``. Returns one row per other method: cohort,
    strategy, model, AUROC mean/std, the morphology's, the difference and the verdict of
    :func:`versus_anatomy`.
    """
    need = {"cohort", "strategy", "model", "patient_auroc_mean", "patient_auroc_std"}
    if not need <= set(rows.columns):
        raise ValueError(f"compare_with_anatomy: results rows lack columns {sorted(need - set(rows.columns))}")
    out = []
    for cohort, sub in rows.groupby("cohort", sort=False):
        ref = sub[sub["model"] == reference]
        if len(ref) != 1:
            raise ValueError(f"compare_with_anatomy: cohort {cohort!r} has {len(ref)} rows of {reference!r}, need 1")
        rm, rs = float(ref["patient_auroc_mean"].iloc[0]), float(ref["patient_auroc_std"].iloc[0])
        oth = sub[sub["model"] != reference]
        m = oth["patient_auroc_mean"].to_numpy(dtype=np.float64)
        s = oth["patient_auroc_std"].to_numpy(dtype=np.float64)
        out.append(pd.DataFrame({
            "cohort": cohort, "strategy": oth["strategy"].to_numpy(), "model": oth["model"].to_numpy(),
            "auroc_mean": m, "auroc_std": s, "anatomy_mean": rm, "anatomy_std": rs,
            "difference": m - rm, "verdict": versus_anatomy(m, s, rm, rs)}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def anatomy_sentence(cmp: pd.DataFrame, cohort: str, max_names: int = 6) -> str:
    """One markdown sentence for ``cohort`` from :func:`compare_with_anatomy` output: the
    morphology AUROC (fold mean ± std), then how many of the other rows beat it, show no clear
    difference, or fall below it, naming each with its AUROC difference (a group of more than
    ``max_names`` rows, other than "beats anatomy", is only counted)."""
    sub = cmp[cmp["cohort"] == cohort]
    if not len(sub):
        raise ValueError(f"anatomy_sentence: no comparison rows for cohort {cohort!r}")
    rm, rs = float(sub["anatomy_mean"].iloc[0]), float(sub["anatomy_std"].iloc[0])

    def group(verdict: str, words: str, always: bool = False) -> str:
        s = sub[sub["verdict"] == verdict]
        head = f"{len(s)} {words}"
        if not len(s) or (len(s) > max_names and not always):
            return head
        names = ", ".join(f"{'' if st in ('', 'signal', 'anatomy') else st + ' '}{mo} ({d:+.3f})"
                          for st, mo, d in zip(s["strategy"], s["model"], s["difference"]))
        return f"{head} ({names})"

    text = (f"On `{cohort}` the morphology-only score (cord + CSF widths, no intensity) reaches a patient AUROC of "
            f"**{format_mean_std(rm, rs)}** over the test folds. Of the {len(sub)} other rows, "
            f"{group('beats anatomy', 'beat anatomy', always=True)}; "
            f"{group('no clear difference', 'show no clear difference')}; "
            f"{group('below anatomy', 'are below it')}")
    n_na = int((sub["verdict"] == "n/a").sum())
    text += f"; {group('n/a', 'cannot be compared (AUROC undefined)')}." if n_na else "."
    return text + (" A method beats anatomy only when its mean AUROC exceeds the morphology's by more than the "
                   "larger of the two fold stds.")


METHOD = Method(
    name="morphology", label=LABEL, kind="signal", reference="this project (issue 13): masks only, no intensity",
    sub_config=lambda b: MorphologyConfig(), inputs=("cord", "csf"),
    maps=lambda cord, csf, c: morphology_maps(cord, csf, c.sigma),
)
