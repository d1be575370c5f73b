"""Typed configuration and the three named presets (``smoke``, ``cpu``, ``paper``).

Every number that comes from the paper (Zhang et al., "U2AD", see ``book/references.bib``)
is a named default here, with the section it comes from. Notebooks never hard-code sizes:
they call :func:`get_preset` and read fields from the returned :class:`Preset`.

A preset is a frozen tree of dataclasses; :func:`get_preset` accepts dotted overrides
(``get_preset("cpu", **{"pretrain.epochs": 3})``) so that papermill parameters can change any
field without editing code. :meth:`Preset.hash` gives a stable hash of the whole tree, and each
sub-config has its own :func:`config_hash` so that cached artefacts (datasets, checkpoints) are
reused only when the parts that produced them are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

__all__ = [
    "CohortSizes",
    "DataConfig",
    "ModelConfig",
    "MaskingConfig",
    "MCConfig",
    "TrainConfig",
    "AdaptConfig",
    "ScoreConfig",
    "EvalConfig",
    "Preset",
    "PRESETS",
    "MODEL_PAPER",
    "MODEL_AUTHORS",
    "get_preset",
    "config_hash",
    "to_dict",
]


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortSizes:
    """Number of subjects per phantom cohort (paper section 4.1).

    Paper: Spine Generic 270 healthy subjects; OpenNeuro 50 healthy subjects; RenjiDCM 125
    patients (78 with T2 hyperintensity); RuijinDCM 95 patients (9 with T2 hyperintensity).
    """

    spine_generic_like: int = 270
    openneuro_like: int = 50
    renji_like: int = 125
    ruijin_like: int = 95


@dataclass(frozen=True)
class DataConfig:
    """Phantom generation and preprocessing (paper section 4.3, method.md section 1).

    ``image_size`` is (H, W) = (superior-inferior rows, anterior-posterior columns) of the
    2D sagittal slices fed to the model. The paper resamples in-plane to 1 mm and centre-crops
    256 x 256 (section 4.3). ``crop="cord_band"`` instead crops a narrower band centred on the
    cord (used by the CPU presets to save tokens; the book says so).
    """

    pixel_mm: float = 1.0  # paper 4.3: in-plane resampling to 1 mm x 1 mm
    image_size: tuple[int, int] = (256, 256)  # paper 4.3: 256 x 256
    crop: str = "centre"  # "centre" (paper) or "cord_band"
    clip_percentiles: tuple[float, float] = (0.2, 99.8)  # authors' scripts: foreground clip
    slices_pretrain: int = 30  # paper 4.1: 30 middle sagittal slices of Spine Generic
    slices_pseudo: int = 8  # paper 4.1: 8 slices per OpenNeuro subject (50 x 8 = 400)
    slices_adapt: int = 3  # paper 4.1: 3 middle slices of the clinical sets for adaptation
    slices_detect: int = 1  # paper 4.1: the middle slice is used for detection
    cohorts: CohortSizes = field(default_factory=CohortSizes)
    n_sagittal_healthy: int = 36  # phantom: sagittal slices per healthy 3D volume
    n_sagittal_clinical: int = 15  # phantom: sagittal slices per clinical volume (thick slices)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """EdgeMAE sizes (paper section 4.3; authors' code for the widths).

    Paper: patch 8, 24 encoder / 8 decoder ViT blocks. Authors' code: encoder dim 128 with
    16 heads, decoder dim 64 with 8 heads, MLP ratio 4, sigmoid on both heads.
    """

    image_size: tuple[int, int] = (256, 256)
    patch_size: int = 8  # paper 4.3: "patch size 8 ... matches the width of the spinal cord"
    in_chans: int = 1
    embed_dim: int = 128  # authors' code
    depth: int = 24  # paper 4.3: 24 encoder blocks (authors' code: 12)
    num_heads: int = 16  # authors' code
    decoder_embed_dim: int = 64  # authors' code
    decoder_depth: int = 8  # paper 4.3: 8 decoder blocks
    decoder_num_heads: int = 8  # authors' code
    mlp_ratio: float = 4.0  # authors' code
    edge_weight: float = 0.1  # paper 4.3: loss weight lambda = 0.1
    sigmoid_heads: bool = True  # authors' code: sigmoid on the pixel and edge heads


MODEL_PAPER = ModelConfig()
"""The paper's depths (24 / 8) with the authors' widths."""

MODEL_AUTHORS = replace(ModelConfig(), depth=12)
"""The authors' released configuration: 12 encoder blocks (about 2.8 M parameters)."""


# --------------------------------------------------------------------------------------
# Masking and Monte-Carlo inference
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskingConfig:
    """ROI masking and the EU / AU guided samplers (paper sections 3.3-3.4, method.md 2, 4).

    ``eu_weighting``: ``"softmax"`` is this project's reading of the paper's intent (mask
    high-EU patches more often, Gumbel-top-k on softmax(normalised score / tau));
    ``"paper"`` is the paper's literal formula, kept for the ablation (method.md section 4).
    """

    mask_ratio: float = 0.75  # paper 4.3
    tau: float = 1.0  # paper Table 4: best tau = 1
    eu_weighting: str = "softmax"  # "softmax" (intent) or "paper" (literal formula)
    au_percentile: float = 90.0  # authors' code: pixels above the 90th pct of non-zero AU
    au_min_size: int = 2  # authors' code: drop components under 2 px
    au_component_score: str = "sum"  # paper: "sum"; authors' code: "mean_sum"
    au_top_k: int = 3  # paper 3.4: top-3 components are never masked


@dataclass(frozen=True)
class MCConfig:
    """Monte-Carlo uncertainty (paper Algorithm 1, section 3.2)."""

    k: int = 10  # paper: K = 10 reconstructions per patch (authors' inference script: 5)
    ddof: int = 1  # paper: unbiased variance (K - 1); authors' code: population (ddof 0)
    batch_size: int = 64  # images per batched forward group (engine detail, not from paper)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation for pretraining (paper section 4.3, method.md section 2)."""

    epochs: int = 200  # paper 4.3
    lr: float = 3e-3  # paper 4.3
    betas: tuple[float, float] = (0.9, 0.95)  # paper 4.3
    weight_decay: float = 0.0
    lr_step: int = 50  # paper 4.3: lr x 0.1 every 50 epochs
    lr_gamma: float = 0.1  # paper 4.3
    batch_size: int = 8  # paper 4.3
    brightness: tuple[float, float] = (0.8, 1.2)  # paper 4.3 augmentation
    contrast: tuple[float, float] = (0.8, 1.2)  # paper 4.3 augmentation
    noise_std: float = 0.02  # paper 4.3 ("variance of 0.02"; authors' code uses it as sigma)
    amp: bool = True  # mixed precision, CUDA only
    checkpoint_every: int = 10  # epochs between checkpoints (resume granularity)


@dataclass(frozen=True)
class AdaptConfig(TrainConfig):
    """Two-stage uncertainty-guided adaptation (paper Algorithm 2, section 3.4).

    The schedule restarts at adaptation epoch 0, so with the paper's numbers stage 2
    (epochs 150-199) runs at lr 3e-3 x 0.1^3 = 3e-6; ``restart_schedule_at_stage2`` is the
    option to restart it at stage 2 instead.
    """

    stage2_start: int = 150  # paper 4.3 / Algorithm 2: AU-guided masking from epoch 150
    refresh_every: int = 10  # paper: Q = 10 epochs between EU/AU map refreshes
    restart_schedule_at_stage2: bool = False  # paper / authors' code: one schedule (False)
    n_tracked: int = 4  # project: images whose EU/AU maps are saved at each refresh (plots)
    final_eval: bool = True  # project: MC maps + metrics once more after the last epoch


# --------------------------------------------------------------------------------------
# Scoring and evaluation
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreConfig:
    """Anomaly map, curve and scores (paper section 3.5, method.md section 5)."""

    k: int = 10  # MC reconstructions for the anomaly map (paper: K = 10)
    erode_cord: int = 0  # erosion iterations of the cord mask before scoring
    drop_bottom: float = 0.2  # paper 3.5: drop the bottom 20 % of map values (0 = off)
    top_components: int = 3  # paper 3.5: keep the top-3 connected components by sum (0 = off)
    connectivity: int = 8  # method.md 4-5: 8-connected components (4 = edge-connected)
    curve: str = "centreline"  # "centreline" (this project) or "rows" (paper 3.5.2)
    centreline_sigma: float = 4.0  # px, Gaussian smoothing of the per-row cord centre (project)


@dataclass(frozen=True)
class EvalConfig:
    """Detection protocol (paper sections 4.2-4.3 and Appendix F)."""

    n_folds: int = 5  # paper 4.3: 5-fold cross-validation
    n_repeats: int = 20  # paper Appendix F: 20 repetitions of the 5-fold CV
    sensitivity: float = 0.9  # paper 4.2: patient threshold at sensitivity 0.9
    segment_rule: str = "strict"  # project: "strict" (wrong segment = FP + FN) or "item"


# --------------------------------------------------------------------------------------
# Preset
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """One complete, named configuration of the whole pipeline."""

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

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def hash(self) -> str:
        return config_hash(self)

    def override(self, **overrides: Any) -> "Preset":
        """Return a copy with dotted-key overrides applied, e.g. ``{"pretrain.epochs": 3}``."""
        return _apply_overrides(self, overrides)


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain JSON-able dict (tuples become lists)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg: Any, n: int = 12) -> str:
    """Stable short hash of a config (dataclass, dict or JSON-able value)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _coerce(value: Any, current: Any) -> Any:
    """Coerce an override to the type of the current value (papermill passes lists)."""
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
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


def _smoke() -> Preset:
    """Tiny: the whole book in a few minutes on a 2-core CPU (CI)."""
    size = (128, 48)
    return Preset(
        name="smoke",
        data=DataConfig(
            pixel_mm=1.5,
            image_size=size,
            crop="cord_band",
            slices_pretrain=3,
            slices_pseudo=2,
            cohorts=CohortSizes(spine_generic_like=12, openneuro_like=6, renji_like=20, ruijin_like=20),
            n_sagittal_healthy=9,
            n_sagittal_clinical=7,
        ),
        model=ModelConfig(
            image_size=size, embed_dim=48, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4,
        ),
        mc=MCConfig(k=3),
        pretrain=TrainConfig(epochs=2, lr=1e-3, lr_step=50, checkpoint_every=1),
        adapt=AdaptConfig(epochs=2, lr=1e-3, lr_step=50, stage2_start=1, refresh_every=1,
                          checkpoint_every=1),
        score=ScoreConfig(k=3),
        eval=EvalConfig(n_repeats=2),
    )


def _cpu() -> Preset:
    """Default: meaningful results within the book's 25-minute budget on a 2-core CPU."""
    size = (192, 64)
    return Preset(
        name="cpu",
        data=DataConfig(
            pixel_mm=1.0,
            image_size=size,
            crop="cord_band",
            slices_pretrain=6,
            slices_pseudo=4,
            cohorts=CohortSizes(spine_generic_like=40, openneuro_like=12, renji_like=60, ruijin_like=48),
            n_sagittal_healthy=15,
            n_sagittal_clinical=11,
        ),
        model=ModelConfig(
            image_size=size, embed_dim=128, depth=4, num_heads=8,  # depth 4: ~0.2 s per batch-8 step on 1 core
            decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
        ),
        mc=MCConfig(k=10),
        pretrain=TrainConfig(epochs=30, lr=1e-3, lr_step=20, checkpoint_every=5),
        adapt=AdaptConfig(epochs=20, lr=1e-3, lr_step=15, stage2_start=15, refresh_every=5,
                          checkpoint_every=5),
        score=ScoreConfig(k=10),
        eval=EvalConfig(n_repeats=5),
    )


def _paper() -> Preset:
    """The paper's sizes and epochs (section 4.3), for a GPU."""
    return Preset(name="paper", data=DataConfig(), model=MODEL_PAPER)


PRESETS: dict[str, Any] = {"smoke": _smoke, "cpu": _cpu, "paper": _paper}


def get_preset(name: str = "cpu", **overrides: Any) -> Preset:
    """Build the named preset and apply dotted overrides.

    >>> get_preset("smoke", **{"pretrain.epochs": 1}).pretrain.epochs
    1
    """
    try:
        factory = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    preset = factory()
    return preset.override(**overrides) if overrides else preset


def _check_model_matches_data(p: Preset) -> None:  # pragma: no cover - sanity at import
    assert p.model.image_size == p.data.image_size, p.name
    h, w = p.model.image_size
    assert h % p.model.patch_size == 0 and w % p.model.patch_size == 0, p.name


for _factory in PRESETS.values():
    _check_model_matches_data(_factory())
del _factory

_ = dataclasses  # re-exported helpers stay importable
