"""The book's figure standard (u2ad_core.book.figstyle) and the sitecheck rule built on it: a figure's
smallest text must render at 8 pt or more at the width the book shows it."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from u2ad_core.book import figstyle as FS  # noqa: E402
from u2ad_core.book import sitecheck as SC  # noqa: E402


def _fig(width_in: float, small_pt: float):
    fig, ax = plt.subplots(figsize=(width_in, 2.5), dpi=FS.BOOK_DPI)
    ax.plot([0, 1], [0, 1])
    ax.tick_params(labelsize=10)
    ax.set_title("title", fontsize=11)
    ax.text(0.5, 0.5, "note", fontsize=small_pt)
    ax.text(0.5, 0.2, "   ", fontsize=4)            # blank: not text a reader sees
    ax.text(0.5, 0.3, "hidden", fontsize=5, visible=False)
    return fig


def test_min_font_is_the_smallest_visible_text():
    fig = _fig(4, 7.5)
    FS.figure_png(fig)
    assert FS.min_font_pt(fig) == 7.5
    plt.close(fig)


def test_record_round_trips_through_the_png():
    fig = _fig(4, 8.5)
    png = FS.figure_png(fig)
    rec = FS.read_record(png)
    assert rec["dpi"] == FS.BOOK_DPI and rec["min_font_pt"] == 8.5
    assert 300 < rec["width_px"] <= 4 * FS.BOOK_DPI
    from PIL import Image
    import io

    Image.open(io.BytesIO(png)).load()  # still a valid PNG
    plt.close(fig)


def test_rendered_size_arithmetic():
    # shown at natural size: 120 dpi / 96 CSS px per inch = 1.25 x
    assert FS.rendered_pt(8, 120, 600) == pytest.approx(10.0)
    # scaled to the 660-px column
    assert FS.rendered_pt(8, 120, 1320) == pytest.approx(5.0)
    assert FS.rendered_pt(8, 120, 1320, shown_px=1320) == pytest.approx(10.0)
    w = FS.max_width_in(8, 120)
    assert FS.rendered_pt(8, 120, int(w * 120)) == pytest.approx(FS.MIN_RENDERED_PT, rel=1e-2)
    assert FS.max_width_in(9) > FS.max_width_in(8)


def test_read_record_of_a_plain_png(tmp_path):
    from PIL import Image

    Image.new("RGB", (30, 10)).save(tmp_path / "a.png")
    assert FS.read_record(tmp_path / "a.png") == {"width_px": 30, "dpi": None, "min_font_pt": None, "panels": None,
                                                  "min_panel_px": None, "repeated_colorbars": None}
    with pytest.raises(ValueError, match="not a PNG"):
        FS.read_record(b"GIF89a")


def _book(tmp_path, pngs: dict[str, bytes]):
    root = tmp_path / "html"
    (root / "_images").mkdir(parents=True)
    (root / "book" / "notebooks").mkdir(parents=True)
    imgs = ""
    for name, data in pngs.items():
        (root / "_images" / name).write_bytes(data)
        imgs += (f'<figure><img alt="a test figure" src="../../_images/{name}">'  # captioned, as the site check asks
                 f'<figcaption><p>{name}</p></figcaption></figure>')
    (root / "index.html").write_text("<html><body>index</body></html>")
    (root / "book" / "notebooks" / "01.html").write_text(f"<html><body>{imgs}</body></html>")
    return root


def test_sitecheck_flags_small_rendered_text(tmp_path):
    wide, narrow = _fig(11, 8), _fig(5, 8)
    root = _book(tmp_path, {"wide.png": FS.figure_png(wide), "narrow.png": FS.figure_png(narrow)})
    problems, _ = SC.check_site(root)
    assert len(problems) == 1 and "wide.png" in problems[0] and "renders at" in problems[0], problems
    assert "in wide" in problems[0]
    plt.close("all")


def test_sitecheck_flags_figures_without_a_record(tmp_path):
    import io

    fig = _fig(4, 9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    problems, _ = SC.check_site(_book(tmp_path, {"plain.png": buf.getvalue()}))
    assert len(problems) == 1 and "no font record" in problems[0]
    low = FS.add_png_text(buf.getvalue(), {FS.KEY_FONT: "9", FS.KEY_DPI: "72"})
    problems, _ = SC.check_site(_book(tmp_path / "b", {"low.png": low}))
    assert "72 dpi (at least 120)" in problems[0] and "renders at 6.8 pt" in problems[1], problems  # 9 * 72 / 96
    plt.close(fig)


@pytest.mark.slow
def test_browser_measures_the_shown_width(tmp_path):
    browser = SC.find_browser()
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium): the browser check is skipped")
    fig = _fig(4, 8)
    png = FS.figure_png(fig)
    root = _book(tmp_path, {"a.png": png})
    page = root / "book" / "notebooks" / "01.html"
    page.write_text('<html><body><img src="../../_images/a.png" style="width:150px"></body></html>')
    problems, n = SC.browser_check(root, browser)
    # its text and its one panel are both judged at the 150 px the browser shows it
    assert n == 2 and len(problems) == 2 and "shown 150 px wide" in problems[0], problems
    assert "panel(s) is 129 px wide as shown" in problems[1]
    plt.close(fig)


def _maps(n: int, width_in: float, shared: bool, height_in: float = 4.2):
    """``n`` tall images (a sagittal slice's 3:1 shape) in one row, each with its own colour bar or one shared."""
    import numpy as np

    img = np.linspace(0, 1, 192 * 64).reshape(192, 64)
    fig, axes = plt.subplots(1, n, figsize=(width_in, height_in), dpi=FS.BOOK_DPI, layout="constrained", squeeze=False)
    for ax in axes[0]:
        im = ax.imshow(img, cmap="magma", vmin=0, vmax=1)
        ax.set_axis_off()
        if not shared:
            fig.colorbar(im, ax=ax, label="EU")
    if shared:
        fig.colorbar(im, ax=axes[0].tolist(), label="EU")
    return fig


def test_panels_are_measured_and_colour_bars_are_not_panels():
    fig = _maps(5, 6.6, shared=False)
    rec = FS.read_record(FS.figure_png(fig))
    assert rec["panels"] == 5 and rec["repeated_colorbars"] == 4
    assert rec["min_panel_px"] < FS.MIN_PANEL_PX  # five images and five bars in 6.6 in
    problems = FS.record_problems(rec)
    assert any("panel(s)" in p for p in problems) and any("colour bar(s) repeat" in p for p in problems)
    plt.close(fig)


def test_three_panels_with_one_colour_bar_pass():
    fig = _maps(3, 5.4, shared=True, height_in=4.8)  # 3:1 images need the height to be 150 px wide
    rec = FS.read_record(FS.figure_png(fig))
    assert rec["panels"] == 3 and rec["repeated_colorbars"] == 0
    assert FS.record_problems(rec) == []
    plt.close(fig)


def test_different_colour_bars_are_not_repeats():
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3), dpi=FS.BOOK_DPI)
    fig.colorbar(a.imshow(np.ones((4, 4)), cmap="gray", vmin=0, vmax=1), ax=a, label="intensity")
    fig.colorbar(b.imshow(np.ones((4, 4)), cmap="magma", vmin=0, vmax=2), ax=b, label="EU")
    assert FS.repeated_colorbars(fig) == 0
    plt.close(fig)


def test_unused_grid_cells_are_not_panels():
    fig, axes = plt.subplots(1, 3, figsize=(6, 3), dpi=FS.BOOK_DPI)
    axes[0].plot([0, 1])
    axes[1].bar([0, 1], [1, 2])
    axes[2].set_axis_off()  # an empty cell of a grid
    FS.figure_png(fig)
    assert len(FS.panel_widths_px(fig)) == 2
    plt.close(fig)


def test_panel_width_is_judged_as_shown():
    rec = {"width_px": 1320, "dpi": 120.0, "min_font_pt": 12.0, "panels": 2, "min_panel_px": 280.0,
           "repeated_colorbars": 0}
    assert any("140 px wide as shown" in p for p in FS.record_problems(rec))  # halved into the 660-px column
    assert FS.record_problems(rec, shown_px=1320) == []


@pytest.mark.parametrize("shape", [(192, 64), (256, 256), (64, 192)])
@pytest.mark.parametrize("n, ncols, colorbar", [(1, 3, False), (3, 3, True), (5, 4, True), (8, 5, False)])
def test_image_grid_panels_pass_the_rule(shape, n, ncols, colorbar):
    """viz.image_grid sizes any grid of any image shape so that the panel rule holds as the book shows it."""
    import numpy as np

    from u2ad_core.book import viz

    fig, axes = viz.image_grid(n, ncols, shape, colorbar=colorbar, title_lines=2)
    assert len(axes) == n
    for ax in axes:
        im = ax.imshow(np.zeros(shape), vmin=0, vmax=1)
        ax.set_title("method\nstrategy")
    if colorbar:
        viz.shared_colorbar(fig, im, axes, "EU")
    rec = FS.read_record(FS.figure_png(fig))
    assert rec["panels"] == n and rec["width_px"] <= FS.PAGE_IMAGE_PX + 10
    assert FS.record_problems(rec) == []
    plt.close(fig)


@pytest.mark.parametrize("shape", [(192, 64), (256, 256), (64, 192)])
@pytest.mark.parametrize("n, ncols", [(2, 2), (4, 2), (5, 3)])
def test_image_grid_bars_below_keeps_panels_wide_and_aligned_with_bars_under_some(shape, n, ncols):
    """viz.image_grid_bars_below: a colour bar under some panels (viz.colorbar_below, each its own scale), a title
    over the grid (viz.grid_suptitle), and still every panel passes the rule, top-aligned in its row."""
    import numpy as np

    from u2ad_core.book import viz

    fig, axes = viz.image_grid_bars_below(n, ncols, shape, title_lines=2)
    for k, ax in enumerate(axes):
        im = ax.imshow(np.zeros(shape), vmin=0, vmax=10.0 ** -k)  # a range of its own: no bar repeats another
        if k % 2:  # a bar under every other panel: the row's panels must still line up
            viz.colorbar_below(fig, im, [ax], f"map {k}")
        ax.set_title("method\nstrategy" if k else "slice\n(input)", fontsize=8)
    viz.grid_suptitle(fig, "a title over the grid\nin two lines")
    rec = FS.read_record(FS.figure_png(fig))
    assert rec["panels"] == n and rec["repeated_colorbars"] == 0
    assert FS.record_problems(rec) == []
    tops = [ax.get_window_extent().y1 for ax in axes[:min(ncols, n)]]
    assert max(tops) - min(tops) < 2  # pixels  # the first row's panels line up at their top
    plt.close(fig)


def test_grid_suptitle_makes_room_instead_of_narrowing_the_panels():
    import numpy as np

    from u2ad_core.book import viz

    widths = []
    for title in (None, "one\ntwo\nthree"):
        fig, axes = viz.image_grid(6, 3, (192, 64), colorbar=True, title_lines=2)
        for ax in axes:
            im = ax.imshow(np.zeros((192, 64)), vmin=0, vmax=1)
            ax.set_title("a\nb")
        viz.shared_colorbar(fig, im, axes, "EU")
        if title:
            viz.grid_suptitle(fig, title)
        widths.append(FS.read_record(FS.figure_png(fig))["min_panel_px"])
        plt.close(fig)
    assert widths[1] >= widths[0] - 2


def test_colorbar_below_writes_a_small_range_in_units_of_its_power_of_ten():
    import numpy as np

    from u2ad_core.book import viz

    fig, axes = viz.image_grid_bars_below(2, 2, (192, 64))
    small = axes[0].imshow(np.full((192, 64), 2e-4), vmin=0, vmax=2.5e-4)
    plain = axes[1].imshow(np.zeros((192, 64)), vmin=0, vmax=0.3)
    cb_small = viz.colorbar_below(fig, small, [axes[0]], "variance")
    cb_plain = viz.colorbar_below(fig, plain, [axes[1]], "error")
    fig.canvas.draw()
    assert cb_small.ax.get_xlabel() == "variance (×$10^{-4}$)" and cb_plain.ax.get_xlabel() == "error"
    ticks = [t.get_text() for t in cb_small.ax.get_xticklabels() if t.get_text()]
    assert ticks and all(len(t) <= 4 for t in ticks) and "2" in ticks
    plt.close(fig)


def test_lesion_rows_crops_around_the_lesion():
    import numpy as np

    from u2ad_core.book import viz

    les = np.zeros((192, 64), bool)
    les[101:129, 30:34] = True
    rows = viz.lesion_rows(les)
    assert rows.stop - rows.start == 64 and rows.start <= 101 - 8 and rows.stop >= 129 + 8  # square, lesion inside
    assert viz.lesion_rows(les, n_rows=16) == slice(93, 137)  # widened to the lesion and its margins
    les[:] = False
    les[:4, 10] = True
    assert viz.lesion_rows(les) == slice(0, 64)  # kept inside the image
    assert viz.lesion_rows(np.zeros((192, 64))) == slice(64, 128)  # no lesion: the middle rows
    assert viz.lesion_rows(np.zeros((40, 64))) == slice(0, 40)  # never more rows than the image has
    with pytest.raises(ValueError, match=r"\(H, W\) mask"):
        viz.lesion_rows(np.zeros((2, 40, 64)))


@pytest.mark.parametrize("n_methods, per_method", [(6, False), (5, True), (1, True)])
def test_reconstruction_grid_passes_with_one_colour_bar(n_methods, per_method):
    """Input + methods, each reconstruction above its map, three to a row, one colour bar; maps of
    different sizes share it once each is divided by its own scale."""
    import numpy as np

    from u2ad_core.book import viz

    rng = np.random.default_rng(0)
    img, les = rng.random((192, 64)), np.zeros((192, 64))
    les[101:129, 30:34] = 1
    scales = [10.0 ** -k for k in range(n_methods)]
    methods = [(f"method {k}", rng.random((192, 64)), rng.random((192, 64)) * s) for k, s in enumerate(scales)]
    vmax = scales if per_method else 1.0
    fig, upper, lower = viz.reconstruction_grid(img, methods, vmax, lesion=les, cord=les, rows=viz.lesion_rows(les),
                                                map_titles=[f"÷ {s}" for s in scales], title="a case")
    assert len(upper) == len(lower) == n_methods + 1
    assert [ax.get_title() for ax in upper] == ["input"] + [m[0] for m in methods]
    # each map below its reconstruction: same column, the next row
    for u, lo in zip(upper, lower):
        assert u.get_subplotspec().colspan == lo.get_subplotspec().colspan
        assert lo.get_subplotspec().rowspan.start == u.get_subplotspec().rowspan.start + 1
    if per_method:  # every map drawn on [0, 1]
        assert all(ax.images[-1].get_clim() == (0.0, 1.0) for ax in lower[1:])
    rec = FS.read_record(FS.figure_png(fig))
    assert rec["panels"] == 2 * (n_methods + 1) and rec["repeated_colorbars"] == 0
    assert FS.record_problems(rec) == [] and rec["width_px"] <= FS.PAGE_IMAGE_PX + 10
    assert len(fig.axes) - rec["panels"] - sum(not ax.get_visible() for ax in fig.axes) == 1  # one colour bar
    plt.close(fig)
    with pytest.raises(ValueError, match="as many vmax values"):
        viz.reconstruction_grid(img, methods, [1.0] * (n_methods + 1))
