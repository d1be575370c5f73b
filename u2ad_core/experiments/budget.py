"""Training budget: how far a preset's numbers are from convergence (the budget sweep).

The ``cpu`` preset trains for minutes, and the book compares methods at that budget. The
sweep trains everything again with every epoch count multiplied by a factor (0.5x, 1x, 2x,
4x by default), schedules scaled with it, and scores each model with the book's protocol::

    u2ad budget --preset cpu                 # = make budget; Dask, one worker per core
    from u2ad_core.experiments.budget import run_budget_sweep, budget_claims
    res = run_budget_sweep(ctx)              # SweepResult; res.table: one row per model
    claims = budget_claims(res.table)        # which comparisons hold at every budget

- :func:`budget_overrides`: the preset overrides of one factor: pretraining and adaptation
  epochs, the learning-rate step, the adaptation's stage-2 start and EU/AU refresh period,
  the checkpoint periods, and the baselines' pretraining / adaptation epochs, each
  rounded to the nearest whole epoch, at least 1 (a factor of 1 gives no override, so the 1x point reuses the
  book's cached runs).
- :func:`evaluate_budget`: one point (run by ``notebooks/points/budget_point.ipynb``): U2AD
  S1 / S2 / S3 and every reconstruction baseline of chapter 09 with the same strategies, on
  both clinical cohorts, plus Z-scoring (no training: the same at every budget) as a fixed
  reference. One row per (cohort, method, strategy): the training time of the model (from
  its runs' ``done.json``, also when they were cached; S3 counts its pretraining too), patient
  AUROC / F1 and honest segment F1 with their fold spread.
- :func:`run_budget_sweep`: the grid on Dask (:func:`u2ad_core.book.sweep.run_sweep`) into
  ``run_dir/sweeps/budget``, the run directory shared with the book;
  :func:`budget_claims`: the verdict of each comparison at each budget
  (:func:`u2ad_core.metrics.compare`) and whether it holds at every budget or flips.

What a preset sweeps is its :class:`u2ad_core.core.config.BudgetGrid` (``preset.grids.budget``): ``smoke`` and
``paper_ci`` run a small grid inside their books (so the code runs in the tests and in CI),
``paper`` runs the full grid in its book, and ``cpu`` only reads a finished sweep (about
62 minutes measured on 2 cores with the earlier 12-epoch adaptation: ``make budget``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from u2ad_core import baselines as bl
from u2ad_core.baselines.common import evaluate_maps
from u2ad_core.book.notebook import setup
from u2ad_core.book.sweep import run_sweep
from u2ad_core.core.context import code_version, repo_root
from u2ad_core.core.runstore import train_seconds
from u2ad_core.data.datasets import load_dataset, prepare_all
from u2ad_core.method import train
from u2ad_core.method.scoring import anomaly_map
from u2ad_core.metrics import compare

__all__ = ["budget_overrides", "evaluate_budget", "adaptation_budget",
           "run_budget_sweep", "sweep_dir", "read_budget_table", "budget_claims", "cli_register"]

EPOCH_FIELDS = ("pretrain.epochs", "pretrain.lr_step", "pretrain.checkpoint_every",
                "adapt.epochs", "adapt.lr_step", "adapt.stage2_start", "adapt.refresh_every",
                "adapt.checkpoint_every", "adapt.snapshot_every", "baselines.pretrain_epochs", "baselines.adapt_epochs",
                "baselines.checkpoint_every")
"""Preset fields counted in epochs: all of them are scaled together by a budget factor."""

POINT_NOTEBOOK = Path("notebooks") / "points" / "budget_point.ipynb"


def _get(preset: Any, dotted: str) -> Any:
    obj = preset
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def budget_overrides(preset: Any, factor: float) -> dict[str, int]:
    """Preset overrides that multiply every epoch count of ``preset`` by ``factor``.

    Each field of :data:`EPOCH_FIELDS` becomes ``max(1, floor(n * factor + 1/2))`` (0 stays 0); the adaptation's
    stage-2 start stays at least one epoch before its end when it was before it. Fields that do
    not change are left out, so ``factor=1`` returns ``{}``.
    """
    factor = float(factor)
    if not (factor > 0 and np.isfinite(factor)):
        raise ValueError(f"budget factor must be a positive number, got {factor!r}")
    # halves round up; a field at 0 (off, e.g. no snapshots) stays 0
    new = {k: max(1, int(_get(preset, k) * factor + 0.5)) if _get(preset, k) else 0 for k in EPOCH_FIELDS}
    a = preset.adapt
    if a.stage2_start < a.epochs and new["adapt.stage2_start"] >= new["adapt.epochs"]:
        new["adapt.stage2_start"] = max(0, new["adapt.epochs"] - 1)
    return {k: v for k, v in new.items() if v != _get(preset, k)}


def _row(cohort: str, method: str, strategy: str, maps: np.ndarray, d: Any, preset: Any,
         train_s: float, eval_s: float) -> dict[str, Any]:

    _, cv, tf = evaluate_maps(maps, d, preset)
    s = cv.summary()
    row = {"cohort": cohort, "method": method, "strategy": strategy,
           "pretrain_epochs": preset.pretrain.epochs, "adapt_epochs": preset.adapt.epochs,
           "baseline_epochs": f"{preset.baselines.pretrain_epochs}+{preset.baselines.adapt_epochs}",
           "train_seconds": round(train_s, 2), "eval_seconds": round(eval_s, 2),
           "patient_auroc_pooled": float(tf["auroc"])}
    for m in ("patient_auroc", "patient_f1", "segment_f1_honest"):
        row[m] = float(s.loc[m, "mean"])
        row[f"{m}_std"] = float(s.loc[m, "std"])
    return row


def _u2ad_row(cfg: Any, cohort: str, strategy: str, run_path: Path, data_path: Path, d: Any, mid: np.ndarray,
              device: str, train_s: float, model: Any = None) -> dict[str, Any]:
    """One U2AD row: the run's Monte-Carlo maps (cached in the run), scored on the middle slices."""
    t1 = time.perf_counter()
    mc = train.mc_maps(run_path, data_path, cfg, device=device, model=model)
    maps = anomaly_map(d.images, mc.mean.numpy()[mid], d.cord > 0, cfg.score.sided)
    return _row(cohort, "U2AD", strategy, maps, d, cfg, train_s, time.perf_counter() - t1)


def adaptation_budget(ctx: Any, cohort: str, runs: Mapping[float, tuple[Any, Path]]) -> pd.DataFrame:
    """The reduced budget table a default book can afford: U2AD S3 on one cohort with only its
    adaptation scaled, and Z-scoring as the fixed reference, in the sweep's table format.

    runs: adaptation factor -> (the preset it was trained under, its finished run), e.g. ``{1.0:
    (cfg, book's S3 run), 2.0: (cfg with longer_adaptation, that run)}``. The ``budget`` column is
    the adaptation's factor; the pretraining is the book's at every row. :func:`budget_claims`
    then decides "U2AD S3 vs Z-scoring" at each adaptation budget (the other claims: not measured).
    """
    paths = prepare_all(ctx.preset, ctx.data_dir, seed=ctx.seed, verbose=False, show_progress=False)
    full = load_dataset(paths[cohort])
    mid = np.flatnonzero(full.slice_offset == 0)
    d = full.middle()
    t1 = time.perf_counter()
    _, zmaps = bl.anomaly_maps("zscore", None, d, sided=ctx.preset.score.sided)
    z_s = time.perf_counter() - t1
    rows = []
    for factor, (cfg, run_path) in sorted(runs.items()):
        rows.append({**_u2ad_row(cfg, cohort, "S3", Path(run_path), paths[cohort], d, mid, ctx.device,
                                 train_seconds(Path(run_path))), "budget": float(factor)})
        rows.append({**_row(cohort, "Z-scoring", "none", zmaps, d, cfg, 0.0, z_s), "budget": float(factor)})
    return pd.DataFrame(rows)


def evaluate_budget(ctx: Any, cohorts: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                    show_progress: bool = False) -> list[dict[str, Any]]:
    """Train (or reuse) and score every model of one budget point; one row per model.

    ctx: a :class:`u2ad_core.core.context.RunContext` whose preset already carries the point's
    epochs (:func:`budget_overrides`); cohorts: default the preset's :class:`BudgetGrid`;
    methods: the reconstruction baselines (default: all of
    :data:`u2ad_core.baselines.UAD_METHODS`, with S1, S3 and, for ``baselines.s2_methods``,
    S2, as in chapter 09). U2AD: S1, S2 and S3 (U2AD masking), scored on the middle slice of
    each patient from the mean of its Monte-Carlo reconstructions.
    """

    cfg = ctx.preset
    cohorts = tuple(cohorts or cfg.grids.budget.cohorts)
    methods = tuple(bl.UAD_METHODS if methods is None else methods)
    paths = prepare_all(cfg, ctx.data_dir, seed=ctx.seed, verbose=False, show_progress=False)
    rows: list[dict[str, Any]] = []
    for cohort in cohorts:
        full = load_dataset(paths[cohort])
        mid = np.flatnonzero(full.slice_offset == 0)
        d = full.middle()
        pre_s = 0.0
        for s in ("S1", "S2", "S3"):
            model, run_path = train.strategy_model(ctx, cohort, s, show_progress=show_progress)
            own = train_seconds(run_path)
            pre_s = own if s == "S1" else pre_s
            rows.append(_u2ad_row(cfg, cohort, s, run_path, paths[cohort], d, mid, ctx.device,
                                  own + (pre_s if s == "S3" else 0.0), model))
        for m in methods:
            label = bl.get_method(m).label
            for s in ["S1", "S3"] + (["S2"] if m in cfg.baselines.s2_methods else []):
                model, run_path = bl.baseline_model(ctx, m, cohort, s, show_progress=show_progress, paths=paths)
                t1 = time.perf_counter()
                _, maps = bl.anomaly_maps(m, model, d, device=ctx.device, seed=ctx.seed, sided=cfg.score.sided)
                own = train_seconds(run_path)
                pre_s = own if s == "S1" else pre_s
                rows.append(_row(cohort, label, s, maps, d, cfg, own + (pre_s if s == "S3" else 0.0),
                                 time.perf_counter() - t1))
        t1 = time.perf_counter()
        _, maps = bl.anomaly_maps("zscore", None, d, sided=cfg.score.sided)
        rows.append(_row(cohort, "Z-scoring", "none", maps, d, cfg, 0.0, time.perf_counter() - t1))
    return rows


def sweep_dir(ctx: Any) -> Path:
    """Where a preset's budget sweep lives: ``run_dir/sweeps/budget`` (beside the book's runs)."""
    return Path(ctx.run_dir) / "sweeps" / "budget"


def run_budget_sweep(ctx: Any, factors: Sequence[float] | None = None, overrides: dict[str, Any] | None = None,
                     workers: int | None = None, force: bool = False, verbose: bool = False):
    """Run the budget grid of ``ctx.preset`` on Dask (one papermill run of the point notebook per
    factor) and return the :class:`u2ad_core.book.sweep.SweepResult`; raises when a point failed.
    overrides: the preset overrides ``ctx.preset`` was built with (each point applies its
    budget on top of them).

    The points share the book's run directory (a 1x point reuses the book's models) and carry
    the package's source hash, so a changed package re-runs them.
    """

    cfg = ctx.preset
    grid = cfg.grids.budget
    factors = [float(f) for f in (factors or grid.factors)]
    if workers is None:
        workers = 1 if str(ctx.device).startswith("cuda") else max(1, min(len(factors), os.cpu_count() or 1))
    res = run_sweep(repo_root() / POINT_NOTEBOOK, {"budget": factors, "code": [code_version()]},
                    preset=cfg.name, out=sweep_dir(ctx), workers=workers, device=ctx.device, seed=ctx.seed,
                    data_dir=ctx.data_dir.parent, run_dir=ctx.run_dir.parent, overrides=dict(overrides or {}), force=force,
                    verbose=verbose)
    if res.failed:
        raise RuntimeError("budget sweep points failed:\n" + "\n".join(
            f"{f.point_id}: {f.error} (see {f.executed})" for f in res.failed))
    return res


def read_budget_table(ctx: Any) -> pd.DataFrame | None:
    """The finished sweep's table (``results.csv``), or None when there is none."""
    f = sweep_dir(ctx) / "results.csv"
    return pd.read_csv(f) if f.is_file() else None


CLAIMS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("U2AD S3 vs U2AD S1 (does adaptation help?)", ("U2AD", "S3"), ("U2AD", "S1")),
    ("U2AD S3 vs U2AD S2 (does pretraining help?)", ("U2AD", "S3"), ("U2AD", "S2")),
    ("U2AD S3 vs Z-scoring (does U2AD beat the intensity threshold?)", ("U2AD", "S3"), ("Z-scoring", "none")),
    ("U2AD S3 vs the best reconstruction baseline", ("U2AD", "S3"), ("best baseline", "")),
)


def budget_claims(table: pd.DataFrame, metric: str = "patient_auroc") -> pd.DataFrame:
    """Each comparison of :data:`CLAIMS` on each cohort at each budget, and whether it holds.

    table: the sweep's table (columns ``budget``, ``cohort``, ``method``, ``strategy``,
    ``metric`` and ``metric_std``). The verdict at a budget is
    :func:`u2ad_core.metrics.compare` of the two rows' fold means and stds ("better" /
    "worse" / "no clear difference" for the first row); "best baseline" is, at each budget, the
    reconstruction baseline row with the highest mean. Returns one row per (claim, cohort)
    with a column per budget and ``verdict``: "holds at every budget" when all budgets agree,
    "changes with the budget" when they do not, "not measured at every budget" when a row is
    missing or NaN at some budget.
    """

    t = table.copy()
    t["budget"] = t["budget"].astype(float)
    budgets = sorted(t["budget"].unique())
    out = []
    for claim, a, b in CLAIMS:
        for cohort in sorted(t["cohort"].unique()):
            row: dict[str, Any] = {"claim": claim, "cohort": cohort}
            verdicts = []
            for f in budgets:
                s = t[(t["cohort"] == cohort) & (t["budget"] == f)]
                ra = s[(s["method"] == a[0]) & (s["strategy"] == a[1])]
                if b[0] == "best baseline":
                    rb = s[~s["method"].isin(["U2AD", "Z-scoring"])].sort_values(metric, ascending=False).head(1)
                else:
                    rb = s[(s["method"] == b[0]) & (s["strategy"] == b[1])]
                if ra.empty or rb.empty:
                    v = "not measured"
                else:
                    v = compare(ra[metric].iloc[0], ra[f"{metric}_std"].iloc[0], rb[metric].iloc[0],
                                rb[f"{metric}_std"].iloc[0])
                    if b[0] == "best baseline":
                        v += f" (vs {rb['method'].iloc[0]} {rb['strategy'].iloc[0]})"
                row[f"{f:g}x"] = v
                verdicts.append(v.split(" (")[0])
            measured = [v for v in verdicts if v != "not measured"]
            if len(measured) < len(verdicts):
                row["verdict"] = "not measured at every budget"
            else:
                row["verdict"] = "holds at every budget" if len(set(measured)) == 1 else "changes with the budget"
            out.append(row)
    return pd.DataFrame(out)


def _cmd(args: argparse.Namespace) -> int:

    ctx = setup(preset=args.preset, device=args.device, seed=args.seed, data_dir=args.data_dir,
                run_dir=args.run_dir, show=True)
    factors = [float(f) for f in args.factors] if args.factors else None
    t0 = time.perf_counter()
    res = run_budget_sweep(ctx, factors=factors, workers=args.workers, force=args.force, verbose=True)
    print(f"u2ad budget: {len(res.ran)} point(s) run, {len(res.skipped)} reused, {time.perf_counter() - t0:.0f} s; "
          f"table: {res.csv}")
    claims = budget_claims(res.table)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 70):
        print(claims.to_string(index=False))
    return 0


def cli_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("budget", help="training-budget sweep: every epoch count x 0.5, 1, 2, 4 (make budget)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--run-dir", default="runs")
    p.add_argument("--factors", nargs="*", help="budget multipliers (default: the preset's grid)")
    p.add_argument("--workers", type=int, default=None, help="Dask worker processes (default: one per core)")
    p.add_argument("--force", action="store_true", help="re-run points that are already done")
    p.set_defaults(func=_cmd)
