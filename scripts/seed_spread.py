"""How much does the adapted model's healthy-cord residual depend on the training seed?

For each seed: pretrain and adapt (S3, U2AD masking) with the preset plus ``--set`` overrides,
the data fixed (the preset's seed: the same phantom cohorts for every training seed), then the
interior residual of the K-pass MC mean on renji_like's lesion-free patients' middle slices
(:func:`u2ad_core.metrics.residuals.check_dataset`). One line per seed (and a CSV row with
``--csv``). ``--init RUN`` adapts from a finished pretraining run instead of pretraining (the
spread of the adaptation alone, ~1.5 min per seed on one core).

    OMP_NUM_THREADS=1 python scripts/seed_spread.py 1 [--preset cpu] [--out runs/recipes]
        [--init runs/cpu/pretrain-XXXX] [--set adapt.epochs=96 ...] [--tag NAME --csv F]

Before 2026-12-07 (second session) this script let the training seed also draw the phantom
(``prepare_all(seed=...)``), so seeds 1 and 2 adapted on other patients than the ones measured:
their 1.18 / 1.14 measured generalisation to unseen patients, not the seed spread.
Nothing here is read by the book.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import load_dataset, prepare_all
from u2ad_core.method.mcmaps import mc_maps
from u2ad_core.method.train import _parse_sets, adapt, strategy_model
from u2ad_core.metrics import residuals as R


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/recipes")
    ap.add_argument("--data", default=None, help="data folder (default OUT/data/PRESET)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default=None, help="a finished pretraining run: adapt only")
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides, e.g. adapt.epochs=72")
    ap.add_argument("--tag", default="base")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, out = get_preset(args.preset, **_parse_sets(args.set)), Path(args.out)
    data_dir = Path(args.data) if args.data else out / "data" / cfg.name
    paths = prepare_all(cfg, data_dir, seed=cfg.seed, verbose=False, show_progress=False)
    run_dir = out / f"seed{args.seed}"
    t0 = time.perf_counter()
    if args.init:
        res = adapt(cfg, paths["renji_like"], run_dir, init=args.init, masking="u2ad", name="renji_like-S3-u2ad",
                    device="cpu", seed=args.seed, show_progress=False)
        model, run_path = res.model, res.run_path
    else:
        model, run_path = strategy_model(cfg, "renji_like", "S3", data_dir=data_dir, run_dir=run_dir, device="cpu",
                                         seed=args.seed, show_progress=False, paths=paths)
    train_s = time.perf_counter() - t0
    data = load_dataset(paths["renji_like"])
    mean = mc_maps(run_path, data, cfg, device="cpu", model=model).mean.numpy()
    row = R.check_dataset(data, {"S3": mean}).loc["S3"]
    print(f"{args.tag} seed {args.seed}: interior {row['interior']:.4f}, edge {row['edge']:.4f}, "
          f"ratio to the cord-mean predictor {row['interior_ratio']:.3f} ({row['verdict']}), "
          f"trained in {train_s:.0f} s", flush=True)
    if args.csv:
        line = f"{args.tag},{args.seed},{row['interior']:.5f},{row['edge']:.5f},{row['interior_ratio']:.4f},{train_s:.1f}\n"
        new = not Path(args.csv).exists()
        with open(args.csv, "a") as fh:
            fh.write(("tag,seed,interior,edge,ratio,train_s\n" if new else "") + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
