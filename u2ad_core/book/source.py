"""The package's own code on the page, and fill-in exercises checked against it.

The algorithms the book teaches live in the package (one source of truth); a chapter shows
them as they are, not a copy that could drift::

    from u2ad_core.book.source import show_source, check_fill_in
    show_source(eu_guided_mask)                 # the whole function, highlighted
    show_source(mc_uncertainty, lines=(40, 52)) # only lines 40-52 of its source

- :func:`source_markdown`: the Markdown (a heading line naming the module and its line numbers,
  then a fenced ``python`` block) of an object's source, or of a range of its lines.
- :func:`show_source`: displays it (IPython ``Markdown``; the book renders it highlighted).
- :func:`check_fill_in`: runs the reader's version of a function and the package's on the same
  input and says, in one line, whether they agree (``torch.testing.assert_close``); a body still
  holding ``...`` prints "not filled in yet" instead of raising, so a shipped exercise never
  breaks the build.
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["source_markdown", "show_source", "check_fill_in", "NOT_FILLED", "MATCHES"]

NOT_FILLED = "not filled in yet"
MATCHES = "matches the package"


def _lines(obj: Any) -> tuple[list[str], int]:
    try:
        src, start = inspect.getsourcelines(obj)
    except (TypeError, OSError) as exc:
        raise TypeError(f"show_source: no Python source for {obj!r} ({exc})") from None
    return src, start


def source_markdown(obj: Any, lines: Sequence[int] | None = None) -> str:
    """Markdown showing the source of ``obj`` (a function, class, method or module).

    lines: ``None`` for the whole source, or ``(first, last)``: 1-based, inclusive line
    numbers *within the object's source* (line 1 is its ``def`` line). The lines are shown as
    written (only the common indentation of a method is removed); a partial view says which
    lines it shows. A heading line names the module and the file's line numbers, never a
    machine path. Raises ``TypeError`` for an object without Python source and ``ValueError``
    for a range outside it.
    """
    src, start = _lines(obj)
    n = len(src)
    if lines is not None:
        if len(lines) != 2:
            raise ValueError(f"show_source: lines must be (first, last), got {lines!r}")
        a, b = int(lines[0]), int(lines[1])
        if not 1 <= a <= b <= n:
            raise ValueError(f"show_source: lines {lines!r} outside 1..{n} (the source of "
                             f"{getattr(obj, '__qualname__', obj)!r} has {n} lines)")
        shown, first = src[a - 1:b], start + a - 1
    else:
        shown, first = src, start
    code = textwrap.dedent("".join(shown)).rstrip("\n")
    fence = "```"
    while fence in code:
        fence += "`"
    module = getattr(inspect.getmodule(obj), "__name__", "") or "?"
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", ""))
    first_last = f"line {first}" if len(shown) == 1 else f"lines {first}-{first + len(shown) - 1}"
    what = f"`{module}.{name}`" if name and name != module else f"`{module}`"
    part = "" if lines is None else f" (its lines {lines[0]}-{lines[1]} of {n})"
    head = f"{what}, {first_last} of `{module.replace('.', '/')}.py`{part}:"
    return f"{head}\n\n{fence}python\n{code}\n{fence}\n"


def show_source(obj: Any, lines: Sequence[int] | None = None) -> None:
    """Display :func:`source_markdown` of ``obj`` in the notebook (a highlighted python block)."""
    from IPython.display import Markdown, display  # here: the package does not need IPython

    display(Markdown(source_markdown(obj, lines)))


def _unfilled(value: Any) -> bool:
    if value is Ellipsis:
        return True
    if isinstance(value, (tuple, list)):
        return any(_unfilled(v) for v in value)
    return False


def check_fill_in(mine: Callable[..., Any], reference: Callable[..., Any], *args: Any,
                  name: str | None = None, rtol: float | None = None, atol: float | None = None,
                  **kwargs: Any) -> None:
    """Call ``mine(*args, **kwargs)`` and ``reference(*args, **kwargs)`` and compare them.

    Results may be tensors, arrays or tuples of them (compared element-wise with
    ``torch.testing.assert_close``, NaN equal to NaN; ``rtol``/``atol`` as there). Prints one
    line, :data:`MATCHES` when they agree, and returns nothing (a notebook cell shows only the
    line). Never raises for the reader's code: a result that is (or holds) ``...``, or a
    ``TypeError`` on ``...``, prints :data:`NOT_FILLED`; any other error of ``mine`` and any
    mismatch print what went wrong.
    """
    label = name or getattr(mine, "__name__", "your function")
    try:
        got = mine(*args, **kwargs)
    except TypeError as exc:
        if "ellipsis" in str(exc).lower():
            print(f"{label}: {NOT_FILLED} (replace the `...`)")
            return None
        print(f"{label} raised TypeError: {exc}")
        return None
    except Exception as exc:  # the reader's code: report, do not break the page
        print(f"{label} raised {type(exc).__name__}: {exc}")
        return None
    if _unfilled(got):
        print(f"{label}: {NOT_FILLED} (replace the `...`)")
        return None
    want = reference(*args, **kwargs)
    if (rtol is None) != (atol is None):  # assert_close takes both or neither
        rtol, atol = rtol or 0.0, atol or 0.0

    def as_t(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return tuple(as_t(x) for x in v)
        if isinstance(v, torch.Tensor):  # dtypes kept: float32 results get float32 tolerances
            return v.detach().cpu()
        return torch.as_tensor(np.asarray(v))

    try:
        torch.testing.assert_close(as_t(got), as_t(want), rtol=rtol, atol=atol, equal_nan=True,
                                   check_dtype=False)
    except (AssertionError, TypeError, ValueError, RuntimeError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), str(exc))
        print(f"{label}: not the same as the package's yet: {first}")
        return None
    print(f"{label} {MATCHES}.")
    return None
