"""`u2ad infer` end to end: a tiny trained EdgeMAE on a tiny .npz and on tiny NIfTI files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
nib = pytest.importorskip("nibabel")

from u2ad_core.cli import main  # noqa: E402
from u2ad_core.core.presets import get_preset  # noqa: E402
from u2ad_core.core.labels import SEGMENTS  # noqa: E402

# a tiny model on the smoke preset's image size (128 x 48, patch 8)
TINY = {"model.embed_dim": 16, "model.depth": 1, "model.num_heads": 2, "model.decoder_embed_dim": 16,
        "model.decoder_depth": 1, "model.decoder_num_heads": 2, "pretrain.epochs": 1,
        "pretrain.batch_size": 4, "pretrain.checkpoint_every": 1}


def tiny_slices(n: int = 4, seed: int = 0):
    """SliceData of n synthetic slices on the smoke grid: a bright cord band, segments, a lesion."""
    from u2ad_core.data.datasets import SliceData

    cfg = get_preset("smoke")
    h, w = cfg.data.image_size
    rng = np.random.default_rng(seed)
    images = (0.1 + 0.05 * rng.random((n, h, w))).astype(np.float32)
    cord = np.zeros((n, h, w), np.uint8)
    cord[:, 8:120, 20:28] = 1
    images[cord > 0] = 0.5
    seg = np.zeros((n, h, w), np.uint8)
    for i in range(6):
        seg[:, 12 + 17 * i: 29 + 17 * i] = i + 1
    lesion = np.zeros_like(cord)
    lesion[1, 50:56, 22:26] = 1
    images[lesion > 0] = 0.9
    return SliceData(
        images=images, cord=cord, csf=np.zeros_like(cord), segments=seg, lesion=lesion,
        subject=np.array([f"sub-{i}" for i in range(n)]), slice_index=np.arange(n),
        slice_offset=np.zeros(n, np.int64), patient_label=np.array([0, 1, 0, 1][:n], np.int8),
        lesion_segments=np.array(["", "C4-5", "", "C2-3"][:n]),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny EdgeMAE pretrained for one epoch by the real training code (checkpoint on disk)."""
    from u2ad_core.method.train import pretrain

    root = tmp_path_factory.mktemp("infer")
    cfg = get_preset("smoke", **TINY)
    data = tiny_slices()
    res = pretrain(cfg, data, root / "runs", device="cpu", seed=0, show_progress=False)
    npz = data.save(root / "tiny.npz")
    return res.run_path, npz, root


def test_infer_on_npz(trained, tmp_path):
    run_path, npz, _ = trained
    out = tmp_path / "out"
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(npz), "--out", str(out),
               "--preset", "smoke", "--k", "2", "--device", "cpu"])
    assert rc == 0
    for name in ("maps.npz", "curves.csv", "scores.csv", "infer.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
    assert list(scores.columns) == ["subject", "slice", "patient_label", "lesion_segments", "patient_score",
                                    "top_segment", *SEGMENTS]
    assert len(scores) == 4 and scores["patient_score"].notna().all()
    with np.load(out / "maps.npz") as z:
        assert z["maps"].shape == (4, 128, 48) and z["curves"].shape == (4, 128)
        assert z["recon"].shape == z["eu"].shape == z["images"].shape == (4, 128, 48)
        assert (z["maps"][z["roi"] == 0] == 0).all()
    curves = pd.read_csv(out / "curves.csv", keep_default_na=False, na_values=[""])
    assert {"subject", "slice", "row", "curve", "segment"} <= set(curves.columns)
    assert set(curves["segment"].dropna()) <= set(SEGMENTS)
    info = json.loads((out / "infer.json").read_text())
    assert info["k"] == 2 and info["n_slices"] == 4


def _write_nifti(path, arr, zooms=(1.5, 1.5, 1.5)):
    aff = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(arr, aff), str(path))


def test_infer_on_nifti_with_levels(trained, tmp_path):
    """A 3D volume (RAS, 9 sagittal slices) with a cord tube and a level-labelled cord."""
    run_path, _, _ = trained
    rng = np.random.default_rng(1)
    x, y, z = 9, 50, 100
    img = (100 + 10 * rng.random((x, y, z))).astype(np.float32)
    cord = np.zeros((x, y, z), np.uint8)
    cord[3:6, 22:28, 5:95] = 1
    img[cord > 0] = 400.0
    img[2:7, 19:31, 5:95][cord[2:7, 19:31, 5:95] == 0] = 900.0  # CSF around the cord
    levels = np.zeros_like(cord)
    for v in range(2, 9):  # C2 at the top (superior = larger z in RAS)
        z_hi = 95 - 12 * (v - 2)
        levels[:, :, z_hi - 12:z_hi][cord[:, :, z_hi - 12:z_hi] > 0] = v
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("t2", "cord", "levels")}
    _write_nifti(paths["t2"], img)
    _write_nifti(paths["cord"], cord)
    _write_nifti(paths["levels"], levels)
    out = tmp_path / "out"
    rc = main(["infer", "--checkpoint", str(run_path / "model.pt"), "--input", str(paths["t2"]),
               "--mask", str(paths["cord"]), "--levels", str(paths["levels"]), "--out", str(out),
               "--preset", "smoke", "--k", "2", "--slices", "3", "--device", "cpu"])
    assert rc == 0
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
    assert list(scores.columns) == ["subject", "slice", "patient_score", "top_segment", *SEGMENTS]
    assert len(scores) == 3 and (scores["subject"] == "t2").all()
    assert scores["patient_score"].notna().all()
    assert scores[list(SEGMENTS)].notna().any(axis=None)  # segments derived from the levels
    with np.load(out / "maps.npz") as z:
        assert z["maps"].shape == (3, 128, 48)


def test_infer_errors_are_clear(trained, tmp_path, capsys):
    run_path, npz, _ = trained
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(tmp_path / "missing.nii.gz"),
               "--out", str(tmp_path / "o"), "--preset", "smoke"])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    nii = tmp_path / "img.nii.gz"
    _write_nifti(nii, np.ones((4, 4, 4), np.float32))
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(nii), "--out", str(tmp_path / "o"),
               "--preset", "smoke"])
    assert rc == 2 and "--mask" in capsys.readouterr().err
    # data of another size than the model's
    from u2ad_core.data.datasets import load_dataset

    small = load_dataset(npz).subset(np.arange(2))
    for f in ("images", "cord", "csf", "segments", "lesion"):
        setattr(small, f, getattr(small, f)[:, :64])
    other = small.save(tmp_path / "small.npz")
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(other), "--out", str(tmp_path / "o"),
               "--preset", "smoke", "--device", "cpu", "--k", "2"])
    assert rc == 2 and "expects (128, 48)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on failure


def test_infer_on_real_t2(trained, tmp_path, real_data):
    """The real T2w crop (PSR orientation) with its manual cord mask and level-labelled cord."""
    run_path, _, _ = trained
    t2 = real_data / "sct_testing_data" / "t2"
    out = tmp_path / "real"
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(t2 / "t2.nii.gz"),
               "--mask", str(t2 / "t2_seg-manual.nii.gz"), "--levels", str(t2 / "t2_seg-manual_labeled.nii.gz"),
               "--out", str(out), "--preset", "smoke", "--k", "2", "--device", "cpu"])
    assert rc == 0
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
    assert len(scores) == 1 and np.isfinite(scores.loc[0, "patient_score"])
    # the crop covers about C2-C5: the upper segments are scored, the lower ones absent (NaN)
    assert scores[["C2-3", "C3-4"]].notna().all(axis=None)
    assert scores[["C6-7", "C7-T1"]].isna().all(axis=None)


# --------------------------------------------------------------------------------------
# The authors' array format (.npy, (3, 256, 256) = image, ROI, label map)
# --------------------------------------------------------------------------------------
def authors_array(seed: int = 0, cord: bool = True, label7: bool = False) -> np.ndarray:
    """A synthetic slice in the authors' format: rows S->I, columns A->P, labels 1 disc, 2 body,
    3 cord, 4 CSF (7 = the undocumented ligament band when ``label7``)."""
    rng = np.random.default_rng(seed)
    img = 0.05 + 0.02 * rng.random((256, 256))
    lab = np.zeros((256, 256))
    for k in range(7):  # vertebral bodies in front of the canal, discs between them
        r0 = 20 + 32 * k
        lab[r0:r0 + 24, 60:110] = 2
        lab[r0 + 24:r0 + 32, 60:110] = 1
    img[lab == 2] = 0.3
    img[lab == 1] = 0.4
    lab[10:250, 120:126] = 4
    lab[10:250, 134:140] = 4
    img[lab == 4] = 0.9
    if cord:
        lab[10:250, 126:134] = 3
        img[lab == 3] = 0.45
    if label7:
        lab[10:250, 141] = 7
    return np.stack([img, (lab > 0).astype(float), lab])


def test_infer_on_authors_arrays(trained, tmp_path, capsys):
    """One .npy file and a folder of them (one without a cord label, skipped and listed):
    the same four outputs as for NIfTI, on the model's grid."""
    run_path, _, _ = trained
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "case_a.npy", authors_array(0, label7=True))
    np.save(arrays / "case_b.npy", authors_array(1))
    np.save(arrays / "no_cord.npy", authors_array(2, cord=False))
    out1 = tmp_path / "one"
    from u2ad_core.data.io import DataWarning

    with pytest.warns(DataWarning, match="label value 7"):
        rc = main(["infer", "--checkpoint", str(run_path), "--input", str(arrays / "case_a.npy"), "--out", str(out1),
                   "--preset", "smoke", "--k", "2", "--device", "cpu"])
    assert rc == 0
    for name in ("maps.npz", "curves.csv", "scores.csv", "infer.json"):
        assert (out1 / name).is_file(), name
    scores = pd.read_csv(out1 / "scores.csv", keep_default_na=False, na_values=[""])
    assert list(scores.columns) == ["subject", "slice", "patient_score", "top_segment", *SEGMENTS]  # label unknown
    assert scores["subject"].tolist() == ["case_a"] and np.isfinite(scores.loc[0, "patient_score"])
    assert scores[list(SEGMENTS)].notna().sum(axis=1).iloc[0] >= 4  # segments from the vertebral bodies
    with np.load(out1 / "maps.npz") as z:
        assert z["maps"].shape == z["images"].shape == (1, 128, 48)
        assert z["roi"].sum() > 100 and (z["maps"][z["roi"] == 0] == 0).all()
    out2 = tmp_path / "folder"
    with pytest.warns(DataWarning, match="case_a.npy: label value 7"):
        rc = main(["infer", "--checkpoint", str(run_path), "--input", str(arrays), "--out", str(out2),
                   "--preset", "smoke", "--k", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped no_cord" in err and "empty cord mask" in err
    scores = pd.read_csv(out2 / "scores.csv", keep_default_na=False, na_values=[""])
    assert scores["subject"].tolist() == ["case_a", "case_b"]
    info = json.loads((out2 / "infer.json").read_text())
    assert [s["subject"] for s in info["skipped"]] == ["no_cord"] and info["n_slices"] == 2
    # the same slice scores the same whether given alone or in the folder (same seed, same K)
    first = pd.read_csv(out1 / "scores.csv")["patient_score"].iloc[0]
    assert scores["patient_score"].iloc[0] == pytest.approx(first, rel=0.05)


def test_infer_array_errors_are_clear(trained, tmp_path, capsys):
    run_path, _, _ = trained
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 256, 256)))
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(bad), "--out", str(tmp_path / "o"),
               "--preset", "smoke", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.npy" in err and "(3, 256, 256)" in err
    good = tmp_path / "good.npy"
    np.save(good, authors_array(0))
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(good), "--mask", str(good),
               "--out", str(tmp_path / "o"), "--preset", "smoke"])
    assert rc == 2 and "--mask" in capsys.readouterr().err
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    np.save(only_bad / "x.npy", authors_array(0, cord=False))
    rc = main(["infer", "--checkpoint", str(run_path), "--input", str(only_bad), "--out", str(tmp_path / "o"),
               "--preset", "smoke", "--device", "cpu"])
    assert rc == 2 and "no subject could be read" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_infer_on_real_authors_arrays(trained, tmp_path, real_data):
    """The authors' clinical DCM samples: scored, the spine_generic ones (no cord label) skipped."""
    run_path, _, _ = trained
    root = real_data / "u2ad_official"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    out = tmp_path / "dcm"
    from u2ad_core.data.io import DataWarning

    with pytest.warns(DataWarning, match="clinical_dcm_1.npy: label value 7"):  # known, documented
        rc = main(["infer", "--checkpoint", str(run_path), "--input", str(root), "--out", str(out),
                   "--preset", "smoke", "--k", "2", "--device", "cpu"])
    assert rc == 0
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
    assert sorted(scores["subject"]) == ["clinical_dcm_1", "clinical_dcm_3"]
    assert "patient_label" not in scores.columns  # unlabelled for hyperintensity
    info = json.loads((out / "infer.json").read_text())
    assert sorted(s["subject"] for s in info["skipped"]) == ["spine_generic_1", "spine_generic_2", "spine_generic_3"]
