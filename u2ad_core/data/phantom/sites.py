"""Scanner / protocol profiles, the phantom cohorts and the base tissue intensities.

A :class:`SiteProfile` is everything a scanner adds to the anatomy (geometry, contrast, bias,
noise, stored dtype and orientation); a :class:`CohortSpec` names a cohort's sites, diagnosis
and lesion prevalence. :func:`effective_site` moves a clinical site towards or away from a
neutral healthy profile (``PhantomConfig.scanner_shift``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


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

COHORT_SPECS: dict[str, CohortSpec] = {
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
    spec = COHORT_SPECS[cohort]
    if spec.paper_lesion == 0:
        return 0
    k = int(round(n * spec.paper_lesion / spec.paper_n))
    if n >= 20:
        k = max(k, spec.min_lesion)
    return int(min(max(k, 0), n))
