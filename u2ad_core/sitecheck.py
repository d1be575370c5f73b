"""Check a built HTML book the way a reader meets it: ``u2ad sitecheck _build/html [--browser]``.

Static checks (no browser, always run by ``make test`` on the smoke book):

- every ``<img>`` file exists and decodes (raster images through Pillow);
- every internal link resolves: the target file exists and, for ``page.html#anchor``, the page
  has that ``id``;
- no machine path (``/tmp/``, ``/home/``, ``/work/``, ``/root/``, ``/Users/``, ``C:\\``) and no
  Python traceback in the visible text of a page.

With ``--browser`` every page is also opened in headless Chromium (Debian's ``chromium``) with
every network request refused, and its rendered DOM checked: math typeset by MathJax (no raw
``\\(`` or ``\\[`` left in the visible text) and the same path / traceback checks. Without
Chromium the browser checks are skipped with a message (the static ones still run).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

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
    return problems, len(pages)


def _decode_problem(f: Path) -> str | None:
    if not f.is_file():
        return "file missing"
    if f.suffix.lower() in RASTER:
        try:
            from PIL import Image

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


def browser_check(root: str | Path, browser: str, timeout: float = 120.0) -> tuple[list[str], int]:
    """Open every page in headless Chromium (network refused); check the rendered DOM."""
    root = Path(root)
    problems: list[str] = []
    pages = _pages(root)
    for path in pages:
        rel = str(path.relative_to(root))
        static = parse_page(path)
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
             "--virtual-time-budget=8000", "--dump-dom", path.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or "<html" not in proc.stdout:
            problems.append(f"{rel}: chromium could not render the page (exit {proc.returncode}): "
                            f"{proc.stderr.strip()[-300:]}")
            continue
        dom = parse_page(path, proc.stdout)
        if static.has_math and "mjx-container" not in proc.stdout:
            problems.append(f"{rel}: the page has math but MathJax typeset none of it")
        m = RAW_MATH.search(dom.text)
        if m:
            problems.append(f"{rel}: raw math left in the visible text: "
                            f"...{dom.text[max(0, m.start() - 30):m.end() + 30].strip()}...")
        problems += _text_problems(rel, dom.text)
    return problems, len(pages)


def _cmd(args: argparse.Namespace) -> int:
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
                  "typeset, no raw math, paths or tracebacks", flush=True)
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
    p.add_argument("html", nargs="?", default="_build/html", help="the built book (default: _build/html)")
    p.add_argument("--browser", action="store_true", help="also render every page in headless chromium")
    p.set_defaults(func=_cmd)

