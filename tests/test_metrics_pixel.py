"""Pixel and region metrics (metrics.pixel): AUROC / AUPRC / best Dice, AUPRO, Dice at a chosen threshold."""

from __future__ import annotations

import numpy as np
import pytest

from u2ad_core import metrics as E


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
