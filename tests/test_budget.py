"""The training-budget sweep (u2ad_core.experiments.budget): schedule scaling, the per-preset grids, the
claims table on hand-made numbers, and the point notebook's parameters."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from u2ad_core.experiments import budget as B
from u2ad_core.core.presets import PRESETS, get_preset
from u2ad_core.core.runstore import train_seconds

ROOT = Path(__file__).resolve().parents[1]


def test_factor_one_changes_nothing():
    for name in PRESETS:
        assert B.budget_overrides(get_preset(name), 1.0) == {}


def test_cpu_schedule_scales_together():
    cfg = get_preset("cpu")
    o = B.budget_overrides(cfg, 2)
    p = cfg.override(**o)
    assert (p.pretrain.epochs, p.pretrain.lr_step) == (2 * cfg.pretrain.epochs, 2 * cfg.pretrain.lr_step)
    assert (p.adapt.epochs, p.adapt.stage2_start, p.adapt.refresh_every) == (
        2 * cfg.adapt.epochs, 2 * cfg.adapt.stage2_start, 2 * cfg.adapt.refresh_every)
    assert p.baselines.pretrain_epochs == 2 * cfg.baselines.pretrain_epochs
    half = cfg.override(**B.budget_overrides(cfg, 0.5))
    assert half.pretrain.epochs == cfg.pretrain.epochs // 2
    odd = cfg.override(**{"pretrain.lr_step": 15})
    assert odd.override(**B.budget_overrides(odd, 0.5)).pretrain.lr_step == 8  # 7.5 rounds up (15 * 0.5 + 0.5)


def test_tiny_schedules_keep_one_epoch_and_stage_order():
    cfg = get_preset("smoke")
    p = cfg.override(**B.budget_overrides(cfg, 0.25))
    assert p.pretrain.epochs >= 1 and p.adapt.epochs >= 1 and p.baselines.adapt_epochs >= 1
    assert p.adapt.stage2_start < p.adapt.epochs


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_factor_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="budget factor"):
        B.budget_overrides(get_preset("cpu"), bad)


def test_every_preset_has_a_grid_with_the_book_budget():
    grids = {name: get_preset(name).grids.budget for name in PRESETS}
    for g in grids.values():
        assert 1.0 in g.factors and len(g.factors) >= 2
    assert not grids["cpu"].in_book and grids["cpu"].minutes_estimate
    assert grids["smoke"].in_book and grids["paper_ci"].in_book and grids["paper"].in_book
    assert grids["paper"].factors == (0.5, 1.0, 2.0, 4.0) and grids["paper_ci"].factors == (0.5, 1.0)


def _table(s3_auroc: dict[float, float], std: float = 0.02) -> pd.DataFrame:
    rows = []
    for f, a in s3_auroc.items():
        for method, strategy, auroc in (("U2AD", "S3", a), ("U2AD", "S1", 0.70), ("U2AD", "S2", 0.60),
                                        ("Z-scoring", "none", 0.80), ("DAE", "S3", 0.75), ("VAE", "S3", 0.65)):
            rows.append({"budget": f, "cohort": "renji_like", "method": method, "strategy": strategy,
                         "patient_auroc": auroc, "patient_auroc_std": std})
    return pd.DataFrame(rows)


def test_claims_hold_or_change():
    c = B.budget_claims(_table({0.5: 0.90, 1.0: 0.92, 2.0: 0.95})).set_index("claim")
    assert (c["verdict"] == "holds at every budget").all(), c
    assert c.loc["U2AD S3 vs U2AD S1 (does adaptation help?)", "1x"] == "better"
    assert "vs DAE S3" in c.loc["U2AD S3 vs the best reconstruction baseline", "2x"]
    c = B.budget_claims(_table({0.5: 0.70, 1.0: 0.79, 2.0: 0.90})).set_index("claim")
    z = c.loc["U2AD S3 vs Z-scoring (does U2AD beat the intensity threshold?)"]
    assert (z["0.5x"], z["1x"], z["2x"]) == ("worse", "no clear difference", "better")
    assert z["verdict"] == "changes with the budget"


def test_claims_with_a_missing_row_are_not_a_verdict():
    t = _table({0.5: 0.9, 1.0: 0.9})
    t = t[~((t["budget"] == 0.5) & (t["strategy"] == "S1"))]
    c = B.budget_claims(t).set_index("claim")
    row = c.loc["U2AD S3 vs U2AD S1 (does adaptation help?)"]
    assert row["0.5x"] == "not measured" and row["1x"] == "better"
    assert row["verdict"] == "not measured at every budget"


def test_point_notebook_parameters():
    nb = json.loads((ROOT / B.POINT_NOTEBOOK).read_text())
    params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1
    src = "".join(params[0]["source"])
    for name in ("preset", "device", "seed", "data_dir", "run_dir", "overrides", "budget", "code"):
        assert f"{name} =" in src
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_train_seconds_reads_the_run_record(tmp_path):
    (tmp_path / "done.json").write_text(json.dumps({"wall_s": 12.5}))
    assert train_seconds(tmp_path) == 12.5
    assert np.isnan(train_seconds(tmp_path / "missing")) and np.isnan(train_seconds(None))


@pytest.mark.slow
def test_adaptation_budget_scores_the_book_s3_and_a_longer_adaptation(tmp_path):
    """The reduced budget of the default book: U2AD S3 at 1x and 2x adaptation and Z-scoring, in the
    sweep's format, so that budget_claims decides 'U2AD S3 vs Z-scoring' at both budgets."""
    from u2ad_core.book.notebook import setup
    from u2ad_core.core.presets import longer_adaptation
    from u2ad_core.method.train import adapt, strategy_model

    ctx = setup(preset="smoke", data_dir=tmp_path / "data", run_dir=tmp_path / "runs", show=False)
    cfg, cohort = ctx.preset, "renji_like"
    _, s1 = strategy_model(ctx, "renji_like", "S1", show_progress=False)
    _, s3 = strategy_model(ctx, cohort, "S3", show_progress=False)
    paths = B.prepare_all(cfg, ctx.data_dir, seed=ctx.seed, verbose=False, show_progress=False)
    long_cfg = cfg.override(**longer_adaptation(cfg))
    long_run = adapt(long_cfg, paths[cohort], ctx.run_dir, init=s1, masking="u2ad", name=f"{cohort}-S3-u2ad",
                     device="cpu", seed=0, show_progress=False)
    T = B.adaptation_budget(ctx, cohort, {1.0: (cfg, s3), 2.0: (long_cfg, long_run.run_path)})
    assert sorted(T["budget"].unique()) == [1.0, 2.0]
    assert set(zip(T["method"], T["strategy"])) == {("U2AD", "S3"), ("Z-scoring", "none")}
    assert list(T.loc[T["method"] == "U2AD", "adapt_epochs"]) == [cfg.adapt.epochs, 2 * cfg.adapt.epochs]
    z = T[T["method"] == "Z-scoring"]
    assert z["patient_auroc"].nunique() == 1  # no training: the same at every budget
    claims = B.budget_claims(T).set_index("claim")
    row = claims.loc[[c for c in claims.index if "Z-scoring" in c][0]]
    assert row["verdict"] in {"holds at every budget", "changes with the budget"}
