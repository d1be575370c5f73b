"""Shared glue for the baselines: the method record, reconstruction, anomaly maps, and
scoring/evaluation under U2AD's protocol (training and the strategies S1-S3:
:mod:`u2ad_core.baselines.training`).

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
  :func:`~u2ad_core.baselines.training.baseline_model` maps the strategies onto it (see there).
- ``base``: the method is trained on top of another method's finished run
  (``brainomaly_diff``: Brainomaly-Diff's refiner on a trained Brainomaly generator), reached
  through the run store's init identity: ``init`` is required, and the base's weights fill
  the parameters they name.

Common interface (the same for both kinds)::

    model = fit("vae", preset, train_data, device, seed, run_dir, init=None)   # cached
    recon, maps = anomaly_maps("vae", model, data, device)                    # (N, H, W) each
    recon, maps = anomaly_maps("vae", model, data, device, sided=preset.score.sided)  # the switch

``recon`` is the reconstruction with the original pasted outside the cord (``None`` for the
signal methods, which reconstruct nothing); ``maps`` is ``(N, H, W)`` float32, zero outside
the cord: ``|x - recon|`` in the cord for the UAD methods (:func:`u2ad_core.method.scoring.anomaly_map`),
the method's own score for the signal methods. ``sided`` (``ScoreConfig.sided``, pass
``preset.score.sided``) sets the sign of every map at its residual, before the method's own
filtering: ``"abs"`` ``|x - recon|``, ``"bright"`` ``max(x - recon, 0)`` (signal methods: the
same rule on their z-score / distance, see :mod:`u2ad_core.baselines.signal`); ``None`` keeps
each method's own rule. :func:`score_anomaly_maps` then applies the
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from u2ad_core.core.config import SIDES, BaselineConfig, ScoreConfig, to_dict
from u2ad_core.core.engine import StepInfo
from u2ad_core.core.presets import Preset
from u2ad_core.core.runtime import make_generator, progress, resolve_device
from u2ad_core.data.datasets import data_hash, load_data
from u2ad_core.method.scoring import (
    ScoreResult,
    anomaly_curve,
    anomaly_map,
    centreline,
    cord_roi,
    curve_assignment,
    point_segments,
    postprocess,
    scores_table,
)
from u2ad_core.metrics import METRICS, TABLE1_COLUMNS, cross_validate, format_mean_std, significant, threshold_free

__all__ = [
    "Method",
    "StepInfo",
    "SignalModel",
    "get_method",
    "data_hash",
    "image_arrays",
    "reconstruct",
    "anomaly_maps",
    "score_anomaly_maps",
    "evaluate_maps",
    "results_row",
    "table_from_rows",
]


# --------------------------------------------------------------------------------------
# Method record
# --------------------------------------------------------------------------------------
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
    ``paired=True`` (transductive, Brainomaly): ``train_data`` of :func:`~u2ad_core.baselines.training.fit_run` is the target
    set and ``healthy`` the healthy reference; ``train_step`` is then called with the keyword
    ``healthy=(x_h, roi_h)``, a healthy batch of the same shape as ``x`` drawn alongside it.
    ``base``: the registry name of the method whose finished run this one starts from
    (:func:`~u2ad_core.baselines.training.fit_run` then requires ``init``; a state dict of the base fills the parameters it
    names, the rest keep their initialisation).
    ``beyond_paper``: a method added beyond the paper's comparison: registered, but
    left out of ``UAD_METHODS`` / ``SIGNAL_METHODS`` (the paper's set, which notebook 09 trains
    and tabulates) and listed in ``NEW_METHODS``.
    Signal methods (``kind="signal"``) give ``maps(*arrays, signal_cfg) -> (N, H, W)`` where
    ``arrays`` are the ``(N, H, W)`` fields named by ``inputs`` in that order (default
    ``("images", "cord")``; the morphology baseline reads ``("cord", "csf")``, never the images);
    ``images`` is float32, masks are bool. ``takes_sided``: ``maps`` also accepts the keyword
    ``sided`` (``"abs"`` / ``"bright"``, :attr:`~u2ad_core.core.config.ScoreConfig.sided`),
    which then overrides the method's own sign rule (Z-scoring, SLIC, DBSCAN); ``False`` for a
    map without a sign (morphology), which ignores the switch.
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
    takes_sided: bool = False

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
    """What :func:`~u2ad_core.baselines.training.fit` returns for a signal method: nothing is trained, only the settings."""

    method: str
    cfg: Any
    run_path: Path | None = None

    def eval(self):  # symmetry with nn.Module in notebook loops
        return self


def get_method(method: str | Method) -> Method:
    """The :class:`Method` for a registry name (``"vae"``, ``"dae"``, ... ``"dbscan"``)."""
    if isinstance(method, Method):
        return method
    from . import BASELINES  # the registry imports every method module, which imports this one

    try:
        return BASELINES[method]
    except KeyError:
        raise KeyError(f"unknown baseline {method!r}; choose one of {sorted(BASELINES)}") from None


# --------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------
def image_arrays(data: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, H, W) float32, cord (N, H, W) bool)`` of ``data``, checked (``source`` names it in errors)."""
    images = np.asarray(data.images, dtype=np.float32)
    cord = np.asarray(data.cord) > 0
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"{source}: images must be a non-empty (N, H, W) array, got shape {images.shape}")
    if cord.shape != images.shape:
        raise ValueError(f"{source}: cord mask {cord.shape} does not match images {images.shape}")
    return images, cord



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
                 batch_size: int | None = None, show_progress: bool = False, sided: str | None = None):
    """``(recon, maps)`` for every slice of ``data`` (a dataset file or ``SliceData``).

    UAD methods: ``recon`` ``(N, H, W)`` = the model's reconstruction inside the cord, the
    original image outside (paper Appendix B.1); ``maps`` = ``|x - recon|`` inside the cord,
    0 outside, then the method's ``map_filter`` if it has one (cDDPM: median filter in the
    cord), with the configuration the model was trained with. Signal methods (``model`` = the :class:`SignalModel` from :func:`~u2ad_core.baselines.training.fit`, or
    ``None`` for the paper's settings): ``recon`` is ``None`` and ``maps`` is the method's
    score map, computed from the fields its ``Method.inputs`` names (a missing ``csf`` raises
    a ``ValueError``), 0 outside the cord.

    ``sided`` (:attr:`~u2ad_core.core.config.ScoreConfig.sided`; pass ``preset.score.sided``):
    the sign of the residual, applied to the residual itself, **before** ``map_filter``:
    ``"abs"`` ``|x - recon|``, ``"bright"`` ``max(x - recon, 0)``; signal methods with
    ``Method.takes_sided`` get it as their ``sided`` keyword (it wins over
    ``SignalConfig.one_sided``); the morphology map has no sign and ignores it. ``None``: each
    method's own rule (UAD ``|x - recon|``, signal ``SignalConfig.one_sided``), as before.
    """
    m = get_method(method)
    if sided not in SIDES:
        raise ValueError(f"anomaly_maps: sided must be one of {SIDES}, got {sided!r}")
    data, source = load_data(data, cache=True)
    images, cord = image_arrays(data, source)
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
        kw = {"sided": sided} if (m.takes_sided and sided is not None) else {}
        maps = np.asarray(m.maps(*(arrays[k] for k in m.inputs), cfg, **kw), dtype=np.float32)
        return None, np.where(cord, maps, 0.0).astype(np.float32)
    full = reconstruct(m, model, images, cord, device, seed, batch_size, show_progress)
    recon = np.where(cord, full, images).astype(np.float32)
    maps = anomaly_map(images, recon, cord, sided)  # sign at the residual, before map_filter
    if m.map_filter is not None:
        cfg = getattr(model, "baseline_cfg", None) or BaselineConfig()
        maps = np.where(cord, m.map_filter(maps, cord, m.sub_config(cfg)), 0.0).astype(np.float32)
    return recon, maps


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
    or the images, ``eu`` = None). The maps' sign is already set (:func:`anomaly_maps`'s
    ``sided``); ``score_cfg.sided`` is only recorded in ``config`` here, so pass the same value
    to both.
    """
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


def table_from_rows(rows, protocol: str = "paper", digits: int = 3, extra: tuple[str, ...] = ()):
    """Paper Table 1 layout from results rows (:func:`results_row` or ``table1_u2ad.csv``):
    index (strategy, model), two-level columns, cells ``"mean ± std"``; ``extra`` columns
    (e.g. ``"auroc"``) are appended as plain numbers."""
    df = pd.DataFrame(rows)
    cols = pd.MultiIndex.from_tuples([(g, c) for g, c, _ in TABLE1_COLUMNS] + [("", e) for e in extra])
    data = []
    for _, r in df.iterrows():
        cells = []
        for _, _, key in TABLE1_COLUMNS:
            if protocol == "honest" and key.startswith("segment_"):
                key += "_honest"
            cells.append(format_mean_std(float(r[f"{key}_mean"]), float(r[f"{key}_std"]), digits))
        cells += [significant(float(r[e]), digits) if pd.notna(r.get(e)) else "n/a" for e in extra]
        data.append(cells)
    index = pd.MultiIndex.from_arrays([df["strategy"].astype(str), df["model"].astype(str)],
                                      names=["strategy", "model"])
    return pd.DataFrame(data, index=index, columns=cols)
