"""Layouts, loading errors, preprocessing, dataset files, SliceData / SliceDataset, prepare_all."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from u2ad_core.core import labels as L
from u2ad_core.data import phantom as P
from u2ad_core.core.config import CohortSizes, DataConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import SliceDataset, load_dataset, prepare_all
from u2ad_core.data.io import DataError, SubjectFiles, detect_layout, load_subject, scan_cohort
from u2ad_core.data.preprocess import preprocess_cohort, preprocess_subject, slice_offsets

CFG = replace(get_preset("smoke").data, image_size=(128, 48), pixel_mm=1.5, crop="cord_band")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("io") / "renji_like"
    return P.generate_cohort("renji_like", 3, 5, out, CFG, show_progress=False)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _first(cohort: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = nib.load(str(next(cohort.glob("sub-*/*_T2w.nii.gz"))))
    lab = nib.load(str(next(cohort.glob("sub-*/*_labels.nii.gz"))))
    return np.asanyarray(img.dataobj), np.asanyarray(lab.dataobj), img.affine


def _save(path: Path, data, affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# --------------------------------------------------------------------------------------
def test_phantom_cohort_to_dataset_file(cohort, tmp_path):
    before = _snapshot(cohort)
    path = preprocess_cohort(cohort, tmp_path, CFG, 3, show_progress=False)
    assert _snapshot(cohort) == before  # inputs untouched
    d = load_dataset(path)
    n_sub = 3
    assert len(d) == 3 * n_sub and d.images.shape == (9, 128, 48)
    assert d.images.dtype == np.float32 and 0.0 <= d.images.min() and d.images.max() <= 1.0
    for f in ("cord", "csf", "segments", "lesion"):
        assert getattr(d, f).dtype == np.uint8
    assert d.segments.max() <= 6
    assert list(d.slice_offset[:3]) == [-1, 0, 1]
    mid = d.middle()
    assert len(mid) == n_sub and all(m.any() for m in mid.cord) and all(m.any() for m in mid.csf)
    assert d.subjects() == ["sub-renji001", "sub-renji002", "sub-renji003"]
    pt = d.patient_table()
    assert list(pt.columns) == ["subject", "site", "patient_label", "lesion_segments"]
    assert (pt.site == "renji").all()
    # lesion patients: the label is in the middle slice and its segment matches the table
    for i in range(n_sub):
        if mid.patient_label[i] == 1:
            assert mid.lesion[i].any()
            seg_vals = set(mid.segments[i][mid.lesion[i] > 0].tolist()) - {0}
            names = {L.SEGMENTS[v - 1] for v in seg_vals}
            assert names & set(L.parse_segments(str(mid.lesion_segments[i])))
    man = json.loads(path.with_suffix(".json").read_text())
    assert man["config_hash"] in path.name and man["n_errors"] == 0 and man["layout"] == "phantom"
    assert all(s["segments_source"] == "bodies" for s in man["subjects"])


def test_segments_are_ordered_along_the_cord(cohort, tmp_path):
    d = load_dataset(preprocess_cohort(cohort, tmp_path, CFG, 1, show_progress=False))
    for seg, cord in zip(d.segments, d.cord):
        rows = np.flatnonzero(cord.any(1))
        per_row = [np.bincount(seg[r][cord[r] > 0]).argmax() for r in rows]
        vals = [v for v in per_row if v > 0]
        assert vals == sorted(vals)  # superior -> inferior: C2-3 first
        assert set(vals) == set(range(1, 7))


def test_cache_reuse_and_new_file_for_new_config(cohort, tmp_path):
    p1 = preprocess_cohort(cohort, tmp_path, CFG, 1, show_progress=False)
    t1 = p1.stat().st_mtime_ns
    assert preprocess_cohort(cohort, tmp_path, CFG, 1, show_progress=False) == p1
    assert p1.stat().st_mtime_ns == t1
    p2 = preprocess_cohort(cohort, tmp_path, replace(CFG, pixel_mm=1.4), 1, show_progress=False)
    assert p2 != p1 and p1.is_file() and p2.is_file()
    p3 = preprocess_cohort(cohort, tmp_path, replace(CFG, crop="centre"), 1, show_progress=False)
    assert p3 not in (p1, p2)


def test_orientations_give_identical_slices(cohort, tmp_path):
    """The same volume stored as RAS, PSR, LAS (authors' layout) preprocesses to the same arrays."""
    img, lab, aff = _first(cohort)
    ras_img = nib.as_closest_canonical(nib.Nifti1Image(img, aff))
    ras = np.asanyarray(ras_img.dataobj)
    ras_lab = np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(lab, aff)).dataobj)
    root = tmp_path / "authors"
    for codes in ("RAS", "PSR", "LAS", "AIL"):
        d_o, a_o = P._reorient_ras_to(ras, ras_img.affine, codes)
        l_o, _ = P._reorient_ras_to(ras_lab, ras_img.affine, codes)
        _save(root / "images" / f"s{codes}.nii.gz", d_o, a_o)
        _save(root / "labels" / f"s{codes}.nii.gz", l_o, a_o)
    assert detect_layout(root) == "authors"
    d = load_dataset(preprocess_cohort(root, tmp_path / "out", CFG, 3, show_progress=False))
    assert len(d) == 12
    ref = d.subset(d.subject == "sRAS")
    for codes in ("PSR", "LAS", "AIL"):
        other = d.subset(d.subject == f"s{codes}")
        np.testing.assert_allclose(other.images, ref.images, atol=1e-6)
        assert np.array_equal(other.cord, ref.cord) and np.array_equal(other.segments, ref.segments)
    # slice_index refers to the stored file: LAS flips the sagittal axis
    n = ras.shape[0]
    las = d.subset(d.subject == "sLAS")
    assert list(las.slice_index) == [n - 1 - i for i in ref.slice_index]
    # the authors' layout without a table: patient label from label value 6
    assert set(d.patient_label.tolist()) <= {0, 1}


def test_bids_layout_with_cord_and_disc_labels(cohort, tmp_path):
    img, lab, aff = _first(cohort)
    root = tmp_path / "bids"
    sid = "sub-01"
    _save(root / sid / "anat" / f"{sid}_T2w.nii.gz", img, aff)
    der = root / "derivatives" / "labels" / sid / "anat"
    _save(der / f"{sid}_T2w_seg-manual.nii.gz", np.isin(lab, (3, 6)).astype(np.uint8), aff)
    # disc labels: one voxel per disc at the centroid of each disc component (value 3 = C2-3 ...)
    from scipy import ndimage as ndi

    ras_lab = np.asanyarray(nib.as_closest_canonical(nib.Nifti1Image(lab, aff)).dataobj)
    ras_aff = nib.as_closest_canonical(nib.Nifti1Image(lab, aff)).affine
    mid = ras_lab.shape[0] // 2
    comp, n = ndi.label(ras_lab[mid] == L.DISC)
    cms = sorted(ndi.center_of_mass(comp > 0, comp, range(1, n + 1)), key=lambda c: -c[1])
    discs = np.zeros_like(ras_lab, dtype=np.uint8)
    for v, (j, k) in enumerate(cms[:6], start=3):
        discs[mid, int(round(j)), int(round(k))] = v
    d_o, a_o = P._reorient_ras_to(discs, ras_aff, "".join(nib.aff2axcodes(aff)))
    _save(der / f"{sid}_T2w_labels-disc-manual.nii.gz", d_o, a_o)
    (root / "participants.tsv").write_text("participant_id\tpathology\tinstitution_id\nsub-01\tHC\tmgh\n")
    assert detect_layout(root) == "bids"
    c = scan_cohort(root)
    assert c.subjects[0].discs is not None and c.subjects[0].site == "mgh" and c.subjects[0].patient_label == 0
    out = preprocess_subject(c.subjects[0], CFG, 1)
    assert out["segments_source"] == "discs"
    assert out["cord"][0].any() and not out["csf"].any()
    assert set(np.unique(out["segments"][0][out["cord"][0] > 0]).tolist()) >= {1, 2, 3, 4, 5}


# --------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------
def _sf(tmp_path, img, lab, aff, lab_aff=None) -> SubjectFiles:
    i = _save(tmp_path / "img.nii.gz", img, aff)
    lb = _save(tmp_path / "lab.nii.gz", lab, aff if lab_aff is None else lab_aff)
    return SubjectFiles("s", i, labels=lb)


def test_error_corrupt_file(cohort, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(DataError, match="bad.nii.gz.*cannot read"):
        load_subject(SubjectFiles("s", bad, labels=bad))
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(next(cohort.glob("sub-*/*_T2w.nii.gz")).read_bytes()[:500])
    with pytest.raises(DataError, match="trunc.nii.gz"):
        load_subject(SubjectFiles("s", trunc))


def test_error_2d_image(tmp_path):
    sf = _sf(tmp_path, np.random.rand(20, 30).astype(np.float32), np.zeros((20, 30), np.uint8), np.eye(4))
    with pytest.raises(DataError, match="img.nii.gz.*3D"):
        load_subject(sf)


def test_error_grids_differ(cohort, tmp_path):
    img, lab, aff = _first(cohort)
    with pytest.raises(DataError, match="lab.nii.gz.*grid"):
        load_subject(_sf(tmp_path, img, lab[:, :-2], aff))
    shifted = aff.copy()
    shifted[:3, 3] += 5
    with pytest.raises(DataError, match="lab.nii.gz.*affine"):
        load_subject(_sf(tmp_path, img, lab, aff, shifted))


def test_error_empty_cord_nan_constant(cohort, tmp_path):
    img, lab, aff = _first(cohort)
    with pytest.raises(DataError, match="lab.nii.gz.*empty cord"):
        load_subject(_sf(tmp_path, img, np.where(np.isin(lab, (3, 6)), 0, lab).astype(np.uint8), aff))
    nan = img.astype(np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="img.nii.gz.*NaN"):
        load_subject(_sf(tmp_path, nan, lab, aff))
    with pytest.raises(DataError, match="img.nii.gz.*constant"):
        load_subject(_sf(tmp_path, np.full(img.shape, 7, np.int16), lab, aff))
    with pytest.raises(DataError, match="unexpected label values"):
        load_subject(_sf(tmp_path, img, (lab + 10 * (lab == 1)).astype(np.uint8), aff))


def test_bad_subject_is_reported_and_others_processed(cohort, tmp_path):
    bad = tmp_path / "cohort"
    shutil.copytree(cohort, bad)
    subs = sorted(bad.glob("sub-*"))
    next(subs[0].glob("*_labels.nii.gz")).unlink()  # missing labels
    corrupt = next(subs[1].glob("*_T2w.nii.gz"))
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # corrupt image
    path = preprocess_cohort(bad, tmp_path / "out", CFG, 1, show_progress=False, verbose=False)
    man = json.loads(path.with_suffix(".json").read_text())
    assert man["n_errors"] == 2 and man["n_subjects"] == 1
    msgs = {e["subject"]: e["error"] for e in man["errors"]}
    assert "missing labels" in msgs[subs[0].name]
    assert corrupt.name in msgs[subs[1].name]
    assert load_dataset(path).subjects() == [subs[2].name]
    # nothing at all readable -> a clear error
    for s in subs[2:]:
        next(s.glob("*_labels.nii.gz")).unlink()
    with pytest.raises(DataError, match="no subject could be preprocessed"):
        preprocess_cohort(bad, tmp_path / "out2", CFG, 1, show_progress=False, verbose=False)


def test_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="unknown layout"):
        detect_layout(tmp_path)


# --------------------------------------------------------------------------------------
def test_slice_offsets_and_torch_dataset(cohort, tmp_path):
    assert list(slice_offsets(1)) == [0] and list(slice_offsets(8)) == [-4, -3, -2, -1, 0, 1, 2, 3]
    d = load_dataset(preprocess_cohort(cohort, tmp_path, CFG, 3, show_progress=False))
    ds = SliceDataset(d)
    item = ds[4]
    assert tuple(item["image"].shape) == (1, 128, 48) and item["image"].dtype.__str__() == "torch.float32"
    assert tuple(item["cord"].shape) == (1, 128, 48) and item["segments"].dtype.__str__() == "torch.int64"
    assert int(item["slice_offset"]) == 0 and item["subject"] == d.subject[4]
    import torch

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert tuple(batch["image"].shape) == (4, 1, 128, 48)
    sub = d.subset(np.array([0, 2]))
    assert len(sub) == 2 and sub.subject[1] == d.subject[2]


def test_cli_preprocess(cohort, tmp_path):
    from u2ad_core.cli import main

    out = tmp_path / "x.npz"
    assert main(["preprocess", "--input", str(cohort), "--out", str(out), "--preset", "smoke"]) == 0
    d = load_dataset(out)
    assert len(d) == 3 * get_preset("smoke").data.slices_adapt


def test_prepare_all_is_idempotent(tmp_path):
    cfg = replace(CFG, cohorts=CohortSizes(spine_generic_like=2, openneuro_like=2, renji_like=3, ruijin_like=2),
                  n_sagittal_healthy=5, n_sagittal_clinical=3, slices_pretrain=3, slices_pseudo=2)
    paths = prepare_all(cfg, tmp_path, seed=1, show_progress=False, verbose=False)
    assert list(paths) == ["spine_generic_like", "openneuro_like", "pseudo", "renji_like", "ruijin_like"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("phantom.json")}
    files = {k: v.stat().st_mtime_ns for k, v in paths.items()}
    again = prepare_all(cfg, tmp_path, seed=1, show_progress=False, verbose=False)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("phantom.json")} == stamps
    assert {k: v.stat().st_mtime_ns for k, v in again.items()} == files
    ps = load_dataset(paths["pseudo"])
    on = load_dataset(paths["openneuro_like"])
    assert ps.original is not None and np.array_equal(ps.original, on.images)
    assert ps.lesion.any() and not np.array_equal(ps.images, ps.original)
    assert len(load_dataset(paths["spine_generic_like"])) == 2 * 3
    # cohorts differ (per-cohort seeds) and another seed gives other data
    other = prepare_all(cfg, tmp_path / "s2", seed=2, show_progress=False, verbose=False)
    assert not np.array_equal(load_dataset(other["renji_like"]).images, load_dataset(paths["renji_like"]).images)
    assert DataConfig is not None


# --------------------------------------------------------------------------------------
# the authors' arrays (u2ad_arrays layout)
# --------------------------------------------------------------------------------------
def _authors_array(seed: int = 0, lesion: bool = True, label7: bool = False) -> np.ndarray:
    """A synthetic (3, 256, 256) sample: [image in [0, 1], roi, labels], rows S->I, columns A->P.

    Cord (label 3) in columns 124-131 over rows 20-235 (centroid at the image centre), CSF (4)
    either side, six vertebral bodies (2) and discs (1) in front, a lesion (6) at rows 120-129.
    """
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(0.02, 0.01, (256, 256)), 0, 1)
    lab = np.zeros((256, 256), np.float64)
    img[:, 60:200] = np.clip(rng.normal(0.3, 0.03, (256, 140)), 0, 1)
    for i, r in enumerate(range(30, 230, 30)):  # bodies 24 rows high, discs 6 rows
        lab[r:r + 24, 80:110] = L.VERTEBRAL_BODY
        lab[r + 24:r + 30, 80:110] = L.DISC
    lab[20:236, 120:124] = L.CSF
    lab[20:236, 132:136] = L.CSF
    lab[20:236, 124:132] = L.CORD
    img[lab == L.CSF] = 0.7
    img[lab == L.CORD] = 0.25 + 0.05 * np.arange(256)[:, None].repeat(256, 1)[lab == L.CORD] / 256
    if lesion:
        lab[120:130, 126:130] = L.HYPERINTENSITY
        img[lab == L.HYPERINTENSITY] = 0.5
    if label7:
        lab[60:100, 136:138] = 7
    roi = np.isin(lab, (L.CORD, L.CSF, L.HYPERINTENSITY)).astype(np.float64)
    return np.stack([img, roi, lab])


def _array_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "1.npy", _authors_array(0, lesion=True, label7=True))
    np.save(root / "2.npy", _authors_array(1, lesion=False))
    return root


def test_u2ad_arrays_layout_reads_and_preprocesses(tmp_path):
    from u2ad_core.data.io import AUTHORS_PIXEL_MM, DataWarning

    root = _array_folder(tmp_path / "train")
    assert detect_layout(root) == "u2ad_arrays"
    c = scan_cohort(root)
    assert c.layout == "u2ad_arrays" and [s.subject for s in c.subjects] == ["1", "2"]
    with pytest.warns(DataWarning, match=r"1\.npy: label value 7 .* ignored"):
        vol = load_subject(c.subjects[0])
    assert vol.image.shape == (1, 256, 256) and vol.normalised and vol.zooms == pytest.approx((AUTHORS_PIXEL_MM,) * 3)
    assert not (vol.labels == 7).any() and vol.cord.sum() == 216 * 8 and vol.csf.any()
    # at the authors' own geometry, centred on the (centred) cord, the slice comes back unchanged
    same = replace(CFG, pixel_mm=AUTHORS_PIXEL_MM, image_size=(256, 256), crop="centre")
    out = preprocess_subject(c.subjects[1], same, 3)
    arr = _authors_array(1, lesion=False)
    assert list(out["slice_offset"]) == [0]  # one slice, whatever n_slices asks
    np.testing.assert_allclose(out["images"][0], arr[0], atol=1e-6)  # values kept (already in [0, 1])
    assert np.array_equal(out["cord"][0], arr[2] == L.CORD) and np.array_equal(out["csf"][0], arr[2] == L.CSF)
    assert out["segments_source"] == "bodies"
    # the preset's geometry, through the cohort function and the CLI
    with pytest.warns(DataWarning, match="1.npy"):
        path = preprocess_cohort(root, tmp_path / "out", CFG, 3, show_progress=False)
    d = load_dataset(path)
    assert len(d) == 2 and d.images.shape == (2, 128, 48) and list(d.slice_offset) == [0, 0]
    man = json.loads(path.with_suffix(".json").read_text())
    assert man["layout"] == "u2ad_arrays" and man["n_errors"] == 0 and man["n_warnings"] == 1
    assert "1.npy" in man["subjects"][0]["warnings"][0]
    assert list(d.patient_label) == [1, 0] and d.lesion[0].any() and not d.lesion[1].any()
    assert d.lesion_segments[0] != "" and set(L.parse_segments(str(d.lesion_segments[0]))) <= set(L.SEGMENTS)
    assert d.images[0][d.csf[0] > 0].mean() > 2 * d.images[0][d.cord[0] > 0].mean()
    from u2ad_core.cli import main

    with pytest.warns(DataWarning):
        assert main(["preprocess", "--input", str(root), "--out", str(tmp_path / "x.npz"), "--preset", "smoke"]) == 0
    assert len(load_dataset(tmp_path / "x.npz")) == 2


def test_u2ad_arrays_bad_files(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    good = _authors_array(0, lesion=False)

    def err(name: str, arr=None, raw: bytes | None = None) -> str:
        p = root / name
        if raw is not None:
            p.write_bytes(raw)
        else:
            np.save(p, arr)
        with pytest.raises(DataError) as e:
            load_subject(SubjectFiles(p.stem, p))
        assert name in str(e.value)
        return str(e.value)

    assert "(3, 256, 256)" in err("shape.npy", good[:, :128, :128])
    assert "2 channels, not 3" in err("two.npy", good[:2])
    assert "got (256, 256)" in err("flat.npy", good[0])
    assert "cannot read" in err("corrupt.npy", raw=b"not a numpy file at all")
    bad = good.copy()
    bad[2, 10, 10] = 9
    assert "unexpected label values [9]" in err("nine.npy", bad)
    bad = good.copy()
    bad[0] *= 4
    assert "expected [0, 1]" in err("range.npy", bad)
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    assert "NaN" in err("nan.npy", bad)
    bad = good.copy()
    bad[2] = np.where(bad[2] == L.CORD, 0, bad[2])
    assert "empty cord" in err("nocord.npy", bad)
    bad = good.copy()
    bad[2, 5, 5] = 1.5
    assert "non-negative integers" in err("frac.npy", bad)
