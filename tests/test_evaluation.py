"""The CV protocol, the segment counting rule and the pixel / reconstruction metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from u2ad_core import metrics as E
from u2ad_core.core.labels import SEGMENTS


def synthetic_scores(n: int = 60, n_pos: int = 30, seed: int = 0, sep: float = 0.8) -> pd.DataFrame:
    """Scores table: lesion patients get a bump of ``sep`` at a random lesion segment."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, int)
    y[rng.choice(n, n_pos, replace=False)] = 1
    seg = rng.random((n, 6))
    les = []
    for i in range(n):
        if y[i]:
            j = int(rng.integers(6))
            seg[i, j] += sep * rng.random()
            les.append(SEGMENTS[j])
        else:
            les.append("")
    df = pd.DataFrame({"subject": [f"p{i:03d}" for i in range(n)], "slice_index": 5,
                       "patient_label": y, "lesion_segments": les, "patient_score": seg.max(1)})
    for j, name in enumerate(SEGMENTS):
        df[name] = seg[:, j]
    return df


def test_threshold_at_sensitivity_is_the_highest_that_keeps_it():
    scores = np.arange(1, 11, dtype=float)  # 10 positives scored 1..10
    labels = np.ones(10, int)
    t = E.threshold_at_sensitivity(np.r_[scores, [100.0, 0.5]], np.r_[labels, [0, 0]], 0.9)
    assert t == 2.0  # 9 of 10 positives >= 2; the next higher candidate (3) keeps only 8
    assert np.isnan(E.threshold_at_sensitivity([0.1, 0.2], [0, 0], 0.9))
    assert E.threshold_at_sensitivity([0.3, 0.7, 0.5], [1, 1, 1], 1.0) == 0.3


def test_cv_threshold_keeps_sensitivity_on_tuning_folds():
    df = synthetic_scores(n=57, n_pos=23, seed=3)
    cv = E.cross_validate(df, n_folds=5, n_repeats=3, sensitivity=0.9, seed=11)
    pt = cv.patients
    y, s = pt["label"].to_numpy(), pt["score"].to_numpy()
    assert len(cv.folds) == 15
    for r in range(3):
        folds = E.stratified_folds(y, 5, 11 + r)
        for f, te in enumerate(folds):
            tr = np.setdiff1d(np.arange(len(y)), te)
            thr = cv.folds.query("repeat == @r and fold == @f")["patient_threshold"].item()
            pos = s[tr][y[tr] == 1]
            assert (pos >= thr).mean() >= 0.9
            higher = pos[pos > thr]
            if len(higher):  # the next higher candidate breaks the rule: thr is the highest
                assert (pos >= higher.min()).mean() < 0.9
            # and the test metrics use that threshold
            pred = s[te] >= thr
            acc = (pred == (y[te] == 1)).mean()
            assert cv.folds.query("repeat == @r and fold == @f")["patient_accuracy"].item() == pytest.approx(acc)


def test_fold_metrics_thresholds_come_from_the_tuning_patients():
    """A model trained per fold: thresholds on its validation patients, metrics on its test patients."""
    tune = pd.DataFrame({"subject": list("abcd"), "label": [1, 1, 0, 0], "score": [0.9, 0.6, 0.7, 0.1],
                         "top_score": [0.9, 0.6, 0.7, 0.1], "top_is_lesion": [True, True, False, False]})
    test = pd.DataFrame({"subject": list("efgh"), "label": [1, 1, 0, 0], "score": [0.8, 0.5, 0.65, 0.2],
                         "top_score": [0.8, 0.5, 0.65, 0.2], "top_is_lesion": [True, False, False, False]})
    row = E.fold_metrics(tune, test, sensitivity=0.9)
    assert row["patient_threshold"] == 0.6  # both tuning positives kept
    # test: e (0.8) and g (0.65) flagged -> TP 1, FP 1, FN 1 (f at 0.5), TN 1
    assert row["patient_accuracy"] == pytest.approx(0.5)
    assert row["patient_specificity"] == pytest.approx(0.5)
    assert row["segment_threshold_honest"] == 0.6  # best tuning F1: flag a and b only
    # at 0.6 on the test fold: e is a hit (TP), g flagged elsewhere (FP), f missed (FN)
    assert (row["segment_tp_honest"], row["segment_fp_honest"], row["segment_fn_honest"]) == (1, 1, 1)
    # cross_validate is fold_metrics over its folds
    df = synthetic_scores(n=30, n_pos=12, seed=1)
    cv = E.cross_validate(df, n_folds=3, n_repeats=1, seed=2)
    pt = cv.patients
    te = E.stratified_folds(pt["label"].to_numpy(), 3, 2)[0]
    tr = np.setdiff1d(np.arange(len(pt)), te)
    again = E.fold_metrics(pt.iloc[tr], pt.iloc[te])
    assert again["patient_f1"] == cv.folds.iloc[0]["patient_f1"]
    assert again["segment_f1"] == cv.folds.iloc[0]["segment_f1"]


def test_stratified_folds_spread_sparse_positives():
    y = np.r_[np.ones(9, int), np.zeros(86, int)]  # RuijinDCM: 9 of 95
    for seed in range(5):
        folds = E.stratified_folds(y, 5, seed)
        assert sorted(np.concatenate(folds).tolist()) == list(range(95))
        assert all(y[f].sum() >= 1 for f in folds)
        assert sorted(y[f].sum() for f in folds) == [1, 2, 2, 2, 2]


def test_folds_without_positives_give_nan_and_are_counted():
    df = synthetic_scores(n=40, n_pos=3, seed=1)
    cv = E.cross_validate(df, n_folds=5, n_repeats=2, seed=0)
    nopos = cv.folds["n_test_pos"] == 0
    assert nopos.sum() == 4 == cv.settings["n_test_folds_without_positive"]
    assert cv.folds.loc[nopos, "patient_sensitivity"].isna().all()
    assert cv.folds.loc[nopos, "patient_specificity"].notna().all()
    assert cv.folds.loc[nopos, "patient_auroc"].isna().all()
    summ = cv.summary()
    assert summ.loc["patient_sensitivity", "n_nan"] == 4
    assert summ.loc["patient_sensitivity", "n"] == 6
    with pytest.raises(ValueError, match="folds"):
        E.stratified_folds(np.array([0, 1, 0]), 5, 0)


def test_segment_counting_rule_on_hand_made_cases():
    #            A     B     C     D     E     F
    # lesion:    yes   yes   yes   yes   no    no
    # top right: yes   no    yes   no    -     -
    # flagged:   yes   yes   no    no    yes   no   (threshold 0.5)
    top_score = np.array([0.9, 0.8, 0.2, 0.1, 0.7, 0.3])
    hit = np.array([True, False, True, False, False, False])
    label = np.array([1, 1, 1, 1, 0, 0])
    tp, fp, fn, tn = E.segment_confusion(top_score, hit, label, 0.5, "strict")
    # A: TP; B: FP + FN; C: FN; D: FN; E: FP; F: TN
    assert (tp, fp, fn, tn) == (1, 2, 3, 1)
    m = E.segment_metrics((tp, fp, fn, tn))
    assert m["recall"] == pytest.approx(1 / 4)
    assert m["specificity"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 / (2 + 2 + 3))
    # literal item rule: B flagged wrong -> FP only; C -> FN; D -> TN
    assert tuple(E.segment_confusion(top_score, hit, label, 0.5, "item")) == (1, 2, 1, 2)
    # a lesion patient without any segment score counts as FN, never flagged
    c = E.segment_confusion(np.array([np.nan]), np.array([False]), np.array([1]), -1.0)
    assert tuple(c) == (0, 0, 1, 0)


def test_best_f1_threshold_on_hand_case():
    top_score = np.array([0.9, 0.8, 0.6, 0.4])
    hit = np.array([True, False, True, False])
    label = np.array([1, 0, 1, 0])
    # thr 0.9: TP1 FN1 -> F1 2/3; thr 0.6: TP2 FP1 -> F1 0.8 (best); thr 0.4: TP2 FP2 -> 2/3
    assert E.best_f1_threshold(top_score, hit, label) == 0.6
    # no lesion at all: flag nothing
    assert E.best_f1_threshold(top_score, np.zeros(4, bool), np.zeros(4, int)) == np.inf


def test_paper_segment_threshold_is_at_least_as_good_as_the_honest_one():
    cv = E.cross_validate(synthetic_scores(seed=5), n_repeats=2)
    f = cv.folds
    assert (f["segment_f1"].fillna(-1) >= f["segment_f1_honest"].fillna(-1) - 1e-12).all()


def test_patient_table_takes_the_strongest_slice_and_drops_unknown_labels():
    df = synthetic_scores(n=4, n_pos=2, seed=2)
    extra = df.iloc[[0]].copy()
    extra["slice_index"] = 6
    extra["patient_score"] = 99.0
    extra[SEGMENTS[2]] = 99.0
    unknown = df.iloc[[1]].copy()
    unknown["subject"] = "x"
    unknown["patient_label"] = -1
    pt = E.patient_table(pd.concat([df, extra, unknown]))
    assert len(pt) == 4 and "x" not in pt["subject"].tolist()
    row = pt.set_index("subject").loc[df.loc[0, "subject"]]
    assert row["score"] == 99.0 and row["top_segment"] == SEGMENTS[2]
    with pytest.raises(KeyError, match="lacks columns"):
        E.patient_table(df.drop(columns=["C4-5"]))


def test_binary_metrics_match_hand_counts():
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([1, 1, 0, 1, 0])
    m = E.binary_metrics(y, p, scores=np.array([0.9, 0.8, 0.1, 0.7, 0.2]))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["auroc"] == pytest.approx(4 / 6)


def test_threshold_free_and_table1_format():
    df = synthetic_scores(seed=4)
    tf = E.threshold_free(df)
    assert 0.5 < tf["auroc"] <= 1.0 and tf["n"] == 60
    cv = E.cross_validate(df, n_repeats=2)
    t = E.table1({"S3 U2AD": cv, "S1 U2AD": cv})
    assert t.shape == (2, 6)
    assert list(t.columns.get_level_values(1)) == ["Accuracy", "F1", "Specificity", "F1", "Recall", "Specificity"]
    assert all(" ± " in v for v in t.iloc[0])
    assert E.format_mean_std(0.5, 0.1) == "0.5000 ± 0.1000"
    assert E.format_mean_std(np.nan, np.nan) == "n/a ± n/a"
    assert cv.repeat_means().shape[0] == 2


def test_pixel_metrics_known_case():
    maps = np.array([[[0.9, 0.8, 0.3, 0.1, 5.0]]])
    lesion = np.array([[[1, 0, 1, 0, 1]]])
    roi = np.array([[[1, 1, 1, 1, 0]]])  # last pixel outside the ROI: ignored
    m = E.pixel_metrics(maps, lesion, roi)
    assert m["n_pixels"] == 4 and m["n_lesion_pixels"] == 2
    assert m["auroc"] == pytest.approx(0.75)
    # thr 0.9: P 1, R 0.5 -> Dice 2/3; thr 0.3: P 2/3, R 1 -> Dice 0.8 (best)
    assert m["best_dice"] == pytest.approx(0.8)
    assert m["best_dice_threshold"] == pytest.approx(0.3)
    perfect = E.pixel_metrics(lesion.astype(float), lesion, np.ones_like(lesion))
    assert perfect["auroc"] == 1.0 and perfect["best_dice"] == pytest.approx(1.0)


def test_reconstruction_metrics_known_case():
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32))
    roi = np.zeros((2, 32, 32), bool)
    roi[:, 8:24, 12:20] = True
    rec = x.copy()
    rec[1][roi[1]] += 0.1
    eu = np.full_like(x, 0.02)
    df = E.reconstruction_metrics(x, rec, roi, eu)
    assert df.loc[0, "ssim"] == pytest.approx(1.0) and df.loc[0, "mse"] == 0
    assert np.isinf(df.loc[0, "psnr"])
    assert df.loc[1, "mse"] == pytest.approx(0.01)
    assert df.loc[1, "psnr"] == pytest.approx(20.0)
    assert df.loc[1, "ssim"] < 1.0
    assert df["variance"].tolist() == pytest.approx([0.02, 0.02])


def test_compare_words_follow_numbers():
    assert E.compare(0.80, 0.05, 0.70, 0.04) == "better"
    assert E.compare(0.70, 0.04, 0.80, 0.05) == "worse"
    # the gap (0.05) is inside the larger spread (0.10), though outside the smaller one
    assert E.compare(0.80, 0.10, 0.75, 0.02) == "no clear difference"
    assert E.compare(0.75, 0.02, 0.80, 0.10) == "no clear difference"
    assert E.compare(0.75, 0.25, 0.5, 0.125) == "no clear difference"  # gap == spread: not enough
    assert E.compare(0.80, 0.0, 0.79, 0.0) == "better"  # no spread at all: any gap counts
    # errors: lower is better
    assert E.compare(0.010, 0.001, 0.020, 0.002, higher_is_better=False) == "better"
    assert E.compare(0.020, 0.002, 0.010, 0.001, higher_is_better=False) == "worse"
    # unknown spread or value
    assert E.compare(0.9, float("nan"), 0.1, 0.01) == "no clear difference"
    assert E.compare(0.1, 0.01, 0.9, float("nan")) == "no clear difference"  # either side
    assert E.compare(float("nan"), 0.1, 0.5, 0.1) == "not measured"
    # on CV results: a detector against a worse copy of itself, and against itself
    good = E.cross_validate(synthetic_scores(sep=3.0), n_repeats=2)
    bad = E.cross_validate(synthetic_scores(sep=0.0, seed=1), n_repeats=2)
    sg, sb = good.summary(), bad.summary()
    m = "patient_auroc"
    assert E.compare(sg.loc[m, "mean"], sg.loc[m, "std"], sb.loc[m, "mean"], sb.loc[m, "std"]) == "better"
    assert E.compare(sg.loc[m, "mean"], sg.loc[m, "std"], sg.loc[m, "mean"], sg.loc[m, "std"]) == "no clear difference"


def test_unscored_lesion_patient_does_not_make_the_threshold_minus_inf():
    """A lesion patient without a score (no cord pixel) is left out of the threshold choice,
    never flagged, counted, and named in a warning."""
    assert E.threshold_at_sensitivity([np.nan, 0.4, 0.8, 0.6], [1, 1, 1, 1], 1.0) == 0.4
    assert np.isnan(E.threshold_at_sensitivity([np.nan, 0.2], [1, 0], 0.9))
    df = synthetic_scores(n=40, n_pos=20, seed=4)
    pos = df.index[df["patient_label"] == 1]
    df.loc[pos[:3], "patient_score"] = np.nan
    with pytest.warns(UserWarning, match="3 patient"):
        cv = E.cross_validate(df, n_folds=5, n_repeats=2, sensitivity=0.9, seed=0)
    assert np.isfinite(cv.folds["patient_threshold"]).all()
    assert cv.settings["n_unscored"] == 3 and cv.settings["n_unscored_positive"] == 3
    assert cv.folds["n_tune_pos_unscored"].max() >= 1
    assert (cv.folds["patient_specificity"] > 0).any()  # not everyone is flagged


# ------------------------------------------------------------------ AUCp, AUPRO, Dice at a chosen threshold
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

def two_region_row():
    """One 1 x 10 slice: region A = pixels 0-1, region B = pixels 5-7, five normal pixels."""
    lesion = np.array([[[1, 1, 0, 0, 0, 1, 1, 1, 0, 0]]])
    maps = np.array([[[0.9, 0.5, 0.5, 0.2, 0.0, 0.8, 0.8, 0.1, 0.0, 0.6]]])
    return maps, lesion, np.ones_like(lesion)


def test_pro_curve_and_aupro_two_regions_by_hand():
    maps, lesion, roi = two_region_row()
    fpr, pro, thr = E.pro_curve(maps, lesion, roi)
    # t=0.9: half of A -> PRO 1/4; t=0.8: + 2/3 of B -> (1/2 + 2/3) / 2 = 7/12; t=0.6, 0.5: one normal
    # each (FPR 0.2, 0.4), and at 0.5 all of A -> 5/6; t=0.2: FPR 0.6; t=0.1: all of B; t=0: the rest
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.2, 0.4, 0.6, 0.6, 1.0])
    np.testing.assert_allclose(pro, [0, 1 / 4, 7 / 12, 7 / 12, 5 / 6, 5 / 6, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.6, 0.5, 0.2, 0.1, 0.0])
    # [0, 0.2] at 7/12, then a line to (0.4, 5/6), cut at 0.3 (PRO 17/24): (7/60 + 31/480) / 0.3
    assert E.aupro(maps, lesion, roi) == pytest.approx(29 / 48)
    # the whole curve: 7/60 + 17/120 + 1/6 + 2/5
    assert E.aupro(maps, lesion, roi, fpr_limit=1.0) == pytest.approx(33 / 40)
    # pixels outside the ROI count for nothing
    wide = lambda a, v: np.concatenate([a, np.full((1, 1, 3), v)], axis=2)  # noqa: E731
    assert E.aupro(wide(maps, 9.0), wide(lesion, 1), wide(roi, 0)) == pytest.approx(29 / 48)
    with pytest.raises(ValueError, match="fpr_limit"):
        E.aupro(maps, lesion, roi, fpr_limit=0)


def test_aupro_perfect_inverted_and_undefined():
    rng = np.random.default_rng(0)
    lesion = np.zeros((3, 16, 16), np.uint8)
    lesion[0, 2:5, 3:6] = 1
    lesion[0, 10:12, 10:14] = 1
    lesion[2, 6:9, 6:9] = 1
    roi = np.ones_like(lesion)
    assert E.aupro(lesion.astype(float), lesion, roi) == pytest.approx(1.0)
    zero_in_lesions = np.where(lesion > 0, 0.0, 0.5 + rng.random(lesion.shape))
    assert E.aupro(zero_in_lesions, lesion, roi) == 0.0
    assert np.isnan(E.aupro(rng.random(lesion.shape), np.zeros_like(lesion), roi))  # no lesion
    assert np.isnan(E.aupro(rng.random(lesion.shape), lesion, lesion))  # no normal pixel
    with pytest.raises(ValueError, match="lesion region"):
        E.pro_curve(rng.random(lesion.shape), np.zeros_like(lesion), roi)


def test_pro_regions_join_diagonally_but_never_across_slices():
    lesion = np.zeros((2, 3, 3), np.uint8)
    lesion[0, 0, 0] = 1  # region 1: one pixel, found at the top threshold
    lesion[1, 0, 0] = lesion[1, 1, 1] = 1  # region 2: two diagonal pixels, same place one slice on
    maps = np.where(lesion > 0, 0.0, 0.5)
    maps[0, 0, 0] = 1.0
    _, pro, _ = E.pro_curve(maps, lesion, np.ones_like(lesion))
    assert pro[1] == pytest.approx(0.5)  # (1 + 0) / 2 regions; 1/3 if slices joined or diagonals split


def test_dice_at_threshold_and_threshold_at_fpr():
    maps = np.array([[[0.9, 0.8, 0.3, 0.1, 5.0]]])
    lesion = np.array([[[1, 0, 1, 0, 1]]])
    roi = np.array([[[1, 1, 1, 1, 0]]])  # last pixel outside the ROI: ignored
    assert E.dice_at_threshold(maps, lesion, roi, 0.3) == pytest.approx(0.8)  # TP 2, FP 1, FN 0
    assert E.dice_at_threshold(maps, lesion, roi, 0.9) == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    assert E.dice_at_threshold(maps, lesion, roi, np.inf) == 0.0
    assert np.isnan(E.dice_at_threshold(maps, np.zeros_like(lesion), roi, np.inf))  # 0 / 0
    assert E.best_dice_threshold(maps, lesion, roi) == E.pixel_metrics(maps, lesion, roi)["best_dice_threshold"] == 0.3
    # ten normal pixels 0.0 ... 0.9, lesion pixels at 0.55 and 0.95
    normal = np.round(np.arange(10) / 10, 1)
    m = np.r_[normal, 0.55, 0.95][None, None]
    les = np.r_[np.zeros(10), 1, 1][None, None]
    one = np.ones_like(les)
    assert E.threshold_at_fpr(m, les, one, 0.2) == 0.8  # two normals (0.8, 0.9) flagged
    assert E.threshold_at_fpr(m, les, one, 0.25) == 0.8  # floor(2.5) = 2
    assert E.threshold_at_fpr(m, les, one, 0.0) == 0.95  # only the top lesion pixel
    assert E.threshold_at_fpr(m, les, one, 1.0) == 0.0
    assert E.threshold_at_fpr(m[..., :10], les[..., :10], one[..., :10], 0.0) == np.inf  # flag nothing
    with pytest.raises(ValueError, match="no ROI pixel outside"):
        E.threshold_at_fpr(m, one, one, 0.1)


def test_dice_cv_threshold_from_the_training_folds():
    # subjects A, B (lesions at 0.7), C (one normal pixel at 0.9), D (all 0.2); 1 x 6 slices
    maps = np.array([[0.7, 0.7, .2, .2, .2, .2], [0.7, 0.7, .2, .2, .2, .2],
                     [0.9, .2, .2, .2, .2, .2], [.2] * 6])[:, None, :]
    lesion = np.zeros(maps.shape, np.uint8)
    lesion[:2, 0, :2] = 1
    roi = np.ones_like(lesion)
    df = E.dice_cv(maps, lesion, roi, np.array(["A", "B", "C", "D"]), n_folds=2, n_repeats=3, fpr=0.1)
    assert len(df) == 6 and (df["n_test"] == 2).all() and (df["n_test_lesion_pixels"] == 2).all()
    # every training fold holds one lesion subject: its best threshold is 0.7; the test fold
    # with C has one false positive (Dice 4/5), the other none (Dice 1)
    assert (df["dice_threshold"] == 0.7).all()
    for _, rep in df.groupby("repeat"):
        assert sorted(rep["dice"]) == pytest.approx([0.8, 1.0])
        # at most 10% of the training folds' 10 normal pixels: 0.7 again; test FPR 1/10 with C
        assert (rep["fpr_threshold"] == 0.7).all() and sorted(rep["test_fpr"]) == pytest.approx([0.0, 0.1])
        assert sorted(rep["dice_at_fpr"]) == pytest.approx([0.8, 1.0])
    perfect = E.dice_cv(lesion.astype(float), lesion, roi, np.array(["A", "B", "C", "D"]), n_folds=2)
    assert (perfect["dice"] == 1.0).all() and (perfect["dice_at_fpr"] == 1.0).all()


def test_pro_curve_matches_a_threshold_loop():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    maps = np.round(rng.random((3, 12, 10)), 1)  # ties on purpose
    lesion = (ndimage.uniform_filter(rng.random((3, 12, 10)), (1, 3, 3)) > 0.6).astype(np.uint8)
    roi = np.zeros_like(lesion)
    roi[:, 1:11, 1:9] = 1
    fpr, pro, thr = E.pro_curve(maps, lesion, roi)
    regions = [(i, lab == k) for i in range(3)
               for lab, n in [ndimage.label(lesion[i] & roi[i], np.ones((3, 3)))] for k in range(1, n + 1)]
    normal = (roi > 0) & (lesion == 0)
    for f, p, t in zip(fpr[1:], pro[1:], thr[1:]):
        flag = maps >= t
        assert f == pytest.approx((flag & normal).sum() / normal.sum())
        assert p == pytest.approx(np.mean([flag[i][r].mean() for i, r in regions]))
