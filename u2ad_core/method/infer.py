"""``u2ad infer``: run a trained model on new data and write maps, curves and scores.

Input is one of:
- a preprocessed dataset file (``.npz``, see CONTRIBUTING.md);
- one subject as NIfTI: a T2w volume plus its cord mask (``--mask``), optionally a label map
  with vertebral bodies / discs (``--labels``, the values of :mod:`u2ad_core.core.labels`) or a
  vertebral-level map (``--levels``, 2 = C2 ... 8 = T1) from which the segments C2-3 ... C7-T1
  are derived; without either the segment scores are NaN and only the patient score is
  meaningful;
- one of the U2AD authors' arrays (``.npy``, shape (3, 256, 256) = image, ROI, label map; read
  by :func:`u2ad_core.data.io.load_array`), or a folder of them (layout ``u2ad_arrays``), or any
  other cohort folder :mod:`u2ad_core.data.io` reads (phantom, BIDS, ``images/`` + ``labels/``). The
  label map gives the cord, CSF and segments; arrays whose cord is not labelled are skipped and
  listed (``infer.json``: ``skipped``). The patient label stays unknown (-1) unless a
  ``participants.tsv`` gives it: a label map without value 6 does not say "no hyperintensity".

NIfTI and array input go through the same preprocessing as the training data
(:func:`u2ad_core.data.preprocess.preprocess_subject`), with the preset's
:class:`~u2ad_core.core.config.DataConfig` and the model's image size, so the outputs are the same.

Outputs in ``--out`` (each written atomically)::
    maps.npz     images, maps (post-processed), raw_maps, recon (mean of K), eu, roi,
                 curves (N, H), point_segments (N, H), centreline (N, H), subject, slice_index
    curves.csv   long format: subject, slice, row, curve, segment
    scores.csv   subject, slice, patient_score, top_segment, C2-3 ... C7-T1
                 (+ patient_label, lesion_segments when the input has them)
    infer.json   what was run: checkpoint, input, settings (``score.sided``: the residual's sign,
                 ``--sided``), timings

Python: :func:`infer` returns the :class:`~u2ad_core.method.scoring.ScoreResult` and the paths.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from u2ad_core.core.config import to_dict
from u2ad_core.core.labels import SEGMENTS
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    resolve_device,
)
from u2ad_core.data.datasets import REQUIRED, SliceData, load_dataset
from u2ad_core.data.io import NIFTI_SUFFIXES, DataError, SubjectFiles, scan_cohort
from u2ad_core.data.preprocess import preprocess_subject
from u2ad_core.method.scoring import score_dataset
from u2ad_core.method.train import load_checkpoint

__all__ = ["infer", "load_input", "write_outputs", "cli_register"]

def _is_nifti(p: Path) -> bool:
    return p.name.endswith(NIFTI_SUFFIXES)


def load_input(
    input_path: str | Path,
    mask: str | Path | None = None,
    labels: str | Path | None = None,
    levels: str | Path | None = None,
    data_cfg=None,
    n_slices: int | None = None,
    middle_only: bool = False,
):
    """The slices to score, as a :class:`~u2ad_core.data.datasets.SliceData`.

    ``.npz``: :func:`u2ad_core.data.datasets.load_dataset` (``middle_only`` keeps the slices with
    ``slice_offset == 0``). NIfTI: image + cord ``mask`` (+ optional ``labels`` / ``levels``
    maps for the segments) through :func:`u2ad_core.data.preprocess.preprocess_subject` with
    ``data_cfg`` and ``n_slices`` middle sagittal slices (default ``data_cfg.slices_detect``).
    ``.npy`` (an authors' array) or a folder: every subject through the same preprocessing
    (:func:`_load_subjects`); the subjects that fail are listed in ``data.manifest["skipped"]``.
    Unreadable or inconsistent files raise :class:`u2ad_core.data.io.DataError` (a ``ValueError``)
    naming the file.
    """
    p = Path(input_path)
    if not p.exists():
        raise FileNotFoundError(f"--input {p}: no such file")
    if (p.suffix in (".npz", ".npy") or p.is_dir()) and (mask is not None or labels is not None
                                                         or levels is not None):
        raise ValueError(f"--input {p}: --mask / --labels / --levels are for NIfTI input; "
                         f"{'a .npz dataset' if p.suffix == '.npz' else 'an authors array or a cohort folder'} "
                         "already holds them")
    if p.suffix == ".npy" or p.is_dir():
        n = int(n_slices if n_slices is not None else data_cfg.slices_detect)
        return _load_subjects(p, data_cfg, n)
    if p.suffix == ".npz":
        data = load_dataset(p)
        return data.middle() if middle_only else data
    if _is_nifti(p):
        if mask is None:
            raise ValueError(f"--input {p} is NIfTI: pass its cord mask with --mask PATH")

        for what, q in (("--mask", mask), ("--labels", labels), ("--levels", levels)):
            if q is not None and not Path(q).is_file():
                raise FileNotFoundError(f"{what} {q}: no such file")
        name = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
        sf = SubjectFiles(subject=name, image=p, cord=Path(mask),
                          labels=None if labels is None else Path(labels),
                          levels=None if levels is None else Path(levels))
        n = int(n_slices if n_slices is not None else data_cfg.slices_detect)
        out = preprocess_subject(sf, data_cfg, n)
        return SliceData(**{f: out[f] for f in REQUIRED}, site=out.get("site"))
    raise ValueError(f"--input {p}: expected a preprocessed dataset (.npz), a NIfTI image (.nii, .nii.gz), "
                     "an authors' array (.npy) or a folder")


def _load_subjects(p: Path, data_cfg, n_slices: int):
    """An authors' array (``.npy``) or a cohort folder -> :class:`~u2ad_core.data.datasets.SliceData`.

    A file is one subject (its stem is the subject id); a folder is scanned by
    :func:`u2ad_core.data.io.scan_cohort` (any layout). Each subject goes through
    :func:`u2ad_core.data.preprocess.preprocess_subject` (``n_slices`` middle slices; an array has
    one). Subjects that raise :class:`~u2ad_core.data.io.DataError` (e.g. an array without cord
    label) are skipped and listed in ``manifest["skipped"]`` as ``{"subject", "error"}``; when
    every subject fails the first errors are raised as one ``DataError``.
    """

    if p.is_dir():
        subjects = scan_cohort(p).subjects
    else:
        subjects = [SubjectFiles(p.stem, p)]
    parts, skipped = [], []
    for sf in subjects:
        try:
            parts.append(preprocess_subject(sf, data_cfg, n_slices))
        except DataError as exc:
            skipped.append({"subject": sf.subject, "error": str(exc)})
    if not parts:
        msg = "; ".join(e["error"] for e in skipped[:3])
        raise DataError(f"--input {p}: no subject could be read ({len(skipped)} error(s)): {msg}")
    arrays = {f: np.concatenate([o[f] for o in parts]) for f in REQUIRED}
    site = np.concatenate([o["site"] for o in parts]).astype(str)
    data = SliceData(**arrays, site=site)
    data.manifest = {"input": str(p), "skipped": skipped,
                     "subjects": [{"subject": str(o["subject"][0]), "segments_source": o["segments_source"],
                                   "orientation": o["orientation"]} for o in parts]}
    return data


def _csv_bytes(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue().encode("utf-8")


def write_outputs(result, data, out_dir: str | Path, info: dict[str, Any]) -> dict[str, Path]:
    """Write maps.npz, curves.csv, scores.csv and infer.json (atomically) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = result.table
    paths = {k: out / v for k, v in (("maps", "maps.npz"), ("curves", "curves.csv"),
                                      ("scores", "scores.csv"), ("info", "infer.json"))}
    with atomic_path(paths["maps"], suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, images=np.asarray(data.images, np.float32), maps=result.maps,
                raw_maps=result.raw_maps, recon=result.recon,
                eu=result.eu if result.eu is not None else np.zeros_like(result.maps),
                roi=result.roi.astype(np.uint8), curves=result.curves.astype(np.float32),
                point_segments=result.point_segments.astype(np.uint8),
                centreline=result.centreline.astype(np.float32),
                subject=t["subject"].to_numpy(dtype=str), slice_index=t["slice_index"].to_numpy(dtype=np.int64),
            )
    n, h = result.curves.shape
    seg_names = np.array(("",) + SEGMENTS, dtype=object)
    curves = pd.DataFrame({
        "subject": np.repeat(t["subject"].to_numpy(dtype=str), h),
        "slice": np.repeat(t["slice_index"].to_numpy(dtype=np.int64), h),
        "row": np.tile(np.arange(h), n),
        "curve": result.curves.ravel(),
        "segment": seg_names[result.point_segments.ravel()],
    }).dropna(subset=["curve"])
    atomic_write_bytes(paths["curves"], _csv_bytes(curves))
    cols = ["subject", "slice_index", "patient_score", "top_segment", *SEGMENTS]
    if (t["patient_label"] >= 0).any():
        cols[2:2] = ["patient_label", "lesion_segments"]
    scores = t[cols].rename(columns={"slice_index": "slice"})
    atomic_write_bytes(paths["scores"], _csv_bytes(scores))
    atomic_write_json(paths["info"], info)
    return paths


def infer(
    checkpoint: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    mask: str | Path | None = None,
    labels: str | Path | None = None,
    levels: str | Path | None = None,
    preset: str = "cpu",
    k: int | None = None,
    mask_ratio: float | None = None,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    middle_only: bool = False,
    n_slices: int | None = None,
    score_overrides: dict[str, Any] | None = None,
):
    """Load ``checkpoint`` (:func:`u2ad_core.method.train.load_checkpoint`), score ``input_path``
    (:func:`load_input`, :func:`u2ad_core.method.scoring.score_dataset`) and write the outputs.

    ``preset`` supplies the score / MC / data settings (K, mask ratio, curve, erosion, the
    preprocessing of NIfTI input); the model configuration comes from the checkpoint.
    Returns ``(result, paths)``.
    """

    t0 = time.perf_counter()
    cfg = get_preset(preset)
    if score_overrides:
        cfg = cfg.override(**{f"score.{k_}": v for k_, v in score_overrides.items()})
    dev = resolve_device(device)
    ck = Path(checkpoint)
    if not ck.exists():
        raise FileNotFoundError(f"--checkpoint {ck}: no such file or run directory")
    model, info = load_checkpoint(ck, dev)
    data_cfg = replace(cfg.data, image_size=tuple(info["model_cfg"].image_size))
    data = load_input(input_path, mask, labels, levels, data_cfg, n_slices, middle_only)
    images = np.asarray(data.images)
    if tuple(images.shape[1:]) != tuple(info["model_cfg"].image_size):
        raise ValueError(
            f"--input {input_path}: slices are {tuple(images.shape[1:])} but the model in {ck} expects "
            f"{tuple(info['model_cfg'].image_size)}; preprocess the data with the model's preset"
        )
    kk = int(k if k is not None else cfg.score.k)
    ratio = float(mask_ratio if mask_ratio is not None else cfg.masking.mask_ratio)
    t1 = time.perf_counter()
    result = score_dataset(model, data, cfg.score, mc_k=kk, mask_ratio=ratio, device=dev, seed=seed,
                           batch_size=int(batch_size or cfg.mc.batch_size), ddof=cfg.mc.ddof)
    t2 = time.perf_counter()
    meta = {
        "checkpoint": str(info.get("path", ck)), "run_hash": info.get("run_hash"),
        "epoch": info.get("epoch"), "kind": info.get("kind"), "input": str(input_path),
        "mask": None if mask is None else str(mask), "labels": None if labels is None else str(labels),
        "levels": None if levels is None else str(levels),
        "preset": cfg.name, "score": to_dict(cfg.score), "k": kk, "mask_ratio": ratio, "seed": int(seed),
        "device": dev, "n_slices": int(len(images)), "skipped": data.manifest.get("skipped", []),
        "seconds_load": round(t1 - t0, 3),
        "seconds_score": round(t2 - t1, 3),
    }
    paths = write_outputs(result, data, out_dir, meta)
    return result, paths


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    overrides = {}
    if args.curve:
        overrides["curve"] = args.curve
    if args.erode is not None:
        overrides["erode_cord"] = args.erode
    if args.sided:
        overrides["sided"] = args.sided
    try:
        result, paths = infer(
            args.checkpoint, args.input, args.out, mask=args.mask, labels=args.labels, levels=args.levels,
            preset=args.preset, k=args.k, mask_ratio=args.mask_ratio, seed=args.seed,
            device=args.device, batch_size=args.batch_size, middle_only=args.middle,
            n_slices=args.slices, score_overrides=overrides,
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"u2ad infer: error: {exc}", file=sys.stderr)
        return 2
    t = result.table
    for sk in json.loads(paths["info"].read_text()).get("skipped", []):
        print(f"skipped {sk['subject']}: {sk['error']}", file=sys.stderr)
    print(f"scored {len(t)} slice(s); patient score max {np.nanmax(t['patient_score']):.4g}" if len(t) and
          np.isfinite(t["patient_score"]).any() else f"scored {len(t)} slice(s)")
    for name, p in paths.items():
        print(f"  {name}: {p}")
    return 0


def cli_register(subparsers) -> None:
    """Add ``u2ad infer``."""
    p = subparsers.add_parser(
        "infer", help="anomaly maps, curves and scores of a trained model on new data",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--checkpoint", required=True, help="run directory, model.pt or checkpoint.pt")
    p.add_argument("--input", required=True,
                   help="preprocessed dataset (.npz), a NIfTI T2w image, an authors' array (.npy) or a folder "
                        "of them (or any cohort folder u2ad preprocess reads)")
    p.add_argument("--mask", default=None, help="cord mask NIfTI (required for NIfTI input)")
    p.add_argument("--labels", default=None,
                   help="optional label-map NIfTI (2 = vertebral body, 1 = disc, ...) for the segments")
    p.add_argument("--levels", default=None, help="optional vertebral-level NIfTI (2 = C2 ... 8 = T1) for the segments")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="cpu", help="preset for score, MC and preprocessing settings (default cpu)")
    p.add_argument("--k", type=int, default=None, help="MC reconstructions per patch (default: preset score.k)")
    p.add_argument("--mask-ratio", type=float, default=None, help="MC mask ratio (default: preset)")
    p.add_argument("--curve", choices=("centreline", "rows"), default=None, help="anomaly-curve geometry")
    p.add_argument("--erode", type=int, default=None, help="cord erosion iterations before scoring")
    p.add_argument("--sided", choices=("abs", "bright"), default=None,
                   help="sign of the residual map: abs = |x - x_hat| (paper), bright = max(x - x_hat, 0) "
                        "(hyperintensities only); default: the preset's score.sided")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--middle", action="store_true", help=".npz input: score only the middle slices (offset 0)")
    p.add_argument("--slices", type=int, default=None,
                   help="NIfTI / folder input: middle sagittal slices to score (an authors' array has one)")
    p.set_defaults(func=_cli)
