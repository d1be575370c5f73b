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
  more when the image is shown at most :data:`~u2ad_core.book.figstyle.PAGE_IMAGE_PX` pixels wide;
  every panel is at least :data:`~u2ad_core.book.figstyle.MIN_PANEL_PX` (150) pixels wide as shown,
  and no colour bar repeats another's colour map, range and label;
- every image of a notebook page (``notebooks/``; in the article, not the theme's) is a captioned
  figure: inside a ``<figure>`` whose ``<figcaption>`` has text, with alt text that is neither empty
  nor a file path / file name (what Sphinx writes when the cell has no ``mystnb.image.alt``);
- figure numbers are unique across the book: no two figures (on two pages, or on one) carry the
  same Sphinx ``Fig. N``;
- no typed figure number: "Figure N" / "Fig. N" in a page's paragraph text must be one of the
  Sphinx numbers of that page's figures; references to the paper's figures ("the paper's
  Figure 6", "paper Figure 8": "paper" in the 8 words before, same sentence), text in blockquotes
  and in links (``{numref}``) are skipped.

With ``--browser`` every page is also opened in headless Chromium (Debian's ``chromium``) with
every network request refused, in a frame 1280 pixels wide, and its rendered DOM checked: math
typeset by MathJax (no raw ``\\(`` or ``\\[`` left in the visible text), the same path / traceback
checks, every recorded figure's smallest text and narrowest panel measured at the width the browser really shows
the image, and no table or code / output block (``<pre>``) of the article wider than the content
column (it scrolls sideways or is clipped: its own scroll width, or its right edge beyond the
nearest clipping ancestor or the article's; code in a closed "Show code" dropdown is not counted).
One Chromium process per page. Without Chromium the browser checks are skipped with a message (the
static ones still run).
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

__all__ = ["Page", "PageImage", "PageFigure", "parse_page", "check_site", "browser_check", "find_browser",
           "cli_register"]

MACHINE_PATH = re.compile(r"(?<![\w.~-])(?:/tmp/|/home/|/work/|/root/|/Users/|[A-Z]:\\\\)")
TRACEBACK = "Traceback (most recent call last)"
RAW_MATH = re.compile(r"\\\(|\\\[")
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
RASTER = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
_INVISIBLE = {"script", "style", "noscript", "template"}


@dataclass
class PageImage:
    """One ``<img>`` of a page: its ``src``, its ``alt`` (None: no attribute), the index of the
    ``<figure>`` around it in :attr:`Page.figures` (None: not in a figure) and whether it sits inside
    the page's ``<main>`` (the article, not the theme's header or sidebars)."""

    src: str
    alt: str | None
    figure: int | None
    in_main: bool


@dataclass
class PageFigure:
    """One ``<figure>``: its ``id``, its caption's own text (without the number and the ``#`` link) and
    Sphinx's number (``"31"`` of ``<span class="caption-number">Fig. 31 </span>``; None: unnumbered)."""

    id: str
    caption: str = ""
    number: str | None = None


@dataclass
class Page:
    """What the checks need of one HTML page."""

    path: Path
    ids: set[str] = field(default_factory=set)
    images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    text: str = ""
    has_math: bool = False
    has_main: bool = False
    imgs: list[PageImage] = field(default_factory=list)
    figures: list[PageFigure] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)  # <p> text outside blockquotes, captions and links


_FIG_NUMBER = re.compile(r"^\s*Fig\.\s*([\d.]*\d)")


class _Parser(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page, self._hidden, self._text = page, 0, []
        self._depth = {t: 0 for t in ("main", "figure", "figcaption", "blockquote", "p", "a")}
        self._figure: PageFigure | None = None
        self._number: list[str] | None = None  # text of an open caption-number span
        self._para: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cls = a.get("class", "").split()
        for key in ("id", "name"):
            if a.get(key):
                self.page.ids.add(a[key])
        if tag == "img" and a.get("src"):
            self.page.images.append(a["src"])
            fig = len(self.page.figures) - 1 if self._figure is not None else None
            self.page.imgs.append(PageImage(a["src"], dict(attrs).get("alt"), fig, self._depth["main"] > 0))
        elif tag == "a" and "href" in a:
            self.page.links.append(a["href"])
        if "math" in cls:
            self.page.has_math = True
        if tag in _INVISIBLE:
            self._hidden += 1
        if tag in self._depth:
            self._depth[tag] += 1
        if tag == "main":
            self.page.has_main = True
        elif tag == "figure":
            self._figure = PageFigure(a.get("id", ""))
            self.page.figures.append(self._figure)
        elif tag == "p" and self._depth["p"] == 1:
            self._para = []
        elif tag == "span" and "caption-number" in cls and self._figure is not None:
            self._number = []

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE and self._hidden:
            self._hidden -= 1
        if tag == "span" and self._number is not None:
            m = _FIG_NUMBER.match("".join(self._number))
            if m and self._figure is not None:
                self._figure.number = m.group(1)
            self._number = None
        if tag in self._depth and self._depth[tag]:
            self._depth[tag] -= 1
            if tag == "figure" and not self._depth["figure"]:
                self._figure = None
            elif tag == "p" and not self._depth["p"] and self._para:
                self.page.paragraphs.append(" ".join("".join(self._para).split()))
                self._para = []

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self._text.append(data)
        if self._number is not None:
            self._number.append(data)
        elif self._depth["figcaption"] and self._figure is not None:
            if not self._depth["a"]:  # the caption's own words: not "Fig. N", not the "#" headerlink
                self._figure.caption += data
        elif self._depth["p"] and not (self._depth["blockquote"] or self._depth["a"]):
            self._para.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join(self._text)
        for f in self.page.figures:
            f.caption = " ".join(f.caption.split())


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
        if _is_notebook_page(path):
            problems += _image_figure_problems(rel, page)
        problems += _typed_number_problems(rel, page)
    problems += _quantity_problems(root.resolve(), pages)
    problems += _figure_number_problems(root.resolve(), pages)
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


_FILE_LIKE = re.compile(r"[/\\]|\.(?:png|svg|jpe?g|gif|webp|pdf)\s*$", re.I)


def _image_figure_problems(rel: str, page: Page) -> list[str]:
    """Every image of a notebook page's article sits in a ``<figure>`` whose ``<figcaption>`` has text,
    and has alt text that is neither empty nor a file path / file name (what Sphinx writes when a
    figure cell has no ``image.alt``)."""
    out = []
    for im in page.imgs:
        if page.has_main and not im.in_main:
            continue  # the theme's logo and icons
        name = Path(urlsplit(im.src).path).name
        if im.figure is None:
            out.append(f"{rel}: image {name} is not in a captioned figure (give its cell "
                       "mystnb.figure.caption and name)")
        elif not page.figures[im.figure].caption:
            out.append(f"{rel}: image {name} is in a figure without caption text")
        alt = (im.alt or "").strip()
        if not alt:
            out.append(f"{rel}: image {name} has no alt text (give its cell mystnb.image.alt)")
        elif _FILE_LIKE.search(alt):
            out.append(f"{rel}: image {name} has a file name as alt text ({alt[:60]!r}): give its cell "
                       "mystnb.image.alt")
    return out


def _figure_number_problems(root: Path, pages: dict[Path, Page]) -> list[str]:
    """Sphinx's figure numbers are unique across the book: two different figures (on two pages, or
    two on one page) must not carry the same ``Fig. N``."""
    seen: dict[str, list[str]] = {}
    for path, page in sorted(pages.items()):
        rel = str(path.relative_to(root))
        for i, f in enumerate(page.figures):
            if f.number is not None:
                seen.setdefault(f.number, []).append(f"{rel}#{f.id}" if f.id else f"{rel} (figure {i + 1})")
    return [f"figure number Fig. {n} is given to {len(where)} figures: {', '.join(where)}"
            for n, where in sorted(seen.items(), key=lambda kv: [int(x) for x in kv[0].split(".")])
            if len(where) > 1]


_TYPED_FIG = re.compile(r"\b(?:Figure|Fig\.)\s*(\d+(?:\.\d+)*)")
_PAPER = re.compile(r"^\W*paper(?:['’]s)?\W*$", re.I)
PAPER_WINDOW = 8  # words before "Figure N" (same sentence) in which "paper" / "paper's" marks the paper's figure


def _typed_number_problems(rel: str, page: Page) -> list[str]:
    """A "Figure N." / "Fig. N" typed in a paragraph must be one of Sphinx's figure numbers on the page
    (typed numbering restarts per chapter and clashes with the book's). References to the paper's
    figures ("the paper's Figure 6", "paper Figure 8"), text in blockquotes and links (``{numref}``)
    are skipped."""
    numbers = {f.number for f in page.figures if f.number}
    out = []
    for para in page.paragraphs:
        for m in _TYPED_FIG.finditer(para):
            if m.group(1) in numbers:
                continue
            before = para[:m.start()].split()[-PAPER_WINDOW:]
            for i in range(len(before) - 1, -1, -1):  # the same sentence only
                if before[i].endswith((".", "!", "?")) and not re.fullmatch(r"\(?Figs?\.", before[i]):
                    before = before[i + 1:]
                    break
            if any(_PAPER.match(w) for w in before):
                continue
            ctx = para[max(0, m.start() - 30):m.end() + 30]
            out.append(f"{rel}: typed figure number {m.group(0)!r} matches no numbered figure on the page: "
                       f"...{ctx}... (use a figure caption and {{numref}}; the paper's figures as "
                       "\"the paper's Figure N\")")
    return out


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
function wideBlocks(d) {{
  // Every shown table and <pre> of the article wider than what shows of it: its own horizontal
  // scroll, or its right edge beyond the nearest clipping / scrolling ancestor or the article's
  // right edge. Code in a closed dropdown ("Show code cell source") or otherwise hidden is skipped.
  var art = d.querySelector(".bd-article") || d.querySelector("main") || d.body;
  var win = d.defaultView, wide = [];
  var artRight = art.getBoundingClientRect().right;
  art.querySelectorAll("table, pre").forEach(function (el) {{
    if (el.closest("details:not([open])") || (el.checkVisibility && !el.checkVisibility())) return;
    var r = el.getBoundingClientRect();
    if (!r.width || !r.height) return;
    if (el.tagName === "TABLE" && el.parentElement.closest("table")) return;  // counted with the outer table
    var right = artRight;
    for (var p = el.parentElement; p && p !== art; p = p.parentElement) {{
      if (win.getComputedStyle(p).overflowX !== "visible") {{
        right = Math.min(right, p.getBoundingClientRect().left + p.clientLeft + p.clientWidth);
      }}
    }}
    var over = Math.max(el.tagName === "PRE" ? el.scrollWidth - el.clientWidth : 0, r.right - right);
    if (over > 2) {{
      var kind = el.tagName === "TABLE" ? "table" : (el.closest(".cell_output") ? "code output" : "code");
      var text = (el.innerText || el.textContent).replace(/\\s+/g, " ").trim().slice(0, 60);
      wide.push({{kind: kind, px: Math.round(over), text: text}});
    }}
  }});
  return wide;
}}
document.getElementById("f").addEventListener("load", function () {{
  setTimeout(function () {{
    var out = document.getElementById("out");
    try {{
      var d = document.getElementById("f").contentDocument;
      var imgs = [];
      d.querySelectorAll("img").forEach(function (im) {{
        imgs.push({{src: im.getAttribute("src"), natural: im.naturalWidth, shown: im.getBoundingClientRect().width}});
      }});
      var html = d.documentElement.outerHTML;
      out.textContent = JSON.stringify({{html: html, imgs: imgs, wide: wideBlocks(d)}});
    }} catch (e) {{ out.textContent = "ERROR " + e; }}
  }}, 4000);
}});
</script></body></html>
"""


def render_page(path: Path, browser: str, width: int = 1280,
                timeout: float = 120.0) -> tuple[str, list[dict], list[dict]]:
    """Render ``path`` in headless Chromium inside a frame ``width`` CSS pixels wide, network refused
    (one Chromium process per page).

    Returns the rendered DOM; per ``<img>``, its ``src``, natural width and shown width (CSS px); and
    per shown table or ``<pre>`` of the article that does not fit its column, its ``kind`` ("table",
    "code output" or "code"), the overflow ``px`` and the first 60 characters of its ``text``.
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
    return got["html"], got["imgs"], got["wide"]


def _wide_problems(rel: str, wide: list[dict], width: int = 1280) -> list[str]:
    """A table or code / output block the reader sees that is wider than the content column (code in a
    closed "Show code" dropdown is not measured: a reader who opens it expects code to scroll)."""
    return [f"{rel}: {w['kind']} is {w['px']} px wider than the content column at {width} px "
            f"(it is clipped or scrolls sideways): {w['text']!r}" for w in wide]


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
            html, imgs, wide = render_page(path, browser, timeout=timeout)
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
        problems += _wide_problems(rel, wide)
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
    print(f"u2ad sitecheck: {n} pages: images, internal links, paths and tracebacks, quantities, captioned "
          "figures with alt text, unique figure numbers, no typed figure numbers checked", flush=True)
    if args.browser:
        browser = find_browser()
        if browser is None:
            print("u2ad sitecheck: chromium is not installed (apt install chromium): the browser checks are "
                  "skipped", flush=True)
        else:
            more, nb = browser_check(args.html, browser)
            problems += more
            print(f"u2ad sitecheck: {nb} pages rendered in {Path(browser).name} (network refused): math "
                  "typeset, no raw math, paths or tracebacks, figure text >= 8 pt, tables and code within the "
                  "column at 1280 px", flush=True)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    if problems:
        print(f"u2ad sitecheck: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("u2ad sitecheck: ok", flush=True)
    return 0


def cli_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sitecheck", help="check a built book: images, figures, links, paths, math, widths",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("html", nargs="?", default="_build/html", help="the built book (default: _build/html), or an executed notebook "
                   "(.ipynb: only its figures are checked)")
    p.add_argument("--browser", action="store_true", help="also render every page in headless chromium")
    p.set_defaults(func=_cmd)

