"""The claims decider of chapter 08: does a run reproduce "A beats B_1, ..., B_n"?

Each pairwise comparison is decided by the verdict rule :func:`u2ad_core.metrics.compare`
(a gap counts only when it exceeds the larger fold spread); :func:`decide` folds the
pairwise outcomes into one word, and the two claim builders return one row of the claims
table each::

    from u2ad_core.experiments.claims import fold_claim, paired_claim
    rows = [fold_claim("U2AD beats MAE", "patient_f1", u2ad_row, [mae_row])]

- :func:`fold_claim`: rows that carry a metric's mean and fold std (``metric`` and
  ``metric_std``), e.g. the CV summaries of Table 3;
- :func:`paired_claim`: per-slice values of two or more models over the same slices (the
  spread is the std of the paired differences), e.g. reconstruction SSIM / MSE / variance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from u2ad_core.metrics import compare, format_mean_std

NOT_MEASURED_WORD = "not measured"


def decide(outcomes: Iterable[str]) -> str:
    """:func:`~u2ad_core.metrics.compare` outcomes of "A beats B_i" -> one verdict.

    ``"not measured"`` outcomes are dropped; none left: ``"not measured"``; any ``"worse"``:
    ``"no"``; all ``"better"``: ``"yes"``; otherwise ``"no difference"``.
    """
    outcomes = [o for o in outcomes if o != NOT_MEASURED_WORD]
    if not outcomes:
        return NOT_MEASURED_WORD
    if "worse" in outcomes:
        return "no"
    return "yes" if all(o == "better" for o in outcomes) else "no difference"


def _one_metric(metric: str, a: Mapping[str, Any], others: Sequence[Mapping[str, Any]],
                higher: bool, digits: int) -> tuple[str, str]:
    """(verdict, "A m ± s vs B m ± s, ...") of row ``a`` against ``others`` on ``metric``."""
    std = f"{metric}_std"
    outs = [compare(a[metric], a[std], o[metric], o[std], higher) for o in others]
    nums = f"{a['name']} {format_mean_std(a[metric], a[std], digits)} vs " + ", ".join(
        f"{o['name']} {format_mean_std(o[metric], o[std], digits)}" for o in others)
    return decide(outs), nums


def fold_claim(claim: str, metric: str, a: Mapping[str, Any], others: Sequence[Mapping[str, Any]],
               higher: bool = True, paper_metric: str | None = None, digits: int = 3) -> dict[str, str]:
    """One claims-table row: "row ``a`` beats every row in ``others``" on a fold metric.

    Rows are mappings with ``name``, ``metric`` (mean over test folds) and ``metric_std``;
    ``higher``: whether larger is better; ``paper_metric``: the paper-protocol twin of
    ``metric``, shown with its own verdict in the ``paper protocol`` column (which otherwise
    reads "same (one protocol)" for patient metrics, "n/a" for the rest); ``digits``: the
    decimals printed. The ``verdict`` is decided on ``metric`` alone.
    """
    verdict, nums = _one_metric(metric, a, others, higher, digits)
    paper = "same (one protocol)" if metric.startswith("patient") else "n/a"
    if paper_metric is not None:
        pv, pn = _one_metric(paper_metric, a, others, higher, digits)
        paper = f"{pn} → {pv}"
    return {"paper's claim": claim, "metric": metric.replace("_honest", " (honest)"),
            "this run (decides)": nums, "paper protocol": paper, "verdict": verdict}


def paired_claim(claim: str, metric: str, per_slice: Mapping[str, pd.DataFrame], a: str,
                 others: Sequence[str], higher: bool) -> dict[str, str]:
    """One claims-table row: model ``a`` beats each of ``others`` over the same slices.

    per_slice: model name -> table with one row per slice (N rows, the same index for every
    model) and a ``metric`` column. Each comparison uses the means over the slices and, as
    the spread of both, the std of the paired differences (N - 1 dof, NaN pairs dropped).
    """
    ra = per_slice[a][metric]
    outs, nums = [], []
    for o in others:
        ro = per_slice[o][metric]
        sd = float((ra - ro).dropna().std())
        outs.append(compare(ra.mean(), sd, ro.mean(), sd, higher))
        nums.append(f"{o} {ro.mean():.4g} (diff. sd {sd:.2g})")
    return {"paper's claim": claim, "metric": metric,
            "this run (decides)": f"{a} {ra.mean():.4g} vs " + ", ".join(nums),
            "paper protocol": "n/a", "verdict": decide(outs)}
