"""The crossover study's helpers (notebook 10): grids, pixel metrics by fold, verdicts, tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from u2ad_core.experiments import crossover as X
from u2ad_core.core.config import CrossoverGrid
from u2ad_core.core.presets import PRESETS, get_preset
from u2ad_core.core.context import code_version


def test_grids_are_valid_preset_overrides():
    for name in PRESETS:
        g = get_preset(name).grids.crossover
        grid = g.grid()
        assert list(grid) == list(X.KNOBS)
        for c in grid["data.phantom.lesion_conspicuity"]:
            for k in grid["data.phantom.coupling"]:
                for a in grid["data.phantom.artefacts"]:
                    get_preset("smoke", **{X.KNOBS[0]: c, X.KNOBS[1]: k, X.KNOBS[2]: a})  # raises if invalid
        for sub in g.s3_grids():
            assert sub["s3"] == [True]
    assert get_preset("paper").grids.crossover == CrossoverGrid()  # the paper preset: the full grid
    assert len(CrossoverGrid().grid()[X.KNOBS[0]]) == 3 and get_preset("cpu").grids.crossover.s3_points == ()


def test_s3_grids_cover_exactly_the_s3_points():
    g = CrossoverGrid(conspicuity=("faint", "intense"), coupling=("clinical", "strong"), artefacts=(True,),
                      s3_points=(("faint", "clinical", True), ("intense", "strong", True)))
    grids = g.s3_grids()
    pts = {(gr[X.KNOBS[0]][0], gr[X.KNOBS[1]][0], gr[X.KNOBS[2]][0]) for gr in grids}
    assert len(grids) == 2 and pts == set(g.s3_points)  # not a product: one grid per point
    full = CrossoverGrid(conspicuity=("faint", "intense"), coupling=("clinical",), artefacts=(False, True))
    assert len(full.s3_grids()) == 1 and len(full.s3_list()) == 4


def test_pixel_metrics_by_fold_perfect_and_random_maps():
    rng = np.random.default_rng(0)
    n, h, w = 20, 16, 8
    roi = np.ones((n, h, w), bool)
    lesion = np.zeros((n, h, w), bool)
    label = np.r_[np.ones(10), np.zeros(10)].astype(int)
    lesion[:10, 5:8, 2:5] = True
    subject = np.array([f"s{i}" for i in range(n)])
    perfect = lesion.astype(float) + 0.01 * rng.random((n, h, w))
    out = X.pixel_metrics_by_fold(perfect, lesion, roi, subject, label, n_folds=5, seed=0)
    assert out["pixel_auprc"] == pytest.approx(1.0) and out["pixel_auprc_fold_mean"] == pytest.approx(1.0)
    assert out["pixel_auprc_fold_std"] == pytest.approx(0.0)
    noise = rng.random((n, h, w))
    out = X.pixel_metrics_by_fold(noise, lesion, roi, subject, label, n_folds=5, seed=0)
    prev = lesion.mean()
    assert out["lesion_prevalence_pixels"] == pytest.approx(prev)
    assert abs(out["pixel_auprc"] - prev) < 0.05 and abs(out["pixel_auroc"] - 0.5) < 0.1


def test_paired_verdict_follows_the_spread():
    assert X.paired_verdict(0.10, 0.05) == "better"
    assert X.paired_verdict(-0.10, 0.05) == "worse"
    assert X.paired_verdict(0.04, 0.05) == "no clear difference"
    assert X.paired_verdict(float("nan"), 0.05) == "not measured"


def _table():
    rows = []
    for c in ("faint", "intense"):
        for m, au, sd in (("U2AD S1", 0.8 if c == "intense" else 0.6, 0.05), ("Z-scoring", 0.7, 0.05)):
            rows.append({"data.phantom.lesion_conspicuity": c, "data.phantom.coupling": "clinical",
                         "data.phantom.artefacts": True, "method": m, "family": "x",
                         "patient_auroc": au, "patient_auroc_std": sd})
    return pd.DataFrame(rows)


def test_crossover_table_and_statements():
    t = X.crossover_table(_table())
    assert {"conspicuity", "coupling", "artefacts"} <= set(t.columns)
    assert set(t["artefacts"]) == {"on"}
    st = X.crossover_statements(t, "U2AD S1", "Z-scoring").set_index("conspicuity")
    assert st.loc["intense", "verdict"] == "better" and st.loc["faint", "verdict"] == "worse"
    assert st.loc["intense", "gap"] == pytest.approx(0.1)


def test_code_version_is_stable():
    assert code_version() == code_version() and len(code_version()) == 12
