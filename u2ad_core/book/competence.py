"""Has the model learned? The book's view of :mod:`u2ad_core.metrics.residuals`.

A reconstruction detector is only as good as its reconstruction of the healthy cord. These
helpers show a model's residual next to predictors that know nothing about cords (the slice's
cord mean, a running mean along the cord, a local mean) and the phantom's noise floor:

* :func:`residual_view`: the table of :func:`~u2ad_core.metrics.residuals.check_dataset`, with
  short column names and three significant digits;
  the row ``masked context`` is what interpolating the visible cord patches reaches under the
  model's own masking (a bound from the information the model has, not a learned model);
* :func:`plot_slice_residuals`: one point per slice, the interior residual of each model against
  the slice's cord mean (dim cords are where a model that predicts a typical cord fails);
* :func:`plot_residual_curves`: :func:`u2ad_core.method.competence.residual_curve` tables, one
  panel each, against the trivial predictors' lines;
* :func:`learned_sentence`: one sentence per model, its words decided by the numbers.
"""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from u2ad_core.metrics import residuals as R

__all__ = ["residual_view", "plot_slice_residuals", "plot_residual_curves", "learned_sentence", "sig3"]

COLUMNS = {
    "interior": "interior",
    "edge": "edge",
    "interior_ratio": "÷ cord mean",
    "interior_x_noise": "× noise floor",
    "verdict": "verdict",
}
"""Columns of :func:`residual_view`, from :func:`~u2ad_core.metrics.residuals.compare_predictors`."""


def sig3(v) -> str:
    """A number with three significant digits ("" for NaN, strings unchanged)."""
    if isinstance(v, str):
        return v
    if v is None or not np.isfinite(v):
        return ""
    return f"{float(v):.3g}"


def residual_view(df: pd.DataFrame, trivial_verdicts: bool = False) -> pd.DataFrame:
    """``df`` of :func:`~u2ad_core.metrics.residuals.check_dataset` for a page: RMS residual over
    the cord mean (interior, edge), the interior ratio to the cord-mean predictor, the multiple of
    the noise floor (when the dataset has it) and the verdict (the share of patients at or below
    the margin stays in ``df``); numbers as strings with three significant digits. The trivial predictors' and
    the noise floor's verdicts are blanked unless ``trivial_verdicts``."""
    cols = [c for c in COLUMNS if c in df.columns and not (c == "interior_x_noise" and df[c].isna().all())]
    out = df[cols].copy()
    out["verdict"] = out["verdict"].replace({"no clear difference": "not clearly learned"})
    trivial = [i for i in out.index if i not in _models(df)]
    if not trivial_verdicts:
        out.loc[trivial, "verdict"] = ""
    out = out.apply(lambda col: col.map(sig3))
    out.columns = [COLUMNS[c] for c in cols]
    out.index.name = "predictor"
    return out


def _models(df: pd.DataFrame) -> list[str]:
    """The model rows of a :func:`compare_predictors` table (not the trivial ones, not the floor)."""
    trivial = ("cord mean", "running mean", "local mean", "noise floor", R.MASKED_CONTEXT)
    return [i for i in df.index if not str(i).startswith(trivial)]


def learned_sentence(df: pd.DataFrame, name: str, context: bool = True) -> str:
    """One sentence on model ``name`` of a :func:`check_dataset` table, decided by its numbers
    (``context``: also what the running mean reaches, once per table)."""
    r = df.loc[name]
    margin = df.attrs.get("margin", R.LEARNED_MARGIN)
    run = [i for i in df.index if str(i).startswith("running mean")]
    parts = [f"Inside the cord, {name}'s residual is **{r['interior_ratio']:.2f} ×** the cord-mean predictor's "
             f"({df.attrs.get('statistic', 'median')} over {df.attrs.get('n_slices', '?')} slices of "
             f"{df.attrs.get('n_patients', '?')} lesion-free patients)"]
    if run and context:
        parts.append(f"a running mean along the cord, which learns nothing, reaches "
                     f"**{df.loc[run[0], 'interior_ratio']:.2f} ×**")
    if R.MASKED_CONTEXT in df.index and context:
        parts.append(f"interpolating the cord patches a masked model sees reaches "
                     f"**{df.loc[R.MASKED_CONTEXT, 'interior_ratio']:.2f} ×**")
    if np.isfinite(r.get("interior_x_noise", np.nan)):
        parts.append(f"the residual is **{r['interior_x_noise']:.1f} ×** the noise floor")
    word = {"learned": f"**learned**: its patients' ratios sit below {margin} by more than their spread",
            "not learned": f"**not learned**: its patients' ratios sit above {margin} by more than their spread",
            "no clear difference": f"**not clearly learned**: its patients' ratios straddle {margin}"}
    return "; ".join(parts) + ". Verdict: " + word.get(r["verdict"], r["verdict"]) + "."


def plot_slice_residuals(data, predictions: Mapping[str, np.ndarray], sel: np.ndarray | None = None,
                         ax=None, title: str | None = None):
    """Interior residual (RMS / cord mean) per slice against the slice's cord mean, for each model
    in ``predictions`` (name -> ``(N, H, W)`` over all slices of ``data``) and the cord-mean
    predictor. ``sel``: the slices (default :func:`~u2ad_core.metrics.residuals.healthy_selection`).
    Returns the axes."""
    sel = R.healthy_selection(data) if sel is None else np.asarray(sel, bool)
    x, c = np.asarray(data.images)[sel], np.asarray(data.cord)[sel]
    lesion = getattr(data, "lesion", None)
    lesion = None if lesion is None else np.asarray(lesion)[sel]
    preds = {"cord mean": R.cord_mean_prediction(x, c)}
    preds.update({k: np.asarray(v, dtype=np.float32)[sel] for k, v in predictions.items()})
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 3.2), dpi=120, layout="constrained")
    markers = dict(zip(preds, "o^sDv<>"))
    for k, p in preds.items():
        t = R.residual_table(x, p, c, lesion)
        t = t[t.level == "slice"]
        style = dict(color="0.55", marker="x") if k == "cord mean" else dict(marker=markers[k])
        ax.scatter(t.cord_mean, t.interior, s=18, label=k, alpha=0.85, **style)
    ax.set_xlabel("slice's cord mean (normalised intensity)", fontsize=9)
    ax.set_ylabel("interior RMS residual / cord mean", fontsize=9)
    ax.set_yscale("log")
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


CURVE_LINES = (("masked context", (0, (5, 1))), ("running mean", ":"), ("local mean", "-."), ("noise floor", "--"))
"""The trivial predictors' columns of a residual curve and their line styles."""


def plot_residual_curves(curves: Mapping[str, pd.DataFrame | Mapping[str, pd.DataFrame]],
                         label: str = "U2AD S3 (adaptation)"):
    """One panel per ``{title: residual_curve table}``: the model's interior ratio against
    optimiser steps, horizontal lines for the trivial predictors (from the panel's first table),
    the cord mean (1) and the learned margin. A panel given as ``{line label: table}`` draws one
    line per table (e.g. two adaptation lengths); a bare table is drawn as ``label``.
    Returns the figure."""
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n if n > 1 else 5.0, 3.0), dpi=120, layout="constrained",
                             sharey=True, squeeze=False)
    for ax, (title, panel) in zip(axes[0], curves.items()):
        lines = {label: panel} if isinstance(panel, pd.DataFrame) else dict(panel)
        for (name, t), marker in zip(lines.items(), "osd^v"):
            ax.plot(t["steps"], t["model"], f"{marker}-", ms=4, label=name)
        c = next(iter(lines.values()))
        for name, style in CURVE_LINES:
            if name in c and c[name].notna().all():
                ax.axhline(c[name].iloc[0], color="0.4", ls=style, lw=1, label=name)
        ax.axhline(1.0, color="0.6", lw=1, label="cord mean")
        ax.axhline(R.LEARNED_MARGIN, color="tab:green", lw=0.8, ls="--", label=f"margin {R.LEARNED_MARGIN}")
        ax.set_xlabel("adaptation steps (batches)", fontsize=9)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0, 0].set_ylabel("interior residual\n÷ cord-mean predictor's", fontsize=9)
    axes[0, -1].legend(fontsize=8, frameon=False, loc="upper right")
    return fig
