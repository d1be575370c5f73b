"""The named presets (``smoke``, ``cpu``, ``paper``, ``paper_ci``) and dotted overrides.

A :class:`Preset` is a frozen tree of the dataclasses of :mod:`u2ad_core.core.config`; its
defaults are the paper's. Every named preset is written one way: a dict of dotted overrides
on those defaults (:data:`PRESETS`; ``paper`` is the empty dict, ``paper_ci`` is ``paper``'s
plus its own). :func:`get_preset` builds one and applies further dotted overrides
(``get_preset("cpu", **{"pretrain.epochs": 3})``), so that papermill parameters can change any
field without editing code. :meth:`Preset.hash` gives a stable hash of the whole tree,
experiment grids (``preset.grids``) included; cached artefacts hash only the sub-configs that
produced them (:func:`u2ad_core.core.config.config_hash`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from u2ad_core.core.config import (
    AdaptConfig,
    BaselineConfig,
    DataConfig,
    DetectorConfig,
    EvalConfig,
    GridsConfig,
    MaskingConfig,
    MCConfig,
    ModelConfig,
    ScoreConfig,
    TrainConfig,
    config_hash,
    to_dict,
)

__all__ = [
    "as_parameters",
    "Preset",
    "PRESETS",
    "SMOKE_OVERRIDES",
    "CPU_OVERRIDES",
    "PAPER_OVERRIDES",
    "PAPER_CI_OVERRIDES",
    "get_preset",
    "longer_adaptation",
    "publish_overrides",
]


@dataclass(frozen=True)
class Preset:
    """One complete, named configuration of the whole pipeline (defaults: the paper's)."""

    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    mc: MCConfig = field(default_factory=MCConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    grids: GridsConfig = field(default_factory=GridsConfig)  # notebooks 08, 10 and 12

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def hash(self) -> str:
        return config_hash(self)

    def override(self, **overrides: Any) -> "Preset":
        """Return a copy with dotted-key overrides applied, e.g. ``{"pretrain.epochs": 3}``."""
        return _apply_overrides(self, overrides)


# --------------------------------------------------------------------------------------
# Dotted overrides
# --------------------------------------------------------------------------------------
def _coerce(value: Any, current: Any) -> Any:
    """Coerce an override to the type of the current value (papermill passes lists); ``None``
    stays ``None`` (an optional field such as ``adapt.refresh_k``)."""
    if value is None:
        return None
    if isinstance(current, tuple) and isinstance(value, str) and value.lstrip().startswith(("(", "[")):
        raise ValueError(f"expected a sequence, got its text {value!r} (pass a list; see as_parameters)")
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        if len(value) != len(current):  # variable-length tuples (e.g. method lists)
            return tuple(value)
        return tuple(_coerce(v, c) for v, c in zip(value, current))
    if isinstance(current, bool):
        if isinstance(value, str):
            return value.lower() in {"1", "true", "yes", "on"}
        return bool(value)
    if isinstance(current, int) and not isinstance(value, bool):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


def _apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    grouped: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    names = {f.name for f in fields(cfg)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise KeyError(
                f"unknown config field {prefix + key!r} for {type(cfg).__name__}; "
                f"known fields: {sorted(names)}"
            )
        if rest:
            grouped.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    changes: dict[str, Any] = {}
    for head, value in direct.items():
        current = getattr(cfg, head)
        if is_dataclass(current):
            if isinstance(value, dict):
                grouped.setdefault(head, {}).update(value)
                continue
            if not isinstance(value, type(current)):
                raise TypeError(f"{head} must be a {type(current).__name__} or a dict")
            changes[head] = value
        else:
            changes[head] = _coerce(value, current)
    for head, sub in grouped.items():
        changes[head] = _apply_overrides(changes.get(head, getattr(cfg, head)), sub, f"{prefix}{head}.")
    return replace(cfg, **changes)


def as_parameters(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` as a notebook parameter: tuples (at any depth) become lists.

    papermill writes a parameter's dict values with its Python translator, which knows lists but
    writes any other sequence as its ``str()``: a tuple override such as ``("faint", "mixed")``
    would reach the notebook as the text ``"('faint', 'mixed')"`` and a grid would iterate its
    characters. Lists are coerced back to the field's tuple by :meth:`Preset.override`."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {k: plain(v) for k, v in (overrides or {}).items()}


def _under(prefix: str, **values: Any) -> dict[str, Any]:
    """``_under("mc", k=3)`` -> ``{"mc.k": 3}``: dotted overrides of one sub-config."""
    return {f"{prefix}.{k}": v for k, v in values.items()}


# --------------------------------------------------------------------------------------
# The presets: dotted overrides on the paper's defaults
# --------------------------------------------------------------------------------------
def _detectors_small(epochs: int, width: int, kinds: tuple[str, ...] = ("mask_rcnn", "detr")) -> dict[str, Any]:
    """The supervised detectors shrunk for a CPU: a ``width``-wide backbone, small heads, few
    anchors and RoIs per image, a 64-wide DETR with 2 + 2 layers and 10 queries, AdamW at 1e-3
    (from scratch at this size 1e-4 barely moves in a few epochs), a checkpoint every half run; the
    paper's two detectors (Faster R-CNN is Mask R-CNN without the mask head)."""
    return _under("detectors", epochs=epochs, batch_size=8, lr=1e-3, width=width, head_dim=128, rpn_batch=64,
                  roi_batch=64, rpn_pre_nms=300, rpn_post_nms=50, max_detections=20, d_model=64, heads=4,
                  enc_layers=2, dec_layers=2, n_queries=10, checkpoint_every=max(1, epochs // 2), kinds=kinds)


def _baselines_small(epochs: tuple[int, int], width: int, latent: int, batch: int,
                     ddpm: tuple[int, int], s2: tuple[str, ...],
                     beyond_epochs: tuple[int, int] | None = None) -> dict[str, Any]:
    """Baselines shrunk for a CPU: tiny nets, few epochs, S2 only for ``s2``, Figure 6 from
    the pretrained (S1) models, AnoDDPM with T and the partial steps scaled down together
    (paper: 40 of 1000 steps; ``ddpm`` = (T, partial steps)), cDDPM at ``width`` with a
    ``latent``-sized conditioning vector (its T stays 1000: one U-Net pass per noise level),
    Brainomaly with 2 residual blocks and a 4-level critic, its refiner with a 5-step chain (the
    seed's 50, at the same noise level) and attention at H/8 x W/8, DAL's two modules
    updated in alternate steps; ``beyond_epochs``: the epochs of those methods beyond the paper
    (``None``: ``epochs``)."""
    return {
        **_under("baselines", pretrain_epochs=epochs[0], adapt_epochs=epochs[1], batch_size=batch, width=width,
                 s2_methods=s2, pseudo_strategy="S1", beyond_epochs=beyond_epochs),
        **_under("baselines.vae", latent_dim=latent, lr=1e-3),
        **_under("baselines.vaegan", latent_dim=latent),
        **_under("baselines.fanogan", latent_dim=latent, lr=2e-4),
        **_under("baselines.anoddpm", timesteps=ddpm[0], partial_steps=ddpm[1], lr=1e-3),
        **_under("baselines.cddpm", unet_width=width, encoder_width=width, cond_dim=latent, lr=1e-3),
        **_under("baselines.brainomaly", g_width=width, g_blocks=2, d_width=2 * width, d_levels=4, lr=2e-4),
        **_under("baselines.brainomaly.refiner", timesteps=5, steps=5, width=width, levels=3, lr=1e-3),
        **_under("baselines.dal", alternate=True, lr=1e-3),
    }


SMOKE_OVERRIDES: dict[str, Any] = {
    **_under("data", pixel_mm=1.5, image_size=(128, 48), crop="cord_band", slices_pretrain=3, slices_pseudo=2,
             n_sagittal_healthy=9, n_sagittal_clinical=7),
    **_under("data.cohorts", spine_generic_like=12, openneuro_like=6, renji_like=20, ruijin_like=20),
    **_under("model", image_size=(128, 48), embed_dim=48, depth=2, num_heads=4,
             decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4),
    **_under("mc", k=3, batch_size=16),  # 16 passes per forward: fastest on a 2-core CPU
    **_under("pretrain", epochs=2, lr=1e-3, lr_step=50, checkpoint_every=1),
    **_under("adapt", epochs=2, lr=1e-3, lr_step=50, stage2_start=1, refresh_every=1, checkpoint_every=1,
             snapshot_every=1),
    "score.k": 3, "eval.n_repeats": 2,
    **_baselines_small(epochs=(1, 1), width=4, latent=16, batch=16, ddpm=(100, 4), s2=("dae",)),
    **_detectors_small(epochs=1, width=4),
    **_under("grids.ablation", k_values=(3, 5), taus=(10.0,), mask_ratios=(0.5,), grid_adapt_epochs=1,
             grid_stage2_start=1, noise_sigmas=(0.0, 0.1), downsample=(2, 4), cv_repeats=2),
    **_under("grids.crossover", conspicuity=("faint", "intense"), coupling=("clinical",), artefacts=(True,),
             s3_points=(), inhomogeneity=(4.0,)),
    **_under("grids.budget", factors=(0.5, 1.0), in_book=True),
}
"""``smoke``: tiny, the whole book in a few minutes on a 2-core CPU (CI)."""

CPU_OVERRIDES: dict[str, Any] = {
    **_under("data", pixel_mm=1.0, image_size=(192, 64), crop="cord_band", slices_pretrain=6, slices_pseudo=4,
             n_sagittal_healthy=15, n_sagittal_clinical=11),
    **_under("data.cohorts", spine_generic_like=40, openneuro_like=12, renji_like=60, ruijin_like=48),
    # depth 4; context radius 1: the ROI patches and their 8 neighbours, about half of the 192
    # tokens (41.6 ROI patches per slice on average), ~3.5x fewer seconds per training epoch
    # (scripts/recipe_sweep.py, 2 cores: ~1.0 s per adaptation epoch of 180 slices, was ~3.7)
    **_under("model", image_size=(192, 64), embed_dim=128, depth=4, num_heads=8,
             decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, context_radius=1),
    **_under("mc", k=10, batch_size=16),  # 16 passes per forward: fastest on a 2-core CPU
    # Budget (chapter 12): the first budget sweep (0.5x-4x every epoch count, an earlier preset)
    # moved U2AD S3 with the adaptation epochs, not with the pretraining ones; adaptations train
    # two at a time on 2 cores (train_strategies).
    # The competent-model recipe (issue 29; scripts/recipe_sweep.py and scripts/seed_spread.py on
    # renji_like's lesion-free middle slices; interior residual of the S3 MC mean / the cord-mean
    # predictor's, median over slices): the paper's per-image min-max after augmentation
    # (renormalize) made every training cord look alike, so the dim cords of the clinical cohort
    # were reconstructed too bright (1.16 -> 1.03 without it, pooled 0.47 -> 0.15); the context
    # radius pays for the longer training (radius 0, the cord's patches alone, halves the time
    # again but costs 0.83 -> 0.89); the pretraining, shared by every adaptation, 40 / 80 / 120 /
    # 160 epochs -> 0.98 / 0.94 / 0.90 / 0.90 with 48 adaptation epochs. From the 120-epoch
    # pretraining, the adaptation's epochs at lr 1e-3 decide the rest (1 thread, training seeds
    # in brackets): 24 + 24 epochs at 1e-3 + 1e-4 (here) 0.938 / 0.938 / 0.945 (0-2); 48 + 24
    # 0.914 / 0.861 (0, 1); 72 + 24 (CPU_LONG) 0.857 / 0.813 / 0.826 (0-2), 0.883 from another
    # pretraining run; 72 + 72 0.815 / 0.785 (0, 1). Not instead of epochs: lr 2e-3 (0.94, 0.95),
    # a cosine decay to 1e-5 (0.93), batch 4 for the same steps (0.92, 0.93), twice the
    # pretraining subjects for half the epochs (0.90, 0.97).
    **_under("pretrain", epochs=120, lr=1e-3, lr_step=90, checkpoint_every=30, renormalize=False),
    # the refreshes in between steer the masking with K = 5 (the authors' inference script's
    # K): half the passes; the scoring maps keep K = 10
    **_under("adapt", epochs=48, lr=1e-3, lr_step=24, stage2_start=32, refresh_every=16, refresh_k=5,
             checkpoint_every=16, snapshot_every=8, renormalize=False),
    "score.k": 10, "eval.n_repeats": 5,
    # the methods beyond the paper (notebook 13) train 1 + 1 epochs, within that chapter's ~75 s of the
    # budget (measured on 2 cores: the chapter 66-76 s, of which training its 12 runs 25-29 s)
    **_baselines_small(epochs=(3, 2), width=4, latent=32, batch=16, ddpm=(250, 10), s2=("vae", "dae"),
                       beyond_epochs=(1, 1)),
    # measured (2 cores, ~110 slices of 192 x 64): ~0.6 s per epoch for each kind. Mask R-CNN on renji_like:
    # 4 epochs put no top box on a lesion segment (0 of 37), 8 epochs 9, 12 epochs 21 (segment F1 0.61);
    # DETR stays near chance at any epoch count a CPU affords. 20 runs (5 folds x 2 cohorts x 2 kinds)
    # x 12 epochs, two 1-thread runs at a time (cross_validate_detectors)
    **_detectors_small(epochs=12, width=8),
    # Table 3 on renji_like only: its models are trained by notebooks 04, 05 and 07 already;
    # ruijin_like would need two more adaptations (~2 minutes of the book's 25)
    **_under("grids.ablation", k_values=(3, 5, 10, 15, 20), taus=(0.1, 1.0, 10.0), mask_ratios=(0.75, 0.95),
             grid_adapt_epochs=2, grid_stage2_start=1, noise_sigmas=(0.0, 0.05, 0.1, 0.2), downsample=(2, 4),
             cv_repeats=None, table3_cohorts=("renji_like",), control_cohorts=("renji_like",)),
    # 2 grid points + 2 inhomogeneity points (each point regenerates and scores a 60-patient cohort:
    # about a minute per pair of points on 2 workers; the 8-point grid put the cpu book over its 25
    # minutes, and 6 points still took 23.5-25.5 minutes on 2 cores); artefacts on only (the calibrated
    # default; in the 6-point runs switching them off moved no detector's patient AUROC by more than
    # 0.04; the paper grid keeps both); no per-point adaptation (S3*, the book's S3 model, is scored
    # everywhere instead); the compression-only AUROC of every coupling is still shown by Figure 2
    **_under("grids.crossover", conspicuity=("faint", "intense"), coupling=("clinical",), artefacts=(True,),
             s3_points=(), inhomogeneity=(4.0,)),
    # the chapter reads a finished sweep: 3740 s measured on 2 workers with the earlier 12 adaptation epochs
    **_under("grids.budget", in_book=False, minutes_estimate=62.0),
}
"""``cpu`` (default): meaningful results within the book's 25-minute budget on a 2-core CPU."""

def longer_adaptation(preset: Preset, factor: int = 2) -> dict[str, Any]:
    """Dotted overrides for ``factor`` times the adaptation epochs of ``preset``, in the proportions
    of ``cpu_long``: the learning rate held for the first three quarters of the epochs, stage 2
    from two thirds, a map refresh (and checkpoint) every third. For ``cpu`` (48 -> 96 epochs:
    72 at lr 1e-3, 24 at 1e-4, stage 2 from 64) these are ``cpu_long``'s adaptation fields."""
    e = max(2, int(factor) * int(preset.adapt.epochs))
    third = max(1, round(e / 3))
    return _under("adapt", epochs=e, lr_step=max(1, round(0.75 * e)), stage2_start=min(e - 1, 2 * third),
                  refresh_every=third, checkpoint_every=third)


def publish_overrides(preset: Preset) -> dict[str, Any]:
    """Dotted overrides that turn ``preset``'s reduced book into the complete one that is published
    (``make publish``): the full crossover grid of :class:`CrossoverGrid` with an S3 adaptation at
    every point, the budget sweep run by chapter 12 at every factor of :class:`BudgetGrid`, and
    Table 3 and the masking controls on both cohorts. Only the grids change: the book's own
    training runs keep their specs, so a publish build after ``make book`` reuses its models."""
    full = GridsConfig()
    cross, budget, abl = full.crossover, full.budget, full.ablation
    return {
        **_under("grids.crossover", conspicuity=cross.conspicuity, coupling=cross.coupling,
                 artefacts=cross.artefacts, s3_points="all", inhomogeneity=cross.inhomogeneity),
        **_under("grids.budget", factors=budget.factors, in_book=True),
        **_under("grids.ablation", table3_cohorts=abl.table3_cohorts, control_cohorts=abl.control_cohorts),
    }


def _cpu_long() -> dict[str, Any]:
    return {**CPU_OVERRIDES, **longer_adaptation(Preset(name="cpu").override(**CPU_OVERRIDES))}


CPU_LONG_OVERRIDES: dict[str, Any] = _cpu_long()
"""``cpu_long``: ``cpu`` with twice the adaptation epochs (:func:`longer_adaptation`), the schedule at
which the adapted model's median healthy-cord residual is below the 0.9 margin (interior residual
0.81-0.86 x the cord-mean predictor's over three training seeds, per patient not yet clearly; against 0.94 for ``cpu``'s 48 epochs; see the comment in
``CPU_OVERRIDES``): the book's findings on that model, at the cost of every adaptation
taking twice as long, over the default book's 25-minute budget on 2 cores."""

PAPER_OVERRIDES: dict[str, Any] = {}
"""``paper``: the paper's sizes, epochs and grids (the defaults, section 4.3), for a GPU."""

PAPER_CI_OVERRIDES: dict[str, Any] = {
    **PAPER_OVERRIDES,
    # model: the paper's widths, heads and patch on the paper's 256 x 256 grid (1024 patches), but
    # 2 / 1 blocks instead of 24 / 8: the same block code runs fewer times (24 / 8 costs ~0.65 s per
    # MC pass on 2 cores, which made notebook 04 alone take minutes); tests/test_model.py runs the
    # full-depth paper model once (forward, backward, MC)
    **_under("model", depth=2, decoder_depth=1),
    # data: the paper's geometry (1 mm, 256 x 256 centre crop, 11 thick clinical slices), few subjects
    **_under("data.cohorts", spine_generic_like=4, openneuro_like=2, renji_like=10, ruijin_like=20),
    **_under("data", slices_pretrain=2, slices_pseudo=2, slices_adapt=1, n_sagittal_healthy=9),
    # training: one epoch, both adaptation stages, a map refresh every epoch
    **_under("pretrain", epochs=1, checkpoint_every=1),
    **_under("adapt", epochs=2, stage2_start=1, refresh_every=1, checkpoint_every=1),
    "mc.k": 2, "score.k": 2, "eval.n_repeats": 1,
    # baselines: every method and strategy of the paper (S2 for all, Figure 6 from S3), tiny sizes
    **_under("baselines", pretrain_epochs=1, adapt_epochs=1, width=4, infer_batch=8),
    "baselines.anoddpm.partial_steps": 2,
    **_under("baselines.cddpm", unet_width=4, encoder_width=4, cond_dim=16),
    **_under("baselines.brainomaly", g_width=4, d_width=4),
    # the refiner's self-attention at H/8 x W/8 (1024 pixels) instead of H/2 x W/2: at 128 x 128 (16384^2
    # scores per image) notebook 13's kernel died training it on a 2-core CPU machine
    **_under("baselines.brainomaly.refiner", width=8, steps=2, levels=3),
    # the supervised detectors (notebook 13): all three kinds, one epoch, tiny widths
    **_under("detectors", epochs=1, width=4, head_dim=32, rpn_batch=64, roi_batch=64, d_model=32, heads=4,
             enc_layers=1, dec_layers=1, n_queries=10),
    # the grids: the paper's protocol (full adaptation per grid point, the preset's CV repeats, S3 adapted
    # at every crossover point) on one or two values per axis
    **_under("grids.ablation", k_values=(2, 3), taus=(1.0,), mask_ratios=(0.75,), noise_sigmas=(0.0, 0.1),
             downsample=(2,)),
    **_under("grids.crossover", conspicuity=("intense",), coupling=("clinical",), artefacts=(True,),
             s3_points="all", inhomogeneity=(4.0,)),
    **_under("grids.budget", factors=(0.5, 1.0), in_book=True),
}
"""``paper_ci``: the ``paper`` preset shrunk by these overrides (CI runs it on CPU: ``make paper-ci``).

It keeps what only ``paper`` does: the 256 x 256 centre crop and the paper's model widths on
that grid (2 / 1 blocks instead of 24 / 8), full adaptations at every ablation grid point, S2 for
every baseline and Figure 6 from S3 models, S3 at every crossover point, all cohorts in every
control; and shrinks the sizes: subjects, slices, epochs, K, CV repeats, baseline widths, grid
values (``preset.grids``)."""

PRESETS: dict[str, dict[str, Any]] = {"smoke": SMOKE_OVERRIDES, "cpu": CPU_OVERRIDES, "cpu_long": CPU_LONG_OVERRIDES,
                                      "paper": PAPER_OVERRIDES, "paper_ci": PAPER_CI_OVERRIDES}
"""Preset name -> its dotted overrides on the paper's defaults (:class:`Preset`)."""


def get_preset(name: str = "cpu", **overrides: Any) -> Preset:
    """Build the named preset and apply dotted overrides.

    >>> get_preset("smoke", **{"pretrain.epochs": 1}).pretrain.epochs
    1
    """
    try:
        preset_overrides = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    preset = Preset(name=name).override(**preset_overrides)
    return preset.override(**overrides) if overrides else preset


def _check_model_matches_data(p: Preset) -> None:  # pragma: no cover - sanity at import
    assert p.model.image_size == p.data.image_size, p.name
    h, w = p.model.image_size
    assert h % p.model.patch_size == 0 and w % p.model.patch_size == 0, p.name


for _name in PRESETS:
    _check_model_matches_data(get_preset(_name))
del _name
