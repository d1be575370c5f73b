"""Build the book: generate the data, execute the notebooks with papermill, run Jupyter Book.

``u2ad book --preset cpu --device auto`` (what ``make book`` calls) does, in order:

1. ``datasets.prepare_all`` for the preset: phantom cohorts and preprocessed dataset files
   under ``data/<preset>/`` (cached: a second build reuses them);
2. every numbered notebook ``notebooks/NN_*.ipynb``, in order, executed by papermill into the
   build area ``_build/executed/<preset>/`` (sources are never written), with the parameters
   ``preset``, ``device``, ``seed``, ``data_dir``, ``run_dir``; each executed copy gets a run
   header (preset, seed, device, package versions, elapsed time) as a markdown cell and in
   its metadata under ``u2ad``;
3. the executed copies are staged into ``book/notebooks/`` (what ``_toc.yml`` lists, without
   papermill's injected-parameters cell, so that a downloaded notebook runs with the defaults
   its parameters cell shows), ``book/generated/run_times.md`` gets the table of run times, and
   ``jupyter-book build -W`` (warnings are errors) writes ``<path-output>/_build/html``.

Exercise solutions cannot rot: with solutions on (the default for the ``smoke`` preset, which
``make test`` builds; ``--solutions`` / ``--no-solutions``) the code of every solution is executed
after its notebook and its output shown in its dropdown (:mod:`u2ad_core.book.solutions`).

Rebuilds are cheap: a notebook is not executed again when its executed copy carries the same
*build key* (:func:`build_key`: the notebook's source, the code cells of the notebooks before
it, the preset hash, the parameters, the package's code and the tracked package versions);
``--force`` executes every notebook. A prose-only edit re-executes that notebook alone; a code
edit re-executes it and every later notebook (they may read its results).

The first failing notebook stops the build with a non-zero exit that names the notebook
and the failing cell; its partly executed copy is kept in the build area for inspection.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from u2ad_core.book.reading import SECONDS_PER_FIGURE, WORDS_PER_MINUTE, reading_stats
from u2ad_core.core.context import package_digest as _package_digest
from u2ad_core.core.context import repo_root
from u2ad_core.book.solutions import SOLUTION_TAG, with_solution_outputs, with_solutions
from u2ad_core.core.presets import as_parameters, get_preset, publish_overrides
from u2ad_core.core.runtime import atomic_path, package_versions, resolve_device
from u2ad_core.data.datasets import prepare_all

__all__ = ["NotebookFailed", "BookResult", "find_notebooks", "execute_notebook", "build_book", "build_key",
           "write_run_times",
           "repository", "launch_links", "set_repository",
           "COLAB_CELL", "cli_register"]

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
STAGE_DIR = Path("book") / "notebooks"
RUN_TIMES = Path("book") / "generated" / "run_times.md"  # included by book/course_plan.md
# ipykernel >= 7 warns on every start that local TCP is unencrypted; keep its errors only
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class NotebookFailed(RuntimeError):
    """A notebook raised; carries the notebook path and the failing cell (1-based, as in the source)."""

    def __init__(self, notebook: Path, cell_number: int | None, exec_count: int | None,
                 ename: str, evalue: str, output: Path | None, first_line: list[str] | None = None):
        self.notebook, self.cell_number, self.exec_count = notebook, cell_number, exec_count
        self.ename, self.evalue, self.output = ename, evalue, output
        where = f"cell {cell_number}" if cell_number is not None else "an unknown cell"
        details = []
        if first_line:
            details.append(f"starting {first_line[0][:60]!r}")
        if exec_count is not None:
            details.append(f"execution count {exec_count}")
        if details:
            where += " (" + ", ".join(details) + ")"
        msg = f"notebook {notebook} failed at {where}: {ename}: {evalue}"
        if output is not None:
            msg += f"\n  partly executed copy: {output}"
        super().__init__(msg)


@dataclass
class BookResult:
    executed: list[Path] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # notebook stems whose executed copy was current
    seconds: dict[str, float] = field(default_factory=dict)
    html_index: Path | None = None


def find_notebooks(root: Path, selection: Sequence[str] | None = None) -> list[Path]:
    """Numbered notebooks in ``root/notebooks`` in order, or the selected ones.

    ``selection`` items may be paths to notebooks or number prefixes (``"03"``).
    """
    nb_dir = root / "notebooks"
    all_nbs = sorted(nb_dir.glob(NOTEBOOK_PATTERN))
    if not selection:
        return all_nbs
    chosen: list[Path] = []
    for item in selection:
        p = Path(item)
        if p.suffix == ".ipynb":
            p = p if p.is_absolute() else (Path.cwd() / p)
            if not p.is_file():
                raise FileNotFoundError(f"notebook not found: {p}")
            chosen.append(p.resolve())
            continue
        matches = [nb for nb in all_nbs if nb.name.startswith(f"{item}_") or nb.stem == item]
        if not matches:
            raise FileNotFoundError(f"no notebook in {nb_dir} matches {item!r}")
        chosen.extend(matches)
    return chosen


def _code_cells(nb_path: Path) -> list[str]:
    """The sources of a notebook's code cells (what can change what later notebooks read)."""
    cells = json.loads(Path(nb_path).read_text(encoding="utf-8")).get("cells", [])
    return ["".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]


def build_key(src: Path, earlier: Sequence[Path], preset_hash: str, params: dict[str, Any],
              package_digest: str | None = None, versions: dict[str, str] | None = None) -> str:
    """The key under which an executed copy of ``src`` is current (16 hex digits).

    Covers the whole source notebook (prose, code, tags), the code cells of the notebooks
    executed before it (``earlier``: they write runs and results files it may read), the preset
    hash, the injected parameters, the package's source and the tracked package versions.
    """
    payload = {
        "source": Path(src).read_bytes().decode("utf-8", "replace"),
        "earlier": [[Path(e).name, _code_cells(e)] for e in earlier],
        "preset_hash": preset_hash, "params": params,
        "package": package_digest or _package_digest(), "versions": versions or package_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _current_copy(out: Path, key: str) -> dict[str, Any] | None:
    """The ``u2ad`` metadata of ``out`` when it is a complete executed copy built under ``key``."""
    if not out.is_file():
        return None
    try:
        meta = json.loads(out.read_text(encoding="utf-8")).get("metadata", {}).get("u2ad", {})
    except (OSError, ValueError):
        return None
    return meta if meta.get("build_key") == key else None


def write_run_times(root: Path, executed: Sequence[Path]) -> Path:
    """``book/generated/run_times.md``: one row per executed copy (its title, preset, device and
    the seconds its own run took, from the run header), written atomically."""
    import nbformat  # here: ~0.9 s to import, and every u2ad command imports this module

    rows = []
    for nb_path in executed:
        nb = nbformat.read(nb_path, as_version=4)
        meta = nb.metadata.get("u2ad", {})
        title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells
                      if c.cell_type == "markdown" and c.source.startswith("#")), nb_path.stem)
        read = meta.get("reading") or {}
        rows.append((nb_path.stem, title, meta.get("preset", "?"), meta.get("device", "?"),
                     float(meta.get("elapsed_s", float("nan"))), meta.get("executed_at", "?"),
                     read.get("minutes"), read.get("words")))
    total = sum(r[4] for r in rows)
    total_read = sum(r[6] or 0 for r in rows)
    lines = ["| chapter | reading time | words | preset | device | run time | executed |",
             "|---|---|---|---|---|---|---|"]
    for stem, title, preset, device, secs, when, read_min, words in rows:
        mins = f"{secs:.0f} s" if secs < 90 else f"{secs / 60:.1f} min"
        rt = f"{read_min} min" if read_min else "?"
        lines.append(f"| [{title}](../notebooks/{stem}.ipynb) | {rt} | {words or '?'} | {preset} | {device} | "
                     f"{mins} | {when} |")
    lines.append(f"| **all chapters** | **{total_read} min** | | | | **{total / 60:.1f} min** | |")
    text = ("Reading and run times of the build that made this page. Reading time: estimated from the "
            f"words a reader meets on the page (prose and visible output, not code) at {WORDS_PER_MINUTE} words "
            f"per minute, plus {SECONDS_PER_FIGURE} s per figure. Run time: each chapter executed once by "
            "`u2ad book`, on the device shown; the data generation and the HTML build come on top.\n\n"
            + "\n".join(lines) + "\n")
    out = root / RUN_TIMES
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".md") as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return out


def _run_header(preset: str, seed: int, device: str, seconds: float, preset_hash: str) -> tuple[str, dict[str, Any]]:
    versions = package_versions()
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {
        "preset": preset, "preset_hash": preset_hash, "seed": seed, "device": device,
        "elapsed_s": round(seconds, 1), "executed_at": when, "versions": versions,
    }
    vers = ", ".join(f"{k} {v}" for k, v in versions.items() if v != "not installed")
    text = (
        "```{admonition} Run header\n"
        ":class: note\n"
        f"Executed by `u2ad book` with preset **{preset}** (hash `{preset_hash}`), seed **{seed}**, "
        f"device **{device}**, in **{seconds:.1f} s** on {when}. "
        "Every number and figure on this page comes from this run, on the synthetic phantom "
        "unless the page says otherwise.\n\n"
        f"Versions: {vers}.\n\n"
        "```"
    )
    return text, meta


def _add_header(nb_path: Path, text: str, meta: dict[str, Any]) -> None:
    import nbformat  # here: ~0.9 s to import, and every u2ad command imports this module

    nb = nbformat.read(nb_path, as_version=4)
    r = reading_stats(nb)
    meta = {**meta, "reading": {"words": r.words, "figures": r.figures, "minutes": r.minutes}}
    text = text.rstrip().removesuffix("```") + (
        f"Reading time: about **{r.minutes} min** ({r.words} words, {r.figures} figures; estimated at "
        f"{WORDS_PER_MINUTE} words per minute and {SECONDS_PER_FIGURE} s per figure).\n```")
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = ["u2ad-run-header"]
    # after the title cell, so the page title stays the notebook's own
    pos = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(pos, cell)
    nb.metadata["u2ad"] = meta
    with atomic_path(nb_path, suffix=".ipynb") as tmp:
        nbformat.write(nb, str(tmp))


def execute_notebook(src: Path, out: Path, parameters: dict[str, Any], cwd: Path,
                     kernel_name: str = "python3") -> float:
    """Execute ``src`` with papermill into ``out``; return elapsed seconds.

    Raises :class:`NotebookFailed` naming the notebook and the failing cell.
    """
    import papermill as pm  # here, not at the top: ~1.7 s to import, for every u2ad command
    from papermill.exceptions import PapermillExecutionError  # here: see above

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src), str(out), parameters=parameters, cwd=str(cwd), kernel_name=kernel_name,
            progress_bar=False, log_output=False, request_save_on_cell_execute=False,
            extra_arguments=KERNEL_ARGS,
        )
    except PapermillExecutionError as exc:
        raise NotebookFailed(src, _source_cell_number(out, exc.cell_index), exc.exec_count,
                             exc.ename, exc.evalue, out if out.exists() else None,
                             first_line=(exc.source or "").strip().splitlines()[0:1]) from None
    return time.perf_counter() - t0


def _source_cell_number(executed: Path, cell_index: int | None) -> int | None:
    """1-based position of the failing cell in the *source* notebook.

    papermill inserts an ``injected-parameters`` cell into the executed copy; cells after it
    sit one place later than in the source.
    """
    if cell_index is None:
        return None
    try:
        import nbformat  # here: ~0.9 s to import (see execute_notebook)

        cells = nbformat.read(executed, as_version=4).cells[: cell_index + 1]
        injected = sum("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells)
    except Exception:  # pragma: no cover - best effort only
        injected = 0
    return cell_index - injected + 1


def _stage(executed: Sequence[Path], root: Path) -> None:
    """Copy executed notebooks to ``book/notebooks`` (what ``_toc.yml`` lists)."""
    stage = root / STAGE_DIR
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    import nbformat  # here: ~0.9 s to import, and every u2ad command imports this module

    url, branch = repository(root) if (root / "_config.yml").is_file() else ("", "main")

    for nb in executed:
        # the injected-parameters cell holds the builder's absolute paths and would override the
        # parameters cell of a downloaded copy: readers get neither; the solution checks are
        # shown on the page as the exercises' dropdowns already
        book_nb = nbformat.read(nb, as_version=4)
        with_solution_outputs(book_nb)  # what each executed solution printed, in its dropdown
        book_nb.cells = [c for c in book_nb.cells if not {"injected-parameters", SOLUTION_TAG}
                         & set(c.get("metadata", {}).get("tags", []))]
        links = launch_links(url, branch, nb.name)
        if links is not None:  # under the run header (or the title)
            at = next((i + 1 for i, c in enumerate(book_nb.cells)
                       if "u2ad-run-header" in c.get("metadata", {}).get("tags", [])), 1)
            cell = nbformat.v4.new_markdown_cell(links)
            cell.metadata["tags"] = ["u2ad-launch"]
            book_nb.cells.insert(at, cell)
        nbformat.write(book_nb, stage / nb.name)


# --------------------------------------------------------------------------------------
# Running a chapter elsewhere: Binder and Colab, from one setting (_config.yml repository.url)
# --------------------------------------------------------------------------------------
COLAB_MARK = "# Google Colab only"
COLAB_CELL = f"""{COLAB_MARK}: install this project first (elsewhere this cell does nothing). REPOSITORY
# is written by `u2ad book --set-repository URL`, together with repository.url in _config.yml.
import os
import subprocess
import sys

REPOSITORY, BRANCH = "", "main"
if "google.colab" in sys.modules:
    if not REPOSITORY:
        raise RuntimeError("this notebook does not know its repository: clone it and run `make lab` instead")
    if not os.path.isdir("/content/u2ad"):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", BRANCH, REPOSITORY, "/content/u2ad"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/u2ad"], check=True)
    sys.path.insert(0, "/content/u2ad")  # the running kernel does not see a fresh editable install
    os.chdir("/content/u2ad/notebooks")"""
"""The first code cell of every numbered notebook (tagged ``remove-cell``)."""
_REPO_LINE = re.compile(r'^REPOSITORY, BRANCH = "[^"]*", "[^"]*"$', re.M)
_GITHUB = re.compile(r"https://github\.com/([\w.-]+)/([\w.-]+)")


def repository(root: Path) -> tuple[str, str]:
    """``(url, branch)`` of ``repository`` in ``root/_config.yml`` (url "" when unset)."""

    cfg = yaml.safe_load((Path(root) / "_config.yml").read_text(encoding="utf-8")) or {}
    repo = cfg.get("repository") or {}
    url = str(repo.get("url") or "").strip().rstrip("/")
    return (url[:-4] if url.endswith(".git") else url), str(repo.get("branch") or "main")


def launch_links(url: str, branch: str, notebook: str) -> str | None:
    """A "Run this chapter yourself" admonition for ``notebooks/<notebook>`` of a GitHub
    repository (Binder from ``environment.yml``, Colab with the install cell); None otherwise."""
    m = _GITHUB.fullmatch(url or "")
    if m is None:
        return None
    owner, repo = m.groups()
    binder = f"https://mybinder.org/v2/gh/{owner}/{repo}/{branch}?urlpath=lab/tree/notebooks/{notebook}"
    colab = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{branch}/notebooks/{notebook}"
    return ("```{admonition} Run this chapter yourself\n:class: seealso\n"
            f"[Open in Binder]({binder}) (the environment is built from `environment.yml`; the first start "
            f"takes minutes) · [Open in Colab]({colab}) (its first cell installs the project) · or download "
            "this page as a notebook (the download button at the top) and run it in a clone of the repository "
            "(`make lab`).\n```")


def set_repository(root: Path, url: str, branch: str | None = None) -> list[Path]:
    """Write ``url`` (and ``branch``) into ``_config.yml`` and every numbered notebook's Colab
    cell; return the files changed. ``url`` must be empty or an ``https://`` URL."""
    import nbformat  # here: ~0.9 s to import, and every u2ad command imports this module

    root = Path(root)
    url = url.strip().rstrip("/")
    if url and not url.startswith("https://"):
        raise ValueError(f"repository URL must start with https:// (got {url!r})")
    if '"' in url:
        raise ValueError(f"repository URL must not contain quotes (got {url!r})")
    old_url, old_branch = repository(root)
    branch = branch or old_branch
    cfg_path = root / "_config.yml"
    text = cfg_path.read_text(encoding="utf-8")
    block = re.compile(r"^repository:\n(?:[ \t]+.*\n)*", re.M)
    m = block.search(text)
    if m is None:
        raise ValueError(f"{cfg_path} has no repository: block")
    new_block = f'repository:\n  url: "{url}"\n  branch: {branch}\n'
    changed = []
    if m.group(0) != new_block:
        with atomic_path(cfg_path, suffix=".yml") as tmp:
            Path(tmp).write_text(text[:m.start()] + new_block + text[m.end():], encoding="utf-8")
        changed.append(cfg_path)
    for nb_path in find_notebooks(root):
        nb = nbformat.read(nb_path, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(COLAB_MARK)]
        if len(cells) != 1:
            raise ValueError(f"{nb_path} must have exactly one Colab install cell (starting {COLAB_MARK!r})")
        new = _REPO_LINE.sub(f'REPOSITORY, BRANCH = "{url}", "{branch}"', cells[0].source)
        if new != cells[0].source:
            cells[0].source = new
            with atomic_path(nb_path, suffix=".ipynb") as tmp:
                nbformat.write(nb, str(tmp))
            changed.append(nb_path)
    return changed


def _check_toc(root: Path, executed: Sequence[Path]) -> None:

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    listed = {Path(f).name for f in files if f.startswith(str(STAGE_DIR))}
    have = {nb.stem for nb in executed}
    missing = sorted(listed - have)
    if missing:
        raise RuntimeError(
            f"_toc.yml lists notebooks that were not executed in this build: {missing}; "
            "run the whole book (no --notebooks selection) or add them"
        )


def jupyter_book_build(root: Path, path_output: Path | None, warnings_as_errors: bool = True) -> Path:
    """Run ``jupyter-book build`` on ``root``; return the html index path."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root)]
    if warnings_as_errors:
        cmd += ["-W", "--keep-going"]
    if path_output is not None:
        cmd += ["--path-output", str(path_output)]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {proc.returncode}); see the messages above")
    base = path_output if path_output is not None else root
    return base / "_build" / "html" / "index.html"


def build_book(
    preset: str = "cpu",
    device: str = "auto",
    seed: int = 0,
    notebooks: Sequence[str] | None = None,
    data_dir: str | os.PathLike = "data",
    run_dir: str | os.PathLike = "runs",
    executed_dir: str | os.PathLike | None = None,
    path_output: str | os.PathLike | None = None,
    prepare_data: bool = True,
    html: bool = True,
    overrides: dict[str, Any] | None = None,
    root: Path | None = None,
    force: bool = False,
    solutions: bool | None = None,
) -> BookResult:
    """Execute the notebooks (all, or a selection) and build the HTML book. See module doc."""
    root = Path(root or repo_root()).resolve()
    cfg = get_preset(preset, **(overrides or {})).override(seed=int(seed))
    dev = resolve_device(device)
    data_dir = (root / data_dir).resolve()
    run_dir = (root / run_dir).resolve()
    executed_dir = Path(executed_dir) if executed_dir else root / "_build" / "executed" / preset
    executed_dir = executed_dir if executed_dir.is_absolute() else (root / executed_dir)
    os.environ["U2AD_HEADLESS"] = "1"  # widgets render their static default; text progress bars
    result = BookResult()
    nbs = find_notebooks(root, notebooks)
    print(f"u2ad book: preset={preset} device={dev} seed={seed}, {len(nbs)} notebook(s)", flush=True)
    t_all = time.perf_counter()

    if prepare_data:
        t0 = time.perf_counter()
        print("[data] generating / reusing phantom cohorts and dataset files ...", flush=True)
        prepare_all(cfg, data_dir / preset, seed=seed)
        result.seconds["data"] = time.perf_counter() - t0
        print(f"[data] ok ({result.seconds['data']:.1f} s)", flush=True)

    params = {"preset": preset, "device": dev, "seed": int(seed), "data_dir": str(data_dir),
              "run_dir": str(run_dir), "overrides": as_parameters(overrides)}
    solutions = (preset == "smoke") if solutions is None else bool(solutions)
    digest, versions, preset_hash = _package_digest(), package_versions(), cfg.hash()
    for i, src in enumerate(nbs, 1):
        out = executed_dir / src.name
        print(f"[{i}/{len(nbs)}] {src.name} ...", end=" ", flush=True)
        key = build_key(src, nbs[: i - 1], preset_hash, {**params, "solutions": solutions}, digest, versions)
        meta = None if force else _current_copy(out, key)
        if meta is not None:
            result.executed.append(out)
            result.reused.append(src.stem)
            print(f"unchanged, not executed (its run took {float(meta.get('elapsed_s', 0)):.1f} s on "
                  f"{meta.get('executed_at', '?')})", flush=True)
            continue
        run_src, n_sol = src, 0
        if solutions:
            run_src = executed_dir / "_with_solutions" / src.name
            n_sol = with_solutions(src, run_src)
        try:
            secs = execute_notebook(run_src, out, params, cwd=src.parent)
        except NotebookFailed:
            print("FAILED", flush=True)
            raise
        text, meta = _run_header(preset, int(seed), dev, secs, preset_hash)
        meta["build_key"] = key
        _add_header(out, text, meta)
        result.executed.append(out)
        result.seconds[src.stem] = secs
        print(f"ok ({secs:.1f} s" + (f", {n_sol} exercise solution(s) checked)" if n_sol else ")"), flush=True)
    result.seconds["notebooks_total"] = sum(v for k, v in result.seconds.items() if k[:2].isdigit())

    if html:
        _check_toc(root, result.executed)
        _stage(result.executed, root)
        write_run_times(root, result.executed)
        t0 = time.perf_counter()
        po = None
        if path_output is not None:
            po = Path(path_output)
            po = po if po.is_absolute() else root / po
        result.html_index = jupyter_book_build(root, po)
        result.seconds["jupyter_book"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - t_all
    print("u2ad book: times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()), flush=True)
    if result.html_index is not None:
        print(f"u2ad book: open {result.html_index}", flush=True)
    return result


def _cmd_book(args: argparse.Namespace) -> int:
    if args.set_repository is not None:
        try:
            changed = set_repository(repo_root(), args.set_repository, args.branch)
        except ValueError as exc:
            print(f"u2ad book: {exc}", file=sys.stderr)
            return 2
        print(f"u2ad book: repository {args.set_repository or '(none)'} written to "
              f"{len(changed)} file(s); commit them, then build the book", flush=True)
        return 0
    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        if not _:
            print(f"u2ad book: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2

        overrides[key] = yaml.safe_load(value)
    executed_dir, path_output = args.executed_dir, args.path_output
    if args.publish:  # the complete book: full grids, sweeps run by the notebooks; its own build area
        overrides = {**publish_overrides(get_preset(args.preset)), **overrides}
        executed_dir = executed_dir or f"_build/executed/{args.preset}-publish"
        path_output = path_output or "_build/publish"
    if args.scheduler:
        from u2ad_core.book.sweep import SCHEDULER_ENV  # here: sweep imports this module (a cycle)

        os.environ[SCHEDULER_ENV] = args.scheduler  # the notebooks' sweeps (run_sweep) attach to it
    try:
        build_book(
            preset=args.preset, device=args.device, seed=args.seed, notebooks=args.notebooks,
            data_dir=args.data_dir, run_dir=args.run_dir, executed_dir=executed_dir,
            path_output=path_output, prepare_data=not args.no_data, html=not (args.no_html or args.notebooks),
            overrides=overrides, force=args.force, solutions=args.solutions,
        )
    except NotebookFailed as exc:
        print(f"u2ad book: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, FileNotFoundError, KeyError) as exc:
        print(f"u2ad book: {exc}", file=sys.stderr)
        return 1
    return 0


def cli_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("book", help="execute every notebook with papermill and build the HTML book",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--notebooks", nargs="*", metavar="NB",
                   help="only these notebooks (paths or number prefixes such as 03); implies no HTML unless all are run")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set pretrain.epochs=5 (repeatable)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--run-dir", default="runs")
    p.add_argument("--executed-dir", default=None, help="build area for executed notebooks "
                   "(default: _build/executed/<preset>)")
    p.add_argument("--path-output", default=None, help="jupyter-book --path-output (default: project root, "
                   "so the book lands in _build/html)")
    p.add_argument("--no-data", action="store_true", help="skip the data preparation step")
    p.add_argument("--no-html", action="store_true", help="execute notebooks only")
    p.add_argument("--set-repository", metavar="URL", default=None,
                   help="write the repository URL (https://github.com/OWNER/REPO) into _config.yml and every "
                   "notebook's Colab cell, then exit: the book's Binder and Colab links follow it")
    p.add_argument("--branch", default=None, help="branch for --set-repository (default: keep _config.yml's)")
    p.add_argument("--solutions", action=argparse.BooleanOptionalAction, default=None,
                   help="execute the exercise solutions after each notebook (default: only for the smoke preset)")
    p.add_argument("--publish", action="store_true",
                   help="the complete book that is published (make publish): the preset with its full grids "
                   "(every crossover point with an S3 adaptation, the budget sweep, both cohorts in every table), "
                   "into _build/publish; resumable: finished runs and sweep points are reused")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a Dask scheduler (tcp://host:port) for the notebooks' sweeps (default: a LocalCluster, "
                   "one worker per core)")
    p.add_argument("--force", action="store_true", help="execute every notebook, even those whose executed copy "
                   "is current (same source, earlier code, preset, parameters and package)")
    p.set_defaults(func=_cmd_book)
