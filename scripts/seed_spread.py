"""How much does the adapted model's healthy-cord residual depend on the training seed?

For each seed: pretrain and adapt (S3, U2AD masking) with the preset as it is, the data fixed
(the preset's seed), then the interior residual of the K-pass MC mean on renji_like's lesion-free
patients' middle slices (:func:`u2ad_core.metrics.residuals.check_dataset`). One line per seed.

    OMP_NUM_THREADS=1 python scripts/seed_spread.py 1 [--preset cpu] [--out runs/recipes]

Measured 2026-12-07 (cpu preset of that day, 1 thread each): seed 0 0.899, seed 1 1.182, seed 2
1.135 (ratio to the cord-mean predictor); the book's own seed-0 run (2-thread pretraining) 0.938.
Nothing here is read by the book.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import load_dataset, prepare_all
from u2ad_core.method.mcmaps import mc_maps
from u2ad_core.method.train import strategy_model
from u2ad_core.metrics import residuals as R


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, out = get_preset(args.preset), Path(args.out)
    data_dir = out / "data" / cfg.name
    paths = prepare_all(cfg, data_dir, seed=cfg.seed, verbose=False, show_progress=False)
    model, run_path = strategy_model(cfg, "renji_like", "S3", data_dir=data_dir, run_dir=out / f"seed{args.seed}",
                                     device="cpu", seed=args.seed, show_progress=False)
    data = load_dataset(paths["renji_like"])
    mean = mc_maps(run_path, data, cfg, device="cpu", model=model).mean.numpy()
    row = R.check_dataset(data, {"S3": mean}).loc["S3"]
    print(f"seed {args.seed}: interior {row['interior']:.4f}, edge {row['edge']:.4f}, "
          f"ratio to the cord-mean predictor {row['interior_ratio']:.3f} ({row['verdict']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
