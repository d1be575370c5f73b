"""The CV protocol, the segment counting rule, the patient table and the Table 1 layout (metrics.detection)."""

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
    assert E.format_mean_std(0.5, 0.1) == "0.500 ± 0.10"
    assert E.format_mean_std(0.65671, 0.11372) == "0.657 ± 0.11"
    assert E.format_mean_std(93.35, 4.0, 4) == "93.35 ± 4.0"
    assert E.format_mean_std(np.nan, np.nan) == "n/a ± n/a"
    assert cv.repeat_means().shape[0] == 2


def test_significant_digits():
    assert [E.significant(v) for v in (0.65671, 93.36, 12402, 0.99996, -0.0, 1e-9 * 0, 5.77e-06)] == \
        ["0.657", "93.4", "12400", "1.00", "0", "0", "5.77e-06"]
    assert E.significant(-0.000004) == "-4.00e-06"
    assert E.significant(None) == E.significant(float("nan")) == "n/a"
    assert E.significant(0.123456, 2) == "0.12"


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


def test_compare_on_cv_results():
    """The verdict rule on CV summaries: a detector against a worse copy of itself, and against itself."""
    good = E.cross_validate(synthetic_scores(sep=3.0), n_repeats=2)
    bad = E.cross_validate(synthetic_scores(sep=0.0, seed=1), n_repeats=2)
    sg, sb = good.summary(), bad.summary()
    m = "patient_auroc"
    assert E.compare(sg.loc[m, "mean"], sg.loc[m, "std"], sb.loc[m, "mean"], sb.loc[m, "std"]) == "better"
    assert E.compare(sg.loc[m, "mean"], sg.loc[m, "std"], sg.loc[m, "mean"], sg.loc[m, "std"]) == "no clear difference"


def test_scores_by_subject_follows_the_given_order():
    df = synthetic_scores(n=10, n_pos=5, seed=2)
    pt = E.patient_table(df).set_index("subject")
    order = ["p007", "p001", "p004"]
    assert E.scores_by_subject(df, order).tolist() == pt.loc[order, "score"].tolist()
    with pytest.raises(KeyError):
        E.scores_by_subject(df, ["nobody"])
