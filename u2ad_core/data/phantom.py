"""Procedural phantom of the cervical spine: sagittal T2w-like NIfTI cohorts (no external files).

Why a phantom: the paper's four datasets (Spine Generic, OpenNeuro, RenjiDCM, RuijinDCM,
section 4.1) cannot be redistributed. This module builds look-alike cohorts from a seed so that
the whole pipeline (preprocessing, pretraining, adaptation, detection) runs anywhere.

Anatomy (C1 to T3): vertebral bodies with marrow texture and a cortical rim, discs (nucleus and
annulus), the dens and the C1 arches, the thecal sac (CSF in front of and behind the cord),
the cord (continuing into the medulla), laminae and spinous processes, ligamentum flavum,
epidural fat, prevertebral tissue, the airway, neck muscles with fat planes, subcutaneous
fat, the occiput and cerebellum. The spine follows a lordotic curve; every size varies per
subject (cord AP diameter 6-9 mm, canal, vertebral heights, curvature).

How it is built (vectorised, no voxel loops): a 2D sagittal template is computed once per
subject in curvilinear coordinates ``(u, v)`` (``u`` = arc length along the cord from the top
of C2, inferior positive; ``v`` = signed distance from the cord centre line, anterior
positive). Each structure is a 2D map plus a lateral half-width map (its cross-section), and
the 3D volume is obtained by compositing the structures for every sagittal slice position
``x`` with the fraction of the slab ``[x - t/2, x + t/2]`` that the structure covers (partial
volume for thick clinical slices). Scanner effects are then applied per site: contrast curve,
multiplicative bias field, in-plane blur, Rician noise, intensity scale and stored dtype and
orientation (RAS / PSR / LAS / ...).

DCM cohorts: 1-3 levels with disc bulges (label 5 where they pass the posterior vertebral
line) and ligamentum-flavum thickening narrow the canal; the cord is flattened there.
Patients with a lesion get 1-2 T2 hyperintensities (label 6) inside the cord at compressed
levels: elongated along the cord (3-15 mm), intensity between cord and CSF, faint with a fuzzy
border or intense with a sharp one (:data:`LESION_TYPES`); every segment a lesion touches
(``C2-3`` ... ``C7-T1``, between consecutive vertebral-body centroids) and its type are written
to ``participants.tsv``.

Knobs (:class:`~u2ad_core.core.config.PhantomConfig`, ``DataConfig.phantom``; clinical cohorts only,
so healthy cohorts and the models trained on them are shared across settings): lesion
conspicuity and size, the coupling between compression severity and lesions
(:data:`COUPLING`), the scanner shift of the clinical sites (:func:`effective_site`) and
thick-slice artefacts that mimic or hide a hyperintensity: partial volume of CSF into the
flattened cord at compressed levels, CSF flow voids, truncation (Gibbs) ringing along AP.
A knob setting other than the defaults is generated into ``raw/<cohort>~<hash>``
(:func:`phantom_dir_name`). ``u2ad phantom --knob coupling=independent ...`` sets them from the
command line.

Randomness: one ``numpy.random.Generator`` per subject, seeded from
``SeedSequence([cohort_seed, subject_index])``, and a second one for the artefacts; no global
RNG. Same seed -> same arrays; the number of draws does not depend on the knobs, so two knob
settings give the same subjects (a paired design).

On disk (the *phantom layout*, read by :mod:`u2ad_core.data.io`)::

    DIR/phantom.json                         generation config and its hash (the cache stamp)
    DIR/participants.tsv                     subject, site, diagnosis, lesion_segments, ...
    DIR/sub-<id>/sub-<id>_T2w.nii.gz         image (int16/uint16, site orientation)
    DIR/sub-<id>/sub-<id>_labels.nii.gz      label map (uint8; values of u2ad_core.core.labels)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from u2ad_core.core import labels as L
from u2ad_core.core.config import DataConfig, PhantomConfig, config_hash
from u2ad_core.core.runtime import atomic_path, atomic_write_json, atomic_write_text, progress

__all__ = [
    "PHANTOM_VERSION",
    "LESION_CONTRAST",
    "LESION_TYPES",
    "COUPLING",
    "REFERENCE_SITE",
    "effective_site",
    "phantom_dir_name",
    "SiteProfile",
    "CohortSpec",
    "SITES",
    "COHORTS",
    "SubjectResult",
    "n_lesion_patients",
    "generation_config",
    "generate_subject",
    "generate_cohort",
    "cohort_is_current",
    "cli_register",
]

PHANTOM_VERSION = 3
"""Bumped whenever the generator changes what it writes (invalidates cached cohorts)."""

LESION_TYPES: dict[str, dict[str, Any]] = {
    # Chen et al., Radiology 2001: type 1 faint with a fuzzy border, type 2 intense and sharp.
    "faint": {"contrast": (0.15, 0.35), "edge": 1.6, "reach": 1.5},
    "intense": {"contrast": (0.5, 0.85), "edge": 0.35, "reach": 1.1},
}
"""Lesion types (``PhantomConfig.lesion_conspicuity``). ``contrast``: target intensity drawn
uniformly in this range of the way from the cord's tissue value (0) to the CSF's (1);
``edge``: exponent of the radial profile (> 1 fuzzy, < 1 sharp); ``reach``: the profile fades
to zero at this normalised squared radius (the labelled lesion is the core, ``r^2 < 0.8``)."""

LESION_CONTRAST: tuple[float, float] = (
    min(t["contrast"][0] for t in LESION_TYPES.values()), max(t["contrast"][1] for t in LESION_TYPES.values()))
"""The overall range of lesion target intensities over all types (cord = 0, CSF = 1), i.e.
"between cord and CSF"; notebook 09 quotes it."""

COUPLING: dict[str, float] = {"independent": 0.45, "clinical": 0.6, "strong": 0.85}
"""Lower bound of the compression severity of lesion patients (the others: 0.45), per
``PhantomConfig.coupling``; the upper bound is 1.05 for everyone (see the config docstring)."""

LEVELS: tuple[str, ...] = ("C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3")
DISCS: tuple[str, ...] = tuple(f"{a}-{b[1:] if a[0] == b[0] else b}" for a, b in zip(LEVELS[:-1], LEVELS[1:]))
# -> ("C2-3", "C3-4", "C4-5", "C5-6", "C6-7", "C7-T1", "T1-2", "T2-3")


# --------------------------------------------------------------------------------------
# Sites and cohorts
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteProfile:
    """A scanner / protocol: geometry, contrast and noise of the stored images.

    ``tissue`` multiplies the base T2w tissue intensities (CSF = 1) of :data:`TISSUE`;
    ``gamma`` is the contrast curve ``I -> I ** gamma``; ``bias`` the amplitude (log scale)
    of the smooth multiplicative field (``bias_si``, when set, its superior-inferior part, i.e.
    along the cord; ``bias`` then sets the anterior-posterior surface-coil fall-off); ``noise`` the Rician sigma relative to CSF;
    ``blur_px`` the in-plane Gaussian blur (pixels); ``scale`` the stored value of CSF.
    """

    name: str
    orientation: str = "RAS"  # stored axis codes (nibabel), e.g. "PSR", "LAS"
    pixel_mm: float = 0.8  # in-plane voxel size
    slice_mm: float = 0.8  # sagittal slice spacing (= thickness)
    fov_mm: tuple[float, float] = (220.0, 200.0)  # (superior-inferior, anterior-posterior)
    scale: float = 1000.0
    dtype: str = "int16"
    gamma: float = 1.0
    bias: float = 0.15
    noise: float = 0.02
    blur_px: float = 0.5
    tissue: dict[str, float] = field(default_factory=dict)
    bias_si: float | None = None  # superior-inferior bias amplitude (None: = bias)


@dataclass(frozen=True)
class CohortSpec:
    """A phantom cohort: its sites, diagnosis and how many patients carry a lesion."""

    name: str
    sites: tuple[str, ...]
    diagnosis: str  # "healthy" or "DCM"
    paper_n: int  # subjects in the paper's dataset (section 4.1)
    paper_lesion: int = 0  # of which with T2 hyperintensity
    min_lesion: int = 0  # at least this many positives when n >= 20
    volume: str = "healthy"  # which DataConfig.n_sagittal_* applies


SITES: dict[str, SiteProfile] = {
    # healthy public multi-site data (Spine Generic-like): 0.8 mm isotropic, several vendors
    # (phantom version 3: noise of sg_a-c and sg_d's bias along the cord moved into the real bands
    # of notebook 01's realism table: cord CV, noise / cord, along-cord variation)
    "sg_a": SiteProfile("sg_a", "RAS", 0.8, 0.8, (224.0, 200.0), 1000.0, "int16", 1.0, 0.12, 0.02, 0.4,
                        {"cord": 1.0, "fat": 1.0}),
    "sg_b": SiteProfile("sg_b", "PSR", 0.8, 0.8, (216.0, 192.0), 2500.0, "uint16", 0.9, 0.18, 0.025, 0.5,
                        {"cord": 1.1, "fat": 0.85, "marrow": 1.1}),
    "sg_c": SiteProfile("sg_c", "LAS", 0.9, 0.9, (230.0, 200.0), 600.0, "int16", 1.1, 0.10, 0.018, 0.3,
                        {"cord": 0.95, "fat": 1.1, "muscle": 0.9}),
    "sg_d": SiteProfile("sg_d", "LPI", 0.8, 0.8, (220.0, 196.0), 3200.0, "int16", 1.0, 0.22, 0.025, 0.6,
                        {"cord": 1.05, "disc": 0.9}, bias_si=0.1),
    # OpenNeuro-like: one healthy site, ~1 mm
    "on_a": SiteProfile("on_a", "RPI", 1.0, 1.0, (230.0, 210.0), 1400.0, "int16", 1.05, 0.15, 0.02, 0.4,
                        {"cord": 1.05, "fat": 0.95}),
    # clinical sites: thick sagittal slices (11 x 256 x 256 in the paper), other contrast
    # calibrated (phantom version 3) against the authors' clinical DCM slices after their
    # preprocessing (notebook 01's realism table): bright subcutaneous fat on FSE T2 sets the
    # 99.8th percentile (cord ~0.2 after min-max), CSF / cord ~1.7, along-cord variation ~0.2
    # (the bias field varies little along the cord, ``bias_si``; ``bias`` keeps the posterior
    # surface coil's fall-off), background noise ~0.1 of the cord signal.
    "renji": SiteProfile("renji", "PSR", 0.94, 3.0, (240.0, 240.0), 800.0, "int16", 0.8, 0.25, 0.07, 0.7,
                         {"cord": 1.4, "fat": 2.5, "marrow": 1.3, "muscle": 1.3, "disc": 0.9}, bias_si=0.07),
    "ruijin": SiteProfile("ruijin", "LAS", 1.0, 3.5, (240.0, 240.0), 2000.0, "int16", 1.0, 0.30, 0.06, 0.8,
                          {"cord": 1.5, "fat": 2.1, "marrow": 0.8, "muscle": 1.1}, bias_si=0.07),
}

COHORTS: dict[str, CohortSpec] = {
    "spine_generic_like": CohortSpec("spine_generic_like", ("sg_a", "sg_b", "sg_c", "sg_d"), "healthy", 270),
    "openneuro_like": CohortSpec("openneuro_like", ("on_a",), "healthy", 50),
    "renji_like": CohortSpec("renji_like", ("renji",), "DCM", 125, 78, 0, "clinical"),
    "ruijin_like": CohortSpec("ruijin_like", ("ruijin",), "DCM", 95, 9, 2, "clinical"),
}

REFERENCE_SITE = SiteProfile("reference", gamma=1.0, bias=0.12, noise=0.015, blur_px=0.4)
"""The neutral profile that ``PhantomConfig.scanner_shift`` interpolates from (a healthy site)."""


def effective_site(site: SiteProfile, shift: float = 1.0) -> SiteProfile:
    """``site`` with its contrast, tissue factors, bias, noise and blur moved ``shift`` of the way
    from :data:`REFERENCE_SITE` (0: no domain shift; 1: ``site`` itself; 2: twice as far)."""
    if shift == 1.0:
        return site
    if shift < 0:
        raise ValueError(f"scanner_shift must be >= 0, got {shift}")
    ref = REFERENCE_SITE

    def lerp(a: float, b: float) -> float:
        return float(a + shift * (b - a))

    tissue = {k: max(lerp(1.0, v), 0.05) for k, v in site.tissue.items()}
    return replace(site, gamma=max(lerp(ref.gamma, site.gamma), 0.2), bias=max(lerp(ref.bias, site.bias), 0.0),
                   noise=max(lerp(ref.noise, site.noise), 1e-3), blur_px=max(lerp(ref.blur_px, site.blur_px), 0.0),
                   tissue=tissue,
                   bias_si=None if site.bias_si is None else max(lerp(ref.bias, site.bias_si), 0.0))


# Base T2w (fast spin echo) intensities relative to CSF = 1 (before the site's contrast curve).
TISSUE: dict[str, float] = {
    "air": 0.0, "csf": 1.0, "cord": 0.33, "fat": 0.72, "muscle": 0.16, "marrow": 0.30,
    "cortex": 0.04, "ligament": 0.05, "disc": 0.62, "annulus": 0.10, "soft": 0.26,
    "brain": 0.38, "mucosa": 0.45,
}


def n_lesion_patients(cohort: str, n: int) -> int:
    """Patients with a T2 hyperintensity in a cohort of ``n`` (the paper's fraction, rounded).

    renji_like keeps 78/125, ruijin_like 9/95 with at least 2 positives when ``n >= 20``.
    """
    spec = COHORTS[cohort]
    if spec.paper_lesion == 0:
        return 0
    k = int(round(n * spec.paper_lesion / spec.paper_n))
    if n >= 20:
        k = max(k, spec.min_lesion)
    return int(min(max(k, 0), n))


# --------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise (2D float32)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-8)


def _superellipse(du: np.ndarray, dv: np.ndarray, au: float, av: float, p: int = 4) -> np.ndarray:
    """``|du/au|^p + |dv/av|^p`` for even ``p`` in (2, 4, 6) (< 1 inside a rounded rectangle)."""
    qu = (du * np.float32(1.0 / au)) ** 2
    qv = (dv * np.float32(1.0 / av)) ** 2
    if p == 2:
        return qu + qv
    if p == 4:
        return qu * qu + qv * qv
    return qu * qu * qu + qv * qv * qv


def _capsule_dist(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance of points ``(u, v)`` to the segment p0-p1."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))


# --------------------------------------------------------------------------------------
# Subject anatomy
# --------------------------------------------------------------------------------------
@dataclass
class Anatomy:
    """Per-subject geometry (mm). Positions along the cord ``u`` grow inferiorly from C2 top."""

    body_top: np.ndarray  # (9,) u of the top of each body C2..T3
    body_bot: np.ndarray  # (9,)
    body_depth: np.ndarray  # (9,) AP depth
    disc_bulge: np.ndarray  # (8,) posterior bulge of each disc beyond the body line (mm)
    lf_thick: np.ndarray  # (8,) ligamentum flavum thickening at each disc level (mm)
    disc_signal: np.ndarray  # (8,) nucleus signal factor (degeneration < 1)
    dens_h: float
    cord_ap: float
    cord_lr: float
    csf_ant: float
    csf_post: float
    sac_lr: float
    lordosis: float  # mm, apex anterior
    tilt: float  # slope dy/dz of the whole spine (flexion > 0)
    compressed: tuple[str, ...] = ()
    lesions: list[dict[str, float]] = field(default_factory=list)

    @property
    def body_centroid(self) -> np.ndarray:
        return 0.5 * (self.body_top + self.body_bot)


def _sample_anatomy(rng: np.random.Generator, dcm: bool, lesion: bool,
                    knobs: PhantomConfig | None = None) -> Anatomy:
    """Draw one subject's geometry. The number of draws does not depend on ``knobs``, so two
    knob settings give the same subjects (paired comparisons across a knob grid)."""
    knobs = knobs or PhantomConfig()
    if knobs.coupling not in COUPLING:
        raise ValueError(f"PhantomConfig.coupling must be one of {sorted(COUPLING)}, got {knobs.coupling!r}")
    if knobs.lesion_conspicuity not in (*LESION_TYPES, "mixed"):
        raise ValueError(f"PhantomConfig.lesion_conspicuity must be one of {[*LESION_TYPES, 'mixed']}, "
                         f"got {knobs.lesion_conspicuity!r}")
    s = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    hb = np.array([15.0, 11.3, 11.3, 11.5, 12.0, 13.0, 15.0, 16.0, 17.0]) * s
    hb *= rng.normal(1.0, 0.04, size=9)
    hd = np.array([4.5, 5.0, 5.5, 5.5, 5.5, 4.8, 4.2, 4.2]) * s * rng.normal(1.0, 0.08, size=8)
    top = np.zeros(9)
    bot = np.zeros(9)
    u = 0.0
    for k in range(9):
        top[k] = u
        u += hb[k]
        bot[k] = u
        if k < 8:
            u += hd[k]
    depth = np.array([15.0, 15.0, 15.5, 16.0, 16.5, 17.0, 18.0, 19.0, 20.0]) * s * rng.normal(1.0, 0.05)
    bulge = rng.uniform(0.0, 0.8, size=8)
    lf = rng.uniform(0.0, 0.5, size=8)
    dsig = rng.uniform(0.85, 1.05, size=8)
    cord_ap = float(np.clip(rng.normal(7.4, 0.7), 6.0, 9.0))
    a = Anatomy(
        body_top=top, body_bot=bot, body_depth=depth, disc_bulge=bulge, lf_thick=lf,
        disc_signal=dsig, dens_h=float(rng.uniform(11.0, 15.0) * s),
        cord_ap=cord_ap, cord_lr=float(cord_ap * rng.uniform(1.35, 1.6)),
        csf_ant=float(rng.uniform(2.0, 3.5)), csf_post=float(rng.uniform(2.8, 4.6)),
        sac_lr=float(rng.uniform(10.0, 12.0)),
        lordosis=float(rng.uniform(4.0, 12.0)), tilt=float(np.clip(rng.normal(0.02, 0.06), -0.12, 0.14)),
    )
    if dcm:
        a.lordosis = float(rng.uniform(-4.0, 10.0))
        a.csf_ant *= 0.8
        a.csf_post *= 0.85
        a.disc_signal = rng.uniform(0.2, 0.7, size=8)  # degenerated, dark discs
        # 1-3 compressed levels among C3-4 .. C6-7 (C5-6 most often), sometimes C2-3 / C7-T1
        p = np.array([0.03, 0.17, 0.27, 0.3, 0.18, 0.05])
        n_comp = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
        levels = np.sort(rng.choice(6, size=n_comp, replace=False, p=p))
        sev_lo = COUPLING[knobs.coupling] if lesion else 0.45
        for k in levels:
            sev = rng.uniform(sev_lo, 1.05)  # fraction of the CSF reserve (+ cord) taken up
            reserve = a.csf_ant + a.csf_post
            take = sev * reserve + max(0.0, sev - 0.8) * cord_ap * 0.8
            share = rng.uniform(0.55, 0.85)  # anterior (disc) vs posterior (ligament)
            a.disc_bulge[k] = max(a.disc_bulge[k], 1.5) + share * take
            a.lf_thick[k] = a.lf_thick[k] + (1 - share) * take
            hd_k = a.body_top[k + 1] - a.body_bot[k]
            shrink = hd_k * rng.uniform(0.2, 0.45)  # disc height loss
            a.body_top[k + 1:] -= shrink
            a.body_bot[k + 1:] -= shrink
            a.disc_signal[k] = rng.uniform(0.1, 0.35)
        a.compressed = tuple(DISCS[k] for k in levels)
        if lesion:
            n_les = 1 if len(levels) == 1 else int(rng.choice([1, 2], p=[0.75, 0.25]))
            size = float(knobs.lesion_size)
            for k in rng.choice(levels, size=n_les, replace=False):
                disc_u = 0.5 * (a.body_bot[k] + a.body_top[k + 1])
                u_c = float(disc_u + rng.uniform(-2.5, 2.5))
                half_len = float(rng.uniform(1.5, 7.5)) * size  # 3-15 mm long at size 1
                ap_frac = float(min(rng.uniform(0.28, 0.5) * size, 0.6))  # half AP extent / cord AP
                half_lr = float(rng.uniform(1.8, 3.5)) * size
                x = float(rng.uniform(-0.8, 0.8))
                t_type, t_con = float(rng.random()), float(rng.random())
                if knobs.lesion_conspicuity == "mixed":
                    kind = "faint" if t_type < knobs.faint_fraction else "intense"
                else:
                    kind = knobs.lesion_conspicuity
                lo, hi = LESION_TYPES[kind]["contrast"]
                a.lesions.append({
                    "level": int(k), "u": u_c, "half_len": half_len, "ap_frac": ap_frac,
                    "half_lr": half_lr, "x": x, "type": kind,
                    "contrast": lo + t_con * (hi - lo),  # between cord (0) and CSF (1)
                })
    return a


def _segment_of(u: float, centroids: np.ndarray) -> str | None:
    """Segment name (C2-3 ... C7-T1) of a position ``u`` between body centroids C2..T1."""
    k = int(np.searchsorted(centroids[:7], u)) - 1
    return L.SEGMENTS[k] if 0 <= k < len(L.SEGMENTS) else None


def _segments_touched(u0: float, u1: float, centroids: np.ndarray) -> list[str]:
    """Every segment (C2-3 ... C7-T1) that the extent ``[u0, u1]`` along the cord overlaps."""
    k0 = int(np.searchsorted(centroids[:7], u0)) - 1
    k1 = int(np.searchsorted(centroids[:7], u1)) - 1
    return [L.SEGMENTS[k] for k in range(max(k0, 0), min(k1, len(L.SEGMENTS) - 1) + 1)]


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
@dataclass
class _Layer:
    name: str
    hw: np.ndarray  # (NY, NZ) lateral half-width (mm); <= 0 where absent
    value: np.ndarray | float  # intensity (2D map or constant)
    label: int  # label value (0 = unlabelled tissue)


def _tissues(site: SiteProfile, rng: np.random.Generator) -> dict[str, float]:
    t = {k: v * site.tissue.get(k, 1.0) for k, v in TISSUE.items()}
    for k in t:
        if k not in ("air", "csf"):
            t[k] *= float(rng.normal(1.0, 0.04))
    t["annulus"] = min(t["annulus"], 0.2)
    return t


def _render(an: Anatomy, site: SiteProfile, n_slices: int, rng: np.random.Generator,
            knobs: PhantomConfig | None = None, artefact_rng: np.random.Generator | None = None):
    """Build one subject: returns (image RAS float32, labels RAS uint8, affine RAS, extras).

    ``knobs.artefacts`` (clinical cohorts: pass ``knobs``; healthy ones: ``None``) adds partial
    volume at compressed levels, CSF flow voids and truncation ringing, drawn from
    ``artefact_rng`` so that switching them does not change anything else.
    """
    T = _tissues(site, rng)
    px = site.pixel_mm
    fov_z, fov_y = site.fov_mm
    nz, ny = int(round(fov_z / px)), int(round(fov_y / px))
    spine_len = an.body_bot[-1] + 10.0
    # FOV placement (patient positioning varies): z = 0 at the C2 body top, superior > 0
    z_hi = 40.0 + rng.uniform(-6, 10) + max(0.0, fov_z - 40.0 - spine_len) * 0.3
    z = np.sort(z_hi - px * np.arange(nz))  # ascending (I -> S) for RAS axis 2
    y_post = -0.42 * fov_y + rng.uniform(-8, 8)
    y = y_post + px * np.arange(ny)  # ascending (P -> A) for RAS axis 1
    Y, Z = np.meshgrid(y.astype(np.float64), z.astype(np.float64), indexing="ij")  # (NY, NZ)

    # ---- centre line y_c(z) (lordosis: parabola with anterior apex near C5) and (u, v) --------
    z_apex = -(an.body_top[3] + an.body_bot[3]) / 2.0
    h = 100.0
    D, k = an.lordosis, an.tilt

    def yc(zz):
        return D * (1 - ((zz - z_apex) / h) ** 2) + k * (zz - z_apex)

    def dyc(zz):
        return -2 * D * (zz - z_apex) / h**2 + k

    ddyc = -2 * D / h**2
    zeta = Z.copy()
    for _ in range(3):  # Newton: foot of the perpendicular from (z, y) on the curve
        g = (zeta - Z) + (yc(zeta) - Y) * dyc(zeta)
        gp = 1 + dyc(zeta) ** 2 + (yc(zeta) - Y) * ddyc
        zeta -= g / gp
    slope = dyc(zeta)
    V = ((Y - yc(zeta)) - (Z - zeta) * slope) / np.sqrt(1 + slope**2)
    zt = np.linspace(z.min() - 60, z.max() + 60, 2048)
    seg = np.sqrt(1 + dyc(zt) ** 2)
    s_cum = np.concatenate([[0.0], np.cumsum(0.5 * (seg[1:] + seg[:-1]) * np.diff(zt))])
    s_at0 = np.interp(0.0, zt, s_cum)
    U = s_at0 - np.interp(zeta, zt, s_cum)  # 0 at the C2 top, inferior positive
    U = U.astype(np.float32)
    V = V.astype(np.float32)

    # ---- 1D profiles along u ------------------------------------------------------------------
    ug = np.arange(-80.0, spine_len + 90.0, 0.25)
    cent = an.body_centroid
    disc_u = 0.5 * (an.body_bot[:-1] + an.body_top[1:])
    disc_h = an.body_top[1:] - an.body_bot[:-1]
    A0 = an.cord_ap / 2 + an.csf_ant  # sac anterior boundary (v)
    P0 = an.cord_ap / 2 + an.csf_post  # sac posterior boundary (-v)
    vb_post = A0 + 1.2  # posterior wall of the vertebral bodies
    bulge_u = np.zeros_like(ug)
    lf_u = np.zeros_like(ug)
    for i in range(8):
        w = disc_h[i] / 2 + 3.0
        bulge_u = np.maximum(bulge_u, an.disc_bulge[i] * np.sqrt(np.clip(1 - ((ug - disc_u[i]) / w) ** 2, 0, 1)))
        wl = 5.0
        lf_u = np.maximum(lf_u, an.lf_thick[i] * np.sqrt(np.clip(1 - ((ug - disc_u[i] - 1.5) / wl) ** 2, 0, 1)))
    # medulla / cisterna magna above the dens
    top_t = np.clip((-an.dens_h - ug) / 25.0, 0, 1)
    A_u = np.minimum(A0, vb_post - bulge_u) + 2.0 * top_t
    P_u = np.minimum(P0, P0 + 0.6 - lf_u) + 14.0 * top_t**1.5
    cord_a = np.full_like(ug, an.cord_ap / 2) * (1 + 0.35 * top_t)
    # cervical enlargement (C4-C6) in the lateral direction
    enl = np.exp(-0.5 * ((ug - cent[3]) / 22.0) ** 2)
    cord_b = an.cord_lr / 2 * (1 + 0.12 * enl) * (1 + 0.3 * top_t)
    gap = 0.25
    e_ant = np.minimum(cord_a, A_u - gap)
    e_post = np.maximum(-cord_a, -P_u + gap)
    too_thin = (e_ant - e_post) < 2.4
    mid = 0.5 * (e_ant + e_post)
    e_ant = np.where(too_thin, mid + 1.2, e_ant)
    e_post = np.where(too_thin, mid - 1.2, e_post)
    flat = np.clip((2 * cord_a) / (e_ant - e_post), 1.0, 3.0)
    cord_b = cord_b * flat**0.35
    sac_b = np.full_like(ug, an.sac_lr) * (1 + 0.4 * top_t)

    def prof(p):
        return np.interp(U, ug, p).astype(np.float32)

    Au, Pu, Ea, Ep, Cb, Sb = prof(A_u), prof(P_u), prof(e_ant), prof(e_post), prof(cord_b), prof(sac_b)
    Bulge = prof(bulge_u)

    # ---- textures -------------------------------------------------------------------------------
    shp = U.shape
    s_px = 1.0 / px
    tex_fine = _smooth_noise(rng, shp, (0.8 * s_px, 0.8 * s_px))
    tex_mid = _smooth_noise(rng, shp, (2.0 * s_px, 2.0 * s_px))
    tex_fib = _smooth_noise(rng, shp, (0.6 * s_px, 5.0 * s_px))  # fibres along z (muscles)
    tex_low = _smooth_noise(rng, shp, (10 * s_px, 10 * s_px))

    # ---- background: soft tissues, airway, fat, head, thorax -----------------------------------
    body_front = np.interp(U, ug, np.interp(ug, cent, vb_post + an.body_depth)).astype(np.float32)
    prev = np.interp(U, [-100, 20, 55, 75, 300], [4, 4, 6, 13, 13]).astype(np.float32)
    air_ap = np.interp(U, [-100, -30, 40, 60, 90, 300], [0, 14, 14, 11, 15, 15]).astype(np.float32)
    air_ap = air_ap * (1 + 0.15 * tex_low)
    ant_skin = body_front + prev + air_ap + np.interp(U, [-100, 20, 45, 100, 300], [140, 140, 28, 30, 60]).astype(np.float32)
    post_base = P0 + 3 + np.interp(U, [-100, -20, 50, 120, 300], [35, 45, 55, 70, 80]).astype(np.float32)
    post_skin = -(post_base + 3.0 * tex_low)
    sc_fat_post = 6.0 + 2.5 * tex_low + np.interp(U, [-100, 60, 300], [2, 4, 10]).astype(np.float32)
    img = np.zeros(shp, np.float32)
    inside = (V < ant_skin) & (V > post_skin)
    muscle = T["muscle"] * (1 + 0.12 * tex_fib + 0.08 * tex_mid)
    # fat planes between posterior muscles: stripes along the cord direction
    stripes = np.sin(2 * np.pi * (-V) / 15.0 + 2.5 * tex_low + 0.8 * tex_mid)
    fat_plane = (stripes > 0.93) & (V < -(P0 + 12))
    img = np.where(inside, muscle, img)
    img = np.where(inside & fat_plane, T["fat"] * (1 + 0.08 * tex_fine), img)
    img = np.where(inside & (V < post_skin + sc_fat_post), T["fat"] * (1 + 0.1 * tex_mid), img)
    img = np.where(inside & (V > ant_skin - 5.0), T["fat"] * (1 + 0.1 * tex_mid), img)
    skin = inside & ((V < post_skin + 1.2) | (V > ant_skin - 1.2))
    img = np.where(skin, T["soft"], img)
    # anterior neck: prevertebral tissue, airway with mucosa, thyroid / larynx region
    prev_reg = (V > body_front) & (V < body_front + prev)
    img = np.where(prev_reg, T["soft"] * (1 + 0.1 * tex_mid), img)
    air_reg = (V > body_front + prev + 1.0) & (V < body_front + prev + air_ap) & (U > -35)
    img = np.where((V > body_front + prev) & (V < body_front + prev + air_ap + 1.0) & (U > -38) & ~air_reg,
                   T["mucosa"], img)
    img = np.where(air_reg, T["air"] + 0.01, img)
    thy = (U > 75) & (U < 110) & (V > body_front + prev + air_ap + 1) & (V < body_front + prev + air_ap + 12)
    img = np.where(thy, T["soft"] * 1.3 * (1 + 0.05 * tex_fine), img)
    # head: tongue / face anteriorly above the jaw line, occiput and cerebellum posteriorly
    tongue = (U < 25) & (V > body_front + prev + air_ap) & inside
    img = np.where(tongue, T["muscle"] * 1.15 * (1 + 0.1 * tex_mid + 0.08 * tex_fib), img)
    occ_line = -an.dens_h - 6 + 0.35 * (-(V + P0 + 4))  # u of the occipital bone, tilted
    occ = (U < occ_line) & (U > occ_line - 7) & (V < -(P0 + 2)) & (V > post_skin + sc_fat_post)
    brain = (U <= occ_line - 7) & (V < -(P0 + 1)) & (V > post_skin + sc_fat_post + 6)
    img = np.where(brain, T["brain"] * (1 + 0.12 * tex_mid), img)
    # thorax below T1 anteriorly: mediastinal fat and vessels
    thor = (U > an.body_bot[6]) & (V > body_front + prev + air_ap + 2)
    img = np.where(thor, (T["soft"] + 0.25 * T["fat"] * (tex_low > 0.3)) * (1 + 0.1 * tex_mid), img)
    img = np.maximum(img, 0)

    layers: list[_Layer] = []
    BIG = np.float32(1e3)

    def layer(name, mask, hw, value, label=0):
        hw_map = np.where(mask, np.broadcast_to(np.float32(hw) if np.isscalar(hw) else hw, shp), -1.0)
        layers.append(_Layer(name, hw_map.astype(np.float32), value, label))

    # lateral columns (pedicles / articular pillars and foramina) seen beyond the canal
    pillar_val = np.full(shp, T["fat"] * 0.7, np.float32)
    for i in range(9):
        pm = _superellipse(U - (cent[i] + 3.0), V + P0 * 0.3, (an.body_bot[i] - an.body_top[i]) / 2 + 1.5, P0 + 6.0, 4)
        pillar_val = np.where(pm < 1, np.where(pm > 0.75, T["cortex"], T["marrow"] * (1 + 0.2 * tex_fine)), pillar_val)
    canal_band = (V > -(P0 + 6)) & (V < vb_post) & (U > -an.dens_h - 4)
    layer("pillars", canal_band, BIG, pillar_val)

    # posterior elements: laminae (wide) and spinous processes (narrow), C1 posterior arch, occiput
    lam_val = np.full(shp, T["marrow"], np.float32) * (1 + 0.25 * tex_fine)
    lam_mask = np.zeros(shp, bool)
    lam_rim = np.zeros(shp, bool)
    spin_mask = np.zeros(shp, bool)
    spin_rim = np.zeros(shp, bool)
    sp_len = np.array([28, 16, 16, 18, 22, 32, 36, 36, 36]) * (0.9 + 0.2 * rng.random(9))
    sp_ang = np.deg2rad(np.array([15, 25, 30, 32, 30, 25, 40, 50, 55]) + rng.normal(0, 4, 9))
    for i in range(9):
        hh = (an.body_bot[i] - an.body_top[i]) / 2
        uc = cent[i] + 3.0 + (2.0 if i == 0 else 0.0)
        vl = -(P0 + 2.6 + 3.0)
        m = _superellipse(U - uc, V - vl, hh + 0.5, 3.2, 4)
        lam_mask |= m < 1
        lam_rim |= (m < 1) & (m > 0.55)
        p0 = (uc, vl - 1.5)
        p1 = (uc + sp_len[i] * np.sin(sp_ang[i]), vl - 1.5 - sp_len[i] * np.cos(sp_ang[i]))
        d = _capsule_dist(U, V, p0, p1)
        th = 4.5 if i in (0, 5, 6) else 3.5
        spin_mask |= d < th
        spin_rim |= (d < th) & (d > th - 1.2)
    lam_val = np.where(lam_rim | spin_rim, T["cortex"], lam_val)
    layer("laminae", lam_mask, 13.0, lam_val)
    layer("spinous", spin_mask & ~lam_mask, 3.5, lam_val)
    c1p = _superellipse(U + an.dens_h * 0.5, V + (P0 + 6.5), 4.5, 4.5, 2)
    layer("c1_posterior", c1p < 1, 20.0, np.where(c1p > 0.5, T["cortex"], T["marrow"]).astype(np.float32))
    layer("occiput", occ, BIG, np.where((U - occ_line + 3.5) ** 2 < 4, T["marrow"], T["cortex"]).astype(np.float32))
    # clivus (anterior to the dens tip)
    cl = _capsule_dist(U, V, (-an.dens_h - 8, vb_post + 7), (-an.dens_h - 45, vb_post + 22)) < 5
    layer("clivus", cl, BIG, np.where(tex_fine > 0.5, T["marrow"], T["cortex"]).astype(np.float32))

    # canal wall: PLL in front (dark), epidural fat / ligamentum flavum behind
    cw_val = np.full(shp, T["fat"] * 0.9, np.float32) * (1 + 0.1 * tex_fine)
    lf_zone = np.zeros(shp, bool)
    for i in range(8):
        lf_zone |= np.abs(U - (disc_u[i] + 1.5)) < 5.0
    cw_val = np.where(lf_zone & (V < 0), T["ligament"], cw_val)
    cw_val = np.where(V > 0, T["ligament"] * 1.5, cw_val)
    cw = (V > -(P0 + 2.6 + 0.6 * lf_zone)) & (V < vb_post) & (U > -an.dens_h)
    layer("canal_wall", cw, an.sac_lr + 1.5, cw_val)

    # discs, then vertebral bodies with the dens on top
    disc_val = np.zeros(shp, np.float32)
    disc_mask = np.zeros(shp, bool)
    for i in range(8):
        vc = vb_post + an.body_depth[i] / 2
        m = _superellipse(U - disc_u[i], V - vc, disc_h[i] / 2 + 1.5, an.body_depth[i] / 2 + 0.3, 4)
        nuc = _superellipse(U - disc_u[i], V - vc - 0.5, max(disc_h[i] / 2 - 0.2, 0.8), an.body_depth[i] * 0.36, 4)
        val = np.where(nuc < 1, T["disc"] * an.disc_signal[i] * (1 + 0.05 * tex_fine), T["annulus"])
        disc_val = np.where(m < 1, val, disc_val)
        disc_mask |= m < 1
    layer("discs", disc_mask, 10.0, disc_val, L.DISC)
    # herniation: the part of a bulging disc behind the posterior vertebral line
    hern = (V < vb_post) & (V > vb_post - Bulge - 0.01) & (Bulge > 1.2)
    near_disc = np.zeros(shp, bool)
    for i in range(8):
        near_disc |= np.abs(U - disc_u[i]) < disc_h[i] / 2 + 3.0
    layer("herniation", hern & near_disc, 7.0, T["annulus"] * 1.4 + 0.08 * (tex_fine > 1), L.DISC_HERNIATION)

    body_val = np.zeros(shp, np.float32)
    body_mask = np.zeros(shp, bool)
    marrow = T["marrow"] * (1 + 0.22 * tex_fine + 0.1 * tex_mid)
    for i in range(9):
        hh = (an.body_bot[i] - an.body_top[i]) / 2
        vc = vb_post + an.body_depth[i] / 2
        m = _superellipse(U - cent[i], V - vc, hh, an.body_depth[i] / 2, 6)
        inner = _superellipse(U - cent[i], V - vc, hh - 0.9, an.body_depth[i] / 2 - 0.9, 6)
        fat_spot = rng.uniform(0.9, 1.25)
        body_val = np.where(m < 1, np.where(inner < 1, marrow * fat_spot, T["cortex"]), body_val)
        body_mask |= m < 1
    dens_vc = vb_post + an.body_depth[0] * 0.42
    dm = _superellipse(U + an.dens_h / 2, V - dens_vc, an.dens_h / 2 + 1.0, 5.0, 2)
    dm = np.where(U > 0, 9.0, dm)
    body_val = np.where(dm < 1, np.where(dm < 0.6, marrow, T["cortex"]), body_val)
    body_mask |= dm < 1
    bvc = vb_post + an.body_depth[4] / 2
    body_hw = np.float32(9.5) * np.sqrt(np.clip(1 - np.clip((V - bvc) / (an.body_depth[4] * 0.75), 0, None) ** 2, 0, 1))
    layer("bodies", body_mask, np.maximum(body_hw, 4.0), body_val, L.VERTEBRAL_BODY)
    c1a = _superellipse(U + an.dens_h * 0.55, V - (dens_vc + 8.5), 5.0, 3.2, 2)
    layer("c1_anterior", c1a < 1, 12.0, np.where(c1a > 0.45, T["cortex"], T["marrow"]).astype(np.float32))

    # thecal sac (CSF) and cord: elliptic cross-sections
    sac_c = 0.5 * (Au - Pu)
    sac_a = 0.5 * (Au + Pu)
    sac_hw = Sb * np.sqrt(np.clip(1 - ((V - sac_c) / sac_a) ** 2, 0, 1))
    sac_in = (np.abs(V - sac_c) < sac_a) & (U > occ_line - 40)
    layer("csf", sac_in, sac_hw, T["csf"] * (1 + 0.02 * tex_low), L.CSF)
    cc = 0.5 * (Ea + Ep)
    ca = 0.5 * (Ea - Ep)
    cord_hw = Cb * np.sqrt(np.clip(1 - ((V - cc) / ca) ** 2, 0, 1))
    gm = np.exp(-0.5 * ((V - cc) / (0.35 * ca)) ** 2)  # faint central grey matter
    cord_val = T["cord"] * (1 + 0.06 * gm + 0.02 * tex_mid)
    layer("cord", np.abs(V - cc) < ca, cord_hw, cord_val, L.CORD)

    # ---- volume: composite the layers per sagittal slab (partial volume) --------------------------
    dx = site.slice_mm
    x = (np.arange(n_slices) - (n_slices - 1) / 2) * dx + rng.uniform(-0.25, 0.25) * dx
    xs = x.astype(np.float32)[:, None]
    t = np.float32(dx)
    vol = np.broadcast_to(img.reshape(1, -1), (n_slices, img.size)).copy()
    lab = np.zeros((n_slices, img.size), np.uint8)
    for ly in layers:
        hw = ly.hw.reshape(-1)
        idx = np.flatnonzero(hw > 0)
        if idx.size == 0:
            continue
        h_ = hw[idx][None, :]
        f = (np.minimum(xs + t / 2, h_) - np.maximum(xs - t / 2, -h_)) / t
        np.clip(f, 0, 1, out=f)
        val = ly.value.reshape(-1)[idx][None, :] if isinstance(ly.value, np.ndarray) else np.float32(ly.value)
        sub = vol[:, idx]
        vol[:, idx] = sub + f * (val - sub)
        if ly.label:
            cur = lab[:, idx]
            lab[:, idx] = np.where(f >= 0.5, np.uint8(ly.label), cur)
        else:
            cur = lab[:, idx]
            lab[:, idx] = np.where(f >= 0.5, np.uint8(0), cur)

    # lesions: soft-edged ellipsoids inside the cord, intensity between cord and CSF
    les_info = []
    cent_u = cent
    for les in an.lesions:
        uc = les["u"]
        cc_l = float(np.interp(uc, ug, 0.5 * (e_ant + e_post)))
        ca_l = float(np.interp(uc, ug, 0.5 * (e_ant - e_post)))
        av = max(les["ap_frac"] * 2 * ca_l, 0.9)
        kind = LESION_TYPES[les.get("type", "intense")]
        reach, edge = float(kind["reach"]), float(kind["edge"])
        r2d = ((U - uc) / les["half_len"]) ** 2 + ((V - cc_l) / av) ** 2
        idx = np.flatnonzero(r2d.reshape(-1) < reach)
        r2 = r2d.reshape(-1)[idx][None, :] + ((xs - les["x"]) / les["half_lr"]) ** 2
        # radial profile: 1 in the core, fading to 0 at r^2 = reach (edge < 1 sharp, > 1 fuzzy)
        prof_ = np.clip((reach - r2) / (reach - 0.5), 0, 1) ** edge
        incord = lab[:, idx] == L.CORD
        target = T["cord"] + les["contrast"] * (T["csf"] - T["cord"])
        sub = vol[:, idx]
        vol[:, idx] = np.where(incord, sub + prof_ * (target - sub), sub)
        lab[:, idx] = np.where(incord & (r2 < 0.8), np.uint8(L.HYPERINTENSITY), lab[:, idx])
        seg_name = _segment_of(uc, cent_u)
        half_lab = les["half_len"] * np.sqrt(0.8)  # extent of the labelled core along the cord
        touched = _segments_touched(uc - half_lab, uc + half_lab, cent_u)
        les_info.append({**les, "segment": seg_name, "segments": touched, "length_mm": 2 * les["half_len"]})

    # thick-slice clinical artefacts (before the scanner's blur, contrast curve and noise)
    arts = knobs is not None and knobs.artefacts
    arng = artefact_rng if artefact_rng is not None else np.random.default_rng(0)
    if arts and knobs.partial_volume > 0 and an.compressed:
        # CSF partial volume into the flattened cord at compressed levels, strongest at its surface
        w_u = np.zeros(U.shape, np.float32)
        for name in an.compressed:
            k = DISCS.index(name)
            amp = np.float32(arng.uniform(0.5, 1.0))
            w_u = np.maximum(w_u, amp * np.exp(-0.5 * ((U - disc_u[k]) / 3.0) ** 2))
        half = np.maximum(0.5 * (Ea - Ep), 0.5)
        surf = np.clip(np.abs(V - 0.5 * (Ea + Ep)) / half, 0, 1) ** 2
        pv = (np.float32(knobs.partial_volume) * w_u * (0.35 + 0.65 * surf)).reshape(-1)
        idx = np.flatnonzero(pv > 1e-3)
        if idx.size:
            sub = vol[:, idx]
            incord = (lab[:, idx] == L.CORD) | (lab[:, idx] == L.HYPERINTENSITY)
            vol[:, idx] = np.where(incord, sub + pv[idx][None, :] * (T["csf"] - sub), sub)
    if arts and knobs.flow_voids > 0:
        # pulsatile CSF flow voids: dark, elongated spots, mostly in the dorsal CSF above C5
        f = ndi.gaussian_filter(arng.standard_normal(U.shape).astype(np.float32),
                                (1.2 / px, 3.0 / px), mode="reflect")
        f = (f - f.mean()) / (f.std() + 1e-8)
        where = np.where(V < 0, 1.0, 0.35) * np.clip((cent[4] - U) / 20.0, 0, 1)
        loss = np.float32(knobs.flow_voids) * np.clip((f - 1.3) / 1.0, 0, 1) * where
        loss = loss.reshape(-1)
        idx = np.flatnonzero(loss > 1e-3)
        if idx.size:
            incsf = lab[:, idx] == L.CSF
            vol[:, idx] = np.where(incsf, vol[:, idx] * (1 - loss[idx][None, :]), vol[:, idx])

    vol = vol.reshape(n_slices, ny, nz)
    lab = lab.reshape(n_slices, ny, nz)

    # ---- scanner: in-plane blur, contrast curve, bias field, Rician noise -------------------------
    if site.blur_px > 0:
        vol = ndi.gaussian_filter(vol, (0, site.blur_px, site.blur_px), mode="nearest", truncate=3.0)
    np.clip(vol, 0, None, out=vol)
    if site.gamma != 1.0:
        np.power(vol, np.float32(site.gamma), out=vol)
    if arts and knobs.ringing < 1.0:
        # truncation (Gibbs) ringing: only the central fraction of k-space along AP is acquired
        kf = np.fft.rfft(vol, axis=1)
        keep = max(2, int(round(knobs.ringing * kf.shape[1])))
        kf[:, keep:, :] = 0
        vol = np.fft.irfft(kf, n=ny, axis=1).astype(np.float32)
    yy = np.linspace(-1, 1, ny, dtype=np.float32)
    zz = np.linspace(-1, 1, nz, dtype=np.float32)
    xx = np.linspace(-1, 1, n_slices, dtype=np.float32)
    c = rng.normal(0, 1, 6).astype(np.float32)
    b_ap, b_si = np.float32(site.bias), np.float32(site.bias if site.bias_si is None else site.bias_si)
    c[:2] *= b_ap  # anterior-posterior: the posterior surface coil's fall-off
    c[2:4] *= b_si  # superior-inferior: along the cord
    c[4] *= b_ap
    c[5] *= np.sqrt(b_ap * b_si)
    logb = (-abs(c[0]) * 1.5 * yy + c[1] * yy**2)[None, :, None] + (c[2] * zz - abs(c[3]) * zz**2)[None, None, :] \
        + (c[4] * 0.3 * xx**2)[:, None, None] + c[5] * 0.5 * yy[None, :, None] * zz[None, None, :]
    vol *= np.exp(logb, dtype=np.float32)
    sigma = np.float32(site.noise * site.gamma)
    n1 = rng.standard_normal(vol.shape, dtype=np.float32)
    n2 = rng.standard_normal(vol.shape, dtype=np.float32)
    vol = np.sqrt((vol + sigma * n1) ** 2 + (sigma * n2) ** 2)

    affine = np.diag([dx, px, px, 1.0]).astype(np.float64)
    affine[:3, 3] = [x[0], y[0], z[0]]
    extras = {
        "lesions": les_info,
        "body_centroid_u": [float(v) for v in cent],
        "slice_x_mm": [float(v) for v in x],
    }
    return vol.astype(np.float32), lab, affine, extras


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def _reorient_ras_to(data: np.ndarray, affine: np.ndarray, codes: str):
    """Store a RAS array in another orientation (``"PSR"``, ``"LAS"`` ...), affine updated."""
    import nibabel as nib
    from nibabel import orientations as O

    ornt = O.ornt_transform(O.axcodes2ornt(("R", "A", "S")), O.axcodes2ornt(tuple(codes)))
    out = O.apply_orientation(data, ornt)
    new_aff = affine @ O.inv_ornt_aff(ornt, data.shape)
    assert nib.aff2axcodes(new_aff) == tuple(codes)
    return np.ascontiguousarray(out), new_aff


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, zooms=None) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


@dataclass
class SubjectResult:
    """One generated subject (row of ``participants.tsv``)."""

    subject: str
    site: str
    diagnosis: str
    lesion_segments: str
    lesion_types: str
    compressed_segments: str
    cord_ap_mm: float
    orientation: str
    n_slices: int
    image: str
    labels: str


def generate_subject(cohort: str, index: int, seed: int, out_dir: str | Path, n_slices: int,
                     lesion: bool, site: str | None = None, knobs: PhantomConfig | None = None) -> SubjectResult:
    """Generate and write subject ``index`` of ``cohort`` (deterministic in ``(seed, index)``).

    ``knobs`` (:class:`~u2ad_core.core.config.PhantomConfig`, default: the calibrated defaults) apply
    to the clinical (DCM) cohorts only. Anatomy and scanner noise come from one stream, the
    artefacts from another, so a knob changes only what it names.
    """
    spec = COHORTS[cohort]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7]))
    arng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 8]))
    site_name = site or spec.sites[index % len(spec.sites)]
    dcm = spec.diagnosis == "DCM"
    knobs = (knobs or PhantomConfig()) if dcm else None
    sp = effective_site(SITES[site_name], knobs.scanner_shift) if dcm else SITES[site_name]
    if dcm and knobs.inhomogeneity != 1.0:
        if knobs.inhomogeneity < 0:
            raise ValueError(f"PhantomConfig.inhomogeneity must be >= 0, got {knobs.inhomogeneity}")
        sp = replace(sp, bias_si=float(knobs.inhomogeneity) * (sp.bias if sp.bias_si is None else sp.bias_si))
    an = _sample_anatomy(rng, dcm=dcm, lesion=lesion, knobs=knobs)
    vol, lab, aff, extras = _render(an, sp, n_slices, rng, knobs=knobs, artefact_rng=arng)
    # intensity scale and stored dtype
    stored = vol * np.float32(sp.scale)
    info = np.iinfo(np.dtype(sp.dtype))
    stored = np.clip(np.rint(stored), info.min, info.max).astype(sp.dtype)
    sid = f"{cohort.split('_')[0]}{index + 1:03d}"
    out = Path(out_dir) / f"sub-{sid}"
    out.mkdir(parents=True, exist_ok=True)
    img_o, aff_o = _reorient_ras_to(stored, aff, sp.orientation)
    lab_o, _ = _reorient_ras_to(lab, aff, sp.orientation)
    f_img = out / f"sub-{sid}_T2w.nii.gz"
    f_lab = out / f"sub-{sid}_labels.nii.gz"
    _save_nifti(f_img, img_o, aff_o)
    _save_nifti(f_lab, lab_o, aff_o)
    segs = sorted({sg for le in extras["lesions"] for sg in le["segments"]}, key=L.SEGMENTS.index)
    return SubjectResult(
        subject=f"sub-{sid}", site=site_name, diagnosis=spec.diagnosis,
        lesion_segments=";".join(segs), lesion_types=";".join(le["type"] for le in extras["lesions"]),
        compressed_segments=";".join(an.compressed),
        cord_ap_mm=round(an.cord_ap, 2), orientation=sp.orientation, n_slices=n_slices,
        image=str(f_img.relative_to(out_dir)), labels=str(f_lab.relative_to(out_dir)),
    )


def generation_config(cohort: str, n: int, seed: int, data_cfg: DataConfig | None = None) -> dict[str, Any]:
    """What determines a generated cohort (its hash is the cache stamp in ``phantom.json``)."""
    if cohort not in COHORTS:
        raise KeyError(f"unknown cohort {cohort!r}; choose one of {sorted(COHORTS)}")
    data_cfg = data_cfg or DataConfig()
    spec = COHORTS[cohort]
    n_sl = data_cfg.n_sagittal_healthy if spec.volume == "healthy" else data_cfg.n_sagittal_clinical
    out = {
        "cohort": cohort, "n": int(n), "seed": int(seed), "n_sagittal": int(n_sl),
        "phantom_version": PHANTOM_VERSION,
        "sites": {s: asdict(SITES[s]) for s in spec.sites},
    }
    if spec.diagnosis == "DCM":  # the knobs change clinical cohorts only
        out["knobs"] = asdict(data_cfg.phantom)
    return out


def phantom_dir_name(cohort: str, data_cfg: DataConfig | None = None) -> str:
    """Folder name of a cohort under ``data/<preset>/raw/``: the cohort's name with the default
    knobs, ``<cohort>~<hash>`` otherwise (so a knob grid never overwrites the book's cohorts)."""
    data_cfg = data_cfg or DataConfig()
    if COHORTS[cohort].diagnosis != "DCM" or data_cfg.phantom == PhantomConfig():
        return cohort
    return f"{cohort}~{config_hash(data_cfg.phantom, n=8)}"


def cohort_is_current(out_dir: str | Path, gen_cfg: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds a complete cohort generated with exactly ``gen_cfg``."""
    stamp = Path(out_dir) / "phantom.json"
    if not stamp.is_file() or not (Path(out_dir) / "participants.tsv").is_file():
        return False
    try:
        meta = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("generation_hash") == config_hash(gen_cfg) and meta.get("complete", False)


def _lesion_flags(cohort: str, n: int, seed: int) -> np.ndarray:
    k = n_lesion_patients(cohort, n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 99991]))
    flags = np.zeros(n, bool)
    flags[rng.permutation(n)[:k]] = True
    return flags


def _gen_one(args):
    return generate_subject(*args)


def generate_cohort(name: str, n: int | None, seed: int, out_dir: str | Path,
                    data_cfg: DataConfig | None = None, workers: int = 1,
                    show_progress: bool = True, force: bool = False) -> Path:
    """Generate a phantom cohort into ``out_dir``; returns ``out_dir``.

    name: one of :data:`COHORTS` (``spine_generic_like``, ``openneuro_like``, ``renji_like``,
    ``ruijin_like``). n: subjects (``None`` -> ``data_cfg.cohorts.<name>``). The fraction of
    lesion patients of the paper is kept (:func:`n_lesion_patients`). Volumes have
    ``data_cfg.n_sagittal_healthy`` or ``n_sagittal_clinical`` sagittal slices.

    Idempotent: when ``out_dir/phantom.json`` carries the same generation hash the cohort is
    reused (``force=True`` regenerates). The cohort is written into a temporary sibling
    folder and renamed into place, so a half-written cohort is never mistaken for a result.
    """
    data_cfg = data_cfg or DataConfig()
    if name not in COHORTS:
        raise KeyError(f"unknown cohort {name!r}; choose one of {sorted(COHORTS)}")
    if n is None:
        n = int(getattr(data_cfg.cohorts, name))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    gcfg = generation_config(name, n, seed, data_cfg)
    if not force and cohort_is_current(out_dir, gcfg):
        return out_dir
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{int(time.time() * 1e3) % 10**9}"
    tmp.mkdir(parents=True, exist_ok=False)
    t0 = time.perf_counter()
    try:
        flags = _lesion_flags(name, n, seed)
        knobs = data_cfg.phantom if COHORTS[name].diagnosis == "DCM" else None
        jobs = [(name, i, seed, tmp, gcfg["n_sagittal"], bool(flags[i]), None, knobs) for i in range(n)]
        bar = progress(total=n, desc=f"phantom {name}", unit="subj", disable=None if show_progress else True)
        rows: list[SubjectResult] = []
        if workers > 1 and n > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers) as pool:
                for r in pool.imap(_gen_one, jobs, chunksize=2):
                    rows.append(r)
                    bar.update(1)
        else:
            for j in jobs:
                rows.append(_gen_one(j))
                bar.update(1)
        bar.close()
        import pandas as pd

        df = pd.DataFrame([asdict(r) for r in rows])
        df["lesion_segments"] = df["lesion_segments"].replace("", "n/a")
        df["compressed_segments"] = df["compressed_segments"].replace("", "n/a")
        df["lesion_types"] = df["lesion_types"].replace("", "n/a")
        atomic_write_text(tmp / "participants.tsv", df.to_csv(sep="\t", index=False))
        atomic_write_json(tmp / "phantom.json", {
            "generation": gcfg, "generation_hash": config_hash(gcfg), "complete": True,
            "n_lesion": int(flags.sum()), "seconds": round(time.perf_counter() - t0, 2),
            "layout": "phantom",
        })
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{int(time.time() * 1e3) % 10**9}"
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    import yaml

    from u2ad_core.core.presets import get_preset

    knobs = {}
    for item in args.knob or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--knob expects NAME=VALUE (a PhantomConfig field), got {item!r}")
        knobs[f"data.phantom.{key.strip()}"] = yaml.safe_load(value)
    cfg = get_preset(args.preset, **knobs).data
    t0 = time.perf_counter()
    out = generate_cohort(args.cohort, args.n, args.seed, args.out, cfg, workers=args.workers, force=args.force)
    meta = json.loads((out / "phantom.json").read_text())
    print(f"{args.cohort}: {meta['generation']['n']} subjects ({meta['n_lesion']} with lesion) -> {out} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("phantom", help="generate a phantom cohort (NIfTI + participants.tsv)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--cohort", required=True, choices=sorted(COHORTS))
    p.add_argument("--n", type=int, default=None, help="subjects (default: the preset's cohort size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--preset", default="paper", help="preset giving the slices per volume (default paper)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is current")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE",
                   help="a difficulty knob for clinical cohorts (PhantomConfig field), e.g. coupling=independent, "
                        "lesion_conspicuity=faint, artefacts=false, scanner_shift=0.5 (repeatable)")
    p.set_defaults(func=_cli)
