"""Training loops: augmentation, schedule, metrics, determinism, exact resume, run reuse."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core.method import mcmaps, train
from u2ad_core.method.runs import build_seeded_model
from u2ad_core.core.config import AdaptConfig, ModelConfig, TrainConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.method.masking import patch_scores
from u2ad_core.core.runtime import make_generator

SIZE = (32, 24)  # grid 4 x 3 patches of 8 px; the cord covers the middle column


def tiny_preset(**overrides):
    """A model and schedule small enough that a few epochs take well under a second."""
    p = get_preset("smoke").override(
        model=ModelConfig(image_size=SIZE, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                          decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2),
        pretrain=TrainConfig(epochs=4, lr=1e-3, lr_step=2, lr_gamma=0.5, batch_size=4, checkpoint_every=1),
        adapt=AdaptConfig(epochs=4, lr=1e-3, lr_step=2, lr_gamma=0.5, batch_size=4, checkpoint_every=1,
                          stage2_start=2, refresh_every=2, n_tracked=2),
        **{"mc.k": 2, "mc.batch_size": 8},
    )
    return p.override(**overrides) if overrides else p


def tiny_data(n: int = 6, seed: int = 0):
    """Synthetic slices: a bright vertical 'cord' band with a little texture, plus one lesion."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    images = rng.uniform(0.1, 0.3, size=(n, h, w)).astype(np.float32)
    cord = np.zeros((n, h, w), np.uint8)
    cord[:, :, 10:14] = 1
    images[cord > 0] += 0.4
    lesion = np.zeros_like(cord)
    lesion[1, 12:16, 10:14] = 1
    images[lesion > 0] = 0.95
    return SimpleNamespace(images=np.clip(images, 0, 1), cord=cord, lesion=lesion,
                           slice_offset=np.zeros(n, int))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ small pure pieces
def test_augment_is_seeded_and_in_unit_range():
    cfg = TrainConfig()
    x = torch.rand(3, 1, 16, 8)
    a = train.augment(x, make_generator(1), cfg)
    b = train.augment(x, make_generator(1), cfg)
    c = train.augment(x, make_generator(2), cfg)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) == 0.0 and math.isclose(float(a.max()), 1.0, abs_tol=1e-6)
    # no noise, no contrast/brightness change -> only min-max renormalisation
    ident = TrainConfig(brightness=(1.0, 1.0), contrast=(1.0, 1.0), noise_std=0.0)
    y = train.augment(x, make_generator(0), ident)
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert torch.allclose(y, (x - lo) / (hi - lo), atol=1e-6)
    # renormalize=False keeps the brightness / contrast draws (the min-max undoes them)
    half = TrainConfig(brightness=(0.5, 0.5), contrast=(1.0, 1.0), noise_std=0.0, renormalize=False)
    assert torch.allclose(train.augment(x, make_generator(0), half), 0.5 * x, atol=1e-7)
    assert torch.allclose(train.augment(x, make_generator(0), replace(half, renormalize=True)), y, atol=1e-6)


def test_lr_schedule_matches_steplr_and_stage2_restart():
    cfg = AdaptConfig(epochs=20, lr=3e-3, lr_step=5, lr_gamma=0.1, stage2_start=15)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    for e in range(cfg.epochs):
        assert math.isclose(train.lr_at_epoch(cfg, e), opt.param_groups[0]["lr"], rel_tol=1e-9)
        opt.step()
        sched.step()
    # the paper's quirk: stage 2 at lr * 0.1^3; the option restarts the schedule there
    assert math.isclose(train.lr_at_epoch(cfg, 15), 3e-6, rel_tol=1e-9)
    restarted = AdaptConfig(**{**cfg.__dict__, "restart_schedule_at_stage2": True})
    assert train.lr_at_epoch(restarted, 15) == cfg.lr
    assert math.isclose(train.lr_at_epoch(restarted, 19), cfg.lr, rel_tol=1e-9)
    paper = get_preset("paper").adapt
    assert math.isclose(train.lr_at_epoch(paper, paper.stage2_start), 3e-6, rel_tol=1e-9)


def test_stage_schedule():
    cfg = AdaptConfig(stage2_start=3)
    assert [train.stage_schedule("u2ad", cfg, e) for e in range(5)] == ["eu"] * 3 + ["au"] * 2
    assert {train.stage_schedule("eu", cfg, e) for e in range(5)} == {"eu"}
    assert {train.stage_schedule("random", cfg, e) for e in range(5)} == {"random"}
    assert {train.stage_schedule("coverage", cfg, e) for e in range(5)} == {"coverage"}  # stage 1 only
    assert {train.stage_schedule("eu_mean", cfg, e) for e in range(5)} == {"eu"}
    with pytest.raises(ValueError, match="masking"):
        train.stage_schedule("bogus", cfg, 0)


def test_ssim_map_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 20, 16)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, size=x.shape), 0, 1).astype(np.float32)
    ours = train.ssim_map(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    for i in range(2):
        _, ref = skm.structural_similarity(x[i].astype(np.float64), y[i].astype(np.float64),
                                           data_range=1.0, win_size=7, full=True)
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)


def test_reconstruction_metrics():
    d = tiny_data()
    img = torch.from_numpy(d.images)
    roi = torch.from_numpy(d.cord > 0)
    perfect = train.reconstruction_metrics(img, img, torch.zeros_like(img), roi)
    assert perfect["mse"] == 0 and math.isclose(perfect["ssim"], 1.0, abs_tol=1e-6) and perfect["eu_mean"] == 0
    noisy = img + 0.1 * roi
    m = train.reconstruction_metrics(img, noisy, torch.full_like(img, 0.5), roi)
    assert math.isclose(m["mse"], 0.01, rel_tol=1e-5) and math.isclose(m["psnr"], 20.0, rel_tol=1e-4)
    assert math.isclose(m["eu_mean"], 0.5) and math.isclose(m["au_mean"], 0.1, rel_tol=1e-5)
    assert m["ssim"] < 1
    empty = train.reconstruction_metrics(img, noisy, None, torch.zeros_like(roi))
    assert empty["n"] == 0 and math.isnan(empty["mse"])


def test_choose_tracked_prefers_lesions_and_middle_slices():
    d = tiny_data(8)
    d.slice_offset = np.array([0, 0, -1, 0, 1, 0, 0, 0])
    idx = train.choose_tracked(d, 3)
    assert len(idx) == 3 and 1 in idx and not {2, 4} & set(idx)
    assert idx == train.choose_tracked(d, 3)


# ------------------------------------------------------------------ training runs
def test_pretrain_is_deterministic_and_reused(tmp_path):
    p = tiny_preset(**{"pretrain.epochs": 2})
    d = tiny_data()
    a = train.pretrain(p, d, tmp_path / "a", device="cpu", seed=3, show_progress=False)
    b = train.pretrain(p, d, tmp_path / "b", device="cpu", seed=3, show_progress=False)
    assert_same_weights(weights(a.model), weights(b.model))
    assert a.run_path.name == b.run_path.name and a.run_path.name.startswith("pretrain-")
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    c = train.pretrain(p, d, tmp_path / "c", device="cpu", seed=4, show_progress=False)
    assert not torch.equal(weights(a.model)["patch_embed.weight"], weights(c.model)["patch_embed.weight"])
    # a finished run is reused, not retrained
    calls = []
    again = train.pretrain(p, d, tmp_path / "a", device="cpu", seed=3, show_progress=False,
                           callback=lambda e, r: calls.append(e))
    assert again.reused and calls == [] and again.run_path == a.run_path
    assert_same_weights(weights(a.model), weights(again.model))
    model, info = train.load_checkpoint(a.run_path, "cpu")
    assert info["kind"] == "pretrain" and info["epoch"] == 2
    assert_same_weights(weights(a.model), weights(model))
    # a different configuration is a different run
    other = train.pretrain(p.override(**{"pretrain.lr": 2e-3}), d, tmp_path / "a", device="cpu", seed=3,
                           show_progress=False)
    assert other.run_path != a.run_path


class Interrupt(RuntimeError):
    pass


def test_adapt_resume_is_exact(tmp_path):
    p = tiny_preset(**{"adapt.checkpoint_every": 2})
    d = tiny_data()
    pre = train.pretrain(p.override(**{"pretrain.epochs": 1}), d, tmp_path / "runs", device="cpu", seed=0,
                         show_progress=False)
    full = train.adapt(p, d, tmp_path / "full", init=pre.run_path, masking="u2ad", device="cpu", seed=0,
                       show_progress=False)

    def stop_at_3(epoch, row):
        if epoch == 2:  # after the third epoch; the last checkpoint is after epoch 2 (index 1)
            raise Interrupt

    with pytest.raises(Interrupt):
        train.adapt(p, d, tmp_path / "part", init=pre.run_path, masking="u2ad", device="cpu", seed=0,
                    show_progress=False, callback=stop_at_3)
    run = next((tmp_path / "part").iterdir())
    assert not (run / "done.json").exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = train.adapt(p, d, tmp_path / "part", init=pre.run_path, masking="u2ad", device="cpu", seed=0,
                          show_progress=False)
    assert not resumed.reused and (resumed.run_path / "done.json").exists()
    assert_same_weights(weights(full.model), weights(resumed.model))
    cols = ("epoch", "stage", "lr", "loss", "mse", "eu_mean")
    strip = lambda h: [tuple(r.get(c) for c in cols) for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)

    # history: refreshes at 0 and 2 plus a final row, stages eu, eu, au, au
    h = full.history
    assert [r["stage"] for r in h] == ["eu", "eu", "au", "au", "final"]
    assert [r["epoch"] for r in h if r.get("mse") is not None] == [0, 2, 4]
    assert all(r["ssim"] is not None and r["eu_mean"] >= 0 for r in h if r.get("mse") is not None)
    df = train.read_history(full.run_path)
    assert list(df["epoch"]) == [0, 1, 2, 3, 4]
    maps = train.load_tracked_maps(full.run_path)
    assert [m["epoch"] for m in maps] == [0, 2, 4]
    assert maps[0]["eu"].shape == (2, *SIZE) and 1 in maps[0]["index"]
    # the final maps are cached for later scoring: mc_maps finds them without recomputing
    cached = train.mc_maps(full.run_path, d, p, device="cpu", seed=0)
    assert cached.cached and cached.eu.shape == (6, *SIZE)


def test_adapt_keeps_weight_snapshots_outside_the_run_hash(tmp_path):
    p = tiny_preset(**{"adapt.snapshot_every": 2, "adapt.n_tracked": 0})
    d = tiny_data()
    pre = train.pretrain(p.override(**{"pretrain.epochs": 1}), d, tmp_path, device="cpu", seed=0,
                         show_progress=False)
    full = train.adapt(p, d, tmp_path, init=pre.run_path, masking="u2ad", device="cpu", seed=0, show_progress=False)
    snaps = train.snapshot_paths(full.run_path)
    assert list(snaps) == [2]  # epoch 4 is model.pt
    model2, info = train.load_checkpoint(snaps[2])
    assert info["epoch"] == 2 and info["run_hash"] == full.info["run_hash"]
    # the copy at epoch 2 is what a 2-epoch adaptation ends with (same seed, same first epochs)
    short = train.adapt(p.override(**{"adapt.epochs": 2}), d, tmp_path / "short", init=pre.run_path,
                        masking="u2ad", device="cpu", seed=0, show_progress=False)
    assert_same_weights(weights(model2), weights(short.model))
    # keeping copies does not change the run: without them the same run is reused
    again = train.adapt(p.override(**{"adapt.snapshot_every": 0}), d, tmp_path, init=pre.run_path,
                        masking="u2ad", device="cpu", seed=0, show_progress=False)
    assert again.reused and again.run_path == full.run_path
    assert train.snapshot_paths(tmp_path / "no-such-run") == {}
    # the residual curve reads the start, the snapshot and the final weights: 3 points, no training
    from u2ad_core.method.competence import residual_curve

    d.subject, d.patient_label = np.arange(len(d.images)).astype(str), np.zeros(len(d.images), int)
    curve = residual_curve(full.run_path, d, p, init_path=pre.run_path, device="cpu")
    assert curve["epoch"].tolist() == [0, 2, 4] and curve["steps"].tolist() == [0, 4, 8]   # 6 slices, batch 4
    assert {"model", "running mean", "local mean", "cord_mean", "verdict"} <= set(curve.columns)
    assert np.isfinite(curve["model"]).all() and "noise floor" not in curve.columns
    assert residual_curve(full.run_path, d, p, device="cpu")["epoch"].tolist() == [2, 4]


def test_adapt_variants_and_scratch(tmp_path):
    p = tiny_preset(**{"adapt.epochs": 2, "adapt.n_tracked": 0})
    d = tiny_data()
    # a cord whose patches hold 16, 32 or 48 ROI pixels, so that coverage and the mean score matter
    d.cord = np.zeros_like(d.cord)
    d.cord[:, :, 6:12] = 1
    d.cord[:, 16:, 12:14] = 1
    runs = {m: train.adapt(p, d, tmp_path, init=None, masking=m, device="cpu", seed=0, show_progress=False)
            for m in train.MASKINGS}
    assert len({r.run_path for r in runs.values()}) == len(train.MASKINGS) == 5
    assert len({r.info["run_hash"] for r in runs.values()}) == 5  # each variant is its own cached run
    assert runs["random"].history[0]["stage"] == "random"
    assert [r["stage"] for r in runs["coverage"].history] == ["coverage", "coverage", "final"]
    assert [r["stage"] for r in runs["eu_mean"].history] == ["eu", "eu", "final"]
    assert runs["eu_mean"].info["spec"]["masking_cfg"]["eu_score"] == "mean"
    assert runs["eu"].info["spec"]["masking_cfg"]["eu_score"] == "sum"
    # "eu_mean" masked with the mean-over-ROI-pixels scores of the maps it refreshed
    ck = torch.load(runs["eu_mean"].run_path / "checkpoint.pt", weights_only=True)
    roi = torch.as_tensor(d.cord > 0)
    assert torch.allclose(ck["maps"]["eu_scores"], patch_scores(ck["maps"]["eu"], 8, roi=roi, reduce="mean"))
    ck_sum = torch.load(runs["eu"].run_path / "checkpoint.pt", weights_only=True)
    assert torch.allclose(ck_sum["maps"]["eu_scores"], patch_scores(ck_sum["maps"]["eu"], 8))
    # the controls trained: their weights left the initialisation and differ from EU-guided
    init = weights(build_seeded_model(p.model, 0))["patch_embed.weight"]
    for m in ("coverage", "eu_mean"):
        w = weights(runs[m].model)["patch_embed.weight"]
        assert not torch.equal(w, init) and not torch.equal(w, weights(runs["eu"].model)["patch_embed.weight"])
    # the finished runs are reused (same hash), not retrained
    again = train.adapt(p, d, tmp_path, init=None, masking="coverage", device="cpu", seed=0, show_progress=False)
    assert again.reused and again.run_path == runs["coverage"].run_path
    # same seed, same initialisation and data order: only the masks differ
    assert not torch.equal(weights(runs["random"].model)["patch_embed.weight"],
                           weights(runs["eu"].model)["patch_embed.weight"])
    with pytest.raises(ValueError, match="masking"):
        train.adapt(p, d, tmp_path, init=None, masking="bogus", device="cpu")
    with pytest.raises(FileNotFoundError, match="init checkpoint"):
        train.adapt(p, d, tmp_path, init=tmp_path / "missing", device="cpu")


def test_refresh_k_steers_with_fewer_passes_and_scores_with_mc_k(tmp_path, monkeypatch):
    p = tiny_preset(**{"adapt.n_tracked": 0, "adapt.refresh_k": 2, "mc.k": 3})
    d = tiny_data()
    ks = []
    real = mcmaps._run_mc
    monkeypatch.setattr(mcmaps, "_run_mc", lambda model, images, roi, mc, *a, **kw: (ks.append(mc.k),
                                                                                 real(model, images, roi, mc, *a, **kw))[1])
    train.adapt(p, d, tmp_path, init=None, masking="u2ad", device="cpu", seed=0, show_progress=False)
    assert ks == [2, 2, 3]  # epochs 0 and 2 steer with refresh_k; the final (scoring) maps use mc.k
    pre = train.pretrain(p, d, tmp_path, device="cpu", seed=0, show_progress=False)
    ks.clear()
    train.adapt(p, d, tmp_path, init=pre.run_path, masking="u2ad", device="cpu", seed=0, show_progress=False)
    assert ks == [3, 2, 3]  # an S3 run's epoch-0 maps are the pretrained model's (cached with mc.k)
    assert p.override(**{"adapt.refresh_k": None}).adapt.refresh_k is None


def test_train_strategies_in_two_processes_matches_training_here(tmp_path, one_torch_thread):
    p = tiny_preset(**{"adapt.epochs": 2, "adapt.n_tracked": 0})
    paths = {"spine_generic_like": tiny_data(6, 1), "renji_like": tiny_data(6, 0)}
    jobs = [("renji_like", "S3", "random"), ("renji_like", "S2", "u2ad"), ("renji_like", "S3", "eu")]
    kw = dict(data_dir=tmp_path, device="cpu", seed=0, show_progress=False, paths=paths)
    got = train.train_strategies(p, jobs, workers=2, threads=1, run_dir=tmp_path / "a", **kw)
    assert list(got) == jobs and all((got[j] / "done.json").is_file() for j in jobs)
    # strategy_model finds the same runs (reused, not retrained)
    for j in jobs:
        _, rp = train.strategy_model(p, *j, run_dir=tmp_path / "a", **kw)
        assert rp == got[j]
    # the same models trained one after the other in this process, on one thread as the workers
    for j in jobs[:2]:  # the two that trained in the worker processes
        m, rp = train.strategy_model(p, *j, run_dir=tmp_path / "b", **kw)
        assert rp.name == got[j].name
        assert_same_weights(weights(m), weights(train.load_checkpoint(got[j], "cpu")[0]))
    # nothing left to train: no process is started, the paths come back
    assert train.train_strategies(p, jobs, workers=2, run_dir=tmp_path / "a", **kw) == got
    with pytest.raises(ValueError, match="adaptations"):
        train.train_strategies(p, [("renji_like", "S1", "u2ad")], run_dir=tmp_path / "a", **kw)


def test_wrong_image_size_is_a_clear_error(tmp_path):
    p = tiny_preset()
    d = tiny_data()
    d.images = d.images[:, :16]
    d.cord = d.cord[:, :16]
    with pytest.raises(ValueError, match="model expects"):
        train.pretrain(p, d, tmp_path, device="cpu", show_progress=False)


def test_cli_pretrain_then_adapt(tmp_path, capsys):
    import json

    from u2ad_core.cli import main
    from u2ad_core.data.datasets import SliceData

    d = tiny_data(4)
    n = len(d.images)
    sd = SliceData(images=d.images, cord=d.cord, csf=np.zeros_like(d.cord), segments=np.zeros_like(d.cord),
                   lesion=d.lesion[:n], subject=np.array([f"s{i}" for i in range(n)]),
                   slice_index=np.arange(n), slice_offset=np.zeros(n, int),
                   patient_label=np.zeros(n, np.int8), lesion_segments=np.array([""] * n))
    f = sd.save(tmp_path / "tiny.npz")
    model = ["--set", f"model.image_size={json.dumps(list(SIZE))}", "--set", "model.embed_dim=16",
             "--set", "model.depth=1", "--set", "model.num_heads=2", "--set", "model.decoder_embed_dim=8",
             "--set", "model.decoder_depth=1", "--set", "model.decoder_num_heads=2", "--set", "data.image_size=[32, 24]"]
    common = ["--preset", "smoke", "--data", str(f), "--run-dir", str(tmp_path / "runs"), "--device", "cpu", "--quiet"]
    assert main(["pretrain", *common, *model, "--set", "pretrain.epochs=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reused"] is False and "pretrain-" in out["run_path"]
    assert main(["adapt", *common, *model, "--init", out["run_path"], "--masking", "eu",
                 "--set", "adapt.epochs=1", "--set", "mc.k=2"]) == 0
    out2 = json.loads(capsys.readouterr().out)
    assert "adapt-eu-" in out2["run_path"] and out2["mse"] is not None
    assert main(["pretrain", *common, *model, "--set", "pretrain.epochs=1"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True
