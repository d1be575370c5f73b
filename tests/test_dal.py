"""DAL lite (u2ad_core.baselines.dal): the one-hot operator, edges and statistics do what the
docstring says; one training step moves every part; maps stay in the cord; the run store
reuses a done run (the exact resume of an interrupted one: tests/test_runstore.py)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core.baselines import BASELINES, NEW_METHODS, UAD_METHODS, anomaly_maps, fit_run, load_run
from u2ad_core.baselines.common import StepInfo
from u2ad_core.baselines.dal import (DAL, anatomy_edges, class_labels, class_statistics, dal_losses, step_part,
                                     straight_through_onehot)
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import make_generator

H, W = 32, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_preset():
    p = get_preset("smoke")
    b = p.baselines
    return replace(p, baselines=replace(b, pretrain_epochs=1, batch_size=4, width=4, levels=4,
                                        checkpoint_every=1))


def tiny_data(n: int = 6, seed: int = 0):
    """A bright vertical 'cord' band (columns 12-19) on a textured background."""
    rng = np.random.default_rng(seed)
    cord = np.zeros((n, H, W), np.uint8)
    cord[:, 4:28, 12:20] = 1
    images = np.clip(rng.uniform(0.1, 0.3, cord.shape) + 0.4 * cord, 0, 1).astype(np.float32)
    return SimpleNamespace(images=images, cord=cord)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_hot_operator_is_exact_forward_and_soft_backward():
    logits = torch.randn(2, 4, 5, 6, generator=make_generator(0), requires_grad=True)
    a, p = straight_through_onehot(logits, 0.5)
    assert torch.equal(a.sum(1), torch.ones(2, 5, 6)) and set(a.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.detach().argmax(1), logits.detach().argmax(1))
    w = torch.randn(a.shape, generator=make_generator(1))
    (g_a,) = torch.autograd.grad((a * w).sum(), logits)
    (g_p,) = torch.autograd.grad((torch.softmax(logits / 0.5, 1) * w).sum(), logits)
    assert torch.allclose(g_a, g_p), "the gradient is the softmax's"


def test_edges_mark_both_sides_of_a_class_boundary_only():
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, :, 4:] = 1
    onehot = torch.nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).float()
    assert torch.equal(class_labels(onehot), lab)
    e = anatomy_edges(lab)
    assert e.shape == (1, 1, 8, 8)
    assert torch.all(e[0, 0, :, 3:5] == 1) and e[0, 0, :, :3].sum() == 0 and e[0, 0, :, 5:].sum() == 0


def test_class_statistics_values_and_empty_class_default():
    x = torch.zeros(1, 1, 4, 4)
    x[..., :, 2:] = 1.0
    lab = torch.zeros(1, 4, 4, dtype=torch.long)
    lab[:, :, 2:] = 1  # class 0: the 8 zeros, class 1: the 8 ones, class 2: empty
    a = torch.nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).float()
    mu, sigma = torch.tensor([0.5, 0.5, 0.3]), torch.tensor([0.2, 0.2, 0.1])
    z = class_statistics(x, a, mu, sigma, count=0.0)
    assert torch.allclose(z[0, :2], torch.tensor([0.0, 1.0])) and torch.allclose(z[0, 3:5], torch.zeros(2), atol=1e-3)
    z = class_statistics(x, a, mu, sigma, count=8.0)
    assert torch.allclose(z[0, :3], torch.tensor([0.25, 0.75, 0.3]))  # shrunk halfway; empty -> default
    assert torch.isclose(z[0, 5], torch.tensor(0.1))


def moved(model, before, part):
    return any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(part))


@pytest.mark.parametrize("alternate", [False, True])
def test_training_steps_are_finite_and_move_every_part(alternate):
    preset = tiny_preset()
    cfg = replace(preset.baselines, dal=replace(preset.baselines.dal, alternate=alternate))
    m = BASELINES["dal"]
    assert "dal" in NEW_METHODS and "dal" not in UAD_METHODS and m.sub_config(cfg) is cfg.dal
    torch.manual_seed(0)
    model = m.build(cfg, (H, W))
    data = tiny_data(4)
    x = torch.from_numpy(data.images).unsqueeze(1)
    roi = torch.from_numpy(data.cord.astype(np.float32)).unsqueeze(1)
    with torch.no_grad():
        out = model(x)
    k = cfg.dal.n_classes
    assert out.anatomy.shape == out.restored.shape == (4, k, H, W) and out.z.shape == (4, 2 * k)
    assert out.edges.shape == out.recon.shape == out.phi.shape == (4, 1, H, W)
    opts = m.optimizers(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = 2 if alternate else 1  # alternating: step 0 trains the disentanglement, step 1 the restoration
    for step in range(steps):
        losses = m.train_step(model, opts, x, roi, make_generator(0), cfg, StepInfo(0, 1, step))
        assert all(np.isfinite(v) for v in losses.values())
        part = step_part(cfg.dal, step)
        assert set(losses) == {"both": {"loss", "recon", "prior", "phi", "restore"},
                               "disentangle": {"loss", "recon", "prior"},
                               "restore": {"loss", "phi", "restore"}}[part]
        if part == "disentangle":
            assert moved(model, before, "anatomy_net") and not moved(model, before, "restore_net")
    for part in ("anatomy_net", "restore_net", "decoder", "mu"):  # log_sigma: once the FiLM map is non-zero
        assert moved(model, before, part), part
    phi = model.phi(x)
    assert phi.shape == (4, 1, H, W) and phi.min() >= 0 and phi.max() <= 1


def test_restoration_terms_do_not_reach_the_anatomy_network():
    preset = tiny_preset()
    torch.manual_seed(0)
    model = BASELINES["dal"].build(preset.baselines, (H, W))
    data = tiny_data(2)
    x = torch.from_numpy(data.images).unsqueeze(1)
    roi = torch.from_numpy(data.cord.astype(np.float32)).unsqueeze(1)
    dal_losses(model, x, roi, "restore")["loss"].backward()
    assert all(p.grad is None for p in model.anatomy_net.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.restore_net.parameters())
    with pytest.raises(ValueError, match="part"):
        dal_losses(model, x, roi, "all")


def test_maps_stay_in_the_roi_and_are_deterministic(tmp_path):
    preset, data = tiny_preset(), tiny_data()
    run = fit_run("dal", preset, data, "cpu", 0, tmp_path, show_progress=False)
    recon, maps = anomaly_maps("dal", run.model, data, "cpu")
    assert maps.shape == data.images.shape and maps.dtype == np.float32 and np.isfinite(maps).all()
    out = data.cord == 0
    assert np.all(maps[out] == 0) and np.array_equal(recon[out], data.images[out])
    assert np.allclose(maps[~out], np.abs(data.images - recon)[~out])
    _, again = anomaly_maps("dal", load_run(run.run_path), data, "cpu", seed=5)
    assert np.array_equal(maps, again), "no randomness at inference"


def test_run_store_reuses_a_done_run_and_hashes_the_settings(tmp_path):
    """Resuming an interrupted DAL run exactly: tests/test_runstore.py (parametrised by method)."""
    p, data = tiny_preset(), tiny_data()
    first = fit_run("dal", p, data, "cpu", 0, tmp_path, show_progress=False)
    again = fit_run("dal", p, data, "cpu", 0, tmp_path, show_progress=False)
    assert again.reused and again.run_path == first.run_path
    assert same(first.model.state_dict(), again.model.state_dict())
    other = fit_run("dal", replace(p, baselines=replace(p.baselines, dal=replace(p.baselines.dal, n_classes=3))),
                    data, "cpu", 0, tmp_path, show_progress=False)
    assert not other.reused and other.run_path != first.run_path, "the DAL settings are part of the run's hash"


def test_bad_settings_are_explained():
    cfg = get_preset("smoke").baselines
    with pytest.raises(ValueError, match="n_classes"):
        DAL((H, W), replace(cfg.dal, n_classes=1), 4, 4)
    with pytest.raises(ValueError, match="temperature"):
        DAL((H, W), replace(cfg.dal, temperature=0.0), 4, 4)
