"""The Monte-Carlo timing protocol of chapter 08's Table 4 (time per image against K).

:func:`timed_mc_maps` runs the Monte-Carlo engine
(:func:`u2ad_core.method.uncertainty.mc_uncertainty`) on a set of slices with a fresh
generator of the run's seed and reports the seconds per image; :func:`grouped_mc_maps` runs
it on consecutive groups of the slices, so that the time per image comes with a spread (one
value per group)::

    from u2ad_core.experiments.timing import grouped_mc_maps
    maps, sec = grouped_mc_maps(model, d, k=10, mask_ratio=0.75, mc=cfg.mc, seed=ctx.seed,
                                device=ctx.device)
    sec.mean(), sec.std(ddof=1)      # Table 4's time per image and its spread

:func:`seconds_per_image` times any detector's call on the first slices of a set after one
warm-up call (chapters 13 and 15 time every method in one run that way)::

    sec = seconds_per_image(lambda d: bl.anomaly_maps("dal", model, d, ctx.device), renji, n=16)

``clock`` is :func:`time.perf_counter` unless a caller passes another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from u2ad_core.core.config import MCConfig
from u2ad_core.core.runtime import make_generator
from u2ad_core.data.datasets import SliceData
from u2ad_core.method.uncertainty import MCResult, mc_uncertainty

Clock = Callable[[], float]


@dataclass(frozen=True)
class GroupedMaps:
    """The maps of all N slices from :func:`grouped_mc_maps`: ``mean``, ``eu`` (N, H, W) float32
    tensors in slice order; ``n_passes``: the forward passes of all groups together."""

    mean: torch.Tensor
    eu: torch.Tensor
    n_passes: int


def timed_mc_maps(model: torch.nn.Module, d: SliceData, k: int, mask_ratio: float, *,
                  mc: MCConfig, seed: int, device: Any, clock: Clock = time.perf_counter,
                  ) -> tuple[MCResult, float]:
    """Monte-Carlo maps of the N slices ``d`` (cord = ROI) and the seconds per image they took.

    k: reconstructions per ROI patch; mask_ratio: the masking ratio; mc: batch size and ddof
    (the ddof falls back to 0 when ``k <= mc.ddof``); seed: a fresh generator
    (:func:`~u2ad_core.core.runtime.make_generator`) for every call; device: as for
    ``mc_uncertainty``. Returns (``MCResult`` with (N, H, W) maps, elapsed / N).
    """
    t0 = clock()
    res = mc_uncertainty(model, d.images, d.cord > 0, k=k, mask_ratio=mask_ratio,
                         generator=make_generator(seed), ddof=mc.ddof if k > mc.ddof else 0,
                         batch_size=mc.batch_size, device=device)
    return res, (clock() - t0) / len(d)


def grouped_mc_maps(model: torch.nn.Module, d: SliceData, k: int, mask_ratio: float, *,
                    mc: MCConfig, seed: int, device: Any, n_groups: int = 4,
                    clock: Clock = time.perf_counter) -> tuple[GroupedMaps, np.ndarray]:
    """:func:`timed_mc_maps` over ``n_groups`` consecutive groups of the N slices
    (``np.array_split``; empty groups, when N < n_groups, are skipped). Each group starts
    its own generator of ``seed``. Returns the maps of all slices (:class:`GroupedMaps`)
    and the seconds per image of each group, float (G,) with G = min(n_groups, N).
    """
    groups = [g for g in np.array_split(np.arange(len(d)), n_groups) if len(g)]
    parts = [timed_mc_maps(model, d.subset(g), k, mask_ratio, mc=mc, seed=seed, device=device,
                           clock=clock) for g in groups]
    maps = GroupedMaps(mean=torch.cat([r.mean for r, _ in parts]), eu=torch.cat([r.eu for r, _ in parts]),
                       n_passes=sum(r.n_passes for r, _ in parts))
    return maps, np.array([sec for _, sec in parts])


def seconds_per_image(fn: Callable[[SliceData], Any], data: SliceData, n: int = 16, n_warm: int = 2,
                      clock: Clock = time.perf_counter) -> float:
    """Seconds per image of ``fn`` on the first ``n`` slices of ``data`` (fewer when it is
    smaller), after one warm-up call on its first ``n_warm`` slices (not timed)."""
    if n < 1 or n_warm < 1:
        raise ValueError(f"n and n_warm must be >= 1, got {n} and {n_warm}")
    if len(data) == 0:
        raise ValueError("seconds_per_image: no slices to time")
    fn(data.subset(np.arange(min(n_warm, len(data)))))
    timed = data.subset(np.arange(min(n, len(data))))
    t0 = clock()
    fn(timed)
    return (clock() - t0) / len(timed)
