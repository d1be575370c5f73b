"""Label-free model selection (metrics.selection): AUCp, its reference splits, rank correlation."""

from __future__ import annotations

import numpy as np
import pytest

from u2ad_core import metrics as E


def test_aucp_hand_cases():
    assert E.aucp([0.1, 0.2], [0.5, 0.9]) == 1.0  # every clinical scan above every healthy one
    assert E.aucp([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert E.aucp([1, 2, 3], [1, 2, 3]) == 0.5  # the same distribution
    # pairs (clinical > healthy): 2.5 beats 1 and 2, 4 beats all three -> 5 of 6
    assert E.aucp([1, 2, 3], [2.5, 4]) == pytest.approx(5 / 6)
    # a tie counts half: 2 vs 1 -> 1, 2 vs 2 -> 0.5, 3 vs both -> 2; 3.5 of 4
    assert E.aucp([1, 2], [2, 3]) == pytest.approx(0.875)
    assert E.aucp([1, 2], [np.nan, 3]) == pytest.approx(0.5)  # no score ranks lowest
    with pytest.raises(ValueError, match="healthy and clinical"):
        E.aucp([], [1.0])


def test_aucp_reference_splits_hand_case():
    # 10 lesion-free patients scoring 0 (ties), 5 lesion patients scoring 1: each split holds out
    # 5 lesion-free as the reference; the pool is 5 lesion-free + 5 lesion patients
    labels = np.r_[np.zeros(10, int), np.ones(5, int)]
    scores = labels.astype(float)
    st = E.aucp_reference_splits(scores, labels, other_reference=[2.0, 3.0], n_splits=4, seed=1)
    assert len(st) == 4
    # reference vs pool: ties with the 5 lesion-free (1/2 each), below the 5 lesion patients
    assert np.allclose(st["aucp_same_scanner"], (5 * 0.5 + 5 * 1.0) / 10)
    assert np.allclose(st["aucp_other_reference"], 0.0)  # the other reference scores above everyone
    assert np.allclose(st["auroc_labels"], 1.0)
    assert np.isnan(E.aucp_reference_splits(scores, labels, n_splits=1)["aucp_other_reference"]).all()
    # the splits follow the seed and the labels only: another model's scores get the same splits
    a = E.aucp_reference_splits(np.arange(15.0), labels, n_splits=3, seed=7)
    b = E.aucp_reference_splits(np.arange(15.0), labels, n_splits=3, seed=7)
    c = E.aucp_reference_splits(np.arange(15.0), labels, n_splits=3, seed=8)
    assert a.equals(b) and not a.equals(c)
    # a reference of 2: the pool keeps 8 lesion-free patients, tied with the reference
    st2 = E.aucp_reference_splits(scores, labels, n_splits=2, n_reference=2)
    assert np.allclose(st2["aucp_same_scanner"], (8 * 0.5 + 5 * 1.0) / 13)
    with pytest.raises(ValueError, match="n_reference"):
        E.aucp_reference_splits(scores, labels, n_reference=11)
    with pytest.raises(ValueError, match="lesion"):
        E.aucp_reference_splits(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="shape"):
        E.aucp_reference_splits(np.zeros(3), np.zeros(4, int))


def test_rank_correlation():
    assert E.rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert E.rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(E.rank_correlation([1, 1, 1], [1, 2, 3]))
