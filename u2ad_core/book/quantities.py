"""One source for every quantity that two pages show.

A number that more than one page of the book quotes (U2AD's time per image, the adaptation's
epochs, the stage-2 start, a build time) is measured once per build, by the notebook that
measures it, and read by every other page::

    from u2ad_core.book.quantities import record_quantity, show_quantity
    record_quantity(ctx.run_dir, "u2ad_ms_per_image", 53.2, unit="ms", source="09_baselines")
    ...
    display(Markdown(f"U2AD takes {show_quantity(ctx.run_dir, 'u2ad_ms_per_image')} per image"))

:func:`show_quantity` returns the value as text inside a marked span,
``<span class="u2ad-quantity" data-quantity="u2ad_ms_per_image">53.2 ms</span>``, so that
``u2ad sitecheck`` can fail a build in which the same named quantity reads differently on two
pages (:func:`quantity_texts` collects them from a page's HTML).

File: ``<run_dir>/quantities.json``, ``{name: {"value", "unit", "text", "source"}}``, written
atomically; a later record of the same name replaces the earlier one.
"""

from __future__ import annotations

import html as htmllib
import os
import re
from pathlib import Path
from typing import Any

from u2ad_core.book.results import read_keyed, update_keyed
from u2ad_core.metrics.verdicts import significant

__all__ = ["QUANTITIES_FILE", "QUANTITY_CLASS", "record_quantity", "read_quantity", "show_quantity",
           "quantity_texts"]

QUANTITIES_FILE = "quantities.json"
QUANTITY_CLASS = "u2ad-quantity"
_NAME = re.compile(r"^[a-z0-9_]+$")
_SPAN = re.compile(r'<span class="' + QUANTITY_CLASS + r'" data-quantity="([a-z0-9_]+)">(.*?)</span>', re.S)


def _load(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    return read_keyed(Path(run_dir) / QUANTITIES_FILE, "quantities")


def record_quantity(run_dir: str | os.PathLike, name: str, value: float | int | str, unit: str = "",
                    source: str = "", digits: int = 3) -> str:
    """Record the build's one measurement of ``name``; returns its text (``"53.2 ms"``).

    Numbers print to ``digits`` significant digits (:func:`~u2ad_core.metrics.significant`),
    integers as they are; ``source`` names the notebook that measured it.
    """
    if not _NAME.match(name):
        raise ValueError(f"quantity name {name!r}: use lower-case letters, digits and _")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"quantity {name}: value must be a number or text, got {type(value).__name__}")
    number = value if isinstance(value, str) else (str(value) if isinstance(value, int) else significant(value, digits))
    text = f"{number} {unit}".strip() if unit and unit != "%" else f"{number}{unit}"
    update_keyed(Path(run_dir) / QUANTITIES_FILE, name, {"value": value, "unit": unit, "text": text, "source": source},
                 "quantities")
    return text


def read_quantity(run_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """``{"value", "unit", "text", "source"}`` of ``name``; a clear error when no page recorded it."""
    table = _load(run_dir)
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise KeyError(f"no quantity {name!r} in {Path(run_dir) / QUANTITIES_FILE} (recorded: {known}): the notebook that "
                       "measures it has not run in this build")
    return table[name]


def show_quantity(run_dir: str | os.PathLike, name: str) -> str:
    """The recorded text of ``name`` in a span the site check can compare across pages."""
    text = htmllib.escape(read_quantity(run_dir, name)["text"])
    return f'<span class="{QUANTITY_CLASS}" data-quantity="{name}">{text}</span>'


def quantity_texts(page_html: str) -> dict[str, set[str]]:
    """name -> the texts under which a page's HTML shows it (tags stripped, spaces collapsed)."""
    out: dict[str, set[str]] = {}
    for name, inner in _SPAN.findall(page_html):
        text = " ".join(htmllib.unescape(re.sub(r"<[^>]+>", "", inner)).split())
        out.setdefault(name, set()).add(text)
    return out
