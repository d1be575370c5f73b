"""Supervised object detectors trained from scratch (paper Table 2, Appendix B.2).

The paper compares U2AD with supervised detectors trained on boxes: for every vertebral
segment with a lesion, the smallest rectangle around the spinal-cord pixels of that segment.
The usual implementations come from torchvision, which must be built for the exact torch
release beside it (not available for this project's pinned torch), so the three
architectures are written here in plain torch, small enough for a CPU, and trained from
random weights:

The networks live in :mod:`u2ad_core.detectors.nets`, the box geometry in
:mod:`u2ad_core.detectors.boxes`; this module trains them (through the project's one training
loop, :func:`u2ad_core.core.engine.fit`), runs them and scores them under the paper's protocol.

- ``"faster_rcnn"`` (Ren et al. 2015): a conv backbone (stride 8), a region proposal network
  (anchors of several heights and widths at every feature cell: objectness + box deltas),
  greedy NMS, RoIAlign (bilinear sampling with ``grid_sample``, one sample per bin) and a box
  head (lesion / background + class-specific deltas);
- ``"mask_rcnn"`` (He et al. 2017): the same with a mask head on 14 x 14 RoIs, trained with
  the lesion pixels inside each box;
- ``"detr"`` (Carion et al. 2020): the backbone's features with a 2D sine position encoding
  through a transformer encoder-decoder with learned object queries; each query answers a box
  (sigmoid cx, cy, w, h) and lesion / no-object; training matches queries to boxes one-to-one
  with the Hungarian algorithm (scipy), loss weights of the DETR paper (class 1, no-object
  0.1, L1 5, GIoU 2). Simplified: the position encoding is added once to the encoder input
  (DETR adds it in every attention layer) and there are no auxiliary decoder losses.

Interface (all kinds)::

    model = build_detector(kind, cfg, image_size=(H, W), seed=0)
    losses = model(images, targets)   # train mode: dict of scalar tensors
    dets = model(images)              # eval mode: per image {"boxes" (n, 4), "scores" (n,)[, "masks" (n, H, W)]}

``images`` (B, 1, H, W) in [0, 1]; boxes are ``x0, y0, x1, y1`` in pixels (``x1``, ``y1``
exclusive); ``targets`` a list of ``{"boxes": (m, 4), "masks": (m, H, W)}`` (``m`` may be 0).

The protocol (:func:`cross_validate_detector`): five folds of patients; for test fold ``f``
the next fold is the validation fold (thresholds) and the other three train a detector on all
their slices (:func:`fit_detector`, cached by the run store under ``run_dir/detectors``). A
patient's score is the highest box confidence on its middle slice; the top box is the
predicted place, counted at a segment when its IoU with that segment's cord rectangle exceeds
0.5 (:func:`detection_table` writes the book's scores-table format, so
:mod:`u2ad_core.metrics` scores it like every other method).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from u2ad_core import metrics as ev
from u2ad_core.core.config import DetectorConfig, to_dict
from u2ad_core.core.presets import Preset
from u2ad_core.core.engine import Hooks, StepInfo, fit
from u2ad_core.core.labels import SEGMENTS
from u2ad_core.core.parallel import default_workers, run_jobs
from u2ad_core.core.runstore import load_state, open_run, train_seconds
from u2ad_core.core.runtime import make_generator, resolve_device
from u2ad_core.data.datasets import data_hash
from u2ad_core.detectors.boxes import box_iou, hungarian_match, lesion_boxes, nms, segment_cord_boxes
from u2ad_core.detectors.nets import DETR, KINDS, RCNN, build_detector, roi_align

__all__ = [
    "KINDS",
    "box_iou",
    "segment_cord_boxes",
    "lesion_boxes",
    "nms",
    "roi_align",
    "hungarian_match",
    "RCNN",
    "DETR",
    "build_detector",
    "fit_detector",
    "load_detector",
    "detect",
    "detection_table",
    "DetectorCV",
    "cross_validate_detector",
    "cross_validate_detectors",
]

FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------
# Training (run store) and inference
# --------------------------------------------------------------------------------------
def _targets(data: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    return [lesion_boxes(data.cord[i], data.segments[i], data.lesion[i]) for i in range(len(data.images))]


def _spec(kind: str, cfg: DetectorConfig, image_size, data: Any, seed: int) -> dict[str, Any]:
    d = to_dict(cfg)
    d.pop("n_folds", None)  # the protocol, not the training
    return {"format": FORMAT_VERSION, "kind": kind, "detector": d, "image_size": list(image_size),
            "data": data_hash(data), "labels": data_hash(data, ("segments", "lesion")), "seed": int(seed)}


def load_detector(path: str | Path, device: str = "cpu") -> nn.Module:
    """A finished detector run (folder or ``model.pt``) in eval mode, with ``run_path`` set."""
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    state = load_state(p)
    spec = state["spec"]
    cfg = DetectorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["detector"].items()})
    model = build_detector(spec["kind"], cfg, tuple(spec["image_size"]), spec["seed"])
    model.load_state_dict(state["model"])
    model.run_path = p.parent
    return model.to(resolve_device(device)).eval()


def fit_detector(kind: str, preset: Preset, data: Any, run_dir: str | Path, *, name: str, device: str = "auto",
                 seed: int = 0, show_progress: bool = True) -> nn.Module:
    """Train a detector of ``kind`` on every slice of ``data`` (a ``SliceData``: images, cord,
    segments, lesion) with ``preset.detectors``; cached by the run store as
    ``run_dir/detectors/{name}-{hash}`` (the hash covers kind, configuration, image size, the
    arrays and the seed): a finished run is loaded, an interrupted one resumes from its last
    epoch. Each batch: a random intensity gain per image (``1 + intensity_jitter * U(-1, 1)``),
    the model's losses, AdamW with gradient clipping. Returns the model in eval mode with
    ``run_path`` set."""
    cfg = preset.detectors
    images = np.asarray(data.images, np.float32)
    size = tuple(images.shape[1:])
    run = open_run(Path(run_dir) / "detectors", name, _spec(kind, cfg, size, data, seed))
    dev = resolve_device(device)
    t_start = time.perf_counter()
    model = build_detector(kind, cfg, size, seed).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = make_generator(seed)
    model.generator = g
    boxes = _targets(data)
    x_all = torch.from_numpy(images)[:, None]

    def train_step(idx: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        gain = 1 + cfg.intensity_jitter * (2 * torch.rand(len(idx), 1, 1, 1, generator=g) - 1)
        x = (x_all[idx] * gain).clamp(0, 1).to(dev)
        tg = [{"boxes": torch.from_numpy(boxes[i][0]), "masks": torch.from_numpy(boxes[i][1])} for i in idx.tolist()]
        losses = model(x, tg)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return losses

    hooks = Hooks(final_state=lambda: {"format": FORMAT_VERSION, "kind": kind, "spec": run.spec,
                                       "model": model.state_dict()},
                  done_info=lambda wall, history: {"name": name, "kind": kind, "epochs": cfg.epochs, "device": dev,
                                                   "wall_s": round(wall, 2)})
    res = fit(run, model, opt, train_step, epochs=cfg.epochs, n=len(images), batch_size=int(cfg.batch_size),
              generator=g, hooks=hooks, resume=True, reuse=True, load=lambda p: (load_detector(p, dev), {}),
              history_text=(), config={"name": name, "kind": kind}, checkpoint_every=cfg.checkpoint_every,
              keep_checkpoint=False, label=f"detector {kind} {name}", show_progress=show_progress, t_start=t_start)
    if res.reused:
        return res.model
    model.generator = None
    model.run_path = run.path
    return model.eval()


@torch.no_grad()
def detect(model: nn.Module, images: np.ndarray, device: str = "auto",
           batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Detections of every slice of ``images`` (N, H, W): per slice ``boxes`` (n, 4), ``scores``
    (n,) by decreasing score, and ``masks`` (n, H, W) for Mask R-CNN (numpy)."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
    out = []
    for s in range(0, len(x), batch_size):
        for d in model(x[s:s + batch_size].to(dev)):
            out.append({k: v.float().cpu().numpy() for k, v in d.items()})
    return out


def detection_table(dets: list[dict[str, np.ndarray]], data: Any, iou: float = 0.5):
    """The book's scores table (one row per slice) from detections (Appendix B.2): the patient
    score is the highest confidence (0 without a box); the top box marks one segment, the one
    whose cord rectangle it overlaps most, when that IoU exceeds ``iou`` (that segment's column
    gets the top confidence; every other segment column is NaN)."""
    if len(dets) != len(data.images):
        raise ValueError(f"detection_table: {len(dets)} detections for {len(data.images)} slices")
    rows = []
    for i, d in enumerate(dets):
        sc = np.asarray(d["scores"], np.float64)
        row = {"subject": str(data.subject[i]), "patient_label": int(data.patient_label[i]),
               "lesion_segments": str(data.lesion_segments[i]), "patient_score": float(sc.max()) if len(sc) else 0.0}
        row.update({name: np.nan for name in SEGMENTS})
        if len(sc):
            top = np.asarray(d["boxes"], np.float64)[int(np.argmax(sc))]
            seg = segment_cord_boxes(data.cord[i], data.segments[i])
            if seg:
                names = list(seg)
                ious = box_iou(top[None], np.stack([seg[k] for k in names]))[0]
                j = int(np.argmax(ious))
                if ious[j] > iou:
                    row[names[j]] = float(sc.max())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# The paper's protocol (Appendix B.2): 3 / 1 / 1 folds, a detector per fold
# --------------------------------------------------------------------------------------
@dataclass
class DetectorCV:
    """Output of :func:`cross_validate_detector`.

    cv: the fold metrics as a :class:`u2ad_core.metrics.CVResult` (one repeat; thresholds on
    each fold's validation patients); table: the held-out scores table (one row per patient's
    middle slice, each scored by the detector that did not train on it); train_auroc: per fold,
    the patient AUROC of the detector on its own training patients (in-sample; NaN with one
    class), beside ``test_auroc`` on its test fold; runs: the run folders; train_s: the training
    seconds each run recorded; detections: the detections of every middle slice by the
    detector of the fold where that patient is tested (aligned with ``table``).
    """

    cv: Any
    table: Any
    fold_auroc: Any
    runs: list
    train_s: list
    detections: list


def _fold_plan(preset: Preset, data: Any, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
    """Appendix B.2's folds of a cohort: per test fold ``(test rows, validation rows, training
    subjects, training slices)``; rows index the middle slices (``data.middle()``)."""
    mid = data.middle()
    subjects = np.asarray(mid.subject).astype(str)
    folds = ev.stratified_folds(np.asarray(mid.patient_label).astype(int), preset.detectors.n_folds, seed)
    plan = []
    for f, te in enumerate(folds):
        va = folds[(f + 1) % len(folds)]
        train_subj = np.setdiff1d(subjects, np.concatenate([subjects[te], subjects[va]]))
        plan.append((te, va, train_subj, data.subset(np.isin(np.asarray(data.subject).astype(str), train_subj))))
    return plan


def _fit_job(kind: str, preset: Preset, data: Any, run_dir: str, name: str, seed: int) -> str:
    """One training of :func:`cross_validate_detectors` in a worker process."""
    return str(fit_detector(kind, preset, data, run_dir, name=name, device="cpu", seed=seed, show_progress=False).run_path)


def cross_validate_detectors(kinds, preset: Preset, datasets: dict[str, Any], run_dir: str | Path, *, seed: int = 0,
                             device: str = "auto", workers: int | None = None,
                             show_progress: bool = False) -> dict[tuple[str, str], "DetectorCV"]:
    """:func:`cross_validate_detector` for every detector kind and cohort (``datasets``: cohort
    name -> ``SliceData``), ``{(kind, cohort): DetectorCV}``.

    On a CPU the runs that are not cached yet first train ``workers`` at a time in processes of
    one thread each (:func:`u2ad_core.core.parallel.run_jobs`; default: 2 on a machine with at
    least 2 cores), then every fold is scored here from the run store. The weights do not depend
    on where a run trained, except for the last digits of floating-point sums (one thread adds in
    another order).
    """
    dev = resolve_device(device)
    n = default_workers(workers, "cpu")
    todo = []
    for cohort, data in datasets.items():
        for kind in kinds:
            for f, (_, _, _, train_data) in enumerate(_fold_plan(preset, data, seed)):
                name = f"{cohort}-{kind}-fold{f}"
                size = tuple(np.asarray(train_data.images).shape[1:])
                if not open_run(Path(run_dir) / "detectors", name, _spec(kind, preset.detectors, size, train_data,
                                                                           seed)).done:
                    todo.append((kind, preset, train_data, str(run_dir), name, seed))
    if dev == "cpu" and n > 1 and len(todo) > 1:
        run_jobs(_fit_job, todo, workers=n, here=False, desc="detectors", unit="run", show_progress=show_progress)
    return {(kind, cohort): cross_validate_detector(kind, preset, data, run_dir, cohort=cohort, seed=seed, device=dev,
                                                    show_progress=show_progress)
            for cohort, data in datasets.items() for kind in kinds}


def cross_validate_detector(kind: str, preset: Any, data: Any, run_dir: str | Path, *, cohort: str,
                            seed: int = 0, device: str = "auto", show_progress: bool = False) -> DetectorCV:
    """Train and test a detector under the paper's Appendix B.2 protocol.

    Patients are split into ``preset.detectors.n_folds`` stratified folds (the split of
    :func:`u2ad_core.metrics.stratified_folds` with ``seed``); for test fold ``f`` the next
    fold (``f + 1``) is the validation fold, where the patient threshold (sensitivity >= 0.9,
    as for every method of the book) and the honest segment threshold are chosen, and the
    other folds train a detector from scratch on all their slices. Every patient is scored on
    its middle slice by the detector of the fold that tests it.
    """
    cfg = preset.detectors
    mid = data.middle()
    subjects = np.asarray(mid.subject).astype(str)
    y = np.asarray(mid.patient_label).astype(int)
    rows, held, dets_all, runs, secs, aucs = [], [], [None] * len(mid), [], [], []
    for f, (te, va, train_subj, train_data) in enumerate(_fold_plan(preset, data, seed)):
        model = fit_detector(kind, preset, train_data, run_dir, name=f"{cohort}-{kind}-fold{f}", device=device,
                             seed=seed, show_progress=show_progress)
        runs.append(model.run_path)
        secs.append(train_seconds(model.run_path))
        dets = detect(model, mid.images, device=device)
        pt = ev.patient_table(detection_table(dets, mid)).set_index("subject")
        rows.append({"repeat": 0, "fold": f, **ev.fold_metrics(pt.loc[subjects[va]].reset_index(),
                                                                pt.loc[subjects[te]].reset_index(),
                                                                preset.eval.sensitivity, preset.eval.segment_rule)})
        tr_idx = np.flatnonzero(np.isin(subjects, train_subj))

        def auc(idx):
            if len(set(y[idx])) < 2:
                return float("nan")
            return float(roc_auc_score(y[idx], pt.loc[subjects[idx], "score"]))

        aucs.append({"fold": f, "train_auroc": auc(tr_idx), "test_auroc": auc(te)})
        for i in te:
            dets_all[i] = dets[i]
        held.append(te)
    order = np.sort(np.concatenate(held))
    table = detection_table([dets_all[i] for i in order], mid.subset(order))
    folds_df = pd.DataFrame(rows)
    pt = ev.patient_table(table)
    settings = {"n_folds": cfg.n_folds, "n_repeats": 1, "sensitivity": preset.eval.sensitivity, "seed": seed,
                "segment_rule": preset.eval.segment_rule, "n_patients": int(len(pt)),
                "n_positive": int(pt["label"].sum()),
                "n_test_folds_without_positive": int((folds_df["n_test_pos"] == 0).sum()),
                "n_unscored": 0, "n_unscored_positive": 0, "unscored_subjects": [],
                "protocol": "Appendix B.2: train 3 folds, threshold on the next fold, test the fold"}
    return DetectorCV(ev.CVResult(folds=folds_df, patients=pt, settings=settings), table, pd.DataFrame(aucs),
                      runs, secs, dets_all)
