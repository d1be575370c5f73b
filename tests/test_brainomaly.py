"""Brainomaly and Brainomaly-Diff (issue 17): a training step changes the weights it should
with finite losses, the translation is tanh(x + M), the refiner reads the time step, maps stay
in the cord, paired runs are cached by both sets and resume exactly, the refiner is trained on
top of a finished Brainomaly run, and the strategies S1-S3 map onto the pairs."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core.core import runstore
from u2ad_core.baselines import (BASELINES, NEW_METHODS, UAD_METHODS, anomaly_maps, data_hash, fit_run, load_run,
                                 baseline_model)
from u2ad_core.baselines import brainomaly as bm
from u2ad_core.baselines.common import StepInfo
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import make_generator

H, W = 32, 16


class Interrupt(Exception):
    pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks (tests/conftest.py)


def tiny_preset(epochs: int = 1):
    p = get_preset("smoke")
    b = p.baselines
    c = replace(b.brainomaly, g_width=4, g_blocks=1, d_width=4, d_levels=3, n_critic=2,
                refiner=replace(b.brainomaly.refiner, width=4, timesteps=10, steps=3))
    return replace(p, baselines=replace(b, pretrain_epochs=epochs, adapt_epochs=1, batch_size=4,
                                        checkpoint_every=1, brainomaly=c))


def tiny_data(n: int, seed: int, lesion: bool = False):
    """``n`` slices of H x W: texture, a brighter 'cord' band (columns 6-9), optionally a
    bright spot in it."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.1, 0.3, size=(n, H, W)).astype(np.float32)
    cord = np.zeros((n, H, W), np.uint8)
    cord[:, 4:28, 6:10] = 1
    images[cord > 0] += 0.4
    if lesion:
        images[:, 14:17, 7:9] += 0.3
    return SimpleNamespace(images=np.clip(images, 0, 1), cord=cord)


def changed(before: dict, model: torch.nn.Module, prefix: str) -> bool:
    return any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith(prefix))


def test_registry_and_traits():
    assert set(NEW_METHODS) >= {"brainomaly", "brainomaly_diff"}
    assert not set(NEW_METHODS) & set(UAD_METHODS), "the paper's set (notebook 09) is unchanged"
    assert BASELINES["brainomaly"].paired and BASELINES["brainomaly"].base is None
    assert BASELINES["brainomaly_diff"].paired and BASELINES["brainomaly_diff"].base == "brainomaly"
    # the refiner's settings are not part of Brainomaly's hashed configuration
    b = tiny_preset().baselines
    other = replace(b, brainomaly=replace(b.brainomaly, refiner=replace(b.brainomaly.refiner, steps=2)))
    assert bm.METHOD.sub_config(b) == bm.METHOD.sub_config(other)
    assert bm.DIFF_METHOD.sub_config(b) != bm.DIFF_METHOD.sub_config(other)


def test_translation_is_tanh_of_image_plus_map():
    model = bm.METHOD.build(tiny_preset().baselines, (H, W))
    x = torch.rand((2, 1, H, W), generator=make_generator(0))
    with torch.no_grad():
        s = x * 2 - 1
        assert torch.allclose(model(x), (torch.tanh(s + model.generator(s)) + 1) / 2)
        assert model.critic(s).shape == (2, 1, H // 8, W // 8), "PatchGAN: one score per patch"
        for p in model.generator.parameters():
            p.zero_()
        assert torch.allclose(model(x), (torch.tanh(s) + 1) / 2), "M = 0 does not give back x (tanh)"


def test_one_step_critic_then_generator_every_second_step():
    cfg = tiny_preset().baselines
    torch.manual_seed(0)
    model = bm.METHOD.build(cfg, (H, W))
    opts = bm.METHOD.optimizers(model, cfg)
    g = make_generator(0)
    x, x_h = torch.rand((2, 4, 1, H, W), generator=g)
    roi = torch.ones_like(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = bm.METHOD.train_step(model, opts, x, roi, g, cfg, StepInfo(0, 1, 0), healthy=(x_h, roi))
    assert set(out) == {"critic", "wasserstein", "gp"} and all(np.isfinite(v) for v in out.values())
    assert changed(before, model, "critic.") and not changed(before, model, "generator.")
    out = bm.METHOD.train_step(model, opts, x, roi, g, cfg, StepInfo(0, 1, 1), healthy=(x_h, roi))
    assert {"generator", "identity"} <= set(out) and all(np.isfinite(v) for v in out.values())
    assert changed(before, model, "generator.")


def test_refiner_reads_the_time_step_and_trains_alone():
    cfg = tiny_preset().baselines
    torch.manual_seed(0)
    model = bm.DIFF_METHOD.build(cfg, (H, W))
    xt = torch.randn((2, 1, H, W), generator=make_generator(0))
    with torch.no_grad():
        a = model.refiner(xt, torch.tensor([0, 0]))
        b = model.refiner(xt, torch.tensor([9, 9]))
    assert a.shape == xt.shape and not torch.allclose(a, b), "the refiner must depend on t"
    opts = bm.DIFF_METHOD.optimizers(model, cfg)
    assert {id(p) for p in opts["refiner"].param_groups[0]["params"]} == {id(p) for p in model.refiner.parameters()}
    g = make_generator(1)
    x, x_h = torch.rand((2, 4, 1, H, W), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = bm.DIFF_METHOD.train_step(model, opts, x, torch.ones_like(x), g, cfg, StepInfo(0, 1, 0),
                                    healthy=(x_h, torch.ones_like(x)))
    assert set(out) == {"diffusion"} and np.isfinite(out["diffusion"])
    assert changed(before, model, "refiner.")
    assert not changed(before, model, "generator.") and not changed(before, model, "critic.")
    s0 = x * 2 - 1
    r1, r2 = model.refine(s0, make_generator(3)), model.refine(s0, make_generator(3))
    assert r1.shape == s0.shape and torch.equal(r1, r2), "seeded by the generator"
    seed_betas = torch.linspace(1e-4, 0.02, 50, dtype=torch.float64)  # Brainomaly-Diff diffusion_utils.py
    assert torch.equal(bm.refiner_betas(50), seed_betas)
    assert abs(float(torch.prod(1 - bm.refiner_betas(10))) - float(torch.prod(1 - seed_betas))) < 0.01
    with pytest.raises(ValueError, match="steps"):
        bm.BrainomalyDiff((H, W), replace(cfg.brainomaly, refiner=replace(cfg.brainomaly.refiner, steps=11)))


def test_fit_maps_cache_and_refiner_on_top(tmp_path):
    preset = tiny_preset()
    target, healthy = tiny_data(6, 0, lesion=True), tiny_data(8, 1)
    run = fit_run("brainomaly", preset, target, "cpu", 0, tmp_path, show_progress=False, healthy=healthy)
    assert not run.reused and (run.run_path / "done.json").is_file()
    assert len(run.history) == 1 and {"critic", "generator", "identity"} <= set(run.history[0])
    assert all(np.isfinite(v) for v in run.history[0].values())
    spec = json.loads((run.run_path / "config.json").read_text())["spec"]
    assert spec["healthy"] == data_hash(healthy) and spec["data"] == data_hash(target)
    again = fit_run("brainomaly", preset, target, "cpu", 0, tmp_path, show_progress=False, healthy=healthy)
    assert again.reused and again.run_path == run.run_path
    other = fit_run("brainomaly", preset, target, "cpu", 0, tmp_path, show_progress=False, healthy=tiny_data(8, 2))
    assert other.run_path != run.run_path, "the healthy set is part of the run's identity"
    for method, model in (("brainomaly", run.model), ("brainomaly", load_run(run.run_path))):
        recon, maps = anomaly_maps(method, model, target, "cpu")
        out = target.cord == 0
        assert maps.shape == target.images.shape and maps.dtype == np.float32
        assert np.all(maps[out] == 0) and np.array_equal(recon[out], target.images[out])
        assert np.allclose(maps[~out], np.abs(target.images - recon)[~out]) and np.isfinite(maps).all()

    with pytest.raises(ValueError, match="init="):
        fit_run("brainomaly_diff", preset, target, "cpu", 0, tmp_path, show_progress=False, healthy=healthy)
    diff = fit_run("brainomaly_diff", preset, target, "cpu", 0, tmp_path, init=run, show_progress=False,
                   healthy=healthy)
    spec = json.loads((diff.run_path / "config.json").read_text())["spec"]
    assert spec["init"] == {"run_hash": run.model.run_hash} and diff.run_path.name.startswith("brainomaly_diff-")
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, diff.model.state_dict()[k]), f"{k}: the generator must stay the trained one"
    recon, maps = anomaly_maps("brainomaly_diff", diff.model, target, "cpu", seed=1)
    assert np.all(maps[target.cord == 0] == 0) and np.isfinite(maps).all() and (recon >= 0).all()
    assert np.array_equal(maps, anomaly_maps("brainomaly_diff", load_run(diff.run_path), target, "cpu", seed=1)[1])
    with pytest.raises(ValueError, match="paired"):
        fit_run("dae", preset, target, "cpu", 0, tmp_path, show_progress=False, healthy=healthy)


def test_paired_run_resumes_exactly(tmp_path):
    preset, target, healthy = tiny_preset(epochs=3), tiny_data(6, 0), tiny_data(5, 1)
    method = BASELINES["brainomaly"]

    def step(model, opts, x, roi, g, cfg, info, **kw):
        if info.epoch == 2:
            raise Interrupt
        return method.train_step(model, opts, x, roi, g, cfg, info, **kw)

    full = fit_run(method, preset, target, "cpu", 0, tmp_path / "full", show_progress=False, healthy=healthy)
    with pytest.raises(Interrupt):
        fit_run(replace(method, train_step=step), preset, target, "cpu", 0, tmp_path / "part", show_progress=False,
                healthy=healthy)
    (run_path,) = (tmp_path / "part" / "baselines").iterdir()
    assert run_path.name == full.run_path.name and not (run_path / "done.json").exists()
    assert runstore.load_state(run_path / "checkpoint.pt")["epoch"] == 2
    resumed = fit_run(method, preset, target, "cpu", 0, tmp_path / "part", show_progress=False, healthy=healthy)
    assert not resumed.reused and [r["epoch"] for r in resumed.history] == [0, 1, 2]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_strategies_map_onto_pairs(tmp_path):
    preset = tiny_preset()
    healthy, cohort = tiny_data(6, 1), tiny_data(4, 0, lesion=True)
    kw = dict(data_dir=tmp_path, run_dir=tmp_path, device="cpu", seed=0, show_progress=False,
              paths={"spine_generic_like": healthy, "renji_like": cohort})

    def spec(path):
        return json.loads((path / "config.json").read_text())["spec"]

    def run_hash(path):
        return json.loads((path / "config.json").read_text())["run_hash"]

    _, p1 = baseline_model(preset, "brainomaly", "renji_like", "S1", **kw)
    _, p2 = baseline_model(preset, "brainomaly", "renji_like", "S2", **kw)
    _, p3 = baseline_model(preset, "brainomaly", "renji_like", "S3", **kw)
    h, c = data_hash(healthy), data_hash(cohort)
    assert (spec(p1)["data"], spec(p1)["healthy"], spec(p1)["init"]) == (h, h, None)
    assert (spec(p2)["data"], spec(p2)["healthy"], spec(p2)["init"]) == (c, h, None)
    assert (spec(p3)["data"], spec(p3)["healthy"]) == (c, h)
    assert spec(p3)["init"] == {"run_hash": run_hash(p1)}
    _, d3 = baseline_model(preset, "brainomaly_diff", "renji_like", "S3", **kw)
    assert spec(d3)["init"] == {"run_hash": run_hash(p3)}
    assert (spec(d3)["data"], spec(d3)["stage"]) == (c, "adapt")
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "baselines").iterdir())
    assert names == ["brainomaly-S1", "brainomaly-renji_like-S2", "brainomaly-renji_like-S3",
                     "brainomaly_diff-renji_like-S3"], "the Brainomaly runs are reused, not retrained"
