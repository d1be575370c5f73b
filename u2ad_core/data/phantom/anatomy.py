"""One subject's anatomy: vertebral geometry, canal, cord, compression and lesions.

Everything here is in millimetres along the cord (``u``, from the top of C2, inferior
positive). :func:`_sample_anatomy` draws a subject from a ``numpy.random.Generator``; the
number and order of its draws do not depend on the knobs (:class:`PhantomConfig`), so two knob
settings give the same subjects (paired comparisons across a knob grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from u2ad_core.core import labels as L
from u2ad_core.core.config import PhantomConfig

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


def _check_knobs(knobs: PhantomConfig) -> None:
    """Raise ``ValueError`` on a coupling or a lesion conspicuity the phantom does not know."""
    if knobs.coupling not in COUPLING:
        raise ValueError(f"PhantomConfig.coupling must be one of {sorted(COUPLING)}, got {knobs.coupling!r}")
    if knobs.lesion_conspicuity not in (*LESION_TYPES, "mixed"):
        raise ValueError(f"PhantomConfig.lesion_conspicuity must be one of {[*LESION_TYPES, 'mixed']}, "
                         f"got {knobs.lesion_conspicuity!r}")


def _sample_healthy(rng: np.random.Generator) -> Anatomy:
    """A healthy spine: body (9,) and disc (8,) heights scaled by one subject size, canal and cord."""
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
    return Anatomy(
        body_top=top, body_bot=bot, body_depth=depth, disc_bulge=bulge, lf_thick=lf,
        disc_signal=dsig, dens_h=float(rng.uniform(11.0, 15.0) * s),
        cord_ap=cord_ap, cord_lr=float(cord_ap * rng.uniform(1.35, 1.6)),
        csf_ant=float(rng.uniform(2.0, 3.5)), csf_post=float(rng.uniform(2.8, 4.6)),
        sac_lr=float(rng.uniform(10.0, 12.0)),
        lordosis=float(rng.uniform(4.0, 12.0)), tilt=float(np.clip(rng.normal(0.02, 0.06), -0.12, 0.14)),
    )


def _compress(a: Anatomy, rng: np.random.Generator, lesion: bool, knobs: PhantomConfig) -> np.ndarray:
    """Degenerate ``a`` in place into a DCM spine; returns the compressed disc levels (sorted
    indices into :data:`DISCS`).

    Straighter lordosis, less CSF, dark discs; 1-3 levels (C5-6 most often) where a disc bulge
    and ligamentum-flavum thickening take up ``sev`` of the CSF reserve (beyond 0.8: of the cord
    too) and the disc loses height. Lesion patients draw ``sev`` from ``U(COUPLING[coupling], 1.05)``.
    """
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
        take = sev * reserve + max(0.0, sev - 0.8) * a.cord_ap * 0.8
        share = rng.uniform(0.55, 0.85)  # anterior (disc) vs posterior (ligament)
        a.disc_bulge[k] = max(a.disc_bulge[k], 1.5) + share * take
        a.lf_thick[k] = a.lf_thick[k] + (1 - share) * take
        hd_k = a.body_top[k + 1] - a.body_bot[k]
        shrink = hd_k * rng.uniform(0.2, 0.45)  # disc height loss
        a.body_top[k + 1:] -= shrink
        a.body_bot[k + 1:] -= shrink
        a.disc_signal[k] = rng.uniform(0.1, 0.35)
    a.compressed = tuple(DISCS[k] for k in levels)
    return levels


def _place_lesions(a: Anatomy, rng: np.random.Generator, levels: np.ndarray, knobs: PhantomConfig) -> None:
    """Append 1-2 lesions to ``a.lesions`` at compressed ``levels`` (one when only one level).

    A lesion is a dict: ``level``, ``u`` (centre along the cord, mm), ``half_len`` (mm),
    ``ap_frac`` (half AP extent / cord AP), ``half_lr`` (mm), ``x`` (lateral centre, mm),
    ``type`` (a key of :data:`LESION_TYPES`) and ``contrast`` (cord = 0, CSF = 1). The type and
    contrast come from two uniforms drawn whatever the knobs, so the draws stay paired.
    """
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


def _sample_anatomy(rng: np.random.Generator, dcm: bool, lesion: bool,
                    knobs: PhantomConfig | None = None) -> Anatomy:
    """Draw one subject's geometry. The number of draws does not depend on ``knobs``, so two
    knob settings give the same subjects (paired comparisons across a knob grid)."""
    knobs = knobs or PhantomConfig()
    _check_knobs(knobs)
    a = _sample_healthy(rng)
    if dcm:
        levels = _compress(a, rng, lesion, knobs)
        if lesion:
            _place_lesions(a, rng, levels, knobs)
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
