"""What a run needs to know about where it is: the project root and the resolved run settings.

:class:`RunContext` is what :func:`u2ad_core.book.notebook.setup` returns in a notebook; the
training functions of every method accept it (:func:`unpack_context`), so they sit below the
book's tooling and never import it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from u2ad_core.core.presets import Preset, get_preset
from u2ad_core.core.runtime import package_versions

__all__ = ["RunContext", "code_version", "package_digest", "repo_root", "unpack_context"]


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


def package_digest() -> str:
    """sha256 over the package's own source files (relative path and bytes of every ``.py``):
    any code change re-executes the book's notebooks and re-runs a sweep's points."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def code_version() -> str:
    """The first 12 hex digits of :func:`package_digest`: the ``code`` key of a sweep point, so
    that a sweep re-runs its points after the code changed (its own key covers only parameters)."""
    return package_digest()[:12]
