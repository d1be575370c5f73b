"""The built-book checker (u2ad_core.book.sitecheck) on tiny hand-made sites: it must find each
kind of problem, and pass a clean site."""

from pathlib import Path

import pytest

from u2ad_core.book import sitecheck as SC


def _site(root: Path, index_body: str, other_body: str = '<h1 id="top">Other</h1>') -> Path:
    from PIL import Image

    (root / "_images").mkdir(parents=True)
    Image.new("RGB", (4, 4), "white").save(root / "_images" / "ok.png")
    (root / "_images" / "broken.png").write_bytes(b"not a png at all")
    (root / "index.html").write_text(f"<html><body>{index_body}</body></html>")
    (root / "other.html").write_text(f"<html><body>{other_body}</body></html>")
    (root / "_static").mkdir()
    (root / "_static" / "x.html").write_text('<a href="nowhere.html">ignored: theme files</a>')
    return root


def test_clean_site_passes(tmp_path):
    root = _site(tmp_path, '<img src="_images/ok.png"><a href="other.html#top">o</a><a href="#me" id="me">s</a>'
                           '<a href="https://doi.org/10.1/x">doi</a><script>var p = "/tmp/x";</script>')
    problems, n = SC.check_site(root)
    assert problems == [] and n == 2


@pytest.mark.parametrize("body, expect", [
    ('<img src="_images/missing.png">', "file missing"),
    ('<img src="_images/broken.png">', "does not decode"),
    ('<img src="https://example.org/a.png">', "from the network"),
    ('<a href="gone.html">x</a>', "broken link gone.html"),
    ('<a href="other.html#nope">x</a>', "no anchor #nope"),
    ("<p>data_dir = '/tmp/build/data'</p>", "machine path"),
    ("<pre>Traceback (most recent call last):\n  File ...</pre>", "traceback"),
])
def test_each_problem_is_found(tmp_path, body, expect):
    problems, _ = SC.check_site(_site(tmp_path, body))
    assert len(problems) == 1 and expect in problems[0] and problems[0].startswith("index.html"), problems


def test_missing_build_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.html"):
        SC.check_site(tmp_path)


def test_cli_exit_codes(tmp_path, capsys):
    from u2ad_core.cli import main

    assert main(["sitecheck", str(_site(tmp_path / "a", "<p>fine</p>"))]) == 0
    assert main(["sitecheck", str(_site(tmp_path / "b", '<a href="gone.html">x</a>'))]) == 1
    assert "1 problem" in capsys.readouterr().err
    assert main(["sitecheck", str(tmp_path / "none")]) == 2


@pytest.mark.slow
def test_browser_finds_untypeset_math(tmp_path):
    """A page with math markup but no MathJax: the browser check reports it."""
    browser = SC.find_browser()
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium): the browser check is skipped")
    root = _site(tmp_path, r'<span class="math notranslate nohighlight">\(\mu\)</span>')
    problems, n = SC.browser_check(root, browser)
    assert n == 2
    assert any("MathJax typeset none" in p for p in problems) and any("raw math" in p for p in problems), problems


# --- captioned figures, figure numbers, typed numbers ------------------------------------------------

def _fig(src: str = "../../_images/fig.svg", alt: str | None = "A sagittal slice", caption: str = "Fig. 1 ",
         text: str = "The slice.", fid: str = "fig-01-a") -> str:
    alt_attr = "" if alt is None else f' alt="{alt}"'
    num = f'<span class="caption-number">{caption}</span>' if caption else ""
    return (f'<figure class="align-default" id="{fid}"><img{alt_attr} src="{src}" />'
            f'<figcaption><p>{num}<span class="caption-text">{text}</span>'
            f'<a class="headerlink" href="#{fid}">#</a></p></figcaption></figure>')


def _book(root: Path, pages: dict[str, str]) -> Path:
    """A site with ``book/notebooks/<name>.html`` pages (body inside <main>) and an SVG figure (the
    legibility rule, for PNGs, is tested in test_figstyle)."""
    _site(root, "<p>index</p>")
    (root / "_images" / "fig.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (root / "book" / "notebooks").mkdir(parents=True)
    for name, body in pages.items():
        (root / "book" / "notebooks" / f"{name}.html").write_text(
            '<html><body><header><img src="../../_images/fig.svg"></header>'  # the theme's logo: not checked
            f'<main><article class="bd-article">{body}</article></main></body></html>')
    return root


def test_captioned_figures_pass(tmp_path):
    root = _book(tmp_path, {"01": _fig() + _fig(fid="fig-01-b", caption="Fig. 2 ")
                            + "<p>As Fig. 2 shows, and the paper\u2019s Figure 6 and (paper Table 4 and Figure 7).</p>",
                            "02": _fig(caption="Fig. 3 ", fid="fig-02-a")
                            + '<p>See <a class="reference internal" href="01.html#fig-01-a"><span class="std '
                              'std-numref">Fig. 1</span></a>.</p><blockquote><p>Figure 9. quoted</p></blockquote>'})
    problems, _ = SC.check_site(root)
    assert problems == [], problems


@pytest.mark.parametrize("body, expect", [
    ('<div class="cell_output"><img alt="A slice" src="../../_images/fig.svg" /></div>', "not in a captioned figure"),
    (_fig(caption="", text=""), "figure without caption text"),
    (_fig(alt=None), "has no alt text"),
    (_fig(alt="  "), "has no alt text"),
    (_fig(alt="../../_images/fig.svg"), "file name as alt text"),
    (_fig(alt="d2a6133087c5.png"), "file name as alt text"),
    (_fig(alt="figure.SVG"), "file name as alt text"),
])
def test_each_image_problem_is_found(tmp_path, body, expect):
    problems, _ = SC.check_site(_book(tmp_path, {"01": body}))
    assert len(problems) == 1 and expect in problems[0], problems
    assert problems[0].startswith("book/notebooks/01.html: image fig.svg"), problems


def test_images_outside_notebook_pages_need_no_figure(tmp_path):
    problems, _ = SC.check_site(_site(tmp_path, '<img src="_images/ok.png">'))
    assert problems == []


def test_duplicate_figure_numbers_are_found(tmp_path):
    root = _book(tmp_path, {"01": _fig() + _fig(fid="fig-01-b", caption="Fig. 2 "),
                            "02": _fig(fid="fig-02-a", caption="Fig. 2 ") + _fig(fid="fig-02-b", caption="Fig. 3 ")
                            + _fig(fid="fig-02-c", caption="Fig. 3 ")})
    problems, _ = SC.check_site(root)
    assert problems == [
        "figure number Fig. 2 is given to 2 figures: book/notebooks/01.html#fig-01-b, book/notebooks/02.html#fig-02-a",
        "figure number Fig. 3 is given to 2 figures: book/notebooks/02.html#fig-02-b, book/notebooks/02.html#fig-02-c",
    ], problems


@pytest.mark.parametrize("para", [
    "<p><em>Figure 1.</em> Yellow arrow: the lesion.</p>",      # a typed caption under an uncaptioned image
    "<p>Hint: Figure 2 already measured it.</p>",                # a typed reference, restarting per chapter
    "<p>the pixel-level results on the pseudo set (Fig. 6).</p>",
    "<p>The paper trains longer. The pseudo set of Figure 6 here.</p>",  # 'paper' in the previous sentence
])
def test_typed_figure_numbers_are_found(tmp_path, para):
    problems, _ = SC.check_site(_book(tmp_path, {"01": _fig(caption="Fig. 7 ") + para}))
    assert len(problems) == 1 and "typed figure number" in problems[0], problems
    assert "matches no numbered figure on the page" in problems[0]


# --- the browser: tables and code blocks wider than the column -------------------------------------

WIDE = "x" * 400


@pytest.mark.slow
def test_browser_finds_wide_tables_and_code(tmp_path):
    browser = SC.find_browser()
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium): the browser check is skipped")
    cell = "<td>" + " ".join(["wide_column_header"] * 3) + "</td>"
    body = (
        '<main><article class="bd-article" style="width:600px;font:14px monospace">'
        "<table><tr><td>narrow</td></tr></table>"                                   # fits
        f'<div style="overflow-x:auto"><table><tr>{cell * 8}</tr></table></div>'   # scrolls in its container
        f'<div style="overflow:hidden"><table style="width:900px"><tr><td>clipped</td></tr></table></div>'
        f'<div class="cell_output"><pre style="overflow:auto">{WIDE}</pre></div>'  # output scrolls
        f"<pre>short code</pre>"                                                    # fits
        f'<details><summary>Show code</summary><pre style="overflow:auto">hidden {WIDE}</pre></details>'
        "</article></main>")
    root = _site(tmp_path, body)
    problems, n = SC.browser_check(root, browser)
    assert n == 2
    assert len(problems) == 3, problems
    assert all(p.startswith("index.html: ") and "wider than the content column at 1280 px" in p for p in problems)
    assert "table is" in problems[0] and "'wide_column_header wide_column_header" in problems[0]
    assert "table is 300 px wider" in problems[1] and "'clipped'" in problems[1]
    assert "code output is" in problems[2] and repr("x" * 60) in problems[2]
