"""Robustness degradations: hand images whose degraded copies are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2ad_core.experiments.robustness import degrade


def test_no_degradation_is_a_clipped_float32_copy():
    x = np.array([[[-0.5, 0.25], [0.75, 1.5]]])
    y = degrade(x)
    assert y.dtype == np.float32 and y.shape == (1, 2, 2)
    np.testing.assert_array_equal(y, [[[0.0, 0.25], [0.75, 1.0]]])
    assert x[0, 0, 0] == -0.5  # the input is not modified


def test_downsampling_a_fine_checkerboard_leaves_its_mean():
    """Area-averaging 2 x 2 blocks of a one-pixel checkerboard gives 0.5 everywhere."""
    x = (np.indices((8, 6)).sum(0) % 2).astype(np.float32)[None].repeat(2, 0)
    np.testing.assert_allclose(degrade(x, factor=2), 0.5, atol=1e-7)
    # coarse structure (4-pixel stripes) survives a factor 2 in the stripe centres
    stripes = np.zeros((1, 16, 8), np.float32)
    stripes[:, 4:8] = stripes[:, 12:16] = 1.0
    y = degrade(stripes, factor=2)
    np.testing.assert_allclose(y[0, 5:7], 1.0, atol=1e-6)
    np.testing.assert_allclose(y[0, 9:11], 0.0, atol=1e-6)


@pytest.mark.parametrize("shape, factor", [((2, 30, 22), 4), ((1, 17, 9), 3)])
def test_downsampling_keeps_the_shape(shape, factor):
    x = np.random.default_rng(0).random(shape)
    y = degrade(x, factor=factor)
    assert y.shape == shape and 0 <= y.min() and y.max() <= 1
    assert not np.allclose(y, x)


def test_noise_is_the_generators_gaussian_scaled_and_clipped():
    x = np.full((4, 32, 32), 0.5, np.float32)
    y = degrade(x, sigma=0.05, generator=torch.Generator().manual_seed(3))
    expect = (0.5 + 0.05 * torch.randn((4, 1, 32, 32), generator=torch.Generator().manual_seed(3)))
    np.testing.assert_allclose(y, expect.clamp(0, 1)[:, 0].numpy(), rtol=0, atol=1e-7)
    assert abs(float((y - 0.5).std()) - 0.05) < 0.005
    same = degrade(x, sigma=0.05, generator=torch.Generator().manual_seed(3))
    other = degrade(x, sigma=0.05, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(y, same)
    assert not np.array_equal(y, other)


def test_downsampling_comes_before_the_noise():
    x = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None]
    y = degrade(x, sigma=0.1, factor=2, generator=torch.Generator().manual_seed(0))
    noise = 0.1 * torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(y, (0.5 + noise).clamp(0, 1)[:, 0].numpy(), atol=1e-6)
