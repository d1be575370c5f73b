"""Monte-Carlo EU / AU maps of U2AD's training runs: the refreshes during adaptation, the
evaluation maps, and their cache in a run's ``mc/`` folder.

:func:`refresh_maps` is the refresh of paper Algorithm 2: with the current weights, K masked
reconstructions of every training image (:func:`u2ad_core.method.uncertainty.mc_uncertainty`),
giving the mean reconstruction and the EU / AU maps; the EU maps become the patch scores the
EU-guided sampler reads, the reconstruction metrics of the epoch are computed from the same
pass, and the tracked images' maps are saved to ``maps/epoch_NNN.npz``. Each refresh draws from
its own generator (:func:`mc_seed`): stream 0 for the evaluation maps (adaptation epoch 0 and
after the last epoch, also used by :func:`mc_maps`), stream ``e`` for the refresh at epoch
``e``, so a refresh never touches the training generator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from u2ad_core.core.config import AdaptConfig, MaskingConfig, MCConfig, ModelConfig, config_hash, to_dict
from u2ad_core.core.presets import Preset
from u2ad_core.core.runtime import atomic_path, make_generator, resolve_device
from u2ad_core.data.datasets import load_data
from u2ad_core.method.masking import EUGuidedMasking
from u2ad_core.method.runs import data_hash, image_tensors, load_checkpoint
from u2ad_core.method.uncertainty import mc_uncertainty
from u2ad_core.metrics.reconstruction import reconstruction_metrics

__all__ = ["Maps", "RefreshPlan", "mc_seed", "mc_key", "mc_maps", "refresh_maps", "choose_tracked",
           "load_tracked_maps", "EVAL_STREAM"]

EVAL_STREAM = 0  # MC generator stream for "evaluation" maps (adaptation epoch 0 and final)


def mc_seed(seed: int, stream: int) -> int:
    """Seed of the MC generator for a refresh: stream 0 = evaluation maps (adaptation epoch 0,
    the final maps and :func:`mc_maps`), stream e = refresh at epoch e."""
    return (int(seed) * 1_000_003 + 7919 * int(stream) + 12345) % (2**63 - 1)


def _run_mc(model, images, roi, mc: MCConfig, mask_ratio: float, seed: int, device: str,
            show: bool = False):
    """:func:`mc_uncertainty` in eval mode from a generator seeded with ``seed`` (the model's
    train / eval mode is restored)."""
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


def mc_key(d_hash: str, mc: MCConfig, mask_ratio: float, seed: int) -> str:
    """File key of the evaluation maps of a model on the data of hash ``d_hash``."""
    return config_hash({"data": d_hash, "mc": to_dict(mc), "mask_ratio": mask_ratio,
                        "seed": mc_seed(seed, EVAL_STREAM)}, n=16)


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


def _model_cfg_of(model, preset: Preset) -> ModelConfig:
    cfg = getattr(model, "cfg", None)
    return cfg if isinstance(cfg, ModelConfig) else preset.model


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
    data, source = load_data(data)
    seed = preset.seed if seed is None else int(seed)
    key = mc_key(data_hash(data), preset.mc, preset.masking.mask_ratio, seed)
    f = run_path / "mc" / f"{key}.npz"
    if f.is_file():
        with np.load(f) as z:
            return Maps(torch.from_numpy(z["mean"]), torch.from_numpy(z["eu"]), torch.from_numpy(z["au"]), cached=True,
                        k=int(preset.mc.k))
    dev = resolve_device(device)
    if model is None:
        model, _ = load_checkpoint(run_path, dev)
    images, roi = image_tensors(data, _model_cfg_of(model, preset), source)
    res = _run_mc(model, images, roi, preset.mc, preset.masking.mask_ratio,
                  mc_seed(seed, EVAL_STREAM), dev, show=show_progress)
    maps = Maps(res.mean.float().cpu(), res.eu.float().cpu(), res.au.float().cpu(), k=int(res.k))
    _save_mc(f, maps.mean, maps.eu, maps.au)
    return maps


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


def _eu_patch_scores(eu: torch.Tensor, roi: torch.Tensor, patch: int, cfg: MaskingConfig) -> torch.Tensor:
    """EU maps (N, H, W) -> patch scores (N, L) per ``cfg.eu_score`` (sum, or mean over ROI pixels)."""
    return EUGuidedMasking(cfg).scores(eu, roi, patch)


@dataclass(frozen=True)
class RefreshPlan:
    """What an adaptation's refreshes read: the training set ``images`` (N, H, W) float32 and
    ``roi`` (N, H, W) bool (CPU), the preset (``mc``, ``masking``), the adaptation
    configuration (``refresh_k``), seed, device, the data hash (cache key), the starting
    weights' file (``init_path``: its run's cached epoch-0 maps), the run folder, the tracked
    image indices and the lesion masks to save beside them (``None``: zeros)."""

    images: torch.Tensor
    roi: torch.Tensor
    preset: Preset
    cfg: AdaptConfig
    seed: int
    device: str
    data_hash: str
    run_path: Path
    init_path: Path | None = None
    tracked: Sequence[int] = ()
    lesion: Any = None


def _save_tracked(plan: RefreshPlan, epoch: int, stage: str, mean, eu, au) -> None:
    idx = torch.as_tensor(list(plan.tracked))
    images, roi = plan.images, plan.roi
    les = (np.asarray(plan.lesion)[list(plan.tracked)] if plan.lesion is not None
           else np.zeros((len(idx), *images.shape[1:]), np.uint8))
    f = plan.run_path / "maps" / f"epoch_{epoch:03d}.npz"
    with atomic_path(f, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, epoch=np.int64(epoch), stage=np.str_(stage), index=idx.numpy(),
                image=images[idx].numpy(), roi=roi[idx].numpy(), lesion=les.astype(np.uint8),
                mean=mean[idx].numpy(), eu=eu[idx].numpy(), au=au[idx].numpy())


def refresh_maps(model: torch.nn.Module, plan: RefreshPlan, epoch: int, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One refresh at adaptation ``epoch`` (``stage="final"``: after the last epoch).

    Epoch 0 of a run started from other weights first looks for those weights' cached
    evaluation maps (and caches them there); the final refresh caches its maps in this run's
    ``mc/``. Steering refreshes use ``cfg.refresh_k`` passes when set, the evaluation ones
    ``preset.mc.k``. Returns ``(maps, metrics)``: ``maps`` = ``{"epoch", "eu", "au" (N, H, W),
    "eu_scores" (N, L)}`` for the samplers; ``metrics`` = the reconstruction metrics (ROI MSE,
    PSNR, SSIM, mean EU / AU) and ``refresh_seconds``.
    """
    t0 = time.perf_counter()
    preset, images, roi = plan.preset, plan.images, plan.roi
    final = stage == "final"
    stream = EVAL_STREAM if (epoch == 0 or final) else epoch
    key = mc_key(plan.data_hash, preset.mc, preset.masking.mask_ratio, plan.seed)
    cache = plan.init_path.parent / "mc" / f"{key}.npz" if epoch == 0 and plan.init_path is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            mean, eu, au = (torch.from_numpy(z[k]) for k in ("mean", "eu", "au"))
    else:
        k = getattr(plan.cfg, "refresh_k", None)
        mc_cfg = preset.mc if (final or cache is not None or not k) else replace(preset.mc, k=int(k))
        res = _run_mc(model, images, roi, mc_cfg, preset.masking.mask_ratio, mc_seed(plan.seed, stream), plan.device)
        mean, eu, au = res.mean.float().cpu(), res.eu.float().cpu(), res.au.float().cpu()
        if cache is not None:
            _save_mc(cache, mean, eu, au)
    if final:
        _save_mc(plan.run_path / "mc" / f"{key}.npz", mean, eu, au)
    maps = {"epoch": epoch, "eu": eu, "au": au,
            "eu_scores": _eu_patch_scores(eu, roi, preset.model.patch_size, preset.masking)}
    metrics = reconstruction_metrics(images, mean, eu, roi)
    if plan.tracked:
        _save_tracked(plan, epoch, stage, mean, eu, au)
    metrics["refresh_seconds"] = round(time.perf_counter() - t0, 3)
    return maps, metrics
