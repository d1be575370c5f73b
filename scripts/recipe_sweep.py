"""Pretraining recipes against the trivial predictors of a healthy cord (groundwork of the
competent-model work): for each recipe, pretrain EdgeMAE (the S1 model) with the preset plus the
recipe's dotted overrides, then measure its K-pass Monte-Carlo mean reconstruction on the middle
slices of a clinical cohort's lesion-free patients with :mod:`u2ad_core.metrics.residuals`
(interior / edge RMS residual over the slice's cord mean, against the cord-mean and running-mean
predictors). One CSV row per recipe, with the optimiser steps and the training seconds.

    python scripts/recipe_sweep.py --preset cpu --out runs/recipes [--recipes base e40 ...]

Runs are cached by the run store (a finished recipe is reused), so the sweep can be stopped and
started again. Nothing here is read by the book; it is a measuring script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import load_dataset, prepare_all
from u2ad_core.method.mcmaps import mc_maps
from u2ad_core.method.train import pretrain, strategy_model
from u2ad_core.metrics import residuals as R

NR = {"pretrain.renormalize": False, "adapt.renormalize": False}  # keep the brightness / contrast draws
A12 = {"adapt.epochs": 12, "adapt.stage2_start": 8, "adapt.refresh_every": 4, "adapt.lr_step": 6,
       "adapt.checkpoint_every": 4, "adapt.snapshot_every": 4}  # half the cpu adaptation, 3 refreshes as before
# name -> dotted overrides on the preset (the cpu preset pretrains 20 epochs, lr 1e-3, step 15)
RECIPES: dict[str, dict] = {
    "base": {},
    "e10": {"pretrain.epochs": 10, "pretrain.lr_step": 8},
    "e40": {"pretrain.epochs": 40, "pretrain.lr_step": 30},
    "e80": {"pretrain.epochs": 80, "pretrain.lr_step": 60},
    "lr3e-4": {"pretrain.lr": 3e-4},
    "noaug": {"pretrain.brightness": (1.0, 1.0), "pretrain.contrast": (1.0, 1.0), "pretrain.noise_std": 0.0},
    "data2x": {"data.cohorts.spine_generic_like": 80},
    "data2x-e40": {"data.cohorts.spine_generic_like": 80,
                   "pretrain.epochs": 40, "pretrain.lr_step": 30},
    "norenorm": {"pretrain.renormalize": False},
    "e60": {"pretrain.epochs": 60, "pretrain.lr_step": 45},
    "norenorm-e60": {"pretrain.renormalize": False, "pretrain.epochs": 60, "pretrain.lr_step": 45},
    "data3x": {"data.cohorts.spine_generic_like": 120},
    "nr": NR,
    "nr-a12": {**NR, **A12},
    "nr-e60-a12": {**NR, **A12, "pretrain.epochs": 60, "pretrain.lr_step": 45},
    "e60-a12": {**A12, "pretrain.epochs": 60, "pretrain.lr_step": 45},
    # context radius 1: about half the tokens (the ROI patches and their 8 neighbours), so about
    # twice the steps for the same minutes
    "nr-c1-e40-a48": {**NR, "model.context_radius": 1, "pretrain.epochs": 40, "pretrain.lr_step": 30,
                      "adapt.epochs": 48, "adapt.stage2_start": 32, "adapt.refresh_every": 16, "adapt.lr_step": 24,
                      "adapt.checkpoint_every": 16, "adapt.snapshot_every": 8},
    # on the cpu preset as it is now (which has the recipe above): longer pretraining only
    "cpu-e80": {"pretrain.epochs": 80, "pretrain.lr_step": 60},
    "cpu-e160": {"pretrain.epochs": 160, "pretrain.lr_step": 120},
    "cpu-e160-a24": {"pretrain.epochs": 160, "pretrain.lr_step": 120, "adapt.epochs": 24, "adapt.lr_step": 12,
                     "adapt.stage2_start": 16, "adapt.refresh_every": 8, "adapt.checkpoint_every": 8},
    "cpu-e120": {"pretrain.epochs": 120, "pretrain.lr_step": 90},
    "cpu-e160-s16": {"pretrain.epochs": 160, "pretrain.lr_step": 120, "adapt.lr_step": 16},
    # the same, adapted 4x as long (lr 1e-3 / 1e-4 / 1e-5 every 64 epochs): where does the residual settle?
    "nr-c1-e40-a192": {**NR, "model.context_radius": 1, "pretrain.epochs": 40, "pretrain.lr_step": 30,
                       "adapt.epochs": 192, "adapt.stage2_start": 128, "adapt.refresh_every": 32, "adapt.lr_step": 64,
                       "adapt.checkpoint_every": 32, "adapt.snapshot_every": 16},
    "lr3e-3": {"pretrain.lr": 3e-3},
}
DIM = 0.15  # a slice whose cord mean is below this counts as a dim cord


def healthy_middle(data_path: Path):
    """Middle slices of the lesion-free patients: ``(images, cord, subject)``, (M, H, W)."""
    data = load_dataset(data_path)
    sel = (np.asarray(data.slice_offset) == 0) & (np.asarray(data.patient_label) == 0)
    return data, sel


def residual_row(model_name: str, run_path: Path, model, cfg, data, sel, device: str) -> dict:
    """The residual numbers of one model's K-pass MC mean on the selected slices."""
    mean = mc_maps(run_path, data, cfg, device=device, model=model).mean.numpy()[sel]
    x, cord, subj = data.images[sel], data.cord[sel], np.asarray(data.subject)[sel]
    row: dict = {"model": model_name}
    for st in ("pooled", "median"):
        df = R.compare_predictors(x, cord, {model_name: mean}, lesion=data.lesion[sel], groups=subj, statistic=st)
        row[f"interior_{st}"] = float(df.loc[model_name, "interior"])
        row[f"ratio_{st}"] = float(df.loc[model_name, "interior_ratio"])
        row[f"edge_{st}"] = float(df.loc[model_name, "edge"])
        row[f"cordmean_interior_{st}"] = float(df.loc["cord mean", "interior"])
        row[f"running_interior_{st}"] = float(df.loc[[i for i in df.index if i.startswith("running")][0], "interior"])
    t = R.residual_table(x, mean, cord, groups=subj)
    t = t[t.level == "slice"]
    dim = t.cord_mean.to_numpy() < DIM
    row["n_dim"] = int(dim.sum())
    row["interior_dim_median"] = float(np.median(t.interior[dim])) if dim.any() else np.nan
    row["interior_bright_median"] = float(np.median(t.interior[~dim]))
    row["bias_cord"] = float((mean - x)[cord > 0].mean())
    return row


def measure(recipe: str, preset_name: str, out: Path, cohort: str, device: str, s3: bool) -> list[dict]:
    cfg = get_preset(preset_name, **RECIPES[recipe])
    paths = prepare_all(cfg, out / "data" / preset_name, seed=cfg.seed, verbose=False, show_progress=False)
    t0 = time.perf_counter()
    res = pretrain(cfg, paths["spine_generic_like"], out / "runs", device=device,  # the name strategy_model reuses
                   show_progress=False)
    base = {"recipe": recipe, "reused": res.reused, "train_s": round(time.perf_counter() - t0, 1),
            "steps": int(cfg.pretrain.epochs) * -(-len(load_dataset(paths["spine_generic_like"]).images)
                                                  // cfg.pretrain.batch_size),
            "final_loss": float(res.history[-1].get("loss", np.nan)) if res.history else np.nan}
    data, sel = healthy_middle(paths[cohort])
    rows = [{**base, **residual_row("S1", res.run_path, res.model, cfg, data, sel, device)}]
    if s3:
        t0 = time.perf_counter()
        model, run_path = strategy_model(cfg, cohort, "S3", data_dir=out / "data" / preset_name,
                                         run_dir=out / "runs", device=device, show_progress=False)
        n_adapt = len(data.images)
        rows.append({**base, "train_s": round(time.perf_counter() - t0, 1),
                     "steps": int(cfg.adapt.epochs) * -(-n_adapt // cfg.adapt.batch_size), "final_loss": np.nan,
                     **residual_row("S3", run_path, model, cfg, data, sel, device)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--cohort", default="renji_like")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    ap.add_argument("--s3", action="store_true", help="also adapt (S3, U2AD masking) and measure it")
    ap.add_argument("--csv", default="recipes.csv")
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    for r in args.recipes:
        if r not in RECIPES:
            print(f"unknown recipe {r!r}; choose from {list(RECIPES)}", file=sys.stderr)
            return 2
        rows += measure(r, args.preset, out, args.cohort, args.device, args.s3)
        df = pd.DataFrame(rows)
        df.to_csv(out / args.csv, index=False)
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(df.round(4).to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
