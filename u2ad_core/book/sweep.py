"""Parameter sweeps: one papermill run of a notebook per grid point, scheduled by Dask.

Command line and Python API::

    u2ad sweep notebooks/08_ablations.ipynb -p masking.tau 0.1 1 10 -p masking.mask_ratio 0.5 0.75 \\
        --preset cpu --out sweeps/tau                      # LocalCluster, one worker per core
    u2ad sweep NB.ipynb -p x 1 2 --workers 2 --out DIR     # two local worker processes
    u2ad sweep NB.ipynb -p x 1 2 --scheduler tcp://host:8786 --out DIR   # an existing cluster

    from u2ad_core.book.sweep import run_sweep
    res = run_sweep("NB.ipynb", {"masking.tau": [0.1, 1, 10]}, preset="cpu", out="sweeps/tau")
    res.table     # one row per results row, the grid parameters as columns
    res.failed    # FailedPoint(point_id, params, notebook, executed, cell, error) per failure

Grid and parameters
-------------------
The grid is the cartesian product of the ``-p NAME V1 V2 ...`` lists (values are read as
YAML: ``1`` is an int, ``0.1`` a float, ``true`` a bool, anything else a string). Every point
executes the notebook with papermill, injecting ``preset``, ``device``, ``seed``,
``data_dir``, ``run_dir``, ``overrides`` and the point's values. The rule for a name:

* a **dotted** name (``masking.tau``, ``adapt.epochs``) is a preset field path: it goes into
  the ``overrides`` dict parameter (merged over ``--set`` overrides), which the notebook
  passes to :func:`u2ad_core.book.notebook.setup`; it is validated against the preset before any
  run starts;
* a **plain** name (``x``, ``seed``, ``mask_ratio``) is a notebook parameter and is injected
  directly; it must be declared in the notebook's ``parameters`` cell.

Outputs (``DIR = --out``)::

    DIR/runs/<point-id>/executed.ipynb    the executed copy (also when it failed)
    DIR/runs/<point-id>/results/*.results.json   rows the notebook wrote (results.write_results)
    DIR/runs/<point-id>/run/              the point's run_dir (unless --run-dir is given)
    DIR/runs/<point-id>/done.json         done marker: parameters hash, seconds, gathered rows
    DIR/runs/<point-id>/failed.json       the error of the last failed attempt
    DIR/results.csv  (+ results.parquet when pyarrow is installed)   the tidy table
    DIR/sweep.json                        the grid, timings and failures of the last call

``<point-id>`` is a readable slug of the point's values plus the first 8 hex digits of its
hash; the hash covers the notebook file name, preset, seed, ``--set`` overrides and the
point's values (not the device or paths). A point whose ``done.json`` carries the same hash is
skipped when the sweep is run again (``--force`` re-runs it); failed points are retried.
Each notebook writes its rows with :func:`u2ad_core.book.results.write_results` into
``ctx.run_dir`` as usual: under a sweep a copy lands in the point's ``results/`` folder
(environment variable ``U2AD_SWEEP_POINT_DIR``), so the notebook needs no sweep-specific code.

Execution
---------
Points are Dask tasks (:mod:`dask.distributed`); this module adds no queue of its own. By
default a :class:`~dask.distributed.LocalCluster` on 127.0.0.1 with one single-threaded worker
process per core (``--workers N`` to choose; never more workers than pending points). Each
task runs one papermill kernel with ``OMP_NUM_THREADS=1`` (and the MKL / OpenBLAS / NumExpr
equivalents, read by torch and numpy at start-up) so that N workers use N cores, and
``U2AD_HEADLESS=1`` (static widgets, text progress bars). A failing notebook is reported with
its executed copy and the failing cell (:class:`u2ad_core.book.build.NotebookFailed`); the other
points go on. ``--scheduler tcp://host:port`` (or, from Python, a ``Client`` or a cluster
object) sends the tasks to an existing cluster; its workers must run this environment and see
``DIR``, ``data_dir`` and the notebook at the same paths (a shared file system), and should
have one thread each (the thread-count variables are process-wide).

Slurm / PBS with dask-jobqueue (``pip install dask-jobqueue``; not a dependency)::

    from dask_jobqueue import SLURMCluster          # or PBSCluster
    from u2ad_core.book.sweep import run_sweep
    cluster = SLURMCluster(cores=1, processes=1, memory="16GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"],   # PBS: resource_spec=...
                           job_script_prologue=["source /path/to/U2AD/.venv/bin/activate"])
    cluster.scale(jobs=8)                            # 8 batch jobs = 8 workers
    res = run_sweep("notebooks/08_ablations.ipynb", {"masking.tau": [0.1, 0.2, 0.5, 1, 2, 5, 10]},
                    preset="paper", device="cuda", out="sweeps/tau", scheduler=cluster)

(``book/sweeps.md`` has the full recipe.) The grids that notebook 08 uses are the preset's
(``preset.grids.ablation``, :class:`u2ad_core.core.config.AblationGrid`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import yaml

from u2ad_core.book.build import NotebookFailed, execute_notebook
from u2ad_core.book.results import SWEEP_ENV, find_results, read_results
from u2ad_core.core.config import AblationGrid, config_hash
from u2ad_core.core.context import repo_root
from u2ad_core.core.presets import as_parameters, get_preset
from u2ad_core.core.runtime import atomic_write_json, atomic_write_text

__all__ = [
    "grid_point_overrides",
    "FailedPoint",
    "SweepPoint",
    "SweepResult",
    "STANDARD_PARAMETERS",
    "THREAD_ENV",
    "expand_grid",
    "plan_sweep",
    "run_point",
    "run_sweep",
    "gather",
    "parse_value",
    "cli_register",
]

STANDARD_PARAMETERS = ("preset", "device", "seed", "data_dir", "run_dir", "overrides")
"""Parameters every numbered notebook declares (CONTRIBUTING.md); always injected."""

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}
"""Set for every point's kernel: one compute thread per worker (torch reads OMP_NUM_THREADS)."""


# --------------------------------------------------------------------------------------
# Ablation grid points of notebook 08 (the grid itself: ``preset.grids.ablation``)
# --------------------------------------------------------------------------------------
def grid_point_overrides(preset: Any, grid: AblationGrid) -> dict[str, Any]:
    """The preset overrides every tau / mask-ratio grid point of chapter 08 adapts with (the
    grid's shortened schedule, when it has one); a point adds its own value on top, e.g.
    ``preset.override(**grid_point_overrides(preset, grid), **{"masking.tau": 0.1})``. Chapter 13
    calls it again to find the same runs in the run store."""
    ov: dict[str, Any] = {}
    if grid.grid_adapt_epochs is not None:
        ov["adapt.epochs"] = grid.grid_adapt_epochs
        ov["adapt.final_eval"] = False  # the grid scores the middle slices itself
    if grid.grid_stage2_start is not None:
        ov["adapt.stage2_start"] = grid.grid_stage2_start
    return ov


# --------------------------------------------------------------------------------------
# Grid points
# --------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A command-line value read as YAML (``1`` int, ``0.1`` float, ``true`` bool, else str)."""

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the value lists, in the grid's key order (last key fastest).

    >>> expand_grid({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    if not grid:
        raise ValueError("sweep grid is empty: give at least one parameter with values")
    names = list(grid)
    values = []
    for n in names:
        if not isinstance(n, str) or not n:
            raise ValueError(f"sweep grid: parameter names must be non-empty strings, got {n!r}")
        v = grid[n]
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            v = [v]
        if len(v) == 0:
            raise ValueError(f"sweep grid: parameter {n!r} has no values")
        values.append(list(v))
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def split_parameters(point: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(plain notebook parameters, dotted preset overrides)`` of a grid point."""
    plain = {k: v for k, v in point.items() if "." not in k}
    dotted = {k: v for k, v in point.items() if "." in k}
    if "overrides" in plain:
        raise ValueError("sweep grid: 'overrides' cannot be swept; use dotted preset paths "
                         "such as masking.tau as parameter names instead")
    return plain, dotted


def _slug(point: Mapping[str, Any], limit: int = 48) -> str:
    parts = []
    for k, v in point.items():
        name = k.split(".")[-1]
        parts.append(f"{name}={v}")
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "_", ",".join(parts)).strip("_")
    return (s[:limit].rstrip("_.,") or "point")


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: ``params`` (grid values), ``key`` (hash), ``point_id`` (folder name)."""

    params: dict[str, Any]
    key: str
    point_id: str
    injected: dict[str, Any]


def plan_sweep(notebook: str | os.PathLike, grid: Mapping[str, Sequence[Any]], preset: str = "cpu",
               seed: int = 0, overrides: Mapping[str, Any] | None = None, device: str = "cpu",
               data_dir: str | os.PathLike = "data", run_dir: str | os.PathLike | None = None,
               out: str | os.PathLike = "sweep") -> list[SweepPoint]:
    """Validate the grid against the notebook and the preset; one :class:`SweepPoint` each.

    Raises ``FileNotFoundError`` (notebook), ``ValueError`` (undeclared plain parameter,
    empty grid), ``KeyError`` / ``TypeError`` (a dotted name that is not a preset field, or a
    value of the wrong type), before anything runs.
    """
    import papermill as pm  # here: ~1.7 s to import, for every u2ad command (the CLI imports this module)

    nb = Path(notebook)
    if not nb.is_file() or nb.suffix != ".ipynb":
        raise FileNotFoundError(f"sweep: notebook not found or not an .ipynb file: {nb}")
    points = expand_grid(grid)
    declared = set(pm.inspect_notebook(str(nb)))
    if not declared:
        raise ValueError(f"sweep: {nb} has no cell tagged 'parameters'; papermill cannot inject values")
    plain_names = [k for k in points[0] if "." not in k]
    unknown = [k for k in plain_names if k not in declared]
    if unknown:
        raise ValueError(
            f"sweep: {unknown} are not parameters of {nb} (declared: {sorted(declared)}); a preset "
            "field must be given by its dotted path, e.g. masking.tau or adapt.epochs"
        )
    base = as_parameters(overrides)
    out = Path(out)
    result = []
    ids: set[str] = set()
    for p in points:
        plain, dotted = split_parameters(p)
        merged = {**base, **dotted}
        try:
            get_preset(plain.get("preset", preset), **merged)
        except (KeyError, TypeError, ValueError) as exc:
            raise type(exc)(f"sweep: point {p} gives an invalid preset override: {exc}") from None
        key = config_hash({"notebook": nb.name, "preset": preset, "seed": int(seed),
                           "overrides": base, "point": p}, n=16)
        pid = f"{_slug(p)}-{key[:8]}"
        if pid in ids:  # pragma: no cover - identical points in a grid
            raise ValueError(f"sweep: the grid repeats the point {p}")
        ids.add(pid)
        point_dir = out / "runs" / pid
        injected = {
            "preset": preset, "device": device, "seed": int(seed), "data_dir": str(data_dir),
            "run_dir": str(run_dir) if run_dir is not None else str(point_dir / "run"),
            **plain, "overrides": as_parameters(merged),
        }
        result.append(SweepPoint(params=dict(p), key=key, point_id=pid, injected=injected))
    return result


# --------------------------------------------------------------------------------------
# One point (runs on a Dask worker)
# --------------------------------------------------------------------------------------
_ENV_LOCK = threading.Lock()


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the kernel this thread starts; restore them after."""
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in env}
        os.environ.update({k: str(v) for k, v in env.items()})
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


KERNEL_START_ERRORS = ("Kernel died before replying to kernel_info", "Address already in use",
                       "Kernel didn't respond in")
"""Messages of a kernel that never started (seen: two Dask workers starting kernels at once, one
binding a ZMQ port the other had just picked). :func:`run_point` retries such a point once."""


def _kernel_start_failed(exc: BaseException) -> bool:
    """True when ``exc`` says the kernel died or hung while starting, before any cell ran."""
    text = f"{type(exc).__name__}: {exc}"
    return any(m in text for m in KERNEL_START_ERRORS)


def run_point(task: Mapping[str, Any], start_attempts: int = 2) -> dict[str, Any]:
    """Execute one grid point (a Dask task); never raises for a failing notebook.

    task: ``notebook`` (source path), ``point_dir``, ``parameters`` (injected), ``cwd``,
    ``env`` (extra environment), ``point_id``. Returns a dict with ``status`` ``"ok"`` or
    ``"failed"``, ``seconds``, ``attempts``, ``results`` ({name: rows}) or ``error`` / ``cell`` /
    ``executed``, and ``worker`` (host:pid). A kernel that dies while starting
    (:data:`KERNEL_START_ERRORS`) is started again, up to ``start_attempts`` times in all; a
    notebook that raises in a cell is never rerun.
    """

    point_dir = Path(task["point_dir"])
    point_dir.mkdir(parents=True, exist_ok=True)
    executed = point_dir / "executed.ipynb"
    env = {**THREAD_ENV, "U2AD_HEADLESS": "1", SWEEP_ENV: str(point_dir), **(task.get("env") or {})}
    out: dict[str, Any] = {"point_id": task["point_id"], "executed": str(executed),
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    t0 = time.perf_counter()
    for attempt in range(1, max(1, int(start_attempts)) + 1):
        shutil.rmtree(point_dir / "results", ignore_errors=True)  # stale rows of a failed attempt
        (point_dir / "failed.json").unlink(missing_ok=True)
        out["attempts"] = attempt
        try:
            with _environment(env):
                execute_notebook(Path(task["notebook"]), executed, dict(task["parameters"]), cwd=Path(task["cwd"]))
        except NotebookFailed as exc:
            out.update(status="failed", error=str(exc), cell=exc.cell_number,
                       ename=exc.ename, evalue=str(exc.evalue))
        except Exception as exc:  # kernel died, papermill could not start, ...
            out.update(status="failed", error=f"{type(exc).__name__}: {exc} (notebook {task['notebook']})",
                       cell=None, ename=type(exc).__name__, evalue=str(exc))
            if _kernel_start_failed(exc) and attempt < start_attempts:
                print(f"sweep: point {task['point_id']}: the kernel did not start ({type(exc).__name__}: "
                      f"{str(exc)[:120]}); starting it again", file=sys.stderr, flush=True)
                continue
        else:
            for k in ("error", "cell", "ename", "evalue"):
                out.pop(k, None)
            found = find_results(point_dir / "results")
            out.update(status="ok", results={name: read_results(p) for name, p in found.items()})
            if not found:
                out["warning"] = (f"{task['notebook']} wrote no results file (call "
                                  "u2ad_core.book.results.write_results); the point adds no row")
        break
    out["seconds"] = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------
@dataclass
class FailedPoint:
    """A point whose notebook raised: where (executed copy, 1-based source cell) and what."""

    point_id: str
    params: dict[str, Any]
    notebook: str
    executed: str
    cell: int | None
    error: str

    def __str__(self) -> str:
        return f"{self.point_id} {self.params}: {self.error}"


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    table: the tidy table (one row per results row; ``point_id``, the grid parameters, the
    results name when a point writes several files, then the row's columns); failed: the
    points that raised; ran / skipped: point ids executed now / reused from done markers.
    """

    table: Any
    failed: list[FailedPoint] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    out: Path | None = None
    seconds: float = 0.0
    csv: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


@contextmanager
def _stderr_of_children_to_devnull() -> Iterator[None]:
    """Processes started inside this block write their stderr to /dev/null.

    The workers of a LocalCluster, and the kernels they start for each point, inherit the file
    descriptor 2 of the process that starts them; inside a notebook kernel that descriptor is
    captured onto the page, where a point kernel's shutdown message ("KeyboardInterrupt caught in
    kernel") would be printed. A failing point still reports through its future (``failed``).
    """
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def _client(workers: int | None, scheduler: Any, n_tasks: int) -> Iterator[Any]:
    """A Dask client: a new LocalCluster (closed after) or one attached to ``scheduler``."""

    from dask.distributed import Client, LocalCluster  # here: ~0.6 s to import, only a sweep needs it

    scheduler = scheduler if scheduler is not None else (os.environ.get(SCHEDULER_ENV) or None)
    if scheduler is None:
        n = int(workers) if workers else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"sweep: workers must be >= 1, got {workers}")
        n = max(1, min(n, n_tasks))
        with _stderr_of_children_to_devnull():
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    elif isinstance(scheduler, Client):
        yield scheduler
    else:  # an address "tcp://host:port" or a cluster object (LocalCluster, SLURMCluster, ...)
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()


def _read_done(point_dir: Path) -> dict[str, Any] | None:
    f = point_dir / "done.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _resolve_project_path(p: str | os.PathLike) -> Path:

    p = Path(p).expanduser()
    return p if p.is_absolute() else (repo_root() / p).resolve()


def gather(points: Sequence[SweepPoint], out: str | os.PathLike):
    """Tidy table of the done points among ``points`` (from their ``done.json``).

    Columns: ``point_id``, the grid parameters, ``results`` (only when some point wrote
    several results files), ``point_seconds``, then the rows' own columns. A row column with
    the same name as a grid parameter is dropped (the parameter wins).
    """

    out = Path(out)
    records: list[dict[str, Any]] = []
    names_seen: set[str] = set()
    for pt in points:
        done = _read_done(out / "runs" / pt.point_id)
        if not done or done.get("key") != pt.key:
            continue
        for name, rows in (done.get("results") or {}).items():
            names_seen.add(name)
            for row in rows:
                rec = {"point_id": pt.point_id, **pt.params, "results": name,
                       "point_seconds": done.get("seconds")}
                rec.update({k: v for k, v in row.items() if k not in pt.params and k not in rec})
                records.append(rec)
    table = pd.DataFrame.from_records(records)
    if len(names_seen) <= 1 and "results" in table.columns:
        table = table.drop(columns="results")
    return table


SCHEDULER_ENV = "U2AD_SCHEDULER"
"""Environment variable naming a Dask scheduler (``tcp://host:port``) for every sweep that is not
given one: ``u2ad book --scheduler`` sets it, so the sweeps the notebooks run go to that cluster."""


def run_sweep(
    notebook: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]],
    preset: str = "cpu",
    out: str | os.PathLike = "sweep",
    workers: int | None = None,
    scheduler: Any = None,
    device: str = "cpu",
    seed: int = 0,
    data_dir: str | os.PathLike = "data",
    run_dir: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    verbose: bool = True,
) -> SweepResult:
    """Execute ``notebook`` once per grid point on Dask and gather the results (module doc).

    notebook: a papermill-parametrised ``.ipynb``; grid: ``{name: [values]}`` (dotted names
    are preset fields -> ``overrides``; plain names are notebook parameters); preset, device,
    seed, data_dir, run_dir: the standard parameters (relative data_dir / run_dir are taken
    from the project root, like ``u2ad book``; ``run_dir=None`` gives each point its own
    ``out/runs/<id>/run``); overrides: preset overrides for every point; workers: LocalCluster
    size (default: the number of cores); scheduler: an address, ``Client`` or cluster object
    instead of a LocalCluster; force: re-run done points; env: extra kernel environment.
    Returns a :class:`SweepResult` (failed points do not raise).
    """
    t_all = time.perf_counter()
    nb = Path(notebook).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    data_dir_p = _resolve_project_path(data_dir)
    run_dir_p = _resolve_project_path(run_dir) if run_dir is not None else None
    points = plan_sweep(nb, grid, preset=preset, seed=seed, overrides=overrides, device=device,
                        data_dir=data_dir_p, run_dir=run_dir_p, out=out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: print(*a, flush=True)) if verbose else (lambda *a: None)

    pending, skipped = [], []
    for pt in points:
        done = _read_done(out / "runs" / pt.point_id)
        if done and done.get("key") == pt.key and not force:
            skipped.append(pt.point_id)
        else:
            pending.append(pt)
    say(f"u2ad sweep: {nb.name}, {len(points)} point(s): {len(pending)} to run, "
        f"{len(skipped)} already done -> {out}")

    failed: list[FailedPoint] = []
    ran: list[str] = []
    n_workers = None
    if pending:
        from dask.distributed import as_completed  # here: see _client

        by_id = {pt.point_id: pt for pt in pending}
        with _client(workers, scheduler, len(pending)) as client:
            n_workers = len(client.scheduler_info().get("workers", {}))
            say(f"u2ad sweep: Dask scheduler {client.scheduler.address}, {n_workers} worker(s)")
            futures, key_to_id = [], {}
            for pt in pending:
                pdir = out / "runs" / pt.point_id
                (pdir / "done.json").unlink(missing_ok=True)
                atomic_write_json(pdir / "params.json", {"key": pt.key, "point": pt.params,
                                                         "parameters": pt.injected, "notebook": str(nb)})
                task = {"notebook": str(nb), "point_dir": str(pdir), "parameters": pt.injected,
                        "cwd": str(nb.parent), "env": dict(env or {}), "point_id": pt.point_id}
                fut = client.submit(run_point, task, key=f"u2ad-sweep-{pt.point_id}-{time.time_ns()}", pure=False)
                key_to_id[fut.key] = pt.point_id
                futures.append(fut)
            for i, fut in enumerate(as_completed(futures), 1):
                try:
                    res = fut.result()
                except Exception as exc:  # the worker itself was lost
                    pid = key_to_id[fut.key]
                    res = {"point_id": pid, "status": "failed", "cell": None, "seconds": float("nan"),
                           "executed": str(out / "runs" / pid / "executed.ipynb"),
                           "error": f"Dask task failed: {type(exc).__name__}: {exc}"}
                pt = by_id[res["point_id"]]
                pdir = out / "runs" / pt.point_id
                if res["status"] == "ok":
                    done = {"key": pt.key, "point": pt.params, "seconds": res["seconds"],
                            "worker": res.get("worker"), "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "results": res.get("results", {})}  # rows keep their column order
                    atomic_write_text(pdir / "done.json", json.dumps(done, indent=1, default=str) + "\n")
                    ran.append(pt.point_id)
                    say(f"  [{i}/{len(pending)}] ok     {pt.point_id} ({res['seconds']:.1f} s)"
                        + (f"  warning: {res['warning']}" if res.get("warning") else ""))
                else:
                    fp = FailedPoint(pt.point_id, pt.params, str(nb), res.get("executed", ""),
                                     res.get("cell"), res.get("error", "unknown error"))
                    atomic_write_json(pdir / "failed.json", asdict(fp))
                    failed.append(fp)
                    say(f"  [{i}/{len(pending)}] FAILED {pt.point_id}: {fp.error}")

    table = gather(points, out)
    csv = out / "results.csv"
    table.to_csv(csv, index=False)
    try:
        import pyarrow  # noqa: F401  (optional: a Parquet copy only where it is installed)
    except ImportError:
        pass
    else:  # pragma: no cover - pyarrow is optional
        table.to_parquet(out / "results.parquet", index=False)
    seconds = time.perf_counter() - t_all
    atomic_write_json(out / "sweep.json", {
        "notebook": str(nb), "grid": {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else [v]
                                      for k, v in grid.items()},
        "preset": preset, "device": device, "seed": seed, "overrides": dict(overrides or {}),
        "points": [pt.point_id for pt in points], "ran": ran, "skipped": skipped,
        "failed": [asdict(f) for f in failed], "workers": n_workers, "seconds": seconds,
        "rows": int(len(table)),
    })
    say(f"u2ad sweep: {len(ran)} ran, {len(skipped)} skipped, {len(failed)} failed, "
        f"{len(table)} row(s) -> {csv} ({seconds:.1f} s)")
    return SweepResult(table=table, failed=failed, ran=ran, skipped=skipped, out=out, seconds=seconds, csv=csv)


# --------------------------------------------------------------------------------------
# Command line: u2ad sweep
# --------------------------------------------------------------------------------------
def _cmd_sweep(args: argparse.Namespace) -> int:
    grid: dict[str, list[Any]] = {}
    for item in args.param or []:
        if len(item) < 2:
            print(f"u2ad sweep: -p expects NAME VALUE [VALUE ...], got {item!r}", file=sys.stderr)
            return 2
        grid[item[0]] = [parse_value(v) for v in item[1:]]
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"u2ad sweep: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = parse_value(value)
    try:
        res = run_sweep(args.notebook, grid, preset=args.preset, out=args.out, workers=args.workers,
                        scheduler=args.scheduler, device=args.device, seed=args.seed,
                        data_dir=args.data_dir, run_dir=args.run_dir, overrides=overrides, force=args.force)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        print(f"u2ad sweep: {exc}", file=sys.stderr)
        return 2
    if len(res.table):
        with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
            print(res.table.head(20).to_string(index=False))
    for f in res.failed:
        print(f"u2ad sweep: FAILED {f}", file=sys.stderr)
    return 0 if res.ok else 1


def cli_register(sub: argparse._SubParsersAction) -> None:
    """Register ``u2ad sweep``."""
    p = sub.add_parser("sweep", help="run a notebook over a parameter grid (papermill + Dask)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebook", help="the .ipynb to execute (it must have a 'parameters' cell)")
    p.add_argument("-p", "--param", nargs="+", action="append", metavar=("NAME", "VALUE"),
                   help="a grid axis: NAME V1 V2 ... (repeatable; dotted NAME = preset field -> overrides)")
    p.add_argument("--preset", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--out", required=True, help="sweep folder (runs/, results.csv, sweep.json)")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster worker processes (default: number of cores)")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--device", default="cpu", help="device parameter passed to the notebook (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="data", help="data_dir parameter (relative = project root)")
    p.add_argument("--run-dir", default=None,
                   help="run_dir parameter shared by all points (default: one per point under --out)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="preset override for every point, e.g. --set adapt.epochs=5 (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run points that are already done")
    p.set_defaults(func=_cmd_sweep)
