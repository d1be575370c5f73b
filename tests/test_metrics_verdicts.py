"""The verdict rule (metrics.verdicts) and every place that words a difference with it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from u2ad_core import metrics as E
from u2ad_core.baselines import morphology as morph
from u2ad_core.experiments import budget as B
from u2ad_core.experiments import crossover as X
from u2ad_core.experiments import realmri as RM


def test_verdict_counts_a_difference_only_beyond_the_spread():
    assert E.verdict(0.05, 0.04) == "better"
    assert E.verdict(-0.05, 0.04) == "worse"
    assert E.verdict(0.05, 0.05) == "no clear difference"  # equal to the spread: not enough
    assert E.verdict(0.01, 0.0) == "better"  # no spread at all: any difference counts
    assert E.verdict(0.0, 0.0) == "no clear difference"
    assert E.verdict(-0.05, 0.04, higher_is_better=False) == "better"  # errors: lower is better
    assert E.verdict(0.05, float("nan")) == "no clear difference"  # unknown spread
    assert E.verdict(float("nan"), 0.1) == "not measured"
    assert set(E.VERDICTS) == {"better", "worse", "no clear difference", "not measured"}


def test_compare_words_follow_numbers():
    assert E.compare(0.80, 0.05, 0.70, 0.04) == "better"
    assert E.compare(0.70, 0.04, 0.80, 0.05) == "worse"
    # the gap (0.05) is inside the larger spread (0.10), though outside the smaller one
    assert E.compare(0.80, 0.10, 0.75, 0.02) == "no clear difference"
    assert E.compare(0.75, 0.02, 0.80, 0.10) == "no clear difference"
    assert E.compare(0.75, 0.25, 0.5, 0.125) == "no clear difference"  # gap == spread: not enough
    assert E.compare(0.80, 0.0, 0.79, 0.0) == "better"  # no spread at all: any gap counts
    # errors: lower is better
    assert E.compare(0.010, 0.001, 0.020, 0.002, higher_is_better=False) == "better"
    assert E.compare(0.020, 0.002, 0.010, 0.001, higher_is_better=False) == "worse"
    # unknown spread or value
    assert E.compare(0.9, float("nan"), 0.1, 0.01) == "no clear difference"
    assert E.compare(0.1, 0.01, 0.9, float("nan")) == "no clear difference"  # either side
    assert E.compare(float("nan"), 0.1, 0.5, 0.1) == "not measured"
    assert E.compare(0.5, 0.1, float("inf"), 0.1) == "not measured"


def _old_compare(a, sa, b, sb, hib=True):
    """The rule as it was written before metrics.verdicts (kept here to pin the outputs)."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return "not measured"
    if not (math.isfinite(sa) and math.isfinite(sb)) or abs(a - b) <= max(sa, sb):
        return "no clear difference"
    return "better" if (a > b) == hib else "worse"


def test_compare_is_the_former_rule_on_random_rows():
    rng = np.random.default_rng(0)
    vals = np.r_[rng.normal(0.7, 0.1, 300), np.nan, 0.7]
    stds = np.r_[rng.uniform(0, 0.1, 300), np.nan, 0.0]
    for _ in range(2000):
        a, b = rng.choice(vals, 2)
        sa, sb = rng.choice(stds, 2)
        hib = bool(rng.integers(2))
        assert E.compare(a, sa, b, sb, hib) == _old_compare(a, sa, b, sb, hib)


def test_every_wording_goes_through_the_rule(monkeypatch):
    """The morphology, crossover, budget and real-MRI words change when the rule changes."""
    calls = []
    real = E.verdicts.verdict

    def spy(d, s, higher_is_better=True):
        calls.append((d, s))
        return real(d, s, higher_is_better)

    assert RM.verdict is real  # realmri's paired change calls the rule by name
    monkeypatch.setattr(E.verdicts, "verdict", spy)
    monkeypatch.setattr(RM, "verdict", spy)
    morph.versus_anatomy([0.8], [0.05], 0.62, 0.1)
    X.paired_verdict(0.1, 0.05)
    rows = pd.DataFrame({"budget": [1.0, 1.0], "cohort": ["a", "a"], "method": ["U2AD", "U2AD"],
                         "strategy": ["S3", "S1"], "patient_auroc": [0.9, 0.6], "patient_auroc_std": [0.05, 0.05]})
    B.budget_claims(rows)
    RM.paired_change([1.0, 2.0], [1.5, 2.5])
    RM.shift_table(pd.DataFrame({"group": ["a", "a", "b", "b"], "mse": [1.0, 2.0, 1.0, 3.0]}), "a", "b", ("mse",))
    assert len(calls) == 5


def test_versus_anatomy_is_the_former_rule():
    rng = np.random.default_rng(1)
    mean = np.r_[rng.uniform(0.3, 1.0, 200), np.nan, 0.5]
    std = np.r_[rng.uniform(0, 0.2, 200), 0.1, np.nan]
    for ref_mean, ref_std in ((0.62, 0.10), (0.5, 0.0), (0.7, np.nan)):
        spread = np.maximum(std, ref_std)
        diff = mean - ref_mean
        old = np.where(diff > spread, "beats anatomy", np.where(-diff > spread, "below anatomy", "no clear difference"))
        old = np.where(~(np.isfinite(diff) & np.isfinite(spread)), "n/a", old)
        assert list(morph.versus_anatomy(mean, std, ref_mean, ref_std)) == list(old)


@pytest.mark.parametrize("before, after", [([1.0, 2.0, 3.0], [1.5, 1.0, 3.5]), ([1.0, 2.0, 3.0], [0.5, 1.4, 2.6]),
                                           ([1.0, 2.0, 3.0], [1.5, 2.4, 3.6]), ([1.0], [2.0])])
def test_paired_change_words_are_the_former_rule(before, after):
    d = np.subtract(after, before)
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
    md = float(np.mean(d))
    old = "no clear difference" if not np.isfinite(sd) or abs(md) <= sd else ("lower" if md < 0 else "higher")
    assert RM.paired_change(before, after)["words"] == old
