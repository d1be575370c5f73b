"""Procedural phantom: cohort sizes, files, labels, orientation, determinism, anatomy, knobs and the
render stages (each changes only what it names)."""

from __future__ import annotations

import copy
import csv
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score

from u2ad_core.cli import main
from u2ad_core.core import labels as L
from u2ad_core.core.config import PhantomConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.data import phantom as P
from u2ad_core.data.phantom import render as R
from u2ad_core.data.phantom import scene as S
from u2ad_core.data.realism import measure_slice

SMOKE = get_preset("smoke").data


@pytest.fixture(scope="module")
def renji_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ph") / "renji_like"
    return P.generate_cohort("renji_like", 4, 3, out, SMOKE, show_progress=False)


def _rows(cohort_dir: Path) -> list[dict[str, str]]:
    with open(cohort_dir / "participants.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_lesion_fraction_matches_the_paper_and_scales():
    assert P.n_lesion_patients("renji_like", 125) == 78
    assert P.n_lesion_patients("ruijin_like", 95) == 9
    assert P.n_lesion_patients("renji_like", 60) == round(60 * 78 / 125)
    assert P.n_lesion_patients("ruijin_like", 20) == 2  # at least 2 positives when n >= 20
    assert P.n_lesion_patients("ruijin_like", 48) == 5
    assert P.n_lesion_patients("spine_generic_like", 270) == 0


def test_cohort_files_participants_and_labels(renji_small):
    rows = _rows(renji_small)
    assert [r["subject"] for r in rows] == [f"sub-renji{i:03d}" for i in range(1, 5)]
    assert set(rows[0]) >= {"subject", "site", "diagnosis", "lesion_segments"}
    assert all(r["diagnosis"] == "DCM" and r["site"] == "renji" for r in rows)
    assert sum(r["lesion_segments"] != "n/a" for r in rows) == P.n_lesion_patients("renji_like", 4)
    for r in rows:
        L.parse_segments(r["lesion_segments"])  # valid names
        img = nib.load(str(renji_small / r["image"]))
        lab = nib.load(str(renji_small / r["labels"]))
        assert img.ndim == 3 and img.shape == lab.shape
        assert nib.aff2axcodes(img.affine) == tuple(P.SITES["renji"].orientation)
        assert np.allclose(img.affine, lab.affine)
        ras = nib.as_closest_canonical(img)
        assert ras.shape[0] == SMOKE.n_sagittal_clinical  # sagittal slices along R
        assert set(np.unique(np.asanyarray(lab.dataobj)).tolist()) <= {0, 1, 2, 3, 4, 5, 6}
        assert np.asanyarray(img.dataobj).dtype == np.dtype(P.SITES["renji"].dtype)


def test_lesions_lie_in_the_cord_at_their_recorded_segment(renji_small):
    pos = [r for r in _rows(renji_small) if r["lesion_segments"] != "n/a"]
    assert pos
    for r in pos:
        lab = np.asanyarray(nib.as_closest_canonical(nib.load(str(renji_small / r["labels"]))).dataobj)
        les = lab == L.HYPERINTENSITY
        assert les.any()
        ring = ndi.binary_dilation(les) & ~les
        # a lesion is surrounded by cord (and little else)
        assert np.mean(lab[ring] == L.CORD) > 0.6
        # the middle slice shows it
        assert les[lab.shape[0] // 2].any()


def test_generation_is_deterministic(tmp_path):
    a = P.generate_subject("ruijin_like", 1, 11, tmp_path / "a", 5, True)
    b = P.generate_subject("ruijin_like", 1, 11, tmp_path / "b", 5, True)
    c = P.generate_subject("ruijin_like", 1, 12, tmp_path / "c", 5, True)
    arr = lambda d, r, f: np.asanyarray(nib.load(str(d / getattr(r, f))).dataobj)  # noqa: E731
    for f in ("image", "labels"):
        assert arr(tmp_path / "a", a, f).tobytes() == arr(tmp_path / "b", b, f).tobytes()
    assert arr(tmp_path / "a", a, "image").tobytes() != arr(tmp_path / "c", c, "image").tobytes()
    assert a.lesion_segments == b.lesion_segments


@pytest.mark.parametrize("codes", ["PSR", "LAS", "LPI", "RAS", "SRA"])
def test_orientation_round_trip(codes):
    rng = np.random.default_rng(0)
    data = rng.random((5, 7, 9)).astype(np.float32)
    aff = np.diag([3.0, 0.8, 0.9, 1.0])
    aff[:3, 3] = [-6, -50, -80]
    out, new_aff = P._reorient_ras_to(data, aff, codes)
    img = nib.as_closest_canonical(nib.Nifti1Image(out, new_aff))
    assert nib.aff2axcodes(new_aff) == tuple(codes)
    assert np.array_equal(np.asanyarray(img.dataobj), data)
    assert np.allclose(img.affine, aff)


def test_cohort_is_reused_when_current(renji_small):
    stamp = renji_small / "phantom.json"
    before = stamp.stat().st_mtime_ns
    P.generate_cohort("renji_like", 4, 3, renji_small, SMOKE, show_progress=False)
    assert stamp.stat().st_mtime_ns == before
    assert P.cohort_is_current(renji_small, P.generation_config("renji_like", 4, 3, SMOKE))
    assert not P.cohort_is_current(renji_small, P.generation_config("renji_like", 5, 3, SMOKE))


def test_anatomy_is_plausible_and_varies():
    cord_ap, spacing, ratios = [], [], []
    for i, site in enumerate(["sg_a", "sg_b", "on_a", "renji"]):
        rng = np.random.default_rng(100 + i)
        an = P._sample_anatomy(rng, dcm=False, lesion=False)
        vol, lab, aff, ex = P._render(an, P.SITES[site], 5, rng)
        mid_lab, mid = lab[2].T, vol[2].T  # (Z, Y): rows along the cord
        px = P.SITES[site].pixel_mm
        cord = mid_lab == L.CORD
        stats = measure_slice(mid, cord, mid_lab == L.CSF, pixel_mm=px)
        cord_ap.append(stats["cord_ap_mm"])
        ratios.append(stats["csf_cord_ratio"])
        comps, n = ndi.label(mid_lab == L.VERTEBRAL_BODY)
        assert n >= 8  # C2 (with the dens) .. T2 at least
        z = np.array(ndi.center_of_mass(comps > 0, comps, range(1, n + 1)))[:, 0] * px
        z = np.sort(z)[::-1]
        spacing.append(float(np.median(-np.diff(z[:7]))))
        assert (mid_lab == L.DISC).any() and (mid_lab == L.CSF).any()
    assert all(5.0 <= a <= 10.0 for a in cord_ap), cord_ap
    assert all(14.0 <= s <= 21.0 for s in spacing), spacing
    assert all(1.5 <= r <= 4.5 for r in ratios), ratios  # real: PAM50 3.0, SCT t2 ~1.7
    assert len(set(np.round(cord_ap, 1))) > 1  # per-subject variation


def test_sites_differ_in_intensity_distribution(tmp_path):
    """Domain shift: same anatomy, two sites -> different normalised histograms (paper Fig. 1)."""
    hists = []
    for site in ("sg_a", "ruijin"):
        rng = np.random.default_rng(5)
        an = P._sample_anatomy(rng, dcm=False, lesion=False)
        vol, lab, *_ = P._render(an, replace(P.SITES[site], fov_mm=(200.0, 180.0)), 3, rng)
        v = vol[1][lab[1] == L.CORD]
        v = v / np.percentile(vol[1], 99.8)
        hists.append(np.histogram(np.clip(v, 0, 1), bins=20, range=(0, 1), density=True)[0])
    assert np.abs(hists[0] - hists[1]).sum() > 2.0


def test_cli_phantom_writes_a_cohort(tmp_path):
    rc = main(["phantom", "--cohort", "openneuro_like", "--n", "2", "--seed", "1", "--out",
               str(tmp_path / "on"), "--preset", "smoke"])
    assert rc == 0
    assert (tmp_path / "on" / "participants.tsv").is_file()
    assert len(list((tmp_path / "on").glob("sub-*/sub-*_T2w.nii.gz"))) == 2


def test_lesion_contrast_is_drawn_from_the_named_range():
    lo, hi = P.LESION_CONTRAST
    assert 0.0 < lo < hi < 1.0  # strictly between the cord (0) and CSF (1)
    contrasts = []
    for i in range(40):
        an = P._sample_anatomy(np.random.default_rng(i), dcm=True, lesion=True)
        contrasts += [les["contrast"] for les in an.lesions]
    assert len(contrasts) >= 40
    assert all(lo <= c <= hi for c in contrasts)
    assert max(contrasts) - min(contrasts) > 0.5 * (hi - lo)  # the whole range is used, not one value


# --------------------------------------------------------------------------------------
# Knobs (DataConfig.phantom)
# --------------------------------------------------------------------------------------

def _lesions(knobs: PhantomConfig, n: int = 60) -> list[dict]:
    out = []
    for i in range(n):
        out += P._sample_anatomy(np.random.default_rng(i), dcm=True, lesion=True, knobs=knobs).lesions
    return out


@pytest.mark.parametrize("kind", ["faint", "intense"])
def test_conspicuity_draws_each_type_from_its_own_range(kind):
    lo, hi = P.LESION_TYPES[kind]["contrast"]
    les = _lesions(PhantomConfig(lesion_conspicuity=kind))
    assert {le["type"] for le in les} == {kind}
    assert all(lo <= le["contrast"] <= hi for le in les)
    mixed = _lesions(PhantomConfig(lesion_conspicuity="mixed", faint_fraction=0.5))
    frac = np.mean([le["type"] == "faint" for le in mixed])
    assert 0.3 < frac < 0.7
    # the faint range lies entirely below the intense one
    assert P.LESION_TYPES["faint"]["contrast"][1] < P.LESION_TYPES["intense"]["contrast"][0]


def test_knobs_keep_the_subjects_paired():
    """Two knob settings give the same anatomy (same draws): a knob grid is a paired design."""
    a = P._sample_anatomy(np.random.default_rng(5), True, True, PhantomConfig(lesion_conspicuity="faint"))
    b = P._sample_anatomy(np.random.default_rng(5), True, True, PhantomConfig(lesion_conspicuity="intense",
                                                                                lesion_size=1.5))
    assert a.compressed == b.compressed and np.allclose(a.body_top, b.body_top)
    assert [le["u"] for le in a.lesions] == [le["u"] for le in b.lesions]
    assert all(lb["half_len"] == pytest.approx(1.5 * la["half_len"]) for la, lb in zip(a.lesions, b.lesions))


def _severity_proxy(knobs: PhantomConfig, lesion: bool, n: int = 150) -> np.ndarray:
    """Max posterior disc bulge + ligament thickening over the compressed levels, per subject."""
    out = []
    for i in range(n):
        an = P._sample_anatomy(np.random.default_rng(1000 + i), True, lesion, knobs)
        out.append(max(an.disc_bulge[P.DISCS.index(c)] + an.lf_thick[P.DISCS.index(c)] for c in an.compressed))
    return np.array(out)


def test_coupling_orders_the_compression_of_lesion_patients():
    aucs = {}
    for c in ("independent", "clinical", "strong"):
        k = PhantomConfig(coupling=c)
        pos, neg = _severity_proxy(k, True), _severity_proxy(k, False)
        aucs[c] = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    assert abs(aucs["independent"] - 0.5) < 0.1
    assert aucs["independent"] < aucs["clinical"] < aucs["strong"]
    with pytest.raises(ValueError, match="coupling"):
        P._sample_anatomy(np.random.default_rng(0), True, True, PhantomConfig(coupling="weird"))


def _mid_slice(tmp_path, knobs, name, index=0, lesion=True, cohort="renji_like"):
    r = P.generate_subject(cohort, index, 4, tmp_path / name, 5, lesion, knobs=knobs)
    img = nib.as_closest_canonical(nib.load(str(tmp_path / name / r.image)))
    lab = nib.as_closest_canonical(nib.load(str(tmp_path / name / r.labels)))
    a, lb = np.asanyarray(img.dataobj).astype(np.float64), np.asanyarray(lab.dataobj)
    return a[a.shape[0] // 2], lb[lb.shape[0] // 2], r


def test_artefacts_change_the_image_not_the_labels(tmp_path):
    on, lab_on, r_on = _mid_slice(tmp_path, PhantomConfig(artefacts=True), "on")
    off, lab_off, r_off = _mid_slice(tmp_path, PhantomConfig(artefacts=False), "off")
    assert np.array_equal(lab_on, lab_off) and r_on.lesion_segments == r_off.lesion_segments
    csf = lab_on == L.CSF
    assert np.abs(on - off)[csf].mean() > 0  # flow voids / ringing change the CSF signal
    # with artefacts off only the artefact stream is unused: healthy cohorts never get artefacts
    h_on, _, _ = _mid_slice(tmp_path, PhantomConfig(artefacts=True), "h_on", cohort="spine_generic_like", lesion=False)
    h_off, _, _ = _mid_slice(tmp_path, PhantomConfig(artefacts=False), "h_off", cohort="spine_generic_like", lesion=False)
    assert np.array_equal(h_on, h_off)


def test_scanner_shift_zero_is_the_reference_site():
    s0 = P.effective_site(P.SITES["ruijin"], 0.0)
    assert s0.gamma == pytest.approx(P.REFERENCE_SITE.gamma) and s0.noise == pytest.approx(P.REFERENCE_SITE.noise)
    assert all(v == pytest.approx(1.0) for v in s0.tissue.values())
    assert P.effective_site(P.SITES["ruijin"], 1.0) == P.SITES["ruijin"]
    s2 = P.effective_site(P.SITES["ruijin"], 2.0)
    assert s2.tissue["cord"] - 1 == pytest.approx(2 * (P.SITES["ruijin"].tissue["cord"] - 1))


def test_knobs_change_the_generation_hash_of_clinical_cohorts_only():
    base = SMOKE
    for field_, value in (("lesion_conspicuity", "faint"), ("coupling", "independent"), ("lesion_size", 1.5),
                          ("scanner_shift", 0.5), ("artefacts", False), ("ringing", 0.8)):
        other = replace(base, phantom=replace(base.phantom, **{field_: value}))
        assert P.generation_config("renji_like", 4, 0, other) != P.generation_config("renji_like", 4, 0, base)
        assert P.generation_config("spine_generic_like", 4, 0, other) == P.generation_config("spine_generic_like", 4, 0, base)
        assert P.phantom_dir_name("renji_like", other).startswith("renji_like~")
        assert P.phantom_dir_name("spine_generic_like", other) == "spine_generic_like"
    assert P.phantom_dir_name("renji_like", base) == "renji_like"


def test_a_lesion_records_every_segment_it_touches():
    cent = np.array([0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 140.0, 160.0])
    # C2-3 runs from the C2 centroid (0) to the C3 centroid (20), C3-4 from 20 to 40, ...
    assert P._segments_touched(5.0, 10.0, cent) == ["C2-3"]
    assert P._segments_touched(15.0, 25.0, cent) == ["C2-3", "C3-4"]
    assert P._segments_touched(15.0, 65.0, cent) == ["C2-3", "C3-4", "C4-5", "C5-6"]
    assert P._segments_touched(-10.0, 5.0, cent) == ["C2-3"]  # above C2's centroid: no segment


# --------------------------------------------------------------------------------------
# Render stages (u2ad_core.data.phantom.render): each changes only what it names
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage():
    """One clinical subject with a lesion, built stage by stage up to the composite (5 slabs)."""
    rng = np.random.default_rng(7)
    knobs = PhantomConfig()
    an = P._sample_anatomy(rng, dcm=True, lesion=True, knobs=knobs)
    assert an.lesions and an.compressed
    site = replace(P.SITES["renji"], fov_mm=(200.0, 180.0))
    T = S._tissues(site, rng)
    y, z = S._field_of_view(an, site, rng)
    U, V = S._cord_coordinates(an, y, z)
    canal = S._canal_profiles(an, U)
    tex = S._textures(rng, U.shape, site.pixel_mm)
    bg = S._background(an, T, U, V, canal, tex)
    layers = S._structure_layers(an, T, U, V, canal, tex, bg, rng)
    x = R._slice_positions(rng, 5, site.slice_mm)
    vol, lab = R._composite(bg.img, layers, x, site.slice_mm)
    return SimpleNamespace(an=an, knobs=knobs, site=site, T=T, U=U, V=V, canal=canal, x=x, vol=vol, lab=lab,
                           shape=(5, *U.shape), scanner_rng=copy.deepcopy(rng))


def test_composite_mixes_a_layer_by_the_slab_fraction_it_covers():
    img = np.zeros((2, 3), np.float32)
    x = np.array([-1.0, 0.0, 1.0])  # three 1 mm slabs
    mask = np.zeros((2, 3), bool)
    mask[0, 1] = True
    wide = S._layer("wide", mask, S.BIG, 1.0, L.CORD)  # spans every slab
    thin = S._layer("thin", np.ones((2, 3), bool), 0.25, 2.0, L.CSF)  # half of the middle slab
    vol, lab = R._composite(img, [wide], x, 1.0)
    assert vol.shape == lab.shape == (3, 6)
    assert np.array_equal(vol[:, 1], [1, 1, 1]) and np.count_nonzero(vol) == 3
    assert np.array_equal(lab[:, 1], [L.CORD] * 3)
    vol, lab = R._composite(img, [wide, thin], x, 1.0)
    base = np.r_[0, 1, 0, 0, 0, 0]  # the wide layer over the background
    assert np.allclose(vol[1], 0.5 * base + 0.5 * 2.0)  # half the slab covered -> half way to the thin layer
    assert np.array_equal(lab[1], [L.CSF] * 6)  # f = 0.5 labels the slab
    assert np.array_equal(vol[0], base) and np.array_equal(vol[2], base)  # neighbour slabs: untouched


def test_lesion_stage_changes_only_cord_pixels_inside_the_lesion(stage):
    vol0, lab0 = stage.vol.copy(), stage.lab.copy()
    vol, lab, info = R._add_lesions(stage.vol, stage.lab, stage.an, stage.T, stage.U, stage.V, stage.canal, stage.x)
    assert np.array_equal(stage.vol, vol0) and np.array_equal(stage.lab, lab0)  # inputs left as they were
    changed = vol != vol0
    les = lab == L.HYPERINTENSITY
    assert les.any() and changed.any()
    assert np.all(lab0[changed] == L.CORD)  # only cord pixels change ...
    assert np.array_equal(lab != lab0, les)  # ... and only the core is relabelled, from cord
    assert np.all(lab0[les] == L.CORD)
    # ... within the lesions' support r^2 < reach (in the plane)
    support = np.zeros(stage.U.shape, bool)
    for le in stage.an.lesions:
        reach = P.LESION_TYPES[le["type"]]["reach"]
        support |= ((stage.U - le["u"]) / le["half_len"]) ** 2 < reach
    assert not changed.reshape(stage.shape)[:, ~support].any()
    assert (vol[les] > vol0[les]).mean() > 0.9  # brighter than the cord: towards CSF
    assert [i["type"] for i in info] == [le["type"] for le in stage.an.lesions]
    assert all(i["segments"] for i in info)
    # no lesion: nothing changes
    none = replace(stage.an, lesions=[])
    v2, l2, i2 = R._add_lesions(stage.vol, stage.lab, none, stage.T, stage.U, stage.V, stage.canal, stage.x)
    assert np.array_equal(v2, vol0) and np.array_equal(l2, lab0) and i2 == []


def test_artefact_stage_changes_only_cord_and_csf_and_ignores_the_lesion_label(stage):
    vol, lab, _ = R._add_lesions(stage.vol, stage.lab, stage.an, stage.T, stage.U, stage.V, stage.canal, stage.x)
    arng = np.random.default_rng(3)
    off = R._draw_artefacts(arng, stage.an, stage.U.shape, None)
    assert off.pv_amp == [] and off.flow is None
    assert arng.random() == np.random.default_rng(3).random()  # off: no draw
    args = (stage.an, stage.T, stage.U, stage.V, stage.canal, stage.site.pixel_mm)
    assert np.array_equal(R._tissue_artefacts(vol, lab, off, None, *args), vol)

    draw = R._draw_artefacts(np.random.default_rng(3), stage.an, stage.U.shape, stage.knobs)
    assert len(draw.pv_amp) == len(stage.an.compressed) and draw.flow.shape == stage.U.shape
    before = vol.copy()
    out = R._tissue_artefacts(vol, lab, draw, stage.knobs, *args)
    assert np.array_equal(vol, before)  # input left as it was
    changed = out != vol
    in_cord = (lab == L.CORD) | (lab == L.HYPERINTENSITY)
    csf = lab == L.CSF
    assert changed[in_cord].any() and changed[csf].any()
    assert not changed[~(in_cord | csf)].any()
    assert np.all(out[changed & csf] < vol[changed & csf])  # flow voids: signal loss
    assert np.all(out[changed & in_cord] > vol[changed & in_cord])  # partial volume: towards CSF
    # partial volume only at the compressed levels (within 10 mm of their disc centres)
    near = np.zeros(stage.U.shape, bool)
    for name in stage.an.compressed:
        near |= np.abs(stage.U - stage.canal.disc_u[P.DISCS.index(name)]) < 10.0
    assert not (changed & in_cord).reshape(stage.shape)[:, ~near].any()
    # a lesion-free label map gets the same artefacts (the twin of a subject shares them)
    twin_lab = np.where(lab == L.HYPERINTENSITY, np.uint8(L.CORD), lab)
    assert np.array_equal(R._tissue_artefacts(vol, twin_lab, draw, stage.knobs, *args), out)


def test_scanner_stage_is_local_except_ringing_along_ap(stage):
    shape = stage.shape
    vol = stage.vol.reshape(shape)
    draw = R._draw_scanner(np.random.default_rng(1), shape)
    assert draw.n1.shape == draw.n2.shape == shape and draw.bias.shape == (6,)
    other = vol.copy()
    s, j, k = 2, shape[1] // 2, shape[2] // 2
    other[s, j, k] += 1.0  # one voxel differs
    before = vol.copy()
    a = R._scanner_image(vol, stage.site, draw.bias)
    assert np.array_equal(vol, before)  # input left as it was
    assert np.array_equal(a, R._scanner_image(vol, stage.site, draw.bias))  # no draws: deterministic
    diff = R._scanner_image(other, stage.site, draw.bias) != a
    r = int(np.ceil(3.0 * stage.site.blur_px))  # the blur's truncation radius
    assert diff[s, j, k] and not diff[np.arange(shape[0]) != s].any()
    box = np.zeros(shape, bool)
    box[s, j - r:j + r + 1, k - r:k + r + 1] = True
    assert not diff[~box].any()
    # ringing spreads the change along AP (axis 1) only, over the whole column
    ring = R._scanner_image(other, stage.site, draw.bias, 0.6) != R._scanner_image(vol, stage.site, draw.bias, 0.6)
    col = np.zeros(shape, bool)
    col[s, :, k - r:k + r + 1] = True
    assert not ring[~col].any() and ring[s, :, k].mean() > 0.9


def test_bias_field_is_flat_without_bias_and_falls_off_anteriorly():
    shape = (3, 40, 50)
    coeffs = np.random.default_rng(0).normal(0, 1, 6).astype(np.float32)
    flat = replace(P.SITES["renji"], bias=0.0, bias_si=0.0)
    assert np.array_equal(R._bias_field(shape, flat, coeffs), np.ones(shape, np.float32))
    field_ = np.log(R._bias_field(shape, P.SITES["renji"], coeffs))
    # the posterior surface coil: posterior (y = -1) brighter than anterior by 3 |c0| bias (log scale)
    drop = field_[:, 0, :].mean() - field_[:, -1, :].mean()
    assert drop == pytest.approx(3 * abs(coeffs[0]) * P.SITES["renji"].bias, rel=1e-4)


def test_rician_noise_has_the_site_sigma_and_vanishes_without_noise():
    shape = (4, 64, 64)
    draw = R._draw_scanner(np.random.default_rng(2), shape)
    clean = np.zeros(shape, np.float32)
    clean[:, :, 32:] = 1.0
    quiet = replace(P.SITES["ruijin"], noise=0.0)
    assert np.array_equal(R._rician_noise(clean, quiet, draw), clean)
    site = P.SITES["ruijin"]
    sigma = site.noise * site.gamma
    noisy = R._rician_noise(clean, site, draw)
    assert noisy.dtype == np.float32 and noisy.min() >= 0
    assert noisy[:, :, :32].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)  # Rayleigh background
    assert noisy[:, :, 32:].std() == pytest.approx(sigma, rel=0.05)  # high SNR: ~Gaussian


def test_render_is_the_pipeline_of_its_stages(stage):
    """``_render`` = template -> composite -> lesions -> artefacts -> scanner, the subject's draws
    in this order (what keeps the cohorts on disk unchanged), the artefacts' from their own."""
    rng = np.random.default_rng(7)  # as in the fixture
    an = P._sample_anatomy(rng, dcm=True, lesion=True, knobs=stage.knobs)
    img, lab, aff, ex = P._render(an, stage.site, 5, rng, knobs=stage.knobs, artefact_rng=np.random.default_rng(8))
    vol, lab_l, info = R._add_lesions(stage.vol, stage.lab, stage.an, stage.T, stage.U, stage.V, stage.canal,
                                      stage.x)
    draw = R._draw_artefacts(np.random.default_rng(8), stage.an, stage.U.shape, stage.knobs)
    vol = R._tissue_artefacts(vol, lab_l, draw, stage.knobs, stage.an, stage.T, stage.U, stage.V, stage.canal,
                              stage.site.pixel_mm)
    scan = R._draw_scanner(copy.deepcopy(stage.scanner_rng), stage.shape)
    clean = R._scanner_image(vol.reshape(stage.shape), stage.site, scan.bias, stage.knobs.ringing)
    assert np.array_equal(R._rician_noise(clean, stage.site, scan), img)
    assert np.array_equal(lab_l.reshape(stage.shape), lab)
    assert ex["slice_x_mm"] == list(stage.x) and ex["lesions"] == info


def test_two_writers_of_one_cohort_both_finish(tmp_path):
    """Two generations of the same cohort into one folder at the same time (two sweep workers)
    both succeed and leave one complete cohort, no temporary folder (their names once collided
    on a millisecond clock)."""
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "openneuro_like"
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: P.generate_cohort("openneuro_like", 2, 5, out, SMOKE, workers=1,
                                                         show_progress=False, force=True), range(2)))
    assert done == [out, out] and (out / "phantom.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["openneuro_like"]
    assert len(_rows(out)) == 2
