"""Which reconstruction baseline chapter 10 pits against U2AD: the best one of chapter 09::

    from u2ad_core.experiments.best_baseline import best_recon_baseline
    method, why = best_recon_baseline(ctx.run_dir, "renji_like")   # e.g. ("dae", "best S1 ...")
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pandas as pd

from u2ad_core.baselines import UAD_METHODS
from u2ad_core.book.results import find_results, read_results

DEFAULT = "dae"


def best_recon_baseline(run_dir: str | os.PathLike, cohort: str,
                        methods: Iterable[str] = UAD_METHODS) -> tuple[str, str]:
    """The reconstruction baseline with the highest S1 AUROC on ``cohort`` in chapter 09's
    results (``baselines`` results file in ``run_dir``), and why it was chosen.

    Candidates are ``methods`` (matched to the results' ``model`` column case-insensitively).
    Without the results file or a matching S1 row: ``"dae"`` with the reason. Returns
    (method key, e.g. ``"dae"``; a sentence for the page).
    """
    files = find_results(run_dir)
    if "baselines" not in files:
        return DEFAULT, "chapter 09's results were not found: DAE by default"
    rows = pd.DataFrame(read_results(files["baselines"]))
    names = {m.upper(): m for m in methods}
    rows = rows[(rows["cohort"] == cohort) & (rows["strategy"] == "S1")]
    rows = rows[rows["model"].str.upper().isin(names)]
    if rows.empty:
        return DEFAULT, "no S1 reconstruction baseline in chapter 09's results: DAE by default"
    best = rows.sort_values("auroc", ascending=False).iloc[0]
    return names[best["model"].upper()], f"best S1 AUROC in chapter 09 ({best['auroc']:.3f})"
