"""What every numbered notebook calls first: resolve paths, device and seed; show the run.

Usage in a notebook, right after the ``parameters`` cell::

    from u2ad_core.notebook import setup
    ctx = setup(preset=preset, device=device, seed=seed, data_dir=data_dir,
                run_dir=run_dir, overrides=overrides)
    cfg = ctx.preset          # typed Preset, papermill overrides applied
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Preset, get_preset
from .figstyle import use_book_figures
from .runtime import package_versions, resolve_device, seed_everything

__all__ = ["RunContext", "setup", "repo_root", "unpack_context"]


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The project root (the folder holding ``pyproject.toml``), searched upwards from ``start``.

    Falls back to the current directory when no ``pyproject.toml`` is found (an installed
    package used from elsewhere).
    """
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "u2ad_core").is_dir():
            return p
    return here


@dataclass(frozen=True)
class RunContext:
    """Resolved run settings shared by the cells of one notebook."""

    preset: Preset
    device: str
    seed: int
    data_dir: Path
    run_dir: Path

    def header(self) -> dict[str, Any]:
        return {
            "preset": self.preset.name,
            "preset_hash": self.preset.hash(),
            "seed": self.seed,
            "device": self.device,
            "data_dir": str(self.data_dir),
            "run_dir": str(self.run_dir),
            "versions": package_versions(),
        }


def unpack_context(ctx_or_preset: Any, data_dir: Any = None, run_dir: Any = None, device: Any = None,
                   seed: int | None = None, who: str = "strategy_model") -> tuple[Preset, Any, Any, Any, Any]:
    """``(preset, data_dir, run_dir, device, seed)`` for the ``strategy_model`` functions.

    ``ctx_or_preset`` is a :class:`RunContext` (its fields fill the arguments left as None) or
    a preset / preset name, in which case ``data_dir`` and ``run_dir`` are required.
    """
    if hasattr(ctx_or_preset, "preset") and hasattr(ctx_or_preset, "run_dir"):
        ctx = ctx_or_preset
        return (ctx.preset, ctx.data_dir if data_dir is None else data_dir,
                ctx.run_dir if run_dir is None else run_dir, ctx.device if device is None else device,
                ctx.seed if seed is None else seed)
    preset = get_preset(ctx_or_preset) if isinstance(ctx_or_preset, str) else ctx_or_preset
    if data_dir is None or run_dir is None:
        raise ValueError(f"{who}: pass a RunContext, or data_dir and run_dir with a preset")
    return preset, data_dir, run_dir, device, seed


def _resolve(path: str | os.PathLike, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p)


def setup(
    preset: str = "cpu",
    device: str = "auto",
    seed: int = 0,
    data_dir: str | os.PathLike = "data",
    run_dir: str | os.PathLike = "runs",
    overrides: dict[str, Any] | None = None,
    show: bool = True,
) -> RunContext:
    """Build the preset (with overrides), seed everything, resolve the device and the paths.

    Relative ``data_dir`` / ``run_dir`` are taken relative to the project root, so the same
    notebook works when opened from ``notebooks/`` in JupyterLab and when papermill runs it.
    Data and runs are kept per preset: ``data_dir/<preset>/`` and ``run_dir/<preset>/``.
    Inside a notebook kernel, figures follow the book's standard (:mod:`u2ad_core.figstyle`: dpi
    120, 9-pt text, each PNG records its smallest font so the built book can be checked).
    """
    cfg = get_preset(preset, **(overrides or {}))
    cfg = cfg.override(seed=int(seed))
    root = repo_root()
    ctx = RunContext(
        preset=cfg,
        device=resolve_device(device),
        seed=int(seed),
        data_dir=_resolve(data_dir, root) / cfg.name,
        run_dir=_resolve(run_dir, root) / cfg.name,
    )
    seed_everything(ctx.seed)
    use_book_figures()
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    if show:
        v = package_versions()
        print(
            f"preset={cfg.name} (hash {cfg.hash()}) seed={ctx.seed} device={ctx.device} "
            f"torch={v['torch']} u2ad_core={v['u2ad_core']}"
        )
    return ctx
