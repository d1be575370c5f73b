"""Reconstruction diagnostics (u2ad_core.metrics.residuals): hand cases with known answers."""

import numpy as np
import pytest

from u2ad_core import metrics as ev
from u2ad_core.metrics import residuals as R


def rect_cord(n=1, h=40, w=12, rows=(0, 40), cols=(3, 9)):
    """``(n, h, w)`` uint8 cord: a rectangle of rows x cols (full height by default, as the
    book's cord_band crops, whose cord touches the top and bottom rows)."""
    c = np.zeros((n, h, w), np.uint8)
    c[:, rows[0]:rows[1], cols[0]:cols[1]] = 1
    return c


# --- regions -------------------------------------------------------------------------
def test_regions_of_a_small_rectangle_counted_by_hand():
    c = np.zeros((10, 9), np.uint8)
    c[2:8, 2:7] = 1                           # 6 x 5 = 30 pixels
    interior, edge = R.cord_regions(c, 1)
    assert edge.sum() == 30 - 4 * 3 == 18     # the one-pixel ring
    assert interior.sum() == 12 and interior[3:7, 3:6].all()
    interior2, edge2 = R.cord_regions(c, 2)
    assert interior2.sum() == 2 and interior2[4:6, 4].all()  # (6 - 4) x (5 - 4)
    assert not (interior & edge).any() and ((interior | edge) == (c > 0)).all()
    i0, e0 = R.cord_regions(c, 0)
    assert i0.sum() == 30 and e0.sum() == 0


def test_regions_use_4_connectivity_and_ignore_the_image_border():
    c = np.ones((7, 7), np.uint8)
    c[0, 0] = 0                               # background only diagonal to (1, 1)
    interior, edge = R.cord_regions(c, 1)
    assert edge.sum() == 2 and edge[0, 1] and edge[1, 0]
    assert interior[1, 1]                     # sqrt(2) > 1: interior
    full = np.ones((2, 5, 5), np.uint8)       # no background: the border is no boundary
    interior, edge = R.cord_regions(full, 1)
    assert interior.all() and not edge.any()
    # a full-height rectangle: the top and bottom rows are not edge, the side columns are
    interior, edge = R.cord_regions(rect_cord(), 1)
    assert interior[0, 0, 4:8].all() and interior[0, -1, 4:8].all() and edge[0, :, 3].all()


def test_regions_per_slice_and_bad_input():
    c = np.stack([rect_cord()[0], np.zeros((40, 12), np.uint8)])
    interior, edge = R.cord_regions(c, 1)
    assert interior[1].sum() == 0 and edge[1].sum() == 0 and interior[0].sum() == 40 * 4
    with pytest.raises(ValueError, match="width"):
        R.cord_regions(c, -1)
    with pytest.raises(ValueError, match="cord must be"):
        R.cord_regions(np.ones(5), 1)


# --- predictors ----------------------------------------------------------------------
def test_constant_cord_cord_mean_residual_is_zero():
    cord = rect_cord(n=2)
    x = np.where(cord, np.array([0.5, 0.8])[:, None, None], 0.1).astype(np.float32)
    pred = R.cord_mean_prediction(x, cord)
    assert np.allclose(pred, x)
    t = R.residual_table(x, pred, cord)
    pooled = t[t.level == "pooled"].iloc[0]
    assert pooled.interior == pytest.approx(0, abs=1e-7) and pooled.edge == pytest.approx(0, abs=1e-7)
    assert list(t[t.level == "slice"].cord_mean) == pytest.approx([0.5, 0.8])


def test_ramp_along_the_cord_running_mean_exact_cord_mean_not():
    h, length = 40, 9
    cord = rect_cord(h=h)
    ramp = 0.2 + 0.01 * np.arange(h)[None, :, None] * np.ones((1, h, 12))
    x = np.where(cord, ramp, 0.05)
    run = R.running_mean_prediction(x, cord, length)
    half = length // 2
    full = cord.astype(bool).copy()
    full[:, :half] = full[:, h - half:] = False   # pixels whose whole window lies in the cord
    assert np.allclose(run[full], x[full], atol=1e-6)
    # at the cut ends the window is one-sided: a linear signal is then biased (documented)
    assert abs(run[0, 0, 5] - x[0, 0, 5]) > 1e-3
    cm = R.cord_mean_prediction(x, cord)
    assert not np.allclose(cm[full], x[full], atol=1e-3)
    # the same in the table: running mean beats the cord mean in the interior
    t_run = R.residual_table(x, run, cord)
    t_cm = R.residual_table(x, cm, cord)
    assert t_run.iloc[-1].interior < 0.1 * t_cm.iloc[-1].interior
    # by hand: the cord mean's RMS residual of a ramp 0.2 + 0.01 i, i = 0..39, over its mean
    i = np.arange(h)
    expect = np.sqrt(np.mean((0.01 * (i - i.mean())) ** 2)) / (0.2 + 0.01 * i.mean())
    assert t_cm.iloc[-1].interior == pytest.approx(expect, rel=1e-6)


def test_running_mean_is_leave_one_out_and_stays_in_the_cord_column():
    cord = rect_cord(h=20)
    x = np.where(cord, 1.0, 0.0)
    x[0, 10, 5] = 10.0                        # a spike: its own prediction must not see it
    run = R.running_mean_prediction(x, cord, 9)
    assert run[0, 10, 5] == pytest.approx(1.0)
    assert run[0, 11, 5] == pytest.approx((7 + 10) / 8)   # 8 neighbours, the spike among them
    assert run[0, 10, 4] == pytest.approx(1.0) and run[0, 10, 6] == pytest.approx(1.0)  # other columns
    assert np.array_equal(run[0, :, :3], x[0, :, :3])     # image outside the cord
    loc = R.local_mean_prediction(x, cord, 3)
    assert loc[0, 10, 5] == pytest.approx(1.0) and loc[0, 10, 4] == pytest.approx((7 + 10) / 8)
    # an isolated cord pixel has no neighbour: the slice's cord mean
    iso = np.zeros((1, 9, 9), np.uint8)
    iso[0, 4, 4] = 1
    assert R.running_mean_prediction(np.full((1, 9, 9), 0.3), iso, 3)[0, 4, 4] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="odd"):
        R.running_mean_prediction(x, cord, 8)
    with pytest.raises(ValueError, match="does not match"):
        R.running_mean_prediction(x[:, :10], cord, 9)


# --- residual table ------------------------------------------------------------------
def test_noise_floor_is_sigma_over_mean():
    rng = np.random.default_rng(0)
    mean, sigma = 0.5, 0.02
    cord = rect_cord(n=4, h=64, w=20, cols=(2, 18))
    clean = np.where(cord, mean, 0.1)
    x = clean + rng.normal(0, sigma, clean.shape)
    t = R.residual_table(x, R.cord_mean_prediction(x, cord), cord, clean=clean)
    p = t[t.level == "pooled"].iloc[0]
    assert p.noise_interior == pytest.approx(sigma / mean, rel=0.05)
    assert p.noise_edge == pytest.approx(sigma / mean, rel=0.1)
    # the cord-mean predictor of a constant cord + noise sits right at the floor
    assert p.interior == pytest.approx(p.noise_interior, rel=0.02)


def test_lesion_pixels_are_excluded_and_groups_pool_pixels():
    cord = rect_cord(n=2)
    x = np.where(cord, 0.5, 0.0)
    lesion = np.zeros_like(cord)
    x[0, 18:22, 5:7] = 0.9                   # a bright lesion the predictor gets wrong
    lesion[0, 18:22, 5:7] = 1
    pred = np.where(cord, 0.5, 0.0)           # the healthy cord, perfectly
    with_lesion = R.residual_table(x, pred, cord)
    assert with_lesion.iloc[-1].interior > 0
    t = R.residual_table(x, pred, cord, lesion=lesion, groups=["a", "b"])
    assert t.iloc[-1].interior == pytest.approx(0, abs=1e-7)
    assert t[t.level == "slice"].n_interior.tolist() == [40 * 4 - 8, 40 * 4]
    assert t[t.level == "group"].group.tolist() == ["a", "b"]
    # pooled = pixel-weighted RMS, not the mean of the slice values
    x2 = np.where(cord, 0.5, 0.0)
    pred2 = pred.copy()
    pred2[0][cord[0] > 0] = 0.6              # slice 0 off by 0.1 / 0.5 = 0.2 everywhere
    t2 = R.residual_table(x2, pred2, cord)
    assert t2.iloc[0].interior == pytest.approx(0.2) and t2.iloc[1].interior == pytest.approx(0)
    assert t2.iloc[-1].interior == pytest.approx(0.2 / np.sqrt(2))
    with pytest.raises(ValueError, match="groups"):
        R.residual_table(x, pred, cord, groups=["a"])


# --- learned -------------------------------------------------------------------------
def test_learned_verdict_threshold_and_spread():
    assert R.learned_verdict(0.85, 1.0)[:2] == (True, "learned")
    assert R.learned_verdict(0.95, 1.0)[:2] == (False, "not learned")
    assert R.learned_verdict(0.9, 1.0)[0]                 # <= margin
    ok, word, ratio = R.learned_verdict([0.5, 0.52, 0.48], [1.0, 1.0, 1.0])
    assert ok and word == "learned" and ratio == pytest.approx(0.5)
    ok, word, _ = R.learned_verdict([1.2, 1.25, 1.15], [1.0, 1.0, 1.0])
    assert not ok and word == "not learned"
    ok, word, _ = R.learned_verdict([0.5, 1.2], [1.0, 1.0])   # spread swamps the gap
    assert not ok and word == "no clear difference"
    assert R.learned_verdict(np.nan, 1.0)[1] == "not measured"
    with pytest.raises(ValueError, match="paired"):
        R.learned_verdict([1, 2], [1])


def _smooth_cord_data(n=6, seed=0):
    """A cord whose signal varies smoothly along the rows, with noise, and its clean image."""
    rng = np.random.default_rng(seed)
    h, w = 64, 16
    cord = rect_cord(n=n, h=h, w=w, cols=(3, 13))
    prof = 0.5 + 0.15 * np.sin(np.arange(h) / 6.0 + rng.uniform(0, 6, (n, 1)))
    clean = np.where(cord, prof[:, :, None], 0.1)
    x = clean + rng.normal(0, 0.01, clean.shape)
    return x, cord, clean


def test_compare_predictors_table_and_words():
    x, cord, clean = _smooth_cord_data()
    groups = np.repeat(["p0", "p1", "p2"], 2)
    bad = R.cord_mean_prediction(x, cord) + np.where(cord, 0.05, 0.0)   # worse than the cord mean
    df = R.compare_predictors(x, cord, {"good": clean, "bad": bad}, clean=clean, groups=groups)
    assert list(df.index) == ["good", "bad", "cord mean", "running mean (9)", "local mean (3x3)", "noise floor"]
    assert {"interior", "edge", "interior_ratio", "edge_ratio", "interior_x_noise", "edge_x_noise",
            "learned", "verdict"} <= set(df.columns)
    assert df.loc["cord mean", "interior_ratio"] == pytest.approx(1.0)
    assert not df.loc["cord mean", "learned"]
    assert df.loc["good", "learned"] and df.loc["good", "verdict"] == "learned"
    assert df.loc["good", "interior_x_noise"] == pytest.approx(1.0)   # the clean image = the floor
    assert df.loc["bad", "verdict"] == "not learned" and df.loc["bad", "interior_ratio"] > 1
    assert df.loc["running mean (9)", "interior"] < df.loc["cord mean", "interior"]
    assert df.attrs["n_groups"] == 3 and df.attrs["margin"] == R.LEARNED_MARGIN
    # without groups: the plain threshold, the same words
    df1 = R.compare_predictors(x, cord, {"good": clean})
    assert df1.loc["good", "learned"] and np.isnan(df1.loc["good", "interior_x_noise"])
    assert "noise floor" not in df1.index
    with pytest.raises(ValueError, match="reserved"):
        R.compare_predictors(x, cord, {"cord mean": clean})


# --- oracle --------------------------------------------------------------------------
def test_oracle_map_zero_outside_the_lesion():
    rng = np.random.default_rng(1)
    cord = rect_cord(n=2)
    twin = np.where(cord, 0.5, 0.1) + rng.normal(0, 0.02, cord.shape)
    x = twin.copy()
    lesion = np.zeros_like(cord)
    lesion[1, 10:14, 5:8] = 1
    x[1][lesion[1] > 0] += 0.3
    x[1, 30, 5] -= 0.2                        # a dark spot: only the two-sided map sees it
    lesion_dark = np.zeros_like(cord)
    lesion_dark[1, 30, 5] = 1
    m = R.oracle_map(x, twin)
    assert m.dtype == np.float32 and m.shape == x.shape
    assert (m[lesion == 0] == 0).all() and np.allclose(m[lesion > 0], 0.3, atol=1e-6)
    m2 = R.oracle_map(x, twin, one_sided=False)
    assert m2[1, 30, 5] == pytest.approx(0.2, abs=1e-6)
    assert (m2[(lesion == 0) & (lesion_dark == 0)] == 0).all()
    x[0, 5, 0] += 1.0                         # outside the cord: zeroed with the cord given
    assert R.oracle_map(x, twin, cord=cord)[0, 5, 0] == 0 and R.oracle_map(x, twin)[0, 5, 0] > 0
    with pytest.raises(ValueError, match="twin"):
        R.oracle_map(x, None)
    with pytest.raises(ValueError, match="does not match"):
        R.oracle_map(x, twin[:, :5])


def test_reexported_from_metrics():
    for name in R.__all__:
        assert getattr(ev, name) is getattr(R, name)


def test_statistic_median_resists_one_failed_slice_pooled_shows_it():
    x, cord, clean = _smooth_cord_data(n=5)
    model = clean.copy()
    model[4] = np.where(cord[4], clean[4] + 0.3, clean[4])        # fails on one slice in five
    pooled = R.compare_predictors(x, cord, {"m": model}, clean=clean)
    median = R.compare_predictors(x, cord, {"m": model}, clean=clean, statistic="median")
    assert median.attrs["statistic"] == "median"
    assert median.loc["m", "interior_x_noise"] == pytest.approx(1.0, rel=0.1)
    assert pooled.loc["m", "interior"] > 3 * median.loc["m", "interior"]
    assert pooled.loc["m", "share_below_margin"] == pytest.approx(0.8)   # 4 slices of 5
    assert median.loc["cord mean", "interior_ratio"] == pytest.approx(1.0)
    # the per-slice values behind the median, by hand
    t = R.residual_table(x, model, cord)
    assert median.loc["m", "interior"] == pytest.approx(np.median(t[t.level == "slice"].interior))
    with pytest.raises(ValueError, match="statistic"):
        R.compare_predictors(x, cord, {"m": model}, statistic="max")


# --- a dataset's lesion-free patients -------------------------------------------------
def _slice_data(n_pat=4, seed=1):
    """A SliceData-like namespace: 3 slices per patient (offsets -1, 0, 1), patient 0 with a lesion."""
    from types import SimpleNamespace

    x, cord, clean = _smooth_cord_data(n=3 * n_pat, seed=seed)
    lesion = np.zeros_like(cord)
    lesion[:3, 20:24, 6:9] = 1
    return SimpleNamespace(images=x.astype(np.float32), cord=cord, clean=clean.astype(np.float32), lesion=lesion,
                           subject=np.repeat([f"p{i}" for i in range(n_pat)], 3),
                           patient_label=np.repeat([1] + [0] * (n_pat - 1), 3),
                           slice_offset=np.tile([-1, 0, 1], n_pat))


def test_healthy_selection_takes_middle_slices_of_lesion_free_patients():
    d = _slice_data()
    sel = R.healthy_selection(d)
    assert sel.tolist() == [False] * 3 + [False, True, False] * 3
    assert R.healthy_selection(d, middle=False).tolist() == [False] * 3 + [True] * 9
    del d.patient_label
    assert R.healthy_selection(d).sum() == 4   # no labels: every patient's middle slice


def test_check_dataset_uses_only_the_selection_and_the_noise_floor():
    import torch

    d = _slice_data()
    garbage = np.where(d.cord > 0, 5.0, d.images)
    garbage[d.patient_label == 0] = d.clean[d.patient_label == 0]   # perfect where it is checked
    df = R.check_dataset(d, {"m": torch.from_numpy(garbage.astype(np.float32))})
    assert df.attrs["n_slices"] == 3 and df.attrs["n_patients"] == 3
    assert df.loc["m", "interior_x_noise"] == pytest.approx(1.0, rel=1e-5)
    assert df.loc["m", "verdict"] == "learned"
    with pytest.raises(ValueError, match="no slice selected"):
        R.check_dataset(d, {"m": garbage}, sel=np.zeros(len(d.images), bool))


def test_competence_view_and_sentence_follow_the_numbers():
    from u2ad_core.book.competence import learned_sentence, residual_view, sig3

    d = _slice_data()
    bad = R.cord_mean_prediction(d.images, d.cord) + np.where(d.cord, 0.05, 0.0)
    df = R.check_dataset(d, {"good": d.clean, "bad": bad})
    view = residual_view(df)
    assert list(view.columns) == ["interior", "edge", "÷ cord mean", "× noise floor", "verdict"]
    assert view.loc["good", "verdict"] == "learned" and view.loc["cord mean", "verdict"] == ""
    assert view.loc["good", "× noise floor"] == "1"
    assert "**learned**" in learned_sentence(df, "good") and "**not learned**" in learned_sentence(df, "bad")
    assert sig3(0.123456) == "0.123" and sig3(float("nan")) == "" and sig3("x") == "x"


def test_masked_context_interpolates_a_ramp_exactly_and_sees_only_visible_patches():
    from scipy import ndimage

    cord = rect_cord(n=2, h=64, w=16, rows=(0, 64), cols=(4, 12))
    ramp = np.where(cord, 0.2 + 0.005 * np.arange(64)[None, :, None], 0.0)
    # one mask by hand: hidden rows between visible ones are interpolated exactly (a linear ramp)
    c0 = cord[0] > 0
    hidden = np.zeros_like(c0)
    hidden[24:40, 4:8], hidden[24:32, 8:12] = True, True
    dist = np.minimum(np.rint(ndimage.distance_transform_edt(c0)).astype(int), 7)
    one = R._interpolate_masked(ramp[0], c0, hidden, dist)
    assert np.abs(one - ramp[0])[hidden].max() < 1e-12 and not one[~hidden].any()
    # random masks: a constant cord is predicted exactly wherever a mask hid it
    flat = np.where(cord, 0.4, 0.0)
    assert np.abs(R.masked_context_prediction(flat, cord, mask_ratio=0.5, k=6) - flat).max() < 1e-6
    # a bright spot inside one patch is invisible while that patch is hidden: never predicted there
    spot = ramp.copy()
    spot[:, 20:24, 6:8] += 0.5
    q = R.masked_context_prediction(spot, cord, patch=8, mask_ratio=0.5, k=6, seed=1)
    assert q.dtype == np.float32 and np.all(q[:, 20:24, 6:8] < spot[:, 20:24, 6:8] - 0.2)
    with pytest.raises(ValueError, match="multiple of the patch"):
        R.masked_context_prediction(ramp[:, :60], cord[:, :60])


def test_competence_view_says_the_verdict_as_a_predicate():
    from u2ad_core.book.competence import residual_view

    d = _slice_data()
    # one patient worse than the cord mean, two reconstructed perfectly: the ratios straddle the margin
    mixed = d.clean.copy()
    p1 = d.subject == "p1"
    mixed[p1] = R.cord_mean_prediction(d.images, d.cord)[p1] + 0.05 * (d.cord[p1] > 0)
    df = R.check_dataset(d, {"m": mixed})
    assert df.loc["m", "verdict"] == "no clear difference"
    assert residual_view(df).loc["m", "verdict"] == "not clearly learned"


def test_check_dataset_computes_the_masked_context_once_per_selection(monkeypatch):
    d = _slice_data()
    calls = []
    real = R.masked_context_prediction
    monkeypatch.setattr(R, "masked_context_prediction", lambda *a, **k: calls.append(1) or real(*a, **k))
    R._MASKED_CACHE.clear()
    a = R.check_dataset(d, {"m": d.clean})
    b = R.check_dataset(d, {"other": d.images})
    assert len(calls) == 1
    assert a.loc[R.MASKED_CONTEXT, "interior"] == b.loc[R.MASKED_CONTEXT, "interior"]
    R.check_dataset(d, {"m": d.clean}, seed=1)   # another mask seed: computed again
    assert len(calls) == 2


def test_plot_residual_curves_draws_a_panel_per_curve_with_the_reference_lines():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from u2ad_core.book.competence import plot_residual_curves

    c = pd.DataFrame({"steps": [0, 10, 20], "model": [2.0, 1.0, 0.95], "running mean": [0.7] * 3,
                      "masked context": [0.9] * 3})
    fig = plot_residual_curves({"a": c, "b": c.drop(columns="masked context")})
    a, b = fig.axes
    assert a.get_title() == "a" and len(a.lines) == 1 + 2 + 2 and len(b.lines) == 1 + 1 + 2
    assert list(a.lines[0].get_ydata()) == [2.0, 1.0, 0.95]
    # a panel of two tables: two model lines, the reference lines once (from the first table)
    longer = c.assign(steps=[0, 20, 40], model=[2.0, 0.9, 0.8])
    (ax,) = plot_residual_curves({"both": {"short": c, "long": longer}}).axes
    labels = [line.get_label() for line in ax.lines]
    assert labels[:2] == ["short", "long"] and len(ax.lines) == 2 + 2 + 2
    assert list(ax.lines[1].get_ydata()) == [2.0, 0.9, 0.8]


def test_stays_below_needs_every_later_point_below():
    import pandas as pd

    from u2ad_core.method.competence import stays_below

    c = pd.DataFrame({"steps": [0, 1, 2, 3, 4], "model": [2.0, 0.89, 0.95, 0.88, 0.85]})
    assert int(stays_below(c, 0.9)["steps"]) == 3  # the dip at step 1 does not count
    assert stays_below(c.assign(model=[2.0, 0.8, 0.8, 0.8, 0.95]), 0.9) is None
    assert int(stays_below(c.assign(model=[0.5] * 5), 0.9)["steps"]) == 0
