"""Chapter 13's U2AD scoring from a run's cached Monte-Carlo maps.

The chapter compares U2AD with newer detectors and asks which label-free statistic would
choose U2AD's epoch and tau. Both need U2AD's scores of slices whose Monte-Carlo maps a
run has already cached (:func:`u2ad_core.method.train.mc_maps`, keyed by the data arrays)::

    from u2ad_core.experiments.beyond import middle_scores, u2ad_scores
    res = u2ad_scores(model, run_path, paths[c], d, mid_idx, preset=cfg, device=ctx.device)
    res, healthy = middle_scores(model, run_path, d, h_mid, preset=cfg, device=ctx.device)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from u2ad_core.core.presets import Preset
from u2ad_core.data.datasets import SliceData
from u2ad_core.metrics import patient_table
from u2ad_core.method.scoring import ScoreResult, score_dataset
from u2ad_core.method.train import mc_maps


@dataclass(frozen=True)
class _SliceMaps:
    """Monte-Carlo ``mean`` and ``eu`` maps (N, H, W) of the slices being scored."""

    mean: torch.Tensor
    eu: torch.Tensor


def u2ad_scores(model: torch.nn.Module, run_path: Any, data_path: Any, data: SliceData,
                idx: ArrayLike, *, preset: Preset, device: Any) -> ScoreResult:
    """U2AD's scoring of ``data`` (N slices) from the run's cached Monte-Carlo maps.

    run_path: the run whose ``mc/`` cache holds (or receives) the maps; data_path: the
    dataset (a file or a ``SliceData``, M slices) the maps were computed on; idx: (N,) the
    rows of ``data_path`` that ``data`` holds, in order; preset: the MC settings and the
    scoring config ``preset.score``; device: where missing maps are computed.
    """
    mm = mc_maps(run_path, data_path, preset, device=device, model=model)
    return score_dataset(model, data, preset.score, mc=_SliceMaps(mean=mm.mean[idx], eu=mm.eu[idx]))


def middle_scores(model: torch.nn.Module, run_path: Any, data: SliceData, healthy: SliceData,
                  *, preset: Preset, device: Any) -> tuple[ScoreResult, np.ndarray]:
    """U2AD scores of the N clinical slices ``data`` and of the reference scans ``healthy``,
    each from Monte-Carlo maps of those slices alone (cached in ``run_path/mc``).

    Returns (the ``ScoreResult`` of ``data``, the patient scores of ``healthy`` (P,) float,
    one per subject in :func:`~u2ad_core.metrics.patient_table` order).
    """
    res = u2ad_scores(model, run_path, data, data, np.arange(len(data)), preset=preset, device=device)
    h_res = u2ad_scores(model, run_path, healthy, healthy, np.arange(len(healthy)), preset=preset, device=device)
    return res, patient_table(h_res.table)["score"].to_numpy()
