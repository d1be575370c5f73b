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
