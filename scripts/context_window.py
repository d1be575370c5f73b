"""Detection cost and speed of the context window (``model.context_radius``) against the full model.

    python scripts/context_window.py --radius 3 [--preset cpu] [--cohort renji_like] [--s1-only]
        [--set pretrain.epochs=8 ...] [--json OUT]

Both models are trained the same way on the same data, from the same seed: the given preset
(default ``cpu``: its model size and epochs) on the paper's geometry (1 mm pixels, 256 x 256
centre crop, ``--size``), pretrained on the healthy cohort (strategy S1) and adapted with U2AD's
masking on ``--cohort`` (S3, unless ``--s1-only``). Each is then scored on the middle slices of
the cohort (K = the preset's ``score.k``) under the book's protocol (notebook 07: 5-fold CV,
the preset's repeats). Printed: training seconds, MC seconds per image, patient AUROC (over all
patients and mean +- std over the test folds) and the verdict of
:func:`u2ad_core.metrics.compare`. Everything is cached under ``runs/`` like the book's runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(radius: int, preset: str, cohort: str, size: int, seed: int, s1_only: bool, device: str,
        extra_overrides: dict | None = None) -> dict:
    import torch

    from u2ad_core import metrics as ev
    from u2ad_core.data.datasets import load_dataset, prepare_all
    from u2ad_core.book.notebook import setup
    from u2ad_core.method.scoring import score_dataset
    from u2ad_core.method.train import strategy_model
    from u2ad_core.method.uncertainty import mc_uncertainty
    from u2ad_core.core.runtime import make_generator

    geometry = {"data.crop": "centre", "data.image_size": [size, size], "model.image_size": [size, size],
                **(extra_overrides or {})}
    out = {"preset": preset, "cohort": cohort, "size": size, "radius": radius, "seed": seed,
           "strategy": "S1" if s1_only else "S3", "torch_threads": torch.get_num_threads(),
           "overrides": geometry, "rows": {}}
    for name, extra in (("full", {}), (f"window r={radius}", {"model.context_radius": radius})):
        ctx = setup(preset=preset, device=device, seed=seed, overrides={**geometry, **extra}, show=False)
        cfg = ctx.preset
        paths = prepare_all(cfg, ctx.data_dir, seed=ctx.seed)
        t0 = time.perf_counter()
        model, run_path = strategy_model(ctx, cohort, out["strategy"], show_progress=False)
        t_train = time.perf_counter() - t0
        done = json.loads((run_path / "done.json").read_text()) if (run_path / "done.json").is_file() else {}
        data = load_dataset(paths[cohort]).middle()
        t0 = time.perf_counter()
        mc = mc_uncertainty(model, data.images, data.cord > 0, k=cfg.score.k, mask_ratio=cfg.masking.mask_ratio,
                            generator=make_generator(ctx.seed), ddof=cfg.mc.ddof, device=ctx.device,
                            batch_size=cfg.mc.batch_size)
        t_mc = time.perf_counter() - t0
        res = score_dataset(model, data, cfg.score, mc=mc)
        cv = ev.cross_validate(res.table, cfg.eval.n_folds, cfg.eval.n_repeats, cfg.eval.sensitivity, ctx.seed,
                               cfg.eval.segment_rule)
        summ = cv.summary()
        keep = model.context_patches(model.roi_patches(torch.as_tensor(data.cord > 0)))
        tokens = float(keep.sum(1).float().mean()) if keep is not None else float(model.num_patches)
        out["rows"][name] = {
            "train_seconds_this_call": t_train,
            "train_wall_s": done.get("wall_s"),
            "mc_seconds_per_image": t_mc / len(data.images),
            "mean_patches_in_window": tokens,
            "patient_auroc_all": ev.threshold_free(res.table)["auroc"],
            "patient_auroc_fold_mean": float(summ.loc["patient_auroc", "mean"]),
            "patient_auroc_fold_std": float(summ.loc["patient_auroc", "std"]),
            "n_patients": int(len(data.images)),
        }
    full, win = out["rows"]["full"], out["rows"][f"window r={radius}"]
    out["speedup_mc"] = full["mc_seconds_per_image"] / win["mc_seconds_per_image"]
    out["verdict_auroc"] = ev.compare(win["patient_auroc_fold_mean"], win["patient_auroc_fold_std"],
                                      full["patient_auroc_fold_mean"], full["patient_auroc_fold_std"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--radius", type=int, default=3, help="context radius in patches (default 3)")
    p.add_argument("--preset", default="cpu", help="model size and epochs (default cpu)")
    p.add_argument("--cohort", default="renji_like")
    p.add_argument("--size", type=int, default=256, help="square crop in pixels (default 256, the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--s1-only", action="store_true", help="pretrained models only (no adaptation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more dotted preset overrides for both models, e.g. pretrain.epochs=8")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    from u2ad_core.book.sweep import parse_value

    extra = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key] = parse_value(value)
    out = run(a.radius, a.preset, a.cohort, a.size, a.seed, a.s1_only, a.device, extra)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
