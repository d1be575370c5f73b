"""Baselines (paper Tables 1-2): every method trains, maps have the right shape and stay in
the cord, runs are cached and reproducible, signal methods flag a bright blob, and the
scoring adapter matches U2AD's scoring."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from u2ad_core.baselines import (ANATOMY_METHODS, BASELINES, SIGNAL_METHODS, UAD_METHODS, anomaly_maps, fit_baseline, fit_run,
                                 load_run, score_anomaly_maps)
from u2ad_core.baselines import morphology as morph
from u2ad_core.baselines.anoddpm import linear_betas, simplex_noise
from u2ad_core.baselines.dae import coarse_noise
from u2ad_core.baselines.fanogan import gan_epochs
from u2ad_core.baselines.signal import dbscan_maps, slic_maps, zscore_maps
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import make_generator

H, W = 48, 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: one torch thread is as fast and does not stall on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_preset():
    p = get_preset("smoke")
    b = p.baselines
    b = replace(b, pretrain_epochs=1, adapt_epochs=1, batch_size=4, width=4, levels=4, checkpoint_every=1,
                vae=replace(b.vae, latent_dim=8), vaegan=replace(b.vaegan, latent_dim=8),
                fanogan=replace(b.fanogan, latent_dim=8, n_critic=2),
                anoddpm=replace(b.anoddpm, timesteps=20, partial_steps=2))
    return replace(p, baselines=b)


def tiny_data(n: int = 8, seed: int = 0):
    """Slices with a bright vertical 'cord' band (columns 13-18) and a little texture."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.1, 0.3, size=(n, H, W)).astype(np.float32)
    cord = np.zeros((n, H, W), np.uint8)
    cord[:, 4:44, 13:19] = 1
    images[cord > 0] += 0.4
    segments = np.zeros_like(cord)
    for j in range(6):
        segments[:, 4 + j * 6: 10 + j * 6] = j + 1
    return SimpleNamespace(
        images=np.clip(images, 0, 1), cord=cord, segments=segments * cord,
        subject=np.array([f"s{i}" for i in range(n)]), slice_index=np.zeros(n, int),
        slice_offset=np.zeros(n, int), patient_label=np.array([i % 2 for i in range(n)], np.int8),
        lesion_segments=np.array(["C4-5" if i % 2 else "" for i in range(n)]),
    )


@pytest.mark.parametrize("method", UAD_METHODS)
def test_uad_baseline_trains_and_maps_stay_in_roi(method, tmp_path):
    preset, data = tiny_preset(), tiny_data()
    run = fit_run(method, preset, data, "cpu", 0, tmp_path, show_progress=False)
    assert not run.reused and (run.run_path / "done.json").is_file()
    assert len(run.history) == 1 and all(np.isfinite(v) for v in run.history[0].values())
    recon, maps = anomaly_maps(method, run.model, data, "cpu")
    assert recon.shape == maps.shape == data.images.shape and maps.dtype == np.float32
    out = data.cord == 0
    assert np.all(maps[out] == 0), "map must be zero outside the ROI"
    assert np.array_equal(recon[out], data.images[out]), "outside the ROI the original is kept"
    assert np.all(maps >= 0) and np.isfinite(maps).all()
    assert np.allclose(maps[~out], np.abs(data.images - recon)[~out])


def test_fit_is_cached_reproducible_and_init_changes_the_run(tmp_path):
    preset, data = tiny_preset(), tiny_data()
    a = fit_run("vae", preset, data, "cpu", 0, tmp_path / "a", show_progress=False)
    b = fit_run("vae", preset, data, "cpu", 0, tmp_path / "b", show_progress=False)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    again = fit_run("vae", preset, data, "cpu", 0, tmp_path / "a", show_progress=False)
    assert again.reused and again.run_path == a.run_path
    loaded = load_run(a.run_path)
    x = torch.from_numpy(data.images[:2]).unsqueeze(1)
    assert torch.allclose(loaded(x)[0], a.model(x)[0])
    other_seed = fit_run("vae", preset, data, "cpu", 1, tmp_path / "a", show_progress=False)
    assert other_seed.run_path != a.run_path
    tuned = fit_run("vae", preset, data, "cpu", 0, tmp_path / "a", init=a, show_progress=False)
    assert tuned.run_path != a.run_path and tuned.run_path.name.startswith("vae-adapt-")


def test_methods_beyond_the_paper_can_have_their_own_epochs(tmp_path):
    from u2ad_core.baselines import NEW_METHODS, stage_epochs

    p = tiny_preset()
    b = replace(p.baselines, pretrain_epochs=1, adapt_epochs=1, beyond_epochs=(2, 3))
    assert [stage_epochs(m, b, s) for m in ("dae", "dal") for s in ("pretrain", "adapt")] == [1, 1, 2, 3]
    assert all(stage_epochs(m, replace(b, beyond_epochs=None), "adapt") == 1 for m in NEW_METHODS)
    with pytest.raises(ValueError, match="stage"):
        stage_epochs("dal", b, "S3")
    # a run trains the epochs stage_epochs gives
    run = fit_run("dal", replace(p, baselines=b), tiny_data(), "cpu", 0, tmp_path, show_progress=False)
    assert len(run.history) == 2
    assert get_preset("cpu").baselines.beyond_epochs is not None  # the cpu book's budget (notebook 13)


@pytest.mark.parametrize("method", SIGNAL_METHODS)
def test_signal_method_flags_a_bright_blob(method):
    rng = np.random.default_rng(0)
    h, w = 64, 32
    img = np.full((h, w), 0.2, np.float32)
    cord = np.zeros((h, w), bool)
    cord[4:60, 12:20] = True  # 448 cord pixels (DBSCAN needs min_samples = 100 of them)
    img[cord] = 0.5 + rng.uniform(-0.004, 0.004, size=cord.sum())
    blob = np.zeros_like(cord)
    blob[30:34, 14:18] = True
    img[blob] = 0.9
    model = fit_baseline(method, get_preset("paper"), None)
    _, maps = anomaly_maps(method, model, SimpleNamespace(images=img[None], cord=cord[None]))
    m = maps[0]
    assert m.shape == (h, w) and np.all(m[~cord] == 0)
    assert blob[np.unravel_index(np.argmax(m), m.shape)], f"{method}: the maximum is not in the blob"
    # superpixels may straddle the blob's edge: SLIC must flag most of it, the others all of it
    assert (m[blob] > 0).mean() >= (0.5 if method == "slic" else 1.0)
    assert (m[cord & ~blob] > 0).mean() < 0.5


def test_signal_maps_direct_and_one_sided():
    img = np.full((1, 20, 10), 0.5, np.float32)
    cord = np.zeros((1, 20, 10), bool)
    cord[0, 2:18, 3:7] = True
    img[0, 5, 4] = 0.9
    img[0, 12, 4] = 0.1  # a dark pixel: not a hyperintensity
    z1 = zscore_maps(img, cord, 0.1, one_sided=True)
    z2 = zscore_maps(img, cord, 0.1, one_sided=False)
    assert z1[0, 5, 4] > 0 and z1[0, 12, 4] == 0 and z2[0, 12, 4] > 0
    assert slic_maps(img, cord).shape == img.shape
    assert dbscan_maps(img, cord, 0.01, 10)[0, 5, 4] > 0


def test_score_adapter_matches_u2ad_scoring():
    from u2ad_core.core.config import ScoreConfig
    from u2ad_core.method.scoring import anomaly_map, score_maps

    data = tiny_data()
    rng = np.random.default_rng(1)
    recon = np.clip(data.images + rng.normal(0, 0.05, data.images.shape), 0, 1).astype(np.float32)
    sc = ScoreConfig(erode_cord=0)
    ref = score_maps(data.images, recon, data.cord, data.segments, sc,
                     meta={k: getattr(data, k) for k in ("subject", "slice_index", "patient_label",
                                                         "lesion_segments", "slice_offset")})
    res = score_anomaly_maps(anomaly_map(data.images, recon, data.cord > 0, sc.sided), data, sc, recon)
    assert np.allclose(res.maps, ref.maps) and np.allclose(res.curves, ref.curves, equal_nan=True)
    assert res.table.equals(ref.table)


def test_noises_are_seeded_and_shaped():
    a = simplex_noise((3, 1, 48, 32), make_generator(0))
    b = simplex_noise((3, 1, 48, 32), make_generator(0))
    c = simplex_noise((3, 1, 48, 32), make_generator(1))
    assert a.shape == (3, 1, 48, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(a.std((1, 2, 3)), torch.ones(3), atol=1e-4)
    # spatially correlated, unlike white noise
    corr = torch.corrcoef(torch.stack([a[..., :-1].flatten(), a[..., 1:].flatten()]))[0, 1]
    assert corr > 0.5
    n = coarse_noise((2, 1, 48, 32), 0.2, 8, make_generator(0))
    assert n.shape == (2, 1, 48, 32)
    assert torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1] > 0.8
    betas = linear_betas(250)
    assert len(betas) == 250 and abs(float(betas[0]) - 4e-4) < 1e-12 and abs(float(betas[-1]) - 0.08) < 1e-12


def test_fanogan_stage_split_and_registry():
    assert gan_epochs(1, 0.5) == 1 and gan_epochs(2, 0.5) == 1 and gan_epochs(200, 0.5) == 100
    assert gan_epochs(4, 0.9) == 3
    assert set(BASELINES) == {"vae", "dae", "vaegan", "fanogan", "anoddpm", "zscore", "slic", "dbscan", "morphology",
                              "cddpm", "dal", "brainomaly", "brainomaly_diff"}
    assert UAD_METHODS == ("vae", "dae", "vaegan", "fanogan", "anoddpm")  # the paper's; the rest: NEW_METHODS
    assert ANATOMY_METHODS == ("morphology",) and "morphology" not in SIGNAL_METHODS
    assert BASELINES["morphology"].kind == "signal" and "images" not in BASELINES["morphology"].inputs
    with pytest.raises(KeyError, match="unknown baseline"):
        fit_baseline("nope", tiny_preset(), tiny_data())


def test_bad_image_size_is_explained(tmp_path):
    data = tiny_data()
    data.images = data.images[:, :, :30]
    data.cord = data.cord[:, :, :30]
    with pytest.raises(ValueError, match="divisible"):
        fit_baseline("dae", tiny_preset(), data, "cpu", 0, tmp_path, show_progress=False)


# --------------------------------------------------------------------------------------
# Morphology-only baseline (masks only, no intensity)
# --------------------------------------------------------------------------------------
def narrowed_canal(n: int = 3, rows=(30, 34)):
    """Cord (columns 14-18) with CSF on both sides (11-13, 19-21) over rows 4-59 of a 64 x 32
    slice; at ``rows`` the CSF is gone and the cord is one column thinner (width 11 -> 4)."""
    h, w = 64, 32
    cord = np.zeros((n, h, w), np.uint8)
    csf = np.zeros_like(cord)
    cord[:, 4:60, 14:19] = 1
    csf[:, 4:60, 11:14] = 1
    csf[:, 4:60, 19:22] = 1
    lo, hi = rows
    csf[:, lo:hi] = 0
    cord[:, lo:hi, 18] = 0
    segments = np.zeros_like(cord)
    for j in range(6):
        segments[:, 10 + j * 7: 17 + j * 7] = j + 1
    images = np.random.default_rng(0).uniform(0, 1, size=(n, h, w)).astype(np.float32)
    return SimpleNamespace(images=images, cord=cord, csf=csf, segments=segments * ((cord | csf) > 0),
                           subject=np.array([f"s{i}" for i in range(n)]), slice_index=np.zeros(n, int),
                           slice_offset=np.zeros(n, int), patient_label=np.array([i % 2 for i in range(n)], np.int8),
                           lesion_segments=np.array(["C4-5" if i % 2 else "" for i in range(n)]))


def test_morphology_peaks_at_the_narrowing_and_stays_in_the_cord():
    data = narrowed_canal()
    w = morph.row_widths(data.cord, data.csf)
    assert w.shape == (3, 64) and np.isnan(w[0, :4]).all() and w[0, 10] == 11 and w[0, 31] == 4
    _, maps = anomaly_maps("morphology", fit_baseline("morphology", get_preset("smoke"), None), data)
    assert maps.shape == data.images.shape and maps.dtype == np.float32
    assert np.all(maps[data.cord == 0] == 0), "map must be zero outside the cord"
    row_peak = maps.max(2).argmax(1)
    assert np.all((row_peak >= 30) & (row_peak < 34)), row_peak
    assert np.isclose(maps[0, :, 15].max(), np.nanmax(morph.compression_profile(data.cord, data.csf)[0]))
    assert maps[0, 10, 15] == 0, "normal width: no compression"
    # unsmoothed, the narrowed rows read exactly 1 - 4 / 11
    prof = morph.compression_profile(data.cord, data.csf, sigma=0)
    assert np.allclose(prof[0, 30:34], 1 - 4 / 11) and np.all(prof[0, 4:30] == 0)
    # through the shared scoring the curve peaks there too, and the patient score is that peak
    res = score_anomaly_maps(maps, data, get_preset("smoke").score)
    assert np.all(np.abs(np.nanargmax(res.curves, 1) - 31.5) <= 3)
    peak = morph.compression_profile(data.cord, data.csf, morph.MorphologyConfig().sigma)[:, 20:45].max(1)
    assert np.allclose(res.table["patient_score"], peak) and np.all(peak > 0.3)


def test_morphology_ignores_intensities():
    data = narrowed_canal()
    other = SimpleNamespace(**{**vars(data), "images": 1 - data.images ** 2})
    _, a = anomaly_maps("morphology", None, data)
    _, b = anomaly_maps("morphology", None, other)
    assert np.array_equal(a, b)
    # and the maps are a function of the masks only (the images are never passed)
    assert np.array_equal(a, morph.morphology_maps(data.cord, data.csf))


def test_compression_scores_values_and_empty_cord():
    cord = np.zeros((2, 50, 20), bool)
    csf = np.zeros_like(cord)
    cord[0, 5:45, 8:12] = True
    csf[0, 5:45, 5:8] = True
    csf[0, 5:45, 12:15] = True  # width 10 on 40 rows
    csf[0, 20:24] = False  # 4 of 40 rows (10 %) at width 4: the 5th percentile is 4
    s = morph.compression_scores(cord, csf)
    assert s.shape == (2,) and np.isclose(s[0], 1 - 4 / 10)
    assert np.isnan(s[1]), "a slice without cord gets NaN"
    maps = morph.morphology_maps(cord, csf)
    assert np.all(maps[1] == 0) and np.isfinite(maps).all()
    # unknown CSF (all zero): the width of the cord alone, no compression
    assert np.isclose(morph.compression_scores(cord[:1], np.zeros_like(csf[:1]))[0], 0.0)


def test_morphology_no_cord_patient_and_missing_csf():
    data = narrowed_canal()
    data.cord[1] = 0
    _, maps = anomaly_maps("morphology", None, data)
    assert np.all(maps[1] == 0)
    res = score_anomaly_maps(maps, data, get_preset("smoke").score)
    assert np.isnan(res.table["patient_score"][1]) and np.isfinite(res.table["patient_score"][0])
    no_csf = SimpleNamespace(images=data.images, cord=data.cord)
    with pytest.raises(ValueError, match="csf"):
        anomaly_maps("morphology", None, no_csf)


def test_versus_anatomy_words_follow_numbers():
    v = morph.versus_anatomy([0.80, 0.70, 0.50, np.nan], [0.05, 0.15, 0.05, 0.1], 0.62, 0.10)
    assert list(v) == ["beats anatomy", "no clear difference", "below anatomy", "n/a"]
    rows = pd.DataFrame({"cohort": ["a", "a", "a"], "strategy": ["S3", "S1", "anatomy"],
                         "model": ["U2AD", "U2AD", morph.LABEL],
                         "patient_auroc_mean": [0.9, 0.6, 0.62], "patient_auroc_std": [0.05, 0.05, 0.1]})
    cmp = morph.compare_with_anatomy(rows)
    assert list(cmp["verdict"]) == ["beats anatomy", "no clear difference"]
    text = morph.anatomy_sentence(cmp, "a")
    assert "0.620 ± 0.10" in text and "1 beat anatomy (S3 U2AD (+0.280))" in text and "0 are below" in text
    with pytest.raises(ValueError, match="rows of"):
        morph.compare_with_anatomy(rows[rows["model"] != morph.LABEL])


def test_score_adapter_honours_patient_span():
    from u2ad_core.core.config import ScoreConfig

    data = tiny_data(2)
    maps = np.zeros(data.images.shape, np.float32)
    maps[:, 40:44, 13:19] = 1.0  # rows 40-43: cord, outside the segments (rows 4-39)
    maps[:, 20:22, 13:19] = 0.5
    seg = score_anomaly_maps(maps, data, ScoreConfig(patient_span="segments", drop_bottom=0))
    whole = score_anomaly_maps(maps, data, ScoreConfig(patient_span="cord", drop_bottom=0))
    assert np.all(whole.table["patient_score"] > seg.table["patient_score"] + 0.2)
