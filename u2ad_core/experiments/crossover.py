"""When does uncertainty-guided reconstruction beat an intensity threshold? (notebook 10)

The phantom's difficulty knobs (:class:`u2ad_core.core.config.PhantomConfig`) are varied on a grid
(lesion conspicuity x compression-lesion coupling x artefacts) and, at every grid point, the
same detectors score the same clinical cohort (``renji_like`` by default) regenerated with
those knobs. The subjects are paired across points: a knob changes only what it names
(:mod:`u2ad_core.data.phantom`). The healthy cohorts do not depend on the knobs, so every model
trained on them (the U2AD pretraining, i.e. strategy S1, and the reconstruction baseline's S1)
is trained once and reused at every point.

Detectors at each point, all scored with U2AD's post-processing, curve and 5-fold CV:

==================  ===========================================================================
``U2AD S1``         the pretrained EdgeMAE, Monte-Carlo mean of K reconstructions (no adaptation)
``U2AD S3``         the same, adapted on the point's cohort with U2AD masking (where the grid says)
``U2AD S3*``        the book's S3 model, adapted once on the default-knob cohort, at every point
                    (what a model adapted on one clinical set does when the data change)
``Z-scoring``       per-image z-score of cord intensities (paper B.3; no training)
``<baseline> S1``   the best reconstruction baseline of notebook 09, pretrained on healthy data
``morphology``      cord + CSF width only, no intensity: what anatomy alone explains
==================  ===========================================================================

Measured per detector: patient AUROC (mean and std over the CV's test folds, and pooled over
all patients), pixel AUPRC and AUROC over the cord pixels of the middle slices (mean and std
over the same patient folds, and pooled), and the compression-only AUROC of the cohort (the
confound's size at that point).

:func:`evaluate_point` does one point (the body of ``notebooks/points/crossover_point.ipynb``,
which ``u2ad sweep`` runs on Dask); :func:`crossover_table` and :func:`crossover_statements`
turn the gathered sweep table into the comparisons the notebook states.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from u2ad_core.baselines import anomaly_maps, baseline_model
from u2ad_core.baselines.common import evaluate_maps
from u2ad_core.baselines.morphology import compression_scores
from u2ad_core.core.config import INHOMOGENEITY, KNOBS
from u2ad_core.data.datasets import load_dataset, prepare_all
from u2ad_core.method.scoring import anomaly_map
from u2ad_core.method.train import adapt, load_checkpoint, mc_maps, pretrain
from u2ad_core.metrics import compare, pixel_metrics, stratified_folds

__all__ = [
    "KNOBS",
    "INHOMOGENEITY",
    "pixel_metrics_by_fold",
    "evaluate_point",
    "crossover_table",
    "crossover_statements",
    "paired_verdict",
]

def pixel_metrics_by_fold(maps: np.ndarray, lesion: np.ndarray, roi: np.ndarray, subject: np.ndarray,
                          patient_label: np.ndarray, n_folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Pixel AUPRC / AUROC pooled over all slices, and their mean and std over patient folds.

    maps, lesion, roi: ``(N, H, W)``; subject, patient_label: ``(N,)`` per slice. The folds are
    :func:`u2ad_core.metrics.stratified_folds` over patients (the CV's split for ``seed``);
    a fold without lesion pixels has no AUPRC and is left out of the mean and std.
    """

    pooled = pixel_metrics(maps, lesion, roi)
    subjects, first = np.unique(np.asarray(subject), return_index=True)
    labels = (np.asarray(patient_label)[first] == 1).astype(int)
    per_fold = []
    for te in stratified_folds(labels, n_folds, seed):
        sel = np.isin(np.asarray(subject), subjects[te])
        per_fold.append(pixel_metrics(maps[sel], lesion[sel], roi[sel]))
    ap = np.array([f["auprc"] for f in per_fold], float)
    au = np.array([f["auroc"] for f in per_fold], float)
    return {
        "pixel_auprc": pooled["auprc"], "pixel_auroc": pooled["auroc"],
        "pixel_auprc_fold_mean": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "pixel_auprc_fold_std": float(np.nanstd(ap, ddof=1)) if np.isfinite(ap).sum() > 1 else float("nan"),
        "pixel_auroc_fold_mean": float(np.nanmean(au)) if np.isfinite(au).any() else float("nan"),
        "pixel_auroc_fold_std": float(np.nanstd(au, ddof=1)) if np.isfinite(au).sum() > 1 else float("nan"),
        "lesion_prevalence_pixels": pooled["n_lesion_pixels"] / max(pooled["n_pixels"], 1),
    }


def _row(name: str, maps: np.ndarray, data, preset, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:

    res, cv, tf = evaluate_maps(maps, data, preset)
    s = cv.summary()
    return {
        "method": name,
        "_fold_auroc": cv.folds["patient_auroc"].to_numpy(dtype=np.float64),
        "patient_auroc": float(s.loc["patient_auroc", "mean"]),
        "patient_auroc_std": float(s.loc["patient_auroc", "std"]),
        "patient_auroc_pooled": float(tf["auroc"]),
        "patient_auprc_pooled": float(tf["auprc"]),
        "segment_f1_honest": float(s.loc["segment_f1_honest", "mean"]),
        "segment_f1_honest_std": float(s.loc["segment_f1_honest", "std"]),
        **pixel_metrics_by_fold(res.raw_maps, data.lesion, res.roi, data.subject, data.patient_label,
                                preset.eval.n_folds, preset.seed),
        "seconds": round(seconds, 2),
        **extra,
    }


def evaluate_point(ctx, recon_method: str = "dae", s3: bool = False, cohort: str | None = None,
                   s3_reference: str | Path | None = None, show_progress: bool = False) -> list[dict[str, Any]]:
    """Score every detector on one knob setting (``ctx.preset.data.phantom``); one row each.

    ctx: a :class:`u2ad_core.core.context.RunContext` (preset with the point's knobs, data_dir,
    run_dir shared with the book so the pretrained models are found, device, seed).
    recon_method: the reconstruction baseline (a :data:`u2ad_core.baselines.UAD_METHODS` name);
    s3: also adapt U2AD on this point's cohort (strategy S3); s3_reference: a finished S3 run
    (adapted on the default-knob cohort) scored here as ``U2AD S3*``. Rows carry ``method``, the
    metrics of :func:`_row`, ``seconds`` and the cohort's ``compression_auroc``.
    """


    cfg = ctx.preset
    grid = cfg.grids.crossover
    cohort = cohort or grid.cohort
    paths = prepare_all(cfg, ctx.data_dir, seed=ctx.seed, cohorts=["spine_generic_like", cohort],
                        verbose=False, show_progress=False)
    full = load_dataset(paths[cohort])
    d = full.middle()
    labels = d.patient_label == 1
    comp = compression_scores(d.cord > 0, d.csf > 0)
    ok = np.isfinite(comp)
    extra = {"cohort": cohort, "n_patients": int(len(d)), "n_positive": int(labels.sum()),
             "compression_auroc": float(roc_auc_score(labels[ok], comp[ok])) if labels[ok].any() and (~labels[ok]).any()
             else float("nan")}
    rows = []

    t0 = time.perf_counter()
    pre = pretrain(cfg, paths["spine_generic_like"], ctx.run_dir, device=ctx.device, seed=ctx.seed,
                   show_progress=show_progress)
    m = mc_maps(pre.run_path, d, cfg, device=ctx.device, model=pre.model)
    rows.append(_row("U2AD S1", anomaly_map(d.images, m.mean.numpy(), d.cord > 0, cfg.score.sided), d, cfg,
                     time.perf_counter() - t0, extra))
    if s3:
        t0 = time.perf_counter()
        res = adapt(cfg, paths[cohort], ctx.run_dir, init=pre.run_path, masking="u2ad",
                    name=f"crossover-{cohort}-S3-u2ad", device=ctx.device, seed=ctx.seed, show_progress=show_progress)
        m = mc_maps(res.run_path, d, cfg, device=ctx.device, model=res.model)
        rows.append(_row("U2AD S3", anomaly_map(d.images, m.mean.numpy(), d.cord > 0, cfg.score.sided), d, cfg,
                         time.perf_counter() - t0, extra))
    if s3_reference:
        t0 = time.perf_counter()
        model_ref, _ = load_checkpoint(s3_reference, ctx.device)
        m = mc_maps(s3_reference, d, cfg, device=ctx.device, model=model_ref)
        rows.append(_row("U2AD S3*", anomaly_map(d.images, m.mean.numpy(), d.cord > 0, cfg.score.sided), d, cfg,
                         time.perf_counter() - t0, extra))
    t0 = time.perf_counter()
    _, maps = anomaly_maps("zscore", None, d, sided=cfg.score.sided)
    rows.append(_row("Z-scoring", maps, d, cfg, time.perf_counter() - t0, extra))
    t0 = time.perf_counter()
    model, _ = baseline_model(ctx, recon_method, cohort, "S1", paths=paths, show_progress=show_progress)
    _, maps = anomaly_maps(recon_method, model, d, device=ctx.device, seed=ctx.seed, sided=cfg.score.sided)
    rows.append(_row(f"{recon_method.upper()} S1", maps, d, cfg, time.perf_counter() - t0,
                     {**extra, "family": "reconstruction baseline"}))
    t0 = time.perf_counter()
    _, maps = anomaly_maps("morphology", None, d)
    rows.append(_row("morphology", maps, d, cfg, time.perf_counter() - t0, extra))
    family = {"U2AD S1": "U2AD", "U2AD S3": "U2AD", "U2AD S3*": "U2AD", "Z-scoring": "intensity threshold",
              "morphology": "anatomy only"}
    for r in rows:
        r.setdefault("family", family.get(r["method"], "reconstruction baseline"))
    # paired differences over the same CV folds (same patients, same split): the spread of a
    # difference between two detectors is much smaller than either one's fold std
    ref = {r["method"]: r["_fold_auroc"] for r in rows}
    for r in rows:
        for other, tag in (("Z-scoring", "z"), ("morphology", "morph"), (f"{recon_method.upper()} S1", "recon")):
            dlt = r["_fold_auroc"] - ref[other]
            ok = np.isfinite(dlt)
            r[f"auroc_minus_{tag}"] = float(dlt[ok].mean()) if ok.any() else float("nan")
            r[f"auroc_minus_{tag}_std"] = float(dlt[ok].std(ddof=1)) if ok.sum() > 1 else float("nan")
    for r in rows:
        del r["_fold_auroc"]
    return rows


def crossover_table(table: pd.DataFrame) -> pd.DataFrame:
    """Tidy sweep table -> one row per (knob point, method) with short knob column names.

    table: the ``results.csv`` of the sweeps (columns ``data.phantom.*``, ``method``, metrics).
    """
    t = table.rename(columns={k: k.rsplit(".", 1)[-1] for k in (*KNOBS, INHOMOGENEITY)}).copy()
    if "inhomogeneity" not in t.columns:
        t["inhomogeneity"] = 1.0
    t["inhomogeneity"] = t["inhomogeneity"].fillna(1.0).astype(float)
    t = t.rename(columns={"lesion_conspicuity": "conspicuity"})
    t["artefacts"] = t["artefacts"].map(lambda v: "on" if str(v).lower() in {"true", "1"} else "off")
    first = ["conspicuity", "coupling", "artefacts", "inhomogeneity", "method", "family"]
    keep = first + [c for c in t.columns if c not in set(first)]
    return t[[c for c in keep if c in t.columns]]


def paired_verdict(diff_mean: float, diff_std: float) -> str:
    """"better" / "worse" when a paired difference's mean exceeds its spread (std over the
    folds of the differences), else "no clear difference" (NaN: "not measured")."""

    return compare(diff_mean, diff_std, 0.0, 0.0)


def crossover_statements(t: pd.DataFrame, a: str, b: str, metric: str = "patient_auroc",
                         spread: str = "patient_auroc_std", axes: Sequence[str] = ("conspicuity", "coupling", "artefacts")
                         ) -> pd.DataFrame:
    """Method ``a`` against ``b`` at every point where both were run: the gap, the larger fold
    std and the verdict of :func:`u2ad_core.metrics.compare` ("better" / "worse" /
    "no clear difference"), one row per point."""

    left = t[t["method"] == a].set_index(list(axes))
    right = t[t["method"] == b].set_index(list(axes))
    idx = left.index.intersection(right.index)
    rows = []
    for key in idx:
        la, rb = left.loc[key], right.loc[key]
        rows.append({**dict(zip(axes, key if isinstance(key, tuple) else (key,))),
                     a: la[metric], b: rb[metric], "gap": la[metric] - rb[metric],
                     "spread": max(la[spread], rb[spread]),
                     "verdict": compare(la[metric], la[spread], rb[metric], rb[spread])})
    return pd.DataFrame(rows)
