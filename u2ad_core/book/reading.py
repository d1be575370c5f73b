"""Reading times, estimated from an executed chapter's words and figures instead of typed.

What a reader reads on a page is its markdown (without the code of solutions) and the visible
outputs (printed text, generated Markdown, tables); code inputs and cells tagged
``remove-cell`` / ``remove-output`` are not read. :func:`reading_stats` counts both and the
figures, :func:`reading_minutes` turns them into minutes at :data:`WORDS_PER_MINUTE` and
:data:`SECONDS_PER_FIGURE`. The build writes the estimate into every chapter's run header and
into the course plan's table of run times.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["WORDS_PER_MINUTE", "SECONDS_PER_FIGURE", "ReadingStats", "reading_stats", "reading_minutes"]

WORDS_PER_MINUTE = 200
"""Silent reading of non-fiction averages about 238 words per minute (Brysbaert 2019, *J. Mem.
Lang.* 109); text dense with numbers and terms reads slower, so the estimate uses 200."""
SECONDS_PER_FIGURE = 30
"""Time to look at one figure and its caption."""

_CODE_BLOCK = re.compile(r"```(?:python|bash)\b.*?```", re.S)
_TAG = re.compile(r"<[^>]+>")
_STYLE = re.compile(r"<style.*?</style>", re.S)


@dataclass(frozen=True)
class ReadingStats:
    """What a reader meets on one page: ``words`` (prose + visible output) and ``figures``."""

    prose_words: int
    output_words: int
    figures: int

    @property
    def words(self) -> int:
        return self.prose_words + self.output_words

    @property
    def minutes(self) -> int:
        return reading_minutes(self.words, self.figures)


def _count(text: str) -> int:
    return len(text.split())


def _output_words(out: dict[str, Any]) -> tuple[int, int]:
    """(words, figures) of one output of a code cell."""
    if out.get("output_type") == "stream":
        return _count("".join(out.get("text", ""))), 0
    data = out.get("data", {})
    figs = 1 if "image/png" in data or "image/svg+xml" in data else 0
    if "text/markdown" in data:
        return _count("".join(data["text/markdown"])), figs
    if "text/html" in data:
        text = _TAG.sub(" ", _STYLE.sub("", "".join(data["text/html"])))
        return _count(html.unescape(text)), figs
    if "text/plain" in data and not figs:
        return _count("".join(data["text/plain"])), figs
    return 0, figs


def reading_stats(nb: Any) -> ReadingStats:
    """Count a notebook's (``nbformat`` node or plain dict) words and figures as a reader meets them."""
    prose = output = figures = 0
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "remove-cell" in tags or "u2ad-run-header" in tags:
            continue
        source = "".join(cell.get("source", ""))
        if cell["cell_type"] == "markdown":
            prose += _count(_CODE_BLOCK.sub(" ", source))
            continue
        if cell["cell_type"] != "code" or "remove-output" in tags:
            continue
        for out in cell.get("outputs", []):
            w, f = _output_words(out)
            output += w
            figures += f
    return ReadingStats(prose, output, figures)


def reading_minutes(words: int, figures: int, wpm: float = WORDS_PER_MINUTE,
                    per_figure_s: float = SECONDS_PER_FIGURE) -> int:
    """Whole minutes (rounded up, at least 1) to read ``words`` and look at ``figures``."""
    if words < 0 or figures < 0:
        raise ValueError("words and figures must be non-negative")
    return max(1, math.ceil(words / wpm + figures * per_figure_s / 60))
