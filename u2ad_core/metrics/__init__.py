"""Metrics, one idea per module: detection metrics and the cross-validation protocol
(:mod:`~u2ad_core.metrics.detection`), pixel and region metrics (:mod:`~u2ad_core.metrics.pixel`),
label-free model selection (:mod:`~u2ad_core.metrics.selection`), reconstruction quality
(:mod:`~u2ad_core.metrics.reconstruction`), the reconstruction diagnostics of a healthy cord
(:mod:`~u2ad_core.metrics.residuals`) and the verdict rule (:mod:`~u2ad_core.metrics.verdicts`).
Every public name of the six is available here (``from u2ad_core import metrics as ev``;
``ev.cross_validate``, ``from u2ad_core.metrics import compare`` ...). Imports only ``core``.

The modules load on first use of one of their names (PEP 562 ``__getattr__``): a training
process imports only :mod:`~u2ad_core.metrics.reconstruction` and so never pays for
scikit-learn (about 0.7 s of start-up in every training worker and notebook kernel, measured
with ``python -X importtime``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

MODULES = ("verdicts", "detection", "pixel", "selection", "reconstruction", "residuals")


def _exports(module: str) -> list[str]:
    """The ``__all__`` of ``metrics/<module>.py``, read from its source (no import)."""
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ImportError(f"u2ad_core.metrics.{module} has no literal __all__")


_WHERE: dict[str, str] = {name: m for m in MODULES for name in _exports(m)}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(MODULES))
