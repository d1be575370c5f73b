"""ipywidgets that degrade to a static figure when a notebook runs headless.

In JupyterLab, :func:`interact` shows sliders and drop-downs (``ipywidgets.interact``).
Under papermill / CI (``U2AD_HEADLESS=1``, set by ``u2ad book``) it calls the function once
with the default values, so the executed notebook and the book page show a real figure.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import ipywidgets

__all__ = ["headless", "interact"]


def headless() -> bool:
    """True when notebooks are executed in batch (``u2ad book`` or ``U2AD_HEADLESS=1``)."""
    return os.environ.get("U2AD_HEADLESS") == "1"


def _default(spec: Any) -> Any:
    """Default value of an ``ipywidgets.interact`` abbreviation or widget."""
    if hasattr(spec, "value"):
        return spec.value
    if isinstance(spec, tuple) and len(spec) in (2, 3) and all(isinstance(v, (int, float)) for v in spec):
        lo, hi = spec[0], spec[1]
        return type(lo)(lo + (hi - lo) // 2) if isinstance(lo, int) and isinstance(hi, int) else (lo + hi) / 2
    if isinstance(spec, (list, tuple)):
        first = spec[0]
        return first[1] if isinstance(first, tuple) and len(first) == 2 else first
    if isinstance(spec, dict):
        return next(iter(spec.values()))
    return spec


def interact(func: Callable[..., Any], defaults: dict[str, Any] | None = None, **specs: Any) -> Any:
    """``ipywidgets.interact(func, **specs)``, or one static call with defaults when headless.

    ``defaults`` picks the static view explicitly (otherwise each widget's own default).
    """
    if headless():
        kwargs = {k: _default(v) for k, v in specs.items()}
        kwargs.update(defaults or {})
        return func(**kwargs)

    return ipywidgets.interact(func, **specs)
