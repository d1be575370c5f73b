"""The real-MRI chapter's helpers (u2ad_core.experiments.realmri): synthetic data everywhere they can, the real
files in ../shared/data/real where they must (skipping, with the reason, when absent), and the
notebook's no-data path."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from u2ad_core.data import fetch as F
from u2ad_core.experiments import realmri as RM
from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import SliceData
from u2ad_core.data.io import DataError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_preset("smoke")


def healthy_stack(n: int = 4, seed: int = 0, csf: bool = True) -> SliceData:
    """n synthetic sagittal slices (64 x 32): a vertical cord (0.3) in CSF (0.8), noise."""
    rng = np.random.default_rng(seed)
    h, w = 64, 32
    img = np.clip(0.1 + 0.02 * rng.standard_normal((n, h, w)), 0, 1).astype(np.float32)
    cord = np.zeros((n, h, w), np.uint8)
    cord[:, 4:60, 13:19] = 1
    sac = np.zeros_like(cord)
    sac[:, 2:62, 10:22] = 1
    img[sac > 0] = 0.8 + 0.02 * rng.standard_normal(int(sac.sum()))
    img[cord > 0] = 0.3 + 0.02 * rng.standard_normal(int(cord.sum()))
    seg = np.zeros_like(cord)
    for k in range(6):
        seg[:, 4 + 9 * k: 13 + 9 * k] = k + 1
    return SliceData(images=img, cord=cord, csf=(sac - cord) if csf else np.zeros_like(cord), segments=seg,
                     lesion=np.zeros_like(cord), subject=np.array([f"s{i}" for i in range(n)]),
                     slice_index=np.arange(n), slice_offset=np.arange(n) - n // 2,
                     patient_label=np.zeros(n, np.int8), lesion_segments=np.array([""] * n))


# --------------------------------------------------------------------------------------
# Synthetic lesions
# --------------------------------------------------------------------------------------
def test_insert_lesions_in_the_cord_with_the_phantom_contrast():
    from u2ad_core.data.phantom import LESION_TYPES

    d = healthy_stack(40)
    out, les, params = RM.insert_lesions(d.images, d.cord, d.csf, rng=0, conspicuity="mixed")
    assert out.shape == les.shape == d.images.shape and out.dtype == np.float32 and les.dtype == np.uint8
    assert (les <= d.cord).all() and les.reshape(40, -1).any(1).all()
    outside = d.cord == 0
    assert np.array_equal(out[outside], d.images[outside])  # only the cord changes
    assert (out >= d.images - 1e-6).all()  # a hyperintensity only adds signal
    kinds = {p["type"] for p in params}
    assert kinds == {"faint", "intense"}
    for p, i in zip(params, range(40)):
        lo, hi = LESION_TYPES[p["type"]]["contrast"]
        assert lo <= p["contrast"] <= hi
        assert p["cord_mean"] < p["target"] < p["csf_mean"]  # between cord and CSF
        assert 3 - 1e-9 <= p["length_mm"] <= 15 + 1e-9
        # the core moves the cord mean most of the way to the target (texture kept: additive)
        added = (out[i] - d.images[i])[les[i] > 0].mean()
        assert added == pytest.approx(p["target"] - p["cord_mean"], rel=0.5)
    faint = np.mean([p["contrast"] for p in params if p["type"] == "faint"])
    intense = np.mean([p["contrast"] for p in params if p["type"] == "intense"])
    assert intense > faint
    # same seed, same lesions; another seed, others
    out2, les2, _ = RM.insert_lesions(d.images, d.cord, d.csf, rng=0)
    assert np.array_equal(out, out2) and np.array_equal(les, les2)
    assert not np.array_equal(les, RM.insert_lesions(d.images, d.cord, d.csf, rng=1)[1])


def test_insert_lesions_edge_cases():
    d = healthy_stack(3, csf=False)  # no CSF mask: the ring estimate
    d.cord[1] = 0  # a slice without cord is left alone
    out, les, params = RM.insert_lesions(d.images, d.cord, None, rng=np.random.default_rng(3), conspicuity="faint")
    assert params[1]["n_pixels"] == 0 and not les[1].any() and np.array_equal(out[1], d.images[1])
    assert params[0]["csf_mean"] > params[0]["cord_mean"]  # estimated from the brightest ring pixels
    with pytest.raises(ValueError, match="conspicuity"):
        RM.insert_lesions(d.images, d.cord, rng=0, conspicuity="bright")
    with pytest.raises(ValueError, match="rng"):
        RM.insert_lesions(d.images, d.cord)


def test_tissue_means_mask_and_ring():
    d = healthy_stack(2)
    cm, fm = RM.tissue_means(d.images, d.cord, d.csf)
    assert cm == pytest.approx([0.3, 0.3], abs=0.01) and fm == pytest.approx([0.8, 0.8], abs=0.01)
    cm2, fm2 = RM.tissue_means(d.images, d.cord, None)  # ring 1-4 px, brightest quartile: CSF
    assert fm2 == pytest.approx([0.8, 0.8], abs=0.05)


def test_lesion_pairs_twins_and_labels():
    d = healthy_stack(4)
    pairs, pair, params = RM.lesion_pairs(d, np.random.default_rng(0), copies=2)
    m = len(params)
    assert m == 8 and len(pairs) == 16 and len(pair) == 16
    assert list(pairs.patient_label) == [1] * m + [0] * m
    assert np.array_equal(pair[:m], pair[m:])
    assert np.array_equal(pairs.images[m:], pairs.original[m:]) and np.array_equal(pairs.original[:m], pairs.images[m:])
    assert pairs.lesion[:m].reshape(m, -1).any(1).all() and not pairs.lesion[m:].any()
    assert len(set(pairs.subject)) == 16  # every copy is its own patient
    assert all(s for s in pairs.lesion_segments[:m]) and not any(pairs.lesion_segments[m:])
    assert {p["source"] for p in params} == set(d.subject)


def _fake(scores, maps, roi):
    return SimpleNamespace(table=pd.DataFrame({"patient_score": scores}), raw_maps=maps, roi=roi)


def test_pair_detection_table_perfect_tied_and_grouped():
    d = healthy_stack(10)
    pairs, pair, params = RM.lesion_pairs(d, np.random.default_rng(1), copies=1)
    m = len(params)
    les = pairs.lesion.astype(np.float32)
    perfect = _fake(np.r_[np.ones(m), np.zeros(m)], les, pairs.cord > 0)
    tied = _fake(np.zeros(2 * m), np.zeros_like(les), pairs.cord > 0)
    groups = np.array([p["type"] for p in params])
    tab, folds = RM.pair_detection_table({"perfect": perfect, "tied": tied}, pairs, pair, n_folds=5, seed=0,
                                    reference="tied", groups=groups)
    a = tab[tab["group"] == "all"].set_index("method")
    assert a.loc["perfect", "patient_auroc_mean"] == 1.0 and a.loc["perfect", "win_rate_mean"] == 1.0
    assert a.loc["perfect", "pixel_auroc_mean"] == 1.0 and a.loc["perfect", "pixel_auprc_mean"] == 1.0
    assert a.loc["tied", "patient_auroc_mean"] == 0.5 and a.loc["tied", "win_rate_mean"] == 0.5
    assert a.loc["perfect", "patient AUROC vs tied"] == "better"
    assert set(tab["group"]) == {"all", *set(groups)}
    assert a.loc["perfect", "n_pairs"] == m and folds["fold"].nunique() == 5
    with pytest.raises(ValueError, match="groups"):
        RM.pair_detection_table({"p": perfect}, pairs, pair, groups=groups[:-1])


def test_paired_change_on_a_log_scale():
    """A tenfold rise on most slices is a rise on a log scale, whatever one extreme slice does."""
    before = np.array([1e-6, 2e-6, 1e-6, 3e-6, 1e-6])
    after = before * 10
    after[0] = 1e-2  # one slice jumps by 10^4: the arithmetic spread swamps the mean change
    assert RM.paired_change(before, after)["words"] == "no clear difference"
    c = RM.paired_change(before, after, log=True)
    assert c["words"] == "higher" and c["scale"] == "log" and c["relative_change"] > 9
    with pytest.raises(ValueError, match="positive"):
        RM.paired_change([0.0, 1.0], [1.0, 1.0], log=True)


def test_paired_change_shift_table_and_schedule():
    c = RM.paired_change([1.0, 1.1, 0.9, 1.0], [0.5, 0.6, 0.4, 0.5])
    assert c["words"] == "lower" and c["change"] == pytest.approx(-0.5)
    assert RM.paired_change([1.0, 2.0, 3.0], [1.5, 1.0, 3.5])["words"] == "no clear difference"
    df = pd.DataFrame({"group": ["a"] * 3 + ["b"] * 3, "mse": [1.0, 1.1, 0.9, 2.0, 2.1, 1.9], "eu_mean": [1, 5, 9, 2, 6, 10]})
    t = RM.shift_table(df, "a", "b").set_index("metric")
    assert t.loc["mse", "a vs b"] == "lower" and t.loc["eu_mean", "a vs b"] == "no clear difference"
    assert t.loc["mse", "ratio"] == pytest.approx(0.5)
    ov = RM.adapt_overrides(get_preset("cpu"), 3)
    a = get_preset("cpu").adapt
    assert ov["adapt.epochs"] == 3 * a.epochs and ov["adapt.stage2_start"] == 3 * a.stage2_start
    assert get_preset("cpu", **ov).adapt.lr_step == 3 * a.lr_step


# --------------------------------------------------------------------------------------
# Finding the files; the whole-neck volume
# --------------------------------------------------------------------------------------
def test_find_real_dir_needs_verified_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RM.find_real_dir(empty) is None
    assert any("missing" in p for p in RM.missing_files(empty))
    assert RM.real_dir_candidates(tmp_path / "proj") == [tmp_path / "proj/data/real", tmp_path / "shared/data/real"]
    assert RM.find_real_dir(root=tmp_path / "proj") is None


def _write(path: Path, arr, aff):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), str(path))


def test_sct_t2_volume_places_the_crop_masks(tmp_path):
    """A synthetic whole-neck volume and a crop of it at a known offset (PSR axes, like the SCT files)."""
    rng = np.random.default_rng(0)
    full = rng.integers(10, 500, (40, 30, 12)).astype(np.int16)
    aff = np.array([[0, 0, 1, -5.0], [-1, 0, 0, 20.0], [0, 1, 0, -7.0], [0, 0, 0, 1]])  # PSR
    off = np.array([10, 8, 0])
    crop = full[10:30, 8:26, :]
    caff = aff.copy()
    caff[:3, 3] = aff[:3, :3] @ off + aff[:3, 3]
    cord = np.zeros(crop.shape, np.uint8)
    cord[8:12, 2:16, 5:8] = 1
    levels = cord * 3
    d = tmp_path / "real" / RM.SCT_DIR
    _write(d / RM.T2_FILES["full_fov"], full, aff)
    _write(d / RM.T2_FILES["image"], crop, caff)
    _write(d / RM.T2_FILES["cord"], cord, caff)
    _write(d / RM.T2_FILES["levels"], levels, caff)
    vol = RM.sct_t2_volume(tmp_path / "real")
    assert vol.orientation == "PSR" and vol.image.shape == (12, 40, 30)  # RAS: 12 sagittal slices
    assert vol.cord.sum() == cord.sum() and set(np.unique(vol.levels)) == {0, 3}
    # the cord sits on the same image voxels as in the crop
    crop_vals = np.sort(crop[cord > 0].astype(np.float32))
    assert np.array_equal(np.sort(vol.image[vol.cord > 0]), crop_vals)
    # a crop that is not the full image at that offset is refused, naming the files
    _write(d / RM.T2_FILES["image"], (crop + 1).astype(np.int16), caff)
    with pytest.raises(DataError, match="is not"):
        RM.sct_t2_volume(tmp_path / "real")


# --------------------------------------------------------------------------------------
# On the real files (skip when ../shared/data/real is absent)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_copy(real_data, tmp_path_factory):
    """The real files as `u2ad data fetch --source` leaves them (verifies the copy, too)."""
    dest = tmp_path_factory.mktemp("real")
    res = F.fetch(dest, source=real_data, log=None)
    assert all(r.ok for r in res), [r.message for r in res if not r.ok]
    return dest


def test_find_real_dir_on_a_fetched_copy(real_copy, tmp_path):
    assert RM.find_real_dir(real_copy) == real_copy
    bad = tmp_path / "bad"
    shutil.copytree(real_copy, bad)
    p = bad / "u2ad_official" / "clinical_dcm_3.npy"
    p.chmod(0o644)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    assert RM.find_real_dir(bad) is None and any("clinical_dcm_3.npy: SHA-256" in m for m in RM.missing_files(bad))


def test_healthy_slices_on_real_files(real_copy):
    d = RM.healthy_slices(real_copy, SMOKE.data, 5)
    assert len(d) == 10 and list(d.subject) == ["sct_t2"] * 5 + ["pam50"] * 5
    assert d.images.shape[1:] == SMOKE.data.image_size and 0 <= d.images.min() and d.images.max() <= 1
    assert d.cord.reshape(10, -1).sum(1).min() > 50 and (d.patient_label == 0).all()
    assert d.segments[d.cord > 0].max() >= 3  # C2-3 ... at least C4-5 on both sources
    assert d.csf[5:].any() and not d.csf[:5].any()  # the template has a CSF mask, the subject does not
    # the whole-neck field of view: far less zero padding than the crop alone
    assert (d.images[2] == 0).all(1).mean() < 0.4
    out, les, params = RM.insert_lesions(d.images, d.cord, d.csf, rng=0, pixel_mm=SMOKE.data.pixel_mm)
    assert les.reshape(10, -1).any(1).all() and all(p["csf_mean"] > p["cord_mean"] for p in params)


def test_preprocessing_steps_on_real_files(real_copy):
    import warnings

    from u2ad_core.data.io import DataWarning, SubjectFiles, load_subject

    vol = RM.sct_t2_volume(real_copy)
    st = RM.preprocessing_steps(vol, SMOKE.data, real_copy / RM.SCT_DIR / RM.T2_FILES["full_fov"])
    assert [s["units"] for s in st] == ["stored value", "stored value", "[0, 1]", "[0, 1]"]
    assert st[0]["title"].startswith("as stored") and "PSR" in st[0]["title"]
    assert st[-1]["image"].shape == SMOKE.data.image_size and st[-1]["cord"].any()
    assert st[-1]["segments_source"] == "levels"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        arr = load_subject(SubjectFiles("dcm", real_copy / RM.ARRAYS_DIR / "clinical_dcm_1.npy"))
        st = RM.preprocessing_steps(arr, SMOKE.data, real_copy / RM.ARRAYS_DIR / "clinical_dcm_1.npy")
    assert len(st) == 2 and st[0]["image"].shape == (256, 256) and st[-1]["csf"].any()
    assert st[-1]["segments_source"] == "bodies"


# --------------------------------------------------------------------------------------
# The notebook without the files: it says how to fetch them and shows no result
# --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_notebook_without_real_files_shows_no_result(tmp_path):
    import nbformat
    import papermill as pm

    empty = tmp_path / "no_real"
    empty.mkdir()
    out = tmp_path / "11.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "11_real_mri.ipynb"), str(out), cwd=str(ROOT / "notebooks"),
                        parameters={"preset": "smoke", "device": "cpu", "real_dir": str(empty),
                                    "data_dir": str(tmp_path / "data"), "run_dir": str(tmp_path / "runs")},
                        progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    texts, images = [], 0
    for c in nb.cells:
        for o in c.get("outputs", []):
            data = o.get("data", {})
            images += "image/png" in data
            texts.append(o.get("text", "") + data.get("text/markdown", "") + data.get("text/plain", ""))
    text = "\n".join(texts)
    assert images == 0
    assert "The real files are not here" in text and "u2ad data fetch" in text and "--source" in text
    assert "Figure" not in text and "AUROC" not in text
    assert str(tmp_path) not in text.replace(str(empty), "")  # no machine paths beyond the one given
    assert not list((tmp_path / "runs").rglob("*.pt"))  # nothing trained
