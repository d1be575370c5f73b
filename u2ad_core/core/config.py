"""Typed configuration: one frozen dataclass per part of the pipeline, and the clinical cohorts.

Every number that comes from the paper (Zhang et al., "U2AD", see ``book/references.bib``)
is a named default here, with the section it comes from; the defaults of every dataclass are
the paper's (the ``paper`` preset). The named presets (``smoke``, ``cpu``, ``paper``,
``paper_ci``), which change some of these fields, are in :mod:`u2ad_core.core.presets`.

Each sub-config has its own :func:`config_hash` so that cached artefacts (datasets,
checkpoints) are reused only when the parts that produced them are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

__all__ = [
    "COHORTS",
    "STRATEGIES",
    "config_from_dict",
    "CohortSizes",
    "PhantomConfig",
    "DataConfig",
    "ModelConfig",
    "MaskingConfig",
    "MCConfig",
    "TrainConfig",
    "AdaptConfig",
    "ScoreConfig",
    "SIDES",
    "EvalConfig",
    "BaselineConfig",
    "DetectorConfig",
    "VAEConfig",
    "DAEConfig",
    "VAEGANConfig",
    "FAnoGANConfig",
    "AnoDDPMConfig",
    "SignalConfig",
    "CDDPMConfig",
    "BrainomalyRefinerConfig",
    "BrainomalyConfig",
    "DALConfig",
    "AblationGrid",
    "CrossoverGrid",
    "BudgetGrid",
    "GridsConfig",
    "KNOBS",
    "INHOMOGENEITY",
    "MODEL_PAPER",
    "MODEL_AUTHORS",
    "config_hash",
    "to_dict",
]

COHORTS: tuple[str, ...] = ("renji_like", "ruijin_like")
"""The clinical (DCM) cohorts, in the book's order: every chapter adapts and detects on these
(paper: RenjiDCM and RuijinDCM); the healthy ones (``spine_generic_like``, ``openneuro_like``)
only train. :data:`u2ad_core.data.phantom.COHORT_SPECS` holds every cohort's phantom spec."""

STRATEGIES: tuple[str, ...] = ("S1", "S2", "S3")
"""The paper's dataset strategies (section 4.3): S1 pretrain on healthy scans only, S2 train on
the clinical cohort only, S3 pretrain then adapt."""


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
class PhantomConfig:
    """The phantom's difficulty knobs (clinical cohorts only; see :mod:`u2ad_core.data.phantom`).

    Defaults are the calibrated ones: notebook 01 compares the phantom with real MRI figure by
    figure, notebook 10 varies these knobs and measures which detector wins where. Healthy
    cohorts do not depend on them, so a pretrained model is reused across knob settings.

    - ``lesion_conspicuity``: ``"faint"``, ``"intense"`` or ``"mixed"``. Clinical grading of
      intramedullary T2 signal change (Chen et al., Radiology 2001; reviewed by Vedantam and
      Rajshekhar, Eur Spine J 2013) distinguishes a faint, fuzzy-bordered type (type 1) from an
      intense, sharply bordered type (type 2). Faint: 15-35 % of the way from cord to CSF signal,
      soft edge; intense: 50-85 %, sharp edge (:data:`u2ad_core.data.phantom.LESION_TYPES`).
    - ``faint_fraction``: share of faint lesions under ``"mixed"`` (project choice: half; the
      proportions vary between clinical series).
    - ``lesion_size``: factor on lesion length (3-15 mm at 1), AP and lateral extent.
    - ``coupling``: how lesion patients' compression relates to the others'. Every DCM patient
      has 1-3 compressed levels with a severity drawn in U(0.45, 1.05) (fraction of the CSF
      reserve taken up); lesions sit at compressed levels. ``"independent"``: lesion patients
      draw from the same range, so compression alone carries no information about the label.
      ``"clinical"`` (default): lesion patients draw from U(0.6, 1.05). Clinical series report
      more severe compression, on average, in patients with T2 signal change, with wide overlap
      (e.g. reviewed by Nouri et al., Neurosurg Focus 2016); no series gives an effect size we
      could match, so the strength is a judgement: a moderate shift, weaker than the phantom's
      earlier U(0.75, 1.05) (mask-only patient AUROC 0.66 on ``renji_like``). Notebook 10 reports
      the mask-only AUROC under each setting. ``"strong"``: U(0.85, 1.05).
    - ``scanner_shift``: scales each clinical site's departure from a neutral healthy-site
      profile (contrast curve, tissue factors, bias field, noise, blur); 0 = no domain shift,
      1 = the calibrated clinical sites, 2 = twice as far.
    - ``inhomogeneity``: multiplies the clinical sites' bias-field amplitude along the cord
      (``SiteProfile.bias_si``); 1 = calibrated (along-cord variation inside the real band),
      larger values mimic uncorrected surface-coil fall-off, which a global intensity threshold
      mistakes for signal change.
    - ``artefacts``: thick-slice clinical T2w artefacts on (default) or off: truncation ringing
      along AP (``ringing`` = fraction of k-space acquired, Gibbs lines at the cord-CSF boundary),
      CSF flow voids in the dorsal CSF (``flow_voids`` = depth of the signal loss) and partial
      volume of CSF into the flattened cord at compressed levels (``partial_volume`` = fraction of
      the way to CSF signal at the cord surface), which mimic or hide a hyperintensity.
    """

    lesion_conspicuity: str = "mixed"  # "faint" | "intense" | "mixed"
    faint_fraction: float = 0.5  # project choice (see docstring)
    lesion_size: float = 1.0  # 3-15 mm long at 1
    coupling: str = "clinical"  # "independent" | "clinical" | "strong"
    scanner_shift: float = 1.0  # 0 = none, 1 = calibrated clinical sites
    inhomogeneity: float = 1.0  # x the clinical sites' bias amplitude along the cord (1 = calibrated)
    artefacts: bool = True  # clinical cohorts only
    ringing: float = 0.6  # fraction of AP k-space acquired (1 = no truncation)
    flow_voids: float = 0.6  # signal loss at the centre of a flow void
    partial_volume: float = 0.2  # CSF fraction at the cord surface of a compressed level


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
    n_sagittal_clinical: int = 11  # paper 4.1: clinical volumes are 11 x 256 x 256 (thick slices)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)  # difficulty knobs (clinical cohorts)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """EdgeMAE sizes (paper section 4.3; authors' code for the widths).

    Paper: patch 8, 24 encoder / 8 decoder ViT blocks. Authors' code: encoder dim 128 with
    16 heads, decoder dim 64 with 8 heads, MLP ratio 4, sigmoid on both heads.

    ``context_radius`` (project option, off = ``None`` in every preset): keep only the patches
    within this many patches (Chebyshev distance on the patch grid) of an ROI patch; the others
    never enter the encoder or the decoder. Their reconstruction is never used (the loss and
    the maps paste the input outside the ROI), so this only removes context far from the cord,
    and attention cost falls with the square of the token count (``book/how_to_run.md``).
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
    context_radius: int | None = None  # project: None = every patch (paper); r = ROI patches +- r


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
    ``eu_score``: a patch's EU score, ``"sum"`` of EU over its pixels (paper; EU is 0 outside
    the cord, so it grows with the patch's cord coverage) or ``"mean"`` over its ROI pixels
    (project control: uncertainty without coverage; adaptation ``masking="eu_mean"``).
    """

    mask_ratio: float = 0.75  # paper 4.3
    tau: float = 1.0  # paper Table 4: best tau = 1
    eu_weighting: str = "softmax"  # "softmax" (intent) or "paper" (literal formula)
    eu_score: str = "sum"  # "sum" (paper 3.3) or "mean" over the patch's ROI pixels (project)
    au_percentile: float = 90.0  # authors' code: pixels above the 90th pct of non-zero AU
    au_min_size: int = 2  # authors' code: drop components under 2 px
    au_component_score: str = "sum"  # paper: "sum"; authors' code: "mean_sum"
    au_top_k: int = 3  # paper 3.4: top-3 components are never masked


@dataclass(frozen=True)
class MCConfig:
    """Monte-Carlo uncertainty (paper Algorithm 1, section 3.2)."""

    k: int = 10  # paper: K = 10 reconstructions per patch (authors' inference script: 5)
    ddof: int = 1  # paper: unbiased variance (K - 1); authors' code: population (ddof 0)
    batch_size: int = 64  # MC passes (image x pass) per batched forward (engine detail, not from paper)


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
    # paper 4.3: "the images are then re-normalized to the range of 0-1" (min-max per image),
    # which undoes the brightness and contrast factors; False keeps them (project option)
    renormalize: bool = True
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
    # project: K of the refreshes during training (the maps that steer the masking); None = mc.k
    # (paper: K = 10). The maps at epoch 0 of an S3 run (the pretrained model's, cached) and
    # after the last epoch (the scoring maps) always use mc.k.
    refresh_k: int | None = None
    restart_schedule_at_stage2: bool = False  # paper / authors' code: one schedule (False)
    n_tracked: int = 4  # project: images whose EU/AU maps are saved at each refresh (plots)
    final_eval: bool = True  # project: MC maps + metrics once more after the last epoch
    # project: keep a copy of the weights every this many epochs (``snapshots/epoch_NNN.pt``;
    # 0 = none), the candidates of a label-free choice of the adaptation epoch (chapter 13).
    # Not part of the run hash: the weights are the same with or without the copies.
    snapshot_every: int = 50


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
    # patient score = max of the curve over: "cord" (paper 3.5.2, the whole curve) or
    # "segments" (project: only C2-3 ... C7-T1, so that the cut cord at the crop's edges,
    # reconstructed without context, cannot raise it; whole curve when a slice has no segments)
    patient_span: str = "segments"
    # Sign of the residual that becomes every method's anomaly map, applied at the residual,
    # before any filtering / post-processing: "abs" = |x - x_hat| (paper 3.5, AnoMap);
    # "bright" = max(x - x_hat, 0) (project default: the target, a T2 hyperintensity, is
    # bright; one rule for every method in every table; chapter 07 shows "abs" beside it); None
    # = each method's own rule (U2AD and the reconstruction baselines "abs", the signal methods
    # SignalConfig.one_sided). Scoring only: in no training specification.
    sided: str | None = "bright"

    def __post_init__(self):
        if self.sided not in SIDES:
            raise ValueError(f"ScoreConfig.sided must be one of {SIDES}, got {self.sided!r}")


SIDES: tuple[str | None, ...] = ("abs", "bright", None)
"""Values of :attr:`ScoreConfig.sided` (``None``: each method's own rule)."""


@dataclass(frozen=True)
class EvalConfig:
    """Detection protocol (paper sections 4.2-4.3 and Appendix F)."""

    n_folds: int = 5  # paper 4.3: 5-fold cross-validation
    n_repeats: int = 20  # paper Appendix F: 20 repetitions of the 5-fold CV
    sensitivity: float = 0.9  # paper 4.2: patient threshold at sensitivity 0.9
    segment_rule: str = "strict"  # project: "strict" (wrong segment = FP + FN) or "item"


# --------------------------------------------------------------------------------------
# Baselines (paper section 4.5, Tables 1-2, Appendix B)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VAEConfig:
    """Variational autoencoder (Kingma & Welling 2013), a dense latent between conv stacks."""

    latent_dim: int = 128  # not in the paper (a common size for 256 x 256 MRI VAEs)
    kl_weight: float = 1.0  # Kingma 2013: the plain ELBO (beta = 1)
    lr: float = 1e-4  # not in the paper: Adam default for VAEs


@dataclass(frozen=True)
class DAEConfig:
    """Denoising autoencoder (Kascenas et al. 2022): a U-Net removes coarse Gaussian noise."""

    noise_std: float = 0.2  # Kascenas 2022: sigma 0.2
    noise_scale: int = 8  # Kascenas 2022: 16 x 16 noise for 128 x 128 images -> H/8 x W/8, upsampled
    noise_at_inference: bool = True  # paper Appendix B.1 adds noise at inference; Kascenas: clean input
    lr: float = 1e-3  # Kascenas 2022: Adam lr 1e-3


@dataclass(frozen=True)
class VAEGANConfig:
    """VAE-GAN (Larsen et al. 2016): VAE whose decoder is the generator of a GAN, with the
    reconstruction loss measured in the discriminator's feature space as well."""

    latent_dim: int = 128  # not in the paper
    kl_weight: float = 1.0  # Larsen 2016: L_prior weight 1
    feature_weight: float = 1.0  # Larsen 2016: L_llike^Dis_l (feature-wise reconstruction)
    adv_weight: float = 0.01  # project: weight of the GAN loss in the decoder update
    lr: float = 3e-4  # Larsen 2016: RMSProp 3e-4 (here Adam)


@dataclass(frozen=True)
class FAnoGANConfig:
    """f-AnoGAN (Schlegl et al. 2019): WGAN-GP on ROI images, then the izi-f encoder."""

    latent_dim: int = 128  # Schlegl 2019: z in R^128
    n_critic: int = 5  # Gulrajani 2017 / Schlegl 2019: 5 critic updates per generator update
    gp_weight: float = 10.0  # Gulrajani 2017: gradient-penalty lambda 10
    kappa: float = 1.0  # Schlegl 2019: izi-f weight of the critic-feature residual
    gan_share: float = 0.5  # project: share of the epochs for the WGAN stage (rest: encoder)
    lr: float = 1e-4  # Gulrajani 2017: Adam lr 1e-4
    betas: tuple[float, float] = (0.0, 0.9)  # Gulrajani 2017: Adam betas (0, 0.9)


@dataclass(frozen=True)
class AnoDDPMConfig:
    """AnoDDPM (Wyatt et al. 2022): DDPM with simplex noise, partial diffusion at inference."""

    timesteps: int = 1000  # paper Appendix B.1: T = 1000
    partial_steps: int = 40  # paper Appendix B.1: partial diffusion of 40 steps at inference
    beta_start: float = 1e-4  # Ho et al. 2020 linear schedule (x 1000/T for a shorter chain)
    beta_end: float = 0.02  # Ho et al. 2020
    octaves: int = 6  # Wyatt 2022 (authors' code): 6 octaves
    persistence: float = 0.8  # Wyatt 2022: amplitude x 0.8 per octave
    frequency: float = 64.0  # Wyatt 2022: base period of 64 px (scaled with the image height)
    lr: float = 1e-4  # Wyatt 2022: Adam lr 1e-4


@dataclass(frozen=True)
class SignalConfig:
    """Signal-analysis baselines (paper Appendix B.3): Z-scoring, SLIC, DBSCAN."""

    z_threshold: float = 0.1  # paper B.3: "standard deviation multiplier of 0.1"
    slic_segments: int = 100  # paper B.3: M = 100 superpixels
    slic_compactness: float = 10.0  # paper B.3: compactness 10
    slic_z_threshold: float = 2.0  # paper B.3: z-threshold 2 on the superpixel means
    dbscan_eps: float = 0.01  # paper B.3: epsilon 0.01 (cord intensities in [0, 1])
    dbscan_min_samples: int = 100  # paper B.3: min_samples 100
    # project: only brighter-than-normal counts (T2 hyperintensity). Fallback only: when
    # ScoreConfig.sided is set ("abs" / "bright") it wins (baselines.common.anomaly_maps(sided=)).
    one_sided: bool = True


@dataclass(frozen=True)
class CDDPMConfig:
    """cDDPM (Behrendt et al. 2025): a diffusion U-Net that predicts the clean image ``x0`` in
    one step, conditioned on an encoding of the clean input; simplex noise; an ensemble of
    noise levels at inference; median-filtered residual (:mod:`u2ad_core.baselines.cddpm`).

    Widths are the method's own (not ``baselines.width``); the paper preset has the authors'
    U-Net width and conditioning size, the CPU presets shrink them (:mod:`u2ad_core.core.presets`).
    """

    timesteps: int = 1000  # Behrendt 2025 code (cond_DDPM.py): T = 1000
    schedule: str = "cosine"  # Behrendt 2025 code: GaussianDiffusion's default cosine schedule ("linear": Ho 2020)
    noise_levels: tuple[int, ...] = (250, 500, 750)  # Behrendt 2025 code: step_ensemble; (500,) = one level
    octaves: int = 6  # Behrendt 2025 code (gen_noise = AnoDDPM's simplex noise): 6 octaves
    persistence: float = 0.8  # Behrendt 2025 code: amplitude x 0.8 per octave
    frequency: float = 64.0  # Behrendt 2025 code: base period 64 px (scaled with the image height)
    unet_width: int = 128  # Behrendt 2025 code: unet_dim 128
    encoder_width: int = 64  # project: stem width of the conv encoder (the authors': ResNet-50, stem 64)
    cond_dim: int = 512  # Behrendt 2025 code: cond_dim = 4 x unet_dim
    median_kernel: int = 5  # Behrendt 2025 code: median filter of the residual, kernel 5 (0 or 1: off)
    lr: float = 1e-4  # Behrendt 2025 code: Adam lr 1e-4, L1 loss on x0


@dataclass(frozen=True)
class BrainomalyRefinerConfig:
    """Brainomaly-Diff's diffusion refiner (vashprog/Brainomaly-Diff, ``diffusion_model.py``,
    ``diffusion_utils.py``, ``solver.py``): a DDPM on the generator's outputs whose reverse
    chain refines them at inference (``brainomaly_diff``)."""

    timesteps: int = 50  # Brainomaly-Diff solver.py: DiffusionRefiner(timesteps=50)
    steps: int = 50  # Brainomaly-Diff: all 50 reverse steps at inference (here from the noised image)
    beta_start: float = 1e-4  # Brainomaly-Diff diffusion_utils.py: linspace(1e-4, 0.02, T) at T = 50
    beta_end: float = 0.02  # Brainomaly-Diff (another T: both x 50 / T, the same end noise; project)
    width: int = 64  # Brainomaly-Diff diffusion_model.py: DiffusionUNet base_dim 64
    levels: int = 1  # Brainomaly-Diff: one stride-2 level, self-attention at H/2 x W/2
    target: str = "translated"  # Brainomaly-Diff: trained on G's outputs; "healthy": on the healthy batch (project)
    lr: float = 1e-4  # Brainomaly-Diff solver.py: Adam lr 1e-4


@dataclass(frozen=True)
class BrainomalyConfig:
    """Brainomaly (Siddiquee et al., WACV 2024; code mahfuzmohammad/Brainomaly, ``main.py``
    defaults, which ``train.sh`` keeps): a generator outputs an additive map M, x_hat =
    tanh(x + M); a PatchGAN critic (WGAN-GP) compares translated target images with healthy
    ones; identity L1 on healthy images. ``refiner``: Brainomaly-Diff's refiner on top."""

    g_width: int = 64  # Brainomaly main.py: g_conv_dim 64
    g_blocks: int = 6  # Brainomaly main.py: g_repeat_num 6 residual blocks
    d_width: int = 64  # Brainomaly main.py: d_conv_dim 64
    d_levels: int = 6  # Brainomaly main.py: d_repeat_num 6 stride-2 convs (PatchGAN)
    lambda_id: float = 1.0  # Brainomaly main.py: lambda_id 1
    gp_weight: float = 10.0  # Brainomaly main.py: lambda_gp 10
    n_critic: int = 2  # Brainomaly main.py: n_critic 2 (critic every iteration, generator every 2nd)
    lr: float = 1e-4  # Brainomaly main.py: g_lr = d_lr = 1e-4 (its decay is in effect none: see module)
    betas: tuple[float, float] = (0.5, 0.999)  # Brainomaly main.py: beta1 0.5, beta2 0.999
    refiner: BrainomalyRefinerConfig = field(default_factory=BrainomalyRefinerConfig)


@dataclass(frozen=True)
class DALConfig:
    """DAL lite (Yang et al. 2025, "Unsupervised Anomaly Detection in Brain MRI via Disentangled
    Anatomy Learning"; code not released): one-hot anatomy + per-class imaging statistics,
    anatomy restored from its edges, recoupled into a pseudo-healthy image
    (:mod:`u2ad_core.baselines.dal`, whose docstring lists every inferred choice). Nothing
    below is given by the paper's abstract, the only description available: all "project:"."""

    n_classes: int = 4  # project: anatomy classes K (cord, CSF, bone/disc, the rest)
    temperature: float = 1.0  # project: softmax temperature of the straight-through one-hot
    prior_weight: float = 1.0  # project: weight of the cord-prior term (class 0 = cord mask)
    restore_weight: float = 1.0  # project: weight of the edge-to-anatomy cross-entropy
    phi_weight: float = 1.0  # project: weight of the L1 of the pseudo-healthy image (restored path)
    prior_count: float = 16.0  # project: pseudo-pixels pulling an empty class to its learnt mean
    alternate: bool = False  # project: True = steps alternate between the two modules (cheaper steps)
    lr: float = 1e-4  # project: Adam lr


@dataclass(frozen=True)
class BaselineConfig:
    """The baselines of paper Tables 1-2 under U2AD's protocol (section 4.5, Appendix B).

    Sizes (``width``, ``levels``) are not in the paper; ``pretrain_epochs`` /
    ``adapt_epochs`` are (200 + 200); ``beyond_epochs`` gives the methods beyond the paper
    (``NEW_METHODS``, notebook 13) their own, where a CPU budget needs it. ``s2_methods``: UAD
    methods also trained with strategy S2 (the paper: all); ``pseudo_strategy``: which model
    reconstructs the pseudo-anomaly set for Figure 6 (paper: S3 adapted on that set; ``"S1"``
    reuses the pretrained models).
    """

    pretrain_epochs: int = 200  # paper 4.5: 200 pretraining epochs for every UAD model
    adapt_epochs: int = 200  # paper 4.5: 200 adaptation epochs
    batch_size: int = 8  # paper 4.3 (U2AD's batch size)
    width: int = 32  # project: channels at full resolution (doubled per level, max 8x)
    levels: int = 4  # project: stride-2 levels (image sides must be divisible by 2**levels)
    augment: bool = True  # paper 4.3: U2AD's augmentation (brightness, contrast, noise)
    infer_batch: int = 32  # project: images per inference forward
    checkpoint_every: int = 10  # project: epochs between resumable checkpoints
    beyond_epochs: tuple[int, int] | None = None  # project: (S1, S2/S3) epochs of NEW_METHODS; None: the above
    s2_methods: tuple[str, ...] = ("vae", "dae", "vaegan", "fanogan", "anoddpm")  # paper: all
    pseudo_strategy: str = "S3"  # paper Figure 6: models adapted (S3) on the pseudo set
    vae: VAEConfig = field(default_factory=VAEConfig)
    dae: DAEConfig = field(default_factory=DAEConfig)
    vaegan: VAEGANConfig = field(default_factory=VAEGANConfig)
    fanogan: FAnoGANConfig = field(default_factory=FAnoGANConfig)
    anoddpm: AnoDDPMConfig = field(default_factory=AnoDDPMConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    cddpm: CDDPMConfig = field(default_factory=CDDPMConfig)
    brainomaly: BrainomalyConfig = field(default_factory=BrainomalyConfig)  # + Brainomaly-Diff's refiner
    dal: DALConfig = field(default_factory=DALConfig)


# --------------------------------------------------------------------------------------
# Supervised detectors (paper Table 2)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectorConfig:
    """Supervised detectors trained from scratch (paper Table 2, Appendix B.2;
    :mod:`u2ad_core.detectors`).

    The paper gives no training details for its detectors; the defaults are the detectors'
    own papers' where they exist (Faster R-CNN, Ren et al. 2015: RPN mini-batch 256 anchors,
    IoU 0.7 / 0.3, 512 RoIs a quarter positive (Fast R-CNN), NMS 0.7; DETR, Carion et al. 2020:
    d_model 256, 8 heads, 6 + 6 layers, 100 queries, AdamW lr 1e-4 and weight decay 1e-4,
    no-object weight 0.1, gradient clipping 0.1) at one size for a CPU-free run; the CPU presets
    shrink them (:mod:`u2ad_core.core.presets`).
    """

    epochs: int = 50  # project (the paper does not say)
    batch_size: int = 8  # project: as U2AD's training (paper 4.3)
    lr: float = 1e-4  # DETR: AdamW lr 1e-4 (used for the R-CNNs too)
    weight_decay: float = 1e-4  # DETR
    grad_clip: float = 0.1  # DETR: max gradient norm 0.1 (0 = off)
    intensity_jitter: float = 0.1  # project: brightness x U(0.9, 1.1), as U2AD's augmentation (paper 4.3)
    width: int = 64  # project: backbone width (stride-8 output: 4 x width channels); the paper's detectors use ResNets
    head_dim: int = 1024  # Faster R-CNN: two fully connected layers of 1024 in the box head
    anchor_heights: tuple[int, ...] = (12, 20, 32, 48)  # project: cord-segment boxes are ~10-40 px tall at 192 px
    anchor_widths: tuple[int, ...] = (8, 14)  # project: and ~6-16 px wide
    rpn_batch: int = 256  # Faster R-CNN: 256 anchors per image, up to half positive
    roi_batch: int = 512  # Fast R-CNN: 512 RoIs per image, a quarter positive
    rpn_pre_nms: int = 1000  # Faster R-CNN (test time): 6000 before NMS at 1000 px; scaled to a slice
    rpn_post_nms: int = 300  # Faster R-CNN: 300 proposals at test time
    max_detections: int = 100  # Faster R-CNN / DETR: up to 100 boxes per image
    d_model: int = 256  # DETR
    heads: int = 8  # DETR
    enc_layers: int = 6  # DETR
    dec_layers: int = 6  # DETR
    n_queries: int = 100  # DETR
    eos_coef: float = 0.1  # DETR: weight of the no-object class
    checkpoint_every: int = 10  # project: epochs between resumable checkpoints
    n_folds: int = 5  # paper Appendix B.2: 5 folds, 3 train / 1 validation / 1 test
    # which detectors chapter 13 trains: the paper's Table 2 has Mask R-CNN and DETR (and YOLOv8, left
    # out: AGPL); Faster R-CNN is Mask R-CNN without its mask head
    kinds: tuple[str, ...] = ("faster_rcnn", "mask_rcnn", "detr")


# --------------------------------------------------------------------------------------
# Experiment grids (notebooks 08, 10 and 12)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AblationGrid:
    """The sensitivity / robustness grids of notebook 08 (paper 4.8, Table 4, Figure 7).

    ``table3_cohorts``: the cohorts of Table 3 (paper: both); ``control_cohorts``: those that
    also get the project's coverage-only and EU-mean rows (each one adaptation).

    ``grid_adapt_epochs``: adaptation epochs of every tau / mask-ratio grid point; ``None``
    keeps ``preset.adapt.epochs`` (the paper's protocol: each grid point is a full
    adaptation). The CPU presets shrink it (the notebook says so) and then also rerun the
    default value in the same shortened setting, so that all points of a grid compare alike.
    """

    k_values: tuple[int, ...] = (3, 5, 10, 15, 20)  # paper Table 4: K values
    taus: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # paper Table 4: tau values
    mask_ratios: tuple[float, ...] = (0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)  # paper Table 4
    grid_cohort: str = "renji_like"  # paper 4.8.1: sensitivity studies on RenjiDCM T2w
    grid_adapt_epochs: int | None = None  # None = preset.adapt.epochs (paper: full adaptations)
    grid_stage2_start: int | None = None  # None = preset.adapt.stage2_start
    noise_sigmas: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.2, 0.4)  # paper 4.8.2 / Fig. 7a
    downsample: tuple[int, ...] = (2, 4)  # paper 4.8.2 / Figure 7b: 2x and 4x
    cv_repeats: int | None = None  # None = preset.eval.n_repeats (paper Appendix F: 20)
    # Table 3 (paper: both clinical cohorts) and the project's coverage / EU-mean controls
    table3_cohorts: tuple[str, ...] = COHORTS
    control_cohorts: tuple[str, ...] = COHORTS


KNOBS = ("data.phantom.lesion_conspicuity", "data.phantom.coupling", "data.phantom.artefacts")
"""The crossover grid's axes: dotted preset fields (they reach the point notebook as ``overrides``)."""
INHOMOGENEITY = "data.phantom.inhomogeneity"
"""The crossover grid's extra axis: bias-field amplitude along the cord (x the calibrated value)."""


@dataclass(frozen=True)
class CrossoverGrid:
    """The knob grid of notebook 10 (:mod:`u2ad_core.experiments.crossover`); defaults: the full grid.

    ``s3_points``: the (conspicuity, coupling, artefacts) points where U2AD S3 is also adapted
    (an adaptation costs about a minute on a 2-core CPU under ``cpu``); ``"all"`` = every point.
    """

    conspicuity: tuple[str, ...] = ("faint", "mixed", "intense")
    coupling: tuple[str, ...] = ("independent", "clinical", "strong")
    artefacts: tuple[bool, ...] = (False, True)
    s3_points: tuple[tuple[str, str, bool], ...] | str = "all"
    cohort: str = "renji_like"
    inhomogeneity: tuple[float, ...] = (2.0, 4.0, 8.0)  # extra axis at the default coupling, artefacts on

    def inhomogeneity_grid(self) -> dict[str, list[Any]] | None:
        """The along-cord inhomogeneity axis (``data.phantom.inhomogeneity``) for every
        conspicuity, at the default coupling with artefacts on; ``None`` when empty."""
        if not self.inhomogeneity:
            return None
        return {KNOBS[0]: list(self.conspicuity), KNOBS[1]: ["clinical"], KNOBS[2]: [True],
                INHOMOGENEITY: [float(v) for v in self.inhomogeneity]}

    def grid(self) -> dict[str, list[Any]]:
        """``{dotted knob: values}`` for :func:`u2ad_core.book.sweep.run_sweep`."""
        return dict(zip(KNOBS, (list(self.conspicuity), list(self.coupling), list(self.artefacts))))

    def s3_list(self) -> list[tuple[str, str, bool]]:
        if self.s3_points == "all":
            return [(a, b, c) for a in self.conspicuity for b in self.coupling for c in self.artefacts]
        return list(self.s3_points)

    def s3_grids(self) -> list[dict[str, list[Any]]]:
        """The S3 points as sweep grids: one grid when they form a full cartesian product
        (e.g. ``"all"``), else one grid per point."""
        pts = self.s3_list()
        if not pts:
            return []
        axes = [sorted({p[i] for p in pts}, key=str) for i in range(3)]
        if len(pts) == len(axes[0]) * len(axes[1]) * len(axes[2]):
            return [{**dict(zip(KNOBS, axes)), "s3": [True]}]
        return [{**{k: [v] for k, v in zip(KNOBS, p)}, "s3": [True]} for p in pts]


@dataclass(frozen=True)
class BudgetGrid:
    """What the training-budget sweep of notebook 12 runs (:mod:`u2ad_core.experiments.budget`).

    factors: the budget multipliers (1.0 must be among them: the book's own models);
    in_book: the book's budget chapter runs the sweep (otherwise it reads a finished one);
    cohorts: the clinical cohorts scored; minutes_estimate: the sweep's time on 2 CPU cores,
    shown when the chapter only reads a sweep (measured; the preset says with which settings).
    """

    factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    in_book: bool = True
    cohorts: tuple[str, ...] = COHORTS
    minutes_estimate: float | None = None


@dataclass(frozen=True)
class GridsConfig:
    """The experiment grids of a preset: notebook 08's ablations, notebook 10's knob grid and
    notebook 12's budget sweep. Defaults: the paper's full grids (``paper``)."""

    ablation: AblationGrid = field(default_factory=AblationGrid)
    crossover: CrossoverGrid = field(default_factory=CrossoverGrid)
    budget: BudgetGrid = field(default_factory=BudgetGrid)


# --------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain JSON-able dict (tuples become lists)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def config_from_dict(cls, d: Any):
    """Rebuild a (nested) frozen config dataclass from :func:`to_dict` output (lists back to
    tuples where the field's default is a tuple; fields missing from ``d`` keep their defaults)."""
    kw = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        default = getattr(cls(), f.name)
        if is_dataclass(default):
            v = config_from_dict(type(default), v)
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


def config_hash(cfg: Any, n: int = 12) -> str:
    """Stable short hash of a config (dataclass, dict or JSON-able value)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
