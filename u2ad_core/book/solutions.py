"""Exercise solutions that cannot rot, and show what they give.

The code of every solution (a fenced ``python`` block inside a ``{dropdown} Solution`` block of a
markdown cell, :func:`solution_blocks`) is appended to the notebook as hidden cells
(:func:`with_solutions`) and executed when the book is built with solutions (the default for the
``smoke`` preset, which ``make test`` builds). When the executed copy is staged, each solution's
output is written into its own dropdown, under "Output in this build:"
(:func:`with_solution_outputs`), so a reader of that build sees what the solution gives.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

from u2ad_core.core.runtime import atomic_path

__all__ = ["SOLUTION_TAG", "OUTPUT_LINES", "solution_blocks", "with_solutions", "solution_output_text",
           "with_solution_outputs"]

_SOLUTION_OPEN = re.compile(r"^\s*(`{3,}|:{3,})\{dropdown\}\s*Solution")
_PY_OPEN = re.compile(r"^\s*(`{3,})(python|ipython3?)\s*$")
SOLUTION_TAG = "u2ad-solution-check"


def _solution_spans(source: str) -> list[tuple[int, str]]:
    """``(index of the closing fence line, dedented code)`` of every fenced ``python`` block
    inside a ``{dropdown} Solution`` block of one markdown cell's source, in order."""
    spans: list[tuple[int, str]] = []
    fence, code, code_fence = None, None, None
    for n, line in enumerate(source.splitlines()):
        if fence is None:
            m = _SOLUTION_OPEN.match(line)
            if m:
                fence = m.group(1)
            continue
        if code is not None:
            if line.strip() == code_fence:
                spans.append((n, textwrap.dedent("\n".join(code)).strip("\n")))
                code, code_fence = None, None
            else:
                code.append(line)
            continue
        m = _PY_OPEN.match(line)
        if m:
            code, code_fence = [], m.group(1)
        elif line.strip() == fence:
            fence = None
    return spans


def solution_blocks(nb: Any) -> list[str]:
    """The code of the exercise solutions of a notebook (nbformat node), in page order.

    A solution is a ``{dropdown} Solution`` block (backtick or colon fence) in a markdown cell;
    every fenced ``python`` block inside it is code that runs after the notebook's own cells.
    """
    return [code for cell in nb.cells if cell.cell_type == "markdown" for _, code in _solution_spans(cell.source)]


OUTPUT_LINES = 60
"""At most this many lines of a solution's output go onto the page (then a note of the rest)."""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def solution_output_text(cell: Any) -> str:
    """What an executed solution cell shows, as plain text ('' when it shows nothing).

    Standard output and errors' names, ``text/markdown`` (else ``text/plain``) of results and
    displays, and "(draws a figure)" for an image; standard error (warnings, progress bars)
    is left out. Capped at :data:`OUTPUT_LINES` lines.
    """
    parts: list[str] = []
    for o in cell.get("outputs", []):
        kind = o.get("output_type")
        if kind == "stream":
            if o.get("name") == "stdout":
                parts.append(o.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            data = o.get("data", {})
            if any(k.startswith("image/") for k in data):
                parts.append("(draws a figure)\n")
            elif "text/markdown" in data:
                parts.append(str(data["text/markdown"]).rstrip("\n") + "\n")
            elif "text/plain" in data:
                parts.append(str(data["text/plain"]).rstrip("\n") + "\n")
        elif kind == "error":
            parts.append(f"{o.get('ename', 'Error')}: {o.get('evalue', '')}\n")
    lines = _ANSI.sub("", "".join(parts)).replace("\r\n", "\n").rstrip().splitlines()
    if len(lines) > OUTPUT_LINES:
        lines = lines[:OUTPUT_LINES] + [f"... ({len(lines) - OUTPUT_LINES} more lines)"]
    return "\n".join(line.rstrip() for line in lines)


def with_solution_outputs(nb: Any) -> int:
    """Write each executed solution's output into its own dropdown (in place); return how many.

    ``nb`` is an executed notebook whose solution checks (cells tagged :data:`SOLUTION_TAG`,
    appended by :func:`with_solutions`) ran: under each solution's python block, inside the
    same dropdown, "Output in this build:" and a ``text`` block with
    :func:`solution_output_text`. Nothing changes when the notebook has no executed checks or
    their number differs from the solution blocks (an older executed copy).
    """
    checks = [c for c in nb.cells if SOLUTION_TAG in c.get("metadata", {}).get("tags", [])]
    if not checks or len(checks) != len(solution_blocks(nb)):
        return 0
    texts = iter([solution_output_text(c) for c in checks])
    n_written = 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        spans = _solution_spans(cell.source)
        if not spans:
            continue
        lines = cell.source.splitlines()
        after = {}
        for close, _ in spans:
            text = next(texts)
            indent = re.match(r"\s*", lines[close]).group(0)
            body = text if text else "(prints nothing)"
            fence = "```"
            while fence in body:
                fence += "`"
            after[close] = ["", f"{indent}Output in this build:", f"{indent}{fence}text"] \
                + [f"{indent}{ln}" if ln else "" for ln in body.splitlines()] + [f"{indent}{fence}"]
            n_written += 1
        out: list[str] = []
        for n, line in enumerate(lines):
            out.append(line)
            out.extend(after.get(n, []))
        cell.source = "\n".join(out)
    return n_written


def with_solutions(src: Path, out: Path) -> int:
    """Write ``src`` plus one hidden code cell per solution block to ``out``; return their number."""
    import nbformat  # here, not at the top: ~0.9 s to import, and every u2ad command imports this module

    nb = nbformat.read(src, as_version=4)
    blocks = solution_blocks(nb)
    for i, code in enumerate(blocks, 1):
        cell = nbformat.v4.new_code_cell(f"# solution check {i} of {len(blocks)} ({src.name})\n{code}")
        cell.metadata["tags"] = ["remove-cell", SOLUTION_TAG]
        nb.cells.append(cell)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".ipynb") as tmp:
        nbformat.write(nb, str(tmp))
    return len(blocks)
