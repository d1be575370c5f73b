"""The sidedness switch ``ScoreConfig.sided`` ("abs" | "bright" | None) on every method family:
hand cases for U2AD's map, the reconstruction baselines (with and without a map filter) and the
signal methods; ``None`` reproduces the maps of each method's former rule exactly; the switch
flows from a preset; no training specification depends on it."""

from __future__ import annotations

import argparse
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core.baselines import BASELINES, SIGNAL_METHODS, Method, anomaly_maps, fit_baseline
from u2ad_core.baselines.cddpm import roi_median
from u2ad_core.baselines.signal import dbscan_maps, slic_maps, zscore_maps
from u2ad_core.core.config import SIDES, BaselineConfig, ScoreConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.method.scoring import anomaly_map, apply_sided, score_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks (tests/conftest.py)

H, W = 48, 32


def spots(n: int = 2, seed: int = 0) -> SimpleNamespace:
    """Textured slices, a cord band (columns 13-18), a bright and a dark spot in it, segments."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.1, 0.3, size=(n, H, W)).astype(np.float32)
    cord = np.zeros((n, H, W), np.uint8)
    cord[:, 4:44, 13:19] = 1
    images[cord > 0] += 0.4
    images[:, 20:24, 14:17] += 0.3
    images[:, 30:33, 15:18] -= 0.3
    seg = np.zeros_like(cord)
    for j in range(6):
        seg[:, 4 + j * 6: 10 + j * 6] = j + 1
    return SimpleNamespace(images=np.clip(images, 0, 1), cord=cord, segments=seg * cord)


# --------------------------------------------------------------------------------------
# the rule itself
# --------------------------------------------------------------------------------------
def test_apply_sided_hand_cases_and_errors():
    d = np.array([-2.0, -0.5, 0.0, 0.25, 3.0], np.float32)
    assert np.array_equal(apply_sided(d, "abs"), [2.0, 0.5, 0.0, 0.25, 3.0])
    assert np.array_equal(apply_sided(d, "bright"), [0.0, 0.0, 0.0, 0.25, 3.0])
    assert np.array_equal(apply_sided(d, None), apply_sided(d, "abs"))  # default rule: abs
    assert np.array_equal(apply_sided(d, None, default="bright"), apply_sided(d, "bright"))
    assert apply_sided(d, "bright").dtype == np.float32
    with pytest.raises(ValueError, match="sided"):
        apply_sided(d, "dark")
    assert SIDES == ("abs", "bright", None)
    with pytest.raises(ValueError, match="ScoreConfig.sided"):
        ScoreConfig(sided="both")
    with pytest.raises(ValueError, match="sided"):
        get_preset("cpu", **{"score.sided": "two"})


# --------------------------------------------------------------------------------------
# U2AD
# --------------------------------------------------------------------------------------
def test_u2ad_map_hand_case():
    x = np.array([[[0.5, 0.9, 0.1, 0.7]]], np.float32)
    r = np.array([[[0.5, 0.5, 0.5, 0.9]]], np.float32)
    roi = np.array([[[True, True, True, False]]])
    assert np.allclose(anomaly_map(x, r, roi, "abs"), [[[0.0, 0.4, 0.4, 0.0]]])
    assert np.allclose(anomaly_map(x, r, roi, "bright"), [[[0.0, 0.4, 0.0, 0.0]]])
    old = np.where(roi, np.abs(x - r), 0.0).astype(np.float32)  # the map before the switch
    assert anomaly_map(x, r, roi).tobytes() == old.tobytes()
    assert anomaly_map(x, r, roi, "abs").tobytes() == old.tobytes()


def test_u2ad_scoring_follows_the_preset_and_signs_before_postprocessing():
    d = spots()
    recon = np.full_like(d.images, 0.6)  # the bright spot is above it, the dark spot below
    for sided in SIDES:
        sc = get_preset("cpu", **{"score.sided": sided}).score
        assert sc.sided == sided
        res = score_maps(d.images, recon, d.cord, d.segments, sc)
        diff = d.images - recon
        want = {"abs": np.abs(diff), None: np.abs(diff), "bright": np.maximum(diff, 0)}[sided]
        assert res.raw_maps.tobytes() == np.where(d.cord > 0, want, 0).astype(np.float32).tobytes()
        assert res.config["sided"] == sided
    bright = score_maps(d.images, recon, d.cord, d.segments, ScoreConfig(sided="bright"))
    both = score_maps(d.images, recon, d.cord, d.segments, ScoreConfig(sided="abs"))
    dark = np.zeros(d.images.shape, bool)
    dark[:, 30:33, 15:18] = True
    assert bright.maps[dark].max() == 0 and both.raw_maps[dark].min() > 0.2


# --------------------------------------------------------------------------------------
# reconstruction baselines
# --------------------------------------------------------------------------------------
def _stub(filt=None) -> Method:
    """A UAD method whose reconstruction is 0.6 everywhere (a hand case), optional map filter."""
    return Method(name="stub", label="Stub", kind="uad", reference="test", sub_config=lambda b: b.vae,
                  build=lambda cfg, size: torch.nn.Linear(1, 1), optimizers=lambda m, c: {},
                  train_step=lambda *a, **k: {}, reconstruct=lambda m, x, r, g, c: torch.full_like(x, 0.6),
                  map_filter=filt)


def test_reconstruction_baseline_hand_case_and_sign_before_the_filter():
    d = spots()
    model = torch.nn.Linear(1, 1)
    cord = d.cord > 0
    diff = np.where(cord, d.images - np.float32(0.6), 0).astype(np.float32)
    recon, m_none = anomaly_maps(_stub(), model, d, "cpu")
    assert np.array_equal(recon[cord], np.full(cord.sum(), 0.6, np.float32))
    assert m_none.tobytes() == np.abs(diff).tobytes()
    assert anomaly_maps(_stub(), model, d, "cpu", sided="abs")[1].tobytes() == m_none.tobytes()
    assert anomaly_maps(_stub(), model, d, "cpu", sided="bright")[1].tobytes() == np.maximum(diff, 0).tobytes()
    seen = []  # the filter receives the already-signed residual
    _, m = anomaly_maps(_stub(lambda maps, roi, c: seen.append(maps.copy()) or maps * 2), model, d, "cpu",
                        sided="bright")
    assert seen[0].min() == 0 and np.array_equal(m, 2 * np.maximum(diff, 0))
    with pytest.raises(ValueError, match="sided"):
        anomaly_maps(_stub(), model, d, "cpu", sided="up")


def _tiny_baselines() -> BaselineConfig:
    b = get_preset("smoke").baselines
    return replace(b, batch_size=4, width=4, levels=4, vae=replace(b.vae, latent_dim=8),
                   vaegan=replace(b.vaegan, latent_dim=8), fanogan=replace(b.fanogan, latent_dim=8),
                   anoddpm=replace(b.anoddpm, timesteps=20, partial_steps=2),
                   cddpm=replace(b.cddpm, unet_width=4, encoder_width=4, cond_dim=8),
                   brainomaly=replace(b.brainomaly, g_width=4, g_blocks=1, d_width=4, d_levels=3,
                                      refiner=replace(b.brainomaly.refiner, width=4, timesteps=10, steps=3)))


@pytest.mark.parametrize("method", [n for n, m in BASELINES.items() if m.kind == "uad"])
def test_every_uad_method_old_map_by_default_and_each_side(method):
    """Untrained seeded networks suffice: the map is a function of (x, recon) and the filter."""
    from u2ad_core.baselines.training import _build

    m, d = BASELINES[method], spots()
    model = _build(m, _tiny_baselines(), (H, W), 0)
    cord = d.cord > 0
    recon, m_none = anomaly_maps(method, model, d, "cpu", seed=0)
    maps = {s: anomaly_maps(method, model, d, "cpu", seed=0, sided=s) for s in ("abs", "bright")}
    for r, _ in maps.values():
        assert r.tobytes() == recon.tobytes()  # the reconstruction does not depend on the switch
    diff = np.where(cord, d.images - recon, 0).astype(np.float32)
    filt = (lambda a: a) if m.map_filter is None else (
        lambda a: np.where(cord, m.map_filter(a, cord, m.sub_config(model.baseline_cfg)), 0).astype(np.float32))
    assert m_none.tobytes() == filt(np.abs(diff)).tobytes()  # the former map, bit for bit
    assert maps["abs"][1].tobytes() == m_none.tobytes()
    assert maps["bright"][1].tobytes() == filt(np.maximum(diff, 0)).tobytes()
    assert (maps["bright"][1] <= maps["abs"][1] + 1e-7).all() and (maps["bright"][1] < maps["abs"][1]).any()


def test_cddpm_median_of_the_bright_residual():
    d = spots(1)
    cord = d.cord > 0
    diff = np.where(cord, d.images - 0.6, 0).astype(np.float32)
    a = roi_median(np.maximum(diff, 0), cord, 5)
    # the median is monotone: max(d, 0) <= |d| pixel by pixel, so its median is never above
    assert (a >= 0).all() and (a > 0).any() and (a <= roi_median(np.abs(diff), cord, 5)).all()


# --------------------------------------------------------------------------------------
# signal methods
# --------------------------------------------------------------------------------------
def blobs() -> SimpleNamespace:
    """A flat cord with a bright blob (rows 20-23) and a dark blob (rows 40-43)."""
    rng = np.random.default_rng(0)
    img = np.full((1, 64, 32), 0.2, np.float32)
    cord = np.zeros((1, 64, 32), bool)
    cord[:, 4:60, 12:20] = True
    img[cord] = 0.5 + rng.uniform(-0.004, 0.004, size=cord.sum())
    img[:, 20:24, 14:18] = 0.9
    img[:, 40:44, 14:18] = 0.1
    return SimpleNamespace(images=img, cord=cord)


def test_signal_hand_cases():
    d = blobs()
    bright = np.zeros(d.cord.shape, bool)
    bright[:, 20:24, 14:18] = True
    dark = np.zeros(d.cord.shape, bool)
    dark[:, 40:44, 14:18] = True
    for fn in (lambda s: zscore_maps(d.images, d.cord, 0.1, sided=s),
               lambda s: dbscan_maps(d.images, d.cord, 0.01, 100, sided=s)):
        b, a = fn("bright"), fn("abs")
        assert (b[bright] > 0).all() and (b[dark] == 0).all()
        assert (a[bright] > 0).all() and (a[dark] > 0).all()
    # "bright" is max(z, 0) before the threshold: a negative threshold lets no dark pixel in
    z_all = zscore_maps(d.images, d.cord, -np.inf, sided="bright")
    assert z_all.min() == 0 and (z_all[dark] == 0).all()
    assert zscore_maps(d.images, d.cord, -np.inf, one_sided=True)[dark].max() < 0  # the former rule
    assert (slic_maps(d.images, d.cord, sided="bright")[dark] == 0).all()
    assert (slic_maps(d.images, d.cord, sided="abs")[dark] > 0).any()


@pytest.mark.parametrize("method", SIGNAL_METHODS)
def test_signal_switch_wins_over_one_sided_and_none_keeps_it(method):
    d = blobs()
    one = fit_baseline(method, get_preset("paper"), None)
    two = fit_baseline(method, get_preset("paper", **{"baselines.signal.one_sided": False}), None)
    assert BASELINES[method].takes_sided
    m_one, m_two = anomaly_maps(method, one, d)[1], anomaly_maps(method, two, d)[1]
    assert not np.array_equal(m_one, m_two)
    for model in (one, two):  # the preset's switch wins over one_sided (paper thresholds > 0)
        assert anomaly_maps(method, model, d, sided="bright")[1].tobytes() == m_one.tobytes()
        assert anomaly_maps(method, model, d, sided="abs")[1].tobytes() == m_two.tobytes()


def test_morphology_has_no_sign():
    assert not BASELINES["morphology"].takes_sided
    d = spots(1)
    d.csf = np.zeros_like(d.cord)
    d.csf[:, 4:44, 11:13] = 1
    ref = anomaly_maps("morphology", None, d)[1]
    for s in ("abs", "bright"):
        assert anomaly_maps("morphology", None, d, sided=s)[1].tobytes() == ref.tobytes()


# --------------------------------------------------------------------------------------
# the switch is scoring only
# --------------------------------------------------------------------------------------
def test_training_specifications_do_not_contain_the_switch():
    from u2ad_core.baselines.training import _spec as baseline_spec
    from u2ad_core.method.train import _spec as u2ad_spec

    base, bright = get_preset("cpu", **{"score.sided": "abs"}), get_preset("cpu", **{"score.sided": "bright"})
    assert base.hash() != bright.hash()  # the preset hash covers scoring
    for kind in ("pretrain", "adapt"):
        cfg = base.pretrain if kind == "pretrain" else base.adapt
        assert u2ad_spec(kind, base, cfg, "eu", "h", None, 0) == u2ad_spec(kind, bright, cfg, "eu", "h", None, 0)
    for name, m in BASELINES.items():
        if m.kind == "uad":
            assert baseline_spec(m, base, "S1", 1, "h", (H, W), None, 0) == \
                baseline_spec(m, bright, "S1", 1, "h", (H, W), None, 0), name


def test_infer_cli_has_the_switch():
    from u2ad_core.method.infer import cli_register

    parser = argparse.ArgumentParser()
    cli_register(parser.add_subparsers())
    args = parser.parse_args(["infer", "--checkpoint", "c", "--input", "i", "--out", "o", "--sided", "bright"])
    assert args.sided == "bright"
    assert parser.parse_args(["infer", "--checkpoint", "c", "--input", "i", "--out", "o"]).sided is None


def test_every_preset_scores_bright_pixels_only():
    """One rule for every method in every table: the book's presets all count bright residuals."""
    for name in ("smoke", "cpu", "paper", "paper_ci"):
        assert get_preset(name).score.sided == "bright", name
