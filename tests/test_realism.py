"""The realism report (u2ad_core.data.realism): each figure on hand-made arrays with known answers,
the stored real references recomputed from ../shared/data/real, bands and the comparison."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from u2ad_core.core import labels as L
from u2ad_core.data import realism as R
from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import SliceData
from u2ad_core.data.io import AUTHORS_PIXEL_MM
from u2ad_core.core.context import repo_root

H, W = 128, 64


def _cord(width: int = 8, rows: tuple[int, int] = (0, H), col0: int = 28) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[rows[0]:rows[1], col0:col0 + width] = True
    return m


# --------------------------------------------------------------------------------------
# the figures on hand-made slices
# --------------------------------------------------------------------------------------
def test_rectangle_cord_constant_intensity():
    img = np.full((H, W), 0.5)
    cord = _cord(width=8)
    img[cord] = 0.3
    csf = _cord(width=3, col0=40)
    img[csf] = 0.6
    m = R.measure_slice(img, cord, csf, pixel_mm=0.5)
    assert set(m) == set(R.FIGURES)
    assert m["cord_ap_mm"] == pytest.approx(4.0)  # 8 px x 0.5 mm
    assert m["cord_cv"] == pytest.approx(0.0, abs=1e-12)
    assert m["along_cord_variation"] == pytest.approx(0.0, abs=1e-12)
    assert m["csf_cord_ratio"] == pytest.approx(2.0)
    for f in R.LESION_FIGURES + ("vertebral_spacing_mm", "noise_std", "noise_rel_cord"):
        assert np.isnan(m[f]), f  # no lesion, no vertebrae, no air (constant 0.5 background)


def test_csf_ring_estimate_without_csf_mask():
    img = np.full((H, W), 0.1)
    cord = _cord(width=8)
    img[cord] = 0.25
    # a bright rim 2 px (1-4 mm at 1 mm pixels) either side of the cord: the brightest quartile of the ring
    img[:, 26:28] = 0.75
    img[:, 36:38] = 0.75
    m = R.measure_slice(img, cord, None, pixel_mm=1.0)
    assert m["csf_cord_ratio"] == pytest.approx(3.0)
    # a CSF mask smaller than 10 mm^2 is not trusted: the ring is used
    tiny = np.zeros((H, W), bool)
    tiny[0, 40:43] = True
    assert R.measure_slice(img, cord, tiny, pixel_mm=1.0)["csf_cord_ratio"] == pytest.approx(3.0)


def test_cv_and_along_cord_blocks():
    rng = np.random.default_rng(0)
    img = np.zeros((H, W))
    cord = _cord(width=10)
    img[cord] = rng.normal(0.4, 0.04, cord.sum())
    m = R.measure_slice(img, cord, pixel_mm=1.0)
    assert m["cord_cv"] == pytest.approx(0.1, rel=0.1)
    # two halves: 0.2 above, 0.3 below; 12.5 mm blocks = 16 rows at 0.78125 mm -> 8 blocks, median 0.25
    img = np.zeros((H, W))
    img[:64][cord[:64]] = 0.2
    img[64:][cord[64:]] = 0.3
    m = R.measure_slice(img, cord, pixel_mm=AUTHORS_PIXEL_MM)
    assert m["along_cord_variation"] == pytest.approx(0.1 / 0.25)
    assert R._px(R.BLOCK_MM, AUTHORS_PIXEL_MM) == 16 and R._px(R.ERODE_MM, AUTHORS_PIXEL_MM) == 2


def test_air_noise_from_border_tiles():
    rng = np.random.default_rng(1)
    img = np.full((H, W), 0.6) + rng.normal(0, 0.01, (H, W))
    img[:, :20] = np.abs(rng.normal(0.01, 0.005, (H, 20)))  # an air band on the anterior side
    cord = _cord(width=8, col0=40)
    img[cord] = 0.4
    m = R.measure_slice(np.clip(img, 0, 1), cord, pixel_mm=1.0)
    assert m["noise_std"] == pytest.approx(0.005, rel=0.15)
    assert m["noise_rel_cord"] == pytest.approx(m["noise_std"] / 0.4)
    # zero padding (or air clipped to 0) is not air: no noise figure
    img[:, :20] = 0.0
    assert np.isnan(R.measure_slice(img, cord, pixel_mm=1.0)["noise_std"])


def test_vertebral_spacing_from_bodies_discs_points_and_segments():
    p = 0.5
    lab = np.zeros((H, W), np.uint8)
    for r in range(10, 120, 20):  # six bodies, 12 rows high, centroids 20 rows apart
        lab[r:r + 12, 5:20] = L.VERTEBRAL_BODY
    assert R.measure_slice(np.zeros((H, W)), labels=lab, pixel_mm=p)["vertebral_spacing_mm"] == pytest.approx(10.0)
    # bodies merged across discs (as in the authors' spine_generic samples): the discs give the spacing
    merged = np.zeros((H, W), np.uint8)
    merged[10:110, 5:20] = L.VERTEBRAL_BODY
    for r in range(20, 110, 18):
        merged[r:r + 4, 5:20] = L.DISC
    assert R.measure_slice(np.zeros((H, W)), labels=merged, pixel_mm=p)["vertebral_spacing_mm"] == pytest.approx(9.0)
    assert R.spacing_from_points(np.array([10.0, 30.0, 52.0]), 1.0) == pytest.approx(21.0)
    assert R.spacing_from_points(np.array([[0, 0], [30, 40]]), 0.5) == pytest.approx(25.0)
    # segment map: bands of 15 rows; the first and last are cut by the cord ends and do not count
    cord = _cord(width=6, rows=(5, 120))
    seg = np.zeros((H, W), np.uint8)
    for i, r in enumerate(range(20, 110, 15)):
        seg[r:r + 15] = i + 1
    m = R.measure_slice(np.full((H, W), 0.3), cord, segments=seg, pixel_mm=p)
    assert m["vertebral_spacing_mm"] == pytest.approx(7.5)


def test_lesion_figures():
    rng = np.random.default_rng(2)
    img = np.zeros((H, W))
    cord = _cord(width=8)
    img[cord] = rng.normal(0.3, 0.02, cord.sum())
    les = np.zeros((H, W), bool)
    les[60:66, 30:33] = True  # 6 rows x 3 columns inside the 8-px cord
    img[les] = 0.4
    m = R.measure_slice(img, cord, lesion=les, pixel_mm=0.5)
    assert m["lesion_area_mm2"] == pytest.approx(18 * 0.25)
    assert m["lesion_length_mm"] == pytest.approx(3.0)
    assert m["lesion_width_fraction"] == pytest.approx(3 / 8)
    assert m["lesion_z"] == pytest.approx(5.0, rel=0.1)
    assert m["lesion_peak_percentile"] == pytest.approx(100.0)
    # the label map route gives the same lesion figures
    lab = np.where(cord, L.CORD, 0).astype(np.uint8)
    lab[les] = L.HYPERINTENSITY
    m2 = R.measure_slice(img, labels=lab, pixel_mm=0.5)
    for f in R.LESION_FIGURES:
        assert m2[f] == pytest.approx(m[f]), f


def test_no_cord_gives_nan_and_shapes_are_checked():
    m = R.measure_slice(np.full((H, W), 0.5), np.zeros((H, W)), pixel_mm=1.0)
    assert all(np.isnan(m[f]) for f in R.FIGURES)
    with pytest.raises(ValueError, match="cord has shape"):
        R.measure_slice(np.zeros((H, W)), np.zeros((H, W + 1)))
    with pytest.raises(ValueError, match="2D"):
        R.measure_slice(np.zeros((2, H, W)), np.zeros((H, W)))


# --------------------------------------------------------------------------------------
# datasets, summaries, bands, comparison
# --------------------------------------------------------------------------------------
def _slices() -> SliceData:
    n = 4
    img = np.zeros((n, H, W), np.float32)
    cord = np.broadcast_to(_cord(width=8), (n, H, W)).astype(np.uint8)
    for i in range(n):
        img[i][cord[i] > 0] = 0.2 + 0.05 * i
    return SliceData(images=img, cord=cord, csf=np.zeros_like(cord), segments=np.zeros_like(cord),
                     lesion=np.zeros_like(cord), subject=np.array(["a", "b", "c", "d"]),
                     slice_index=np.zeros(n, int), slice_offset=np.array([0, 0, 1, 0]),
                     patient_label=np.zeros(n, np.int8), lesion_segments=np.array([""] * n),
                     site=np.array(["s1", "s1", "s1", "s2"]), manifest={"data_config": {"pixel_mm": 1.5}})


def test_measure_dataset_summarise():
    df = R.measure_dataset(_slices(), cohort="toy")
    assert list(df.subject) == ["a", "b", "d"]  # middle slices only
    assert (df.cohort == "toy").all() and (df.view == "preset").all() and (df.pixel_mm == 1.5).all()
    assert np.allclose(df.cord_ap_mm, 12.0) and df.noise_std.isna().all()
    s = R.summarise(df)
    assert set(s.columns) == {"cohort", "site", "figure", "median", "q25", "q75", "n"}
    row = s[(s.site == "s1") & (s.figure == "cord_ap_mm")].iloc[0]
    assert row["n"] == 2 and row["median"] == pytest.approx(12.0)
    assert s[s.figure == "lesion_z"]["n"].eq(0).all()
    with pytest.raises(ValueError, match="no pixel size"):
        R.measure_dataset(replace(_slices(), manifest={}))


def test_bands_cover_the_references():
    b = R.bands().set_index("figure")
    assert list(b.index) == list(R.FIGURES)
    assert (b.lo < b.hi).all()
    real = b.dropna(subset=["real_min"])
    assert set(real.index) == set(R.BAND_RULES)
    assert (real.lo <= real.real_min).all() and (real.hi >= real.real_max).all()
    t = R.reference_table()
    assert len(t) == len(R.REFERENCES) and t.source.str.contains("@").all()
    for r in R.REFERENCES:  # every figure a reference gives to a band is stored
        assert all(np.isfinite(r["values"][f]) for f in r["bands"]), r["name"]


def test_compare_flags_inside_outside_and_not_measured():
    b = R.bands().set_index("figure")
    mid = 0.5 * (b.loc["csf_cord_ratio", "lo"] + b.loc["csf_cord_ratio", "hi"])
    s = pd.DataFrame([
        {"cohort": "c", "site": "x", "figure": "csf_cord_ratio", "median": mid, "q25": mid, "q75": mid, "n": 3},
        {"cohort": "c", "site": "y", "figure": "csf_cord_ratio", "median": 99.0, "q25": 99, "q75": 99, "n": 3},
        {"cohort": "c", "site": "x", "figure": "noise_std", "median": np.nan, "q25": np.nan, "q75": np.nan, "n": 0},
    ])
    c = R.compare_to_bands(s, view="preset")
    assert list(c.status) == ["inside band", "outside band", "not measured"]
    assert c.reason.iloc[0] == "" and "normalisation" in c.reason.iloc[1] and "clips air" in c.reason.iloc[2]
    assert R.compare_to_bands(s).reason.iloc[1] == ""  # authors' view: no known departure, a calibration target
    with pytest.raises(ValueError, match="view"):
        R.compare_to_bands(s, view="other")


def test_measure_cohort_authors_view(tmp_path):
    from u2ad_core.data import phantom as P

    cfg = replace(get_preset("smoke").data, n_sagittal_clinical=5)
    coh = P.generate_cohort("renji_like", 2, 3, tmp_path / "rj", cfg, show_progress=False)
    df = R.measure_cohort(coh)
    assert len(df) == 2 and (df.view == "authors").all() and (df.error == "").all()
    assert (df.pixel_mm == AUTHORS_PIXEL_MM).all() and (df.cohort == "rj").all()
    for f in ("csf_cord_ratio", "cord_cv", "cord_ap_mm", "vertebral_spacing_mm"):
        assert df[f].notna().all(), f


# --------------------------------------------------------------------------------------
# the stored real references
# --------------------------------------------------------------------------------------
def test_stored_references_match_the_real_files():
    real = repo_root().parent / "shared" / "data" / "real"
    if not real.is_dir():
        pytest.skip(f"real MRI not available: {real} is absent (it lives in ../shared beside the checkout)")
    got = R.reference_figures(real)
    for ref in R.REFERENCES:
        new = got[ref["name"]]
        finite = {f for f, v in new.items() if np.isfinite(v)}
        assert finite == set(ref["values"]), (ref["name"], finite ^ set(ref["values"]))
        for f, v in ref["values"].items():
            assert new[f] == pytest.approx(v, rel=1e-4), (ref["name"], f, new[f], v)
    # the README's facts on clinical_dcm_1: cord (eroded 2 px) CV 0.12, CSF / cord 1.71
    dcm = got["clinical_dcm_1"]
    assert dcm["cord_cv"] == pytest.approx(0.12, abs=0.01) and dcm["csf_cord_ratio"] == pytest.approx(1.71, abs=0.01)


def test_tissue_figures_leave_the_lesion_out():
    """A lesion must not raise the cord's CV, along-cord variation or lower the CSF / cord ratio."""
    rng = np.random.default_rng(0)
    img = np.full((120, 40), 0.05) + 0.002 * rng.standard_normal((120, 40))
    cord = np.zeros((120, 40), bool)
    cord[10:110, 15:25] = True
    csf = np.zeros((120, 40), bool)
    csf[10:110, 11:14] = True
    csf[10:110, 26:29] = True
    img[cord] = 0.2 + 0.01 * rng.standard_normal(cord.sum())
    img[csf] = 0.35
    clean = R.measure_slice(img, cord, csf, pixel_mm=1.0)
    les = np.zeros_like(cord)
    les[50:60, 17:23] = True
    img2 = img.copy()
    img2[les] = 0.33
    with_lesion = R.measure_slice(img2, cord, csf, lesion=les, pixel_mm=1.0)
    for f in ("cord_cv", "along_cord_variation", "csf_cord_ratio"):
        assert with_lesion[f] == pytest.approx(clean[f], rel=0.1), f
    assert with_lesion["lesion_z"] > 5
