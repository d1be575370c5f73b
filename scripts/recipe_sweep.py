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
from u2ad_core.method.train import pretrain
from u2ad_core.metrics import residuals as R

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
    "lr3e-3": {"pretrain.lr": 3e-3},
}
DIM = 0.15  # a slice whose cord mean is below this counts as a dim cord


def healthy_middle(data_path: Path):
    """Middle slices of the lesion-free patients: ``(images, cord, subject)``, (M, H, W)."""
    data = load_dataset(data_path)
    sel = (np.asarray(data.slice_offset) == 0) & (np.asarray(data.patient_label) == 0)
    return data, sel


def measure(recipe: str, preset_name: str, out: Path, cohort: str, device: str) -> dict:
    cfg = get_preset(preset_name, **RECIPES[recipe])
    paths = prepare_all(cfg, out / "data" / preset_name, seed=cfg.seed)
    t0 = time.perf_counter()
    res = pretrain(cfg, paths["spine_generic_like"], out / "runs", name=f"pretrain-{recipe}", device=device,
                   show_progress=False)
    train_s = time.perf_counter() - t0
    data, sel = healthy_middle(paths[cohort])
    mean = mc_maps(res.run_path, data, cfg, device=device, model=res.model).mean.numpy()[sel]
    x, cord, subj = data.images[sel], data.cord[sel], np.asarray(data.subject)[sel]
    row = {"recipe": recipe, "reused": res.reused, "train_s": round(train_s, 1),
           "steps": int(cfg.pretrain.epochs) * -(-len(load_dataset(paths["spine_generic_like"]).images) // cfg.pretrain.batch_size),
           "final_loss": float(res.history[-1].get("loss", np.nan)) if res.history else np.nan}
    for st in ("pooled", "median"):
        df = R.compare_predictors(x, cord, {"S1": mean}, lesion=data.lesion[sel], groups=subj, statistic=st)
        row[f"interior_{st}"] = float(df.loc["S1", "interior"])
        row[f"ratio_{st}"] = float(df.loc["S1", "interior_ratio"])
        row[f"edge_{st}"] = float(df.loc["S1", "edge"])
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--cohort", default="renji_like")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES))
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    for r in args.recipes:
        if r not in RECIPES:
            print(f"unknown recipe {r!r}; choose from {list(RECIPES)}", file=sys.stderr)
            return 2
        rows.append(measure(r, args.preset, out, args.cohort, args.device))
        df = pd.DataFrame(rows)
        df.to_csv(out / "recipes.csv", index=False)
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(df.round(4).to_string(index=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
