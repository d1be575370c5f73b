"""Pretraining and two-stage uncertainty-guided adaptation (paper sections 3.3-3.4, 4.3).

Three entry points, all seeded, resumable and cached by a hash of everything that shapes
their result:

- :func:`pretrain`: EdgeMAE with random ROI masking on a healthy cohort (paper 4.3);
- :func:`adapt`: adaptation on the clinical cohort (paper Algorithm 2). ``masking`` picks the
  variant compared in the paper (Table 3, Figure A4): ``"random"`` (baseline), ``"eu"``
  (stage 1 only: EU-guided masking throughout) or ``"u2ad"`` (EU-guided, then AU-guided from
  ``AdaptConfig.stage2_start``); and two controls for EU guidance, stage 1 only like ``"eu"``
  (:mod:`u2ad_core.method.masking`, "the coverage question"): ``"coverage"`` (the same sampler on
  the patch's cord coverage alone, no EU) and ``"eu_mean"`` (EU-guided with the patch score
  averaged over its ROI pixels, ``MaskingConfig.eu_score="mean"``). The EU / AU maps are
  refreshed with the Monte-Carlo engine (:func:`u2ad_core.method.uncertainty.mc_uncertainty`) over
  the whole training set every ``refresh_every`` (Q) epochs, including adaptation epoch 0 and
  once more after the last epoch (for every variant, so that all have the same curves).
  Every refresh also yields the reconstruction metrics of that epoch (ROI MSE, PSNR, SSIM,
  mean EU) and the maps of a few tracked images, so nothing is computed twice;
- :func:`strategy_model`: the paper's dataset strategies (section 4.3): S1 pretrain only,
  S2 adaptation from a random initialisation on the clinical cohort, S3 pretrain then adapt;
  :func:`train_strategies` trains several of them at once (on a CPU, one process per core).

Learning-rate schedule (paper 4.3): Adam, ``lr`` x ``lr_gamma`` every ``lr_step`` epochs
(``torch.optim.lr_scheduler.StepLR``, computed in closed form by :func:`lr_at_epoch` so that a
resumed run needs no scheduler state). The adaptation restarts the schedule at its epoch 0,
so with the paper's numbers stage 2 (epochs 150-199) runs at 3e-3 x 0.1^3 = 3e-6: the
AU-guided stage barely changes the weights and mostly keeps the detected anomalies from being
learnt. That is what the paper and the authors' code do, and it is kept by default;
``AdaptConfig.restart_schedule_at_stage2=True`` restarts the schedule at stage 2 instead.

Strategy S2 (train on the clinical cohort only) uses the adaptation procedure and its
configuration (``preset.adapt``: same epochs, schedule and U2AD masking) from a random
initialisation, as the paper trains S2 "from scratch" for its 200 adaptation epochs.

Run directory ``run_dir / f"{name}-{hash}"``, kept by the run store (:mod:`u2ad_core.core.runstore`:
hashing, atomic checkpoints, history, reuse and resume); the hash covers the model, training
and masking configuration, the masking variant, the data arrays, the initial weights and the
seed::

    config.json      what was run (the hashed specification)
    checkpoint.pt    last checkpoint: weights, optimiser, generator, current EU/AU maps,
                     metric history (written atomically; ``resume=True`` continues from it)
    metrics.csv      one row per epoch: epoch, stage, lr, loss, seconds and, at refresh
                     epochs, mse, psnr, ssim, eu_mean, au_mean (row ``stage="final"``: after
                     the last epoch)
    maps/epoch_NNN.npz   EU / AU / mean maps of the tracked images at each refresh
    mc/<key>.npz     cached Monte-Carlo maps of this run's final model (see :func:`mc_maps`)
    model.pt         final weights and model configuration (:func:`load_checkpoint`)
    done.json        written last: the run is complete and is reused, not retrained

Devices: ``"auto"`` picks CUDA, then Apple MPS, then CPU. On CUDA the forward pass runs under
``torch.autocast`` (bf16 where supported, otherwise fp16 with a ``GradScaler``). All
randomness (initialisation, data order, augmentation, masks, MC passes) comes from seeded
``torch.Generator`` objects on the CPU, so two CPU runs with the same seed give identical
weights, and a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from u2ad_core.core.config import (
    COHORTS,
    AdaptConfig,
    MaskingConfig,
    MCConfig,
    ModelConfig,
    TrainConfig,
    config_hash,
    to_dict,
)
from u2ad_core.core.presets import Preset, get_preset
from u2ad_core.core.runstore import init_weights, load_state, open_run, save_state
from u2ad_core.core.runtime import atomic_path, make_generator, progress, resolve_device
from u2ad_core.metrics.reconstruction import reconstruction_metrics, ssim_map

__all__ = [
    "MASKINGS",
    "STRATEGIES",
    "TrainResult",
    "augment",
    "lr_at_epoch",
    "stage_schedule",
    "choose_tracked",
    "pretrain",
    "adapt",
    "train_strategies",
    "load_checkpoint",
    "load_tracked_maps",
    "read_history",
    "snapshot_paths",
    "mc_maps",
    "strategy_model",
    "cli_register",
]

FORMAT_VERSION = 1
MASKINGS = ("random", "eu", "u2ad", "coverage", "eu_mean")
STRATEGIES = ("S1", "S2", "S3")
CSV_COLUMNS = ("epoch", "stage", "lr", "loss", "mse", "psnr", "ssim", "eu_mean", "au_mean",
               "seconds", "refresh_seconds")
SNAPSHOTS = "snapshots"  # run subfolder of the weight copies (adapt.snapshot_every)
UNHASHED = ("snapshot_every",)  # training fields that do not change the weights: not in the run hash
_EVAL_STREAM = 0  # MC generator stream for "evaluation" maps (adaptation epoch 0 and final)


# --------------------------------------------------------------------------------------
# Small, pure pieces (tested on their own)
# --------------------------------------------------------------------------------------
def augment(images: torch.Tensor, generator: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """Paper 4.3 augmentation, drawn from ``generator`` (CPU) and applied on the fly.

    Per image: contrast x U(cfg.contrast) about the image mean, brightness x U(cfg.brightness),
    additive Gaussian noise (sigma ``cfg.noise_std``), clip to [0, 1], then min-max renormalise
    to [0, 1] (the paper: "the images are then re-normalized to the range of 0-1").

    images: (B, 1, H, W) float in [0, 1], any device -> (B, 1, H, W), same device and dtype.
    """
    b = images.shape[0]
    lo_b, hi_b = cfg.brightness
    lo_c, hi_c = cfg.contrast
    brightness = lo_b + (hi_b - lo_b) * torch.rand(b, 1, 1, 1, generator=generator)
    contrast = lo_c + (hi_c - lo_c) * torch.rand(b, 1, 1, 1, generator=generator)
    noise = torch.randn(images.shape, generator=generator) * cfg.noise_std
    dev, dt = images.device, images.dtype
    x = images.float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * contrast.to(dev) + mean
    x = x * brightness.to(dev) + noise.to(dev)
    x = x.clamp(0.0, 1.0)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    return x.to(dt)


def lr_at_epoch(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based): StepLR, ``lr * lr_gamma ** (epoch // lr_step)``.

    For an :class:`AdaptConfig` with ``restart_schedule_at_stage2`` the schedule restarts at
    ``stage2_start`` (epochs counted from there). Default (paper and authors' code): one
    schedule for the whole adaptation, so stage 2 runs at the decayed rate.
    """
    e = int(epoch)
    if isinstance(cfg, AdaptConfig) and cfg.restart_schedule_at_stage2 and e >= cfg.stage2_start:
        e -= cfg.stage2_start
    step = max(1, int(cfg.lr_step))
    return float(cfg.lr * cfg.lr_gamma ** (e // step))


def stage_schedule(masking: str, cfg: AdaptConfig, epoch: int) -> str:
    """Sampler used at adaptation ``epoch``: ``"random"``, ``"eu"``, ``"coverage"`` or ``"au"``.

    ``masking="random"`` -> random throughout (baseline); ``"eu"`` and ``"eu_mean"`` ->
    EU-guided throughout (stage 1 only; ``"eu_mean"`` differs in the patch score, set by
    :func:`adapt`); ``"coverage"`` -> coverage-only throughout; ``"u2ad"`` -> EU-guided
    before ``cfg.stage2_start``, AU-guided from it.
    """
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    if masking in ("random", "coverage"):
        return masking
    if masking in ("eu", "eu_mean") or epoch < cfg.stage2_start:
        return "eu"
    return "au"


def choose_tracked(data: Any, n: int) -> list[int]:
    """``n`` fixed image indices whose maps are saved at each refresh.

    Middle slices (``slice_offset == 0``) first, alternating patients with and without a
    lesion annotation when the data has one (display only, never used for training), spread
    evenly over the subjects. Deterministic.
    """
    n_img = len(data.images)
    if n <= 0 or n_img == 0:
        return []
    offs = np.asarray(getattr(data, "slice_offset", np.zeros(n_img, int)))
    cand = np.flatnonzero(offs == 0)
    if cand.size == 0:
        cand = np.arange(n_img)
    lesion = getattr(data, "lesion", None)
    has = np.asarray(lesion).reshape(n_img, -1).any(1)[cand] if lesion is not None else np.zeros(cand.size, bool)
    pos, neg = cand[has], cand[~has]

    def spread(a: np.ndarray, m: int) -> list[int]:
        if m <= 0 or a.size == 0:
            return []
        idx = np.unique(np.linspace(0, a.size - 1, min(m, a.size)).round().astype(int))
        return [int(a[i]) for i in idx]

    n_pos = min(pos.size, (n + 1) // 2) if neg.size else min(pos.size, n)
    chosen = spread(pos, n_pos) + spread(neg, n - n_pos)
    if len(chosen) < n:  # top up from whatever is left
        rest = [int(i) for i in cand if int(i) not in chosen]
        chosen += rest[: n - len(chosen)]
    return sorted(chosen)[:n]


# --------------------------------------------------------------------------------------
# Data and model helpers
# --------------------------------------------------------------------------------------
def _load_data(data: Any):
    """A dataset path or an object with ``images`` (N, H, W) and ``cord`` (N, H, W)."""
    if isinstance(data, (str, Path)):
        from u2ad_core.data.datasets import load_dataset

        p = Path(data)
        if not p.exists():
            raise FileNotFoundError(f"dataset file not found: {p} (run prepare_all or u2ad preprocess first)")
        return load_dataset(p), str(p)
    if not hasattr(data, "images") or not hasattr(data, "cord"):
        raise TypeError(f"data must be a dataset path or a SliceData (images, cord), got {type(data).__name__}")
    return data, "<in memory>"


def _data_hash(data: Any) -> str:
    from u2ad_core.data.datasets import data_hash

    return data_hash(data)


def _tensors(data: Any, model_cfg: ModelConfig, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.as_tensor(np.asarray(data.images, dtype=np.float32))
    roi = torch.as_tensor(np.asarray(data.cord) > 0)
    if images.ndim != 3:
        raise ValueError(f"{source}: images must be (N, H, W), got shape {tuple(images.shape)}")
    if tuple(images.shape[1:]) != tuple(model_cfg.image_size):
        raise ValueError(
            f"{source}: images are {tuple(images.shape[1:])} but the model expects "
            f"{tuple(model_cfg.image_size)}; use the dataset prepared for this preset"
        )
    if roi.shape != images.shape:
        raise ValueError(f"{source}: cord mask {tuple(roi.shape)} does not match images {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError(f"{source}: the dataset is empty")
    return images, roi


def _build_model(model_cfg: ModelConfig, seed: int):
    """EdgeMAE initialised from ``seed`` without touching the caller's global RNG state."""
    from u2ad_core.method.model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_model(model_cfg)


def _model_cfg_from_dict(d: dict[str, Any]) -> ModelConfig:
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return ModelConfig(**kw)


def _autocast(device: str, enabled: bool):
    if enabled and device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    import contextlib

    return contextlib.nullcontext(), None


def _mc_seed(seed: int, stream: int) -> int:
    """Seed of the MC generator for a refresh: stream 0 = evaluation maps (adaptation epoch 0,
    the final maps and :func:`mc_maps`), stream e = refresh at epoch e."""
    return (int(seed) * 1_000_003 + 7919 * int(stream) + 12345) % (2**63 - 1)


# --------------------------------------------------------------------------------------
# Results, checkpoints, history
# --------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`pretrain` / :func:`adapt` return: the model (eval mode) and its run."""

    model: torch.nn.Module
    run_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def snapshot_paths(run_path: str | Path) -> dict[int, Path]:
    """The weight copies an adaptation run kept (``adapt.snapshot_every``): ``{epoch: path}``
    in epoch order, the final weights (``model.pt``) not included; load one with
    :func:`load_checkpoint`. Empty when the run kept none."""
    folder = Path(run_path) / SNAPSHOTS
    found = {int(p.stem.split("_")[1]): p for p in folder.glob("epoch_*.pt") if p.stem.split("_")[1].isdigit()}
    return dict(sorted(found.items()))


def read_history(run_path: str | Path):
    """``metrics.csv`` of a run as a pandas DataFrame (numeric columns as floats)."""
    import pandas as pd

    p = Path(run_path) / "metrics.csv"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics.csv in {run_path}; was the run started?")
    return pd.read_csv(p)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Load a trained model: ``path`` is a run directory, its ``model.pt`` or a
    ``checkpoint.pt``. Returns ``(model, info)``: the EdgeMAE in eval mode on ``device`` and
    a dict with ``kind``, ``epoch``, ``run_hash``, ``spec`` (the hashed run specification),
    ``model_cfg`` and ``path``."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.pt", "checkpoint.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"no model.pt or checkpoint.pt in run directory {path}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    dev = resolve_device(device)
    state = load_state(p)
    if "model" not in state or "model_cfg" not in state:
        raise ValueError(f"{p} is not a u2ad_core checkpoint (no 'model' / 'model_cfg')")
    model_cfg = _model_cfg_from_dict(state["model_cfg"])
    from u2ad_core.method.model import build_model

    model = build_model(model_cfg)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    info = {k: state.get(k) for k in ("kind", "epoch", "run_hash", "spec")}
    info.update(model_cfg=model_cfg, path=p, run_path=p.parent)
    return model, info


def load_tracked_maps(run_path: str | Path) -> list[dict[str, Any]]:
    """The tracked images' maps saved at each refresh, sorted by epoch.

    Each item: ``epoch`` (int; the final one equals the number of epochs), ``stage``,
    ``index`` (K,), ``image``, ``roi``, ``lesion``, ``mean``, ``eu``, ``au`` (K, H, W).
    """
    d = Path(run_path) / "maps"
    out = []
    for f in sorted(d.glob("epoch_*.npz")):
        with np.load(f, allow_pickle=False) as z:
            item = {k: z[k] for k in z.files}
        item["epoch"] = int(item["epoch"])
        item["stage"] = str(item["stage"])
        out.append(item)
    return sorted(out, key=lambda r: r["epoch"])


# --------------------------------------------------------------------------------------
# Monte-Carlo maps (refreshes, evaluation; cached per run)
# --------------------------------------------------------------------------------------
def _run_mc(model, images, roi, mc: MCConfig, mask_ratio: float, seed: int, device: str,
            show: bool = False):
    from u2ad_core.method.uncertainty import mc_uncertainty

    was_training = model.training
    model.eval()
    try:
        res = mc_uncertainty(
            model, images, roi, k=mc.k, mask_ratio=mask_ratio, generator=make_generator(seed),
            ddof=mc.ddof, batch_size=mc.batch_size, device=device, progress=show,
        )
    finally:
        model.train(was_training)
    return res


def _mc_key(data_hash: str, mc: MCConfig, mask_ratio: float, seed: int) -> str:
    return config_hash({"data": data_hash, "mc": to_dict(mc), "mask_ratio": mask_ratio,
                        "seed": _mc_seed(seed, _EVAL_STREAM)}, n=16)


def _save_mc(path: Path, mean: torch.Tensor, eu: torch.Tensor, au: torch.Tensor) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, mean=mean.numpy(), eu=eu.numpy(), au=au.numpy())


@dataclass
class Maps:
    """Cached Monte-Carlo maps: ``mean``, ``eu``, ``au`` (N, H, W) float32 CPU tensors; ``k``
    the reconstructions per ROI patch they were computed with."""

    mean: torch.Tensor
    eu: torch.Tensor
    au: torch.Tensor
    cached: bool = False
    k: int | None = None


def mc_maps(run_path: str | Path, data: Any, preset: Preset, device: str = "auto",
            seed: int | None = None, model=None, show_progress: bool = False) -> Maps:
    """Monte-Carlo maps of a finished run's model on a dataset, cached in ``run_path/mc/``.

    The cache key covers the data arrays, ``preset.mc`` (K, ddof, batch size), the mask ratio
    and the seed; the generator is the one an adaptation uses at its epoch 0 and after its last
    epoch, so the maps an adaptation computed are found here without recomputation (and the
    maps computed here are the ones an adaptation starting from this model needs at epoch 0).
    ``model`` skips reloading when the caller already holds the run's model.
    """
    run_path = Path(run_path)
    data, source = _load_data(data)
    seed = preset.seed if seed is None else int(seed)
    key = _mc_key(_data_hash(data), preset.mc, preset.masking.mask_ratio, seed)
    f = run_path / "mc" / f"{key}.npz"
    if f.is_file():
        with np.load(f) as z:
            return Maps(torch.from_numpy(z["mean"]), torch.from_numpy(z["eu"]), torch.from_numpy(z["au"]), cached=True,
                        k=int(preset.mc.k))
    dev = resolve_device(device)
    if model is None:
        model, _ = load_checkpoint(run_path, dev)
    images, roi = _tensors(data, _model_cfg_of(model, preset), source)
    res = _run_mc(model, images, roi, preset.mc, preset.masking.mask_ratio,
                  _mc_seed(seed, _EVAL_STREAM), dev, show=show_progress)
    maps = Maps(res.mean.float().cpu(), res.eu.float().cpu(), res.au.float().cpu(), k=int(res.k))
    _save_mc(f, maps.mean, maps.eu, maps.au)
    return maps


def _model_cfg_of(model, preset: Preset) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    return cfg if isinstance(cfg, ModelConfig) else preset.model


# --------------------------------------------------------------------------------------
# The training loop shared by pretraining and adaptation
# --------------------------------------------------------------------------------------
def _spec(kind: str, preset: Preset, train_cfg: TrainConfig, masking: str | None,
          data_hash: str, init: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "model": to_dict(preset.model),
        "train": {k: v for k, v in to_dict(train_cfg).items() if k not in UNHASHED},
        "data": data_hash,
        "seed": int(seed),
    }
    if kind == "adapt":
        spec.update(masking_cfg=to_dict(preset.masking), masking=masking, mc=to_dict(preset.mc), init=init)
    else:  # pretraining masks at random: only the ratio shapes it, so a tau sweep reuses it
        spec.update(mask_ratio=float(preset.masking.mask_ratio))
    return spec


def _open(kind: str, preset: Preset, data: Any, run_dir: str | Path, name: str, masking: str | None,
          init: Any, seed: int):
    """The :class:`~u2ad_core.core.runstore.Run` a training call would use (not started), with the
    loaded data, its source name and the initial weights: ``(run, data, source, init_w)``."""
    cfg: TrainConfig = preset.pretrain if kind == "pretrain" else preset.adapt
    data, source = _load_data(data)
    init_w = init_weights(init) if kind == "adapt" else None
    init_id = {"run_hash": init_w.run_hash, "epoch": init_w.epoch} if init_w is not None else None
    spec = _spec(kind, preset, cfg, masking, _data_hash(data), init_id, seed)
    return open_run(run_dir, name, spec), data, source, init_w


def _train(
    kind: str,
    preset: Preset,
    data: Any,
    run_dir: str | Path,
    *,
    name: str,
    masking: str | None,
    init: Any,
    device: str,
    seed: int | None,
    resume: bool,
    reuse: bool,
    show_progress: bool,
    callback: Callable[[int, dict[str, Any]], None] | None,
    tracked: Sequence[int] | None,
) -> TrainResult:
    t_start = time.perf_counter()
    seed = preset.seed if seed is None else int(seed)
    cfg: TrainConfig = preset.pretrain if kind == "pretrain" else preset.adapt
    run, data, source, init_w = _open(kind, preset, data, run_dir, name, masking, init, seed)
    model_cfg = preset.model
    images, roi = _tensors(data, model_cfg, source)
    n = len(images)
    d_hash = run.spec["data"]
    init_path = init_w.path if init_w is not None else None
    spec = run.spec
    run_hash, run_path = run.run_hash, run.path
    dev = resolve_device(device)

    # ---- a finished run with this configuration: reuse it
    if reuse and run.done:
        model, info = load_checkpoint(run_path, dev)
        return TrainResult(model, run_path, run.read_metrics(), reused=True, info=info)

    # ---- model, optimiser, generator
    model = _build_model(model_cfg, seed)
    if init_w is not None:
        saved_cfg = (init_w.saved or {}).get("model_cfg")
        if saved_cfg is None:
            raise ValueError(f"init {init!r} carries no model configuration; pass a pretraining run directory "
                             "or its model.pt")
        if to_dict(_model_cfg_from_dict(saved_cfg)) != to_dict(model_cfg):
            raise ValueError(f"init checkpoint {init_path} has a different model configuration than the preset")
        model.load_state_dict(init_w.state)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    autocast_ctx, amp_dtype = _autocast(dev, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    g = make_generator(seed)
    patch = model_cfg.patch_size
    roi_patches = model.roi_patches(roi.to(dev)).cpu()  # (N, L) bool
    samplers: dict[str, Any] = {}
    maps: dict[str, Any] | None = None  # current EU / AU maps (adaptation)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    wall_before = 0.0
    tracked_idx = list(tracked) if tracked is not None else (
        choose_tracked(data, getattr(cfg, "n_tracked", 0)) if kind == "adapt" else [])

    # ---- resume from the checkpoint, or start afresh (dropping an earlier attempt's maps)
    state = run.start(resume, config={"name": name, "source": source}, stale=("maps", "mc", SNAPSHOTS))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        g.set_state(state["generator"])
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        maps = state.get("maps")
        wall_before = float(state.get("wall_s", 0.0))

    def checkpoint(epoch_done: int) -> None:
        run.save_checkpoint({
            "format": FORMAT_VERSION, "kind": kind, "spec": spec,
            "epoch": epoch_done, "model": model.state_dict(), "model_cfg": to_dict(model_cfg),
            "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "generator": g.get_state(), "maps": maps, "history": history,
            "wall_s": wall_before + time.perf_counter() - t_start,
        })

    def refresh(epoch: int, stage: str) -> dict[str, Any]:
        """MC maps over the training set with the current weights; metrics; tracked maps."""
        nonlocal maps
        t0 = time.perf_counter()
        final = stage == "final"
        stream = _EVAL_STREAM if (epoch == 0 or final) else epoch
        cache = None
        if epoch == 0 and init_path is not None:  # the initial model's maps: maybe cached
            cache = init_path.parent / "mc" / f"{_mc_key(d_hash, preset.mc, preset.masking.mask_ratio, seed)}.npz"
        if cache is not None and cache.is_file():
            with np.load(cache) as z:
                mean, eu, au = (torch.from_numpy(z[k]) for k in ("mean", "eu", "au"))
        else:
            k = getattr(cfg, "refresh_k", None)
            mc_cfg = preset.mc if (final or cache is not None or not k) else replace(preset.mc, k=int(k))
            res = _run_mc(model, images, roi, mc_cfg, preset.masking.mask_ratio,
                          _mc_seed(seed, stream), dev)
            mean, eu, au = res.mean.float().cpu(), res.eu.float().cpu(), res.au.float().cpu()
            if cache is not None:
                _save_mc(cache, mean, eu, au)
        if final:
            key = _mc_key(d_hash, preset.mc, preset.masking.mask_ratio, seed)
            _save_mc(run_path / "mc" / f"{key}.npz", mean, eu, au)
        maps = {"epoch": epoch, "eu": eu, "au": au,
                "eu_scores": _patch_scores(eu, roi, patch, preset.masking)}
        metrics = reconstruction_metrics(images, mean, eu, roi)
        if tracked_idx:
            idx = torch.as_tensor(tracked_idx)
            lesion = getattr(data, "lesion", None)
            les = np.asarray(lesion)[tracked_idx] if lesion is not None else np.zeros((len(idx), *images.shape[1:]), np.uint8)
            f = run_path / "maps" / f"epoch_{epoch:03d}.npz"
            with atomic_path(f, suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(
                        fh, epoch=np.int64(epoch), stage=np.str_(stage), index=idx.numpy(),
                        image=images[idx].numpy(), roi=roi[idx].numpy(), lesion=les.astype(np.uint8),
                        mean=mean[idx].numpy(), eu=eu[idx].numpy(), au=au[idx].numpy())
        metrics["refresh_seconds"] = round(time.perf_counter() - t0, 3)
        return metrics

    epochs = int(cfg.epochs)
    bs = int(cfg.batch_size)
    q = int(getattr(cfg, "refresh_every", 0) or 0)
    bar_kw = {} if show_progress else {"disable": True}
    bar = progress(total=epochs, initial=start_epoch, desc=f"{kind} {name}", unit="epoch", **bar_kw)
    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            stage = "pretrain" if kind == "pretrain" else stage_schedule(masking, cfg, epoch)
            row: dict[str, Any] = {"epoch": epoch, "stage": stage}
            if kind == "adapt" and q > 0 and epoch % q == 0:
                row.update(refresh(epoch, stage))
            lr = lr_at_epoch(cfg, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            sampler_name = "random" if kind == "pretrain" else stage
            if sampler_name not in samplers:
                from u2ad_core.method.masking import make_sampler

                samplers[sampler_name] = make_sampler(sampler_name, preset.masking)
            sampler = samplers[sampler_name]
            if sampler_name in ("eu", "au") and maps is None:
                raise RuntimeError(f"{sampler_name}-guided masking needs EU/AU maps, but refresh_every={q} "
                                   "never computed them; set adapt.refresh_every > 0")
            perm = torch.randperm(n, generator=g)
            loss_sum, seen = 0.0, 0
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                x = augment(images[idx].unsqueeze(1), g, cfg).to(dev)
                r = roi[idx]
                kwargs: dict[str, Any] = {}
                if sampler_name in ("eu", "au"):
                    kwargs = {"eu_scores": maps["eu_scores"][idx], "au_map": maps["au"][idx],
                              "roi": r, "patch": patch}
                elif sampler_name == "coverage":  # no EU: the ROI pixel mask alone
                    kwargs = {"roi": r, "patch": patch}
                mask = sampler.sample(roi_patches[idx], g, **kwargs)
                with autocast_ctx:
                    loss, _, _ = model(x, r.to(dev), mask=mask.to(dev))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{kind} {name}: non-finite loss at epoch {epoch}; "
                                             f"lower the learning rate ({lr:g})")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
            row.update(lr=lr, loss=loss_sum / max(seen, 1), seconds=round(time.perf_counter() - t0, 3))
            history.append(row)
            run.write_metrics(history, CSV_COLUMNS)
            done = epoch + 1
            if done % max(1, int(cfg.checkpoint_every)) == 0 or done == epochs:
                checkpoint(done)
            snap = int(getattr(cfg, "snapshot_every", 0) or 0)
            if snap > 0 and done % snap == 0 and done < epochs:  # the last epoch's weights are model.pt
                save_state({"format": FORMAT_VERSION, "kind": kind, "run_hash": run_hash, "spec": spec,
                            "epoch": done, "model": model.state_dict(), "model_cfg": to_dict(model_cfg)},
                           run_path / SNAPSHOTS / f"epoch_{done:03d}.pt")
            bar.set_postfix(stage=stage, loss=f"{row['loss']:.4g}", lr=f"{lr:.1e}", refresh=False)
            bar.update(1)
            if callback is not None:
                callback(epoch, row)
    finally:
        bar.close()

    if kind == "adapt" and getattr(cfg, "final_eval", True) and not any(r.get("stage") == "final" for r in history):
        row = {"epoch": epochs, "stage": "final"}
        row.update(refresh(epochs, "final"))
        history.append(row)
        run.write_metrics(history, CSV_COLUMNS)
        checkpoint(epochs)

    model.eval()
    wall = wall_before + time.perf_counter() - t_start
    last = history[-1] if history else {}
    run.finish({"format": FORMAT_VERSION, "kind": kind, "run_hash": run_hash, "spec": spec, "epoch": epochs,
                "model": model.state_dict(), "model_cfg": to_dict(model_cfg)},
               {"name": name, "kind": kind, "epochs": epochs, "device": dev, "wall_s": round(wall, 2),
                "final": {k: last.get(k) for k in CSV_COLUMNS if k in last}})
    info = {"kind": kind, "epoch": epochs, "run_hash": run_hash, "spec": spec, "model_cfg": model_cfg,
            "path": run_path / "model.pt", "run_path": run_path, "wall_s": wall}
    return TrainResult(model, run_path, history, reused=False, info=info)


def _patch_scores(eu: torch.Tensor, roi: torch.Tensor, patch: int, cfg: MaskingConfig) -> torch.Tensor:
    """EU maps (N, H, W) -> patch scores (N, L) per ``cfg.eu_score`` (sum, or mean over ROI pixels)."""
    from u2ad_core.method.masking import EUGuidedMasking

    return EUGuidedMasking(cfg).scores(eu, roi, patch)


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------
def pretrain(
    preset: Preset | str,
    data: Any,
    run_dir: str | Path,
    *,
    name: str = "pretrain",
    device: str = "auto",
    seed: int | None = None,
    resume: bool = True,
    reuse: bool = True,
    show_progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Pretrain EdgeMAE with random ROI masking on a healthy cohort (paper 4.3).

    preset: a :class:`Preset` (or its name); ``preset.pretrain`` sets epochs, Adam, StepLR,
    batch size and augmentation, ``preset.masking.mask_ratio`` the masked share of ROI patches.
    data: a dataset file (``prepare_all(...)["spine_generic_like"]``) or a ``SliceData``.
    The run lives in ``run_dir / f"{name}-{hash}"``; a finished run with the same hash is
    reused (``reuse``), an interrupted one continues from its last checkpoint (``resume``).
    ``callback(epoch, row)`` is called after every epoch (raising from it stops the run).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return _train("pretrain", preset, data, run_dir, name=name, masking=None, init=None, device=device,
                  seed=seed, resume=resume, reuse=reuse, show_progress=show_progress, callback=callback,
                  tracked=None)


def adapt(
    preset: Preset | str,
    data: Any,
    run_dir: str | Path,
    *,
    init: str | Path | None,
    masking: str = "u2ad",
    name: str | None = None,
    device: str = "auto",
    seed: int | None = None,
    resume: bool = True,
    reuse: bool = True,
    show_progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    tracked: Sequence[int] | None = None,
) -> TrainResult:
    """Uncertainty-guided adaptation on a (clinical) cohort (paper Algorithm 2).

    init: a pretraining run directory or checkpoint (strategy S3), or ``None`` for a random
    initialisation (strategy S2). masking: ``"random"`` | ``"eu"`` | ``"u2ad"``, or the
    controls ``"coverage"`` | ``"eu_mean"`` (see :func:`stage_schedule`; ``"eu_mean"`` runs
    with ``preset.masking.eu_score = "mean"``, so its hash differs from ``"eu"``'s).
    ``preset.adapt`` sets epochs, schedule, ``stage2_start``, ``refresh_every`` (Q) and
    ``n_tracked``; ``preset.masking`` the samplers;
    ``preset.mc`` the Monte-Carlo refreshes. ``tracked`` overrides the tracked image indices
    (default :func:`choose_tracked`). Returns a :class:`TrainResult`; the per-epoch metrics
    are in ``result.history`` and ``run_path/metrics.csv``.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    if masking == "eu_mean":
        preset = preset.override(**{"masking.eu_score": "mean"})
    name = name or f"adapt-{masking}"
    return _train("adapt", preset, data, run_dir, name=name, masking=masking, init=init, device=device,
                  seed=seed, resume=resume, reuse=reuse, show_progress=show_progress, callback=callback,
                  tracked=tracked)


def strategy_model(
    ctx_or_preset: Any,
    cohort: str,
    strategy: str,
    masking: str = "u2ad",
    *,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    device: str | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    paths: dict[str, Any] | None = None,
):
    """The model of a dataset strategy (paper 4.3), trained once and then reused.

    ctx_or_preset: a :class:`u2ad_core.core.context.RunContext` (its preset, data_dir, run_dir,
    device and seed are used unless given here) or a Preset / preset name (then ``data_dir``
    and ``run_dir`` are required; they are used as given, like ``ctx.data_dir``).
    cohort: ``"renji_like"`` | ``"ruijin_like"``; strategy: ``"S1"`` (pretrain on the healthy
    cohort only), ``"S2"`` (adaptation procedure from a random initialisation on ``cohort``;
    ``preset.adapt`` epochs), ``"S3"`` (pretrain, then adapt on ``cohort``); ``masking`` as in
    :func:`adapt` (ignored for S1). The pretraining run is shared by S1 and S3.
    ``paths``: the datasets by name (``"spine_generic_like"`` and ``cohort``: files or
    ``SliceData``) instead of :func:`u2ad_core.data.datasets.prepare_all`'s files.
    Returns ``(model, run_path)``.
    """
    from u2ad_core.data.datasets import prepare_all
    from u2ad_core.core.context import unpack_context

    preset, data_dir, run_dir, device, seed = unpack_context(ctx_or_preset, data_dir, run_dir, device, seed,
                                                             who="strategy_model")
    device = device or "auto"
    seed = preset.seed if seed is None else int(seed)
    if cohort not in COHORTS:
        raise ValueError(f"cohort must be one of {COHORTS}, got {cohort!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if paths is None:
        paths = prepare_all(preset, data_dir, seed=seed, verbose=False, show_progress=show_progress)
    kw = dict(device=device, seed=seed, show_progress=show_progress)
    if strategy in ("S1", "S3"):
        pre = pretrain(preset, paths["spine_generic_like"], run_dir, **kw)
        if strategy == "S1":
            return pre.model, pre.run_path
        res = adapt(preset, paths[cohort], run_dir, init=pre.run_path, masking=masking,
                    name=f"{cohort}-S3-{masking}", **kw)
        return res.model, res.run_path
    res = adapt(preset, paths[cohort], run_dir, init=None, masking=masking, name=f"{cohort}-S2-{masking}", **kw)
    return res.model, res.run_path


def _strategy_job(args: tuple) -> str:
    """One job of :func:`train_strategies`, in a worker process: train (or reuse) the model."""
    preset, cohort, strategy, masking, data_dir, run_dir, device, seed, threads, paths = args
    torch.set_num_threads(int(threads))
    _, run_path = strategy_model(preset, cohort, strategy, masking, data_dir=data_dir, run_dir=run_dir,
                                 device=device, seed=seed, show_progress=False, paths=paths)
    return str(run_path)


def train_strategies(
    ctx_or_preset: Any,
    jobs: Sequence[tuple[str, str, str]],
    *,
    workers: int | None = None,
    threads: int | None = None,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    device: str | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    paths: dict[str, Any] | None = None,
) -> dict[tuple[str, str, str], Path]:
    """Train (or reuse) several :func:`strategy_model` models, several at a time on a CPU.

    jobs: ``(cohort, strategy, masking)`` triples. A small model trains faster per core on one
    thread than on many (its matrix products are too small to split well), so on a CPU the
    models that are not cached yet train in ``workers`` processes of ``threads`` threads each
    (default ``workers``: 2 on a machine with at least 2 cores, else 1 = in this process;
    ``threads``: ``cpu_count // workers``); the last job of an odd count trains here.
    Measured on 2 cores (2026-12-01): a training step of the ``cpu`` model takes 0.114 s on 2
    threads and 0.17 s on each of two 1-thread processes side by side (1.3x the throughput),
    an MC pass 1.2x. ``paths``: as in :func:`strategy_model`.
    Before that, this process pretrains (or reuses the pretraining) and computes the maps that
    every S3 adaptation of a cohort starts from, so that no two workers compute them twice.
    The result of a job does not depend on where it ran, except for the last digits of the
    floating-point sums (one thread adds in another order than two). On CUDA / MPS the jobs run
    one after the other. Returns ``{job: run_path}`` in the order of ``jobs``.
    """
    import concurrent.futures as cf
    import multiprocessing as mp

    from u2ad_core.data.datasets import prepare_all
    from u2ad_core.core.context import unpack_context

    preset, data_dir, run_dir, device, seed = unpack_context(ctx_or_preset, data_dir, run_dir, device, seed,
                                                             who="train_strategies")
    device = resolve_device(device or "auto")
    seed = preset.seed if seed is None else int(seed)
    jobs = [tuple(j) for j in jobs]
    for cohort, strategy, masking in jobs:
        if cohort not in COHORTS:
            raise ValueError(f"cohort must be one of {COHORTS}, got {cohort!r}")
        if strategy not in STRATEGIES or strategy == "S1":
            raise ValueError(f"train_strategies trains adaptations (S2, S3), got {strategy!r}")
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    if paths is None:
        paths = prepare_all(preset, data_dir, seed=seed, verbose=False, show_progress=False)
    pre = pretrain(preset, paths["spine_generic_like"], run_dir, device=device, seed=seed,
                   show_progress=show_progress) if any(j[1] == "S3" for j in jobs) else None
    for cohort in dict.fromkeys(j[0] for j in jobs if j[1] == "S3"):  # the S3 runs' epoch-0 maps
        mc_maps(pre.run_path, paths[cohort], preset, device=device, seed=seed, model=pre.model)

    def run_of(job: tuple[str, str, str]):
        cohort, strategy, masking = job
        p = preset.override(**{"masking.eu_score": "mean"}) if masking == "eu_mean" else preset
        init = pre.run_path if strategy == "S3" else None
        return _open("adapt", p, paths[cohort], run_dir, f"{cohort}-{strategy}-{masking}", masking, init, seed)[0]

    out: dict[tuple[str, str, str], Path] = {}
    todo = []
    for job in jobs:
        run = run_of(job)
        out[job] = run.path
        if not run.done and job not in todo:
            todo.append(job)
    cores = os.cpu_count() or 1
    n = int(workers) if workers else (2 if cores >= 2 else 1)
    if n < 1:
        raise ValueError(f"train_strategies: workers must be >= 1, got {workers}")
    n = 1 if device != "cpu" else min(n, cores)
    pooled = todo[: len(todo) - len(todo) % n] if n > 1 else []
    here = [j for j in todo if j not in pooled]
    bar_kw = {} if show_progress else {"disable": True}
    bar = progress(total=len(todo), desc=f"adaptations ({n} at a time)" if pooled else "adaptations",
                   unit="model", **bar_kw)
    try:
        if pooled:
            nt = int(threads) if threads else max(1, cores // n)
            args = [(preset, *job, str(data_dir), str(run_dir), device, seed, nt, paths) for job in pooled]
            with cf.ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as ex:
                futures = {ex.submit(_strategy_job, a): job for a, job in zip(args, pooled)}
                for fut in cf.as_completed(futures):
                    out[futures[fut]] = Path(fut.result())
                    bar.update(1)
        for job in here:
            _, out[job] = strategy_model(preset, *job, data_dir=data_dir, run_dir=run_dir, device=device,
                                         seed=seed, show_progress=False, paths=paths)
            bar.update(1)
    finally:
        bar.close()
    return out


# --------------------------------------------------------------------------------------
# Command line: u2ad pretrain / u2ad adapt
# --------------------------------------------------------------------------------------
def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value (e.g. pretrain.epochs=3), got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="smoke | cpu | paper (default cpu)")
    p.add_argument("--data", required=True, help="dataset file (.npz) prepared for this preset")
    p.add_argument("--run-dir", default=None,
                   help="folder for run directories (default runs/<preset>, as the notebooks use)")
    p.add_argument("--name", default=None, help="run name (directory = NAME-HASH)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="dotted preset override, repeatable (e.g. --set pretrain.epochs=3)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.add_argument("--force", action="store_true", help="retrain even if a finished run exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cli_run(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset, **_parse_sets(args.set)).override(seed=args.seed)
    kw = dict(device=args.device, seed=args.seed, resume=not args.no_resume, reuse=not args.force,
              show_progress=not args.quiet)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / preset.name
    if args.command == "pretrain":
        res = pretrain(preset, args.data, run_dir, name=args.name or "pretrain", **kw)
    else:
        init = None if args.init in (None, "none", "scratch") else args.init
        res = adapt(preset, args.data, run_dir, init=init, masking=args.masking, name=args.name, **kw)
    last = next((r for r in reversed(res.history) if r.get("mse") is not None), res.history[-1] if res.history else {})
    summary = {"run_path": str(res.run_path), "reused": res.reused,
               **{k: last.get(k) for k in ("epoch", "stage", "loss", "mse", "psnr", "ssim", "eu_mean") if k in last}}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cli_register(subparsers) -> None:
    """Register ``u2ad pretrain`` and ``u2ad adapt``."""
    p = subparsers.add_parser("pretrain", help="pretrain EdgeMAE on a healthy cohort (random ROI masking)",
                              description=pretrain.__doc__.split("\n\n")[0])
    _common_args(p)
    p.set_defaults(func=_cli_run)
    a = subparsers.add_parser("adapt", help="uncertainty-guided adaptation on a clinical cohort",
                              description=adapt.__doc__.split("\n\n")[0])
    _common_args(a)
    a.add_argument("--init", default=None, help="pretraining run directory or model.pt (omit or 'none': S2, random init)")
    a.add_argument("--masking", default="u2ad", choices=MASKINGS,
                   help="random | eu | u2ad | coverage | eu_mean (default u2ad)")
    a.set_defaults(func=_cli_run)


_ = (math, replace, AdaptConfig, MaskingConfig)  # re-exported names used in docs
