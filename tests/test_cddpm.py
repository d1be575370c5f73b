"""cDDPM (Behrendt et al. 2025): one training step moves encoder and U-Net, the condition
reaches the denoiser, reconstructions are seeded, maps are median-filtered inside the cord
and zero outside, a finished run is reused. Resuming an interrupted cDDPM run exactly:
``tests/test_runstore.py::test_baseline_resumes_exactly[cddpm]``."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core.baselines import BASELINES, NEW_METHODS, UAD_METHODS, anomaly_maps, fit_run, load_run
from u2ad_core.baselines.anoddpm import AnoDDPM
from u2ad_core.baselines.cddpm import CDDPM, cosine_betas, roi_median
from u2ad_core.baselines.common import StepInfo
from u2ad_core.core.config import CDDPMConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import make_generator

H, W = 48, 32
TINY = CDDPMConfig(unet_width=4, encoder_width=4, cond_dim=8, lr=1e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_preset(epochs: int = 1):
    p = get_preset("smoke")
    return replace(p, baselines=replace(p.baselines, pretrain_epochs=epochs, adapt_epochs=1, batch_size=4, width=4,
                                        levels=4, checkpoint_every=1, cddpm=TINY))


def tiny_data(n: int = 6, seed: int = 0):
    """Slices with a bright vertical 'cord' band (columns 13-18) and a little texture."""
    rng = np.random.default_rng(seed)
    cord = np.zeros((n, H, W), np.uint8)
    cord[:, 4:44, 13:19] = 1
    images = np.clip(rng.uniform(0.1, 0.3, (n, H, W)) + 0.4 * cord, 0, 1).astype(np.float32)
    return SimpleNamespace(images=images, cord=cord)


def test_one_training_step_moves_encoder_and_unet():
    torch.manual_seed(0)
    model = CDDPM((H, W), TINY)
    m = BASELINES["cddpm"]
    cfg = replace(tiny_preset().baselines)
    opts = m.optimizers(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(tiny_data(4).images).unsqueeze(1)
    losses = m.train_step(model, opts, x, torch.ones_like(x), make_generator(0), cfg, StepInfo(0, 1, 0))
    assert set(losses) == {"loss"} and math.isfinite(losses["loss"]) and losses["loss"] > 0
    after = model.state_dict()
    for part in ("encoder.head.weight", "unet.c_mlp.0.weight", "unet.t_mlp.0.weight", "unet.out.weight"):
        assert not torch.equal(before[part], after[part]), f"{part} did not move"


def test_condition_reaches_the_denoiser_and_zero_cond_dim_is_a_plain_ddpm():
    torch.manual_seed(0)
    model = CDDPM((H, W), TINY).eval()
    x_t, t = torch.randn(2, 1, H, W), torch.tensor([10, 500])
    cond = model.encode(torch.rand(2, 1, H, W))
    assert cond.shape == (2, 8)
    with torch.no_grad():
        assert not torch.allclose(model(x_t, t, cond), model(x_t, t, cond + 1.0))
    with pytest.raises(ValueError, match="conditioned: pass cond"):
        model(x_t, t, None)
    plain = CDDPM((H, W), replace(TINY, cond_dim=0))
    assert plain.encoder is None and plain.unet.c_mlp is None and plain.encode(x_t) is None
    assert plain(x_t, t).shape == (2, 1, H, W)
    # AnoDDPM's U-Net is unchanged by the conditioning option
    ano = AnoDDPM((H, W), get_preset("smoke").baselines.anoddpm, width=4, levels=4)
    assert ano.unet.c_mlp is None and not any("c_mlp" in k for k in ano.state_dict())
    assert ano.unet.inc.t_proj.in_features == 16


def test_reconstruction_is_seeded_and_levels_matter():
    torch.manual_seed(0)
    model = CDDPM((H, W), TINY).eval()
    x = torch.from_numpy(tiny_data(3).images).unsqueeze(1)
    a = model.reconstruct(x, make_generator(0))
    b = model.reconstruct(x, make_generator(0))
    assert a.shape == x.shape and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, model.reconstruct(x, make_generator(1)))
    one = model.reconstruct(x, make_generator(0), levels=(500,))
    assert not torch.equal(a, one)
    model.noise_levels = (500,)  # inference-time choice without retraining
    assert torch.equal(model.reconstruct(x, make_generator(0)), one)
    with pytest.raises(ValueError, match="noise_levels"):
        model.reconstruct(x, make_generator(0), levels=(0,))
    with pytest.raises(ValueError, match="noise_levels"):
        CDDPM((H, W), replace(TINY, noise_levels=(1001,)))


def test_cosine_schedule_depends_on_the_fraction_of_t():
    abar = torch.cumprod(1 - cosine_betas(1000), 0)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(float(abar[499]) - f(0.5) / f(0)) < 1e-9
    short = torch.cumprod(1 - cosine_betas(100), 0)
    assert abs(float(short[49]) - float(abar[499])) < 1e-9
    assert float(abar[0]) > 0.999 and float(abar[-1]) < 1e-6


def test_roi_median_matches_a_direct_loop_and_ignores_outside_pixels():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 9, 8)).astype(np.float32)
    roi = rng.random((2, 9, 8)) > 0.4
    got = roi_median(maps, roi, 3)
    want = np.zeros_like(maps)
    for n, y, x in zip(*np.nonzero(roi)):
        ys, xs = slice(max(0, y - 1), y + 2), slice(max(0, x - 1), x + 2)
        want[n, y, x] = np.median(maps[n, ys, xs][roi[n, ys, xs]])
    assert np.allclose(got, want) and got.dtype == np.float32
    assert np.all(got[~roi] == 0)
    # a constant map stays constant up to the ROI border (outside zeros do not pull it down)
    band = np.zeros((1, 20, 12), bool)
    band[0, 2:18, 4:8] = True
    assert np.allclose(roi_median(np.where(band, 0.3, 0.0), band, 5)[band], 0.3)
    # an isolated hot pixel is removed
    spike = np.where(band, 0.1, 0.0).astype(np.float32)
    spike[0, 10, 5] = 5.0
    assert np.allclose(roi_median(spike, band, 5)[band], 0.1)
    assert np.array_equal(roi_median(maps, roi, 1), np.where(roi, maps, 0))
    with pytest.raises(ValueError, match="odd"):
        roi_median(maps, roi, 4)


def test_fit_gives_filtered_maps_in_the_roi(tmp_path):
    preset, data = tiny_preset(), tiny_data()
    run = fit_run("cddpm", preset, data, "cpu", 0, tmp_path, show_progress=False)
    assert not run.reused and (run.run_path / "done.json").is_file() and run.run_path.name.startswith("cddpm-")
    assert len(run.history) == 1 and math.isfinite(run.history[0]["loss"])
    recon, maps = anomaly_maps("cddpm", run.model, data, "cpu")
    assert recon.shape == maps.shape == data.images.shape and maps.dtype == np.float32
    out = data.cord == 0
    assert np.all(maps[out] == 0) and np.array_equal(recon[out], data.images[out])
    assert np.isfinite(maps).all() and np.all(maps >= 0)
    residual = np.where(out, 0, np.abs(data.images - recon)).astype(np.float32)
    assert np.allclose(maps, roi_median(residual, data.cord > 0, TINY.median_kernel))
    _, again = anomaly_maps("cddpm", load_run(run.run_path), data, "cpu")
    assert np.array_equal(maps, again)
    reused = fit_run("cddpm", preset, data, "cpu", 0, tmp_path, show_progress=False)
    assert reused.reused and reused.run_path == run.run_path
    assert [r["loss"] for r in reused.history] == [r["loss"] for r in run.history]


def test_registry_and_preset_sizes():
    assert BASELINES["cddpm"].label == "cDDPM" and "cddpm" in NEW_METHODS and "cddpm" not in UAD_METHODS
    paper = get_preset("paper").baselines.cddpm
    assert (paper.timesteps, paper.noise_levels, paper.unet_width, paper.cond_dim, paper.lr) == \
        (1000, (250, 500, 750), 128, 512, 1e-4)
    for name in ("smoke", "cpu", "paper_ci"):
        c = get_preset(name).baselines.cddpm
        assert c.unet_width <= 8 and c.cond_dim <= 32 and c.noise_levels == paper.noise_levels, name
    one = get_preset("cpu", **{"baselines.cddpm.noise_levels": [500]}).baselines.cddpm
    assert one.noise_levels == (500,)
