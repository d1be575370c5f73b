"""Detection protocol (paper 4.2-4.3, Appendix F; method.md section 6) and the other metrics.

Input: the scores table of :func:`u2ad_core.method.scoring.score_dataset` (one row per slice;
columns ``subject``, ``patient_label``, ``lesion_segments``, ``patient_score``, ``C2-3`` ...
``C7-T1``). :func:`patient_table` reduces it to one row per patient (when a subject has
several slices, the slice with the highest patient score is used, with its segments);
patients with an unknown label (-1) are left out.

Cross-validation (:func:`cross_validate`)
----------------------------------------
Patients are split into ``n_folds`` folds with :class:`sklearn.model_selection.StratifiedKFold`
(shuffled, ``random_state = seed + repeat``), so positives are spread over the folds; with
fewer positives than folds (the sparse cohort) some test folds have none (sklearn warns; the
warning is captured and the number of such folds is reported). The whole split is repeated
``n_repeats`` times (paper Appendix F: 20).

*Patient level.* A patient is predicted positive when ``patient_score >= threshold``. The
threshold is chosen on the four tuning folds as **the highest threshold that keeps
sensitivity >= 0.9** there (:func:`threshold_at_sensitivity`: the ``ceil(0.9 P)``-th highest
positive score, P = tuning positives), then applied to the test fold: accuracy, F1,
sensitivity, specificity (scikit-learn, ``zero_division=nan``). A metric whose denominator is
zero in a fold is NaN for that fold: sensitivity and AUROC in a test fold without positives,
F1 = 2TP / (2TP + FP + FN) when there is no positive *and* nothing is flagged (with a false
alarm it is 0), specificity without negatives. NaN folds are left out of the mean ± std and
counted (``n_nan`` in :meth:`CVResult.summary`). When the tuning folds hold no positive at all the threshold is
NaN and every patient metric of that fold is NaN. A patient without a score (NaN: a slice
without cord pixels) is never flagged and is left out of the threshold choice; ``settings``
counts them (``n_unscored``, ``n_unscored_positive``) and a warning names them.

*Segment level* (:func:`segment_confusion`): each patient contributes its top-scoring
segment (argmax of ``C2-3`` ... ``C7-T1``; a patient without any segment score contributes
nothing but, if it is a lesion patient, one FN) and that segment is flagged when its score
``>= threshold``. The counting rule, ``rule="strict"`` (default):

=================================  =====================  =======================
patient / top segment              flagged (>= thr)       not flagged
=================================  =====================  =======================
lesion patient, top in its lesions  TP                     FN
lesion patient, top elsewhere       FP **and** FN          FN
normal patient                      FP                     TN
=================================  =====================  =======================

so recall = fraction of lesion patients whose lesion was flagged *at the right segment*, and
a right patient with a wrong segment is punished twice (a false alarm where there is nothing,
and a missed lesion). ``rule="item"`` is the literal reading of the paper (the top segment
is one item, positive when it is one of the patient's lesion segments): TP / FP / FN / TN of
that item only, so a lesion patient whose top segment is elsewhere counts FP when flagged
and TN when not. Two thresholds are reported side by side: the paper's, chosen for the best
F1 **on the test fold itself** (optimistic; ``segment_*``), and an honest one chosen for the
best F1 on the four tuning folds (``segment_*_honest``). Ties in F1 go to the highest
threshold. Threshold candidates are the observed top-segment scores and +inf (flag nothing).

Summaries are the mean ± std (ddof 1) over all ``n_repeats x n_folds`` test folds, which
matches the paper's per-fold spread (Table 1) and uses every repeat;
:meth:`CVResult.repeat_means` gives one mean per repeat (Appendix F box plots).

Other metrics: patient AUROC / AUPRC (:func:`threshold_free`); label-free model selection,
Brainomaly's AUCp (:func:`aucp`); pixel AUROC / AUPRC / best Dice on the pseudo-anomaly set
(:func:`pixel_metrics`), AUPRO (:func:`aupro`, :func:`pro_curve`), Dice at a given threshold
(:func:`dice_at_threshold`), at a threshold chosen on the training folds or at a fixed
false-positive rate (:func:`threshold_at_fpr`, :func:`dice_cv`); reconstruction SSIM / PSNR /
MSE in the ROI and mean variance (:func:`reconstruction_metrics`).

Pixel metrics pool the ROI pixels of all slices; a pixel is flagged when its map value is
``>= threshold``; a NaN map value counts as 0; lesion pixels outside the ROI are ignored.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from u2ad_core.core.labels import SEGMENTS, parse_segments

__all__ = [
    "TABLE1_COLUMNS",
    "METRICS",
    "CVResult",
    "patient_table",
    "threshold_at_sensitivity",
    "fold_metrics",
    "binary_metrics",
    "segment_confusion",
    "segment_metrics",
    "best_f1_threshold",
    "stratified_folds",
    "cross_validate",
    "threshold_free",
    "format_mean_std",
    "table1",
    "pixel_metrics",
    "best_dice_threshold",
    "dice_at_threshold",
    "threshold_at_fpr",
    "dice_cv",
    "pro_curve",
    "aupro",
    "aucp",
    "aucp_reference_splits",
    "rank_correlation",
    "patient_scores",
    "reconstruction_metrics",
    "peak_in_lesion_fraction",
    "compare",
]

TABLE1_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Patient-level", "Accuracy", "patient_accuracy"),
    ("Patient-level", "F1", "patient_f1"),
    ("Patient-level", "Specificity", "patient_specificity"),
    ("Segment-level", "F1", "segment_f1"),
    ("Segment-level", "Recall", "segment_recall"),
    ("Segment-level", "Specificity", "segment_specificity"),
)
"""(group, column, metric key) of the paper's Table 1."""

METRICS: tuple[str, ...] = (
    "patient_accuracy", "patient_f1", "patient_sensitivity", "patient_specificity",
    "patient_auroc", "patient_auprc",
    "segment_f1", "segment_recall", "segment_specificity", "segment_precision",
    "segment_f1_honest", "segment_recall_honest", "segment_specificity_honest",
    "segment_precision_honest",
)


# --------------------------------------------------------------------------------------
# Per-patient table
# --------------------------------------------------------------------------------------
def patient_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per patient with a known label, from a scores table (one row per slice).

    Columns: subject, label (0/1), score (patient score), top_segment ('' if none),
    top_score, lesion_segments, top_is_lesion (bool). With several slices per subject the
    slice with the highest patient score is kept.
    """
    required = {"subject", "patient_label", "lesion_segments", "patient_score", *SEGMENTS}
    missing = required - set(scores.columns)
    if missing:
        raise KeyError(f"scores table lacks columns {sorted(missing)}; got {list(scores.columns)}")
    df = scores.copy()
    df = df[df["patient_label"].astype(int) >= 0]
    if df.empty:
        raise ValueError("no patient with a known label (patient_label 0 or 1) in the scores table")
    df = df.assign(_s=df["patient_score"].astype(float).fillna(-np.inf))
    df = df.sort_values(["subject", "_s"], ascending=[True, False], kind="stable")
    df = df.drop_duplicates("subject", keep="first").drop(columns="_s")
    seg = df[list(SEGMENTS)].to_numpy(dtype=np.float64)
    has = np.isfinite(seg).any(1)
    idx = np.where(np.isfinite(seg), seg, -np.inf).argmax(1)
    top = np.where(has, np.array(SEGMENTS, dtype=object)[idx], "")
    top_score = np.where(has, seg[np.arange(len(seg)), idx], np.nan)
    lesions = [parse_segments(str(s) if isinstance(s, str) else "") for s in df["lesion_segments"]]
    top_is_lesion = np.array([t != "" and t in les for t, les in zip(top, lesions)], dtype=bool)
    return pd.DataFrame({
        "subject": df["subject"].astype(str).to_numpy(),
        "label": df["patient_label"].astype(int).to_numpy(),
        "score": df["patient_score"].astype(float).to_numpy(),
        "top_segment": top.astype(str),
        "top_score": top_score,
        "lesion_segments": [";".join(les) for les in lesions],
        "top_is_lesion": top_is_lesion,
    }).reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Thresholds and counts
# --------------------------------------------------------------------------------------
def threshold_at_sensitivity(scores: np.ndarray, labels: np.ndarray, sensitivity: float = 0.9) -> float:
    """Highest threshold ``t`` with sensitivity ``>= sensitivity`` for the rule ``score >= t``.

    ``t`` = the ``ceil(sensitivity * P)``-th highest score among the P positives that have a
    score. A positive without one (NaN or infinite: e.g. a slice without cord pixels) cannot be
    reached by any threshold, so it is left out of the choice (otherwise ``t`` would become
    -inf and flag every patient); it still counts as a miss wherever the threshold is applied,
    and :func:`cross_validate` counts such patients. Returns NaN when no positive has a score.
    """
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"sensitivity must be in (0, 1], got {sensitivity!r}")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    pos = scores[labels == 1]
    pos = np.sort(pos[np.isfinite(pos)])[::-1]
    if len(pos) == 0:
        return float("nan")
    m = max(1, math.ceil(sensitivity * len(pos) - 1e-9))
    return float(pos[m - 1])


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def _no_score_lowest(scores) -> np.ndarray:
    """Scores as float64 with every non-finite one (no score) below the lowest finite one."""
    s = np.asarray(scores, dtype=np.float64)
    fin = np.isfinite(s)
    return np.where(fin, s, (s[fin].min() - 1.0) if fin.any() else 0.0)


def binary_metrics(labels: np.ndarray, pred: np.ndarray, scores: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, F1, sensitivity, specificity (scikit-learn, ``zero_division=nan``) and,
    when ``scores`` is given and both classes are present, AUROC and AUPRC."""
    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score,
                                 recall_score, roc_auc_score)

    y = np.asarray(labels).astype(int)
    p = np.asarray(pred).astype(int)
    out = {
        "accuracy": float(accuracy_score(y, p)) if len(y) else float("nan"),
        "f1": float(f1_score(y, p, labels=[0, 1], zero_division=np.nan)) if (y.any() or p.any()) else float("nan"),
        "sensitivity": float(recall_score(y, p, labels=[0, 1], zero_division=np.nan)) if y.any() else float("nan"),
        "specificity": float(recall_score(y, p, labels=[0, 1], pos_label=0, zero_division=np.nan)) if (y == 0).any() else float("nan"),
        "auroc": float("nan"),
        "auprc": float("nan"),
    }
    if scores is not None and y.any() and (y == 0).any():
        s = _no_score_lowest(scores)
        out["auroc"] = float(roc_auc_score(y, s))
        out["auprc"] = float(average_precision_score(y, s))
    return out


def segment_confusion(
    top_score: np.ndarray,
    top_is_lesion: np.ndarray,
    label: np.ndarray,
    threshold: float | np.ndarray,
    rule: str = "strict",
) -> np.ndarray:
    """Segment-level TP, FP, FN, TN for one or several thresholds (counting rule: module doc).

    top_score, top_is_lesion, label: ``(P,)`` per patient; threshold: scalar or ``(T,)``.
    Returns ``(4,)`` or ``(T, 4)`` int counts in the order TP, FP, FN, TN. A patient whose
    ``top_score`` is NaN (no segment) is never flagged.
    """
    if rule not in ("strict", "item"):
        raise ValueError(f"segment rule must be 'strict' or 'item', got {rule!r}")
    s = np.asarray(top_score, dtype=np.float64)
    hit = np.asarray(top_is_lesion, dtype=bool)
    les = np.asarray(label).astype(int) == 1
    thr = np.atleast_1d(np.asarray(threshold, dtype=np.float64))
    flag = np.nan_to_num(s, nan=-np.inf)[None, :] >= thr[:, None]  # (T, P)
    tp = (flag & hit).sum(1)
    if rule == "strict":
        fp = (flag & ~hit).sum(1)
        fn = (les[None, :] & ~(flag & hit)).sum(1)
        tn = (~flag & ~les[None, :]).sum(1)
    else:
        fp = (flag & ~hit).sum(1)
        fn = (~flag & hit).sum(1)
        tn = (~flag & ~hit).sum(1)
    out = np.stack([tp, fp, fn, tn], axis=1)
    return out[0] if np.ndim(threshold) == 0 else out


def segment_metrics(counts: np.ndarray) -> dict[str, float]:
    """F1 = 2TP / (2TP + FP + FN), recall, specificity, precision from TP, FP, FN, TN (NaN
    when a denominator is zero)."""
    tp, fp, fn, tn = (float(c) for c in counts)
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
    }


def best_f1_threshold(top_score, top_is_lesion, label, rule: str = "strict") -> float:
    """Threshold with the best segment F1 on the given patients (ties: the highest threshold).

    Candidates: the observed finite top scores and +inf (flag nothing). Without any lesion
    patient F1 cannot be positive: +inf is returned (flag nothing, best specificity).
    """
    s = np.asarray(top_score, dtype=np.float64)
    if not (np.asarray(label).astype(int) == 1).any():
        return float("inf")
    cand = np.unique(np.concatenate([s[np.isfinite(s)], [np.inf]]))
    c = segment_confusion(s, top_is_lesion, label, cand, rule).astype(np.float64)
    den = 2 * c[:, 0] + c[:, 1] + c[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(den > 0, 2 * c[:, 0] / den, -1.0)
    best = np.flatnonzero(f1 == f1.max())
    return float(cand[best[-1]])


# --------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------
def stratified_folds(labels: np.ndarray, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test-index arrays of a shuffled stratified ``n_folds`` split (sklearn StratifiedKFold).

    With a single class present a plain shuffled KFold is used. The sklearn warning for a
    class with fewer members than folds is silenced here (callers count folds without
    positives). Raises ``ValueError`` when there are fewer patients than folds.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(labels).astype(int)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(y) < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {len(y)} patients")
    x = np.zeros((len(y), 1))
    if len(np.unique(y)) < 2:
        split = KFold(n_folds, shuffle=True, random_state=seed).split(x)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            split = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, y))
    return [np.sort(te) for _, te in split]


@dataclass
class CVResult:
    """Output of :func:`cross_validate`.

    folds: one row per (repeat, fold) with thresholds, counts and every metric;
    patients: the per-patient table that was evaluated; settings: the protocol's parameters.
    """

    folds: pd.DataFrame
    patients: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Per metric: mean, std (ddof 1), n (defined folds), n_nan, over all test folds."""
        rows = {}
        for m in METRICS:
            v = self.folds[m].to_numpy(dtype=np.float64)
            ok = np.isfinite(v)
            rows[m] = {
                "mean": float(v[ok].mean()) if ok.any() else float("nan"),
                "std": float(v[ok].std(ddof=1)) if ok.sum() > 1 else float("nan"),
                "n": int(ok.sum()),
                "n_nan": int((~ok).sum()),
            }
        return pd.DataFrame(rows).T

    def repeat_means(self) -> pd.DataFrame:
        """Mean of each metric over the folds of each repeat (rows = repeats)."""
        return self.folds.groupby("repeat")[list(METRICS)].mean()

    def localisation(self) -> dict[str, float]:
        """Among lesion patients detected at the CV patient threshold (pooled over folds and
        repeats), the fraction whose top segment is one of their lesion segments."""
        det = int(self.folds["n_detected_lesion"].sum())
        hit = int(self.folds["n_detected_lesion_hit"].sum())
        return {"detected": det, "peak_in_lesion": hit, "fraction": _ratio(hit, det)}

    def row(self, protocol: str = "paper", digits: int = 4) -> dict[str, str]:
        """Table 1 cells, ``"mean ± std"`` strings; ``protocol="honest"`` uses the segment
        threshold tuned on the training folds."""
        summ = self.summary()
        out = {}
        for group, col, key in TABLE1_COLUMNS:
            if protocol == "honest" and key.startswith("segment_"):
                key = key + "_honest"
            out[(group, col)] = format_mean_std(summ.loc[key, "mean"], summ.loc[key, "std"], digits)
        return out


def fold_metrics(tune: pd.DataFrame, test: pd.DataFrame, sensitivity: float = 0.9,
                 segment_rule: str = "strict") -> dict[str, Any]:
    """The metrics of one test fold (module doc) with thresholds chosen on the tuning patients.

    tune, test: patient tables (:func:`patient_table`). Used by :func:`cross_validate` (tuning =
    the other folds) and by models trained per fold, whose tuning patients are scored by the
    fold's own model (the supervised detectors: a validation fold, paper Appendix B.2).
    Returns the fold's row: counts, the thresholds, ``patient_*`` and ``segment_*`` (paper:
    segment threshold on the test fold) and ``segment_*_honest`` (on the tuning patients).
    """
    y_tr, y_te = tune["label"].to_numpy(dtype=int), test["label"].to_numpy(dtype=int)
    s_tr, s_te = tune["score"].to_numpy(dtype=np.float64), test["score"].to_numpy(dtype=np.float64)
    hit_te = test["top_is_lesion"].to_numpy(dtype=bool)
    row: dict[str, Any] = {"n_test": len(y_te), "n_test_pos": int(y_te.sum()), "n_tune_pos": int(y_tr.sum()),
                           "n_tune_pos_unscored": int((~np.isfinite(s_tr) & (y_tr == 1)).sum())}
    thr = threshold_at_sensitivity(s_tr, y_tr, sensitivity)
    row["patient_threshold"] = thr
    pred = np.nan_to_num(s_te, nan=-np.inf) >= thr
    m = binary_metrics(y_te, pred, s_te)
    if not np.isfinite(thr):
        m.update({k: float("nan") for k in ("accuracy", "f1", "sensitivity", "specificity")})
    row.update({f"patient_{k}": v for k, v in m.items()})
    det = pred & (y_te == 1)
    row["n_detected_lesion"] = int(det.sum()) if np.isfinite(thr) else 0
    row["n_detected_lesion_hit"] = int((det & hit_te).sum()) if np.isfinite(thr) else 0
    # segment level: paper (best F1 on the test fold) and honest (tuning patients)
    ts_te = test["top_score"].to_numpy(dtype=np.float64)
    for tag, ref in (("", test), ("_honest", tune)):
        sthr = best_f1_threshold(ref["top_score"].to_numpy(dtype=np.float64), ref["top_is_lesion"].to_numpy(dtype=bool),
                                 ref["label"].to_numpy(dtype=int), segment_rule)
        c = segment_confusion(ts_te, hit_te, y_te, sthr, segment_rule)
        row[f"segment_threshold{tag}"] = sthr
        for k, v in segment_metrics(c).items():
            row[f"segment_{k}{tag}"] = v
        for name, v in zip(("tp", "fp", "fn", "tn"), c):
            row[f"segment_{name}{tag}"] = int(v)
    return row


def cross_validate(
    scores: pd.DataFrame,
    n_folds: int = 5,
    n_repeats: int = 20,
    sensitivity: float = 0.9,
    seed: int = 0,
    segment_rule: str = "strict",
) -> CVResult:
    """Repeated stratified k-fold evaluation of a scores table (protocol: module docstring).

    scores: the table of :func:`u2ad_core.method.scoring.score_dataset` (or :func:`patient_table`'s
    output). Repeat r uses fold seed ``seed + r``.
    """
    pt = scores if {"label", "score", "top_score"} <= set(scores.columns) else patient_table(scores)
    y = pt["label"].to_numpy(dtype=int)
    s = pt["score"].to_numpy(dtype=np.float64)
    unscored = ~np.isfinite(s)  # no patient score (e.g. no cord pixel): never flagged, flagged here
    rows = []
    for r in range(int(n_repeats)):
        folds = stratified_folds(y, n_folds, seed + r)
        for f, te in enumerate(folds):
            tr = np.setdiff1d(np.arange(len(y)), te)
            rows.append({"repeat": r, "fold": f, **fold_metrics(pt.iloc[tr], pt.iloc[te], sensitivity, segment_rule)})
    folds_df = pd.DataFrame(rows)
    settings = {"n_folds": n_folds, "n_repeats": n_repeats, "sensitivity": sensitivity,
                "seed": seed, "segment_rule": segment_rule, "n_patients": int(len(y)),
                "n_positive": int(y.sum()),
                "n_test_folds_without_positive": int((folds_df["n_test_pos"] == 0).sum()),
                "n_unscored": int(unscored.sum()), "n_unscored_positive": int((unscored & (y == 1)).sum()),
                "unscored_subjects": pt["subject"][unscored].astype(str).tolist()}
    if unscored.any():
        warnings.warn(f"cross_validate: {int(unscored.sum())} patient(s) without a score "
                      f"({int((unscored & (y == 1)).sum())} with lesions): "
                      f"{', '.join(settings['unscored_subjects'][:5])}; they are never flagged and are "
                      "left out of the patient-threshold choice", stacklevel=2)
    return CVResult(folds=folds_df, patients=pt, settings=settings)


def threshold_free(scores: pd.DataFrame) -> dict[str, float]:
    """Patient AUROC and AUPRC (scikit-learn) over all labelled patients, plus the
    prevalence (the AUPRC of a random ranking)."""
    pt = scores if {"label", "score"} <= set(scores.columns) else patient_table(scores)
    m = binary_metrics(pt["label"], np.zeros(len(pt)), pt["score"])
    return {"auroc": m["auroc"], "auprc": m["auprc"], "prevalence": float(pt["label"].mean()),
            "n": int(len(pt)), "n_positive": int(pt["label"].sum())}


def peak_in_lesion_fraction(scores: pd.DataFrame) -> float:
    """Fraction of lesion patients whose top-scoring segment is one of their lesion segments."""
    pt = scores if "top_is_lesion" in scores.columns else patient_table(scores)
    les = pt[pt["label"] == 1]
    return _ratio(les["top_is_lesion"].sum(), len(les))


# --------------------------------------------------------------------------------------
# Comparing two rows: words follow numbers
# --------------------------------------------------------------------------------------
def compare(a_mean: float, a_std: float, b_mean: float, b_std: float, higher_is_better: bool = True) -> str:
    """Is A better or worse than B, given how much each varies from fold to fold?

    a_mean, a_std, b_mean, b_std: a metric's mean and standard deviation over the test folds
    (e.g. ``CVResult.summary()``) for rows A and B. Returns ``"better"`` or ``"worse"`` (for A)
    only when the gap ``|a_mean - b_mean|`` exceeds the larger of the two stds, else
    ``"no clear difference"``; an unknown std (NaN) counts as no clear difference, a NaN mean
    gives ``"not measured"``. ``higher_is_better=False`` for errors (MSE, variance, time).
    """
    a, b = float(a_mean), float(b_mean)
    if not (math.isfinite(a) and math.isfinite(b)):
        return "not measured"
    stds = (float(a_std), float(b_std))
    if not all(math.isfinite(v) for v in stds) or abs(a - b) <= max(stds):
        return "no clear difference"
    return "better" if (a > b) == bool(higher_is_better) else "worse"


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------
def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``0.7740 ± 0.0124``; ``nan`` parts print as ``n/a``."""
    f = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"  # noqa: E731
    return f"{f(mean)} ± {f(std)}"


def table1(results: dict[str, CVResult], protocol: str = "paper", digits: int = 4) -> pd.DataFrame:
    """Paper Table 1 layout: rows = ``results`` keys (e.g. ``"S3 U2AD"``), two-level columns
    (Patient-level: Accuracy, F1, Specificity; Segment-level: F1, Recall, Specificity),
    cells ``"mean ± std"``."""
    cols = pd.MultiIndex.from_tuples([(g, c) for g, c, _ in TABLE1_COLUMNS])
    data = [[res.row(protocol, digits)[c] for c in cols] for res in results.values()]
    return pd.DataFrame(data, index=list(results.keys()), columns=cols)


# --------------------------------------------------------------------------------------
# Pixel and reconstruction metrics
# --------------------------------------------------------------------------------------
def pixel_metrics(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray) -> dict[str, float]:
    """Pixel AUROC, AUPRC and best Dice over thresholds, pooled over all ROI pixels.

    maps: ``(N, H, W)`` anomaly maps; lesion: ``(N, H, W)`` ground-truth mask; roi: ``(N, H, W)``
    (only ROI pixels are scored). Best Dice = max over thresholds of 2PR / (P + R) from
    :func:`sklearn.metrics.precision_recall_curve` (the Dice of the pooled pixel set).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

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
    from sklearn.metrics import precision_recall_curve

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
    from scipy import ndimage

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


# --------------------------------------------------------------------------------------
# Label-free model selection
# --------------------------------------------------------------------------------------
def aucp(healthy_scores, clinical_scores) -> float:
    """Brainomaly's AUCp (Siddiquee et al., WACV 2023): the AUROC of the scores with the
    healthy reference scans as negatives and the unlabelled clinical scans as positives.

    No lesion label is used, so it can choose a model (an epoch, a masking ratio) on the
    clinical cohort itself: a detector that separates the clinical scans from healthy ones
    scores high. healthy_scores: ``(H,)``, clinical_scores: ``(C,)`` (e.g. patient scores);
    ties count half (Mann-Whitney); a non-finite score (no score) ranks lowest, as in
    :func:`binary_metrics`. Raises ``ValueError`` when either set is empty.
    """
    from sklearn.metrics import roc_auc_score

    h = np.asarray(healthy_scores, dtype=np.float64).ravel()
    c = np.asarray(clinical_scores, dtype=np.float64).ravel()
    if h.size == 0 or c.size == 0:
        raise ValueError(f"aucp needs healthy and clinical scores; got {h.size} healthy and {c.size} clinical")
    y = np.r_[np.zeros(h.size, int), np.ones(c.size, int)]
    return float(roc_auc_score(y, _no_score_lowest(np.r_[h, c])))



def aucp_reference_splits(scores, labels, other_reference=None, n_splits: int = 20,
                          seed: int = 0, n_reference: int | None = None) -> pd.DataFrame:
    """AUCp with a same-scanner reference, over random (reference, pool) splits of one cohort.

    A cohort without healthy scans of its own scanner can still lend AUCp a reference: a random
    half of its lesion-free patients, read as normal and held out; the rest of the cohort is the
    unlabelled pool (``n_reference`` patients instead of half, when given). scores, labels:
    ``(P,)`` patient scores and labels (0/1) in one order;
    other_reference: ``(H,)`` scores of healthy scans from elsewhere (optional). Returns one row
    per split: ``aucp_same_scanner`` (reference half vs pool), ``aucp_other_reference`` (the
    other reference vs the same pool; NaN without one) and ``auroc_labels`` (the pool's AUROC
    with its labels, what AUCp stands in for). The splits depend only on the labels and the
    seed, so every model scored on the same patients gets the same ones.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    neg = np.flatnonzero(labels == 0)
    if len(neg) < 2 or not (labels == 1).any():
        raise ValueError(f"a reference split needs >= 2 lesion-free and >= 1 lesion patients; "
                         f"got {len(neg)} and {int((labels == 1).sum())}")
    n_ref = len(neg) // 2 if n_reference is None else int(n_reference)
    if not 1 <= n_ref < len(neg) + 1:
        raise ValueError(f"n_reference must be 1..{len(neg)} (the lesion-free patients); got {n_reference}")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_splits):
        ref = rng.choice(neg, n_ref, replace=False)
        pool = np.setdiff1d(np.arange(len(scores)), ref)
        ps, pl = scores[pool], labels[pool]
        rows.append({"aucp_same_scanner": aucp(scores[ref], ps),
                     "aucp_other_reference": (aucp(other_reference, ps) if other_reference is not None
                                              else float("nan")),
                     "auroc_labels": aucp(ps[pl == 0], ps[pl == 1])})
    return pd.DataFrame(rows)


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two score lists; NaN when either is constant."""
    a, b = pd.Series(list(a), dtype=float), pd.Series(list(b), dtype=float)
    if a.nunique() < 2 or b.nunique() < 2:
        return float("nan")
    return float(a.rank().corr(b.rank()))


def patient_scores(table: pd.DataFrame, subjects) -> np.ndarray:
    """``(P,)`` patient scores of a scores table (:func:`patient_table`) in the order of ``subjects``."""
    return patient_table(table).set_index("subject").loc[list(subjects), "score"].to_numpy(dtype=float)

def reconstruction_metrics(
    target: np.ndarray,
    recon: np.ndarray,
    roi: np.ndarray,
    eu: np.ndarray | None = None,
    data_range: float = 1.0,
) -> pd.DataFrame:
    """Per image: SSIM, PSNR, MSE inside the ROI and mean variance (EU) inside the ROI.

    target, recon, roi, eu: ``(N, H, W)``. SSIM is
    :func:`skimage.metrics.structural_similarity` (``data_range=1``, full map) averaged over
    the ROI pixels; MSE is the mean squared error over the ROI; PSNR =
    ``10 log10(data_range^2 / MSE)`` (inf when MSE is 0). NaN for an image without ROI.
    """
    from skimage.metrics import structural_similarity

    target = np.asarray(target, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    roi = np.asarray(roi) > 0
    if target.ndim == 2:
        target, recon, roi = target[None], recon[None], roi[None]
        eu = None if eu is None else np.asarray(eu)[None]
    if not (target.shape == recon.shape == roi.shape):
        raise ValueError(f"target {target.shape}, recon {recon.shape}, roi {roi.shape} differ")
    rows = []
    for i in range(len(target)):
        m = roi[i]
        if not m.any():
            rows.append({"ssim": np.nan, "psnr": np.nan, "mse": np.nan, "variance": np.nan})
            continue
        _, smap = structural_similarity(target[i], recon[i], data_range=data_range, full=True)
        mse = float(((target[i] - recon[i])[m] ** 2).mean())
        psnr = float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))
        var = float(np.asarray(eu[i], dtype=np.float64)[m].mean()) if eu is not None else np.nan
        rows.append({"ssim": float(smap[m].mean()), "psnr": psnr, "mse": mse, "variance": var})
    return pd.DataFrame(rows)
