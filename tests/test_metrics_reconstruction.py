"""Reconstruction quality (metrics.reconstruction): one SSIM, one function, per image or reduced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import structural_similarity

from u2ad_core import metrics as E


def _case(seed: int = 0):
    """Three 32 x 32 images; ROI a 16 x 8 box; the third image's ROI is empty."""
    rng = np.random.default_rng(seed)
    x = rng.random((3, 32, 32)).astype(np.float32)
    roi = np.zeros((3, 32, 32), bool)
    roi[:2, 8:24, 12:20] = True
    mean = np.where(roi, np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1), x).astype(np.float32)
    eu = rng.uniform(0, 0.05, x.shape).astype(np.float32)
    return x, mean, eu, roi


def test_known_case():
    x, _, _, roi = _case()
    rec = x.copy()
    rec[1][roi[1]] += 0.1
    t = E.reconstruction_table(x, rec, np.full_like(x, 0.02), roi)
    assert list(t.columns) == list(E.RECONSTRUCTION_COLUMNS) and len(t) == 3
    assert t.loc[0, "ssim"] == pytest.approx(1.0, abs=1e-6) and t.loc[0, "mse"] == 0
    assert t.loc[1, "mse"] == pytest.approx(0.01, rel=1e-4) and t.loc[1, "psnr"] == pytest.approx(20.0, rel=1e-4)
    assert t.loc[1, "ssim"] < 1.0 and t.loc[1, "au_mean"] == pytest.approx(0.1, rel=1e-4)
    assert t["eu_mean"].iloc[:2].tolist() == pytest.approx([0.02, 0.02])
    assert t.iloc[2].isna().all()  # empty region
    assert E.reconstruction_table(x, rec, None, roi)["eu_mean"].isna().all()


def test_per_image_and_reduced_agree():
    x, mean, eu, roi = _case(1)
    red = E.reconstruction_metrics(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(eu),
                                   torch.from_numpy(roi))
    t = E.reconstruction_table(x, mean, eu, roi)
    assert red["n"] == 2
    for k in E.RECONSTRUCTION_COLUMNS:
        assert t[k].mean() == pytest.approx(red[k], rel=1e-6), k
    per = E.reconstruction_metrics(x, mean, eu, roi, reduce=False)
    assert set(per) == set(E.RECONSTRUCTION_COLUMNS)
    pd.testing.assert_frame_equal(t, pd.DataFrame({k: per[k] for k in E.RECONSTRUCTION_COLUMNS}))
    empty = E.reconstruction_metrics(x, mean, eu, np.zeros_like(roi), reduce=False)
    assert all(np.isnan(v).all() and v.shape == (3,) for v in empty.values())


def test_ssim_is_skimage_on_the_pasted_reconstruction():
    """SSIM of the region = skimage's SSIM map of (reconstruction inside the region, reference
    outside) against the reference, averaged over the region's pixels."""
    x, mean, eu, roi = _case(2)
    region = np.zeros_like(roi)
    region[:2, 12:18, 13:17] = True  # smaller than the reconstructed box: pasting matters
    ref = x
    t = E.reconstruction_table(x, mean, eu, region)
    for i in range(2):
        pasted = np.where(region[i], mean[i], ref[i]).astype(np.float64)
        _, smap = structural_similarity(ref[i].astype(np.float64), pasted, data_range=1.0, win_size=7, full=True)
        assert t.loc[i, "ssim"] == pytest.approx(smap[region[i]].mean(), abs=1e-5)
        _, raw = structural_similarity(ref[i].astype(np.float64), mean[i].astype(np.float64), data_range=1.0,
                                       win_size=7, full=True)
        assert abs(raw[region[i]].mean() - t.loc[i, "ssim"]) > 1e-4  # the raw reconstruction gives another number


def test_reference_is_what_the_reconstruction_is_compared_with():
    x, mean, eu, roi = _case(3)
    original = np.clip(x - 0.05, 0, 1).astype(np.float32)
    t = E.reconstruction_table(x, mean, eu, roi, reference=original)
    mse = [float(((mean[i] - original[i])[roi[i]] ** 2).mean()) for i in range(2)]
    assert t["mse"].iloc[:2].tolist() == pytest.approx(mse, rel=1e-5)
    au = [float(np.abs(x[i] - mean[i])[roi[i]].mean()) for i in range(2)]
    assert t["au_mean"].iloc[:2].tolist() == pytest.approx(au, rel=1e-5)  # AU: against the image, not the reference
    with pytest.raises(ValueError, match="same"):
        E.reconstruction_metrics(x, mean[:2], eu, roi)
