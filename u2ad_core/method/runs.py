"""U2AD's run files: the training data as tensors, the seeded model, and what a run leaves behind.

A U2AD run folder (:mod:`u2ad_core.method.train` lists its files) is read back here:
:func:`load_checkpoint` (the model of ``model.pt`` or ``checkpoint.pt``), :func:`read_history`
(``metrics.csv``), :func:`snapshot_paths` (``snapshots/``) (the tracked maps: :func:`u2ad_core.method.mcmaps.load_tracked_maps`)
(``maps/``). :func:`~u2ad_core.data.datasets.load_data` and :func:`image_tensors` turn a dataset file or a ``SliceData``
into the ``(N, H, W)`` tensors training reads; :func:`build_seeded_model` initialises EdgeMAE
from a seed without touching the caller's global random state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from u2ad_core.core.config import ModelConfig, config_from_dict
from u2ad_core.core.runstore import load_state
from u2ad_core.core.runtime import resolve_device
from u2ad_core.data.datasets import data_hash
from u2ad_core.method.model import build_model

__all__ = ["FORMAT_VERSION", "SNAPSHOTS", "TrainResult", "image_tensors", "build_seeded_model",
           "autocast", "snapshot_paths", "read_history", "load_checkpoint",
           "data_hash"]

FORMAT_VERSION = 1
SNAPSHOTS = "snapshots"  # run subfolder of the weight copies (adapt.snapshot_every)


def image_tensors(data: Any, model_cfg: ModelConfig, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, H, W) float32, roi (N, H, W) bool)`` of ``data``, checked against the model's size."""
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


def build_seeded_model(model_cfg: ModelConfig, seed: int):
    """EdgeMAE initialised from ``seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_model(model_cfg)


def autocast(device: str, enabled: bool):
    """``(context, dtype)``: ``torch.autocast`` on CUDA (bf16 where supported, else fp16) when
    ``enabled``, else a null context and ``None``."""
    if enabled and device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype), dtype
    return contextlib.nullcontext(), None


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
    model_cfg = config_from_dict(ModelConfig, state["model_cfg"])
    model = build_model(model_cfg)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    info = {k: state.get(k) for k in ("kind", "epoch", "run_hash", "spec")}
    info.update(model_cfg=model_cfg, path=p, run_path=p.parent)
    return model, info
