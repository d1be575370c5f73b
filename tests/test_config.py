import json
from dataclasses import fields, replace

import pytest

from u2ad_core.core.config import COHORTS, MODEL_AUTHORS, MODEL_PAPER, CohortSizes, GridsConfig, config_hash
from u2ad_core.core.presets import PAPER_CI_OVERRIDES, PRESETS, Preset, get_preset
from u2ad_core.data.phantom import COHORT_SPECS as SPECS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_are_consistent(name):
    p = get_preset(name)
    assert p.name == name
    assert p.model.image_size == p.data.image_size
    h, w = p.model.image_size
    assert h % p.model.patch_size == 0 and w % p.model.patch_size == 0
    assert p.model.embed_dim % p.model.num_heads == 0
    assert p.model.decoder_embed_dim % p.model.decoder_num_heads == 0
    assert 0 < p.masking.mask_ratio < 1
    assert p.adapt.stage2_start <= p.adapt.epochs
    json.dumps(p.to_dict())  # serialisable for manifests and checkpoints


def test_paper_preset_matches_paper_section_4_3():
    p = get_preset("paper")
    assert p.model.depth == 24 and p.model.decoder_depth == 8 and p.model.patch_size == 8
    assert p.data.image_size == (256, 256) and p.data.pixel_mm == 1.0
    assert p.pretrain.epochs == 200 and p.adapt.epochs == 200 and p.adapt.stage2_start == 150
    assert p.pretrain.lr == 3e-3 and p.pretrain.betas == (0.9, 0.95) and p.pretrain.batch_size == 8
    assert p.masking.mask_ratio == 0.75 and p.mc.k == 10 and p.model.edge_weight == 0.1
    assert MODEL_PAPER.depth == 24 and MODEL_AUTHORS.depth == 12


def test_overrides_apply_and_change_hash():
    base = get_preset("cpu")
    p = get_preset("cpu", **{"pretrain.epochs": 3, "masking.tau": "10", "data.image_size": [64, 32]})
    assert p.pretrain.epochs == 3 and p.masking.tau == 10.0 and p.data.image_size == (64, 32)
    assert p.hash() != base.hash()
    assert get_preset("cpu").hash() == base.hash()  # stable
    assert config_hash(base.model) == config_hash(get_preset("cpu").model)


def test_bad_overrides_are_clear():
    with pytest.raises(KeyError, match="unknown config field 'pretrain.epochz'"):
        get_preset("cpu", **{"pretrain.epochz": 3})
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("laptop")
    with pytest.raises(ValueError):
        get_preset("cpu", **{"pretrain.epochs": 2.5})


def test_paper_ci_keeps_what_only_paper_does():
    """``paper_ci`` = ``paper`` + PAPER_CI_OVERRIDES: the paper's model, geometry and protocol
    switches, with small sizes only."""
    paper, ci = get_preset("paper"), get_preset("paper_ci")
    assert ci.model == replace(paper.model, depth=2, decoder_depth=1) and ci.model.context_radius is None
    assert (ci.data.image_size, ci.data.crop, ci.data.pixel_mm) == (paper.data.image_size, "centre", 1.0)
    assert ci.data.n_sagittal_clinical == paper.data.n_sagittal_clinical
    assert ci.baselines.s2_methods == paper.baselines.s2_methods and ci.baselines.pseudo_strategy == "S3"
    assert ci.eval.n_folds == paper.eval.n_folds and ci.masking == paper.masking
    assert get_preset("paper", **PAPER_CI_OVERRIDES).to_dict() | {"name": "paper_ci"} == ci.to_dict()
    ag, pg = ci.grids.ablation, paper.grids.ablation
    assert ag.grid_adapt_epochs is None and ag.cv_repeats is None and ag.grid_cohort == pg.grid_cohort
    assert ag.table3_cohorts == ag.control_cohorts == COHORTS
    assert ci.mc.k in ag.k_values and len(ag.k_values) < len(pg.k_values)
    assert ci.grids.crossover.s3_points == "all" and ci.grids.crossover.cohort == paper.grids.crossover.cohort


def test_presets_are_dotted_overrides_on_the_paper_defaults():
    assert get_preset("paper") == Preset(name="paper") and PRESETS["paper"] == {}
    assert get_preset("paper").grids == GridsConfig() and get_preset("paper").model == MODEL_PAPER
    for name, overrides in PRESETS.items():
        assert all("." in k for k in overrides), name  # one way to write a preset: dotted keys only
        assert get_preset(name) == Preset(name=name).override(**overrides)


@pytest.mark.parametrize("key, value, read", [
    ("grids.ablation.taus", [0.5, 2], lambda p: p.grids.ablation.taus),
    ("grids.crossover.conspicuity", ["faint"], lambda p: p.grids.crossover.conspicuity),
    ("grids.budget.factors", [1, 3], lambda p: p.grids.budget.factors),
    ("grids.budget.in_book", "true", lambda p: p.grids.budget.in_book),
])
def test_grids_are_preset_fields_in_the_hash(key, value, read):
    base = get_preset("cpu")
    p = get_preset("cpu", **{key: value})
    assert read(p) != read(base) and isinstance(read(p), type(read(base)))
    assert p.hash() != base.hash()
    # the grids are not in any run's hash: the sub-configs that training hashes are unchanged
    for sub in ("data", "model", "masking", "mc", "pretrain", "adapt", "score", "eval", "baselines", "detectors"):
        assert config_hash(getattr(p, sub)) == config_hash(getattr(base, sub)), sub
    assert base.override(**{key: value}) == p


def test_grids_override_as_a_nested_dict_and_reject_unknown_fields():
    p = get_preset("smoke", grids={"budget": {"factors": [0.5, 1, 2]}, "crossover": {"s3_points": "all"}})
    assert p.grids.budget.factors == (0.5, 1.0, 2.0) and p.grids.crossover.s3_points == "all"
    assert p.grids.ablation == get_preset("smoke").grids.ablation
    with pytest.raises(KeyError, match="unknown config field 'grids.ablation.tau'"):
        get_preset("smoke", **{"grids.ablation.tau": [1.0]})


def test_each_preset_has_its_own_grids():
    g = {name: get_preset(name).grids for name in PRESETS}
    assert g["cpu"].budget.in_book is False and g["cpu"].budget.minutes_estimate == 62.0
    assert g["smoke"].ablation.cv_repeats == 2 and g["cpu"].ablation.cv_repeats is None
    assert g["smoke"].crossover.s3_points == g["cpu"].crossover.s3_points == ()
    assert g["cpu_long"] == g["cpu"]  # cpu_long changes the adaptation alone
    g.pop("cpu_long")
    assert len({config_hash(x) for x in g.values()}) == len(g)  # four different grid sets


def test_cpu_long_is_cpu_with_the_longer_adaptation():
    from u2ad_core.core.presets import longer_adaptation

    cpu, long_ = get_preset("cpu"), get_preset("cpu_long")
    assert long_.to_dict() | {"name": "cpu"} == cpu.override(**longer_adaptation(cpu)).to_dict()
    a = long_.adapt
    assert (a.epochs, a.lr_step, a.stage2_start, a.refresh_every) == (96, 72, 64, 32)  # the measured schedule
    assert long_.pretrain == cpu.pretrain and long_.model == cpu.model
    for name in ("smoke", "paper_ci", "paper"):  # valid schedules at every size
        p = get_preset(name)
        b = p.override(**longer_adaptation(p)).adapt
        assert b.epochs == 2 * p.adapt.epochs and 1 <= b.stage2_start < b.epochs and b.refresh_every >= 1


def test_cohorts_are_the_clinical_phantom_cohorts():
    assert COHORTS == tuple(n for n, spec in SPECS.items() if spec.diagnosis == "DCM")
    assert set(COHORTS) < {f.name for f in fields(CohortSizes)}


def test_publish_overrides_complete_the_grids_and_keep_the_trained_models():
    """make publish: the full grids, the same training specs (the book's models are reused)."""
    from u2ad_core.core.presets import publish_overrides

    for name in ("cpu", "smoke"):
        base = get_preset(name)
        pub = get_preset(name, **publish_overrides(base))
        full = GridsConfig()
        assert pub.grids.crossover.grid() == full.crossover.grid() and pub.grids.crossover.s3_points == "all"
        assert pub.grids.budget.in_book and pub.grids.budget.factors == full.budget.factors
        assert pub.grids.ablation.table3_cohorts == full.ablation.table3_cohorts
        for part in ("data", "model", "masking", "pretrain", "adapt", "mc", "score", "eval", "baselines"):
            assert getattr(pub, part) == getattr(base, part), part


def test_overrides_reach_a_notebook_as_papermill_writes_them():
    """The overrides parameter goes through papermill's Python translator; tuple overrides (the
    publish grids) must come back as the same preset, not as their text (a grid of characters)."""
    from papermill.translators import PythonTranslator

    from u2ad_core.core.presets import as_parameters, publish_overrides

    overrides = publish_overrides(get_preset("cpu"))
    assert any(isinstance(v, tuple) for v in overrides.values())
    code = PythonTranslator.codify({"overrides": as_parameters(overrides)})
    ns: dict = {}
    exec(code, ns)  # noqa: S102 - the parameters cell papermill injects
    assert get_preset("cpu", **ns["overrides"]) == get_preset("cpu", **overrides)
    # without the conversion the grid would be text
    raw: dict = {}
    exec(PythonTranslator.codify({"overrides": overrides}), raw)  # noqa: S102
    assert isinstance(raw["overrides"]["grids.crossover.conspicuity"], str)
    with pytest.raises(ValueError, match="got its text"):
        get_preset("cpu", **raw["overrides"])
