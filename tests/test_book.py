"""The book harness: notebook hygiene, the toc, and `u2ad book` failing loudly."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from u2ad_core.book.build import find_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHAPTERS = [p for p in NOTEBOOKS if p.stem != "90_findings"]  # the findings page gathers, it does not teach
REQUIRED_PARAMETERS = {"preset", "device", "seed", "data_dir", "run_dir"}


def test_there_are_numbered_notebooks():
    assert NOTEBOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_exactly_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    names = {line.split("=")[0].strip() for line in cells[0].source.splitlines() if "=" in line and not line.startswith("#")}
    assert REQUIRED_PARAMETERS <= names, f"{path.name}: parameters cell lacks {REQUIRED_PARAMETERS - names}"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell must be the title"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_boilerplate_is_out_of_the_reading_view(path):
    """CONTRIBUTING.md, reading view: the parameters and setup cells are not shown on the page;
    a captioned figure cell has a caption, a name and alt text."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags or "ctx = setup(" in cell.source:
            assert "remove-cell" in tags, f"{path.name}: {cell.source.splitlines()[0]!r} is not tagged remove-cell"
        fig = cell.metadata.get("mystnb", {}).get("figure")
        if fig is not None:
            assert fig.get("caption") and str(fig.get("name", "")).startswith("fig-"), f"{path.name}: {fig}"
            assert cell.metadata["mystnb"].get("image", {}).get("alt"), f"{path.name}: {fig['name']} has no alt text"


# A code cell shown open on the page shows about 80 characters per line in the book's column
# (Chromium, 1280-px window); longer lines scroll sideways inside their block.
SHOWN_CODE_WIDTH = 79
HIDING_TAGS = {"remove-cell", "remove-input", "hide-input", "hide-cell", "parameters"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_shown_open_fits_the_page_column(path):
    """CONTRIBUTING.md, reading view: code a reader sees without clicking fits the column."""
    nb = nbformat.read(path, as_version=4)
    long = [(i, line) for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and not HIDING_TAGS & set(cell.metadata.get("tags", []))
            for line in cell.source.splitlines() if len(line) > SHOWN_CODE_WIDTH]
    assert not long, f"{path.name}: shown code lines over {SHOWN_CODE_WIDTH} characters: {long[:3]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_notebook_ends_with_summary_and_exercises(path):
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    assert "## Summary" in text and "## Exercises" in text, path.name


def _toc_files():
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    walk(toc)
    return toc, files


def test_toc_lists_every_notebook_and_page():
    toc, files = _toc_files()
    assert toc["format"] == "jb-book"
    listed = sorted(Path(f).name for f in files if f.startswith("book/notebooks/"))
    assert listed == [p.stem for p in NOTEBOOKS], "toc and notebooks/ disagree"
    assert files[0] == "book/notebooks/90_findings", "the findings page comes right after the introduction"
    for f in [toc["root"], *files]:
        if not f.startswith("book/notebooks/"):
            assert (ROOT / f).with_suffix(".md").is_file(), f


def test_config_excludes_build_artefacts():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    for pattern in ("_build", ".venv", ".pytest_cache", "**.ipynb_checkpoints"):
        assert pattern in cfg["exclude_patterns"], pattern
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    assert cfg["launch_buttons"]["binderhub_url"] == "" and cfg["launch_buttons"]["thebe"] is False


def test_find_notebooks_selection():
    assert find_notebooks(ROOT) == NOTEBOOKS
    assert find_notebooks(ROOT, [NOTEBOOKS[0].name[:2]]) == [NOTEBOOKS[0]]
    with pytest.raises(FileNotFoundError, match="no notebook"):
        find_notebooks(ROOT, ["99"])


def _u2ad(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "u2ad_core", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_book_stops_at_failing_notebook_and_names_it(tmp_path):
    out = _u2ad("book", "--preset", "smoke", "--device", "cpu", "--no-data",
                "--notebooks", "tests/fixtures/ok.ipynb", "tests/fixtures/raises.ipynb",
                "--executed-dir", str(tmp_path))
    assert out.returncode != 0
    assert "raises.ipynb" in out.stderr and "cell 4" in out.stderr, out.stderr
    assert "ValueError: deliberate failure in fixture" in out.stderr
    # the notebook before it ran and carries the run header
    ok = nbformat.read(tmp_path / "ok.ipynb", as_version=4)
    assert ok.metadata["u2ad"]["preset"] == "smoke" and ok.metadata["u2ad"]["device"] == "cpu"
    assert "elapsed_s" in ok.metadata["u2ad"] and "torch" in ok.metadata["u2ad"]["versions"]
    header = ok.cells[1]
    assert "Run header" in header.source and "u2ad-run-header" in header.metadata["tags"]
    printed = "".join(o.get("text", "") for c in ok.cells if c.cell_type == "code" for o in c.outputs)
    assert "preset smoke device cpu headless 1" in printed
    # the sources were not touched
    src = json.loads((ROOT / "tests/fixtures/ok.ipynb").read_text())
    assert all(not c.get("outputs") for c in src["cells"] if c["cell_type"] == "code")


def _staged(root, name, cells, tags):
    """Write an executed notebook with ``cells`` (``tags``: {index: [tag, ...]}) under
    ``root/exec``, stage it into ``root`` like the builder does and read the staged copy."""
    from u2ad_core.book.build import STAGE_DIR, _stage

    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    for i, t in tags.items():
        nb.cells[i].metadata["tags"] = t
    src = root / "exec" / name
    src.parent.mkdir(exist_ok=True)
    nbformat.write(nb, src)
    _stage([src], root)
    return nbformat.read(root / STAGE_DIR / name, as_version=4)


def test_staging_drops_the_injected_parameters(tmp_path):
    """The injected cell carries the builder's absolute paths and would override a downloaded
    copy's parameters cell: staged copies (page and download) do not have it."""
    from u2ad_core.book.build import STAGE_DIR

    out = _staged(tmp_path, "01_x.ipynb", [nbformat.v4.new_code_cell('data_dir = "data"'),
                                           nbformat.v4.new_code_cell('data_dir = "/abs/path"'),
                                           nbformat.v4.new_code_cell("x = 1")],
                  {0: ["parameters"], 1: ["injected-parameters"]})
    assert [c.source for c in out.cells] == ['data_dir = "data"', "x = 1"]
    assert "/abs/path" not in (tmp_path / STAGE_DIR / "01_x.ipynb").read_text()


def test_build_key_follows_source_earlier_code_and_parameters(tmp_path):
    from u2ad_core.book.build import build_key

    def nb(path, md, code):
        n = nbformat.v4.new_notebook()
        n.cells = [nbformat.v4.new_markdown_cell(md), nbformat.v4.new_code_cell(code)]
        nbformat.write(n, path)
        return path

    a, b = nb(tmp_path / "01_a.ipynb", "# A", "x = 1"), nb(tmp_path / "02_b.ipynb", "# B", "y = 2")
    params = {"preset": "smoke", "seed": 0}
    key = lambda **kw: build_key(b, [a], "h", kw.get("params", params), "pkg", {"torch": "2"})  # noqa: E731
    k0 = key()
    assert k0 == key() and len(k0) == 16
    assert key(params={"preset": "smoke", "seed": 1}) != k0
    assert build_key(b, [a], "other preset", params, "pkg", {"torch": "2"}) != k0
    assert build_key(b, [a], "h", params, "pkg2", {"torch": "2"}) != k0  # package code changed
    nb(a, "# A, reworded", "x = 1")  # prose of an earlier notebook: later notebooks stay current
    assert key() == k0
    nb(a, "# A", "x = 10")  # code of an earlier notebook: they are executed again
    k1 = key()
    assert k1 != k0
    nb(b, "# B, reworded", "y = 2")  # its own prose: executed again
    assert key() != k1


@pytest.mark.slow
def test_second_build_reuses_current_copies_and_force_executes(tmp_path):
    args = ("book", "--preset", "smoke", "--device", "cpu", "--no-data", "--notebooks", "tests/fixtures/ok.ipynb",
            "--executed-dir", str(tmp_path))
    first = _u2ad(*args)
    assert first.returncode == 0 and "ok (" in first.stdout, first.stdout + first.stderr
    meta = nbformat.read(tmp_path / "ok.ipynb", as_version=4).metadata["u2ad"]
    again = _u2ad(*args)
    assert again.returncode == 0 and "unchanged, not executed" in again.stdout, again.stdout
    assert nbformat.read(tmp_path / "ok.ipynb", as_version=4).metadata["u2ad"] == meta  # not rewritten
    other = _u2ad(*args, "--seed", "1")  # other parameters: executed
    assert "ok (" in other.stdout and "unchanged" not in other.stdout
    forced = _u2ad(*args, "--seed", "1", "--force")
    assert "ok (" in forced.stdout and "unchanged" not in forced.stdout


EXERCISES_MD = """## Exercises

1. Square it.

   ````{dropdown} Hint
   Use `**`.
   ```python
   print("a hint's code is not a solution")
   ```
   ````

   ````{dropdown} Solution
   Square `x`:
   ```python
   y = x ** 2
   assert y == 4
   ```
   and print it:
   ```python
   print("solution", y)
   ```
   ````
2. Fail.

   :::{dropdown} Solution
   ```python
   raise ValueError("this solution rotted")
   ```
   :::
"""


def test_solution_blocks_are_found_in_dropdowns_only():
    from u2ad_core.book.solutions import solution_blocks

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 2"), nbformat.v4.new_markdown_cell(EXERCISES_MD)]
    assert solution_blocks(nb) == ["y = x ** 2\nassert y == 4", 'print("solution", y)',
                                   'raise ValueError("this solution rotted")']


@pytest.mark.slow
def test_smoke_build_executes_solutions_and_a_rotten_one_fails(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 2"), nbformat.v4.new_markdown_cell(EXERCISES_MD.split("2. Fail")[0])]
    good = tmp_path / "01_good.ipynb"
    nbformat.write(nb, good)
    out = _u2ad("book", "--preset", "smoke", "--device", "cpu", "--no-data", "--notebooks", str(good),
                "--executed-dir", str(tmp_path / "exec"))
    assert out.returncode == 0 and "2 exercise solution(s) checked" in out.stdout, out.stdout + out.stderr
    executed = nbformat.read(tmp_path / "exec" / "01_good.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "solution 4" in printed
    # without solutions (the cpu default) they do not run
    out = _u2ad("book", "--preset", "smoke", "--device", "cpu", "--no-data", "--notebooks", str(good),
                "--executed-dir", str(tmp_path / "exec2"), "--no-solutions")
    assert out.returncode == 0 and "solution" not in out.stdout
    nb.cells[1] = nbformat.v4.new_markdown_cell(EXERCISES_MD)
    bad = tmp_path / "02_bad.ipynb"
    nbformat.write(nb, bad)
    out = _u2ad("book", "--preset", "smoke", "--device", "cpu", "--no-data", "--notebooks", str(bad),
                "--executed-dir", str(tmp_path / "exec3"))
    assert out.returncode != 0 and "solution check 3 of 3 (02_bad.ipynb)" in out.stderr, out.stderr
    assert "this solution rotted" in out.stderr


def test_launch_links_follow_the_one_repository_setting(tmp_path):
    from u2ad_core.book.build import launch_links

    box = launch_links("https://github.com/owner/u2ad-book", "main", "04_x.ipynb")
    assert "https://mybinder.org/v2/gh/owner/u2ad-book/main?urlpath=lab/tree/notebooks/04_x.ipynb" in box
    assert "https://colab.research.google.com/github/owner/u2ad-book/blob/main/notebooks/04_x.ipynb" in box
    assert launch_links("", "main", "04_x.ipynb") is None  # not set: no links (this offline build)
    assert launch_links("https://gitlab.com/o/r", "main", "04_x.ipynb") is None
    # staging puts the box under the run header when _config.yml names a GitHub repository
    (tmp_path / "_config.yml").write_text('title: t\nrepository:\n  url: "https://github.com/o/r"\n  branch: dev\n')
    staged = _staged(tmp_path, "04_x.ipynb", [nbformat.v4.new_markdown_cell("# T"),
                                              nbformat.v4.new_markdown_cell("header"),
                                              nbformat.v4.new_code_cell("x = 1")], {1: ["u2ad-run-header"]})
    assert "u2ad-launch" in staged.cells[2].metadata["tags"] and "o/r/dev?urlpath" in staged.cells[2].source


def test_set_repository_writes_config_and_every_colab_cell(tmp_path):
    import shutil

    from u2ad_core.book.build import repository, set_repository

    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "notebooks").mkdir()
    for nb in NOTEBOOKS[:2]:
        shutil.copy(nb, tmp_path / "notebooks" / nb.name)
    assert repository(tmp_path) == repository(ROOT)
    changed = set_repository(tmp_path, "https://github.com/o/r.git", "dev")
    assert len(changed) == 3
    assert repository(tmp_path) == ("https://github.com/o/r.git"[:-4], "dev")
    assert yaml.safe_load((tmp_path / "_config.yml").read_text())["launch_buttons"]["thebe"] is False  # rest kept
    for nb in NOTEBOOKS[:2]:
        text = (tmp_path / "notebooks" / nb.name).read_text()
        assert 'REPOSITORY, BRANCH = \\"https://github.com/o/r.git\\", \\"dev\\"' in text
    assert set_repository(tmp_path, "https://github.com/o/r.git", "dev") == []  # idempotent
    with pytest.raises(ValueError, match="https://"):
        set_repository(tmp_path, "git@github.com:o/r.git")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_is_first_hidden_and_agrees_with_config(path):
    """One setting: the Colab cell's REPOSITORY is _config.yml's repository.url (u2ad book
    --set-repository writes both); the cell does nothing outside Colab and is not on the page."""
    from u2ad_core.book.build import COLAB_MARK, repository

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.startswith(COLAB_MARK) and "remove-cell" in code[0].metadata.get("tags", [])
    assert "parameters" in code[1].metadata.get("tags", [])
    url, branch = repository(ROOT)
    assert f'REPOSITORY, BRANCH = "{url}", "{branch}"' in code[0].source


def test_run_times_table_comes_from_the_run_headers(tmp_path):
    from u2ad_core.book.build import RUN_TIMES, write_run_times

    paths = []
    for stem, secs in (("01_a", 12.0), ("02_b", 300.0)):
        n = nbformat.v4.new_notebook()
        n.cells = [nbformat.v4.new_markdown_cell(f"# {stem} title\n\ntext")]
        n.metadata["u2ad"] = {"preset": "cpu", "device": "cpu", "elapsed_s": secs, "executed_at": "today",
                              "reading": {"minutes": 3, "words": 420, "figures": 2}}
        paths.append(tmp_path / f"{stem}.ipynb")
        nbformat.write(n, paths[-1])
    text = write_run_times(tmp_path, paths).read_text()
    assert (tmp_path / RUN_TIMES).is_file()
    assert "[01_a title](../notebooks/01_a.ipynb) | 3 min | 420 | cpu | cpu | 12 s" in text
    assert "| 5.0 min |" in text and "**5.2 min**" in text and "**6 min**" in text


def test_run_header_gives_the_reading_time_of_the_executed_page(tmp_path):
    from u2ad_core.book.build import _add_header, _run_header

    n = nbformat.v4.new_notebook()
    n.cells = [nbformat.v4.new_markdown_cell("# t\n\n" + "word " * 400)]
    path = tmp_path / "01_t.ipynb"
    nbformat.write(n, path)
    text, meta = _run_header("cpu", 0, "cpu", 1.0, "abc")
    _add_header(path, text, meta)
    nb = nbformat.read(path, as_version=4)
    assert "Reading time: about **3 min** (402 words, 0 figures" in nb.cells[1].source
    assert nb.cells[1].source.rstrip().endswith("```") and nb.metadata["u2ad"]["reading"]["minutes"] == 3


@pytest.mark.slow
def test_math_is_served_from_the_book_and_renders_offline(tmp_path):
    """A one-page book with the project's Sphinx settings: MathJax comes from ``_static`` (no
    CDN), the file is there, and (when Debian's chromium is installed) the formula is typeset
    with every network request refused."""
    import shutil

    import yaml

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx-mathjax-offline" in cfg["sphinx"]["extra_extensions"]
    book = tmp_path / "book"
    book.mkdir()
    mini = {"title": "t", "only_build_toc_files": True, "execute": {"execute_notebooks": "off"},
            "parse": cfg["parse"], "sphinx": {"extra_extensions": cfg["sphinx"]["extra_extensions"]}}
    (book / "_config.yml").write_text(yaml.safe_dump(mini))
    (book / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (book / "index.md").write_text("# Math\n\n$$\\mu = \\frac{1}{K}\\sum_k \\hat{x}_k$$\n")
    jb = Path(sys.executable).parent / "jupyter-book"
    out = subprocess.run([str(jb), "build", "-W", str(book)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    html = (book / "_build" / "html" / "index.html").read_text()
    srcs = re.findall(r'<script[^>]*src="([^"]*(?:mathjax|tex-)[^"]*)"', html, flags=re.I)
    assert srcs and all(not s.startswith(("http:", "https:", "//")) for s in srcs), srcs
    assert all((book / "_build" / "html" / s).is_file() for s in srcs)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium): the typesetting check in a browser is skipped")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                          "--virtual-time-budget=8000", "--dump-dom",
                          (book / "_build" / "html" / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "mjx-container" in dom.stdout, dom.stderr[-1000:]


def _with_checks(md, outputs):
    """An executed notebook: ``x = 2``, the exercise markdown ``md``, and one solution check
    per entry of ``outputs`` (its output list), as `with_solutions` appends and papermill runs."""
    from u2ad_core.book.solutions import SOLUTION_TAG

    cells = [nbformat.v4.new_code_cell("x = 2"), nbformat.v4.new_markdown_cell(md)]
    for i, outs in enumerate(outputs, 1):
        c = nbformat.v4.new_code_cell(f"# solution check {i} of {len(outputs)}")
        c.metadata["tags"] = ["remove-cell", SOLUTION_TAG]
        c.outputs = outs
        cells.append(c)
    return cells


def test_staging_writes_each_solutions_output_into_its_dropdown(tmp_path):
    from u2ad_core.book.solutions import SOLUTION_TAG, solution_blocks

    md = EXERCISES_MD.split("2. Fail")[0]
    stdout = nbformat.v4.new_output("stream", name="stdout", text="solution 4\n")
    stderr = nbformat.v4.new_output("stream", name="stderr", text="UserWarning: noise\n")
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    table = nbformat.v4.new_output("execute_result", data={"text/plain": "   a\n0  1"}, execution_count=3)
    staged = _staged(tmp_path, "01_x.ipynb", _with_checks(md, [[], [stdout, stderr, figure, table]]), {})
    assert not [c for c in staged.cells if SOLUTION_TAG in c.metadata.get("tags", [])]  # checks dropped
    page = staged.cells[1].source
    assert solution_blocks(staged) == ["y = x ** 2\nassert y == 4", 'print("solution", y)']  # code untouched
    first, second = page.split("and print it:")
    # inside the same dropdown, under each block, indented like it; stderr left out
    assert "   Output in this build:\n   ```text\n   (prints nothing)\n   ```" in first
    assert ("   Output in this build:\n   ```text\n   solution 4\n   (draws a figure)\n      a\n   0  1\n   ```\n"
            "   ````") in second
    assert "UserWarning" not in page and "Output in this build" not in page.split("{dropdown} Solution")[0]


def test_staging_without_executed_solutions_leaves_the_page_alone(tmp_path):
    """cpu builds run no solutions: the exercise markdown is staged exactly as written."""
    md = EXERCISES_MD.split("2. Fail")[0]
    staged = _staged(tmp_path, "01_x.ipynb", [nbformat.v4.new_code_cell("x = 2"), nbformat.v4.new_markdown_cell(md)],
                     {})
    assert staged.cells[1].source == md
    # an older executed copy whose checks do not match the blocks: left alone too
    stdout = nbformat.v4.new_output("stream", name="stdout", text="solution 4\n")
    staged = _staged(tmp_path, "02_x.ipynb", _with_checks(md, [[stdout]]), {})
    assert staged.cells[1].source == md


@pytest.mark.slow
def test_executed_solutions_show_their_output_on_the_staged_page(tmp_path):
    """The real path: with_solutions, papermill, staging, on a tiny notebook fixture."""
    from u2ad_core.book.build import STAGE_DIR, _stage, execute_notebook
    from u2ad_core.book.solutions import with_solutions

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 2"), nbformat.v4.new_markdown_cell(EXERCISES_MD.split("2. Fail")[0])]
    src = tmp_path / "01_tiny.ipynb"
    nbformat.write(nb, src)
    run_src = tmp_path / "with" / src.name
    assert with_solutions(src, run_src) == 2
    execute_notebook(run_src, tmp_path / "exec" / src.name, {}, cwd=tmp_path)
    _stage([tmp_path / "exec" / src.name], tmp_path)
    page = nbformat.read(tmp_path / STAGE_DIR / src.name, as_version=4).cells[1].source
    assert "   Output in this build:\n   ```text\n   solution 4\n   ```" in page
