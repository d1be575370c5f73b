#!/usr/bin/env python3
"""Convert a notebook back to the percent-format script that ``py2nb.py`` reads (round trip).

    python scripts/nb2py.py notebooks/03_pretraining.ipynb scratch/03_pretraining.py
"""

import json
import sys

import nbformat


def convert(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        tag_s = f" tags={json.dumps(tags)}" if tags else ""
        if cell.cell_type == "markdown":
            out.append(f"# %% [markdown]{tag_s}")
            out.extend(("# " + line) if line else "#" for line in cell.source.splitlines())
        else:
            out.append(f"# %%{tag_s}")
            out.extend(cell.source.splitlines())
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    text = convert(nbformat.read(src, as_version=4))
    with open(dst, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {dst}")
