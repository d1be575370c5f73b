"""Label-free model selection: Brainomaly's AUCp and its same-scanner reference splits.

:func:`aucp` is the AUROC of healthy reference scans (negatives) against the unlabelled
clinical scans (positives); :func:`aucp_reference_splits` draws the reference from a cohort's
own lesion-free patients; :func:`rank_correlation` compares the orders two selection criteria
give to the same candidates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from u2ad_core.metrics.detection import _no_score_lowest

__all__ = ["aucp", "aucp_reference_splits", "rank_correlation"]


def aucp(healthy_scores, clinical_scores) -> float:
    """Brainomaly's AUCp (Siddiquee et al., WACV 2023): the AUROC of the scores with the
    healthy reference scans as negatives and the unlabelled clinical scans as positives.

    No lesion label is used, so it can choose a model (an epoch, a masking ratio) on the
    clinical cohort itself: a detector that separates the clinical scans from healthy ones
    scores high. healthy_scores: ``(H,)``, clinical_scores: ``(C,)`` (e.g. patient scores);
    ties count half (Mann-Whitney); a non-finite score (no score) ranks lowest, as in
    :func:`binary_metrics`. Raises ``ValueError`` when either set is empty.
    """
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

