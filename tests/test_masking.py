"""Masking samplers: counts, ROI restriction, determinism, EU / AU guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2ad_core.config import MaskingConfig
from u2ad_core.masking import (
    AUGuidedMasking,
    EUGuidedMasking,
    RandomMasking,
    au_protected_patches,
    empirical_mask_frequency,
    eu_guided_mask,
    eu_mask_probabilities,
    make_sampler,
    n_masked,
    patch_scores,
)

L = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on 1 thread


def roi_rows() -> torch.Tensor:
    roi = torch.zeros(4, L, dtype=torch.bool)
    roi[0, 5:25] = True  # 20 ROI patches
    roi[2, :7] = True  # 7
    roi[3, ::3] = True  # 14
    return roi  # image 1: no ROI patch


def test_patch_scores_and_rounding():
    m = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(2, 1, 8, 12)
    s = patch_scores(m, 4)
    assert s.shape == (2, 6)
    assert s[1, 4] == m[1, 0, 4:8, 4:8].sum()
    assert torch.equal(patch_scores(m[:, 0].numpy(), 4), s)
    assert n_masked(torch.tensor([0, 1, 2, 3, 6, 7]), 0.75).tolist() == [0, 1, 2, 2, 5, 5]  # half up
    with pytest.raises(ValueError, match="multiple"):
        patch_scores(m, 5)


@pytest.mark.parametrize("kind", ["random", "eu", "au"])
def test_counts_roi_only_and_determinism(kind):
    roi = roi_rows()
    sampler = make_sampler(kind, MaskingConfig())
    kw = {}
    if kind == "eu":
        kw = dict(eu_scores=torch.rand(4, L, generator=torch.Generator().manual_seed(0)))
    if kind == "au":  # an all-zero AU map protects nothing
        kw = dict(au_map=torch.zeros(4, 8, 20), roi=None, patch=4)
        roi = torch.zeros(4, 2, 5, dtype=torch.bool)
        roi[0, :, 1:4] = True
        roi[2, 0] = True
        roi = roi.reshape(4, 10)
    masks = [sampler.sample(roi, torch.Generator().manual_seed(s), **kw) for s in (3, 3, 4)]
    for m in masks:
        assert m.dtype == torch.bool and m.shape == roi.shape
        assert not (m & ~roi).any()  # non-ROI patches always visible
        assert torch.equal(m.sum(1), n_masked(roi.sum(1), 0.75))  # exact per-image counts
        assert not m[1].any()  # the image without ROI masks nothing
    assert torch.equal(masks[0], masks[1])  # same generator state -> same mask
    assert not torch.equal(masks[0], masks[2])


def test_random_masking_is_uniform_over_roi():
    roi = roi_rows()
    f = empirical_mask_frequency(RandomMasking(), roi, 400, torch.Generator().manual_seed(0))
    # each ROI patch of image 0 is masked with probability 15/20; 400 draws -> sd ~0.022
    assert (f[0][roi[0]] - 0.75).abs().max() < 0.1
    assert f[~roi].sum() == 0


def test_eu_guided_masks_high_scores_more_often_and_tends_to_random():
    roi = roi_rows()
    scores = torch.linspace(0, 1, L).expand(4, L).clone()
    g = torch.Generator().manual_seed(0)
    f = empirical_mask_frequency(EUGuidedMasking(MaskingConfig(tau=0.5)), roi, 300, g, eu_scores=scores)
    idx = torch.nonzero(roi[0]).flatten()  # 20 ROI patches, scores increasing
    low, high = f[0, idx[:5]].mean(), f[0, idx[-5:]].mean()
    assert high > 0.95 and low < 0.35  # 300 draws: sd of a mean of 5 frequencies < 0.02
    # tau -> infinity: random masking (every ROI patch ~0.75)
    f_inf = empirical_mask_frequency(EUGuidedMasking(MaskingConfig(tau=1e6)), roi, 300, g, eu_scores=scores)
    assert (f_inf[0, idx] - 0.75).abs().max() < 0.1
    # the guidance weakens monotonically with tau
    gaps = []
    for tau in (0.25, 1.0, 4.0, 16.0):
        ft = empirical_mask_frequency(EUGuidedMasking(MaskingConfig(tau=tau)), roi, 200, g, eu_scores=scores)
        gaps.append(float(ft[0, idx[-5:]].mean() - ft[0, idx[:5]].mean()))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.15


def test_eu_softmax_is_scale_invariant_paper_formula_is_not_guided():
    roi = roi_rows()
    scores = torch.rand(4, L, generator=torch.Generator().manual_seed(1))
    a = eu_guided_mask(roi, scores, generator=torch.Generator().manual_seed(5))
    b = eu_guided_mask(roi, scores * 1e-4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)  # z-scores: the EU scale does not matter
    # the paper's literal formula on raw (tiny) EU: practically random masking
    tiny = torch.linspace(0, 1, L).expand(4, L) * 1e-4
    paper = EUGuidedMasking(MaskingConfig(eu_weighting="paper"))
    g = torch.Generator().manual_seed(0)
    f = empirical_mask_frequency(paper, roi, 400, g, eu_scores=tiny)
    idx = torch.nonzero(roi[0]).flatten()
    assert (f[0, idx] - 0.75).abs().max() < 0.1
    # ... and with large EU it favours LOW-EU patches (inverted w.r.t. the intent)
    f = empirical_mask_frequency(paper, roi, 400, g, eu_scores=torch.linspace(0, 20, L).expand(4, L))
    assert f[0, idx[:5]].mean() > f[0, idx[-5:]].mean() + 0.1


def test_eu_mask_probabilities():
    roi = roi_rows()
    scores = torch.linspace(0, 1, L).expand(4, L).clone()
    p = eu_mask_probabilities(scores, roi, tau=1.0)
    assert torch.allclose(p[[0, 2, 3]].sum(1), torch.ones(3)) and p[1].sum() == 0 and p[~roi].sum() == 0
    idx = torch.nonzero(roi[0]).flatten()
    assert (p[0, idx].diff() > 0).all()
    z = (scores[0, idx] - scores[0, idx].mean()) / scores[0, idx].std(correction=0)
    assert torch.allclose(p[0, idx], torch.softmax(z, 0), atol=1e-6)
    pp = eu_mask_probabilities(scores * 10, roi, weighting="paper", n_draws=512,
                               generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pp[[0, 2, 3]].sum(1), torch.ones(3)) and pp[~roi].sum() == 0


def au_case():
    """One 24 x 16 image, patch 4, ROI columns 4-11; low AU noise plus four blobs."""
    g = torch.Generator().manual_seed(0)
    roi = torch.zeros(1, 24, 16)
    roi[:, :, 4:12] = 1
    au = roi * (0.01 + 0.01 * torch.rand(1, 24, 16, generator=g))
    au[0, 1:3, 5:8] = 1.0  # blob A: 6 px, sum 6 -> patch (0, 1)
    au[0, 9, 9], au[0, 10, 10] = 1.5, 1.5  # blob B: diagonal pair (8-connected), sum 3 -> patches (2,2)
    au[0, 17:19, 5:7] = 1.0  # blob C: 4 px, sum 4 -> patch (4, 1)
    au[0, 21, 9:11] = 0.9  # blob D: 2 px, sum 1.8 -> patch (5, 2), 4th: not protected
    au[0, 13, 5] = 5.0  # single pixel: below min_size 2
    return au, roi


def test_au_components_and_protection():
    au, roi = au_case()
    prot, labels = au_protected_patches(au, roi, 4, percentile=90, min_size=2, score="sum", top_k=3)
    grid = prot.reshape(6, 4)
    want = torch.zeros(6, 4, dtype=torch.bool)
    want[0, 1] = want[2, 2] = want[4, 1] = True
    assert torch.equal(grid, want)
    assert labels[0, 1, 5] == 1 and labels[0, 17, 5] == 2 and labels[0, 9, 9] == 3 and labels[0, 10, 10] == 3
    assert labels[0, 21, 9] == 4 and labels[0, 13, 5] == 0
    # authors' score (mean x sum) ranks the diagonal pair (mean 1.5) above blob C
    _, lab2 = au_protected_patches(au, roi, 4, score="mean_sum")
    assert lab2[0, 9, 9] == 2 and lab2[0, 17, 5] == 3


def test_au_guided_never_masks_protected_patches():
    au, roi = au_case()
    au = au.expand(3, -1, -1).clone()
    roi = roi.expand(3, -1, -1).clone()
    roi_p = roi.reshape(3, 6, 4, 4, 4).amax(dim=(2, 4)).reshape(3, -1) > 0
    sampler = AUGuidedMasking(MaskingConfig())
    prot, _ = sampler.protected(au, roi, 4)
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 24, generator=g)
    for _ in range(50):
        m = sampler.sample(roi_p, g, eu_scores=scores, au_map=au, roi=roi, patch=4)
        assert not (m & prot).any() and not (m & ~roi_p).any()
        # 12 ROI patches, 3 protected: round(0.75 * 12) = 9 = all unprotected ones
        assert torch.equal(m.sum(1), torch.full((3,), 9))
    m = sampler.sample(roi_p, g, au_map=au, roi=roi, patch=4, mask_ratio=0.5)
    assert torch.equal(m.sum(1), torch.full((3,), 6)) and not (m & prot).any()
    # fewer unprotected patches than round(r * n): mask all remaining ones
    strict = AUGuidedMasking(MaskingConfig(au_top_k=5))
    prot5, _ = strict.protected(au, roi, 4)
    m = strict.sample(roi_p, g, au_map=au, roi=roi, patch=4, mask_ratio=0.9)
    assert torch.equal(m, roi_p & ~prot5)


def test_errors():
    roi = roi_rows()
    with pytest.raises(ValueError, match="eu_scores"):
        EUGuidedMasking().sample(roi, None)
    with pytest.raises(ValueError, match="au_map"):
        AUGuidedMasking().sample(roi, None)
    with pytest.raises(ValueError, match="kind"):
        make_sampler("bogus")
    with pytest.raises(ValueError, match="tau"):
        eu_guided_mask(roi, torch.zeros(4, L), tau=0)
    assert isinstance(make_sampler("au"), AUGuidedMasking)
    assert np.isclose(make_sampler("eu", MaskingConfig(tau=2.0)).cfg.tau, 2.0)
