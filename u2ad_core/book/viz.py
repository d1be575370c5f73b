"""Shared plotting helpers (matplotlib): masks and segments over slices, anomaly curves.

All functions draw on axes the caller passes (or create a small figure) and return them, so
notebooks compose figures freely. Image arrays are ``(H, W)`` with rows = superior-inferior
(top = cranial), as in the dataset files.

- :func:`show_slice`: a slice with optional cord / lesion contours, an anomaly-map overlay
  (with its colour bar) and segment boundaries (labelled at the right edge).
- :func:`plot_curve`: an anomaly curve with segment bands, lesion segments shaded, an
  optional threshold; ``vertical=True`` draws it beside a slice (rows on the y axis).
- :func:`plot_roc_pr`: ROC and precision-recall curves of several score sets.
- :func:`image_grid`: a figure for ``n`` images sized so that every panel is at least
  :data:`~u2ad_core.book.figstyle.MIN_PANEL_PX` CSS pixels wide where the book shows it, with room
  for one shared colour bar (:func:`shared_colorbar`).
- :func:`image_grid_bars_below`: the same grid with room under every row for horizontal colour bars
  (:func:`colorbar_below`), one per panel or per group of panels that share a scale: panels of
  different quantities keep their own scale without losing width.
- :func:`grid_suptitle`: a title over a whole image grid, the figure made taller by its lines so that
  the panels keep their width.
- :func:`reconstruction_grid`: a slice, each method's reconstruction and, below each, its anomaly
  map, three to a row with one colour bar (optionally cropped to the rows :func:`lesion_rows` gives).
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from u2ad_core.book.figstyle import BOOK_DPI, PAGE_IMAGE_PX
from u2ad_core.core.labels import SEGMENTS, parse_segments

__all__ = ["segment_bounds", "show_slice", "plot_curve", "plot_roc_pr", "image_grid",
           "image_grid_bars_below", "colorbar_below", "grid_suptitle", "shared_colorbar", "PANEL_PX",
           "lesion_rows", "reconstruction_grid"]

LESION_COLOUR = "tab:red"
CORD_COLOUR = "tab:cyan"
SEGMENT_COLOURS = ("#e8eef7", "#f7f3e8")

PANEL_PX = 165
"""Default panel width of :func:`image_grid` (pixels at the book's 120 dpi): above the site check's
150-pixel minimum with room for the page's scaling."""
_GAP_IN, _CBAR_IN, _TITLE_IN, _MARGIN_IN = 0.08, 0.85, 0.2, 0.15


def image_grid(n: int, ncols: int = 3, image_shape: tuple[int, int] = (192, 64), *, colorbar: bool = False,
               title_lines: int = 1, panel_px: int = PANEL_PX, **kw):
    """``(fig, axes)`` for ``n`` images of ``image_shape`` (rows, columns) in rows of at most
    ``ncols``, every panel ``panel_px`` pixels wide where the book shows it.

    The figure is as wide as the panels (plus ``colorbar``'s room on the right, for one
    :func:`shared_colorbar`) and as tall as the images' aspect needs, with ``title_lines`` lines of
    title above each panel. ``ncols`` is lowered to what fits the page column
    (:data:`~u2ad_core.book.figstyle.PAGE_IMAGE_PX`): three at the default width. Panels are axes
    with their frame and ticks off; unused cells are hidden. ``axes`` has ``n`` entries, row-major.
    Extra keywords go to ``plt.subplots``.
    """
    panel_in = panel_px / BOOK_DPI
    ncols = _fit_ncols(n, ncols, colorbar, panel_px)
    nrows = int(np.ceil(n / ncols))
    h, w = image_shape
    width = ncols * (panel_in + _GAP_IN) + (_CBAR_IN if colorbar else 0.0) + _MARGIN_IN
    height = nrows * (panel_in * h / w + _TITLE_IN * title_lines + _GAP_IN) * 1.04 + _MARGIN_IN
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=BOOK_DPI, squeeze=False,
                             layout="constrained", **kw)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


_BAR_BELOW_IN = 0.5


def image_grid_bars_below(n: int, ncols: int = 3, image_shape: tuple[int, int] = (192, 64), *, title_lines: int = 1,
                          panel_px: int = PANEL_PX, **kw):
    """:func:`image_grid` with room under every row for horizontal colour bars, so that a panel with its
    own scale keeps its width (a bar beside each of three tall panels would not fit the page).

    Draw each bar with :func:`colorbar_below` (under one panel, or under several panels on one
    scale). Panels are aligned at their top, so that a row's panels line up whether or not a bar
    hangs under them. Returns ``(fig, axes)`` as :func:`image_grid`.
    """
    fig, axes = image_grid(n, ncols, image_shape, title_lines=title_lines, panel_px=panel_px, **kw)
    nrows = axes[0].get_subplotspec().get_gridspec().nrows
    fig.set_figheight(fig.get_figheight() + nrows * _BAR_BELOW_IN)
    for ax in axes:
        ax.set_anchor("N")
    return fig, axes


def colorbar_below(fig, mappable, axes, label: str = "", **kw):
    """A horizontal colour bar under ``axes`` (one panel, or several that show ``mappable``'s colour map
    and range), for :func:`image_grid_bars_below`; ``mappable`` has a linear scale (``vmin``/``vmax``).

    At most four ticks and no offset, so that tick labels stay within the panel's width; a small range
    (top below 0.01) is written in units of its power of ten, given in the label (``variance (×10⁻⁴)``),
    rather than in long tick labels or a floating ``1e-4`` that would meet the next row's titles.
    """
    top = getattr(mappable.norm, "vmax", None)
    if top is None:
        mappable.autoscale_None()
        top = mappable.norm.vmax
    power = int(np.floor(np.log10(top))) if 0 < top < 1e-2 else 0
    if power:
        label = f"{label} (×$10^{{{power}}}$)".lstrip()
    kw.setdefault("panchor", False)  # keep the panels' top alignment (matplotlib would anchor them at the bottom)
    cb = shared_colorbar(fig, mappable, axes, label, location="bottom", **kw)
    cb.locator = MaxNLocator(nbins=3)
    cb.formatter = FuncFormatter(lambda v, _: f"{v / 10.0 ** power:g}")
    cb.update_ticks()
    return cb


def grid_suptitle(fig, text: str, fontsize: float = 9):
    """Title ``text`` over a whole figure of :func:`image_grid` (or :func:`image_grid_bars_below`).

    The figure grows by the title's lines: without that, constrained layout would take the room from
    the panels, and a tall image panel narrows with its height (below the width the book's rule asks).
    """
    fig.set_figheight(fig.get_figheight() + (text.count("\n") + 1) * fontsize * 1.4 / 72 + 0.05)
    return fig.suptitle(text, fontsize=fontsize)


def _fit_ncols(n: int, ncols: int, colorbar: bool, panel_px: int) -> int:
    """The columns :func:`image_grid` uses: at most ``ncols`` and ``n``, and no more than fit the page."""
    room = PAGE_IMAGE_PX / BOOK_DPI - (_CBAR_IN if colorbar else 0.0) - _MARGIN_IN
    return max(1, min(ncols, n, int(room // (panel_px / BOOK_DPI + _GAP_IN))))


def shared_colorbar(fig, mappable, axes, label: str = "", **kw):
    """One colour bar for all ``axes`` (they must show ``mappable``'s colour map and range)."""
    kw.setdefault("shrink", 0.8)
    return fig.colorbar(mappable, ax=list(np.ravel(axes)), label=label, **kw)


def segment_bounds(point_seg: np.ndarray) -> list[tuple[str, int, int]]:
    """Runs of equal non-zero segment values along a curve: ``[(name, first_row, last_row)]``.

    point_seg: ``(H,)`` int (0 none, 1..6), e.g. ``ScoreResult.point_segments[i]`` or the
    per-row mode of a segment map.
    """
    point_seg = np.asarray(point_seg).astype(int)
    out: list[tuple[str, int, int]] = []
    start = None
    for j, v in enumerate(np.r_[point_seg, 0]):
        if start is not None and v != point_seg[start]:
            out.append((SEGMENTS[point_seg[start] - 1], start, j - 1))
            start = None
        if start is None and v > 0 and j < len(point_seg):
            start = j
    return out


def _rowwise_segments(segments: np.ndarray) -> np.ndarray:
    """Per-row most frequent non-zero segment value of an ``(H, W)`` segment map."""
    seg = np.asarray(segments).astype(int)
    counts = np.stack([(seg == v).sum(1) for v in range(len(SEGMENTS) + 1)], 1)
    counts[:, 0] = 0
    out = counts.argmax(1)
    out[counts.max(1) == 0] = 0
    return out


def show_slice(
    image: np.ndarray,
    ax=None,
    cord: np.ndarray | None = None,
    lesion: np.ndarray | None = None,
    anomaly: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    point_seg: np.ndarray | None = None,
    centreline: np.ndarray | None = None,
    title: str | None = None,
    vmax: float | None = None,
    label_segments: bool = True,
    colorbar: bool = True,
):
    """Draw a slice with overlays; returns the axes.

    cord / lesion: ``(H, W)`` masks drawn as contours (cyan / red); anomaly: ``(H, W)`` map
    shown with the ``hot`` colormap where > 0 (``vmax`` fixes its scale), with a colour bar
    beside the axes unless ``colorbar=False`` (then panels on one scale share one:
    :func:`shared_colorbar` with ``ax.images[-1]``); segments: ``(H, W)`` segment map or point_seg ``(H,)``: boundaries drawn
    as short ticks with names; centreline: ``(H,)`` column per row (dotted line).
    """

    if ax is None:
        _, ax = plt.subplots(figsize=(2.4, 4.0), dpi=120)
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if anomaly is not None:
        a = np.asarray(anomaly, dtype=np.float32)
        top = float(vmax) if vmax else (float(a.max()) if a.max() > 0 else 1.0)
        im = ax.imshow(np.ma.masked_less_equal(a, 0), cmap="hot", vmin=0, vmax=top, alpha=0.8,
                       interpolation="nearest")
        if colorbar:
            # segment names are written just right of the slice: leave them room before the colour bar
            labels_right = label_segments and (point_seg is not None or segments is not None)
            cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.25 if labels_right else 0.02)
            cb.ax.tick_params(labelsize=8)
    if cord is not None and np.any(cord):
        ax.contour(np.asarray(cord) > 0, levels=[0.5], colors=CORD_COLOUR, linewidths=0.6)
    if lesion is not None and np.any(lesion):
        ax.contour(np.asarray(lesion) > 0, levels=[0.5], colors=LESION_COLOUR, linewidths=0.9)
    if centreline is not None:
        ax.plot(centreline, np.arange(h), ":", color="white", lw=0.6)
    if point_seg is None and segments is not None:
        point_seg = _rowwise_segments(segments)
    if point_seg is not None:
        for name, a, b in segment_bounds(point_seg):
            ax.plot([w - 5, w - 1], [a - 0.5, a - 0.5], color="yellow", lw=0.8)
            if label_segments:
                ax.text(w + 1, (a + b) / 2, name, va="center", ha="left", fontsize=8, clip_on=False)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def plot_curve(
    curve: np.ndarray,
    point_seg: np.ndarray | None = None,
    ax=None,
    lesion_segments: str | Sequence[str] = "",
    threshold: float | None = None,
    vertical: bool = False,
    label: str | None = None,
    colour: str = "k",
    title: str | None = None,
):
    """Anomaly curve along the cord with segment bands (paper Figure 2 (e)); returns the axes.

    curve: ``(H,)`` (NaN off the cord); point_seg: ``(H,)`` segment of each point; lesion
    segments (``"C4-5;C5-6"`` or a list) are shaded red; ``threshold`` draws a dashed line.
    ``vertical=True`` puts the rows on the y axis (top = cranial) to stand beside a slice.
    """

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 2.2) if not vertical else (1.8, 4.0), dpi=120)
    curve = np.asarray(curve, dtype=np.float64)
    rows = np.arange(len(curve))
    lesions = parse_segments(lesion_segments) if isinstance(lesion_segments, str) else tuple(lesion_segments)
    span = ax.axhspan if vertical else ax.axvspan
    if point_seg is not None:
        for k, (name, a, b) in enumerate(segment_bounds(point_seg)):
            col = LESION_COLOUR if name in lesions else SEGMENT_COLOURS[k % 2]
            span(a - 0.5, b + 0.5, color=col, alpha=0.25 if name in lesions else 1.0, lw=0)
            txt = dict(fontsize=8, color=LESION_COLOUR if name in lesions else "0.3")
            if vertical:
                ax.text(1.02, (a + b) / 2, name, transform=ax.get_yaxis_transform(), va="center", **txt)
            else:
                # inside the axes, rotated: narrow segments' names neither overlap nor hit the title
                ax.text((a + b) / 2, 0.98, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                        rotation=90, **txt)
    if vertical:
        ax.plot(curve, rows, color=colour, lw=1.0, label=label)
        ax.set_ylim(len(curve) - 0.5, -0.5)
        ax.set_xlabel("anomaly", fontsize=8)
        if threshold is not None:
            ax.axvline(threshold, ls="--", color="tab:blue", lw=0.8)
    else:
        ax.plot(rows, curve, color=colour, lw=1.0, label=label)
        ax.set_xlabel("position along the cord (row)", fontsize=8)
        ax.set_ylabel("AnoCurve", fontsize=8)
        if threshold is not None:
            ax.axhline(threshold, ls="--", color="tab:blue", lw=0.8)
    ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def plot_roc_pr(items: dict[str, tuple[Any, Any]], axes=None):
    """ROC and precision-recall curves; ``items``: name -> (labels, scores). Returns 2 axes."""

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(6.8, 3.2), dpi=120, layout="constrained")
    prevalence = None
    for name, (y, s) in items.items():
        y = np.asarray(y).astype(int)
        s = np.nan_to_num(np.asarray(s, dtype=np.float64), nan=-np.inf)
        s = np.where(np.isfinite(s), s, np.min(s[np.isfinite(s)]) - 1 if np.isfinite(s).any() else 0)
        fpr, tpr, _ = roc_curve(y, s)
        p, r, _ = precision_recall_curve(y, s)
        axes[0].plot(fpr, tpr, lw=1.2, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")
        axes[1].plot(r, p, lw=1.2, label=f"{name} (AUPRC {average_precision_score(y, s):.3f})")
        prevalence = y.mean()
    axes[0].plot([0, 1], [0, 1], ":", color="0.5", lw=0.8)
    if prevalence is not None:
        axes[1].axhline(prevalence, ls=":", color="0.5", lw=0.8)
    axes[0].set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (patients)")
    axes[1].set(xlabel="recall", ylabel="precision", title="precision-recall (patients)")
    for ax in axes:
        ax.legend(fontsize=8, loc="lower right" if ax is axes[0] else "upper right")
    return axes


def lesion_rows(lesion: np.ndarray, n_rows: int | None = None, margin: int = 8) -> slice:
    """The rows of a crop around a lesion, for ``image[rows]``.

    lesion: ``(H, W)`` mask. ``n_rows`` consecutive rows (default ``W``: a square crop), more if the
    lesion with ``margin`` rows above and below needs them, at most ``H``; centred on the lesion's
    rows and kept inside the image (no lesion: the middle rows).
    """
    lesion = np.asarray(lesion) > 0
    if lesion.ndim != 2:
        raise ValueError(f"lesion must be an (H, W) mask, got shape {lesion.shape}")
    h, w = lesion.shape
    hit = np.flatnonzero(lesion.any(1))
    lo, hi = (int(hit[0]), int(hit[-1]) + 1) if len(hit) else (h // 2, h // 2)
    n = min(max(w if n_rows is None else int(n_rows), hi - lo + 2 * margin), h)
    start = min(max((lo + hi - n) // 2, 0), h - n)
    return slice(start, start + n)


def reconstruction_grid(image: np.ndarray, methods: Sequence[tuple[str, np.ndarray, np.ndarray]],
                        vmax: float | Sequence[float], *, lesion: np.ndarray | None = None,
                        cord: np.ndarray | None = None, rows: slice | None = None, ncols: int = 3,
                        map_titles: Sequence[str] | None = None, label: str = "anomaly map",
                        title: str | None = None):
    """One slice, every method's reconstruction and, right below each, its anomaly map; one colour bar.

    The cells are read in pairs of rows, ``ncols`` columns (three on the page): an upper row of
    images (the input with its lesion outlined, then each method's reconstruction) over a lower
    row of what belongs to each (the input's cord outline, then each method's map over the darkened
    slice, lesion outlined). Panels are sized by :func:`image_grid`, so each passes the book's panel rule.

    image: ``(H, W)`` slice; methods: ``[(name, reconstruction (H, W), anomaly map (H, W))]``.
    vmax: one value (every map drawn on ``[0, vmax]``; the colour bar in the map's units) or one
    per method (each map divided by its own value and drawn on ``[0, 1]``: maps whose sizes differ
    by orders of magnitude still share one colour bar; give the values in ``map_titles``).
    lesion / cord: ``(H, W)`` masks (contours); rows: the rows shown (a crop, e.g.
    :func:`lesion_rows`; default all); map_titles: one title per map (default ``"map"``); label:
    the colour bar's; title: the figure's. Returns ``(fig, image_axes, map_axes)``: lists of the
    upper and lower panels, the input's first.
    """
    methods = list(methods)
    if not methods:
        raise ValueError("reconstruction_grid needs at least one method")
    per_method = np.ndim(vmax) > 0
    scales = [float(v) for v in (vmax if per_method else [vmax] * len(methods))]
    titles = list(map_titles) if map_titles is not None else ["map"] * len(methods)
    if len(scales) != len(methods) or len(titles) != len(methods):
        raise ValueError(f"{len(methods)} methods need as many vmax values and map titles, "
                         f"got {len(scales)} and {len(titles)}")
    rows = slice(None) if rows is None else rows

    def crop(a):
        return None if a is None else np.asarray(a, dtype=np.float32)[rows]

    img, les = crop(image), crop(lesion)
    n = len(methods) + 1
    ncols = _fit_ncols(n, ncols, True, PANEL_PX)
    blocks = int(np.ceil(n / ncols))
    fig, axes = image_grid(2 * blocks * ncols, ncols, img.shape, colorbar=True)
    cells = np.asarray(axes, dtype=object).reshape(2 * blocks, ncols)
    upper, lower = [cells[2 * (k // ncols), k % ncols] for k in range(n)], \
        [cells[2 * (k // ncols) + 1, k % ncols] for k in range(n)]
    show_slice(img, upper[0], lesion=les, title="input")
    show_slice(img, lower[0], cord=crop(cord), lesion=les, title="cord")
    for k, ((name, rec, amap), scale, map_title) in enumerate(zip(methods, scales, titles), start=1):
        a = crop(amap)
        if per_method:
            a, scale = (a / scale if scale > 0 else np.zeros_like(a)), 1.0
        show_slice(crop(rec), upper[k], title=name)
        show_slice(img * 0.4, lower[k], anomaly=a, lesion=les, vmax=scale if scale > 0 else 1.0,
                   title=map_title, colorbar=False)
    for ax in cells.ravel():
        if ax not in upper and ax not in lower:
            ax.set_visible(False)
    shared_colorbar(fig, lower[-1].images[-1], lower[1:], label, shrink=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig, upper, lower
