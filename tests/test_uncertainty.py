"""Monte-Carlo engine: exact-K coverage, conventions, and agreement with Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

from u2ad_core.experiments.bench import synthetic_images
from u2ad_core.core.config import ModelConfig
from u2ad_core.method.masking import n_masked
from u2ad_core.method.model import EdgeMAE
from u2ad_core.method.uncertainty import (
    MCResult,
    mc_plan,
    mc_uncertainty,
    mc_uncertainty_reference,
    reconstruct_once,
)

SIZE = (48, 32)  # grid 6 x 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on 1 thread


def tiny_model(seed: int = 0) -> EdgeMAE:
    torch.manual_seed(seed)
    return EdgeMAE(ModelConfig(image_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))


@pytest.fixture(scope="module")
def data():
    x, roi = synthetic_images(10, SIZE, seed=1, band=9)
    roi[2] = 0  # an image without ROI
    return x, roi


@pytest.fixture(scope="module")
def trained():
    """A tiny EdgeMAE trained for 60 steps on synthetic images (a few seconds)."""
    model = tiny_model()
    x, roi = synthetic_images(32, SIZE, seed=2, band=9)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        idx = torch.arange(step * 8, step * 8 + 8) % 32
        loss, _, _ = model(x[idx], roi[idx], mask_ratio=0.75, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("seed", range(6))
def test_plan_covers_every_roi_patch_exactly_k_times(seed):
    g = torch.Generator().manual_seed(seed)
    roi = torch.rand(5, 37, generator=g) < torch.rand(5, 1, generator=g)
    roi[0] = False
    k = int(torch.randint(2, 12, (1,), generator=g))
    r = float(torch.rand(1, generator=g)) * 0.9 + 0.05
    plan = mc_plan(roi, k, r, g)
    n = roi.sum(1)
    m = torch.where(n > 0, n_masked(n, r).clamp(min=1), torch.zeros_like(n))
    # the fewest passes: ceil(k * n / m)
    want = torch.where(n > 0, torch.div(k * n + m.clamp(min=1) - 1, m.clamp(min=1), rounding_mode="floor"), 0)
    assert torch.equal(plan.passes, want) and plan.image.numel() == int(want.sum())
    # every pass masks exactly m distinct ROI patches of its image
    assert not (plan.masks & ~roi[plan.image]).any()
    assert torch.equal(plan.masks.sum(1), m[plan.image])
    # counted slots: each (image, ROI patch, sample j) exactly once; surplus slots are masked
    assert not ((plan.sample >= 0) & ~plan.masks).any()
    for j in range(k):
        hits = torch.zeros(5, 37, dtype=torch.long).index_add_(0, plan.image, (plan.sample == j).long())
        assert torch.equal(hits, roi.long())


def test_mc_conventions_and_samples(trained, data):
    x, roi = data
    k = 5
    res = mc_uncertainty(trained, x, roi, k=k, generator=torch.Generator().manual_seed(0), keep_samples=True,
                         batch_size=7)
    assert isinstance(res, MCResult)
    n, H, W = x.shape[0], *SIZE
    for t in (res.mean, res.eu, res.au):
        assert t.shape == (n, H, W) and t.dtype == torch.float32 and t.device.type == "cpu"
    rp = trained.roi_patches(roi)
    assert torch.equal(res.counts, rp.long() * k)
    outside = roi == 0
    assert torch.equal(res.mean[outside], x[:, 0][outside])
    assert (res.eu[outside] == 0).all() and (res.au[outside] == 0).all()
    assert res.n_passes == int(mc_plan(rp, k, 0.75, torch.Generator()).passes.sum())
    assert res.samples.shape == (k, n, H, W)
    assert torch.allclose(res.samples.mean(0), res.mean, atol=1e-5)
    assert torch.allclose(res.samples.var(0, correction=1), res.eu, atol=1e-6)
    assert torch.allclose(res.au, (x[:, 0] - res.mean).abs())
    assert (res.eu[roi > 0] > 0).any()


def test_mc_determinism_batch_size_ddof_and_inputs(trained, data):
    x, roi = data
    a = mc_uncertainty(trained, x, roi, k=4, generator=torch.Generator().manual_seed(3), batch_size=64)
    b = mc_uncertainty(trained, x[:, 0].numpy(), roi.numpy(), k=4, generator=torch.Generator().manual_seed(3),
                       batch_size=1, ddof=0)
    assert torch.allclose(a.mean, b.mean, atol=1e-5)  # batch composition does not matter
    assert torch.allclose(a.eu * 3 / 4, b.eu, atol=1e-6)  # ddof 0 = (K-1)/K x ddof 1
    c = mc_uncertainty(trained, x, roi, k=4, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a.mean, c.mean)
    assert trained.training is False
    with pytest.raises(ValueError, match="degrees of freedom"):
        mc_uncertainty(trained, x, roi, k=1, ddof=1)


def test_fast_engine_matches_reference_algorithm(trained, data):
    """Same estimator: mean and EU agree up to Monte-Carlo error.

    Per pixel, each engine's mean of K reconstructions has variance sigma^2 / K, so the
    difference of the two has standard deviation sqrt((eu_fast + eu_ref) / K) (EU estimates
    sigma^2). We require |z| < 5 for 99 % of ROI pixels and RMS(z) < 2. For EU, the mean of
    s^2 over the ~n_p independent ROI patches has a relative standard error of about
    sqrt(2 / ((K - 1) n_p)) (Gaussian reconstructions); the two engines' means must agree
    within 5 such (combined) standard errors.
    """
    x, roi = data
    k = 10
    fast = mc_uncertainty(trained, x, roi, k=k, generator=torch.Generator().manual_seed(0))
    ref = mc_uncertainty_reference(trained, x, roi, k=k, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fast.counts, ref.counts)
    assert ref.n_passes > fast.n_passes  # Algorithm 1 needs more passes
    inside = roi > 0
    z = (fast.mean - ref.mean)[inside] / torch.sqrt((fast.eu + ref.eu)[inside] / k).clamp(min=1e-6)
    assert (z.abs() < 5).float().mean() > 0.99
    assert z.pow(2).mean().sqrt() < 2.0
    n_p = int(trained.roi_patches(roi).sum())
    tol = 5 * math.sqrt(2) * math.sqrt(2 / ((k - 1) * n_p))
    ratio = fast.eu[inside].mean() / ref.eu[inside].mean()
    assert abs(float(ratio) - 1) < tol, (float(ratio), tol)
    # both are far from the outside-ROI convention violations
    assert (ref.eu[~inside] == 0).all() and torch.equal(ref.mean[~inside], x[:, 0][~inside])


def test_reconstruct_once(trained, data):
    x, roi = data
    pred, mask = reconstruct_once(trained, x, roi, generator=torch.Generator().manual_seed(0), batch_size=4)
    assert pred.shape == (10, *SIZE) and mask.shape == (10, trained.num_patches)
    assert torch.equal(mask.sum(1), n_masked(trained.roi_patches(roi).sum(1), 0.75))
    assert torch.equal(pred[roi == 0], x[:, 0][roi == 0])


def test_bench_cli_is_registered_and_images_are_deterministic():
    from u2ad_core.cli import build_parser

    args = build_parser().parse_args(["bench", "mc", "--preset", "smoke", "--k", "3", "--json", "--n-images", "2"])
    assert callable(args.func) and args.k == 3 and args.json and args.n_images == 2
    args = build_parser().parse_args(["bench", "mc", "--preset", "paper", "--set", "model.context_radius=3"])
    assert args.set == ["model.context_radius=3"]
    a, ra = synthetic_images(3, SIZE, seed=4)
    b, rb = synthetic_images(3, SIZE, seed=4)
    assert torch.equal(a, b) and torch.equal(ra, rb) and a.min() >= 0 and a.max() <= 1
    assert (ra.sum(2) == 9).all()  # a 9-px band in every row


def test_counts_come_from_the_executed_passes(trained, data, monkeypatch):
    """``counts`` is counted from the plan that ran: dropping a pass shows up in it."""
    import u2ad_core.method.uncertainty as U

    x, roi = data
    real_plan = U.mc_plan

    def short_plan(*args, **kwargs):
        p = real_plan(*args, **kwargs)
        keep = torch.ones(len(p.image), dtype=torch.bool)
        keep[0] = False  # drop the first pass
        return U.MCPlan(image=p.image[keep], masks=p.masks[keep], sample=p.sample[keep], passes=p.passes)

    full = mc_uncertainty(trained, x, roi, k=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(full.counts, trained.roi_patches(roi).long() * 3)
    monkeypatch.setattr(U, "mc_plan", short_plan)
    short = mc_uncertainty(trained, x, roi, k=3, generator=torch.Generator().manual_seed(0))
    assert int((full.counts - short.counts).sum()) > 0


def test_reduced_precision_keeps_eu_within_one_percent(trained, data):
    """Under fp16 autocast (what ``"auto"`` uses on CUDA; run on the CPU here, same code) the
    heads and the statistics stay float32 and the mean EU over the ROI is within 1 % of the
    float32 run. bf16 is measurably worse (its rounding adds variance between passes): the
    reason ``"auto"`` does not use it."""
    x, roi = data
    a = mc_uncertainty(trained, x, roi, k=10, generator=torch.Generator().manual_seed(0), autocast="off")
    inside = roi > 0
    rel = {}
    for mode in ("fp16", "bf16"):
        b = mc_uncertainty(trained, x, roi, k=10, generator=torch.Generator().manual_seed(0), autocast=mode)
        rel[mode] = float((b.eu[inside].mean() - a.eu[inside].mean()).abs() / a.eu[inside].mean())
        assert b.eu.dtype == torch.float32 and (b.eu[~inside] == 0).all()
    assert rel["fp16"] < 0.01, rel
    assert rel["bf16"] > 2 * rel["fp16"], rel
    with pytest.raises(ValueError, match="autocast"):
        mc_uncertainty(trained, x, roi, k=2, autocast="half")


def test_mc_with_context_window_only_uses_the_window():
    torch.manual_seed(0)
    m = EdgeMAE(ModelConfig(image_size=(48, 64), patch_size=8, embed_dim=32, depth=1, num_heads=4,
                            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, context_radius=1))
    x, roi = synthetic_images(4, (48, 64), seed=3, band=9)
    res = mc_uncertainty(m, x, roi, k=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.counts, m.roi_patches(roi).long() * 3)
    assert (res.eu[roi == 0] == 0).all() and (res.eu[roi > 0] > 0).any()


def test_bench_op_split_and_overrides():
    from u2ad_core.experiments.bench import op_split

    m = tiny_model()
    x, roi = synthetic_images(2, SIZE, seed=1)
    ops = op_split(lambda: mc_uncertainty(m, x, roi, k=2, generator=torch.Generator().manual_seed(0)))
    assert set(ops) == {"attention", "linear", "other"} and all(v >= 0 for v in ops.values())
    assert ops["attention"] > 0 and ops["linear"] > 0
