"""Run-time helpers shared by every module: devices, seeds, atomic writes, run headers."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

__all__ = [
    "resolve_device",
    "seed_everything",
    "make_generator",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "package_versions",
    "in_notebook",
    "progress",
]

TRACKED_PACKAGES = (
    "u2ad_core", "torch", "numpy", "scipy", "scikit-image", "scikit-learn", "nibabel",
    "papermill", "jupyter-book", "matplotlib", "seaborn",
)


def resolve_device(device: str = "auto") -> str:
    """Map ``"auto"`` to CUDA, then Apple MPS, then CPU; validate an explicit choice.

    Raises a clear error when an explicit device is not available (e.g. ``cuda`` on a CPU box).
    """

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' requested but Apple MPS is not available")
    return device


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; on CPU this makes training bit-for-bit repeatable."""

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def make_generator(seed: int, device: str = "cpu"):
    """A seeded ``torch.Generator`` (masks, MC passes): same seed -> same random stream."""

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Nothing is left half-written: on an exception the temporary file is removed and any
    existing ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results (for run headers and manifests)."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def in_notebook() -> bool:
    """True inside a Jupyter kernel (interactive or papermill)."""
    try:
        from IPython import get_ipython  # here: ~0.15 s for every process that never shows a bar
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress(iterable=None, **kwargs):
    """tqdm progress bar: the notebook widget in JupyterLab, plain text elsewhere.

    Under papermill (headless) the text bar is used so that executed notebooks stay small
    and readable. Set ``U2AD_NO_PROGRESS=1`` to silence bars (tests).
    """

    kwargs.setdefault("disable", os.environ.get("U2AD_NO_PROGRESS") == "1")
    headless = os.environ.get("U2AD_HEADLESS") == "1"
    cls = std_tqdm if headless or not in_notebook() else auto_tqdm
    if headless:
        kwargs.setdefault("mininterval", 5.0)
    return cls(iterable, **kwargs)
