"""Baselines of paper Tables 1-2 under U2AD's protocol (section 4.5, Appendix B; method.md 8).

One module per method, each a small ``torch.nn.Module`` plus its training step and
reconstruction; :mod:`.common` holds the shared glue (maps, scoring with U2AD's
post-processing) and :mod:`.training` the cached training and the strategies S1-S3
(:func:`baseline_model`):

==============  ==========  ==================================================================
name            module      method
==============  ==========  ==================================================================
``vae``         vae         VAE (Kingma & Welling 2013)
``dae``         dae         denoising U-Net, coarse Gaussian noise (Kascenas et al. 2022)
``vaegan``      vaegan      VAE-GAN (Larsen et al. 2016)
``fanogan``     fanogan     f-AnoGAN: WGAN-GP + izi-f encoder (Schlegl et al. 2019)
``anoddpm``     anoddpm     DDPM with simplex-like noise, partial diffusion (Wyatt et al. 2022)
``zscore``      signal      Z-scoring of cord intensities (paper B.3)
``slic``        signal      SLIC superpixels, z-scored (paper B.3)
``dbscan``      signal      DBSCAN on cord intensities (paper B.3)
``morphology``  morphology  cord + CSF width only, no intensity: how much is anatomy (project)
==============  ==========  ==================================================================

Methods beyond the paper (``Method.beyond_paper``, so in ``BASELINES`` and
``NEW_METHODS`` but not in ``UAD_METHODS``, the paper's set that notebook 09 trains):

===================  ==========  =============================================================
name                 module      method
===================  ==========  =============================================================
``cddpm``            cddpm       conditioned DDPM: x0 from noised input + encoding of the clean
                                 input, ensemble of noise levels (Behrendt et al. 2025)
``dal``              dal         disentangled anatomy + edge-to-image restoration, lite, from
                                 the description (Yang et al. 2025; code not released)
``brainomaly``       brainomaly  Brainomaly: additive-map GAN trained on (healthy, cohort)
                                 pairs, transductive (Siddiquee et al. 2024)
``brainomaly_diff``  brainomaly  Brainomaly + Brainomaly-Diff's diffusion refiner, conditioned
                                 on the time step, trained on a finished Brainomaly run
===================  ==========  =============================================================

Usage::

    from u2ad_core.baselines import BASELINES, fit_baseline, anomaly_maps, baseline_model
    model = fit("dae", preset, paths["spine_generic_like"], device, seed, ctx.run_dir)
    recon, maps = anomaly_maps("dae", model, data.middle(), device)

Sizes per preset: :class:`u2ad_core.core.config.BaselineConfig` (``preset.baselines``).
"""

from __future__ import annotations

from .common import (Method, SignalModel, StepInfo, anomaly_maps, data_hash, evaluate_maps, get_method,
                     reconstruct, results_row, score_anomaly_maps, table_from_rows)
from .training import STRATEGIES, BaselineRun, baseline_model, fit_baseline, fit_run, load_run, stage_epochs
from . import anoddpm, brainomaly, cddpm, dae, dal, fanogan, morphology, signal, vae, vaegan

__all__ = [
    "BASELINES", "UAD_METHODS", "SIGNAL_METHODS", "ANATOMY_METHODS", "NEW_METHODS", "STRATEGIES", "Method",
    "SignalModel",
    "BaselineRun",
    "get_method", "fit_baseline", "fit_run", "stage_epochs", "load_run", "reconstruct", "anomaly_maps", "baseline_model",
    "StepInfo",
    "score_anomaly_maps", "evaluate_maps", "results_row", "table_from_rows", "data_hash",
]

BASELINES: dict[str, Method] = {
    m.name: m for m in (vae.METHOD, dae.METHOD, vaegan.METHOD, fanogan.METHOD, anoddpm.METHOD,
                        signal.ZSCORE, signal.SLIC, signal.DBSCAN, morphology.METHOD,
                        dal.METHOD, cddpm.METHOD, brainomaly.METHOD, brainomaly.DIFF_METHOD)
}
"""Registry: name -> :class:`Method` (UAD methods first, in the paper's order, then signal,
then the morphology-only reference, then the methods beyond the paper)."""

UAD_METHODS: tuple[str, ...] = tuple(k for k, m in BASELINES.items()
                                     if m.kind == "uad" and not m.beyond_paper)
"""The paper's UAD baselines (Table 1)."""
SIGNAL_METHODS: tuple[str, ...] = tuple(k for k, m in BASELINES.items()
                                        if m.kind == "signal" and "images" in m.inputs and not m.beyond_paper)
"""Signal analysis of the cord intensities (paper Table 2, Appendix B.3)."""
ANATOMY_METHODS: tuple[str, ...] = tuple(k for k, m in BASELINES.items()
                                         if m.kind == "signal" and "images" not in m.inputs)
"""Kind "signal" too (no training), but reading only masks: ``("morphology",)``."""
NEW_METHODS: tuple[str, ...] = tuple(k for k, m in BASELINES.items() if m.beyond_paper)
"""Methods added beyond the paper's baselines, in registration order."""
