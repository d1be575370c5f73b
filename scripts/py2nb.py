#!/usr/bin/env python3
"""Convert a percent-format script (``# %%`` cells) to a clean ``.ipynb`` (no outputs).

Cell markers: ``# %%`` (code), ``# %% [markdown]`` (markdown; lines start with ``# ``),
``# %% tags=["parameters"]`` (tags). Used to author the numbered notebooks:

    python scripts/py2nb.py scratch/03_pretraining.py notebooks/03_pretraining.ipynb
"""

import json
import re
import sys

import nbformat


def convert(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cells, kind, tags, buf = [], None, [], []

    def flush():
        if kind is None:
            return
        src = "\n".join(buf).strip("\n")
        if kind == "markdown":
            src = "\n".join(re.sub(r"^# ?", "", line) for line in src.splitlines())
            cell = nbformat.v4.new_markdown_cell(src)
        else:
            cell = nbformat.v4.new_code_cell(src)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.splitlines():
        m = re.match(r"^# %%(.*)$", line)
        if m:
            flush()
            rest = m.group(1)
            kind = "markdown" if "[markdown]" in rest else "code"
            t = re.search(r"tags=(\[.*?\])", rest)
            tags = json.loads(t.group(1)) if t else []
            buf = []
        elif kind is not None:
            buf.append(line)
    flush()
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i:03d}"
    nb.cells = cells
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    nb = convert(open(src, encoding="utf-8").read())
    nbformat.validate(nb)
    with open(dst, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    print(f"wrote {dst} ({len(nb.cells)} cells)")
