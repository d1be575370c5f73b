"""The one training loop (core.engine.fit) and the parallel helper (core.parallel.run_jobs).

Unit tests of :func:`fit` with a toy regression; then, for every method that trains through it
(U2AD pretraining and adaptation, each UAD baseline, a detector), determinism (two runs, equal
weights) and exact resume (interrupted before epoch 1, resumed: the weights of an
uninterrupted run), at tiny sizes.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core import baselines as bl
from u2ad_core import detectors as dt
from u2ad_core.core import engine
from u2ad_core.core.config import AdaptConfig, DetectorConfig, ModelConfig, TrainConfig
from u2ad_core.core.engine import FitResult, Hooks, StepInfo, batches, fit
from u2ad_core.core.parallel import default_workers, run_jobs
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runstore import load_state, open_run
from u2ad_core.core.runtime import make_generator
from u2ad_core.method import train
from u2ad_core.method.mcmaps import RefreshPlan, refresh_maps
from u2ad_core.method.runs import build_seeded_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupt(RuntimeError):
    pass


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ fit with a toy model
X = torch.linspace(-1, 1, 10)[:, None]
Y = 3 * X + 1


def toy(tmp_path, name="toy", *, epochs=3, hooks=None, lr_at=None, keep_checkpoint=False, step_fn=None,
        resume=True, order=None, load=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = make_generator(0)
    seen = []

    def step(idx, info: StepInfo):
        seen.append((info.epoch, info.step, tuple(idx.tolist()) if isinstance(idx, torch.Tensor) else len(idx)))
        if step_fn is not None:
            step_fn(idx, info)
        noise = torch.randn(len(idx), 1, generator=g) * 0.01  # a draw from the run's generator
        loss = ((model(X[idx]) - Y[idx] - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss, "half": float(loss.detach()) / 2}

    run = open_run(tmp_path, name, {"toy": 1})
    res = fit(run, model, opt, step, epochs=epochs, n=10, batch_size=4, generator=g, hooks=hooks, lr_at=lr_at,
              keep_checkpoint=keep_checkpoint, resume=resume, order=order,
              load=load or (lambda p: (load_state(p / "model.pt")["model"], {"loaded": True})), show_progress=False)
    return res, model, seen


def test_fit_rows_metrics_checkpoints_and_reuse(tmp_path):
    res, model, seen = toy(tmp_path)
    assert isinstance(res, FitResult) and not res.reused and not model.training
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    assert list(res.history[0]) == ["epoch", "loss", "half", "seconds"]
    # batch-size-weighted means: batches of 4, 4, 2
    assert res.history[0]["half"] == pytest.approx(res.history[0]["loss"] / 2)
    assert [s[1] for s in seen] == list(range(9)) and [s[0] for s in seen] == [0] * 3 + [1] * 3 + [2] * 3
    # each epoch a fresh random order of all items, drawn from the run's generator
    assert sorted(sum((list(s[2]) for s in seen[:3]), [])) == list(range(10))
    assert [tuple(s[2]) for s in seen[:3]] != [tuple(s[2]) for s in seen[3:6]]
    with open(res.run_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "loss", "half", "seconds"] and len(rows) == 3
    assert not (res.run_path / "checkpoint.pt").exists()  # dropped by finish (keep_checkpoint=False)
    assert same_state(load_state(res.run_path / "model.pt")["model"], model.state_dict())
    again, _, seen2 = toy(tmp_path)
    assert again.reused and again.info == {"loaded": True} and seen2 == []
    assert [r["loss"] for r in again.history] == pytest.approx([r["loss"] for r in res.history])


def test_fit_hooks_lr_and_kept_checkpoint(tmp_path):
    calls = []
    extra = {"maps": torch.zeros(2)}
    hooks = Hooks(on_epoch_start=lambda e: calls.append(("start", e)) or {"stage": f"s{e}"},
                  on_epoch_end=lambda e, row: calls.append(("end", e, row["stage"])),
                  extra_state=lambda: dict(extra),
                  after_epochs=lambda history: {"epoch": len(history), "stage": "final"},
                  done_info=lambda wall, history: {"n_rows": len(history)})
    lrs = []
    res, model, _ = toy(tmp_path, epochs=2, hooks=hooks, lr_at=lambda e: 0.1 * 0.5 ** e, keep_checkpoint=True,
                        step_fn=lambda idx, info: lrs.append(info.epoch))
    assert calls == [("start", 0), ("end", 0, "s0"), ("start", 1), ("end", 1, "s1")]
    assert [r["lr"] for r in res.history[:2]] == [0.1, 0.05] and res.history[-1]["stage"] == "final"
    assert list(res.history[0])[:3] == ["epoch", "stage", "lr"]
    ck = load_state(res.run_path / "checkpoint.pt")
    assert ck["epoch"] == 2 and torch.equal(ck["maps"], extra["maps"]) and len(ck["history"]) == 3
    assert "optimizer" in ck and "generator" in ck
    assert json.loads((res.run_path / "done.json").read_text())["n_rows"] == 3


def test_fit_non_finite_loss_stops_the_run(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = open_run(tmp_path, "nan", {"toy": 2})
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1"):
        fit(run, model, opt, lambda idx, info: {"loss": float("nan") if info.epoch == 1 else 1.0}, epochs=3, n=4,
            batch_size=2, generator=make_generator(0), show_progress=False, label="toy")
    assert not run.done and load_state(run.checkpoint_path)["epoch"] == 1


def test_fit_resumes_exactly(tmp_path):
    full, m_full, _ = toy(tmp_path / "a")

    def stop(idx, info):
        if info.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        toy(tmp_path / "b", step_fn=stop)
    (path,) = (tmp_path / "b").iterdir()
    assert load_state(path / "checkpoint.pt")["epoch"] == 2
    resumed, m_res, seen = toy(tmp_path / "b")
    assert not resumed.reused and [s[0] for s in seen] == [2, 2, 2] and seen[0][1] == 6
    assert same_state(m_full.state_dict(), m_res.state_dict())
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    fresh, m_fresh, seen = toy(tmp_path / "c", resume=False)
    assert same_state(m_full.state_dict(), m_fresh.state_dict())


def test_fit_custom_order_and_batches(tmp_path):
    g = make_generator(3)
    b = batches(10, 4, g)
    assert [len(x) for x in b] == [4, 4, 2] and sorted(torch.cat(b).tolist()) == list(range(10))
    assert torch.equal(torch.cat(b), torch.randperm(10, generator=make_generator(3)))
    order = lambda g: [torch.arange(5), torch.arange(5, 10)]  # noqa: E731
    _, _, seen = toy(tmp_path, epochs=1, order=order)
    assert [s[2] for s in seen] == [tuple(range(5)), tuple(range(5, 10))]


# ------------------------------------------------------------------ the parallel helper
def test_run_jobs_here_in_order():
    assert run_jobs(pow, [(2, 3), (3, 2), (5, 1)], workers=1) == [8, 9, 5]
    assert default_workers(3, "cuda") == 1 and default_workers(1) == 1
    with pytest.raises(ValueError, match="workers"):
        default_workers(-1)


def test_run_jobs_in_processes_one_thread_each():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores")
    me = os.getpid()
    pids = run_jobs(os.getpid, [(), (), ()], workers=2, here=True)
    assert pids[0] != me and pids[1] != me and pids[2] == me  # two in the pool, the odd one here
    threads = run_jobs(torch.get_num_threads, [(), ()], workers=2, threads=1, here=False)
    assert threads == [1, 1]


# ------------------------------------------------------------------ every method through the engine
SIZE = (32, 24)


def tiny_data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.1, 0.3, size=(n, *SIZE)).astype(np.float32)
    cord = np.zeros((n, *SIZE), np.uint8)
    cord[:, :, 10:14] = 1
    images[cord > 0] += 0.4
    return SimpleNamespace(images=images, cord=cord)


def u2ad_preset():
    return get_preset("smoke").override(
        model=ModelConfig(image_size=SIZE, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                          decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2),
        pretrain=TrainConfig(epochs=2, lr=1e-3, lr_step=1, lr_gamma=0.5, batch_size=4, checkpoint_every=1),
        adapt=AdaptConfig(epochs=2, lr=1e-3, lr_step=1, lr_gamma=0.5, batch_size=4, checkpoint_every=1,
                          stage2_start=1, refresh_every=1, n_tracked=1),
        **{"mc.k": 2, "mc.batch_size": 8})


def baseline_preset():
    p = get_preset("smoke")
    return replace(p, baselines=replace(p.baselines, pretrain_epochs=2, adapt_epochs=2, batch_size=4, width=4,
                                        levels=4, checkpoint_every=1, beyond_epochs=None))


DETECTOR = DetectorConfig(epochs=2, batch_size=4, lr=1e-3, width=4, head_dim=32, anchor_heights=(8, 16),
                          anchor_widths=(6,), rpn_batch=32, roi_batch=16, rpn_pre_nms=100, rpn_post_nms=20,
                          max_detections=10, checkpoint_every=1)


def detector_data(n=4):
    h, w = 64, 32
    images = np.full((n, h, w), 0.2, np.float32)
    cord = np.zeros((n, h, w), np.uint8)
    cord[:, 4:60, 12:18] = 1
    images[cord > 0] = 0.5
    seg = np.zeros((n, h, w), np.uint8)
    for k in range(6):
        seg[:, 5 + 9 * k:14 + 9 * k, 8:22] = k + 1
    lesion = np.zeros((n, h, w), np.uint8)
    lesion[::2, 24:29, 13:17] = 1
    images[lesion > 0] = 0.95
    return SimpleNamespace(images=images, cord=cord, segments=seg, lesion=lesion)


def _train(method: str, root):
    """Train ``method`` tiny in ``root``; returns the trained model's state dict (CPU)."""
    kw = dict(device="cpu", seed=0, show_progress=False)
    if method == "u2ad-pretrain":
        return train.pretrain(u2ad_preset(), tiny_data(), root, **kw).model.state_dict()
    if method == "u2ad-adapt":
        return train.adapt(u2ad_preset(), tiny_data(6, 1), root, init=None, masking="u2ad", **kw).model.state_dict()
    if method.startswith("detector-"):
        p = get_preset("smoke").override(detectors=DETECTOR)
        return dt.fit_detector(method[9:], p, detector_data(), root, name="d", **kw).state_dict()
    p, data = baseline_preset(), tiny_data(4)
    data = SimpleNamespace(images=np.pad(data.images, ((0, 0), (0, 0), (4, 4)), constant_values=0.2),
                           cord=np.pad(data.cord, ((0, 0), (0, 0), (4, 4))))
    m = bl.get_method(method)
    extra = {"healthy": data} if m.paired else {}
    init = None
    if m.base is not None:  # on top of the base method's run, shared by every run of a test (reused once trained)
        init = bl.fit_run(m.base, p, data, "cpu", 0, root.parent.parent / "base", show_progress=False, **extra)
    return bl.fit_run(m, p, data, "cpu", 0, root, init=init, show_progress=False, **extra).model.state_dict()


METHODS = ["u2ad-pretrain", "u2ad-adapt", *[k for k, m in bl.BASELINES.items() if m.kind == "uad"],
           "detector-mask_rcnn"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_deterministic(method, tmp_path):
    a = _train(method, tmp_path / "a" / "runs")
    b = _train(method, tmp_path / "b" / "runs")
    assert same_state(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_resumes_exactly(method, tmp_path, monkeypatch):
    full = _train(method, tmp_path / "full" / "runs")
    real = engine.train_one_epoch

    def stops_at_epoch_1(step, order, epoch, *a, **kw):
        if epoch == 1:
            raise Interrupt
        return real(step, order, epoch, *a, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", stops_at_epoch_1)
    with pytest.raises(Interrupt):
        _train(method, tmp_path / "part" / "runs")
    (ck,) = (tmp_path / "part" / "runs").rglob("checkpoint.pt")
    assert load_state(ck)["epoch"] == 1 and not (ck.parent / "done.json").exists()
    monkeypatch.setattr(engine, "train_one_epoch", real)
    resumed = _train(method, tmp_path / "part" / "runs")
    assert same_state(full, resumed)
    assert (ck.parent / "done.json").is_file()


# ------------------------------------------------------------------ U2AD's map refresh
def test_refresh_maps_is_seeded_and_writes_tracked_maps(tmp_path):
    p = u2ad_preset()
    d = tiny_data()
    model = build_seeded_model(p.model, 0)
    images, roi = torch.as_tensor(d.images), torch.as_tensor(d.cord > 0)
    plan = RefreshPlan(images, roi, p, p.adapt, 0, "cpu", "h", tmp_path, None, [1], None)
    maps, metrics = refresh_maps(model, plan, 1, "eu")
    again, _ = refresh_maps(model, plan, 1, "eu")
    other, _ = refresh_maps(model, plan, 2, "eu")  # another epoch: another MC stream
    assert torch.equal(maps["eu"], again["eu"]) and not torch.equal(maps["eu"], other["eu"])
    assert maps["eu"].shape == images.shape and maps["eu_scores"].shape == (len(images), 4 * 3)
    assert {"mse", "psnr", "ssim", "eu_mean", "refresh_seconds"} <= set(metrics)
    with np.load(tmp_path / "maps" / "epoch_001.npz") as z:
        assert z["index"].tolist() == [1] and z["eu"].shape == (1, *SIZE)
    final, _ = refresh_maps(model, plan, 2, "final")
    assert len(list((tmp_path / "mc").glob("*.npz"))) == 1  # the final maps are cached for mc_maps
