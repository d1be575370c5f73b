"""Small results files: JSON rows that a notebook writes and a sweep gathers.

Every notebook that produces numbers worth comparing across runs writes them as a list of
flat rows (``dict`` of str -> number / str / bool / None)::

    from u2ad_core.book.results import write_results
    write_results(ctx.run_dir, [{"model": "U2AD", "patient_f1": 0.83}, ...], name="table3")

File layout (``<dir>/<name>.results.json``, written atomically)::

    {"format": "u2ad-results/1", "name": "table3", "n_rows": 2, "rows": [{...}, {...}]}

Under :func:`u2ad_core.book.sweep.run_sweep` the kernel of every grid point has the environment
variable ``U2AD_SWEEP_POINT_DIR`` set to that point's folder; :func:`write_results` then also
writes the same file to ``$U2AD_SWEEP_POINT_DIR/results/<name>.results.json``, which is where
the sweep gathers rows from. The notebook does not need to know whether it runs in a sweep.

Values are made JSON-safe: numpy scalars become Python numbers, NaN / inf become ``None``
(JSON has no NaN), ``Path`` and other objects become strings, nested lists/dicts are kept.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from u2ad_core.core.runtime import atomic_write_text

__all__ = ["FORMAT", "SUFFIX", "SWEEP_ENV", "results_path", "write_results", "read_results", "find_results",
           "read_keyed", "update_keyed"]

FORMAT = "u2ad-results/1"
SUFFIX = ".results.json"
SWEEP_ENV = "U2AD_SWEEP_POINT_DIR"
"""Environment variable a sweep sets for each point's kernel (the point's folder)."""


def _jsonable(v: Any) -> Any:
    """numpy / pandas / Path values -> plain JSON values (NaN and inf -> None)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        v = v.item()  # numpy / torch scalar
    elif hasattr(v, "tolist") and callable(v.tolist):
        return _jsonable(v.tolist())  # arrays
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    return str(v)


def results_path(target: str | os.PathLike, name: str = "results") -> Path:
    """Where :func:`write_results` writes: ``target`` itself when it ends with ``.json``,
    else ``target / f"{name}.results.json"``."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"results name must be a plain file stem (no '/', not hidden), got {name!r}")
    p = Path(target)
    return p if p.suffix == ".json" else p / f"{name}{SUFFIX}"


def write_results(target: str | os.PathLike, rows: Iterable[Mapping[str, Any]] | Mapping[str, Any],
                  name: str = "results") -> Path:
    """Write ``rows`` (one dict, or a list of dicts) as a results file; return its path.

    target: a run directory (the file is ``target/<name>.results.json``) or a ``.json`` path.
    Inside a sweep (``U2AD_SWEEP_POINT_DIR`` set) a copy also goes to the point's
    ``results/`` folder, where :func:`u2ad_core.book.sweep.run_sweep` gathers it.
    """
    if isinstance(rows, Mapping):
        rows = [rows]
    rows = list(rows)
    bad = [i for i, r in enumerate(rows) if not isinstance(r, Mapping)]
    if bad:
        raise TypeError(f"write_results: every row must be a dict; rows {bad[:5]} are not")
    path = results_path(target, name)
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    doc = {"format": FORMAT, "name": stem, "n_rows": len(rows),
           "rows": [{str(k): _jsonable(v) for k, v in r.items()} for r in rows]}
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    atomic_write_text(path, text)
    point = os.environ.get(SWEEP_ENV)
    if point:
        copy = Path(point) / "results" / f"{stem}{SUFFIX}"
        if copy.resolve() != path.resolve():
            atomic_write_text(copy, text)
    return path


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results file (a path written by :func:`write_results`)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"results file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"results file {p} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise ValueError(f"{p} is not a results file (expected format {FORMAT!r} with a 'rows' list)")
    return [dict(r) for r in doc["rows"]]


def find_results(folder: str | os.PathLike) -> dict[str, Path]:
    """Results files directly in ``folder``: ``{name: path}`` sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        return {}
    return {p.name[: -len(SUFFIX)]: p for p in sorted(d.glob(f"*{SUFFIX}"))}


def read_keyed(path: str | os.PathLike, what: str) -> dict[str, dict[str, Any]]:
    """A build-wide keyed JSON file (``{key: {...}}``, e.g. ``quantities.json``); ``{}`` when absent.

    what: the file's role, for the error when it does not parse ("quantities", "findings").
    """
    f = Path(path)
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not a valid {what} file ({exc}); delete it and rebuild the book") from exc


def update_keyed(path: str | os.PathLike, key: str, value: Mapping[str, Any], what: str) -> None:
    """Set ``key`` of a keyed JSON file to ``value`` (replacing it), written atomically."""
    table = read_keyed(path, what)
    table[key] = _jsonable(dict(value))
    atomic_write_text(path, json.dumps(table, indent=2, sort_keys=True) + "\n")
