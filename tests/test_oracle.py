"""The phantom's oracle (what a real scan hides): the noise-free image and the lesion-free twin,
rendered from the subject's own draws, written beside the cohort (uncompressed, for the cohorts of
the calibrated phantom unless asked: not a knob grid's), carried into ``SliceData.clean`` / ``twin``
by the preprocessing, and read by no training or scoring code.

Footprint (where the twin may differ from the image): the voxels where the lesions changed the
tissue volume (``extras["oracle"]["lesion_tissue"]``), dilated in-plane by the scanner blur's
radius ``r = int(3 * blur_px + 0.5)`` pixels (a separable Gaussian truncated at 3 sigma: a
(2r+1) x (2r+1) square); with truncation ringing (``ringing < 1``) the difference also spreads
along the whole AP line (axis 1) of every footprint voxel, with a small amplitude.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from u2ad_core.core import labels as L
from u2ad_core.core.config import CohortSizes, PhantomConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.data import phantom as P
from u2ad_core.data.datasets import SliceData, load_data, load_dataset, prepare_all
from u2ad_core.data.io import ORACLE_FILES, Volume, oracle_files, scan_cohort, to_ras
from u2ad_core.data.phantom import render as R
from u2ad_core.data.phantom.cohort import ORACLE_DTYPES, ORACLE_SUBSTEPS, _render_subject, _stored
from u2ad_core.data.preprocess import preprocess_cohort, preprocess_volume

CFG = get_preset("smoke").data
NO_RINGING = PhantomConfig(ringing=1.0)  # every other artefact on
PKG = Path(__file__).resolve().parents[1] / "u2ad_core"


def _subject(knobs: PhantomConfig | None, index: int = 0, seed: int = 3, lesion: bool = True,
             cohort: str = "renji_like", oracle: bool = True, n_slices: int = 7):
    return _render_subject(cohort, index, seed, n_slices, lesion, knobs=knobs, oracle=oracle)


def _footprint(site, lesion_tissue: np.ndarray) -> np.ndarray:
    """The lesion's footprint in the scanner image, (S, NY, NZ) bool (module docstring)."""
    r = int(3 * site.blur_px + 0.5)
    return ndi.binary_dilation(lesion_tissue, np.ones((1, 2 * r + 1, 2 * r + 1), bool))


# --------------------------------------------------------------------------------------
# Rendered arrays
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs", [PhantomConfig(), NO_RINGING, PhantomConfig(artefacts=False), None],
                         ids=["default", "no-ringing", "no-artefacts", "healthy"])
def test_oracle_draws_nothing_and_changes_nothing(knobs):
    """Image, labels, affine, lesions and the generators' states are bit-identical with the oracle
    on or off (the cohorts on disk do not change)."""
    cohort = "spine_generic_like" if knobs is None else "renji_like"
    rngs = []
    outs = []
    for oracle in (False, True):
        rng = np.random.default_rng(11)
        arng = np.random.default_rng(12)
        an = P._sample_anatomy(rng, dcm=knobs is not None, lesion=knobs is not None, knobs=knobs)
        site = P.SITES[P.COHORT_SPECS[cohort].sites[0]]
        outs.append(P._render(an, site, 5, rng, knobs=knobs, artefact_rng=arng, oracle=oracle))
        rngs.append((rng.bit_generator.state, arng.bit_generator.state))
    (img0, lab0, aff0, ex0), (img1, lab1, aff1, ex1) = outs
    assert np.array_equal(img0, img1) and img0.dtype == img1.dtype
    assert np.array_equal(lab0, lab1) and np.array_equal(aff0, aff1)
    assert "oracle" not in ex0 and {k: v for k, v in ex1.items() if k != "oracle"} == ex0
    assert rngs[0] == rngs[1]


@pytest.mark.parametrize("knobs", [PhantomConfig(), NO_RINGING, None], ids=["default", "no-ringing", "healthy"])
def test_image_is_the_rician_magnitude_of_the_noise_free_image(knobs):
    """(a) image == |clean + sigma (n1 + i n2)| with the subject's noise draw, bit for bit (the
    generator's own form), for the image and for the twin. The oracle arrays are (S, NY, NZ); the
    noisy ones float32 like the image, the noise-free ones in the generator's working precision
    (float32 with ringing, else that of the template, float64: rounding them would break the identity)."""
    _, site, an, img, lab, _, ex = _subject(knobs, cohort="spine_generic_like" if knobs is None else "renji_like",
                                            lesion=knobs is not None)
    o = ex["oracle"]
    for k in ("clean", "twin", "twin_clean"):
        assert o[k].shape == img.shape
    assert o["twin"].dtype == np.float32 and o["clean"].dtype == o["twin_clean"].dtype
    assert np.array_equal(R._rician_noise(o["clean"], site, o["scan"]), img)
    assert np.array_equal(R._rician_noise(o["twin_clean"], site, o["scan"]), o["twin"])
    # the draw is the subject's: another draw gives another image
    other = R._draw_scanner(np.random.default_rng(0), img.shape)
    assert not np.array_equal(R._rician_noise(o["clean"], site, other), img)


def test_noise_free_image_has_no_noise():
    """(d) Where the tissue is air the noise-free image is exactly 0 (ringing off), while the
    image there is Rayleigh with the site's sigma; over the volume E[image^2 - clean^2] = 2 sigma^2."""
    _, site, an, img, lab, _, ex = _subject(PhantomConfig(artefacts=False))
    clean = ex["oracle"]["clean"]
    sigma = site.noise * site.gamma
    air = clean == 0
    assert air.mean() > 0.05  # the field of view has air around the neck
    assert (img[air] > 0).mean() > 0.999
    assert img[air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)
    assert float(np.mean(img.astype(np.float64) ** 2 - clean.astype(np.float64) ** 2)) == pytest.approx(
        2 * sigma**2, rel=0.03)


@pytest.mark.parametrize("knobs", [NO_RINGING, PhantomConfig(artefacts=False)], ids=["no-ringing", "no-artefacts"])
def test_twin_equals_image_outside_the_blurred_footprint(knobs):
    """(b) Ringing off: twin == image bit for bit outside the footprint (the lesion's tissue change
    dilated by the blur radius), and they do differ inside it: the twin is darker there (the
    lesion is a hyperintensity). The tissue change covers every labelled lesion voxel and lies
    on cord voxels only."""
    _, site, an, img, lab, _, ex = _subject(knobs)
    o = ex["oracle"]
    assert an.lesions and (lab == L.HYPERINTENSITY).any()
    lt = o["lesion_tissue"]
    assert lt[lab == L.HYPERINTENSITY].all()
    assert np.isin(lab[lt], (L.CORD, L.HYPERINTENSITY)).all()
    fp = _footprint(site, lt)
    assert np.array_equal(o["twin"][~fp], img[~fp])
    assert np.array_equal(o["twin_clean"][~fp], o["clean"][~fp])
    assert not np.array_equal(o["twin"][fp], img[fp])
    # the lesion only brightens (the artefacts scale its contrast by 1 - pv, the scanner is monotone)
    assert (o["clean"] - o["twin_clean"]).min() >= -1e-6
    assert (o["clean"] - o["twin_clean"])[lab == L.HYPERINTENSITY].mean() > 0.01
    # the footprint is tight: the blur does spread the change beyond the tissue voxels
    assert (o["twin_clean"][fp & ~lt] != o["clean"][fp & ~lt]).any()


def test_twin_with_ringing_differs_little_along_the_ap_lines():
    """(b) Ringing on (the default): exact equality outside the AP lines through the footprint;
    on those lines, outside the footprint, a bounded difference (Gibbs overshoot: at most 5 % of
    the largest difference inside the footprint; measured 1.6-2.9 % on four subjects)."""
    _, site, an, img, lab, _, ex = _subject(PhantomConfig())
    assert PhantomConfig().ringing < 1
    o = ex["oracle"]
    fp = _footprint(site, o["lesion_tissue"])
    lines = np.broadcast_to(fp.any(axis=1, keepdims=True), fp.shape)
    assert np.array_equal(o["twin"][~lines], img[~lines])
    inside = np.abs(o["twin_clean"][fp] - o["clean"][fp]).max()
    spread = np.abs(o["twin_clean"][lines & ~fp] - o["clean"][lines & ~fp]).max()
    assert 0 < spread <= 0.05 * inside
    assert np.abs(o["twin"][lines & ~fp] - img[lines & ~fp]).max() <= spread + 1e-6  # |.| is 1-Lipschitz


@pytest.mark.parametrize("knobs", [PhantomConfig(), None], ids=["clinical", "healthy"])
def test_twin_is_the_image_without_a_lesion(knobs):
    """(c) A subject without lesion: twin == image and twin_clean == clean everywhere."""
    cohort = "spine_generic_like" if knobs is None else "renji_like"
    _, site, an, img, lab, _, ex = _subject(knobs, cohort=cohort, lesion=False)
    assert not an.lesions and not (lab == L.HYPERINTENSITY).any()
    o = ex["oracle"]
    assert np.array_equal(o["twin"], img) and np.array_equal(o["twin_clean"], o["clean"])
    assert not o["lesion_tissue"].any()


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """renji_like, 4 subjects (2 with a lesion), ringing off (exact footprints): knobs other than the
    calibrated ones, so the oracle is asked for."""
    cfg = replace(CFG, phantom=NO_RINGING)
    return P.generate_cohort("renji_like", 4, 3, tmp_path_factory.mktemp("oracle") / "renji_like", cfg,
                             show_progress=False, oracle=True)


def _nib(path: Path):
    img = nib.load(str(path))
    return img, np.asanyarray(img.dataobj)


def test_oracle_files_sit_beside_the_subject_on_the_image_grid(cohort):
    """``sub-<id>/oracle/``: the noise-free volume for everyone, in 1/4 of the stored unit; the
    twin for lesion patients only, stored exactly like the image; both uncompressed NIfTI; no
    layout takes them for an image."""
    sc = scan_cohort(cohort)
    assert sc.layout == "phantom" and len(sc.subjects) == 4
    n_twin = 0
    for i, sf in enumerate(sc.subjects):
        paths = oracle_files(sf.image.parent, sf.subject)
        assert sf.clean == paths["clean"] and paths["clean"].is_file()
        assert sf.clean.name == f"{sf.subject}{ORACLE_FILES['clean']}" and sf.clean.suffix == ".nii"
        assert sf.clean.read_bytes()[:2] != b"\x1f\x8b"  # not gzipped
        img, a = _nib(sf.image)
        cln, c = _nib(paths["clean"])
        assert np.allclose(cln.affine, img.affine) and c.shape == a.shape
        stored_img = to_ras(np.asarray(a), img.affine)[0]  # back to the generator's RAS arrays
        c_ras = to_ras(np.asarray(c, np.float64), img.affine)[0]
        fine = to_ras(np.asarray(cln.dataobj.get_unscaled()), img.affine)[0]
        assert cln.get_data_dtype() in [np.dtype(t) for t in ORACLE_DTYPES]
        assert cln.dataobj.slope == 1.0 / ORACLE_SUBSTEPS
        _, site, an, vol, lab, aff, ex = _render_subject("renji_like", i, 3, stored_img.shape[0], sf.patient_label == 1,
                                                         knobs=NO_RINGING, oracle=True)
        o = ex["oracle"]
        assert np.abs(c_ras - o["clean"] * site.scale).max() <= 0.5 / ORACLE_SUBSTEPS + 1e-3
        # (a) on the files: the stored image is the stored Rician magnitude of the stored noise-free image
        # with the subject's noise (to the image's own rounding: off by one stored unit at most, rarely)
        c_csf = (fine.astype(np.float64) / (ORACLE_SUBSTEPS * site.scale)).astype(np.float32)
        again = _stored(R._rician_noise(c_csf, site, o["scan"]), site).astype(np.int64)
        diff = np.abs(again - stored_img.astype(np.int64))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.95
        if sf.twin == sf.image:
            assert not paths["twin"].exists() and sf.patient_label == 0
            continue
        n_twin += 1
        twn, t = _nib(paths["twin"])
        assert twn.get_data_dtype() == img.get_data_dtype() and np.allclose(twn.affine, img.affine)
        t_ras = to_ras(np.asarray(t), twn.affine)[0]
        assert np.array_equal(t_ras, _stored(o["twin"], site))
        fp = _footprint(site, o["lesion_tissue"])
        assert np.array_equal(t_ras[~fp], stored_img[~fp]) and not np.array_equal(t_ras, stored_img)
    assert n_twin == 2
    assert all(s.image.parent.name == s.subject for s in sc.subjects)  # the image is never an oracle volume


# --------------------------------------------------------------------------------------
# Dataset file
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(cohort, tmp_path_factory) -> SliceData:
    return load_dataset(preprocess_cohort(cohort, tmp_path_factory.mktemp("proc"), CFG, 3, show_progress=False,
                                          verbose=False))


def test_dataset_carries_clean_and_twin(dataset):
    """On the images' grid, dtype and [0, 1] scale; (c) twin == images for subjects without a lesion
    and (b) outside 12 mm of the subject's labelled lesion (ringing off; the lesion's soft edge,
    the blur, the anti-aliasing and the interpolation stay well inside that) for those with one,
    and darker than the images on the lesion; (d) clean is smooth (no noise) and unbiased."""
    d = dataset
    assert d.manifest["oracle"] == ["clean", "twin"]
    for f in (d.clean, d.twin):
        assert f.shape == d.images.shape and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    px = CFG.pixel_mm
    for s in d.subjects():
        m = d.subject == s
        img, twin, clean = d.images[m], d.twin[m], d.clean[m]
        if d.patient_label[m][0] == 0:
            assert np.array_equal(twin, img)
            continue
        les = d.lesion[m].any(0)
        assert les.any()
        far = ~ndi.binary_dilation(les, iterations=int(np.ceil(12 / px)))
        assert np.array_equal(twin[:, far], img[:, far])
        on = d.lesion[m] > 0
        assert (img[on] - twin[on]).mean() > 0.02
    # (d) images - clean is the noise alone: independent between neighbouring slices (the anatomy is
    # not), centred (the image's own intensity map), and not what a smoothed image would leave
    def residual_corr(ref: np.ndarray) -> tuple[float, float]:
        res = (d.images - ref).astype(np.float64)
        both = (d.cord[:-1] > 0) & (d.cord[1:] > 0) & (d.subject[:-1] == d.subject[1:])[:, None, None]
        a, b = res[:-1][both], res[1:][both]
        return float(np.corrcoef(a, b)[0, 1]), float(np.concatenate([a, b]).mean() / np.concatenate([a, b]).std())

    corr, bias = residual_corr(d.clean)
    assert abs(corr) < 0.15 and abs(bias) < 0.25, (corr, bias)
    smooth = ndi.gaussian_filter(d.images, (0, 1.5, 1.5))
    assert residual_corr(smooth)[0] > corr + 0.1


def test_dataset_twin_with_ringing_stays_close_away_from_the_lesion(tmp_path):
    """(b) Ringing on (the default knobs): in the dataset, the twin equals the images for subjects
    without a lesion and, outside 12 mm of the lesion, differs by the ringing's spread only: at most
    5 % of the largest difference near the lesion and 0.005 of the [0, 1] range (measured ~5e-4)."""
    root = P.generate_cohort("renji_like", 4, 3, tmp_path / "renji_like", CFG, show_progress=False)
    d = load_dataset(preprocess_cohort(root, tmp_path / "proc", CFG, 3, show_progress=False, verbose=False))
    n_les = 0
    for s in d.subjects():
        m = d.subject == s
        les = d.lesion[m].any(0)
        if not les.any():
            assert np.array_equal(d.twin[m], d.images[m])
            continue
        n_les += 1
        far = ~ndi.binary_dilation(les, iterations=int(np.ceil(12 / CFG.pixel_mm)))
        dif = np.abs(d.twin[m] - d.images[m])
        assert dif[:, far].max() <= min(0.05 * dif[:, ~far].max(), 0.005)
    assert n_les == 2


def test_oracle_uses_the_images_intensity_map():
    """The oracle volumes get the image's normalisation parameters, never their own: a noise-free
    volume at half the image's scale comes out darker (its own min-max would undo the factor)."""
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 1000, (5, 40, 60)).astype(np.float32)
    cord = np.zeros(img.shape, np.uint8)
    cord[:, 15:25, 10:50] = 1
    vol = Volume("s", img, np.eye(4), (1.0, 1.0, 1.0), np.arange(5), cord=cord, clean=0.5 * img, twin=img.copy())
    cfg = replace(CFG, image_size=(40, 16), pixel_mm=1.0, crop="centre")
    out = preprocess_volume(vol, cfg, 3)
    assert np.array_equal(out["twin"], out["images"])
    assert out["clean"].mean() < 0.7 * out["images"].mean()
    plain = preprocess_volume(replace(vol, clean=None, twin=None), cfg, 3)
    assert "clean" not in plain and "twin" not in plain and np.array_equal(plain["images"], out["images"])


def test_fields_survive_save_load_and_middle(dataset, tmp_path):
    """(e) save / load and ``middle()`` / ``subset`` keep them row by row; a wrong shape is refused."""
    p = dataset.save(tmp_path / "d.npz")
    back = load_dataset(p)
    assert np.array_equal(back.clean, dataset.clean) and np.array_equal(back.twin, dataset.twin)
    mid = back.middle()
    sel = back.slice_offset == 0
    assert np.array_equal(mid.clean, back.clean[sel]) and np.array_equal(mid.twin, back.twin[sel])
    assert np.array_equal(mid.images, back.images[sel])
    with pytest.raises(ValueError, match="clean"):
        replace(back, clean=back.clean[:, :-1])


def test_twin_is_stored_as_its_bitwise_difference_from_the_images(dataset, tmp_path):
    """The file holds ``twin_xor`` (zero wherever twin == images: all but a few % of the voxels), and
    reads back the exact twin; a file with a plain ``twin`` (preprocessing version 2) reads the same."""
    with np.load(dataset.path) as z:
        assert "twin" not in z.files and z["twin_xor"].dtype == np.uint32
        xor = z["twin_xor"]
    assert np.array_equal(xor == 0, dataset.twin == dataset.images) and 0 < (xor != 0).mean() < 0.1
    assert dataset.twin.dtype == np.float32 and dataset.twin.flags.writeable
    old = tmp_path / "old.npz"
    np.savez_compressed(old, **dataset.arrays())
    with np.load(old) as z:
        assert "twin" in z.files and "twin_xor" not in z.files
    back = load_dataset(old)
    assert np.array_equal(back.twin, dataset.twin) and np.array_equal(back.clean, dataset.clean)
    assert load_dataset(old, oracle=False).twin is None


def test_no_oracle_files_no_fields(cohort, tmp_path):
    """(e) A cohort without oracle files (an older phantom; real data never has them) gives ``None``;
    so does a cohort where one subject lacks them (a partial oracle would mislead)."""
    for drop_all in (True, False):
        root = tmp_path / ("none" if drop_all else "partial") / "renji_like"
        shutil.copytree(cohort, root)
        subs = sorted(root.glob("sub-*/oracle"))
        for o in (subs if drop_all else subs[:1]):
            shutil.rmtree(o)
        d = load_dataset(preprocess_cohort(root, tmp_path / "proc", CFG, 3, show_progress=False, verbose=False,
                                           name=root.parent.name))
        assert d.clean is None and d.twin is None and d.manifest["oracle"] == []
        assert all(s.clean is None for s in scan_cohort(root).subjects) == drop_all


def test_no_training_or_scoring_code_reads_the_oracle():
    """Only the data layer (which carries them) and the diagnostics may name the oracle fields:
    nothing under method/, baselines/, detectors/ or core/ does."""
    pat = re.compile(r"\.(clean|twin)\b|[\"'](clean|twin)[\"']")
    hits = [f"{p.relative_to(PKG)}:{i}" for sub in ("method", "baselines", "detectors", "core")
            for p in sorted((PKG / sub).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not hits, hits
    # the torch dataset does not serve them
    from u2ad_core.data.datasets import SliceDataset
    n = 2
    z = np.zeros((n, 4, 4), np.float32)
    sd = SliceData(images=z, cord=z.astype(np.uint8), csf=z.astype(np.uint8), segments=z.astype(np.uint8),
                   lesion=z.astype(np.uint8), subject=np.array(["a", "b"]), slice_index=np.zeros(n, int),
                   slice_offset=np.zeros(n, int), patient_label=np.zeros(n, np.int8),
                   lesion_segments=np.array(["", ""]), clean=z + 1, twin=z + 2)
    assert not {"clean", "twin"} & set(SliceDataset(sd)[0])


# --------------------------------------------------------------------------------------
# Where the oracle is written: the calibrated phantom's cohorts, not a knob grid's
# --------------------------------------------------------------------------------------
SMALL = replace(CFG, cohorts=CohortSizes(spine_generic_like=2, openneuro_like=2, renji_like=3, ruijin_like=2),
                n_sagittal_healthy=5, n_sagittal_clinical=3)
FAINT = replace(SMALL, phantom=PhantomConfig(lesion_conspicuity="faint"))  # a knob grid's point


def _stamp(root: Path) -> dict:
    return json.loads((root / "phantom.json").read_text())


def _oracle_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("sub-*/oracle"))


def _nifti_bytes(root: Path) -> dict[str, bytes]:
    """The images and label maps of a cohort, file by file (gzip is deterministic in nibabel)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("sub-*/sub-*.nii.gz"))}


def test_knob_grid_cohorts_skip_the_oracle_and_the_calibrated_ones_have_it(tmp_path):
    """``prepare_all`` without ``oracle``: the default-knob cohorts get the oracle files and the
    dataset fields, a knob grid's ``<cohort>~<hash>`` cohort neither; the stamp says which."""
    assert P.oracle_by_default("renji_like", SMALL) and P.oracle_by_default("spine_generic_like", FAINT)
    assert not P.oracle_by_default("renji_like", FAINT)
    base = prepare_all(SMALL, tmp_path, seed=0, cohorts=["renji_like"], show_progress=False, verbose=False)
    grid = prepare_all(FAINT, tmp_path, seed=0, cohorts=["spine_generic_like", "renji_like"], show_progress=False,
                       verbose=False)
    raw = tmp_path / "raw"
    knob_dir = raw / P.phantom_dir_name("renji_like", FAINT)
    assert knob_dir.name.startswith("renji_like~") and knob_dir.is_dir()
    for root, has in ((raw / "renji_like", True), (raw / "spine_generic_like", True), (knob_dir, False)):
        assert _stamp(root)["oracle"] is has and P.cohort_has_oracle(root) is has
        assert len(_oracle_dirs(root)) == (len(list(root.glob("sub-*"))) if has else 0)
        assert all(sf.clean is None and sf.twin is None for sf in scan_cohort(root).subjects) is not has
    d = load_dataset(base["renji_like"])
    assert d.clean is not None and d.twin is not None and d.manifest["oracle"] == ["clean", "twin"]
    assert load_dataset(grid["spine_generic_like"]).clean is not None
    g = load_dataset(grid["renji_like"])
    assert g.clean is None and g.twin is None and g.manifest["oracle"] == []
    # the training and scoring code's reader leaves them out
    assert load_data(base["renji_like"])[0].clean is None and load_dataset(base["renji_like"], oracle=False).twin is None


def test_oracle_can_be_forced_either_way(tmp_path):
    """``oracle=True`` writes it for a knob grid's cohort, ``oracle=False`` leaves it out of a calibrated
    one; the images and labels are the same bytes with and without it."""
    on = P.generate_cohort("renji_like", 3, 3, tmp_path / "grid_on", FAINT, show_progress=False, oracle=True)
    off = P.generate_cohort("renji_like", 3, 3, tmp_path / "grid_off", FAINT, show_progress=False)
    assert _stamp(on)["oracle"] is True and len(_oracle_dirs(on)) == 3
    assert _stamp(off)["oracle"] is False and not _oracle_dirs(off)
    assert _nifti_bytes(on) == _nifti_bytes(off) and len(_nifti_bytes(on)) == 6
    assert (on / "participants.tsv").read_text() == (off / "participants.tsv").read_text()
    plain = P.generate_cohort("renji_like", 3, 3, tmp_path / "plain", SMALL, show_progress=False, oracle=False)
    assert _stamp(plain)["oracle"] is False and not _oracle_dirs(plain)
    paths = prepare_all(FAINT, tmp_path / "data", seed=0, cohorts=["renji_like"], oracle=True, show_progress=False,
                        verbose=False)
    d = load_dataset(paths["renji_like"])
    assert d.clean is not None and d.twin is not None


def test_a_cohort_without_the_oracle_gets_it_when_asked(tmp_path):
    """A cohort generated without the oracle is regenerated with it when it is asked for (same images,
    a new dataset file with the fields); one with it is reused as it is by a request without it."""
    kw = dict(seed=0, cohorts=["renji_like"], show_progress=False, verbose=False)
    root = tmp_path / "raw" / "renji_like"
    first = prepare_all(SMALL, tmp_path, oracle=False, **kw)["renji_like"]
    assert _stamp(root)["oracle"] is False and not _oracle_dirs(root)
    images = _nifti_bytes(root)
    d0 = load_dataset(first)
    assert d0.clean is None and d0.twin is None
    second = prepare_all(SMALL, tmp_path, **kw)["renji_like"]  # the default asks for it
    assert _stamp(root)["oracle"] is True and len(_oracle_dirs(root)) == 3
    assert _nifti_bytes(root) == images and second != first
    d1 = load_dataset(second)
    assert d1.clean is not None and d1.twin is not None
    for f in ("images", "cord", "csf", "segments", "lesion", "subject", "slice_index", "patient_label"):
        assert np.array_equal(getattr(d0, f), getattr(d1, f)), f
    stamp = (root / "phantom.json").stat().st_mtime_ns
    for ask in (False, None, True):
        assert prepare_all(SMALL, tmp_path, oracle=ask, **kw)["renji_like"] == second
        assert (root / "phantom.json").stat().st_mtime_ns == stamp
    assert P.cohort_is_current(root, P.generation_config("renji_like", 3, _stamp(root)["generation"]["seed"], SMALL),
                               oracle=True)
