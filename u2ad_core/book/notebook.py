"""What every numbered notebook calls first: resolve paths, device and seed; show the run.

Usage in a notebook, right after the ``parameters`` cell::

    from u2ad_core.book.notebook import setup
    ctx = setup(preset=preset, device=device, seed=seed, data_dir=data_dir,
                run_dir=run_dir, overrides=overrides)
    cfg = ctx.preset          # typed Preset, papermill overrides applied
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from u2ad_core.book.figstyle import use_book_figures
from u2ad_core.core.presets import get_preset
from u2ad_core.core.context import RunContext, repo_root
from u2ad_core.core.runtime import package_versions, resolve_device, seed_everything
from u2ad_core.metrics.verdicts import significant

__all__ = ["setup"]


def _resolve(path: str | os.PathLike, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p)


def _three_significant_digits() -> None:
    """Tables read at a glance: every float a DataFrame shows, to three significant digits."""
    import pandas as pd  # here: the kernels import it anyway, the package's CLI need not

    pd.set_option("display.float_format", significant)


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
    Inside a notebook kernel, figures follow the book's standard (:mod:`u2ad_core.book.figstyle`: dpi
    120, 9-pt text, each PNG records its smallest font so the built book can be checked), and
    pandas prints floats to three significant digits (:func:`~u2ad_core.metrics.significant`).
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
    _three_significant_digits()
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    if show:
        v = package_versions()
        print(
            f"preset={cfg.name} (hash {cfg.hash()}) seed={ctx.seed} device={ctx.device} "
            f"torch={v['torch']} u2ad_core={v['u2ad_core']}"
        )
    return ctx
