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

Both train through the project's one loop (:func:`u2ad_core.core.engine.fit`: reuse, resume,
epochs, data order, checkpoints); this module gives it U2AD's batch step (augmentation, mask
sampling, the masked reconstruction loss) and the map refreshes of
:func:`u2ad_core.method.mcmaps.refresh_maps` at the start of every Q-th epoch.

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
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from u2ad_core.core.config import COHORTS, STRATEGIES, AdaptConfig, ModelConfig, TrainConfig, config_from_dict, to_dict
from u2ad_core.core.context import unpack_context
from u2ad_core.core.engine import Hooks, StepInfo, fit
from u2ad_core.core.parallel import default_workers, run_jobs
from u2ad_core.core.presets import Preset, get_preset
from u2ad_core.core.runstore import init_weights, open_run, save_state
from u2ad_core.core.runtime import make_generator, resolve_device
from u2ad_core.data.datasets import load_data, prepare_all
from u2ad_core.method.masking import make_sampler
from u2ad_core.method.mcmaps import Maps, RefreshPlan, choose_tracked, load_tracked_maps, mc_maps, refresh_maps  # noqa: F401
from u2ad_core.method.runs import (
    FORMAT_VERSION,
    SNAPSHOTS,
    TrainResult,
    autocast,
    build_seeded_model,
    data_hash,
    image_tensors,
    load_checkpoint,
    read_history,
    snapshot_paths,
)
from u2ad_core.metrics.reconstruction import reconstruction_metrics, ssim_map  # noqa: F401  (re-exported)

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

MASKINGS = ("random", "eu", "u2ad", "coverage", "eu_mean")
CSV_COLUMNS = ("epoch", "stage", "lr", "loss", "mse", "psnr", "ssim", "eu_mean", "au_mean",
               "seconds", "refresh_seconds")
UNHASHED = ("snapshot_every",)  # training fields that do not change the weights: not in the run hash



# --------------------------------------------------------------------------------------
# Small, pure pieces (tested on their own)
# --------------------------------------------------------------------------------------
def augment(images: torch.Tensor, generator: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    """Paper 4.3 augmentation, drawn from ``generator`` (CPU) and applied on the fly.

    Per image: contrast x U(cfg.contrast) about the image mean, brightness x U(cfg.brightness),
    additive Gaussian noise (sigma ``cfg.noise_std``), clip to [0, 1], then min-max renormalise
    to [0, 1] (the paper: "the images are then re-normalized to the range of 0-1"), which
    undoes the two factors up to the clipping; ``cfg.renormalize=False`` skips that step.

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
    if not cfg.renormalize:
        return x.to(dt)
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



# --------------------------------------------------------------------------------------
# U2AD on the training engine
# --------------------------------------------------------------------------------------
def _spec(kind: str, preset: Preset, train_cfg: TrainConfig, masking: str | None,
          d_hash: str, init: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "model": to_dict(preset.model),
        "train": {k: v for k, v in to_dict(train_cfg).items() if k not in UNHASHED},
        "data": d_hash,
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
    data, source = load_data(data)
    init_w = init_weights(init) if kind == "adapt" else None
    init_id = {"run_hash": init_w.run_hash, "epoch": init_w.epoch} if init_w is not None else None
    spec = _spec(kind, preset, cfg, masking, data_hash(data), init_id, seed)
    return open_run(run_dir, name, spec), data, source, init_w


class _EdgeMAETraining:
    """U2AD's part of :func:`u2ad_core.core.engine.fit`: the batch step and the hooks.

    Holds the training tensors (``images`` (N, H, W) float32, ``roi`` (N, H, W) bool,
    ``roi_patches`` (N, L) bool, CPU), the samplers and the current EU / AU maps; the epoch's
    stage and sampler are set by :meth:`on_epoch_start`, which refreshes the maps every Q
    epochs of an adaptation (:func:`refresh_maps`).
    """

    def __init__(self, kind: str, masking: str | None, preset: Preset, model, opt, device: str,
                 generator: torch.Generator, images: torch.Tensor, roi: torch.Tensor,
                 plan: RefreshPlan | None, run, name: str, callback: Callable[[int, dict[str, Any]], None] | None):
        self.kind, self.masking, self.preset, self.run, self.spec = kind, masking, preset, run, run.spec
        self.name, self.callback = name, callback
        self.cfg: TrainConfig = preset.pretrain if kind == "pretrain" else preset.adapt
        self.model, self.opt, self.device, self.g = model, opt, device, generator
        self.images, self.roi, self.plan = images, roi, plan
        self.autocast_ctx, amp_dtype = autocast(device, self.cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.roi_patches = model.roi_patches(roi.to(device)).cpu()  # (N, L) bool
        self.samplers: dict[str, Any] = {}
        self.sampler_name = "random"
        self.maps: dict[str, Any] | None = None  # current EU / AU maps (adaptation)

    # ---- hooks
    def on_epoch_start(self, epoch: int) -> dict[str, Any]:
        """The epoch's stage (and the refresh's metrics at a refresh epoch); picks the sampler."""
        stage = "pretrain" if self.kind == "pretrain" else stage_schedule(self.masking, self.cfg, epoch)
        row: dict[str, Any] = {"stage": stage}
        q = int(getattr(self.cfg, "refresh_every", 0) or 0)
        if self.kind == "adapt" and q > 0 and epoch % q == 0:
            self.maps, metrics = refresh_maps(self.model, self.plan, epoch, stage)
            row.update(metrics)
        self.sampler_name = "random" if self.kind == "pretrain" else stage
        if self.sampler_name not in self.samplers:
            self.samplers[self.sampler_name] = make_sampler(self.sampler_name, self.preset.masking)
        if self.sampler_name in ("eu", "au") and self.maps is None:
            raise RuntimeError(f"{self.sampler_name}-guided masking needs EU/AU maps, but refresh_every={q} "
                               "never computed them; set adapt.refresh_every > 0")
        return row

    def train_step(self, idx: torch.Tensor, info: StepInfo) -> dict[str, torch.Tensor]:
        """One batch ``idx`` (b,): augment, sample the masks, masked reconstruction loss, Adam step."""
        patch = self.preset.model.patch_size
        x = augment(self.images[idx].unsqueeze(1), self.g, self.cfg).to(self.device)
        r = self.roi[idx]
        kwargs: dict[str, Any] = {}
        if self.sampler_name in ("eu", "au"):
            kwargs = {"eu_scores": self.maps["eu_scores"][idx], "au_map": self.maps["au"][idx],
                      "roi": r, "patch": patch}
        elif self.sampler_name == "coverage":  # no EU: the ROI pixel mask alone
            kwargs = {"roi": r, "patch": patch}
        mask = self.samplers[self.sampler_name].sample(self.roi_patches[idx], self.g, **kwargs)
        with self.autocast_ctx:
            loss, _, _ = self.model(x, r.to(self.device), mask=mask.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"loss": loss}

    def extra_state(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "kind": self.kind, "spec": self.spec,
                "model_cfg": to_dict(self.preset.model),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None, "maps": self.maps}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.maps = state.get("maps")

    def after_epochs(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The final evaluation row of an adaptation (refresh after the last epoch), once."""
        if self.kind != "adapt" or not getattr(self.cfg, "final_eval", True) \
                or any(r.get("stage") == "final" for r in history):
            return None
        epochs = int(self.cfg.epochs)
        self.maps, metrics = refresh_maps(self.model, self.plan, epochs, "final")
        return {"epoch": epochs, "stage": "final", **metrics}

    def weights(self, epoch: int) -> dict[str, Any]:
        """What ``model.pt`` and the snapshots hold: the weights after ``epoch`` epochs and their run."""
        return {"format": FORMAT_VERSION, "kind": self.kind, "run_hash": self.run.run_hash, "spec": self.spec,
                "epoch": epoch, "model": self.model.state_dict(), "model_cfg": to_dict(self.preset.model)}

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """A copy of the weights every ``snapshot_every`` epochs (not the last: that is
        ``model.pt``), then the caller's callback."""
        done, every = epoch + 1, int(getattr(self.cfg, "snapshot_every", 0) or 0)
        if every > 0 and done % every == 0 and done < int(self.cfg.epochs):
            save_state(self.weights(done), self.run.path / SNAPSHOTS / f"epoch_{done:03d}.pt")
        if self.callback is not None:
            self.callback(epoch, row)

    def done_info(self, wall: float, history: list[dict[str, Any]]) -> dict[str, Any]:
        last = history[-1] if history else {}
        return {"name": self.name, "kind": self.kind, "epochs": int(self.cfg.epochs), "device": self.device,
                "wall_s": round(wall, 2), "final": {k: last.get(k) for k in CSV_COLUMNS if k in last}}

    def hooks(self) -> Hooks:
        return Hooks(on_epoch_start=self.on_epoch_start, on_epoch_end=self.on_epoch_end,
                     extra_state=self.extra_state, restore=self.restore, after_epochs=self.after_epochs,
                     final_state=lambda: self.weights(int(self.cfg.epochs)), done_info=self.done_info)


def _train(kind: str, preset: Preset, data: Any, run_dir: str | Path, *, name: str, masking: str | None,
           init: Any, device: str, seed: int | None, resume: bool, reuse: bool, show_progress: bool,
           callback: Callable[[int, dict[str, Any]], None] | None, tracked: Sequence[int] | None) -> TrainResult:
    """Pretraining (``kind="pretrain"``) or adaptation (``"adapt"``) through :func:`u2ad_core.core.engine.fit`."""
    t_start = time.perf_counter()
    seed = preset.seed if seed is None else int(seed)
    cfg: TrainConfig = preset.pretrain if kind == "pretrain" else preset.adapt
    run, data, source, init_w = _open(kind, preset, data, run_dir, name, masking, init, seed)
    images, roi = image_tensors(data, preset.model, source)
    dev = resolve_device(device)
    model = build_seeded_model(preset.model, seed)
    if init_w is not None:
        saved_cfg = (init_w.saved or {}).get("model_cfg")
        if saved_cfg is None:
            raise ValueError(f"init {init!r} carries no model configuration; pass a pretraining run directory "
                             "or its model.pt")
        if to_dict(config_from_dict(ModelConfig, saved_cfg)) != to_dict(preset.model):
            raise ValueError(f"init checkpoint {init_w.path} has a different model configuration than the preset")
        model.load_state_dict(init_w.state)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    g = make_generator(seed)
    tracked_idx = list(tracked) if tracked is not None else (
        choose_tracked(data, getattr(cfg, "n_tracked", 0)) if kind == "adapt" else [])
    plan = RefreshPlan(images, roi, preset, cfg, seed, dev, run.spec["data"], run.path,
                       init_w.path if init_w is not None else None, tracked_idx,
                       getattr(data, "lesion", None)) if kind == "adapt" else None
    job = _EdgeMAETraining(kind, masking, preset, model, opt, dev, g, images, roi, plan, run, name, callback)
    epochs = int(cfg.epochs)
    res = fit(run, model, opt, job.train_step, epochs=epochs, n=len(images), batch_size=int(cfg.batch_size),
              generator=g, lr_at=lambda e: lr_at_epoch(cfg, e), hooks=job.hooks(), resume=resume, reuse=reuse,
              load=lambda p: load_checkpoint(p, dev), config={"name": name, "source": source},
              stale=("maps", "mc", SNAPSHOTS), checkpoint_every=int(cfg.checkpoint_every), keep_checkpoint=True,
              columns=CSV_COLUMNS, label=f"{kind} {name}", show_progress=show_progress, t_start=t_start)
    if res.reused:
        return TrainResult(res.model, run.path, res.history, reused=True, info=res.info)
    info = {"kind": kind, "epoch": epochs, "run_hash": run.run_hash, "spec": run.spec, "model_cfg": preset.model,
            "path": run.path / "model.pt", "run_path": run.path, "wall_s": res.wall_s}
    return TrainResult(model, run.path, res.history, reused=False, info=info)


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


def _strategy_job(preset: Preset, cohort: str, strategy: str, masking: str, data_dir, run_dir, device: str,
                  seed: int, paths: dict[str, Any]) -> str:
    """One job of :func:`train_strategies` (in a worker process or here): train (or reuse) the model."""
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

    jobs: ``(cohort, strategy, masking)`` triples. On a CPU the models that are not cached yet
    train in ``workers`` processes of ``threads`` threads each (:func:`u2ad_core.core.parallel.run_jobs`;
    default ``workers``: 2 on a machine with at least 2 cores, else 1 = in this process;
    ``threads``: ``cpu_count // workers``); the last job of an odd count trains here.
    ``paths``: as in :func:`strategy_model`.
    Before that, this process pretrains (or reuses the pretraining) and computes the maps that
    every S3 adaptation of a cohort starts from, so that no two workers compute them twice.
    The result of a job does not depend on where it ran, except for the last digits of the
    floating-point sums (one thread adds in another order than two). On CUDA / MPS the jobs run
    one after the other. Returns ``{job: run_path}`` in the order of ``jobs``.
    """
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
    n = default_workers(workers, device)
    done = run_jobs(_strategy_job, [(preset, *job, data_dir, run_dir, device, seed, paths) for job in todo],
                    workers=n, threads=threads, here=True, desc="adaptations", unit="model",
                    show_progress=show_progress)
    out.update({job: Path(p) for job, p in zip(todo, done)})
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
