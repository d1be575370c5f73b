import json

import pytest

from u2ad_core.core.config import MODEL_AUTHORS, MODEL_PAPER, PRESETS, config_hash, get_preset


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
    from dataclasses import replace

    from u2ad_core.core.config import PAPER_CI_OVERRIDES
    from u2ad_core.experiments.crossover import crossover_grid
    from u2ad_core.book.sweep import ablation_grid

    paper, ci = get_preset("paper"), get_preset("paper_ci")
    assert ci.model == replace(paper.model, depth=2, decoder_depth=1) and ci.model.context_radius is None
    assert (ci.data.image_size, ci.data.crop, ci.data.pixel_mm) == (paper.data.image_size, "centre", 1.0)
    assert ci.data.n_sagittal_clinical == paper.data.n_sagittal_clinical
    assert ci.baselines.s2_methods == paper.baselines.s2_methods and ci.baselines.pseudo_strategy == "S3"
    assert ci.eval.n_folds == paper.eval.n_folds and ci.masking == paper.masking
    assert get_preset("paper", **PAPER_CI_OVERRIDES).to_dict() | {"name": "paper_ci"} == ci.to_dict()
    ag, pg = ablation_grid("paper_ci"), ablation_grid("paper")
    assert ag.grid_adapt_epochs is None and ag.cv_repeats is None and ag.grid_cohort == pg.grid_cohort
    assert ci.mc.k in ag.k_values
    assert crossover_grid("paper_ci").s3_points == "all"
