"""How a model's reconstruction of the healthy cord improves with training: residual against steps.

:func:`residual_curve` takes an adaptation run and the pretrained model it started from, rebuilds
the Monte-Carlo mean reconstruction of the lesion-free patients' middle slices with the weights
of epoch 0 (the start), of every snapshot the run kept (``adapt.snapshot_every``) and of its last
epoch, and measures each against the trivial predictors of
:func:`u2ad_core.metrics.residuals.check_dataset`. No training: it reads weights a run already
wrote, so a book can show the curve at the cost of a few Monte-Carlo passes per point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from u2ad_core.core.presets import Preset
from u2ad_core.core.runtime import make_generator
from u2ad_core.method.runs import load_checkpoint, snapshot_paths
from u2ad_core.method.uncertainty import mc_uncertainty
from u2ad_core.metrics.residuals import MASKED_CONTEXT, check_dataset, healthy_selection

__all__ = ["residual_curve", "stays_below"]


def _points(run_path: Path, init_path: str | Path | None) -> dict[int, Path]:
    """``{epoch: weights}``: the start (epoch 0, ``init_path``), the snapshots, the final model."""
    pts: dict[int, Path] = {}
    if init_path is not None:
        pts[0] = Path(init_path)
    pts.update(snapshot_paths(run_path))
    final = run_path / "model.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{run_path}: no model.pt (the run has not finished)")
    _, info = load_checkpoint(final)
    pts[int(info.get("epoch") or max(pts, default=0) + 1)] = final
    return dict(sorted(pts.items()))


def residual_curve(run_path: str | Path, data: Any, preset: Preset, *, init_path: str | Path | None = None,
                   device: str = "cpu", seed: int | None = None, statistic: str = "median") -> pd.DataFrame:
    """The interior residual of an adaptation run's model at each kept epoch.

    run_path: a finished adaptation run; init_path: the run (or weights) it started from, shown
    as epoch 0 (``None``: no start point); data: the ``SliceData`` it adapted on (the lesion-free
    patients' middle slices are measured, :func:`~u2ad_core.metrics.residuals.healthy_selection`);
    preset: K, mask ratio and batch of the Monte-Carlo passes, and the batch size that turns
    epochs into optimiser steps (``ceil(N / preset.adapt.batch_size)`` per epoch, N = all slices).

    Returns one row per epoch: ``epoch``, ``steps``, ``model`` / ``running mean`` / ``local mean``
    / ``masked context`` / ``noise floor`` interior residual as a ratio to the cord-mean
    predictor's (``statistic`` over slices; no ``noise floor`` column without the phantom's
    noise-free images), ``cord_mean`` (the cord-mean predictor's own interior residual) and
    ``verdict`` (the model's, per patient).
    """
    run_path = Path(run_path)
    sel = healthy_selection(data)
    x, roi = np.asarray(data.images)[sel], np.asarray(data.cord)[sel] > 0
    steps_per_epoch = -(-len(data.images) // int(preset.adapt.batch_size))
    rows = []
    for epoch, weights in _points(run_path, init_path).items():
        model, _ = load_checkpoint(weights, device=device)
        mc = mc_uncertainty(model, x, roi, k=preset.mc.k, mask_ratio=preset.masking.mask_ratio,
                            generator=make_generator(preset.seed if seed is None else seed), ddof=preset.mc.ddof,
                            batch_size=preset.mc.batch_size, device=device)
        mean = np.zeros(np.shape(data.images), np.float32)
        mean[sel] = mc.mean.numpy().reshape(x.shape)
        df = check_dataset(data, {"model": mean}, statistic=statistic, sel=sel,
                           masked_context=(preset.model.patch_size, preset.masking.mask_ratio))
        ratio = df["interior_ratio"]
        row = {"epoch": epoch, "steps": epoch * steps_per_epoch, "model": ratio["model"],
               "cord_mean": df.loc["cord mean", "interior"], "verdict": df.loc["model", "verdict"]}
        for name in df.index:
            if name.startswith(("running mean", "local mean", "noise floor", MASKED_CONTEXT)):
                row[name.split(" (")[0]] = ratio[name]
        rows.append(row)
    return pd.DataFrame(rows)


def stays_below(curve: pd.DataFrame, margin: float) -> pd.Series | None:
    """The first row of a :func:`residual_curve` table from which the model's ratio stays at or
    below ``margin`` in every later row (a single dip below it that is followed by a point above
    is not reaching it), or None when the last row is above."""
    ok = (curve["model"].to_numpy() <= margin)
    above = np.flatnonzero(~ok)
    start = 0 if above.size == 0 else int(above[-1]) + 1
    return curve.iloc[start] if start < len(curve) else None

