"""Chapters 13-15 (beyond U2AD): U2AD's scoring from cached Monte-Carlo maps, the example
slices, and the results chapter 13 hands on to 14 and 15.

Chapter 13 compares U2AD with newer detectors, chapter 14 asks which label-free statistic
would choose U2AD's variant, epoch and tau, chapter 15 trains supervised detectors. They need
U2AD's scores of slices whose Monte-Carlo maps a run has already cached
(:func:`u2ad_core.method.train.mc_maps`, keyed by the data arrays)::

    from u2ad_core.experiments.beyond import middle_scores, u2ad_scores
    res = u2ad_scores(model, run_path, paths[c], d, mid_idx, preset=cfg, device=ctx.device)
    res, healthy = middle_scores(model, run_path, d, h_mid, preset=cfg, device=ctx.device)

Chapter 13 writes its rows with :func:`u2ad_core.book.results.write_results` (names
:data:`TABLE_ROWS`, :data:`PATIENT_SCORES`); chapters 14 and 15 read them back with
:func:`chapter13_rows`, which says which chapter to run when the file is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike

from u2ad_core.book.results import read_results, results_path
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


TABLE_ROWS = "beyond"
"""Chapter 13's results rows (every method, strategy and cohort, the layout of
:func:`u2ad_core.baselines.results_row`, plus ``preset`` and ``seed``)."""
PATIENT_SCORES = "beyond_patient_scores"
"""Chapter 13's patient scores: one row per (cohort, method, strategy, subject) with ``label``
and ``score`` (:func:`u2ad_core.metrics.patient_table` of each method's middle slices)."""


def chapter13_rows(run_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    """The rows chapter 13 wrote to ``run_dir`` under ``name`` (:data:`TABLE_ROWS`,
    :data:`PATIENT_SCORES`) as a DataFrame; ``FileNotFoundError`` naming the chapter to run
    first when this run directory has none."""
    path = results_path(run_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in this run directory: chapter 13 (13_beyond_u2ad.ipynb) "
                                "writes it; run that chapter first with the same preset, seed and run_dir")
    return pd.DataFrame(read_results(path))


def largest_lesions(data: SliceData, n: int = 2) -> np.ndarray:
    """Indices (n,) of the slices of lesion patients with the most lesion pixels, largest first
    (the first n slices when no slice belongs to a lesion patient); fewer when ``data`` is smaller."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    idx = np.flatnonzero(np.asarray(data.patient_label) == 1)
    if not len(idx):
        return np.arange(min(n, len(data)))
    size = data.lesion[idx].reshape(len(idx), -1).astype(np.int64).sum(1)
    return idx[np.argsort(-size, kind="stable")][:n]
