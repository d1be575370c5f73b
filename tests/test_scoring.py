"""Anomaly maps, post-processing, curves and scores on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from u2ad_core.method import scoring as S
from u2ad_core.core.config import ScoreConfig
from u2ad_core.core.labels import SEGMENTS

H, W = 64, 24


def straight_case(n: int = 1):
    """Vertical cord (cols 9..14, rows 4..59); six 8-row segments from row 8 to 55."""
    cord = np.zeros((n, H, W), np.uint8)
    cord[:, 4:60, 9:15] = 1
    seg = np.zeros((n, H, W), np.uint8)
    for i in range(6):
        seg[:, 8 + 8 * i: 16 + 8 * i, :] = i + 1
    img = np.zeros((n, H, W), np.float32)
    return img, np.zeros_like(img), cord, seg


def test_anomaly_map_is_abs_error_inside_roi_only():
    img, rec, cord, _ = straight_case()
    img[0, 10, 10] = 0.7  # inside the cord
    img[0, 10, 2] = 0.9  # outside: must be ignored
    rec[0, 20, 11] = 0.4  # reconstruction brighter than the image
    m = S.anomaly_map(img, rec, cord > 0)
    assert m[0, 10, 10] == pytest.approx(0.7)
    assert m[0, 20, 11] == pytest.approx(0.4)
    assert m[0, 10, 2] == 0
    assert m.dtype == np.float32


def test_curve_peak_segment_and_patient_score_rows():
    img, rec, cord, seg = straight_case()
    img[0, 37:40, 10:13] = 0.6  # rows 37-39 lie in segment 4 (rows 32..39) = C5-6
    img[0, 12, 11] = 0.2  # small second anomaly in C2-3
    r = S.score_maps(img, rec, cord, seg, ScoreConfig(curve="rows"))
    assert 37 <= int(np.nanargmax(r.curves[0])) <= 39
    row = r.table.iloc[0]
    assert row["top_segment"] == "C5-6"
    # the curve is the mean across the 6-pixel cord width: 3 pixels of 0.6 -> 0.3
    assert row["patient_score"] == pytest.approx(0.3)
    assert row["C5-6"] == pytest.approx(0.3)
    assert row["C2-3"] == pytest.approx(0.2 / 6)
    assert row["C3-4"] == 0.0
    assert list(r.table.columns[-6:]) == list(SEGMENTS)


def test_absent_segment_is_nan_and_empty_slice_has_nan_patient_score():
    img, rec, cord, seg = straight_case(2)
    seg[0][seg[0] == 6] = 0  # C7-T1 not in slice 0
    cord[1] = 0  # no cord at all in slice 1
    r = S.score_maps(img, rec, cord, seg, ScoreConfig())
    assert np.isnan(r.table.loc[0, "C7-T1"]) and np.isfinite(r.table.loc[0, "C6-7"])
    assert np.isnan(r.table.loc[1, "patient_score"])
    assert r.table.loc[1, "top_segment"] == ""
    assert np.isnan(r.curves[1]).all()


def test_top3_components_by_sum():
    maps = np.zeros((1, H, W), np.float32)
    roi = np.zeros((1, H, W), bool)
    roi[0, 4:60, 9:15] = True
    # five components, sums 4.0, 1.0 (but a high peak), 2.0, 0.5, 3.0
    maps[0, 5:7, 10:12] = 1.0  # sum 4
    maps[0, 15, 10] = 1.0  # sum 1
    maps[0, 25, 10:14] = 0.5  # sum 2
    maps[0, 35, 10] = 0.5  # sum 0.5
    maps[0, 45:47, 10:13] = 0.5  # sum 3
    out = S.postprocess(maps, roi, drop_bottom=0.0, top_components=3)
    assert out[0, 5, 10] > 0 and out[0, 25, 10] > 0 and out[0, 45, 10] > 0
    assert out[0, 15, 10] == 0 and out[0, 35, 10] == 0
    # step switched off: unchanged
    np.testing.assert_array_equal(S.postprocess(maps, roi, 0.0, 0), maps)


def test_components_do_not_cross_slices_and_connectivity():
    maps = np.zeros((2, H, W), np.float32)
    roi = np.ones((2, H, W), bool)
    # slice 0: four single pixels; slice 1: the same plus a diagonal pair
    for r in (5, 15, 25, 35):
        maps[:, r, 10] = 1.0
    maps[1, 45, 10] = maps[1, 46, 11] = 0.9  # diagonal neighbours: one component in 8-conn
    out8 = S.postprocess(maps, roi, 0.0, 3, connectivity=8)
    assert (out8[0] > 0).sum() == 3  # 3 of 4 equal singles (per-slice ranking)
    assert out8[1, 45, 10] > 0 and out8[1, 46, 11] > 0  # pair (sum 1.8) is kept
    out4 = S.postprocess(maps, roi, 0.0, 3, connectivity=4)
    assert out4[1, 45, 10] == 0 and out4[1, 46, 11] == 0  # two singles of 0.9 lose


def test_drop_bottom_quantile_within_roi():
    roi = np.zeros((1, 4, 5), bool)
    roi[0, :, 1:4] = True  # 12 ROI pixels
    maps = np.zeros((1, 4, 5), np.float32)
    maps[0][roi[0]] = np.arange(1, 13, dtype=np.float32)
    out = S.postprocess(maps, roi, drop_bottom=0.25, top_components=0)
    q = np.quantile(np.arange(1, 13), 0.25)
    assert set(out[0][roi[0]][out[0][roi[0]] > 0]) == {v for v in range(1, 13) if v > q}
    with pytest.raises(ValueError, match="drop_bottom"):
        S.postprocess(maps, roi, drop_bottom=1.5)


def test_erosion_never_uses_lesion_and_keeps_thin_cords():
    cord = np.zeros((2, H, W), np.uint8)
    cord[0, 4:60, 8:16] = 1
    cord[1, 4:60, 11:12] = 1  # one pixel wide: erosion would delete it
    roi = S.cord_roi(cord, erode=1)
    assert roi[0].sum() == (56 - 2) * (8 - 2)
    np.testing.assert_array_equal(roi[1], cord[1] > 0)


def curved_cord(amplitude: float = 25.0):
    """A cord whose centre follows a half-cosine: about 45 degrees oblique in the middle rows."""
    h, w = 96, 96
    rows = np.arange(h)
    centre = 16 + amplitude * (1 - np.cos(np.pi * rows / (h - 1))) * 1.2
    yy, xx = np.mgrid[0:h, 0:w]
    cord = (np.abs(xx - centre[:, None]) <= 4).astype(np.uint8)
    cord[:6] = cord[-6:] = 0
    return cord[None], centre


def test_centreline_follows_curved_cord():
    cord, centre = curved_cord()
    line = S.centreline(cord > 0, sigma=2.0)[0]
    ok = np.isfinite(line)
    assert ok.sum() == 84
    assert np.nanmax(np.abs(line[ok] - centre[ok])) < 1.0


def test_centreline_curve_localises_a_cross_cord_stripe_on_a_curved_cord():
    """An anomaly band perpendicular to an oblique cord covers many image rows; the
    centreline curve (mean across the local width) keeps it sharp, the row curve smears it."""
    cord, centre = curved_cord()
    h, w = cord.shape[1:]
    j0 = 48  # middle of the cord, where it is most oblique
    slope = np.gradient(centre)[j0]
    t = np.array([slope, 1.0]) / np.hypot(slope, 1.0)  # unit tangent (col, row)
    yy, xx = np.mgrid[0:h, 0:w]
    along = (xx - centre[j0]) * t[0] + (yy - j0) * t[1]  # distance along the cord axis
    img = np.where((np.abs(along) <= 1.0) & (cord[0] > 0), 1.0, 0.0)[None].astype(np.float32)
    seg = np.zeros_like(cord)
    seg[0, :j0 - 4] = 2
    seg[0, j0 - 4:] = 3  # stripe in segment value 3 = C4-5
    cfg = ScoreConfig(drop_bottom=0.0, top_components=0, centreline_sigma=2.0)
    r_c = S.score_maps(img, np.zeros_like(img), cord, seg, cfg)
    r_r = S.score_maps(img, np.zeros_like(img), cord, seg, ScoreConfig(drop_bottom=0.0, top_components=0, curve="rows"))
    peak_c, peak_r = np.nanmax(r_c.curves[0]), np.nanmax(r_r.curves[0])
    assert abs(int(np.nanargmax(r_c.curves[0])) - j0) <= 1
    assert peak_c > 0.8  # nearly the whole local cross-section is anomalous
    assert peak_r < 0.5 * peak_c  # oblique rows only cut through part of the stripe
    assert r_c.table.loc[0, "top_segment"] == "C4-5"


def test_straight_cord_centreline_equals_rows():
    img, rec, cord, seg = straight_case()
    rng = np.random.default_rng(0)
    img[0] = rng.random((H, W)).astype(np.float32)
    cfg = ScoreConfig(drop_bottom=0.0, top_components=0)
    a = S.score_maps(img, rec, cord, seg, cfg)
    b = S.score_maps(img, rec, cord, seg, ScoreConfig(drop_bottom=0.0, top_components=0, curve="rows"))
    np.testing.assert_allclose(a.curves, b.curves)
    with pytest.raises(ValueError, match="curve method"):
        S.score_maps(img, rec, cord, seg, ScoreConfig(curve="diagonal"))


def test_batched_scores_match_single_slice_scores():
    img, rec, cord, seg = straight_case(3)
    rng = np.random.default_rng(1)
    img[:] = rng.random(img.shape).astype(np.float32) * 0.2
    img[1, 30:34, 10:13] += 0.7
    meta = {"subject": ["a", "b", "c"], "patient_label": [0, 1, 0], "lesion_segments": ["", "C4-5", ""]}
    allr = S.score_maps(img, rec, cord, seg, ScoreConfig(), meta=meta)
    for i in range(3):
        one = S.score_maps(img[i], rec[i], cord[i], seg[i], ScoreConfig())
        np.testing.assert_allclose(one.maps[0], allr.maps[i])
        np.testing.assert_allclose(one.curves[0], allr.curves[i])
    assert allr.table["subject"].tolist() == ["a", "b", "c"]
    assert allr.table.loc[1, "top_segment"] == "C4-5"


def test_score_dataset_runs_one_batched_mc_and_is_seeded():
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from u2ad_core.core.presets import get_preset
    from u2ad_core.method.model import build_model

    cfg = get_preset("smoke")
    h, w = cfg.model.image_size
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    n = 4
    rng = np.random.default_rng(0)
    cord = np.zeros((n, h, w), np.uint8)
    cord[:, 8:120, 20:28] = 1
    seg = np.zeros((n, h, w), np.uint8)
    for i in range(6):
        seg[:, 10 + 18 * i: 28 + 18 * i] = i + 1
    data = SimpleNamespace(images=rng.random((n, h, w)).astype(np.float32), cord=cord, segments=seg,
                           subject=np.array(["a", "b", "c", "d"]), slice_index=np.arange(n),
                           patient_label=np.array([0, 1, 0, 1]), lesion_segments=np.array(["", "C3-4", "", "C5-6"]),
                           slice_offset=np.zeros(n, int))
    a = S.score_dataset(model, data, ScoreConfig(k=3), seed=5, batch_size=16)
    b = S.score_dataset(model, data, ScoreConfig(k=3), seed=5, batch_size=7)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-5)  # same masks whatever the batching
    assert a.maps.shape == (n, h, w) and a.curves.shape == (n, h) and a.eu.shape == (n, h, w)
    assert list(a.table.columns[:3]) == ["subject", "slice_index", "slice_offset"]
    assert a.table["patient_score"].notna().all()
    assert (a.raw_maps[~a.roi] == 0).all()
    # precomputed maps skip the model
    c = S.score_dataset(None, data, ScoreConfig(k=3), mc=SimpleNamespace(mean=a.recon, eu=a.eu))
    np.testing.assert_allclose(c.maps, a.maps)
    # the K recorded is the maps' own, not the config's
    assert a.config["mc_k"] == 3 and c.config["mc_k"] is None
    d = S.score_dataset(None, data, ScoreConfig(k=3), mc=SimpleNamespace(mean=a.recon, eu=a.eu, k=7))
    assert d.config["mc_k"] == 7
    with pytest.raises(ValueError, match="k=7"):
        S.score_dataset(None, data, ScoreConfig(k=3), mc_k=3, mc=SimpleNamespace(mean=a.recon, eu=a.eu, k=7))


def test_patient_span_ignores_the_cut_cord_outside_the_segments():
    img, rec, cord, seg = straight_case()
    img[0, 5, 10:13] = 0.9  # row 5: cord above C2-3 (no segment), e.g. the crop's edge
    img[0, 40, 10:13] = 0.3  # inside C5-6
    span = S.score_maps(img, rec, cord, seg, ScoreConfig(curve="rows"))
    paper = S.score_maps(img, rec, cord, seg, ScoreConfig(curve="rows", patient_span="cord"))
    assert span.table.loc[0, "patient_score"] == pytest.approx(0.15)  # 3 x 0.3 / 6
    assert paper.table.loc[0, "patient_score"] == pytest.approx(0.45)
    # a slice without any segment falls back to the whole curve
    none = S.score_maps(img, rec, cord, np.zeros_like(seg), ScoreConfig(curve="rows"))
    assert none.table.loc[0, "patient_score"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="patient_span"):
        S.score_maps(img, rec, cord, seg, ScoreConfig(patient_span="all"))
