"""Masking samplers: counts, ROI restriction, determinism, EU / AU guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2ad_core.core.config import MaskingConfig
from u2ad_core.method.masking import (
    AUGuidedMasking,
    CoverageMasking,
    EUGuidedMasking,
    RandomMasking,
    au_protected_patches,
    empirical_mask_frequency,
    eu_guided_mask,
    eu_mask_probabilities,
    make_sampler,
    n_masked,
    patch_scores,
    roi_coverage,
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


def coverage_case(b: int = 2):
    """Images of 4 x 64 px, patch 4: 16 patches in a row, patch j holds j ROI pixels
    (patch 0 none, patch 15 fifteen of its 16)."""
    roi = torch.zeros(b, 4, 64, dtype=torch.bool)
    for j in range(16):
        flat = torch.zeros(16, dtype=torch.bool)
        flat[:j] = True
        roi[:, :, 4 * j:4 * j + 4] = flat.reshape(4, 4)
    return roi, roi_coverage(roi, 4) > 0


def test_roi_coverage_and_mean_score_by_hand():
    roi = torch.zeros(1, 4, 8)
    roi[0, :, 0] = 1  # patch 0: 4 ROI pixels (one column)
    roi[0, 0, 4:8] = 1  # patch 1: 4 ROI pixels (one row) ...
    roi[0, 1, 4:6] = 1  # ... plus 2 = 6
    eu = torch.zeros(1, 4, 8)
    eu[0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 6.0])  # patch 0: sum 12 over 4 px
    eu[0, 0, 4:8] = 3.0  # patch 1: sum 12 + 6 = 18 over 6 px
    eu[0, 1, 4:6] = 3.0
    eu[0, 3, 3] = 100.0  # outside the ROI: ignored once roi is given
    assert roi_coverage(roi, 4).tolist() == [[4.0, 6.0]]
    assert patch_scores(eu, 4).tolist() == [[112.0, 18.0]]  # plain sum: every pixel
    assert patch_scores(eu, 4, roi=roi).tolist() == [[12.0, 18.0]]
    mean = patch_scores(eu, 4, roi=roi, reduce="mean")
    assert torch.allclose(mean, torch.tensor([[12.0 / 4, 18.0 / 6]]))  # sum / count: 3 and 3
    # the paper's sum prefers the patch with more cord; the mean sees equal EU per cord pixel
    assert patch_scores(eu, 4, roi=roi)[0, 1] > patch_scores(eu, 4, roi=roi)[0, 0] and mean[0, 0] == mean[0, 1]
    empty = patch_scores(eu, 4, roi=torch.zeros(1, 4, 8), reduce="mean")
    assert torch.equal(empty, torch.zeros(1, 2))  # no ROI pixel: 0, not NaN
    # EUGuidedMasking.scores follows MaskingConfig.eu_score
    assert torch.equal(EUGuidedMasking(MaskingConfig(eu_score="mean")).scores(eu, roi, 4), mean)
    assert torch.equal(EUGuidedMasking(MaskingConfig()).scores(eu * roi, roi, 4), patch_scores(eu, 4, roi=roi))


def test_coverage_sampler_ignores_eu_keeps_ratio_and_matches_eu_sampler():
    roi, rp = coverage_case()
    sampler = make_sampler("coverage", MaskingConfig())
    assert isinstance(sampler, CoverageMasking)
    eus = [None, torch.rand(2, 16, generator=torch.Generator().manual_seed(1)), -torch.arange(32.0).reshape(2, 16)]
    masks = [sampler.sample(rp, torch.Generator().manual_seed(7), eu_scores=e, roi=roi, patch=4) for e in eus]
    assert all(torch.equal(masks[0], m) for m in masks[1:])  # the EU map changes nothing
    for ratio in (0.75, 0.5):
        m = sampler.sample(rp, torch.Generator().manual_seed(3), roi=roi, patch=4, mask_ratio=ratio)
        assert torch.equal(m.sum(1), n_masked(rp.sum(1), ratio)) and not (m & ~rp).any()
    # the same draw as the EU-guided sampler would make on the coverage scores
    same = eu_guided_mask(rp, roi_coverage(roi, 4), 0.75, 1.0, "softmax", torch.Generator().manual_seed(7))
    assert torch.equal(masks[0], same)


def test_coverage_sampler_prefers_patches_with_more_cord():
    roi, rp = coverage_case()
    g = torch.Generator().manual_seed(0)
    f = empirical_mask_frequency(CoverageMasking(MaskingConfig(mask_ratio=0.5)), rp, 400, g, roi=roi, patch=4)
    cov = roi_coverage(roi, 4)[0]
    fr = f[0, 1:]  # the 15 ROI patches, coverage 1 ... 15
    # mean frequency over five coverage bands (3 patches each) rises band by band
    bands = fr.reshape(5, 3).mean(1)
    assert (bands.diff() > 0).all(), bands
    assert bands[-1] - bands[0] > 0.4  # 400 draws: sd of a band mean < 0.015
    assert np.corrcoef(cov[1:].numpy(), fr.numpy())[0, 1] > 0.9
    # random masking on the same patches: no preference (every ROI patch ~0.5)
    fr_rand = empirical_mask_frequency(RandomMasking(MaskingConfig(mask_ratio=0.5)), rp, 400, g)[0, 1:]
    assert (fr_rand.reshape(5, 3).mean(1) - 0.5).abs().max() < 0.08


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
    with pytest.raises(ValueError, match="roi"):
        CoverageMasking().sample(roi, None)
    with pytest.raises(ValueError, match="needs the ROI"):
        patch_scores(torch.zeros(1, 4, 4), 4, reduce="mean")
    with pytest.raises(ValueError, match="eu_score"):
        patch_scores(torch.zeros(1, 4, 4), 4, roi=torch.ones(1, 4, 4), reduce="max")
    assert isinstance(make_sampler("au"), AUGuidedMasking)
    assert np.isclose(make_sampler("eu", MaskingConfig(tau=2.0)).cfg.tau, 2.0)
