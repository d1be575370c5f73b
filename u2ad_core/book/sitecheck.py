"""Check a built HTML book the way a reader meets it: ``u2ad sitecheck _build/html [--browser]``.

Static checks (no browser, always run by ``make test`` on the smoke book):
- every ``<img>`` file exists and decodes (raster images through Pillow);
- every internal link resolves: the target file exists and, for ``page.html#anchor``, the page
  has that ``id``;
- no machine path (``/tmp/``, ``/home/``, ``/work/``, ``/root/``, ``/Users/``, ``C:\\``) and no
  Python traceback in the visible text of a page;
- one value per named quantity: a quantity shown on several pages through
  :func:`~u2ad_core.book.quantities.show_quantity` reads the same on all of them;
- every figure of a notebook page is legible: its PNG records its smallest font and dpi
  (:mod:`u2ad_core.book.figstyle`), the dpi is at least 120 and the smallest text renders at 8 pt or
  more when the image is shown at most :data:`~u2ad_core.book.figstyle.PAGE_IMAGE_PX` pixels wide.

With ``--browser`` every page is also opened in headless Chromium (Debian's ``chromium``) with
every network request refused, in a frame 1280 pixels wide, and its rendered DOM checked: math
typeset by MathJax (no raw ``\\(`` or ``\\[`` left in the visible text), the same path / traceback
checks, and every recorded figure's smallest text measured at the width the browser really shows
the image. Without Chromium the browser checks are skipped with a message (the static ones still
run).
"""

from __future__ import annotations

import argparse
import html as htmllib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from u2ad_core.book import figstyle
from u2ad_core.book.quantities import quantity_texts

__all__ = ["Page", "parse_page", "check_site", "browser_check", "find_browser", "cli_register"]

MACHINE_PATH = re.compile(r"(?<![\w.~-])(?:/tmp/|/home/|/work/|/root/|/Users/|[A-Z]:\\\\)")
TRACEBACK = "Traceback (most recent call last)"
RAW_MATH = re.compile(r"\\\(|\\\[")
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
RASTER = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
_INVISIBLE = {"script", "style", "noscript", "template"}


@dataclass
class Page:
    """What the checks need of one HTML page."""

    path: Path
    ids: set[str] = field(default_factory=set)
    images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    text: str = ""
    has_math: bool = False


class _Parser(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page, self._hidden, self._text = page, 0, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("id", "name"):
            if a.get(key):
                self.page.ids.add(a[key])
        if tag == "img" and a.get("src"):
            self.page.images.append(a["src"])
        elif tag == "a" and "href" in a:
            self.page.links.append(a["href"])
        if "math" in a.get("class", "").split():
            self.page.has_math = True
        if tag in _INVISIBLE:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join(self._text)


def parse_page(path: Path, html: str | None = None) -> Page:
    """Parse an HTML file (or ``html``, its rendered DOM) into a :class:`Page`."""
    page = Page(Path(path))
    parser = _Parser(page)
    parser.feed(Path(path).read_text(encoding="utf-8", errors="replace") if html is None else html)
    parser.close()
    return page


def _pages(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.html") if not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS))


def _text_problems(rel: str, text: str) -> list[str]:
    out = []
    m = MACHINE_PATH.search(text)
    if m:
        out.append(f"{rel}: machine path in the page text: ...{text[max(0, m.start() - 40):m.end() + 40].strip()}...")
    if TRACEBACK in text:
        out.append(f"{rel}: a Python traceback is shown on the page")
    return out


def check_site(root: str | Path) -> tuple[list[str], int]:
    """Static checks of the built book in ``root`` (``.../_build/html``): (problems, pages checked)."""
    root = Path(root)
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{root} has no index.html: build the book first (make book)")
    pages = {p.resolve(): parse_page(p) for p in _pages(root)}
    problems: list[str] = []
    decoded: dict[Path, str | None] = {}
    for path, page in pages.items():
        rel = str(path.relative_to(root.resolve()))
        for src in page.images:
            problems += _font_problems(rel, src, path, page)
            u = urlsplit(src)
            if u.scheme == "data" or u.scheme in ("http", "https") or src.startswith("//"):
                if u.scheme != "data":
                    problems.append(f"{rel}: image from the network ({src}): the book must work offline")
                continue
            f = (path.parent / unquote(u.path)).resolve()
            if f not in decoded:
                decoded[f] = _decode_problem(f)
            if decoded[f]:
                problems.append(f"{rel}: image {src}: {decoded[f]}")
        for href in page.links:
            u = urlsplit(href)
            if u.scheme or href.startswith("//") or href.startswith(("mailto:", "javascript:")):
                continue
            target = path if not u.path else (path.parent / unquote(u.path)).resolve()
            if u.path and target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{rel}: broken link {href} (no file {target.name})")
                continue
            if u.fragment and target.suffix == ".html":
                tp = pages.get(target) or parse_page(target)
                if unquote(u.fragment) not in tp.ids:
                    problems.append(f"{rel}: broken link {href} (no anchor #{u.fragment} in {target.name})")
        problems += _text_problems(rel, page.text)
    problems += _quantity_problems(root.resolve(), pages)
    return problems, len(pages)


def _quantity_problems(root: Path, pages: dict[Path, Page]) -> list[str]:
    """A named quantity must read the same on every page that shows it."""
    seen: dict[str, dict[str, list[str]]] = {}
    for path in pages:
        rel = str(path.relative_to(root))
        for name, texts in quantity_texts(path.read_text(encoding="utf-8", errors="replace")).items():
            for t in texts:
                seen.setdefault(name, {}).setdefault(t, []).append(rel)
    return [f"quantity {name} reads differently across pages: "
            + "; ".join(f"{t!r} on {', '.join(sorted(set(where)))}" for t, where in sorted(texts.items()))
            for name, texts in sorted(seen.items()) if len(texts) > 1]


def _is_notebook_page(path: Path) -> bool:
    return "notebooks" in path.parts


def _record(path: Path, src: str) -> dict | None:
    f = (path.parent / unquote(urlsplit(src).path)).resolve()
    if f.suffix.lower() != ".png" or not f.is_file():
        return None
    try:
        return figstyle.read_record(f)
    except ValueError:
        return None


def _font_problems(rel: str, src: str, path: Path, page: Page, shown_px: float | None = None) -> list[str]:
    """The legibility rule for one image (static: shown at most PAGE_IMAGE_PX wide; browser: as measured)."""
    if urlsplit(src).scheme or not _is_notebook_page(path):
        return []
    rec = _record(path, src)
    if rec is None:
        return []
    name = Path(urlsplit(src).path).name[:12]
    return [f"{rel}: figure {name}...: {p}" for p in figstyle.record_problems(rec, shown_px)]


def _decode_problem(f: Path) -> str | None:
    if not f.is_file():
        return "file missing"
    if f.suffix.lower() in RASTER:
        try:
            with Image.open(f) as im:
                im.load()
        except Exception as exc:  # noqa: BLE001 - any decoder error is the finding
            return f"does not decode ({type(exc).__name__}: {exc})"
    elif f.stat().st_size == 0:
        return "empty file"
    return None


def find_browser() -> str | None:
    """Path of Debian's ``chromium`` (or ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


_FRAME = """<!doctype html><html><body style="margin:0">
<iframe id="f" src="{src}" style="width:{width}px;height:900px;border:0"></iframe>
<pre id="out">pending</pre>
<script>
document.getElementById("f").addEventListener("load", function () {{
  setTimeout(function () {{
    var out = document.getElementById("out");
    try {{
      var d = document.getElementById("f").contentDocument;
      var imgs = [];
      d.querySelectorAll("img").forEach(function (im) {{
        imgs.push({{src: im.getAttribute("src"), natural: im.naturalWidth, shown: im.getBoundingClientRect().width}});
      }});
      out.textContent = JSON.stringify({{html: d.documentElement.outerHTML, imgs: imgs}});
    }} catch (e) {{ out.textContent = "ERROR " + e; }}
  }}, 4000);
}});
</script></body></html>
"""


def render_page(path: Path, browser: str, width: int = 1280, timeout: float = 120.0) -> tuple[str, list[dict]]:
    """Render ``path`` in headless Chromium inside a frame ``width`` CSS pixels wide, network refused.

    Returns the rendered DOM and, per ``<img>``, its ``src``, natural width and shown width (CSS px).
    """

    with tempfile.TemporaryDirectory(prefix="u2ad-sitecheck-") as tmp:
        frame = Path(tmp) / "frame.html"
        frame.write_text(_FRAME.format(src=path.resolve().as_uri(), width=width), encoding="utf-8")
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
             "--allow-file-access-from-files", f"--window-size={width + 40},1000",
             "--virtual-time-budget=12000", "--dump-dom", frame.as_uri()],
            capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="out">(.*?)</pre>', proc.stdout, re.S)
    if proc.returncode != 0 or m is None or not m.group(1).startswith("{"):
        detail = m.group(1)[:200] if m else proc.stderr.strip()[-300:]
        raise RuntimeError(f"chromium could not render the page (exit {proc.returncode}): {detail}")
    got = json.loads(htmllib.unescape(m.group(1)))
    return got["html"], got["imgs"]


def browser_check(root: str | Path, browser: str, timeout: float = 120.0) -> tuple[list[str], int]:
    """Open every page in headless Chromium (network refused, 1280 px wide); check the rendered DOM
    and the rendered size of every recorded figure's smallest text."""
    root = Path(root)
    problems: list[str] = []
    pages = _pages(root)
    for path in pages:
        rel = str(path.relative_to(root))
        static = parse_page(path)
        try:
            html, imgs = render_page(path, browser, timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{rel}: {exc}")
            continue
        dom = parse_page(path, html)
        if static.has_math and "mjx-container" not in html:
            problems.append(f"{rel}: the page has math but MathJax typeset none of it")
        m = RAW_MATH.search(dom.text)
        if m:
            problems.append(f"{rel}: raw math left in the visible text: "
                            f"...{dom.text[max(0, m.start() - 30):m.end() + 30].strip()}...")
        problems += _text_problems(rel, dom.text)
        for im in imgs:
            if im.get("src") and im.get("natural") and im.get("shown"):  # 0: inside a closed dropdown
                problems += _font_problems(rel, im["src"], path, static, shown_px=float(im["shown"]))
    return problems, len(pages)


def _cmd(args: argparse.Namespace) -> int:
    if str(args.html).endswith(".ipynb"):
        if not Path(args.html).is_file():
            print(f"u2ad sitecheck: no notebook {args.html}", file=sys.stderr)
            return 2
        problems, n = figstyle.notebook_problems(args.html)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print(f"u2ad sitecheck: {n} figure(s) of {Path(args.html).name}: "
              f"{len(problems)} problem(s)" if problems else f"u2ad sitecheck: {n} figure(s): ok", flush=True)
        return 1 if problems else 0
    try:
        problems, n = check_site(args.html)
    except FileNotFoundError as exc:
        print(f"u2ad sitecheck: {exc}", file=sys.stderr)
        return 2
    print(f"u2ad sitecheck: {n} pages: images, internal links, paths and tracebacks checked", flush=True)
    if args.browser:
        browser = find_browser()
        if browser is None:
            print("u2ad sitecheck: chromium is not installed (apt install chromium): the browser checks are "
                  "skipped", flush=True)
        else:
            more, nb = browser_check(args.html, browser)
            problems += more
            print(f"u2ad sitecheck: {nb} pages rendered in {Path(browser).name} (network refused): math "
                  "typeset, no raw math, paths or tracebacks, figure text >= 8 pt at 1280 px", flush=True)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    if problems:
        print(f"u2ad sitecheck: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("u2ad sitecheck: ok", flush=True)
    return 0


def cli_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sitecheck", help="check a built book: images, links, paths, math (in a browser)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("html", nargs="?", default="_build/html", help="the built book (default: _build/html), or an executed notebook "
                   "(.ipynb: only its figures are checked)")
    p.add_argument("--browser", action="store_true", help="also render every page in headless chromium")
    p.set_defaults(func=_cmd)

