"""The 2D sagittal template of one subject: field of view, cord coordinates, canal profiles,
textures, background tissue and the structure layers.

Everything here is a map over the mid-sagittal plane, ``(NY, NZ)`` = (posterior -> anterior,
inferior -> superior), in the subject's curvilinear coordinates ``U`` (arc length along the cord
from the top of C2, inferior positive, mm) and ``V`` (signed distance from the cord centre line,
anterior positive, mm). A structure is a :class:`_Layer`: a value map plus a lateral half-width
map (its cross-section), which :mod:`.render` composites into sagittal slabs.

Random draws (from the subject's generator, in this order when called by
:func:`~u2ad_core.data.phantom.render._render`): tissue factors, field-of-view placement,
four texture fields, spinous-process lengths and angles, one marrow factor per vertebral body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from u2ad_core.core import labels as L
from u2ad_core.data.phantom.anatomy import Anatomy
from u2ad_core.data.phantom.sites import TISSUE, SiteProfile

BIG = np.float32(1e3)
"""Half-width (mm) of structures that span every slice (pillars, occiput, clivus)."""


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


@dataclass
class _Layer:
    """One structure of the template, composited into the slabs by its lateral half-width."""

    name: str
    hw: np.ndarray  # (NY, NZ) lateral half-width (mm); <= 0 where absent
    value: np.ndarray | float  # intensity (2D map or constant)
    label: int  # label value (0 = unlabelled tissue)


def _layer(name: str, mask: np.ndarray, hw, value, label: int = 0) -> _Layer:
    """A structure where ``mask`` (NY, NZ) is set, of half-width ``hw`` (scalar or (NY, NZ)) mm."""
    hw_map = np.where(mask, np.broadcast_to(np.float32(hw) if np.isscalar(hw) else hw, mask.shape), -1.0)
    return _Layer(name, hw_map.astype(np.float32), value, label)


def _tissues(site: SiteProfile, rng: np.random.Generator) -> dict[str, float]:
    """The subject's tissue intensities at ``site`` (CSF = 1; each other tissue jittered by 4 %)."""
    t = {k: v * site.tissue.get(k, 1.0) for k, v in TISSUE.items()}
    for k in t:
        if k not in ("air", "csf"):
            t[k] *= float(rng.normal(1.0, 0.04))
    t["annulus"] = min(t["annulus"], 0.2)
    return t


# --------------------------------------------------------------------------------------
# Field of view and cord coordinates
# --------------------------------------------------------------------------------------
def _field_of_view(an: Anatomy, site: SiteProfile, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``y`` (NY,) posterior -> anterior and ``z`` (NZ,) inferior -> superior (mm,
    RAS axes 1 and 2; ``z = 0`` at the top of C2). The placement varies with patient positioning
    (two draws)."""
    px = site.pixel_mm
    fov_z, fov_y = site.fov_mm
    nz, ny = int(round(fov_z / px)), int(round(fov_y / px))
    spine_len = an.body_bot[-1] + 10.0
    z_hi = 40.0 + rng.uniform(-6, 10) + max(0.0, fov_z - 40.0 - spine_len) * 0.3
    z = np.sort(z_hi - px * np.arange(nz))  # ascending (I -> S) for RAS axis 2
    y_post = -0.42 * fov_y + rng.uniform(-8, 8)
    y = y_post + px * np.arange(ny)  # ascending (P -> A) for RAS axis 1
    return y, z


def _cord_coordinates(an: Anatomy, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Curvilinear coordinates ``(U, V)``, each (NY, NZ) float32, of the pixel grid ``y`` x ``z``.

    The centre line ``y_c(z)`` is a parabola (lordosis, anterior apex near C5) plus a tilt;
    ``V`` is the signed distance to it (the foot of the perpendicular by three Newton steps),
    ``U`` the arc length from the top of C2 (inferior positive).
    """
    Y, Z = np.meshgrid(y.astype(np.float64), z.astype(np.float64), indexing="ij")  # (NY, NZ)
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
    return U.astype(np.float32), V.astype(np.float32)


# --------------------------------------------------------------------------------------
# Canal profiles along the cord
# --------------------------------------------------------------------------------------
@dataclass
class Canal:
    """The canal and cord along ``u``: 1D profiles on the grid ``ug`` (G,) and their maps (NY, NZ).

    ``e_ant`` / ``e_post`` (G,): the cord's anterior / posterior edge in ``v``; the maps ``Au`` /
    ``Pu``: the sac's anterior boundary and posterior depth, ``Ea`` / ``Ep``: the cord's edges,
    ``Cb`` / ``Sb``: the cord's and sac's lateral half-widths, ``Bulge``: the posterior disc bulge.
    ``A0`` / ``P0``: the uncompressed sac boundaries, ``vb_post``: the posterior wall of the
    vertebral bodies (``v``, mm); ``cent`` (9,), ``disc_u`` (8,), ``disc_h`` (8,): body centroids,
    disc centres and heights along ``u``.
    """

    ug: np.ndarray
    e_ant: np.ndarray
    e_post: np.ndarray
    Au: np.ndarray
    Pu: np.ndarray
    Ea: np.ndarray
    Ep: np.ndarray
    Cb: np.ndarray
    Sb: np.ndarray
    Bulge: np.ndarray
    A0: float
    P0: float
    vb_post: float
    cent: np.ndarray
    disc_u: np.ndarray
    disc_h: np.ndarray


def _canal_profiles(an: Anatomy, U: np.ndarray) -> Canal:
    """The canal narrowed by disc bulges and ligamentum flavum, the cord flattened (wider
    laterally) where the canal is tight, the medulla / cisterna magna above the dens and the
    cervical enlargement, sampled along ``u`` and mapped onto ``U`` (NY, NZ)."""
    spine_len = an.body_bot[-1] + 10.0
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

    return Canal(ug=ug, e_ant=e_ant, e_post=e_post, Au=prof(A_u), Pu=prof(P_u), Ea=prof(e_ant), Ep=prof(e_post),
                 Cb=prof(cord_b), Sb=prof(sac_b), Bulge=prof(bulge_u), A0=A0, P0=P0, vb_post=vb_post,
                 cent=cent, disc_u=disc_u, disc_h=disc_h)


# --------------------------------------------------------------------------------------
# Textures and background
# --------------------------------------------------------------------------------------
@dataclass
class Textures:
    """Zero-mean unit-std smooth noise fields (NY, NZ): ``fine`` (0.8 mm), ``mid`` (2 mm),
    ``fib`` (fibres along the cord, 0.6 x 5 mm) and ``low`` (10 mm)."""

    fine: np.ndarray
    mid: np.ndarray
    fib: np.ndarray
    low: np.ndarray


def _textures(rng: np.random.Generator, shape: tuple[int, int], pixel_mm: float) -> Textures:
    """Four texture fields of ``shape`` (NY, NZ), drawn in the order fine, mid, fib, low."""
    s_px = 1.0 / pixel_mm
    fine = _smooth_noise(rng, shape, (0.8 * s_px, 0.8 * s_px))
    mid = _smooth_noise(rng, shape, (2.0 * s_px, 2.0 * s_px))
    fib = _smooth_noise(rng, shape, (0.6 * s_px, 5.0 * s_px))  # fibres along z (muscles)
    low = _smooth_noise(rng, shape, (10 * s_px, 10 * s_px))
    return Textures(fine, mid, fib, low)


@dataclass
class Background:
    """The tissue outside the spine: ``img`` (NY, NZ) float32 (soft tissue, airway, fat, head,
    thorax); ``occ_line`` (NY, NZ): ``u`` of the occipital bone, ``occ`` (NY, NZ) bool: the bone."""

    img: np.ndarray
    occ_line: np.ndarray
    occ: np.ndarray


def _background(an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                tex: Textures) -> Background:
    """Neck muscles with fat planes, subcutaneous fat and skin, prevertebral tissue, the airway
    with its mucosa, thyroid, tongue, cerebellum below the occiput, mediastinum below T1."""
    body_front = np.interp(U, c.ug, np.interp(c.ug, c.cent, c.vb_post + an.body_depth)).astype(np.float32)
    prev = np.interp(U, [-100, 20, 55, 75, 300], [4, 4, 6, 13, 13]).astype(np.float32)
    air_ap = np.interp(U, [-100, -30, 40, 60, 90, 300], [0, 14, 14, 11, 15, 15]).astype(np.float32)
    air_ap = air_ap * (1 + 0.15 * tex.low)
    ant_skin = body_front + prev + air_ap + np.interp(U, [-100, 20, 45, 100, 300], [140, 140, 28, 30, 60]).astype(np.float32)
    post_base = c.P0 + 3 + np.interp(U, [-100, -20, 50, 120, 300], [35, 45, 55, 70, 80]).astype(np.float32)
    post_skin = -(post_base + 3.0 * tex.low)
    sc_fat_post = 6.0 + 2.5 * tex.low + np.interp(U, [-100, 60, 300], [2, 4, 10]).astype(np.float32)
    img = np.zeros(U.shape, np.float32)
    inside = (V < ant_skin) & (V > post_skin)
    muscle = T["muscle"] * (1 + 0.12 * tex.fib + 0.08 * tex.mid)
    # fat planes between posterior muscles: stripes along the cord direction
    stripes = np.sin(2 * np.pi * (-V) / 15.0 + 2.5 * tex.low + 0.8 * tex.mid)
    fat_plane = (stripes > 0.93) & (V < -(c.P0 + 12))
    img = np.where(inside, muscle, img)
    img = np.where(inside & fat_plane, T["fat"] * (1 + 0.08 * tex.fine), img)
    img = np.where(inside & (V < post_skin + sc_fat_post), T["fat"] * (1 + 0.1 * tex.mid), img)
    img = np.where(inside & (V > ant_skin - 5.0), T["fat"] * (1 + 0.1 * tex.mid), img)
    skin = inside & ((V < post_skin + 1.2) | (V > ant_skin - 1.2))
    img = np.where(skin, T["soft"], img)
    # anterior neck: prevertebral tissue, airway with mucosa, thyroid / larynx region
    prev_reg = (V > body_front) & (V < body_front + prev)
    img = np.where(prev_reg, T["soft"] * (1 + 0.1 * tex.mid), img)
    air_reg = (V > body_front + prev + 1.0) & (V < body_front + prev + air_ap) & (U > -35)
    img = np.where((V > body_front + prev) & (V < body_front + prev + air_ap + 1.0) & (U > -38) & ~air_reg,
                   T["mucosa"], img)
    img = np.where(air_reg, T["air"] + 0.01, img)
    thy = (U > 75) & (U < 110) & (V > body_front + prev + air_ap + 1) & (V < body_front + prev + air_ap + 12)
    img = np.where(thy, T["soft"] * 1.3 * (1 + 0.05 * tex.fine), img)
    # head: tongue / face anteriorly above the jaw line, occiput and cerebellum posteriorly
    tongue = (U < 25) & (V > body_front + prev + air_ap) & inside
    img = np.where(tongue, T["muscle"] * 1.15 * (1 + 0.1 * tex.mid + 0.08 * tex.fib), img)
    occ_line = -an.dens_h - 6 + 0.35 * (-(V + c.P0 + 4))  # u of the occipital bone, tilted
    occ = (U < occ_line) & (U > occ_line - 7) & (V < -(c.P0 + 2)) & (V > post_skin + sc_fat_post)
    brain = (U <= occ_line - 7) & (V < -(c.P0 + 1)) & (V > post_skin + sc_fat_post + 6)
    img = np.where(brain, T["brain"] * (1 + 0.12 * tex.mid), img)
    # thorax below T1 anteriorly: mediastinal fat and vessels
    thor = (U > an.body_bot[6]) & (V > body_front + prev + air_ap + 2)
    img = np.where(thor, (T["soft"] + 0.25 * T["fat"] * (tex.low > 0.3)) * (1 + 0.1 * tex.mid), img)
    img = np.maximum(img, 0)
    return Background(img, occ_line, occ)


# --------------------------------------------------------------------------------------
# Structure layers (composited in this order: later ones cover earlier ones)
# --------------------------------------------------------------------------------------
def _posterior_layers(an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                      tex: Textures, bg: Background, rng: np.random.Generator) -> list[_Layer]:
    """Lateral pillars, laminae and spinous processes (18 draws: their lengths and angles), the
    C1 posterior arch, the occiput and the clivus."""
    shp = U.shape
    cent, P0 = c.cent, c.P0
    layers = []
    # lateral columns (pedicles / articular pillars and foramina) seen beyond the canal
    pillar_val = np.full(shp, T["fat"] * 0.7, np.float32)
    for i in range(9):
        pm = _superellipse(U - (cent[i] + 3.0), V + P0 * 0.3, (an.body_bot[i] - an.body_top[i]) / 2 + 1.5, P0 + 6.0, 4)
        pillar_val = np.where(pm < 1, np.where(pm > 0.75, T["cortex"], T["marrow"] * (1 + 0.2 * tex.fine)), pillar_val)
    canal_band = (V > -(P0 + 6)) & (V < c.vb_post) & (U > -an.dens_h - 4)
    layers.append(_layer("pillars", canal_band, BIG, pillar_val))

    # posterior elements: laminae (wide) and spinous processes (narrow), C1 posterior arch, occiput
    lam_val = np.full(shp, T["marrow"], np.float32) * (1 + 0.25 * tex.fine)
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
    layers.append(_layer("laminae", lam_mask, 13.0, lam_val))
    layers.append(_layer("spinous", spin_mask & ~lam_mask, 3.5, lam_val))
    c1p = _superellipse(U + an.dens_h * 0.5, V + (P0 + 6.5), 4.5, 4.5, 2)
    layers.append(_layer("c1_posterior", c1p < 1, 20.0, np.where(c1p > 0.5, T["cortex"], T["marrow"]).astype(np.float32)))
    occ_val = np.where((U - bg.occ_line + 3.5) ** 2 < 4, T["marrow"], T["cortex"]).astype(np.float32)
    layers.append(_layer("occiput", bg.occ, BIG, occ_val))
    # clivus (anterior to the dens tip)
    cl = _capsule_dist(U, V, (-an.dens_h - 8, c.vb_post + 7), (-an.dens_h - 45, c.vb_post + 22)) < 5
    layers.append(_layer("clivus", cl, BIG, np.where(tex.fine > 0.5, T["marrow"], T["cortex"]).astype(np.float32)))
    return layers


def _canal_wall_layer(an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                      tex: Textures) -> _Layer:
    """The canal wall: the posterior longitudinal ligament in front (dark), epidural fat and the
    ligamentum flavum (at the disc levels) behind."""
    cw_val = np.full(U.shape, T["fat"] * 0.9, np.float32) * (1 + 0.1 * tex.fine)
    lf_zone = np.zeros(U.shape, bool)
    for i in range(8):
        lf_zone |= np.abs(U - (c.disc_u[i] + 1.5)) < 5.0
    cw_val = np.where(lf_zone & (V < 0), T["ligament"], cw_val)
    cw_val = np.where(V > 0, T["ligament"] * 1.5, cw_val)
    cw = (V > -(c.P0 + 2.6 + 0.6 * lf_zone)) & (V < c.vb_post) & (U > -an.dens_h)
    return _layer("canal_wall", cw, an.sac_lr + 1.5, cw_val)


def _disc_layers(an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                 tex: Textures) -> list[_Layer]:
    """The discs (nucleus and annulus, label DISC) and the herniations: the part of a bulging
    disc behind the posterior vertebral line (label DISC_HERNIATION)."""
    shp = U.shape
    disc_val = np.zeros(shp, np.float32)
    disc_mask = np.zeros(shp, bool)
    for i in range(8):
        vc = c.vb_post + an.body_depth[i] / 2
        m = _superellipse(U - c.disc_u[i], V - vc, c.disc_h[i] / 2 + 1.5, an.body_depth[i] / 2 + 0.3, 4)
        nuc = _superellipse(U - c.disc_u[i], V - vc - 0.5, max(c.disc_h[i] / 2 - 0.2, 0.8), an.body_depth[i] * 0.36, 4)
        val = np.where(nuc < 1, T["disc"] * an.disc_signal[i] * (1 + 0.05 * tex.fine), T["annulus"])
        disc_val = np.where(m < 1, val, disc_val)
        disc_mask |= m < 1
    hern = (V < c.vb_post) & (V > c.vb_post - c.Bulge - 0.01) & (c.Bulge > 1.2)
    near_disc = np.zeros(shp, bool)
    for i in range(8):
        near_disc |= np.abs(U - c.disc_u[i]) < c.disc_h[i] / 2 + 3.0
    return [_layer("discs", disc_mask, 10.0, disc_val, L.DISC),
            _layer("herniation", hern & near_disc, 7.0, T["annulus"] * 1.4 + 0.08 * (tex.fine > 1), L.DISC_HERNIATION)]


def _body_layers(an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                 tex: Textures, rng: np.random.Generator) -> list[_Layer]:
    """The vertebral bodies with the dens on top (label VERTEBRAL_BODY; one marrow factor drawn
    per body) and the C1 anterior arch."""
    shp = U.shape
    body_val = np.zeros(shp, np.float32)
    body_mask = np.zeros(shp, bool)
    marrow = T["marrow"] * (1 + 0.22 * tex.fine + 0.1 * tex.mid)
    for i in range(9):
        hh = (an.body_bot[i] - an.body_top[i]) / 2
        vc = c.vb_post + an.body_depth[i] / 2
        m = _superellipse(U - c.cent[i], V - vc, hh, an.body_depth[i] / 2, 6)
        inner = _superellipse(U - c.cent[i], V - vc, hh - 0.9, an.body_depth[i] / 2 - 0.9, 6)
        fat_spot = rng.uniform(0.9, 1.25)
        body_val = np.where(m < 1, np.where(inner < 1, marrow * fat_spot, T["cortex"]), body_val)
        body_mask |= m < 1
    dens_vc = c.vb_post + an.body_depth[0] * 0.42
    dm = _superellipse(U + an.dens_h / 2, V - dens_vc, an.dens_h / 2 + 1.0, 5.0, 2)
    dm = np.where(U > 0, 9.0, dm)
    body_val = np.where(dm < 1, np.where(dm < 0.6, marrow, T["cortex"]), body_val)
    body_mask |= dm < 1
    bvc = c.vb_post + an.body_depth[4] / 2
    body_hw = np.float32(9.5) * np.sqrt(np.clip(1 - np.clip((V - bvc) / (an.body_depth[4] * 0.75), 0, None) ** 2, 0, 1))
    c1a = _superellipse(U + an.dens_h * 0.55, V - (dens_vc + 8.5), 5.0, 3.2, 2)
    return [_layer("bodies", body_mask, np.maximum(body_hw, 4.0), body_val, L.VERTEBRAL_BODY),
            _layer("c1_anterior", c1a < 1, 12.0, np.where(c1a > 0.45, T["cortex"], T["marrow"]).astype(np.float32))]


def _sac_and_cord_layers(T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal, tex: Textures,
                         bg: Background) -> list[_Layer]:
    """The thecal sac (CSF, label CSF) and the cord (faint central grey matter, label CORD):
    elliptic cross-sections."""
    sac_c = 0.5 * (c.Au - c.Pu)
    sac_a = 0.5 * (c.Au + c.Pu)
    sac_hw = c.Sb * np.sqrt(np.clip(1 - ((V - sac_c) / sac_a) ** 2, 0, 1))
    sac_in = (np.abs(V - sac_c) < sac_a) & (U > bg.occ_line - 40)
    cc = 0.5 * (c.Ea + c.Ep)
    ca = 0.5 * (c.Ea - c.Ep)
    cord_hw = c.Cb * np.sqrt(np.clip(1 - ((V - cc) / ca) ** 2, 0, 1))
    gm = np.exp(-0.5 * ((V - cc) / (0.35 * ca)) ** 2)  # faint central grey matter
    cord_val = T["cord"] * (1 + 0.06 * gm + 0.02 * tex.mid)
    return [_layer("csf", sac_in, sac_hw, T["csf"] * (1 + 0.02 * tex.low), L.CSF),
            _layer("cord", np.abs(V - cc) < ca, cord_hw, cord_val, L.CORD)]


def _structure_layers(an: Anatomy, T: dict[str, float], U: np.ndarray, V: np.ndarray, c: Canal,
                      tex: Textures, bg: Background, rng: np.random.Generator) -> list[_Layer]:
    """Every structure of the spine as a :class:`_Layer` over (NY, NZ), in compositing order:
    posterior elements, canal wall, discs, bodies, sac and cord."""
    return [*_posterior_layers(an, T, U, V, c, tex, bg, rng),
            _canal_wall_layer(an, T, U, V, c, tex),
            *_disc_layers(an, T, U, V, c, tex),
            *_body_layers(an, T, U, V, c, tex, rng),
            *_sac_and_cord_layers(T, U, V, c, tex, bg)]
