"""Write the bytecode of the modules the book's notebook kernels import (run once after install).

``make`` installs with ``pip install --no-compile`` (pip then skips compiling every file of every
package: 129 -> 65 s measured). A module without bytecode is compiled when it is imported, and
where ``PYTHONDONTWRITEBYTECODE`` is set (as on this project's build machines) the result is not
kept, so every notebook kernel, sweep worker and training process compiled torch, pandas,
matplotlib... again: measured 4.5 s of the 7-8 s that ``u2ad_core.book.notebook.setup`` took in each
of the dozen kernels of a build. This imports what a kernel imports and writes the bytecode of
exactly those modules (a few thousand files, seconds), which ``-B`` / the variable do not stop
later processes from reading.

    python scripts/compile_imports.py        # prints how many files it wrote and the time
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import py_compile
import sys
import time

# what the notebooks, the papermill kernels and the workers import (a missing one is skipped)
MODULES = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "papermill", "nbformat", "nbclient",
    "u2ad_core", "u2ad_core.book.notebook", "u2ad_core.method.train", "u2ad_core.baselines", "u2ad_core.experiments.budget",
    "u2ad_core.experiments.crossover", "u2ad_core.experiments.realmri", "u2ad_core.data.realism", "u2ad_core.method.scoring",
    "u2ad_core.metrics", "u2ad_core.book.viz", "u2ad_core.book.widgets", "u2ad_core.book.sweep", "u2ad_core.data.datasets",
    "u2ad_core.data.phantom", "u2ad_core.data.pseudo", "u2ad_core.method.infer", "u2ad_core.book.figstyle",
    "matplotlib.pyplot", "matplotlib.backends.backend_agg", "seaborn", "pandas", "scipy.ndimage",
    "scipy.stats", "sklearn.metrics", "skimage.measure", "skimage.metrics", "nibabel", "ipywidgets",
    "dask.distributed", "yaml", "tqdm.auto",
)


def _fresh(f: str) -> bool:
    cfile = importlib.util.cache_from_source(f)
    return os.path.isfile(cfile) and os.path.getmtime(cfile) >= os.path.getmtime(f)


def _compile(f: str) -> int:
    try:
        py_compile.compile(f, cfile=importlib.util.cache_from_source(f), doraise=True)
        return 1
    except (py_compile.PyCompileError, OSError) as exc:  # a read-only or odd file: leave it
        print(f"compile_imports: {f}: {exc}", file=sys.stderr)
        return 0


def main() -> int:
    t0 = time.perf_counter()
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional extra that is not installed
            print(f"compile_imports: skipped {name} ({type(exc).__name__})", file=sys.stderr)
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)  # imports torch._inductor, as setup() does
    torch.use_deterministic_algorithms(False)
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    files = sorted(f for f in files if f and f.endswith(".py") and os.path.isfile(f))
    todo = [f for f in files if not _fresh(f)]
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=mp.get_context("spawn")) as ex:
        wrote = sum(ex.map(_compile, todo, chunksize=64))
    print(f"compile_imports: bytecode for {wrote} of {len(files)} imported modules "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
