"""The book's figure standard: every figure is legible at the width the book shows it.

A figure's smallest text must read at least :data:`MIN_RENDERED_PT` (8 pt) where the reader
sees it. That size depends on three numbers, not one:

- the smallest font size in the figure, in points of the figure (``f``);
- the resolution it is drawn at (``dpi``; the book uses :data:`BOOK_DPI` = 120);
- how much the page scales the image: an output image is never shown wider than the page
  column, :data:`PAGE_IMAGE_PX` CSS pixels at a 1280-pixel-wide window (sphinx-book-theme 1.x,
  measured in Chromium; the column is narrowest at that width, where the page's own table of
  contents appears beside it).

A PNG ``N`` pixels wide is shown ``min(N, PAGE_IMAGE_PX)`` CSS pixels wide; one CSS pixel is
1/96 inch, so the smallest text renders at ``f * dpi / 96 * min(1, PAGE_IMAGE_PX / N)`` pt
(:func:`rendered_pt`). With ``dpi = 120`` and ``f = 8`` a figure may be up to 825 pixels, about
6.9 inches, wide; with ``f = 9`` about 7.7 inches (:func:`max_width_in`).

:func:`use_book_figures` (called by :func:`u2ad_core.book.notebook.setup` inside a notebook kernel)
sets the book's rcParams and makes every figure a notebook displays carry a record of its
smallest font and dpi in the PNG (text chunks ``u2ad:min_font_pt`` and ``u2ad:dpi``), so that
``u2ad sitecheck`` can check each image of the built book (:func:`read_record`).

Multi-panel figures follow two more rules, recorded the same way (``u2ad:panels``,
``u2ad:min_panel_px``, ``u2ad:repeated_colorbars``):

- every panel (an axes that draws something and is not a colour bar) is at least
  :data:`MIN_PANEL_PX` (150) CSS pixels wide where the reader sees it, i.e. after the page has
  scaled the image into its column (:func:`panel_widths_px`);
- colour bars are not repeated: two colour bars with the same colour map, range and label say
  the same thing twice and take the panels' width; one colour bar shared by the panels does it
  (``fig.colorbar(im, ax=axes)``; :func:`repeated_colorbars`).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

__all__ = ["BOOK_DPI", "MIN_RENDERED_PT", "PAGE_IMAGE_PX", "BOOK_RC", "min_font_pt", "rendered_pt",
           "max_width_in", "figure_png", "add_png_text", "read_record", "use_book_figures",
           "record_problems", "notebook_problems", "MIN_PANEL_PX", "panel_widths_px", "repeated_colorbars"]

BOOK_DPI = 120
MIN_RENDERED_PT = 8.0
PAGE_IMAGE_PX = 660
CSS_PX_PER_IN = 96.0
BOOK_RC = {"figure.dpi": BOOK_DPI, "savefig.dpi": "figure", "font.size": 9.0}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
MIN_PANEL_PX = 150.0
KEY_FONT, KEY_DPI = "u2ad:min_font_pt", "u2ad:dpi"
KEY_PANELS, KEY_PANEL_PX, KEY_CBARS = "u2ad:panels", "u2ad:min_panel_px", "u2ad:repeated_colorbars"


def min_font_pt(fig: Any) -> float | None:
    """Smallest font size (pt) of the visible, non-empty text of a drawn figure (tick labels,
    titles, legends, colour-bar labels, annotations); ``None`` when it has no text."""
    from matplotlib.text import Text  # here: matplotlib only where a figure is measured (see use_book_figures)

    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and _shown(t)]
    return float(min(sizes)) if sizes else None


def _shown(t: Any) -> bool:
    """False for text that is not drawn: an invisible ancestor axes, or a tick label outside the
    axis' view limits (matplotlib keeps those Text objects but does not draw them)."""
    ax = t.axes
    if ax is not None and not ax.get_visible():
        return False
    try:
        bb = t.get_window_extent()
    except Exception:  # noqa: BLE001 - text without a renderer yet
        return True
    return bb.width > 0 and bb.height > 0


def _is_colorbar(ax: Any) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def panel_widths_px(fig: Any) -> list[float]:
    """Widths (pixels of the figure as drawn at its dpi) of the panels of a drawn figure: its visible
    axes that draw something (images, lines, collections or patches) and are not colour bars.
    Axes turned off with nothing drawn (an unused grid cell, a legend holder) are not panels."""
    return [float(ax.get_window_extent().width) for ax in fig.axes
            if ax.get_visible() and not _is_colorbar(ax)
            and (ax.images or ax.lines or ax.collections or ax.patches)]


def repeated_colorbars(fig: Any) -> int:
    """How many colour bars of a drawn figure repeat another one: same colour map, same range
    (to 3 significant digits), same norm type and same label. 0 when every colour bar says something
    of its own."""
    keys = []
    for ax in fig.axes:
        cb = getattr(ax, "_colorbar", None)
        if cb is None or not ax.get_visible():
            continue
        lo, hi = cb.norm.vmin, cb.norm.vmax
        rng = tuple(None if v is None else float(f"{v:.3g}") for v in (lo, hi))
        label = (ax.get_ylabel() or ax.get_xlabel()).strip()
        keys.append((getattr(cb.cmap, "name", ""), rng, type(cb.norm).__name__, label))
    return len(keys) - len(set(keys))


def rendered_pt(font_pt: float, dpi: float, width_px: int, shown_px: float | None = None) -> float:
    """Size (pt) at which ``font_pt`` text of a ``dpi`` image ``width_px`` wide reads when the image is
    shown ``shown_px`` CSS pixels wide (default: as the book shows it, at most :data:`PAGE_IMAGE_PX`)."""
    shown = min(width_px, PAGE_IMAGE_PX) if shown_px is None else shown_px
    return font_pt * dpi / CSS_PX_PER_IN * shown / width_px


def max_width_in(font_pt: float = 8.0, dpi: float = BOOK_DPI) -> float:
    """Widest figure (inches, as saved) whose ``font_pt`` text still renders at :data:`MIN_RENDERED_PT`."""
    width_px = PAGE_IMAGE_PX * font_pt * dpi / CSS_PX_PER_IN / MIN_RENDERED_PT
    return width_px / dpi


def add_png_text(png: bytes, items: dict[str, str]) -> bytes:
    """``png`` with a ``tEXt`` chunk per item inserted after its header chunk."""
    if not png.startswith(_PNG_SIG):
        raise ValueError("not a PNG")
    ihdr_end = len(_PNG_SIG) + 8 + struct.unpack(">I", png[8:12])[0] + 4
    chunks = b""
    for k, v in items.items():
        data = k.encode("latin-1") + b"\0" + v.encode("latin-1")
        chunks += struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def read_record(png: bytes | str | Path) -> dict[str, Any]:
    """``{"width_px", "dpi", "min_font_pt"}`` of a PNG (bytes or file); the last two are None when the
    image carries no record (it was not drawn by a notebook using :func:`use_book_figures`)."""
    data = Path(png).read_bytes() if isinstance(png, (str, Path)) else png
    if not data.startswith(_PNG_SIG):
        raise ValueError("not a PNG")
    width = struct.unpack(">I", data[16:20])[0]
    text: dict[str, str] = {}
    pos = len(_PNG_SIG)
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I", data[pos:pos + 4])[0], data[pos + 4:pos + 8]
        if kind == b"tEXt":
            k, _, v = data[pos + 8:pos + 8 + n].partition(b"\0")
            text[k.decode("latin-1")] = v.decode("latin-1")
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + n
    font = text.get(KEY_FONT)
    dpi = text.get(KEY_DPI)
    panel_px = text.get(KEY_PANEL_PX)
    return {"width_px": width, "dpi": float(dpi) if dpi else None,
            "min_font_pt": (float(font) if font not in (None, "none") else None),
            "panels": int(text[KEY_PANELS]) if KEY_PANELS in text else None,
            "min_panel_px": float(panel_px) if panel_px not in (None, "none") else None,
            "repeated_colorbars": int(text[KEY_CBARS]) if KEY_CBARS in text else None}


def figure_png(fig: Any, **kwargs: Any) -> bytes | None:
    """The PNG a notebook shows for ``fig`` (IPython's ``print_figure``, tight bounding box), with the
    figure's smallest font and dpi recorded in it; None for a figure with nothing drawn."""
    from IPython.core.pylabtools import print_figure  # here: see use_book_figures

    dpi = kwargs.pop("dpi", None) or fig.dpi
    png = print_figure(fig, "png", dpi=dpi, **kwargs)
    if not png:
        return png
    font = min_font_pt(fig)  # after drawing: tick labels exist now (and axes have their aspect)
    panels = [w * dpi / fig.dpi for w in panel_widths_px(fig)]
    return add_png_text(png, {KEY_FONT: "none" if font is None else f"{font:g}", KEY_DPI: f"{dpi:g}",
                              KEY_PANELS: str(len(panels)),
                              KEY_PANEL_PX: f"{min(panels):.0f}" if panels else "none",
                              KEY_CBARS: str(repeated_colorbars(fig))})


def use_book_figures() -> bool:
    """Apply :data:`BOOK_RC` and, inside IPython, show figures through :func:`figure_png`.

    Returns True when the display hook was installed (inside a kernel), False elsewhere.
    """
    import matplotlib as mpl  # matplotlib and IPython here: ~0.6 s that `u2ad sitecheck` does not need

    mpl.rcParams.update(BOOK_RC)
    try:
        from IPython import get_ipython  # here: see above
    except ImportError:  # pragma: no cover - IPython is a dependency of the notebooks
        return False
    ip = get_ipython()
    if ip is None:
        return False
    import matplotlib.pyplot as plt  # here: see above
    from matplotlib.figure import Figure  # here: see above

    # Load the backend now: the inline backend registers its own PNG formatter when it is first
    # loaded, which would replace ours if that happened later.
    plt.close(plt.figure())
    mpl.rcParams.update(BOOK_RC)
    ip.display_formatter.formatters["image/png"].for_type(Figure, figure_png)
    return True


def record_problems(rec: dict[str, Any], shown_px: float | None = None) -> list[str]:
    """What breaks the book's figure standard in one PNG record (:func:`read_record`): no record,
    dpi below :data:`BOOK_DPI`, smallest text under :data:`MIN_RENDERED_PT` when shown ``shown_px``
    CSS px wide (default: as the book shows it), a panel narrower than :data:`MIN_PANEL_PX` CSS px
    as shown, a repeated colour bar. Empty when the figure is fine."""
    if rec["dpi"] is None:
        return ["no font record (draw it in a notebook that calls u2ad_core.book.notebook.setup, which installs "
                "u2ad_core.book.figstyle)"]
    out = []
    if rec["dpi"] < BOOK_DPI:
        out.append(f"{rec['dpi']:g} dpi (at least {BOOK_DPI})")
    if rec["min_font_pt"] is not None:
        pt = rendered_pt(rec["min_font_pt"], rec["dpi"], rec["width_px"], shown_px)
        if pt < MIN_RENDERED_PT - 0.05:
            shown = min(rec["width_px"], PAGE_IMAGE_PX) if shown_px is None else shown_px
            out.append(f"its {rec['min_font_pt']:g}-pt text renders at {pt:.1f} pt ({rec['width_px']} px shown "
                       f"{shown:.0f} px wide); make it at most {max_width_in(rec['min_font_pt'], rec['dpi']):.1f} in "
                       "wide as saved, or its smallest text larger")
    out += _panel_problems(rec, shown_px)
    return out


def _panel_problems(rec: dict[str, Any], shown_px: float | None) -> list[str]:
    out = []
    shown = min(rec["width_px"], PAGE_IMAGE_PX) if shown_px is None else shown_px
    if rec.get("min_panel_px") is not None:
        px = rec["min_panel_px"] * shown / rec["width_px"]
        if px < MIN_PANEL_PX - 0.5:
            out.append(f"its narrowest of {rec['panels']} panel(s) is {px:.0f} px wide as shown (at least "
                       f"{MIN_PANEL_PX:.0f}): fewer panels per row, or a shared colour bar")
    if rec.get("repeated_colorbars"):
        out.append(f"{rec['repeated_colorbars']} colour bar(s) repeat another's colour map, range and label: "
                   "share one (fig.colorbar(im, ax=axes))")
    return out


def notebook_problems(path: str | Path) -> tuple[list[str], int]:
    """The legibility rule applied to the figures of an executed notebook, before any book is built:
    ``(problems, figures checked)``; each problem names the cell (its index and first line)."""

    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    problems, n = [], 0
    for i, cell in enumerate(nb.get("cells", [])):
        first = "".join(cell.get("source", "")).strip().splitlines()[:1]
        where = f"{Path(path).name} cell {i} ({first[0][:60] if first else 'empty'})"
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("image/png")
            if not data:
                continue
            n += 1
            rec = read_record(base64.b64decode("".join(data) if isinstance(data, list) else data))
            problems += [f"{where}: {p}" for p in record_problems(rec)]
    return problems, n
