"""Real MRI in ../shared/data/real (SCT test data, PAM50 template, the U2AD authors' sample
arrays): loading, preprocessing, and the phantom's realism measured against it. Skips when the
folder is absent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from u2ad_core.core import labels as L
from u2ad_core.data import phantom as P
from u2ad_core.data import realism as R
from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import load_dataset
from u2ad_core.data.io import AUTHORS_PIXEL_MM, DataWarning, SubjectFiles, detect_layout, load_subject, scan_cohort
from u2ad_core.data.preprocess import preprocess_cohort, preprocess_subject

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


def test_phantom_realism_against_real_mri(real_data, tmp_path):
    """CSF / cord ratio, cord AP diameter and vertebral spacing of the phantom inside the bands
    around the real references (realism.compare_to_bands, in the authors' view the references use)."""
    cfg = replace(CPU, n_sagittal_healthy=7)
    coh = P.generate_cohort("spine_generic_like", 4, 0, tmp_path / "sg", cfg, show_progress=False)
    df = R.measure_cohort(coh)
    c = R.compare_to_bands(R.summarise(df, by=("cohort",))).set_index("figure")
    for f in ("csf_cord_ratio", "cord_ap_mm", "vertebral_spacing_mm"):
        assert c.loc[f, "status"] == "inside band", (f, c.loc[f, ["median", "lo", "hi"]].tolist())


def _official(real: Path) -> Path:
    root = real / "u2ad_official"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


def test_u2ad_official_arrays_layout(real_data, tmp_path):
    """The authors' five sample slices: read, label 7 ignored with a warning naming the file, the
    spine_generic files (no cord label) reported, the clinical ones preprocessed."""
    root = _official(real_data)
    assert detect_layout(root) == "u2ad_arrays"
    subs = {s.subject: s for s in scan_cohort(root).subjects}
    assert set(subs) == {"clinical_dcm_1", "clinical_dcm_3", "spine_generic_1", "spine_generic_2", "spine_generic_3"}
    with pytest.warns(DataWarning, match=r"clinical_dcm_1\.npy: label value 7"):
        vol = load_subject(subs["clinical_dcm_1"])
    assert vol.image.shape == (1, 256, 256) and vol.zooms[1] == pytest.approx(AUTHORS_PIXEL_MM)
    # native geometry, centred on the cord: the README's facts (cord eroded by 2 px: mean 0.196, CV 0.12)
    same = replace(CPU, pixel_mm=AUTHORS_PIXEL_MM, image_size=(256, 256), crop="centre")
    with pytest.warns(DataWarning):
        out = preprocess_subject(subs["clinical_dcm_1"], same, 3)
    assert list(out["slice_offset"]) == [0] and out["segments_source"] == "bodies"
    from scipy import ndimage as ndi

    core = ndi.binary_erosion(out["cord"][0] > 0, iterations=2)
    assert out["images"][0][core].mean() == pytest.approx(0.196, abs=0.01)
    with pytest.warns(DataWarning, match="clinical_dcm_1.npy"):
        path = preprocess_cohort(root, tmp_path, CPU, 3, show_progress=False, verbose=False)
    d = load_dataset(path)
    assert d.subjects() == ["clinical_dcm_1", "clinical_dcm_3"] and d.images.shape[1:] == tuple(CPU.image_size)
    man = json.loads(path.with_suffix(".json").read_text())
    assert man["layout"] == "u2ad_arrays" and man["n_errors"] == 3 and man["n_warnings"] == 1
    assert all("empty cord" in e["error"] and e["subject"] in e["error"] for e in man["errors"])
    # the middle clinical slice: C2-3 ... C7-T1 ordered along the cord, CSF brighter than cord
    seg, cord = d.segments[0], d.cord[0]
    rows = np.flatnonzero(cord.any(1))
    vals = [v for v in (np.bincount(seg[r][cord[r] > 0]).argmax() for r in rows) if v]
    assert vals == sorted(vals) and len(set(vals)) >= 4
    assert d.images[0][d.csf[0] > 0].mean() > 1.3 * d.images[0][cord > 0].mean()
    assert L.SEGMENTS[vals[0] - 1] == "C2-3"
