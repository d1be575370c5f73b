"""The claims decider of chapter 08 on hand-made rows whose verdicts are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from u2ad_core.experiments import claims as C
from u2ad_core.experiments.claims import decide, fold_claim, paired_claim


def row(name: str, **metrics: tuple[float, float]) -> dict:
    """{"name", m, m_std} from m=(mean, std)."""
    out = {"name": name}
    for m, (mean, std) in metrics.items():
        out[m], out[f"{m}_std"] = mean, std
    return out


@pytest.mark.parametrize("outcomes, verdict", [
    ([], "not measured"),
    (["not measured", "not measured"], "not measured"),
    (["better"], "yes"),
    (["better", "better", "not measured"], "yes"),
    (["better", "no clear difference"], "no difference"),
    (["no clear difference"], "no difference"),
    (["better", "worse"], "no"),
    (["no clear difference", "worse", "not measured"], "no"),
])
def test_decide_folds_pairwise_outcomes(outcomes, verdict):
    assert decide(outcomes) == verdict
    assert decide(iter(outcomes)) == verdict  # any iterable


def test_fold_claim_row_on_a_clear_win():
    a = row("U2AD", patient_f1=(0.8, 0.05))
    b = row("MAE", patient_f1=(0.6, 0.05))
    assert fold_claim("U2AD beats MAE", "patient_f1", a, [b]) == {
        "paper's claim": "U2AD beats MAE", "metric": "patient_f1",
        "this run (decides)": "U2AD 0.800 ± 0.050 vs MAE 0.600 ± 0.050",
        "paper protocol": "same (one protocol)", "verdict": "yes"}
    # lower is better: the same numbers make A worse
    assert fold_claim("c", "patient_f1", a, [b], higher=False)["verdict"] == "no"


def test_fold_claim_gap_inside_the_fold_spread_is_no_difference():
    a = row("A", patient_f1=(0.70, 0.12))
    b = row("B", patient_f1=(0.60, 0.01))
    assert fold_claim("c", "patient_f1", a, [b])["verdict"] == "no difference"


def test_fold_claim_needs_every_other_row_beaten():
    a = row("A", patient_auroc=(0.8, 0.01))
    others = [row("B", patient_auroc=(0.5, 0.01)), row("C", patient_auroc=(0.9, 0.01))]
    r = fold_claim("c", "patient_auroc", a, others)
    assert r["verdict"] == "no"
    assert r["this run (decides)"] == "A 0.800 ± 0.010 vs B 0.500 ± 0.010, C 0.900 ± 0.010"


def test_fold_claim_paper_protocol_twin_and_honest_label():
    a = row("A", segment_f1_honest=(0.5, 0.02), segment_f1=(0.9, 0.01))
    b = row("B", segment_f1_honest=(0.3, 0.02), segment_f1=(0.9, 0.01))
    r = fold_claim("c", "segment_f1_honest", a, [b], paper_metric="segment_f1")
    assert r["metric"] == "segment_f1 (honest)"
    assert r["verdict"] == "yes"  # decided on the honest metric only
    assert r["paper protocol"] == "A 0.900 ± 0.010 vs B 0.900 ± 0.010 → no difference"
    assert fold_claim("c", "segment_f1_honest", a, [b])["paper protocol"] == "n/a"


def test_fold_claim_digits_and_missing_numbers():
    a = row("K=10", seconds_per_image=(0.01234, 0.0001))
    b = row("K=1", seconds_per_image=(0.00200, 0.0001))
    r = fold_claim("slower", "seconds_per_image", a, [b], digits=4)
    assert r["this run (decides)"] == "K=10 0.01234 ± 1.0e-04 vs K=1 0.002000 ± 1.0e-04"
    assert r["verdict"] == "yes"
    nan = row("N", patient_f1=(math.nan, math.nan))
    r = fold_claim("c", "patient_f1", row("A", patient_f1=(0.5, 0.1)), [nan])
    assert r["verdict"] == "not measured" and r["this run (decides)"].endswith("N n/a ± n/a")


def test_fold_claim_words_come_from_the_verdict_rule(monkeypatch):
    """The pairwise outcomes are compare()'s: a different rule changes the verdict."""
    a, b = row("A", patient_f1=(0.9, 0.0)), row("B", patient_f1=(0.1, 0.0))
    assert fold_claim("c", "patient_f1", a, [b])["verdict"] == "yes"
    monkeypatch.setattr(C, "compare", lambda *args: "worse")
    assert fold_claim("c", "patient_f1", a, [b])["verdict"] == "no"


def test_paired_claim_uses_the_spread_of_paired_differences():
    a = pd.DataFrame({"ssim": [0.5, 0.75, 1.0, 1.25]})
    b = pd.DataFrame({"ssim": [0.25, 0.5, 0.75, 1.0]})  # 0.25 lower on every slice: sd of diffs 0
    noisy = pd.DataFrame({"ssim": [0.0, 1.5, 0.25, 1.5]})  # mean 0.8125, differences spread widely
    per = {"U2AD": a, "baseline": b, "noisy": noisy}
    r = paired_claim("U2AD reconstructs best", "ssim", per, "U2AD", ["baseline"], True)
    assert r == {"paper's claim": "U2AD reconstructs best", "metric": "ssim",
                 "this run (decides)": "U2AD 0.875 vs baseline 0.625 (diff. sd 0)",
                 "paper protocol": "n/a", "verdict": "yes"}
    assert paired_claim("c", "ssim", per, "U2AD", ["noisy"], True)["verdict"] == "no difference"
    assert paired_claim("c", "ssim", per, "U2AD", ["baseline", "noisy"], True)["verdict"] == "no difference"
    assert paired_claim("c", "ssim", per, "U2AD", ["baseline"], False)["verdict"] == "no"  # e.g. MSE


def test_paired_claim_drops_slices_missing_in_either_model():
    a = pd.DataFrame({"mse": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"mse": [2.0, math.nan, 5.0]})  # differences -1, -2 over the two shared slices
    r = paired_claim("c", "mse", {"A": a, "B": b}, "A", ["B"], higher=False)
    assert r["this run (decides)"] == f"A 2 vs B 3.5 (diff. sd {pd.Series([-1.0, -2.0]).std():.2g})"
    assert r["verdict"] == "yes"  # gap 1.5 > sd 0.71, lower is better
