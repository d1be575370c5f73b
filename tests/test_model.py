"""EdgeMAE: shapes, position embedding, loss rules, padding and batch independence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from u2ad_core.core.config import MODEL_AUTHORS, MODEL_PAPER, ModelConfig
from u2ad_core.method.masking import random_roi_mask
from u2ad_core.method.model import EdgeMAE, build_model, count_parameters, get_2d_sincos_pos_embed, sobel

H, W, P = 48, 32, 8  # grid 6 x 4 (non-square)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on 1 thread


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(image_size=(H, W), patch_size=P, embed_dim=32, depth=2, num_heads=4,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def model() -> EdgeMAE:
    torch.manual_seed(0)
    return EdgeMAE(tiny_cfg())


def batch(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, H, W, generator=g)
    roi = torch.zeros(b, H, W, dtype=torch.uint8)
    for i in range(b):
        c = 12 + i % 3
        roi[i, :, c:c + 9] = 1  # 2-3 patch columns
    roi[1] = 0  # image 1 has no ROI at all
    return x, roi


def test_attributes_and_patchify_roundtrip(model):
    assert model.patch_size == P and model.grid == (H // P, W // P) and model.num_patches == 24
    for c in (1, 3):
        x = torch.rand(2, c, H, W)
        p = model.patchify(x)
        assert p.shape == (2, 24, P * P * c)
        assert torch.equal(model.unpatchify(p, channels=c), x)
    # patch l = row l // w, column l % w of the grid; pixel order (row, col, channel)
    x = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W)
    p = model.patchify(x)
    assert p[0, 5, 0] == x[0, 0, 8, 8] and p[0, 5, 1] == x[0, 0, 8, 9] and p[0, 5, 8] == x[0, 0, 9, 8]


def test_pos_embed_non_square():
    e = get_2d_sincos_pos_embed(16, (6, 4), cls_token=True)
    assert e.shape == (25, 16) and np.all(e[0] == 0)
    # all positions distinct; first half depends on the column only, second on the row
    assert len({tuple(np.round(r, 6)) for r in e[1:]}) == 24
    grid = e[1:].reshape(6, 4, 16)
    assert np.allclose(grid[0, :, :8], grid[5, :, :8]) and np.allclose(grid[:, 0, 8:], grid[:, 3, 8:])
    with pytest.raises(ValueError, match="multiple of 4"):
        get_2d_sincos_pos_embed(6, (2, 2))


def test_roi_patches_any_pixel(model):
    roi = torch.zeros(1, 1, H, W)
    roi[0, 0, 9, 31] = 1  # one pixel in patch row 1, column 3
    rp = model.roi_patches(roi)
    assert rp.dtype == torch.bool and rp.shape == (1, 24)
    assert rp.sum() == 1 and rp[0, 1 * 4 + 3]
    assert torch.equal(model.roi_patches(roi[:, 0]), rp)


def test_sobel_range():
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert sobel(flat).abs().max() < 1e-5
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1.0
    e = sobel(step)
    assert e.shape == step.shape and float(e.max()) <= 1.0 and float(e.max()) > 0.5


def test_forward_shapes_counts_and_no_roi_image(model):
    x, roi = batch()
    g = torch.Generator().manual_seed(1)
    loss, pred, mask = model(x, roi, mask_ratio=0.75, generator=g)
    n_roi = model.roi_patches(roi).sum(1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (4, 1, H, W) and mask.shape == (4, 24) and mask.dtype == torch.bool
    assert torch.equal(mask.sum(1), torch.floor(n_roi * 0.75 + 0.5).long())
    assert not mask[1].any()
    assert torch.equal(pred[roi[:, None] == 0], x[roi[:, None] == 0])  # pasted outside the ROI
    per = model(x, roi, mask=mask, reduction="none")[0]
    assert per.shape == (4,) and per[1] == 0 and (per[[0, 2, 3]] > 0).all()
    assert torch.allclose(loss, per[[0, 2, 3]].mean())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    assert model.patch_embed.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_loss_is_mse_on_masked_roi_pixels(model):
    x, roi = batch(seed=3)
    mask = random_roi_mask(model.roi_patches(roi), 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        per, pred, _ = model(x, roi, mask=mask, reduction="none")
        rec, edge = model.reconstruct(x, roi, mask)
    assert torch.allclose(rec, pred)
    sel = (roi[:, None] > 0) & model._mask_pixels(mask)
    for i in (0, 2, 3):
        s = sel[i]
        want = ((rec[i] - x[i])[s] ** 2).mean() + 0.1 * ((edge[i] - sobel(x[i:i + 1])[0])[s] ** 2).mean()
        assert torch.allclose(per[i], want, atol=1e-6)


def test_loss_all_images_without_roi_is_zero_and_grad_safe(model):
    x, _ = batch()
    roi = torch.zeros(4, H, W)
    loss, pred, mask = model(x, roi)
    assert loss.item() == 0.0 and not mask.any()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


def test_padding_never_nan_even_with_no_visible_patch(model):
    x, _ = batch()
    roi = torch.ones(4, H, W)
    mask = torch.zeros(4, 24, dtype=torch.bool)
    mask[0] = True  # image 0: every patch masked, only the class token is visible
    mask[2, :10] = True
    loss, pred, _ = model(x, roi, mask=mask)
    assert torch.isfinite(loss) and torch.isfinite(pred).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_independence(model, mode):
    """Image i alone gives the same output as image i inside a padded batch (1e-5)."""
    x, roi = batch(seed=5)
    roi[1, :, 4:30] = 1  # many ROI patches -> fewer visible tokens than the others
    rp = model.roi_patches(roi)
    mask = random_roi_mask(rp, 0.75, torch.Generator().manual_seed(2))
    assert len(set((~mask).sum(1).tolist())) > 1  # visible counts differ: padding is used
    was = model.training
    model.train(mode == "train")
    ctx = torch.inference_mode() if mode == "eval" else torch.no_grad()
    with ctx:
        pb, eb = model.reconstruct(x, roi, mask, paste=False)
        lb = model(x, roi, mask=mask, reduction="none")[0]
        for i in range(4):
            pi, ei = model.reconstruct(x[i:i + 1], roi[i:i + 1], mask[i:i + 1], paste=False)
            li = model(x[i:i + 1], roi[i:i + 1], mask=mask[i:i + 1], reduction="none")[0]
            assert torch.allclose(pi, pb[i:i + 1], atol=1e-5)
            assert torch.allclose(ei, eb[i:i + 1], atol=1e-5)
            assert torch.allclose(li, lb[i:i + 1], atol=1e-5)
    model.train(was)


def test_cpu_inference_uses_sdpa_path_and_restores_fastpath(model):
    """CPU eval runs the regular (SDPA) attention path, gives the train-mode numbers without
    dropout, and leaves torch's global MHA fast-path flag as it found it."""
    x, roi = batch(seed=6)
    mask = random_roi_mask(model.roi_patches(roi), 0.75, torch.Generator().manual_seed(3))
    was = model.training
    model.eval()
    with torch.inference_mode():
        p_eval, _ = model.reconstruct(x, roi, mask, paste=False)
    assert torch.backends.mha.get_fastpath_enabled()
    model.train()
    with torch.no_grad():
        p_train, _ = model.reconstruct(x, roi, mask, paste=False)  # no dropout: same function
    model.train(was)
    assert torch.allclose(p_eval, p_train, atol=1e-5)


def test_generator_determinism_and_reconstruct_has_no_side_effects(model):
    x, roi = batch()
    out1 = model(x, roi, generator=torch.Generator().manual_seed(7))
    out2 = model(x, roi, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out1[2], out2[2]) and torch.equal(out1[0], out2[0])
    out3 = model(x, roi, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(out1[2], out3[2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    with torch.no_grad():
        a = model.reconstruct(x, roi, out1[2])
        b = model.reconstruct(x, roi, out1[2])
    assert torch.equal(a[0], b[0]) and model.training == training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    pred_only, none = model.reconstruct(x, roi, out1[2], with_edge=False)
    assert none is None and torch.allclose(pred_only, a[0])


def test_errors_name_the_problem(model):
    x, roi = batch()
    with pytest.raises(ValueError, match="imgs must be"):
        model(x[:, :, :40], roi)
    with pytest.raises(ValueError, match="mask must be"):
        model(x, roi, mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        EdgeMAE(tiny_cfg(image_size=(50, 32)))
    with pytest.raises(ValueError, match="divisible"):
        EdgeMAE(tiny_cfg(num_heads=3))


def test_sizes_of_named_configs():
    n = count_parameters(build_model(MODEL_AUTHORS))
    assert 2.7e6 < n < 2.9e6  # method.md: "about 2.8 M parameters"
    m = build_model(ModelConfig())
    assert len(m.blocks) == 24 and len(m.decoder_blocks) == 8 and m.grid == (32, 32)
    assert math.isclose(m.cfg.edge_weight, 0.1)


# ----------------------------------------------------------------------------- context window
def _wide_batch(b: int = 3, seed: int = 0, size=(48, 64)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, *size, generator=g)
    roi = torch.zeros(b, *size, dtype=torch.uint8)
    for i in range(b):
        c = 20 + 4 * i
        roi[i, 8 * i:, c:c + 9] = 1  # different ROI sizes: padded encoder and decoder
    return x, roi


def test_context_window_patches():
    m = EdgeMAE(tiny_cfg(image_size=(48, 64), context_radius=1))
    rp = torch.zeros(1, 6, 8, dtype=torch.bool)
    rp[0, 2, 3] = True
    keep = m.context_patches(rp.reshape(1, -1)).reshape(6, 8)
    assert keep.sum() == 9 and keep[1:4, 2:5].all()
    assert EdgeMAE(tiny_cfg()).context_patches(rp.reshape(1, -1)[:, :24]) is None
    with pytest.raises(ValueError, match="context_radius"):
        EdgeMAE(tiny_cfg(context_radius=-1)).context_patches(torch.ones(1, 24, dtype=torch.bool))


def test_context_window_covering_the_grid_equals_the_full_model():
    torch.manual_seed(0)
    full = EdgeMAE(tiny_cfg(image_size=(48, 64))).eval()
    win = EdgeMAE(tiny_cfg(image_size=(48, 64), context_radius=8)).eval()
    win.load_state_dict(full.state_dict())
    x, roi = _wide_batch()
    mask = random_roi_mask(full.roi_patches(roi), 0.75, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, ea = full.reconstruct(x, roi, mask)
        b, eb = win.reconstruct(x, roi, mask)
        la = full(x, roi, mask=mask, reduction="none")[0]
        lb = win(x, roi, mask=mask, reduction="none")[0]
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ea, eb, atol=1e-5)
    assert torch.allclose(la, lb, atol=1e-6)


def test_context_window_ignores_far_pixels_and_is_batch_independent():
    torch.manual_seed(0)
    win = EdgeMAE(tiny_cfg(image_size=(48, 64), context_radius=1)).eval()
    full = EdgeMAE(tiny_cfg(image_size=(48, 64))).eval()
    full.load_state_dict(win.state_dict())
    x, roi = _wide_batch()
    mask = random_roi_mask(win.roi_patches(roi), 0.75, torch.Generator().manual_seed(2))
    keep = win.context_patches(win.roi_patches(roi))
    assert len(set(keep.sum(1).tolist())) > 1  # windows of different sizes: padding is used
    far = ~win._mask_pixels(keep)  # pixels of patches outside the window
    y = torch.where(far, torch.rand_like(x), x)
    inside = roi[:, None] > 0
    with torch.inference_mode():
        a, _ = win.reconstruct(x, roi, mask)
        b, _ = win.reconstruct(y, roi, mask)
        fa, _ = full.reconstruct(x, roi, mask)
        fb, _ = full.reconstruct(y, roi, mask)
        for i in range(3):
            ai, _ = win.reconstruct(x[i:i + 1], roi[i:i + 1], mask[i:i + 1])
            assert torch.allclose(ai, a[i:i + 1], atol=1e-5)
    assert torch.allclose(a[inside], b[inside], atol=1e-6)  # far context does not matter
    assert not torch.allclose(fa[inside], fb[inside], atol=1e-4)  # ... while the full model sees it
    raw, _ = win.reconstruct(x, roi, mask, paste=False)
    assert (raw[far] == 0).all()


def test_context_window_trains():
    torch.manual_seed(0)
    win = EdgeMAE(tiny_cfg(image_size=(48, 64), context_radius=1))
    x, roi = _wide_batch()
    loss, _, _ = win(x, roi, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert win.patch_embed.weight.grad.abs().sum() > 0 and win.pixel_head.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_full_depth_paper_model_runs_forward_backward_and_mc():
    """The paper's model itself (24 / 8 blocks, 256 x 256): ``paper_ci`` shrinks its depth, so
    the full-depth model gets one training step and one MC call here."""
    from u2ad_core.experiments.bench import synthetic_images
    from u2ad_core.method.uncertainty import mc_uncertainty

    torch.manual_seed(0)
    model = build_model(MODEL_PAPER)
    assert len(model.blocks) == 24 and len(model.decoder_blocks) == 8 and model.num_patches == 1024
    x, roi = synthetic_images(2, (256, 256), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss, pred, mask = model(x, roi, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and pred.shape == (2, 1, 256, 256)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    res = mc_uncertainty(model, x[:1], roi[:1], k=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.counts, model.roi_patches(roi[:1]).long() * 2)
    assert (res.eu[0][roi[0] > 0] > 0).any()
