"""Shared glue for the baselines: the method record, training with run caching, reconstruction,
anomaly maps, strategies S1-S3, and scoring/evaluation under U2AD's protocol.

Every baseline is described by a :class:`Method` (its module builds one; the registry is
``u2ad_core.baselines.BASELINES``). Two kinds:

- ``"uad"``: a torch model trained on unlabelled slices (VAE, DAE, VAE-GAN, f-AnoGAN,
  AnoDDPM). Each reconstructs the **whole** image; only its ROI (cord) part is kept and the
  rest is replaced by the original image (paper Appendix B.1, method.md section 8).
- ``"signal"``: no training; the map comes straight from the cord intensities (Z-scoring,
  SLIC, DBSCAN; paper Appendix B.3) or, for the morphology-only baseline, from the cord and
  CSF masks alone (``Method.inputs`` names the arrays a signal method reads).

Two optional traits of a UAD method (fields of :class:`Method`; both ``False`` / ``None`` for
the paper's baselines, whose code path they leave unchanged):

- ``paired``: the method trains **transductively** on (target cohort, healthy reference)
  pairs, as Brainomaly does: ``fit_run(..., healthy=...)`` takes the healthy set beside the
  target set ``train_data``, and ``train_step`` gets a healthy batch with every target batch.
  :func:`strategy_model` maps the strategies onto it (see there).
- ``base``: the method is trained on top of another method's finished run
  (``brainomaly_diff``: Brainomaly-Diff's refiner on a trained Brainomaly generator), reached
  through the run store's init identity: ``init`` is required, and the base's weights fill
  the parameters they name.

Common interface (the same for both kinds)::

    model = fit("vae", preset, train_data, device, seed, run_dir, init=None)   # cached
    recon, maps = anomaly_maps("vae", model, data, device)                    # (N, H, W) each

``recon`` is the reconstruction with the original pasted outside the cord (``None`` for the
signal methods, which reconstruct nothing); ``maps`` is ``(N, H, W)`` float32, zero outside
the cord: ``|x - recon|`` in the cord for the UAD methods (:func:`u2ad_core.method.scoring.anomaly_map`),
the method's own score for the signal methods. :func:`score_anomaly_maps` then applies the
same post-processing, curve and scores as U2AD (:mod:`u2ad_core.method.scoring`), and
:func:`evaluate_maps` the same cross-validation (:mod:`u2ad_core.metrics`).

Training runs are cached by the run store (:mod:`u2ad_core.core.runstore`), as U2AD's are: a run lives in
``run_dir / "baselines" / f"{name}-{hash}"`` where the hash covers the method and its
configuration, the shared sizes, the number of epochs, the augmentation, the data arrays,
the initial weights and the seed::

    config.json    the hashed specification
    checkpoint.pt  weights, optimisers, generator, history (every ``checkpoint_every`` epochs;
                   an interrupted run continues from it)
    metrics.csv    one row per epoch: epoch, seconds and the method's losses
    model.pt       final weights + configuration (:func:`load_run`)
    done.json      written last: the run is complete and is reused, not retrained

All randomness (initialisation, data order, augmentation, noise, latent samples) comes from
a seeded ``torch.Generator`` on the CPU, so two CPU runs with the same seed give identical
weights.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from u2ad_core.core.config import BaselineConfig, to_dict
from u2ad_core.core.presets import Preset, get_preset
from u2ad_core.data.datasets import data_hash
from u2ad_core.core.runstore import init_weights, load_state, open_run
from u2ad_core.core.runtime import make_generator, progress, resolve_device

__all__ = [
    "Method",
    "StepInfo",
    "SignalModel",
    "BaselineRun",
    "STRATEGIES",
    "get_method",
    "data_hash",
    "fit",
    "fit_run",
    "stage_epochs",
    "load_run",
    "reconstruct",
    "anomaly_maps",
    "strategy_model",
    "score_anomaly_maps",
    "evaluate_maps",
    "results_row",
    "table_from_rows",
]

FORMAT_VERSION = 2  # bump when an architecture changes: older cached runs are then retrained
STRATEGIES = ("S1", "S2", "S3")
HEALTHY = "spine_generic_like"


# --------------------------------------------------------------------------------------
# Method record
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepInfo:
    """Where a training step is: ``epoch`` (0-based), ``epochs`` (total of this run), ``step``
    (global batch counter, 0-based)."""

    epoch: int
    epochs: int
    step: int


@dataclass(frozen=True)
class Method:
    """One baseline.

    UAD methods (``kind="uad"``) give
      ``build(cfg, image_size) -> nn.Module``,
      ``optimizers(model, cfg) -> dict[str, torch.optim.Optimizer]``,
      ``train_step(model, opts, x, roi, generator, cfg, info) -> dict[str, float]`` with
      ``x`` ``(B, 1, H, W)`` in [0, 1] and ``roi`` ``(B, 1, H, W)`` float {0, 1} on the model's
      device, ``generator`` a CPU ``torch.Generator``;
      ``reconstruct(model, x, roi, generator, cfg) -> (B, 1, H, W)`` the whole-image
      reconstruction (eval mode, no grad);
      optionally ``map_filter(maps, roi, sub_cfg) -> (N, H, W)``: the method's own filtering
      of its residual map ``|x - recon|`` (``(N, H, W)`` float32, 0 outside ``roi``, bool),
      e.g. cDDPM's median filter; :func:`anomaly_maps` applies it and zeroes the result
      outside the ROI again. ``None`` (the default): the map is the plain residual.
    ``paired=True`` (transductive, Brainomaly): ``train_data`` of :func:`fit_run` is the target
    set and ``healthy`` the healthy reference; ``train_step`` is then called with the keyword
    ``healthy=(x_h, roi_h)``, a healthy batch of the same shape as ``x`` drawn alongside it.
    ``base``: the registry name of the method whose finished run this one starts from
    (:func:`fit_run` then requires ``init``; a state dict of the base fills the parameters it
    names, the rest keep their initialisation).
    ``beyond_paper``: a method added beyond the paper's comparison (issue 17): registered, but
    left out of ``UAD_METHODS`` / ``SIGNAL_METHODS`` (the paper's set, which notebook 09 trains
    and tabulates) and listed in ``NEW_METHODS``.
    Signal methods (``kind="signal"``) give ``maps(*arrays, signal_cfg) -> (N, H, W)`` where
    ``arrays`` are the ``(N, H, W)`` fields named by ``inputs`` in that order (default
    ``("images", "cord")``; the morphology baseline reads ``("cord", "csf")``, never the images);
    ``images`` is float32, masks are bool.
    ``sub_config(cfg)`` returns the method's own part of the :class:`BaselineConfig` (hashed
    with the run).
    """

    name: str
    label: str
    kind: str
    reference: str
    sub_config: Callable[[BaselineConfig], Any]
    build: Callable[..., torch.nn.Module] | None = None
    optimizers: Callable[..., dict[str, torch.optim.Optimizer]] | None = None
    train_step: Callable[..., dict[str, float]] | None = None
    reconstruct: Callable[..., torch.Tensor] | None = None
    maps: Callable[..., np.ndarray] | None = None
    inputs: tuple[str, ...] = ("images", "cord")
    map_filter: Callable[..., np.ndarray] | None = None
    paired: bool = False
    base: str | None = None
    beyond_paper: bool = False

    def __post_init__(self):
        if self.kind not in ("uad", "signal"):
            raise ValueError(f"Method {self.name}: kind must be 'uad' or 'signal', got {self.kind!r}")
        need = ("build", "optimizers", "train_step", "reconstruct") if self.kind == "uad" else ("maps",)
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"Method {self.name} ({self.kind}) lacks {missing}")
        if self.kind != "uad" and (self.paired or self.base):
            raise ValueError(f"Method {self.name}: only a UAD method can be paired or have a base")


@dataclass
class SignalModel:
    """What :func:`fit` returns for a signal method: nothing is trained, only the settings."""

    method: str
    cfg: Any
    run_path: Path | None = None

    def eval(self):  # symmetry with nn.Module in notebook loops
        return self


def get_method(method: str | Method) -> Method:
    """The :class:`Method` for a registry name (``"vae"``, ``"dae"``, ... ``"dbscan"``)."""
    if isinstance(method, Method):
        return method
    from . import BASELINES

    try:
        return BASELINES[method]
    except KeyError:
        raise KeyError(f"unknown baseline {method!r}; choose one of {sorted(BASELINES)}") from None


# --------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int):
    from u2ad_core.data.datasets import load_dataset

    return load_dataset(path)


def _load_data(data: Any):
    """A dataset path (``.npz`` from :func:`u2ad_core.data.datasets.prepare_all`) or an object
    with ``images`` and ``cord`` ``(N, H, W)``. Files are read once per process (cached by
    path and modification time)."""
    if isinstance(data, (str, Path)):
        p = Path(data)
        if not p.exists():
            raise FileNotFoundError(f"dataset file not found: {p} (run prepare_all or u2ad preprocess first)")
        return _load_file(str(p.resolve()), p.stat().st_mtime_ns), str(p)
    if not hasattr(data, "images") or not hasattr(data, "cord"):
        raise TypeError(f"data must be a dataset path or a SliceData (images, cord), got {type(data).__name__}")
    return data, "<in memory>"


def _arrays(data: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(data.images, dtype=np.float32)
    cord = np.asarray(data.cord) > 0
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"{source}: images must be a non-empty (N, H, W) array, got shape {images.shape}")
    if cord.shape != images.shape:
        raise ValueError(f"{source}: cord mask {cord.shape} does not match images {images.shape}")
    return images, cord




def _from_dict(cls, d: Mapping[str, Any]):
    """Rebuild a (nested) frozen config dataclass from :func:`to_dict` output."""
    kw = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        default = getattr(cls(), f.name)
        if is_dataclass(default):
            v = _from_dict(type(default), v)
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
@dataclass
class BaselineRun:
    """What :func:`fit_run` returns: the model (eval mode), its run directory and history."""

    model: Any
    run_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    wall_s: float = 0.0


def _init_identity(init: Any) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """(identity for the hash, state dict) of the initial weights (``None``: random init).

    init: ``None``, a :class:`BaselineRun`, a finished run directory / its ``model.pt``, or a
    model (:func:`u2ad_core.core.runstore.init_weights`)."""
    if isinstance(init, BaselineRun):
        init = init.run_path if init.run_path is not None else init.model
    w = init_weights(init, files=("model.pt",))
    return (None, None) if w is None else ({"run_hash": w.run_hash}, w.state)


def _spec(method: Method, preset: Preset, stage: str, epochs: int, d_hash: str, image_size,
          init_id, seed: int, healthy_hash: str | None = None) -> dict[str, Any]:
    b = preset.baselines
    spec = {
        "format": FORMAT_VERSION,
        "method": method.name,
        "method_cfg": to_dict(method.sub_config(b)),
        "shared": {k: to_dict(getattr(b, k)) for k in ("batch_size", "width", "levels", "augment")},
        "stage": stage,
        "epochs": int(epochs),
        "image_size": list(image_size),
        "data": d_hash,
        "init": init_id,
        "seed": int(seed),
    }
    if healthy_hash is not None:  # paired methods only: the other methods' hashes are unchanged
        spec["healthy"] = healthy_hash
    if b.augment:
        p = preset.pretrain
        spec["augmentation"] = {"brightness": list(p.brightness), "contrast": list(p.contrast),
                                "noise_std": p.noise_std}
    return spec


def _build(method: Method, cfg: BaselineConfig, image_size, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = method.build(cfg, tuple(image_size))
    model.baseline_method = method.name
    model.baseline_cfg = cfg
    return model


def load_run(path: str | Path, device: str = "cpu"):
    """Load a finished baseline run (its directory or ``model.pt``): the model in eval mode
    on ``device``, with attributes ``baseline_method``, ``baseline_cfg``, ``run_hash``,
    ``run_path``."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt"
    if not p.is_file():
        raise FileNotFoundError(f"baseline model not found: {p}")
    state = load_state(p)
    if state.get("format") != FORMAT_VERSION or "method" not in state:
        raise ValueError(f"{p} is not a u2ad_core baseline model (format {state.get('format')!r})")
    method = get_method(state["method"])
    cfg = _from_dict(BaselineConfig, state["baselines"])
    model = _build(method, cfg, state["image_size"], 0)
    model.load_state_dict(state["model"])
    model.run_hash = state["run_hash"]
    model.run_path = p.parent
    return model.to(resolve_device(device)).eval()


def stage_epochs(method: str | Method, cfg: BaselineConfig, stage: str) -> int:
    """Epochs of a ``"pretrain"`` (S1) or ``"adapt"`` (S2, S3) run of ``method`` under ``cfg``:
    ``cfg.beyond_epochs`` for a method beyond the paper when the preset sets it, else
    ``cfg.pretrain_epochs`` / ``cfg.adapt_epochs``."""
    if stage not in ("pretrain", "adapt"):
        raise ValueError(f"stage must be 'pretrain' or 'adapt', got {stage!r}")
    own = cfg.beyond_epochs if get_method(method).beyond_paper else None
    if own is not None:
        return int(own[0] if stage == "pretrain" else own[1])
    return int(cfg.pretrain_epochs if stage == "pretrain" else cfg.adapt_epochs)


def fit_run(
    method: str | Method,
    preset: Preset | str,
    train_data: Any,
    device: str = "auto",
    seed: int | None = None,
    run_dir: str | Path = "runs",
    init: Any = None,
    *,
    stage: str | None = None,
    name: str | None = None,
    reuse: bool = True,
    resume: bool = True,
    show_progress: bool = True,
    healthy: Any = None,
) -> BaselineRun:
    """Train one baseline (or reuse the finished run with the same hash); see module doc.

    train_data: a dataset file or a ``SliceData``. init: ``None`` (random initialisation),
    a :class:`BaselineRun`, a run directory / ``model.pt``, or a model of the same method
    (or, for a method with a ``base``, of the base method: required then).
    stage: ``"pretrain"`` or ``"adapt"``, which sets the epochs (:func:`stage_epochs`); default
    ``"adapt"`` when ``init`` is given, else ``"pretrain"``.
    healthy: paired methods only: the healthy reference set (a dataset file or ``SliceData``
    of the same image size; default ``train_data`` itself, the healthy-only setting). An epoch
    is then ``max(N_target, N_healthy)`` pairs: both sets in a fresh random order, the smaller
    one cycled (Brainomaly's loader pairs image ``i % N_A`` with ``i % N_B``); the healthy
    data's hash joins the run's specification.
    Signal methods train nothing: a :class:`SignalModel` is returned at once.
    """
    m = get_method(method)
    preset = get_preset(preset) if isinstance(preset, str) else preset
    cfg = preset.baselines
    if m.kind == "signal":
        return BaselineRun(SignalModel(m.name, m.sub_config(cfg)), None, reused=True)
    stage = stage or ("adapt" if init is not None else "pretrain")
    if stage not in ("pretrain", "adapt"):
        raise ValueError(f"stage must be 'pretrain' or 'adapt', got {stage!r}")
    epochs = stage_epochs(m, cfg, stage)
    if epochs < 1:
        raise ValueError(f"baselines.{stage}_epochs must be >= 1, got {epochs}")
    if healthy is not None and not m.paired:
        raise ValueError(f"{m.label} trains on one set: healthy= is only for paired methods")
    if m.base is not None and init is None:
        raise ValueError(f"{m.label} is trained on top of a finished {get_method(m.base).label} run: "
                         f"pass init= (e.g. strategy_model or fit_run of {m.base!r})")
    seed = preset.seed if seed is None else int(seed)
    data, source = _load_data(train_data)
    images_np, cord_np = _arrays(data, source)
    image_size = images_np.shape[1:]
    h_hash = h_arrays = h_source = None
    if m.paired:
        h_data, h_source = (data, source) if healthy is None else _load_data(healthy)
        h_arrays = _arrays(h_data, h_source)
        if h_arrays[0].shape[1:] != image_size:
            raise ValueError(f"healthy set {h_source}: images {h_arrays[0].shape[1:]} do not match the "
                             f"target set's {image_size}")
        h_hash = data_hash(h_data)
    init_id, init_state = _init_identity(init)
    spec = _spec(m, preset, stage, epochs, data_hash(data), image_size, init_id, seed, h_hash)
    run = open_run(Path(run_dir) / "baselines", name or f"{m.name}-{stage}", spec)
    run_hash, run_path = run.run_hash, run.path
    dev = resolve_device(device)

    if reuse and run.done:
        history = [{k: v for k, v in r.items() if v is not None} for r in run.read_metrics(text=())]
        return BaselineRun(load_run(run_path, dev), run_path, history, reused=True)

    t_start = time.perf_counter()
    model = _build(m, cfg, image_size, seed)
    if init_state is not None:
        try:
            unexpected = model.load_state_dict(init_state, strict=m.base is None).unexpected_keys
        except RuntimeError as exc:
            raise ValueError(f"init weights do not fit a {m.label} built from this preset: {exc}") from None
        if unexpected:
            raise ValueError(f"init weights are not a {m.label} or {get_method(m.base).label} model: "
                             f"unexpected {unexpected[:3]}")
    model.to(dev).train()
    opts = m.optimizers(model, cfg)
    g = make_generator(seed)
    history: list[dict[str, Any]] = []
    start = 0
    wall_before = 0.0
    state = run.start(resume, config={"source": source, "baselines": to_dict(cfg),
                                      **({"healthy_source": h_source} if m.paired else {})})
    if state is not None:
        model.load_state_dict(state["model"])
        for k, o in opts.items():
            o.load_state_dict(state["optimizers"][k])
        g.set_state(state["generator"])
        start, history, wall_before = int(state["epoch"]), list(state["history"]), float(state["wall_s"])

    from u2ad_core.method.train import augment  # paper 4.3 augmentation, the same as U2AD's

    images = torch.from_numpy(images_np)
    roi = torch.from_numpy(cord_np.astype(np.float32))
    n_target, bs = len(images), max(1, int(cfg.batch_size))
    h_images = h_roi = None
    if h_arrays is not None:
        h_images, h_roi = torch.from_numpy(h_arrays[0]), torch.from_numpy(h_arrays[1].astype(np.float32))
    n = n_target if h_images is None else max(n_target, len(h_images))
    aug_cfg = preset.pretrain
    step = start * math.ceil(n / bs)
    bar = progress(total=epochs, initial=start, desc=f"{m.label} {run_path.name}", unit="epoch",
                   **({} if show_progress else {"disable": True}))
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(n_target, generator=g)
            h_perm = None if h_images is None else torch.randperm(len(h_images), generator=g)
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for s in range(0, n, bs):
                pos = torch.arange(s, min(s + bs, n))
                idx = perm[s:s + bs] if h_perm is None else perm[pos % n_target]
                x = images[idx].unsqueeze(1)
                if cfg.augment:
                    x = augment(x, g, aug_cfg)
                extra = {}
                if h_perm is not None:  # the healthy batch paired with this target batch
                    h_idx = h_perm[pos % len(h_perm)]
                    x_h = h_images[h_idx].unsqueeze(1)
                    if cfg.augment:
                        x_h = augment(x_h, g, aug_cfg)
                    extra["healthy"] = (x_h.to(dev), h_roi[h_idx].unsqueeze(1).to(dev))
                losses = m.train_step(model, opts, x.to(dev), roi[idx].unsqueeze(1).to(dev), g, cfg,
                                      StepInfo(epoch, epochs, step), **extra)
                for k, v in losses.items():
                    if not math.isfinite(v):
                        raise FloatingPointError(f"{m.label} ({run_path.name}): non-finite {k} at epoch {epoch}; "
                                                 "lower the learning rate")
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                    counts[k] = counts.get(k, 0) + len(idx)
                step += 1
            row = {"epoch": epoch, "seconds": round(time.perf_counter() - t0, 3),
                   **{k: v / counts[k] for k, v in sums.items()}}
            history.append(row)
            run.write_metrics(history)
            done = epoch + 1
            if done % max(1, int(cfg.checkpoint_every)) == 0 and done < epochs:
                run.save_checkpoint({"epoch": done, "model": model.state_dict(),
                                     "optimizers": {k: o.state_dict() for k, o in opts.items()},
                                     "generator": g.get_state(), "history": history,
                                     "wall_s": wall_before + time.perf_counter() - t_start})
            bar.update(1)
    finally:
        bar.close()
    model.eval()
    model.run_hash = run_hash
    model.run_path = run_path
    wall = wall_before + time.perf_counter() - t_start
    run.finish({"format": FORMAT_VERSION, "method": m.name, "run_hash": run_hash, "spec": spec,
                "baselines": to_dict(cfg), "image_size": list(image_size),
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
               {"method": m.name, "stage": stage, "epochs": epochs, "device": dev, "wall_s": round(wall, 2),
                "final": history[-1] if history else {}}, keep_checkpoint=False)
    return BaselineRun(model, run_path, history, reused=False, wall_s=wall)


def fit(method: str | Method, preset: Preset | str, train_data: Any, device: str = "auto",
        seed: int | None = None, run_dir: str | Path = "runs", init: Any = None, **kwargs: Any):
    """Train a baseline (cached by configuration hash) and return the model; see :func:`fit_run`."""
    return fit_run(method, preset, train_data, device, seed, run_dir, init, **kwargs).model


# --------------------------------------------------------------------------------------
# Reconstruction and maps
# --------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(method: str | Method, model: torch.nn.Module, images: np.ndarray, cord: np.ndarray,
                device: str = "auto", seed: int = 0, batch_size: int | None = None,
                show_progress: bool = False) -> np.ndarray:
    """Whole-image reconstructions ``(N, H, W)`` float32 (before the ROI paste), in batches.

    Randomness at inference (DAE noise, AnoDDPM noise) comes from one generator seeded with
    ``seed``, drawn batch after batch, so the result depends on the batch size only through
    the order of the draws (fixed for a fixed batch size).
    """
    m = get_method(method)
    if m.kind != "uad":
        raise ValueError(f"{m.label} is a signal method: it reconstructs nothing")
    cfg: BaselineConfig = getattr(model, "baseline_cfg", None) or BaselineConfig()
    dev = next(model.parameters()).device if device in (None, "auto") else torch.device(resolve_device(device))
    model.to(dev).eval()
    g = make_generator(seed)
    bs = int(batch_size or cfg.infer_batch)
    out = np.empty(images.shape, dtype=np.float32)
    for s in progress(range(0, len(images), bs), desc=f"{m.label} recon", disable=not show_progress):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + bs])).unsqueeze(1).to(dev)
        r = torch.from_numpy(np.ascontiguousarray(cord[s:s + bs]).astype(np.float32)).unsqueeze(1).to(dev)
        out[s:s + bs] = m.reconstruct(model, x, r, g, cfg)[:, 0].float().cpu().numpy()
    return out


def anomaly_maps(method: str | Method, model: Any, data: Any, device: str = "auto", seed: int = 0,
                 batch_size: int | None = None, show_progress: bool = False):
    """``(recon, maps)`` for every slice of ``data`` (a dataset file or ``SliceData``).

    UAD methods: ``recon`` ``(N, H, W)`` = the model's reconstruction inside the cord, the
    original image outside (paper Appendix B.1); ``maps`` = ``|x - recon|`` inside the cord,
    0 outside, then the method's ``map_filter`` if it has one (cDDPM: median filter in the
    cord), with the configuration the model was trained with. Signal methods (``model`` = the :class:`SignalModel` from :func:`fit`, or
    ``None`` for the paper's settings): ``recon`` is ``None`` and ``maps`` is the method's
    score map, computed from the fields its ``Method.inputs`` names (a missing ``csf`` raises
    a ``ValueError``), 0 outside the cord.
    """
    from u2ad_core.method.scoring import anomaly_map

    m = get_method(method)
    data, source = _load_data(data)
    images, cord = _arrays(data, source)
    if m.kind == "signal":
        cfg = getattr(model, "cfg", None) or m.sub_config(BaselineConfig())
        arrays = {"images": images, "cord": cord}
        for k in m.inputs:
            if k not in arrays:
                v = getattr(data, k, None)
                if v is None:
                    raise ValueError(f"{source}: {m.label} needs the {k!r} mask, which the data does not have")
                arrays[k] = np.asarray(v) > 0
                if arrays[k].shape != images.shape:
                    raise ValueError(f"{source}: {k} mask {arrays[k].shape} does not match images {images.shape}")
        maps = np.asarray(m.maps(*(arrays[k] for k in m.inputs), cfg), dtype=np.float32)
        return None, np.where(cord, maps, 0.0).astype(np.float32)
    full = reconstruct(m, model, images, cord, device, seed, batch_size, show_progress)
    recon = np.where(cord, full, images).astype(np.float32)
    maps = anomaly_map(images, recon, cord)
    if m.map_filter is not None:
        cfg = getattr(model, "baseline_cfg", None) or BaselineConfig()
        maps = np.where(cord, m.map_filter(maps, cord, m.sub_config(cfg)), 0.0).astype(np.float32)
    return recon, maps


# --------------------------------------------------------------------------------------
# Dataset strategies
# --------------------------------------------------------------------------------------
def strategy_model(ctx_or_preset: Any, method: str, cohort: str, strategy: str, *,
                   data_dir: str | Path | None = None, run_dir: str | Path | None = None,
                   device: str | None = None, seed: int | None = None, show_progress: bool = True,
                   paths: Mapping[str, Any] | None = None):
    """A baseline trained with one of the paper's dataset strategies (section 4.5), cached.

    S1: pretrain on the healthy ``spine_generic_like`` cohort (shared by every cohort);
    S2: train from scratch on ``cohort`` (``adapt_epochs``); S3: the S1 model fine-tuned on
    ``cohort``. ``cohort`` is any key of :func:`u2ad_core.data.datasets.prepare_all` other than the
    healthy one (``renji_like``, ``ruijin_like``, ``pseudo``...). Signal methods return their
    :class:`SignalModel` for every strategy. ``paths``: the output of ``prepare_all`` when the
    caller already has it (otherwise it is called). Returns ``(model, run_path)`` like
    :func:`u2ad_core.method.train.strategy_model`.

    Paired methods (``Method.paired``, Brainomaly) need the healthy reference in every
    strategy: it is the healthy set of the pairs, and the strategy sets the target set (the
    one translated towards healthy) and the start:

    - S1: target = the healthy set itself (no clinical image seen: healthy-to-healthy
      translation, identity loss and critic on healthy images only), from scratch;
    - S2: target = ``cohort``, from scratch: Brainomaly's own transductive setting (U2AD's
      S2 sees the clinical set only; a paired method cannot run without the healthy set);
    - S3: target = ``cohort``, starting from the S1 weights (U2AD's S3: adapt on the very
      clinical set that is then tested).

    A method with a ``base`` (``brainomaly_diff``) takes the base method's model of the same
    strategy (trained or reused) as ``init`` and trains on top of it on the same data, for the
    epochs of that model's last stage (S1 pretraining, S2 / S3 adaptation: :func:`stage_epochs`).
    """
    from u2ad_core.core.context import unpack_context

    preset, data_dir, run_dir, device, seed = unpack_context(ctx_or_preset, data_dir, run_dir, device, seed,
                                                             who="baselines.strategy_model")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    m = get_method(method)
    if m.kind == "signal":
        return SignalModel(m.name, m.sub_config(preset.baselines)), None
    if paths is None:
        from u2ad_core.data.datasets import prepare_all

        paths = prepare_all(preset, data_dir, seed=preset.seed if seed is None else seed)
    if cohort == HEALTHY or cohort not in paths:
        raise ValueError(f"cohort must be one of {sorted(k for k in paths if k != HEALTHY)}, got {cohort!r}")
    kw = dict(device=device or "auto", seed=seed, run_dir=run_dir, show_progress=show_progress)
    if m.paired:
        kw["healthy"] = paths[HEALTHY]
    name = f"{m.name}-S1" if strategy == "S1" else f"{m.name}-{cohort}-{strategy}"
    target = paths[HEALTHY] if strategy == "S1" else paths[cohort]
    if m.base is not None:
        _, base_path = strategy_model(preset, m.base, cohort, strategy, data_dir=data_dir, run_dir=run_dir,
                                      device=device, seed=seed, show_progress=show_progress, paths=paths)
        run = fit_run(m, preset, target, init=base_path, stage="pretrain" if strategy == "S1" else "adapt",
                      name=name, **kw)
    elif strategy in ("S1", "S3"):
        pre = fit_run(m, preset, paths[HEALTHY], stage="pretrain", name=f"{m.name}-S1", **kw)
        if strategy == "S1":
            return pre.model, pre.run_path
        run = fit_run(m, preset, target, init=pre, stage="adapt", name=name, **kw)
    else:
        run = fit_run(m, preset, target, init=None, stage="adapt", name=name, **kw)
    return run.model, run.run_path


# --------------------------------------------------------------------------------------
# Scoring and evaluation (the same as U2AD's)
# --------------------------------------------------------------------------------------
def score_anomaly_maps(maps: np.ndarray, data: Any, score_cfg=None, recon: np.ndarray | None = None):
    """Score given anomaly maps with U2AD's pipeline (:mod:`u2ad_core.method.scoring`, paper 3.5).

    ``maps`` ``(N, H, W)`` raw maps (0 outside the cord) of the N slices of ``data`` (a
    ``SliceData`` with ``images``, ``cord``, ``segments`` and the per-slice metadata). The ROI
    is the cord eroded ``score_cfg.erode_cord`` times; then post-processing, curve, segment
    and patient scores exactly as :func:`u2ad_core.method.scoring.score_maps` does from a
    reconstruction. Returns a :class:`u2ad_core.method.scoring.ScoreResult` (``recon`` = ``recon``
    or the images, ``eu`` = None).
    """
    from u2ad_core.core.config import ScoreConfig
    from u2ad_core.method.scoring import (ScoreResult, anomaly_curve, centreline, cord_roi, curve_assignment,
                           point_segments, postprocess, scores_table)

    sc = score_cfg or ScoreConfig()
    images = np.asarray(data.images, dtype=np.float32)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != images.shape:
        raise ValueError(f"maps {maps.shape} do not match data.images {images.shape}")
    roi = cord_roi(data.cord, sc.erode_cord)
    raw = np.where(roi, maps, 0.0).astype(np.float32)
    post = postprocess(raw, roi, sc.drop_bottom, sc.top_components, sc.connectivity)
    assign = curve_assignment(roi, sc.curve, sc.centreline_sigma)
    curves = anomaly_curve(post, assign)
    pseg = point_segments(data.segments, assign)
    if sc.curve == "rows":
        with np.errstate(invalid="ignore", divide="ignore"):
            line = (roi * np.arange(images.shape[2])).sum(2) / roi.sum(2)
    else:
        line = centreline(roi, sc.centreline_sigma)
    meta = {k: getattr(data, k, None) for k in ("subject", "slice_index", "patient_label", "lesion_segments",
                                                  "slice_offset")}
    table = scores_table(curves, pseg, patient_span=sc.patient_span, **meta)
    return ScoreResult(maps=post, raw_maps=raw, roi=roi, curves=curves, point_segments=pseg, centreline=line,
                       recon=images if recon is None else np.asarray(recon, dtype=np.float32), eu=None,
                       table=table, config=to_dict(sc))


def evaluate_maps(maps: np.ndarray, data: Any, preset: Preset, recon: np.ndarray | None = None, seed: int | None = None):
    """Score maps and run the paper's cross-validation (``preset.score``, ``preset.eval``).

    Returns ``(ScoreResult, CVResult, threshold_free dict)``.
    """
    from u2ad_core.metrics import cross_validate, threshold_free

    res = score_anomaly_maps(maps, data, preset.score, recon)
    e = preset.eval
    cv = cross_validate(res.table, n_folds=e.n_folds, n_repeats=e.n_repeats, sensitivity=e.sensitivity,
                        seed=preset.seed if seed is None else seed, segment_rule=e.segment_rule)
    return res, cv, threshold_free(res.table)


def results_row(cohort: str, strategy: str, model: str, cv, tf: Mapping[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """One results row in the layout of notebook 07's ``table1_u2ad.csv``: cohort, strategy,
    model, ``<metric>_mean`` / ``_std`` / ``_n_nan`` for every metric of
    :func:`u2ad_core.metrics.cross_validate`, the Table 1 cells as strings, AUROC/AUPRC."""
    from u2ad_core.metrics import METRICS

    summ = cv.summary()
    row: dict[str, Any] = {"cohort": cohort, "strategy": strategy, "model": model}
    for k in METRICS:
        row[f"{k}_mean"] = summ.loc[k, "mean"]
        row[f"{k}_std"] = summ.loc[k, "std"]
        row[f"{k}_n_nan"] = int(summ.loc[k, "n_nan"])
    for (group, col), v in cv.row("paper").items():
        row[f"{group} {col}"] = v
    if tf is not None:
        row.update(auroc=tf.get("auroc"), auprc=tf.get("auprc"))
    row.update(n_patients=cv.settings["n_patients"], n_positive=cv.settings["n_positive"],
               n_repeats=cv.settings["n_repeats"], n_folds=cv.settings["n_folds"], **extra)
    return row


def table_from_rows(rows, protocol: str = "paper", digits: int = 4, extra: tuple[str, ...] = ()):
    """Paper Table 1 layout from results rows (:func:`results_row` or ``table1_u2ad.csv``):
    index (strategy, model), two-level columns, cells ``"mean ± std"``; ``extra`` columns
    (e.g. ``"auroc"``) are appended as plain numbers."""
    import pandas as pd

    from u2ad_core.metrics import TABLE1_COLUMNS, format_mean_std

    df = pd.DataFrame(rows)
    cols = pd.MultiIndex.from_tuples([(g, c) for g, c, _ in TABLE1_COLUMNS] + [("", e) for e in extra])
    data = []
    for _, r in df.iterrows():
        cells = []
        for _, _, key in TABLE1_COLUMNS:
            if protocol == "honest" and key.startswith("segment_"):
                key += "_honest"
            cells.append(format_mean_std(float(r[f"{key}_mean"]), float(r[f"{key}_std"]), digits))
        cells += [round(float(r[e]), digits) if pd.notna(r.get(e)) else float("nan") for e in extra]
        data.append(cells)
    index = pd.MultiIndex.from_arrays([df["strategy"].astype(str), df["model"].astype(str)],
                                      names=["strategy", "model"])
    return pd.DataFrame(data, index=index, columns=cols)
