"""One subject's volume, stage by stage: template -> slabs -> lesions -> artefacts -> scanner.

:func:`_render` is the pipeline. Its stages, each a function of explicit arrays:

1. the 2D template (:mod:`.scene`): tissue values, field of view, cord coordinates ``(U, V)``,
   canal profiles, textures, background and structure layers, all (NY, NZ);
2. :func:`_composite`: the layers into ``S`` sagittal slabs with partial volume, giving the
   lesion-free, noise-free tissue volume and its labels, both (S, NY*NZ);
3. :func:`_add_lesions`: the T2 hyperintensities, inside the cord only (new arrays; the inputs
   are left as they were);
4. :func:`_draw_artefacts` then :func:`_tissue_artefacts`: thick-slice partial volume and CSF
   flow voids (their own generator; nothing else changes when they are switched);
5. :func:`_draw_scanner` then :func:`_scanner_image`: the noise-free image the scanner sees
   (in-plane blur, contrast curve, truncation ringing, bias field), (S, NY, NZ);
6. :func:`_rician_noise`: the stored magnitude image.

With ``oracle=True`` :func:`_render` also returns, from the same draws, the noise-free image and
the lesion-free twin (the tissue volume before step 3 through steps 4-6 with the same artefact,
bias and noise draws; :func:`_oracle`), for diagnostics only (they are written beside a cohort
by :mod:`.cohort`, never read by a method).

Every draw is separated from the arithmetic that uses it (``_draw_*`` return the random fields,
the other stages are deterministic), so the same draws can be applied to two volumes, e.g. a
subject and its lesion-free twin. Draw order (subject generator ``rng``): the template's, one
slab offset, then the scanner's bias coefficients and the two noise fields; the artefact
generator draws the partial-volume amplitudes, then the flow-void field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from u2ad_core.core import labels as L
from u2ad_core.core.config import PhantomConfig
from u2ad_core.data.phantom.anatomy import DISCS, LESION_TYPES, Anatomy, _segment_of, _segments_touched
from u2ad_core.data.phantom.scene import (
    Canal,
    _background,
    _canal_profiles,
    _cord_coordinates,
    _field_of_view,
    _Layer,
    _structure_layers,
    _textures,
    _tissues,
)
from u2ad_core.data.phantom.sites import SiteProfile


# --------------------------------------------------------------------------------------
# Slabs
# --------------------------------------------------------------------------------------
def _slice_positions(rng: np.random.Generator, n_slices: int, dx: float) -> np.ndarray:
    """Centres (S,) of ``n_slices`` sagittal slabs of thickness ``dx`` mm (left -> right),
    centred on the midline up to a random offset of a quarter slab (one draw)."""
    return (np.arange(n_slices) - (n_slices - 1) / 2) * dx + rng.uniform(-0.25, 0.25) * dx


def _composite(img: np.ndarray, layers: list[_Layer], x: np.ndarray, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """Composite ``layers`` over the background ``img`` (NY, NZ) for the slabs ``[x - dx/2,
    x + dx/2]`` (``x``: (S,)). A layer covers the fraction ``f`` of a slab that its half-width
    spans (partial volume) and sets the label where ``f >= 0.5`` (0 for unlabelled tissue).

    Returns ``vol`` (S, NY*NZ) float32 and ``lab`` (S, NY*NZ) uint8: the tissue volume before
    lesions, artefacts and scanner.
    """
    xs = x.astype(np.float32)[:, None]
    t = np.float32(dx)
    n_slices = len(x)
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
        cur = lab[:, idx]
        lab[:, idx] = np.where(f >= 0.5, np.uint8(ly.label), cur)
    return vol, lab


# --------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------
def _add_lesions(vol: np.ndarray, lab: np.ndarray, an: Anatomy, T: dict[str, float], U: np.ndarray,
                 V: np.ndarray, c: Canal, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Paint ``an.lesions`` into copies of ``vol`` / ``lab`` (S, NY*NZ): soft-edged ellipsoids
    centred on the cord, moved towards ``T["cord"] + contrast * (T["csf"] - T["cord"])`` by a
    radial profile (1 in the core, 0 at ``r^2 = reach``; :data:`LESION_TYPES`), on cord pixels
    only; the core ``r^2 < 0.8`` is labelled HYPERINTENSITY. ``U``, ``V``: (NY, NZ); ``x``: (S,).

    Returns the new ``vol``, ``lab`` and one dict per lesion (its draws plus ``segment``, the
    ``segments`` its labelled core touches and ``length_mm``). No draws; the inputs are unchanged,
    so the lesion-free volume stays available.
    """
    vol, lab = vol.copy(), lab.copy()
    xs = x.astype(np.float32)[:, None]
    info = []
    for les in an.lesions:
        uc = les["u"]
        cc_l = float(np.interp(uc, c.ug, 0.5 * (c.e_ant + c.e_post)))
        ca_l = float(np.interp(uc, c.ug, 0.5 * (c.e_ant - c.e_post)))
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
        half_lab = les["half_len"] * np.sqrt(0.8)  # extent of the labelled core along the cord
        touched = _segments_touched(uc - half_lab, uc + half_lab, c.cent)
        info.append({**les, "segment": _segment_of(uc, c.cent), "segments": touched, "length_mm": 2 * les["half_len"]})
    return vol, lab, info


# --------------------------------------------------------------------------------------
# Thick-slice artefacts (before the scanner)
# --------------------------------------------------------------------------------------
@dataclass
class ArtefactDraw:
    """The artefacts' random part: ``pv_amp``, one float32 amplitude per compressed level (empty
    when partial volume is off), and ``flow``, white noise (NY, NZ) float32 for the flow voids
    (``None`` when they are off)."""

    pv_amp: list[np.float32]
    flow: np.ndarray | None


def _draw_artefacts(arng: np.random.Generator, an: Anatomy, shape: tuple[int, int],
                    knobs: PhantomConfig | None) -> ArtefactDraw:
    """Draw what :func:`_tissue_artefacts` needs; ``knobs`` ``None`` (or ``artefacts`` off):
    nothing. ``shape``: (NY, NZ)."""
    arts = knobs is not None and knobs.artefacts
    pv_amp = []
    if arts and knobs.partial_volume > 0 and an.compressed:
        pv_amp = [np.float32(arng.uniform(0.5, 1.0)) for _ in an.compressed]
    flow = arng.standard_normal(shape).astype(np.float32) if arts and knobs.flow_voids > 0 else None
    return ArtefactDraw(pv_amp, flow)


def _tissue_artefacts(vol: np.ndarray, lab: np.ndarray, draw: ArtefactDraw, knobs: PhantomConfig | None,
                      an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                      pixel_mm: float) -> np.ndarray:
    """A copy of ``vol`` (S, NY*NZ) with the thick-slice artefacts of the tissue: CSF partial
    volume into the flattened cord at compressed levels (strongest at the cord surface; on cord
    and lesion pixels of ``lab``) and pulsatile CSF flow voids (dark elongated spots in the dorsal
    CSF above C5; on CSF pixels). ``lab`` is not changed; the masks do not depend on the lesion
    label (cord and lesion pixels are treated alike), so a lesion-free twin gets the same
    artefacts."""
    vol = vol.copy()
    if draw.pv_amp:
        w_u = np.zeros(U.shape, np.float32)
        for name, amp in zip(an.compressed, draw.pv_amp):
            k = DISCS.index(name)
            w_u = np.maximum(w_u, amp * np.exp(-0.5 * ((U - c.disc_u[k]) / 3.0) ** 2))
        half = np.maximum(0.5 * (c.Ea - c.Ep), 0.5)
        surf = np.clip(np.abs(V - 0.5 * (c.Ea + c.Ep)) / half, 0, 1) ** 2
        pv = (np.float32(knobs.partial_volume) * w_u * (0.35 + 0.65 * surf)).reshape(-1)
        idx = np.flatnonzero(pv > 1e-3)
        if idx.size:
            sub = vol[:, idx]
            incord = (lab[:, idx] == L.CORD) | (lab[:, idx] == L.HYPERINTENSITY)
            vol[:, idx] = np.where(incord, sub + pv[idx][None, :] * (T["csf"] - sub), sub)
    if draw.flow is not None:
        f = ndi.gaussian_filter(draw.flow, (1.2 / pixel_mm, 3.0 / pixel_mm), mode="reflect")
        f = (f - f.mean()) / (f.std() + 1e-8)
        where = np.where(V < 0, 1.0, 0.35) * np.clip((c.cent[4] - U) / 20.0, 0, 1)
        loss = np.float32(knobs.flow_voids) * np.clip((f - 1.3) / 1.0, 0, 1) * where
        loss = loss.reshape(-1)
        idx = np.flatnonzero(loss > 1e-3)
        if idx.size:
            incsf = lab[:, idx] == L.CSF
            vol[:, idx] = np.where(incsf, vol[:, idx] * (1 - loss[idx][None, :]), vol[:, idx])
    return vol


# --------------------------------------------------------------------------------------
# Scanner
# --------------------------------------------------------------------------------------
@dataclass
class ScannerDraw:
    """The scanner's random part: ``bias`` (6,) float32 standard-normal coefficients of the bias
    field (before the site's amplitudes), ``n1`` / ``n2`` (S, NY, NZ) float32 the real and
    imaginary noise."""

    bias: np.ndarray
    n1: np.ndarray
    n2: np.ndarray


def _draw_scanner(rng: np.random.Generator, shape: tuple[int, int, int]) -> ScannerDraw:
    """Draw the bias coefficients, then the two noise fields of ``shape`` (S, NY, NZ)."""
    bias = rng.normal(0, 1, 6).astype(np.float32)
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n2 = rng.standard_normal(shape, dtype=np.float32)
    return ScannerDraw(bias, n1, n2)


def _truncate_kspace(vol: np.ndarray, ringing: float) -> np.ndarray:
    """Truncation (Gibbs) ringing: keep only the central fraction ``ringing`` of k-space along AP
    (axis 1 of ``vol``, (S, NY, NZ))."""
    ny = vol.shape[1]
    kf = np.fft.rfft(vol, axis=1)
    keep = max(2, int(round(ringing * kf.shape[1])))
    kf[:, keep:, :] = 0
    return np.fft.irfft(kf, n=ny, axis=1).astype(np.float32)


def _bias_field(shape: tuple[int, int, int], site: SiteProfile, coeffs: np.ndarray) -> np.ndarray:
    """The smooth multiplicative field (S, NY, NZ) float32 from six standard-normal ``coeffs``:
    the posterior surface coil's fall-off and curvature along AP (``site.bias``), a slope and
    curvature along the cord (``site.bias_si``), a lateral curvature and an AP x SI cross term."""
    n_slices, ny, nz = shape
    yy = np.linspace(-1, 1, ny, dtype=np.float32)
    zz = np.linspace(-1, 1, nz, dtype=np.float32)
    xx = np.linspace(-1, 1, n_slices, dtype=np.float32)
    c = coeffs.copy()
    b_ap, b_si = np.float32(site.bias), np.float32(site.bias if site.bias_si is None else site.bias_si)
    c[:2] *= b_ap  # anterior-posterior: the posterior surface coil's fall-off
    c[2:4] *= b_si  # superior-inferior: along the cord
    c[4] *= b_ap
    c[5] *= np.sqrt(b_ap * b_si)
    logb = (-abs(c[0]) * 1.5 * yy + c[1] * yy**2)[None, :, None] + (c[2] * zz - abs(c[3]) * zz**2)[None, None, :] \
        + (c[4] * 0.3 * xx**2)[:, None, None] + c[5] * 0.5 * yy[None, :, None] * zz[None, None, :]
    return np.exp(logb, dtype=np.float32)


def _scanner_image(vol: np.ndarray, site: SiteProfile, bias: np.ndarray, ringing: float = 1.0) -> np.ndarray:
    """The noise-free image (S, NY, NZ) float32 the scanner sees of the tissue volume ``vol``
    (S, NY, NZ): in-plane blur, clipped at 0, contrast curve ``** site.gamma``, truncation
    ringing when ``ringing < 1``, times the bias field of ``bias`` (:func:`_bias_field`). No draws;
    ``vol`` is unchanged."""
    if site.blur_px > 0:
        vol = ndi.gaussian_filter(vol, (0, site.blur_px, site.blur_px), mode="nearest", truncate=3.0)
    else:
        vol = vol.copy()
    np.clip(vol, 0, None, out=vol)
    if site.gamma != 1.0:
        np.power(vol, np.float32(site.gamma), out=vol)
    if ringing < 1.0:
        vol = _truncate_kspace(vol, ringing)
    vol *= _bias_field(vol.shape, site, bias)
    return vol


def _rician_noise(clean: np.ndarray, site: SiteProfile, draw: ScannerDraw) -> np.ndarray:
    """The magnitude image ``|clean + sigma (n1 + i n2)|`` (S, NY, NZ) float32, ``sigma =
    site.noise * site.gamma`` (relative to CSF)."""
    sigma = np.float32(site.noise * site.gamma)
    return np.sqrt((clean + sigma * draw.n1) ** 2 + (sigma * draw.n2) ** 2).astype(np.float32)


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------
def _render(an: Anatomy, site: SiteProfile, n_slices: int, rng: np.random.Generator,
            knobs: PhantomConfig | None = None, artefact_rng: np.random.Generator | None = None,
            oracle: bool = False):
    """Build one subject: returns (image RAS float32 (S, NY, NZ), labels RAS uint8 (S, NY, NZ),
    affine RAS (4, 4), extras).

    ``knobs.artefacts`` (clinical cohorts: pass ``knobs``; healthy ones: ``None``) adds partial
    volume at compressed levels, CSF flow voids and truncation ringing, drawn from
    ``artefact_rng`` so that switching them does not change anything else. ``extras``:
    ``lesions`` (see :func:`_add_lesions`), ``body_centroid_u`` and ``slice_x_mm``; with
    ``oracle`` also ``oracle``: the arrays of :func:`_oracle`, ``lesion_tissue`` (S, NY, NZ)
    bool, the voxels where the lesions changed the tissue volume (after the thick-slice artefacts;
    the source of the footprint) and ``scan``, the subject's :class:`ScannerDraw` (its noise).
    ``oracle`` draws nothing and changes nothing
    else: image, labels and every other extra are bit-identical with it on or off.
    """
    T = _tissues(site, rng)
    y, z = _field_of_view(an, site, rng)
    U, V = _cord_coordinates(an, y, z)
    canal = _canal_profiles(an, U)
    tex = _textures(rng, U.shape, site.pixel_mm)
    bg = _background(an, T, U, V, canal, tex)
    layers = _structure_layers(an, T, U, V, canal, tex, bg, rng)
    x = _slice_positions(rng, n_slices, site.slice_mm)
    vol0, lab0 = _composite(bg.img, layers, x, site.slice_mm)
    vol, lab, les_info = _add_lesions(vol0, lab0, an, T, U, V, canal, x)

    arts = knobs if knobs is not None and knobs.artefacts else None
    arng = artefact_rng if artefact_rng is not None else np.random.default_rng(0)
    art_draw = _draw_artefacts(arng, an, U.shape, arts)

    def tissue(v: np.ndarray, lb: np.ndarray) -> np.ndarray:
        return _tissue_artefacts(v, lb, art_draw, arts, an, T, U, V, canal, site.pixel_mm)

    vol = tissue(vol, lab)
    shape = (n_slices, *U.shape)
    scan = _draw_scanner(rng, shape)
    ringing = arts.ringing if arts else 1.0
    clean = _scanner_image(vol.reshape(shape), site, scan.bias, ringing=ringing)
    image = _rician_noise(clean, site, scan)

    affine = np.diag([site.slice_mm, site.pixel_mm, site.pixel_mm, 1.0]).astype(np.float64)
    affine[:3, 3] = [x[0], y[0], z[0]]
    extras = {
        "lesions": les_info,
        "body_centroid_u": [float(v) for v in canal.cent],
        "slice_x_mm": [float(v) for v in x],
    }
    if oracle:
        twin_tissue = tissue(vol0, lab0).reshape(shape) if an.lesions else None
        extras["oracle"] = _oracle(image, clean, twin_tissue, site, scan, ringing)
        extras["oracle"]["lesion_tissue"] = (vol.reshape(shape) != twin_tissue) if twin_tissue is not None \
            else np.zeros(shape, bool)
        extras["oracle"]["scan"] = scan
    return image, lab.reshape(shape), affine, extras


def _oracle(image: np.ndarray, clean: np.ndarray, twin_tissue: np.ndarray | None, site: SiteProfile,
            scan: ScannerDraw, ringing: float) -> dict[str, np.ndarray]:
    """What a real scan hides, from the subject's own draws (no new ones), all (S, NY, NZ) (the
    noisy ones float32 like the image, the noise-free ones in the scanner stage's own precision):

    - ``clean``: the noise-free image, so ``image == _rician_noise(clean, site, scan)`` exactly;
    - ``twin``: the lesion-free twin as the scanner stores it: the tissue volume before
      :func:`_add_lesions` (``twin_tissue``, after the same thick-slice artefacts; ``None`` when
      the subject has no lesion) through the same scanner (bias, ringing) and the same noise
      fields ``scan.n1``, ``scan.n2``;
    - ``twin_clean``: its noise-free version.

    Footprint (where ``twin`` may differ from ``image``): the voxels a lesion changed in the tissue
    volume, dilated in-plane by the blur's radius ``int(3 * site.blur_px + 0.5)`` pixels (the
    Gaussian is truncated at 3 sigma); with ringing (``ringing < 1``) it spreads along the whole
    AP line (axis 1) of every such voxel. Everywhere else ``twin == image`` bit for bit (every
    stage is pointwise or local); a subject without a lesion has ``twin == image`` everywhere.
    """
    if twin_tissue is None:
        return {"clean": clean.copy(), "twin": image.copy(), "twin_clean": clean.copy()}
    twin_clean = _scanner_image(twin_tissue, site, scan.bias, ringing=ringing)
    return {"clean": clean.copy(), "twin": _rician_noise(twin_clean, site, scan), "twin_clean": twin_clean}
