"""The Monte-Carlo timing protocol of Table 4: its structure, with a counting clock instead of
the wall clock (no assertion on speed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from u2ad_core.core.config import MCConfig, ModelConfig
from u2ad_core.core.runtime import make_generator
from u2ad_core.data.datasets import SliceData
from u2ad_core.experiments.timing import GroupedMaps, grouped_mc_maps, timed_mc_maps
from u2ad_core.method.model import EdgeMAE
from u2ad_core.method.uncertainty import mc_uncertainty

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on 1 thread

SIZE = (48, 32)
MC = MCConfig(k=3, ddof=1, batch_size=16)
RUN = dict(mc=MC, seed=11, device="cpu")


def slices(n: int, seed: int = 0) -> SliceData:
    """n random (48, 32) slices with a vertical cord band as ROI."""
    rng = np.random.default_rng(seed)
    cord = np.zeros((n, *SIZE), np.uint8)
    cord[:, 4:44, 12:20] = 1
    zeros = np.zeros((n, *SIZE), np.uint8)
    return SliceData(images=rng.random((n, *SIZE)).astype(np.float32), cord=cord, csf=zeros, segments=zeros,
                     lesion=zeros, subject=np.array([f"s{i}" for i in range(n)]), slice_index=np.zeros(n, int),
                     slice_offset=np.zeros(n, int), patient_label=np.zeros(n, int),
                     lesion_segments=np.array([""] * n))


@pytest.fixture(scope="module")
def model() -> EdgeMAE:
    torch.manual_seed(0)
    return EdgeMAE(ModelConfig(image_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)).eval()


def counting_clock(step: float = 10.0):
    """A clock that advances ``step`` seconds at every reading."""
    ticks = itertools.count(0.0, step)
    return lambda: next(ticks)


def test_timed_maps_are_the_engines_with_a_fresh_generator(model):
    d = slices(5)
    res, sec = timed_mc_maps(model, d, 3, 0.75, clock=counting_clock(), **RUN)
    ref = mc_uncertainty(model, d.images, d.cord > 0, k=3, mask_ratio=0.75, generator=make_generator(11),
                         ddof=1, batch_size=16, device="cpu")
    torch.testing.assert_close(res.mean, ref.mean, rtol=0, atol=0)
    torch.testing.assert_close(res.eu, ref.eu, rtol=0, atol=0)
    assert res.mean.shape == (5, *SIZE) and res.k == 3 and res.ddof == 1
    assert sec == 10.0 / 5  # one clock interval over the N images
    again, _ = timed_mc_maps(model, d, 3, 0.75, **RUN)  # every call restarts the seed's generator
    torch.testing.assert_close(again.eu, res.eu, rtol=0, atol=0)


def test_one_reconstruction_falls_back_to_ddof_0(model):
    res, _ = timed_mc_maps(model, slices(2), 1, 0.75, clock=counting_clock(), **RUN)
    assert res.ddof == 0 and res.k == 1
    res, _ = timed_mc_maps(model, slices(2), 2, 0.75, clock=counting_clock(), **RUN)
    assert res.ddof == 1


@pytest.mark.parametrize("n, n_groups, sizes", [(7, 4, [2, 2, 2, 1]), (3, 4, [1, 1, 1]), (5, 1, [5])])
def test_grouped_maps_concatenate_the_groups_and_time_each(model, n, n_groups, sizes):
    d = slices(n, seed=n)
    maps, sec = grouped_mc_maps(model, d, 2, 0.75, n_groups=n_groups, clock=counting_clock(), **RUN)
    assert isinstance(maps, GroupedMaps) and maps.mean.shape == maps.eu.shape == (n, *SIZE)
    np.testing.assert_array_equal(sec, [10.0 / s for s in sizes])  # (G,): one interval per group
    start = np.cumsum([0] + sizes)
    parts = [timed_mc_maps(model, d.subset(np.arange(a, b)), 2, 0.75, **RUN)[0]
             for a, b in zip(start[:-1], start[1:])]
    torch.testing.assert_close(maps.mean, torch.cat([p.mean for p in parts]), rtol=0, atol=0)
    torch.testing.assert_close(maps.eu, torch.cat([p.eu for p in parts]), rtol=0, atol=0)
    assert maps.n_passes == sum(p.n_passes for p in parts) > 0


def test_groups_differ_from_one_run_over_all_slices(model):
    """Each group restarts the generator, so the later groups' maps are not one call's maps."""
    d = slices(4, seed=1)
    whole, _ = timed_mc_maps(model, d, 2, 0.75, **RUN)
    grouped, _ = grouped_mc_maps(model, d, 2, 0.75, n_groups=2, **RUN)
    assert not torch.equal(grouped.eu[2:], whole.eu[2:])


def test_seconds_per_image_warms_up_then_times_the_first_n_slices():
    from u2ad_core.experiments.timing import seconds_per_image

    calls = []
    ticks = itertools.count(0.0, 4.0)  # every clock reading 4 s after the last
    sec = seconds_per_image(lambda d: calls.append(len(d)), slices(10), n=8, n_warm=2,
                            clock=lambda: next(ticks))
    assert calls == [2, 8]  # the warm-up call, then the timed one
    assert sec == pytest.approx(4.0 / 8)
    calls.clear()
    seconds_per_image(lambda d: calls.append(len(d)), slices(3), n=16, clock=lambda: next(ticks))
    assert calls == [2, 3]  # fewer slices than n: all of them
    with pytest.raises(ValueError):
        seconds_per_image(lambda d: None, slices(3), n=0)
