"""Pseudo-anomalies (paper Appendix A.1): inside the cord, sizes, intensity bounds, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from u2ad_core.data.pseudo import add_pseudo_anomalies, cord_axis


def _batch(n=40, H=96, W=48, width=8, tilt=0.0, seed=0):
    """Synthetic slices: dark cord band (0.3) between bright CSF bands (0.9), noisy."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:H, 0:W]
    centre = W / 2 + tilt * (rr - H / 2)
    cord = (np.abs(cc - centre) < width / 2)
    csf = (np.abs(cc - centre) < width / 2 + 4) & ~cord
    img = np.full((H, W), 0.15) + 0.15 * cord + 0.75 * csf
    imgs = np.clip(img[None] + 0.03 * rng.standard_normal((n, H, W)), 0, 1).astype(np.float32)
    return imgs, np.repeat(cord[None], n, 0).astype(np.uint8), np.repeat(csf[None], n, 0).astype(np.uint8)


def test_anomalies_inside_cord_with_stated_sizes_and_intensities():
    imgs, cord, csf = _batch()
    out, mask, params = add_pseudo_anomalies(imgs, cord, csf, rng=1, return_params=True)
    assert out.shape == imgs.shape and out.dtype == np.float32 and mask.dtype == np.uint8
    assert not (mask.astype(bool) & ~cord.astype(bool)).any()  # inside the cord
    assert np.array_equal(out[mask == 0], imgs[mask == 0])  # nothing else changes
    assert 0.0 <= out.min() and out.max() <= 1.0
    per_image = np.bincount([p["image"] for p in params], minlength=len(imgs))
    assert per_image.min() >= 1 and per_image.max() <= 3
    assert len(set(per_image.tolist())) > 1  # 1-3 varies
    for p in params:
        w = p["cord_width"]
        assert w == pytest.approx(cord[0].sum(1).max(), abs=0.5)  # pixels across the cord
        assert 0.7 * w - 1e-6 <= p["width"] <= 1.0 * w + 1e-6
        assert 1.0 * w - 1e-6 <= p["length"] <= 4.0 * w + 1e-6
        assert min(p["cord_mean"], p["csf_mean"]) <= p["mu"] <= max(p["cord_mean"], p["csf_mean"])
    # the anomalous pixels are brighter than the cord and darker than CSF on average
    cord_mean = imgs[cord > 0].mean()
    csf_mean = imgs[csf > 0].mean()
    assert cord_mean < out[mask > 0].mean() < csf_mean
    # each anomaly is elongated along the (vertical) cord: row extent >= column extent
    lab, n = ndi.label(mask[0])
    for sl in ndi.find_objects(lab):
        assert (sl[0].stop - sl[0].start) >= (sl[1].stop - sl[1].start) - 1


def test_length_follows_a_tilted_cord():
    imgs, cord, csf = _batch(n=20, H=120, W=80, width=10, tilt=0.4)
    centre, slope, width = cord_axis(cord.astype(bool))
    assert np.allclose(slope[0, 20:100], 0.4, atol=0.05)
    assert np.allclose(width[0, 20:100], 10 / np.sqrt(1 + 0.4**2), atol=1.0)
    _, mask, params = add_pseudo_anomalies(imgs, cord, csf, rng=3, return_params=True)
    assert not (mask.astype(bool) & ~cord.astype(bool)).any()
    big = [p for p in params if p["length"] > 2.5 * p["cord_width"]]
    assert big
    for p in big:  # a long ellipse on a tilted cord spans many rows
        assert p["n_pixels"] > 0


def test_seeding_and_generators():
    imgs, cord, csf = _batch(n=6)
    a = add_pseudo_anomalies(imgs, cord, csf, rng=np.random.default_rng(5))
    b = add_pseudo_anomalies(imgs, cord, csf, rng=np.random.default_rng(5))
    c = add_pseudo_anomalies(imgs, cord, csf, rng=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    t1 = add_pseudo_anomalies(torch.from_numpy(imgs), torch.from_numpy(cord), torch.from_numpy(csf), generator=g1)
    t2 = add_pseudo_anomalies(torch.from_numpy(imgs), torch.from_numpy(cord), torch.from_numpy(csf), generator=g2)
    assert isinstance(t1[0], torch.Tensor) and torch.equal(t1[0], t2[0]) and torch.equal(t1[1], t2[1])
    with pytest.raises(ValueError, match="rng"):
        add_pseudo_anomalies(imgs, cord, csf)


def test_without_csf_mask_and_without_cord():
    imgs, cord, csf = _batch(n=4)
    out, mask = add_pseudo_anomalies(imgs, cord, None, rng=0)
    assert mask.any(axis=(1, 2)).all() and cord.astype(bool)[mask > 0].all()
    assert out[mask > 0].mean() > imgs[cord > 0].mean()
    empty = np.zeros_like(cord)
    out2, mask2 = add_pseudo_anomalies(imgs, empty, csf, rng=0)
    assert not mask2.any() and np.array_equal(out2, imgs)
