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

Also here: patient AUROC / AUPRC (:func:`threshold_free`), the share of lesion patients whose
top segment is a lesion segment (:func:`peak_in_lesion_fraction`) and the Table 1 layout
(:func:`table1`). Pixel metrics are in :mod:`u2ad_core.metrics.pixel`, label-free selection in
:mod:`u2ad_core.metrics.selection`, reconstruction quality in
:mod:`u2ad_core.metrics.reconstruction`, the verdict rule in :mod:`u2ad_core.metrics.verdicts`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, recall_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from u2ad_core.core.labels import SEGMENTS, parse_segments
from u2ad_core.metrics.verdicts import format_mean_std

__all__ = [
    "TABLE1_COLUMNS",
    "METRICS",
    "CVResult",
    "patient_table",
    "scores_by_subject",
    "threshold_at_sensitivity",
    "fold_metrics",
    "binary_metrics",
    "segment_confusion",
    "segment_metrics",
    "best_f1_threshold",
    "stratified_folds",
    "cross_validate",
    "threshold_free",
    "peak_in_lesion_fraction",
    "table1",
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


def scores_by_subject(table: pd.DataFrame, subjects) -> np.ndarray:
    """``(P,)`` patient scores of a scores table (:func:`patient_table`) in the order of ``subjects``
    (``(P,)`` subject ids); ``KeyError`` for a subject without a labelled row."""
    return patient_table(table).set_index("subject").loc[list(subjects), "score"].to_numpy(dtype=float)


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

    def row(self, protocol: str = "paper", digits: int = 3) -> dict[str, str]:
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


def table1(results: dict[str, CVResult], protocol: str = "paper", digits: int = 3) -> pd.DataFrame:
    """Paper Table 1 layout: rows = ``results`` keys (e.g. ``"S3 U2AD"``), two-level columns
    (Patient-level: Accuracy, F1, Specificity; Segment-level: F1, Recall, Specificity),
    cells ``"mean ± std"``."""
    cols = pd.MultiIndex.from_tuples([(g, c) for g, c, _ in TABLE1_COLUMNS])
    data = [[res.row(protocol, digits)[c] for c in cols] for res in results.values()]
    return pd.DataFrame(data, index=list(results.keys()), columns=cols)
