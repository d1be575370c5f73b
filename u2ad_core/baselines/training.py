"""Training the baselines: cached, resumable runs through the project's training engine, and
the paper's dataset strategies S1-S3 for a baseline (:func:`baseline_model`).

Every UAD baseline trains through :func:`u2ad_core.core.engine.fit` (reuse, resume, epochs,
data order, non-finite check, ``metrics.csv``, checkpoints); a method plugs in its
``Method.train_step``, called with one batch: ``x`` and ``roi`` ``(B, 1, H, W)`` on the model's
device (augmented with U2AD's paper 4.3 augmentation when ``baselines.augment``), the CPU
generator, the configuration and a :class:`~u2ad_core.core.engine.StepInfo`. A paired method
(Brainomaly) also gets ``healthy=(x_h, roi_h)``, a healthy batch drawn alongside.

A run lives in ``run_dir / "baselines" / f"{name}-{hash}"`` (:mod:`u2ad_core.baselines.common`
lists its files); ``checkpoint.pt`` holds ``epoch``, ``model``, ``optimizers`` (by name),
``generator``, ``history`` and ``wall_s``, and is dropped when the run finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from u2ad_core.core import engine
from u2ad_core.core.config import STRATEGIES, BaselineConfig, config_from_dict, to_dict
from u2ad_core.core.context import unpack_context
from u2ad_core.core.engine import FitResult, Hooks, StepInfo
from u2ad_core.core.presets import Preset, get_preset
from u2ad_core.core.runstore import init_weights, load_state, open_run
from u2ad_core.core.runtime import make_generator, resolve_device
from u2ad_core.data.datasets import data_hash, load_data, prepare_all
from u2ad_core.method.train import augment  # paper 4.3 augmentation, the same as U2AD's

from .common import Method, SignalModel, get_method, image_arrays

__all__ = ["BaselineRun", "STRATEGIES", "HEALTHY", "FORMAT_VERSION", "fit_baseline", "fit_run", "stage_epochs", "load_run",
           "baseline_model"]

FORMAT_VERSION = 2  # bump when an architecture changes: older cached runs are then retrained
HEALTHY = "spine_generic_like"


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
    cfg = config_from_dict(BaselineConfig, state["baselines"])
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
                         f"pass init= (e.g. baseline_model or fit_run of {m.base!r})")
    seed = preset.seed if seed is None else int(seed)
    data, source = load_data(train_data, cache=True)
    images_np, cord_np = image_arrays(data, source)
    image_size = images_np.shape[1:]
    h_hash = h_arrays = h_source = None
    if m.paired:
        h_data, h_source = (data, source) if healthy is None else load_data(healthy, cache=True)
        h_arrays = image_arrays(h_data, h_source)
        if h_arrays[0].shape[1:] != image_size:
            raise ValueError(f"healthy set {h_source}: images {h_arrays[0].shape[1:]} do not match the "
                             f"target set's {image_size}")
        h_hash = data_hash(h_data)
    init_id, init_state = _init_identity(init)
    spec = _spec(m, preset, stage, epochs, data_hash(data), image_size, init_id, seed, h_hash)
    run = open_run(Path(run_dir) / "baselines", name or f"{m.name}-{stage}", spec)
    dev = resolve_device(device)
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
    step = _BatchStep(m, model, opts, cfg, preset, g, dev, images_np, cord_np, h_arrays)
    hooks = Hooks(
        row=lambda r: {"epoch": r["epoch"], "seconds": r["seconds"],
                       **{k: v for k, v in r.items() if k not in ("epoch", "seconds")}},
        final_state=lambda: {"format": FORMAT_VERSION, "method": m.name, "run_hash": run.run_hash, "spec": spec,
                             "baselines": to_dict(cfg), "image_size": list(image_size),
                             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
        done_info=lambda wall, history: {"method": m.name, "stage": stage, "epochs": epochs, "device": dev,
                                         "wall_s": round(wall, 2), "final": history[-1] if history else {}},
    )
    res: FitResult = engine.fit(
        run, model, opts, step, epochs=epochs, n=step.n, batch_size=step.bs, generator=g,
        order=step.order if m.paired else None, hooks=hooks, resume=resume, reuse=reuse,
        load=lambda p: (load_run(p, dev), {}), history_text=(),
        config={"source": source, "baselines": to_dict(cfg), **({"healthy_source": h_source} if m.paired else {})},
        checkpoint_every=int(cfg.checkpoint_every), keep_checkpoint=False, label=f"{m.label} ({run.path.name})",
        show_progress=show_progress, t_start=t_start)
    if res.reused:
        history = [{k: v for k, v in r.items() if v is not None} for r in res.history]
        return BaselineRun(res.model, run.path, history, reused=True)
    model.run_hash = run.run_hash
    model.run_path = run.path
    return BaselineRun(model, run.path, res.history, reused=False, wall_s=res.wall_s)


@dataclass
class _Pair:
    """A paired method's batch: target indices ``idx`` (b,) and healthy indices ``h_idx`` (b,)."""

    idx: torch.Tensor
    h_idx: torch.Tensor

    def __len__(self) -> int:
        return len(self.idx)


class _BatchStep:
    """A baseline's batch step for :func:`u2ad_core.core.engine.fit`: the training tensors (CPU: images (N, H, W)
    float32, roi (N, H, W) float {0, 1}; the healthy set's for a paired method), the augmentation
    and the call of ``Method.train_step``."""

    def __init__(self, m: Method, model, opts, cfg: BaselineConfig, preset: Preset, g: torch.Generator, dev: str,
                 images_np: np.ndarray, cord_np: np.ndarray, h_arrays):
        self.m, self.model, self.opts, self.cfg, self.g, self.dev = m, model, opts, cfg, g, dev
        self.aug_cfg = preset.pretrain
        self.images = torch.from_numpy(images_np)
        self.roi = torch.from_numpy(cord_np.astype(np.float32))
        self.h_images = self.h_roi = None
        if h_arrays is not None:
            self.h_images, self.h_roi = torch.from_numpy(h_arrays[0]), torch.from_numpy(h_arrays[1].astype(np.float32))
        self.n_target, self.bs = len(self.images), max(1, int(cfg.batch_size))
        self.n = self.n_target if self.h_images is None else max(self.n_target, len(self.h_images))

    def order(self, g: torch.Generator) -> list[_Pair]:
        """Paired methods: both sets in a fresh random order, the smaller one cycled, ``n`` pairs
        (Brainomaly's loader pairs image ``i % N_A`` with ``i % N_B``)."""
        perm = torch.randperm(self.n_target, generator=g)
        h_perm = torch.randperm(len(self.h_images), generator=g)
        out = []
        for s in range(0, self.n, self.bs):
            pos = torch.arange(s, min(s + self.bs, self.n))
            out.append(_Pair(perm[pos % self.n_target], h_perm[pos % len(h_perm)]))
        return out

    def _x(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = images[idx].unsqueeze(1)
        return augment(x, self.g, self.aug_cfg) if self.cfg.augment else x

    def __call__(self, batch, info: StepInfo) -> dict[str, float]:
        idx = batch.idx if isinstance(batch, _Pair) else batch
        x = self._x(self.images, idx)
        extra = {}
        if isinstance(batch, _Pair):  # the healthy batch paired with this target batch
            x_h = self._x(self.h_images, batch.h_idx)
            extra["healthy"] = (x_h.to(self.dev), self.h_roi[batch.h_idx].unsqueeze(1).to(self.dev))
        return self.m.train_step(self.model, self.opts, x.to(self.dev), self.roi[idx].unsqueeze(1).to(self.dev),
                                 self.g, self.cfg, info, **extra)


def fit_baseline(method: str | Method, preset: Preset | str, train_data: Any, device: str = "auto",
        seed: int | None = None, run_dir: str | Path = "runs", init: Any = None, **kwargs: Any):
    """Train a baseline (cached by configuration hash) and return the model; see :func:`fit_run`."""
    return fit_run(method, preset, train_data, device, seed, run_dir, init, **kwargs).model



def baseline_model(ctx_or_preset: Any, method: str, cohort: str, strategy: str, *,
                   data_dir: str | Path | None = None, run_dir: str | Path | None = None,
                   device: str | None = None, seed: int | None = None, show_progress: bool = True,
                   paths: Mapping[str, Any] | None = None):
    """A baseline trained with one of the paper's dataset strategies (section 4.5), cached.

    S1: pretrain on the healthy ``spine_generic_like`` cohort (shared by every cohort);
    S2: train from scratch on ``cohort`` (``adapt_epochs``); S3: the S1 model fine-tuned on
    ``cohort``. ``cohort`` is any key of :func:`u2ad_core.data.datasets.prepare_all` other than the
    healthy one (``renji_like``, ``ruijin_like``, ``pseudo``...). Signal methods return their
    :class:`SignalModel` for every strategy. ``paths``: the output of ``prepare_all`` when the
    caller already has it (otherwise it is called). Returns ``(model, run_path)`` like U2AD's
    :func:`u2ad_core.method.train.strategy_model` (whose variant, the masking, comes last).

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
    preset, data_dir, run_dir, device, seed = unpack_context(ctx_or_preset, data_dir, run_dir, device, seed,
                                                             who="baseline_model")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    m = get_method(method)
    if m.kind == "signal":
        return SignalModel(m.name, m.sub_config(preset.baselines)), None
    if paths is None:
        paths = prepare_all(preset, data_dir, seed=preset.seed if seed is None else seed)
    if cohort == HEALTHY or cohort not in paths:
        raise ValueError(f"cohort must be one of {sorted(k for k in paths if k != HEALTHY)}, got {cohort!r}")
    kw = dict(device=device or "auto", seed=seed, run_dir=run_dir, show_progress=show_progress)
    if m.paired:
        kw["healthy"] = paths[HEALTHY]
    name = f"{m.name}-S1" if strategy == "S1" else f"{m.name}-{cohort}-{strategy}"
    target = paths[HEALTHY] if strategy == "S1" else paths[cohort]
    if m.base is not None:
        _, base_path = baseline_model(preset, m.base, cohort, strategy, data_dir=data_dir, run_dir=run_dir,
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

