"""Real MRI in ../shared/data/real (SCT test data, PAM50 template): loading, preprocessing, and
the phantom's realism measured against it. Skips when the folder is absent."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from u2ad_core import phantom as P
from u2ad_core.config import get_preset
from u2ad_core.io import SubjectFiles, load_subject, scan_cohort
from u2ad_core.preprocess import preprocess_subject

CPU = get_preset("cpu").data


def _sct(real: Path) -> Path:
    root = real / "sct_testing_data"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


@pytest.fixture(scope="module")
def t2(real_data):
    r = _sct(real_data) / "t2"
    sf = SubjectFiles("t2", r / "t2.nii.gz", cord=r / "t2_seg-manual.nii.gz", levels=r / "t2_seg-manual_labeled.nii.gz")
    return sf, preprocess_subject(sf, replace(CPU, crop="centre", image_size=(64, 64)), 3)


@pytest.fixture(scope="module")
def pam50(real_data):
    r = _sct(real_data) / "template"
    sf = SubjectFiles("pam50", r / "PAM50_small_t2.nii.gz", cord=r / "PAM50_small_cord.nii.gz",
                      csf=r / "PAM50_small_csf_derived.nii.gz", discs=r / "PAM50_small_label_disc.nii.gz",
                      levels=r / "PAM50_small_levels.nii.gz")
    return sf, preprocess_subject(sf, CPU, 3)


def test_t2_psr_middle_slice_has_a_sane_cord(t2):
    sf, out = t2
    assert out["orientation"] == "PSR"
    vol = load_subject(sf)
    assert vol.image.shape == (52, 60, 55)  # RAS: 52 sagittal slices
    cord = out["cord"][1]
    widths = cord.sum(1)[cord.sum(1) > 0]
    assert cord.sum() > 200 and 5 <= np.median(widths) <= 10  # cord AP 5-10 mm at 1 mm pixels
    cols = np.nonzero(cord)[1]
    assert abs(cols.mean() - 31.5) < 4  # centred by the crop
    assert out["segments_source"] == "levels"  # cord labelled by level 2..5
    segs = out["segments"][1][cord > 0]
    assert set(np.unique(segs).tolist()) >= {1, 2}  # C2-3, C3-4 at least
    assert list(out["slice_offset"]) == [-1, 0, 1]
    assert 0 <= out["images"].min() and out["images"].max() <= 1


def test_pam50_las_template_segments_and_csf(pam50):
    sf, out = pam50
    assert out["orientation"] == "LAS"
    vol = load_subject(sf)
    assert vol.zooms == pytest.approx((1.0, 1.0, 2.0))
    cord, csf, seg = out["cord"][1], out["csf"][1], out["segments"][1]
    assert cord.any() and csf.any() and not (cord.astype(bool) & csf.astype(bool)).all()
    assert out["segments_source"] == "discs"
    # all six segments, ordered superior -> inferior along the cord
    rows = np.flatnonzero(cord.any(1))
    per_row = [np.bincount(seg[r][cord[r] > 0]).argmax() for r in rows]
    vals = [v for v in per_row if v]
    assert vals == sorted(vals) and set(vals) == {1, 2, 3, 4, 5, 6}
    # CSF brighter than cord after normalisation (T2w)
    im = out["images"][1]
    assert im[csf > 0].mean() > 2 * im[cord > 0].mean()


def test_full_fov_reorients_psr(real_data):
    r = _sct(real_data) / "full_fov_2014" / "t2.nii.gz"
    img = nib.load(str(r))
    assert nib.aff2axcodes(img.affine) == ("P", "S", "R")
    assert nib.as_closest_canonical(img).shape == (52, 384, 195)


def test_phantom_realism_against_real_mri(real_data, t2, pam50, tmp_path):
    """Cord/CSF intensity ratio, cord AP diameter and vertebral spacing of the phantom vs real."""
    _, o_t2 = t2
    _, o_pam = pam50
    real_t2 = P.measure_anatomy(o_t2["images"][1], o_t2["cord"][1], None, 1.0)
    rows = np.array([v[0] for v in o_pam["centroids_rc"].values()])
    real_pam = P.measure_anatomy(o_pam["images"][1], o_pam["cord"][1], o_pam["csf"][1], 1.0, rows)
    cfg = replace(CPU, n_sagittal_healthy=7)
    coh = P.generate_cohort("spine_generic_like", 4, 0, tmp_path / "sg", cfg, show_progress=False)
    ratio, ap, spacing = [], [], []
    for sf in scan_cohort(coh).subjects:
        o = preprocess_subject(sf, cfg, 1)
        r_ = np.array([v[0] for v in o["centroids_rc"].values()])
        m = P.measure_anatomy(o["images"][0], o["cord"][0], o["csf"][0], cfg.pixel_mm, r_)
        ratio.append(m["csf_cord_ratio"])
        ap.append(m["cord_ap_mm"])
        spacing.append(m["level_spacing_mm"])
    # CSF / cord ratio: PAM50 about 3 (README: 2735 / 911)
    assert 0.6 * real_pam["csf_cord_ratio"] <= np.median(ratio) <= 1.5 * real_pam["csf_cord_ratio"], (ratio, real_pam)
    # cord AP diameter within 2 mm of the real subject and the template
    assert abs(np.median(ap) - real_t2["cord_ap_mm"]) <= 2.0, (ap, real_t2)
    assert abs(np.median(ap) - real_pam["cord_ap_mm"]) <= 2.0, (ap, real_pam)
    # vertebral spacing within 20 % of the template's (about 17 mm)
    assert abs(np.median(spacing) / real_pam["level_spacing_mm"] - 1) <= 0.2, (spacing, real_pam)
