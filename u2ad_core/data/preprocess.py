"""From 3D volumes to the 2D sagittal dataset file (paper section 4.3, method.md section 1).

Per subject (:func:`preprocess_volume`), after :func:`u2ad_core.data.io.load_subject` has
reoriented everything to RAS:
1. **Middle slice**: the sagittal slice through the cord's lateral centroid; ``n_slices``
   consecutive slices around it (``slice_offset`` 0 is the middle; offsets ``-(n//2) ..``).
   A volume with fewer sagittal slices (the authors' 2D arrays: one) gives only the slices
   it has, each with its true offset.
2. **Intensity** (``intensity="foreground"``, the default for NIfTI input): clip to the
   ``clip_percentiles`` (0.2, 99.8) of the volume's foreground (voxels above 10 % of the
   99th percentile; estimated on every second voxel) and min-max to [0, 1] (the paper says
   min-max). ``intensity="authors"`` reproduces the authors' ``normalize``: percentiles of
   every voxel that differs from the corner voxel, clipped there, then min-max over the
   volume (air keeps its noise; the project's foreground clip sets air to 0). The authors'
   arrays (``Volume.normalised``) are already in [0, 1] and are kept as they are
   (``intensity="none"``).
3. **Resample + crop in one step**: the output grid of ``image_size`` (H rows superior ->
   inferior, W columns anterior -> posterior) with ``pixel_mm`` pixels is placed in the
   slice's physical coordinates and sampled with ``scipy.ndimage.map_coordinates`` (order 1
   for the image, nearest for masks; zero padding outside the volume; a Gaussian
   anti-aliasing prefilter when downsampling). ``crop="centre"`` centres the grid on the cord
   centroid of the middle slice (paper: centre crop); ``crop="cord_band"`` centres the
   columns on the cord's mean AP position and the rows on the C2-T1 span.
4. **Masks**: cord (label 3 or 6 / the cord mask), CSF (label 4, or zeros when unknown), the
   lesion (label 6, or zeros), and a **segment map** (0 none, 1..6 = C2-3 ... C7-T1): a pixel
   belongs to segment i when it lies between the lines through the centroids of vertebrae i
   and i+1 perpendicular to the local spine axis. Centroids come from the vertebral bodies
   (label 2, connected components of the middle slice ordered superior to inferior: C2, C3,
   ... T1), else from disc labels (midpoints of consecutive discs), else from a
   level-labelled cord (centroid of each level).

5. **Oracle** (phantom cohorts only): a subject's noise-free image and lesion-free twin
   (``sub-<id>/oracle/``, :data:`u2ad_core.data.io.ORACLE_FILES`) go through exactly the image's
   slicing, intensity map (the image's parameters, never their own), anti-aliasing, resampling
   and clipping into the fields ``clean`` and ``twin``, for diagnostics only.

:func:`preprocess_cohort` writes one ``.npz`` per cohort and slice count (compressed) and a
JSON manifest beside it; the file name carries the hash of everything that determines it,
so an unchanged configuration reuses the file and a changed one writes a new one. A bad
subject is reported (summary and manifest) and the others are still processed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from u2ad_core.core import labels as L
from u2ad_core.core.config import DataConfig, config_hash
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import atomic_path, atomic_write_json, package_versions, progress
from u2ad_core.data.io import DataError, DataWarning, SubjectFiles, Volume, load_subject, scan_cohort

__all__ = [
    "PREPROCESS_VERSION",
    "slice_offsets",
    "vertebra_centroids",
    "segment_map",
    "preprocess_volume",
    "preprocess_subject",
    "preprocess_cohort",
    "INTENSITY_MODES",
    "ORACLE_FIELDS",
    "save_dataset_npz",
    "read_dataset_npz",
    "cli_register",
]

PREPROCESS_VERSION = 3
"""Bumped when the preprocessing changes what it writes (invalidates cached dataset files).
2: the phantom's oracle fields ``clean`` / ``twin``. 3: ``twin`` stored as ``twin_xor``
(:func:`save_dataset_npz`)."""

ORACLE_FIELDS = ("clean", "twin")
"""The phantom's oracle fields of a dataset file (``SliceData.clean`` / ``twin``; diagnostics only)."""

TWIN_XOR = "twin_xor"
"""The member that stores ``twin`` in a dataset file: its bits XOR those of ``images`` (both float32),
zero wherever the twin equals the image, i.e. everywhere but near the lesions: 1-2 % of a phantom
cohort's file instead of a third, and ~10x faster to compress and to read back."""

INTENSITY_MODES = ("auto", "foreground", "authors", "none")
"""``intensity`` of :func:`preprocess_volume`; ``auto`` = ``none`` for already-normalised
volumes (the authors' arrays), else ``foreground``."""



def slice_offsets(n: int) -> np.ndarray:
    """Offsets of ``n`` middle slices: ``n=3 -> [-1, 0, 1]``, ``n=8 -> [-4 .. 3]``."""
    return np.arange(n) - n // 2


def _foreground_range(image: np.ndarray, pct: tuple[float, float], path: str) -> tuple[float, float]:
    sub = image[::2, ::2, ::2]
    thr = 0.1 * float(np.percentile(sub, 99.0))
    fg = sub[sub > thr]
    if fg.size < 10:
        fg = sub.ravel()
    lo, hi = np.percentile(fg, pct)
    if not hi > lo:
        raise DataError(f"{path}: image has no intensity range in its foreground (constant?)")
    return float(lo), float(hi)


def _authors_normalise(image: np.ndarray, pct: tuple[float, float], path: str
                       ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[float, float]]:
    """The authors' ``normalize`` (datasets/preprocess_private.py) with the parameters of the whole volume.

    image (X, Y, Z). Voxels equal to the corner voxel are background; the others are clipped
    to their ``pct`` percentiles; the result is min-maxed over the volume. Returns the map
    (any (n, Y, Z) slices of this image, or arrays on its scale -> float32 in [0, 1]) and the
    (lo, hi) clip range.
    """
    corner = float(image[0, 0, 0])
    vals = image[image != corner]
    if vals.size < 10:
        raise DataError(f"{path}: image has almost no voxel apart from the background value {corner}")
    lo, hi = (float(v) for v in np.percentile(vals, pct))
    if not hi > lo:
        raise DataError(f"{path}: image has no intensity range (constant?)")
    m, mx = min(corner, lo), max(corner, hi)

    def norm(sl: np.ndarray) -> np.ndarray:
        out = np.where(sl != corner, np.clip(sl, lo, hi), sl)
        return ((out - m) / (mx - m)).astype(np.float32)

    return norm, (lo, hi)


def _intensity_map(vol: Volume, intensity: str, pct: tuple[float, float]
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[float, float]]:
    """The image's intensity normalisation (module docstring, step 2) as a map that applies the
    image's own parameters to any array on its scale (the image's slices, or the phantom's oracle
    volumes), and the (lo, hi) range. ``intensity``: ``foreground``, ``authors`` or ``none``."""
    src_name = vol.files.get("image", vol.subject)
    if intensity == "foreground":  # clip to foreground percentiles, min-max
        lo, hi = _foreground_range(vol.image, pct, src_name)
        return (lambda a: np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)), (lo, hi)
    if intensity == "authors":
        return _authors_normalise(vol.image, pct, src_name)
    return (lambda a: np.clip(a, 0.0, 1.0).astype(np.float32)), (0.0, 1.0)  # "none": already in [0, 1]


# --------------------------------------------------------------------------------------
# Vertebrae and segments
# --------------------------------------------------------------------------------------
def vertebra_centroids(vol: Volume, x_mid: int) -> tuple[dict[str, tuple[float, float]], str]:
    """Centroids ``{"C2": (y_mm, z_mm), ...}`` in the RAS array's mm grid, and their source.

    Sources, first that gives >= 2 vertebrae: ``"bodies"`` (label 2 connected components of
    the middle slice, superior first = C2), ``"discs"``, ``"levels"``; else ``"none"``.
    """
    dy, dz = vol.zooms[1], vol.zooms[2]
    names = L.VERTEBRAE  # C2 .. T1
    if vol.labels is not None:
        sl = vol.labels[x_mid] == L.VERTEBRAL_BODY
        if not sl.any():  # try the nearest slices with bodies
            has = np.flatnonzero((vol.labels == L.VERTEBRAL_BODY).any(axis=(1, 2)))
            if has.size:
                sl = vol.labels[has[np.argmin(np.abs(has - x_mid))]] == L.VERTEBRAL_BODY
        lab, n = ndi.label(sl)
        if n >= 2:
            idx = np.arange(1, n + 1)
            sizes = ndi.sum_labels(sl, lab, idx) * dy * dz
            cms = np.array(ndi.center_of_mass(sl, lab, idx))  # (n, 2) in (j, k)
            keep = sizes >= 20.0  # mm^2: drop specks
            cms = cms[keep]
            if len(cms) >= 2:
                order = np.argsort(-cms[:, 1])  # superior first (larger z index)
                cms = cms[order][: len(names)]
                return {names[i]: (float(c[0] * dy), float(c[1] * dz)) for i, c in enumerate(cms)}, "bodies"
    if vol.discs is not None and vol.discs.any():
        d = {}
        for v in np.unique(vol.discs[vol.discs > 0]):
            pts = np.argwhere(vol.discs == v)
            d[int(v)] = (float(pts[:, 1].mean() * dy), float(pts[:, 2].mean() * dz))
        # disc value v lies above vertebra v: vertebra v (v=3..7) between discs v and v+1
        cent: dict[str, tuple[float, float]] = {}
        for v in range(2, 9):  # C2 .. T1
            name = names[v - 2]
            if v in d and v + 1 in d:
                cent[name] = ((d[v][0] + d[v + 1][0]) / 2, (d[v][1] + d[v + 1][1]) / 2)
            elif v + 1 in d and v + 2 in d:  # extrapolate upwards (C2 when no C1-2 label)
                a, b = d[v + 1], d[v + 2]
                cent[name] = (a[0] + (a[0] - b[0]) / 2, a[1] + (a[1] - b[1]) / 2)
            elif v in d and v - 1 in d:  # extrapolate downwards (T1)
                a, b = d[v], d[v - 1]
                cent[name] = (a[0] + (a[0] - b[0]) / 2, a[1] + (a[1] - b[1]) / 2)
        if len(cent) >= 2:
            return cent, "discs"
    if vol.levels is not None and vol.levels.any():
        cent = {}
        for v in range(2, 9):
            pts = np.argwhere(vol.levels == v)
            if len(pts):
                cent[names[v - 2]] = (float(pts[:, 1].mean() * dy), float(pts[:, 2].mean() * dz))
        if len(cent) >= 2:
            return cent, "levels"
    return {}, "none"


def segment_map(centroids_rc: dict[str, tuple[float, float]], shape: tuple[int, int]) -> np.ndarray:
    """Segment map (H, W) uint8 from vertebra centroids given in output (row, col) pixels.

    Pixel p is in segment ``C{i}-{i+1}`` (value i+1) when ``(p - c_i) . t_i >= 0`` and
    ``(p - c_{i+1}) . t_{i+1} < 0``, with ``t`` the local inferior spine direction.
    """
    H, W = shape
    out = np.zeros((H, W), np.uint8)
    names = [n for n in L.VERTEBRAE if n in centroids_rc]
    if len(names) < 2:
        return out
    pos = {n: np.asarray(centroids_rc[n], float) for n in names}
    order = L.VERTEBRAE
    # local direction at each available vertebra from its available neighbours
    pts = np.array([pos[n] for n in names])
    tang = {}
    for i, n in enumerate(names):
        a = pts[max(i - 1, 0)]
        b = pts[min(i + 1, len(pts) - 1)]
        t = b - a
        tang[n] = t / (np.linalg.norm(t) + 1e-9)
    rr, cc = np.mgrid[0:H, 0:W].astype(np.float32)
    for i in range(len(L.SEGMENTS)):
        up, lo = order[i], order[i + 1]
        if up not in pos or lo not in pos:
            continue
        below_up = (rr - pos[up][0]) * tang[up][0] + (cc - pos[up][1]) * tang[up][1] >= 0
        above_lo = (rr - pos[lo][0]) * tang[lo][0] + (cc - pos[lo][1]) * tang[lo][1] < 0
        out[below_up & above_lo & (out == 0)] = i + 1
    return out


# --------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------
def _sample(slices: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """slices (n, Y, Z) -> (n, H, W) at coords (2, H, W) in (j, k) voxel units."""
    return np.stack([ndi.map_coordinates(s, coords, order=order, mode="constant", cval=0.0, prefilter=False)
                     for s in slices])


def preprocess_volume(vol: Volume, data_cfg: DataConfig, n_slices: int, intensity: str = "auto") -> dict[str, Any]:
    """Slices of one subject (see the module docstring). Returns arrays and metadata.

    Arrays: images float32 (n, H, W) in [0, 1]; cord, csf, segments, lesion uint8 (n, H, W);
    slice_index int (n,) (index in the stored file), slice_offset int (n,); ``n`` is
    ``n_slices``, or fewer when the volume has fewer sagittal slices; ``clean`` / ``twin``
    float32 (n, H, W) when the volume has them (the phantom's oracle volumes, through exactly the
    image's slicing, intensity map with the image's parameters, anti-aliasing, resampling and
    clipping). ``intensity``: one of :data:`INTENSITY_MODES` (module docstring, step 2).
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if intensity == "auto":
        intensity = "none" if vol.normalised else "foreground"
    H, W = (int(v) for v in data_cfg.image_size)
    p = float(data_cfg.pixel_mm)
    nx = vol.image.shape[0]
    dy, dz = vol.zooms[1], vol.zooms[2]
    cord3 = vol.cord
    x_c = float((cord3.sum(axis=(1, 2)) * np.arange(nx)).sum() / cord3.sum())
    x_mid = int(round(x_c))
    offs = slice_offsets(n_slices)
    idx = x_mid + offs
    if idx.min() < 0 or idx.max() >= nx:  # shift the window into the volume; keep offsets honest
        shift = -idx.min() if idx.min() < 0 else (nx - 1 - idx.max())
        idx = np.unique(np.clip(idx + shift, 0, nx - 1))  # fewer slices than asked: keep each once
        offs = idx - x_mid

    norm, (lo, hi) = _intensity_map(vol, intensity, data_cfg.clip_percentiles)

    # crop centre (mm in the array grid: y = j * dy, z = k * dz)
    mid_cord = cord3[x_mid]
    jj, kk = np.nonzero(mid_cord)
    cent, source = vertebra_centroids(vol, x_mid)
    if data_cfg.crop == "centre":
        yc, zc = jj.mean() * dy, kk.mean() * dz
    elif data_cfg.crop == "cord_band":
        if "C2" in cent and "T1" in cent:
            z_lo, z_hi = sorted((cent["T1"][1], cent["C2"][1]))
        else:
            z_lo, z_hi = kk.min() * dz, kk.max() * dz
        zc = 0.5 * (z_lo + z_hi)
        in_span = (kk * dz >= z_lo) & (kk * dz <= z_hi)
        yc = (jj[in_span] if in_span.any() else jj).mean() * dy
    else:
        raise ValueError(f"data_cfg.crop must be 'centre' or 'cord_band', got {data_cfg.crop!r}")

    r = np.arange(H, dtype=np.float64)
    c = np.arange(W, dtype=np.float64)
    z_mm = zc + (H / 2 - 0.5 - r) * p  # row 0 = superior
    y_mm = yc + (W / 2 - 0.5 - c) * p  # column 0 = anterior
    coords = np.stack([np.broadcast_to((y_mm / dy)[None, :], (H, W)), np.broadcast_to((z_mm / dz)[:, None], (H, W))])

    # anti-aliasing when downsampling
    sig = [0.0, 0.5 * np.sqrt(max((p / dy) ** 2 - 1, 0.0)), 0.5 * np.sqrt(max((p / dz) ** 2 - 1, 0.0))]

    def to_slices(a3: np.ndarray) -> np.ndarray:
        """(X, Y, Z) on the image's scale -> normalised, anti-aliased, resampled (n, H, W) in [0, 1]."""
        img = norm(a3[idx])
        src = ndi.gaussian_filter(img, sig) if max(sig) > 0.3 else img
        return np.clip(_sample(src, coords, 1), 0.0, 1.0).astype(np.float32)

    images = to_slices(vol.image)
    oracle = {k: to_slices(getattr(vol, k)) for k in ("clean", "twin") if getattr(vol, k) is not None}
    cord = _sample(cord3[idx], coords, 0).astype(np.uint8)
    csf = _sample(vol.csf[idx], coords, 0).astype(np.uint8) if vol.csf is not None else np.zeros_like(cord)
    if vol.labels is not None:
        lesion = _sample((vol.labels[idx] == L.HYPERINTENSITY).astype(np.uint8), coords, 0).astype(np.uint8)
    else:
        lesion = np.zeros_like(cord)
    cent_rc = {n: (H / 2 - 0.5 - (zz - zc) / p, W / 2 - 0.5 - (yy - yc) / p) for n, (yy, zz) in cent.items()}
    seg = segment_map(cent_rc, (H, W))
    segments = np.broadcast_to(seg, cord.shape).copy()
    mid_i = int(np.flatnonzero(offs == 0)[0]) if (offs == 0).any() else len(offs) // 2
    if not cord[mid_i].any():
        raise DataError(f"{vol.files.get('image', vol.subject)}: the cord falls outside the "
                        f"{H}x{W} crop of the middle slice (check orientation / image_size)")
    return {
        "images": images, "cord": cord, "csf": csf, "segments": segments, "lesion": lesion,
        "slice_index": vol.source_index[idx].astype(np.int64), "slice_offset": offs.astype(np.int64),
        "segments_source": source, "centroids_rc": cent_rc, "intensity_range": (lo, hi), **oracle,
    }


def _lesion_segments_from_maps(out: dict[str, Any], vol: Volume) -> str:
    """Segments hit by the lesion label in the 3D label map (used without a participants table)."""
    les = out["lesion"] > 0
    if not les.any():
        return ""
    vals = out["segments"][les]
    vals = vals[vals > 0]
    return ";".join(L.SEGMENTS[v - 1] for v in sorted(set(vals.tolist())))


def preprocess_subject(sf: SubjectFiles, data_cfg: DataConfig, n_slices: int,
                       labels_from_maps: bool = False, intensity: str = "auto") -> dict[str, Any]:
    """Load (:func:`u2ad_core.data.io.load_subject`) and preprocess one subject (:func:`preprocess_volume`)."""
    vol = load_subject(sf)
    out = preprocess_volume(vol, data_cfg, n_slices, intensity=intensity)
    pl, segs = sf.patient_label, sf.lesion_segments
    if labels_from_maps and vol.labels is not None:
        has = bool((vol.labels == L.HYPERINTENSITY).any())
        pl, segs = int(has), (_lesion_segments_from_maps(out, vol) if has else "")
    n = len(out["slice_offset"])
    out.update({
        "subject": np.array([sf.subject] * n), "site": np.array([sf.site] * n),
        "patient_label": np.full(n, pl, np.int8), "lesion_segments": np.array([segs] * n),
        "orientation": vol.orientation, "zooms": vol.zooms,
    })
    return out


# --------------------------------------------------------------------------------------
# A cohort -> dataset file
# --------------------------------------------------------------------------------------
def _input_fingerprint(root: Path) -> dict[str, Any]:
    stamp = root / "phantom.json"
    if stamp.is_file():
        meta = json.loads(stamp.read_text())
        if "generation_hash" in meta:  # and whether it has the oracle (regenerating a cohort to add it changes it)
            return {"phantom": meta["generation_hash"], "oracle": meta.get("oracle") is True}
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.name.endswith((".nii", ".nii.gz", ".tsv", ".npy"))):
            st = p.stat()
            files.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return {"files": config_hash(files, n=16), "n_files": len(files)}


def preprocess_key(input_dir: str | Path, data_cfg: DataConfig, n_slices: int) -> dict[str, Any]:
    """Everything that determines a dataset file (its hash is in the file name)."""
    return {
        "version": PREPROCESS_VERSION,
        "pixel_mm": data_cfg.pixel_mm, "image_size": list(data_cfg.image_size), "crop": data_cfg.crop,
        "clip_percentiles": list(data_cfg.clip_percentiles), "n_slices": int(n_slices),
        "input": _input_fingerprint(Path(input_dir)),
    }


def save_dataset_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write the fields ``arrays`` of a dataset file to ``path`` (compressed ``.npz``, atomically),
    ``twin`` as :data:`TWIN_XOR` when it and ``images`` are float32 of one shape (else as it is);
    :func:`read_dataset_npz` reads it back exactly."""
    arrays = dict(arrays)
    twin, img = arrays.get("twin"), arrays.get("images")
    if twin is not None and img is not None and twin.dtype == img.dtype == np.float32 and twin.shape == img.shape:
        del arrays["twin"]
        arrays[TWIN_XOR] = np.ascontiguousarray(twin).view(np.uint32) ^ np.ascontiguousarray(img).view(np.uint32)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def read_dataset_npz(z: Any, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``fields`` of an open dataset file ``z`` (``np.load``) that it holds, ``twin`` from
    ``twin`` or :data:`TWIN_XOR` (:func:`save_dataset_npz`)."""
    out = {f: z[f] for f in fields if f in z.files}
    if "twin" in fields and "twin" not in out and TWIN_XOR in z.files:
        img = np.ascontiguousarray(out["images"] if "images" in out else z["images"])
        out["twin"] = (img.view(np.uint32) ^ z[TWIN_XOR]).view(np.float32)
    return out


def preprocess_cohort(input_dir: str | Path, out_dir: str | Path, data_cfg: DataConfig, n_slices: int,
                      name: str | None = None, out_file: str | Path | None = None,
                      show_progress: bool = True, force: bool = False, verbose: bool = True) -> Path:
    """Preprocess every subject of ``input_dir`` into ``out_dir/<name>_n<n>_<hash>.npz`` (+ ``.json``).

    Returns the ``.npz`` path. Reuses an existing file with the same hash (unless ``force``).
    Subjects that fail are listed in the manifest's ``errors`` and in the printed summary;
    when every subject fails a :class:`DataError` is raised. :class:`~u2ad_core.data.io.DataWarning`
    s (e.g. an ignored label 7) are re-emitted and kept in the manifest (``n_warnings``, and
    ``warnings`` per subject).
    """
    input_dir = Path(input_dir)
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    cohort = scan_cohort(input_dir)
    key = preprocess_key(input_dir, data_cfg, n_slices)
    h = config_hash(key)
    name = name or input_dir.name
    path = Path(out_file) if out_file else Path(out_dir) / f"{name}_n{n_slices}_{h}.npz"
    if out_file and path.suffix != ".npz":
        path = path.with_suffix(".npz")
    manifest_path = path.with_suffix(".json")
    if not force and path.is_file() and manifest_path.is_file():
        try:
            if json.loads(manifest_path.read_text()).get("config_hash") == h:
                return path
        except json.JSONDecodeError:
            pass
    if path.resolve().is_relative_to(input_dir.resolve()):
        raise ValueError(f"{path}: refusing to write into the input folder {input_dir}")
    t0 = time.perf_counter()
    parts: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    subjects_meta: list[dict[str, Any]] = []
    lfm = bool(cohort.meta.get("labels_from_maps", False))
    bar = progress(cohort.subjects, desc=f"preprocess {name}", unit="subj", disable=None if show_progress else True)
    n_warn = 0
    for sf in bar:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = preprocess_subject(sf, data_cfg, n_slices, labels_from_maps=lfm)
            except DataError as exc:
                out = exc
        for w in caught:  # re-emit (callers see them) and keep the data warnings in the manifest
            warnings.warn(w.message, w.category, stacklevel=2)
        warned = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
        n_warn += len(warned)
        if isinstance(out, DataError):
            errors.append({"subject": sf.subject, "error": str(out)})
            subjects_meta.append({"subject": sf.subject, "files": sf.files(), "error": str(out), "warnings": warned})
            continue
        parts.append(out)
        subjects_meta.append({"warnings": warned, **{
            "subject": sf.subject, "files": sf.files(), "site": sf.site, "n_slices": int(len(out["slice_offset"])),
            "orientation": out["orientation"], "zooms": [round(z, 4) for z in out["zooms"]],
            "segments_source": out["segments_source"], "intensity_range": [round(v, 3) for v in out["intensity_range"]],
            "patient_label": int(out["patient_label"][0]), "lesion_segments": str(out["lesion_segments"][0]),
        }})
    if not parts:
        msg = "; ".join(e["error"] for e in errors[:5])
        raise DataError(f"{input_dir}: no subject could be preprocessed ({len(errors)} errors): {msg}")
    arrays = {k: np.concatenate([p_[k] for p_ in parts]) for k in
              ("images", "cord", "csf", "segments", "lesion", "slice_index", "slice_offset", "patient_label")}
    for k in ("subject", "site", "lesion_segments"):
        arrays[k] = np.concatenate([p_[k] for p_ in parts]).astype(str)
    for k in ORACLE_FIELDS:  # only when every subject has them (else no field: a partial oracle would mislead)
        if all(k in p_ for p_ in parts):
            arrays[k] = np.concatenate([p_[k] for p_ in parts])
    save_dataset_npz(path, arrays)
    n_subj = len(parts)
    manifest = {
        "name": name, "file": path.name, "config": key, "config_hash": h, "data_config": asdict(data_cfg),
        "input_dir": str(input_dir), "layout": cohort.layout, "n_subjects": n_subj,
        "n_slices_total": int(arrays["images"].shape[0]), "image_size": list(arrays["images"].shape[1:]),
        "oracle": sorted(set(ORACLE_FIELDS) & set(arrays)), "n_errors": len(errors), "errors": errors,
        "n_warnings": n_warn, "subjects": subjects_meta,
        "seconds": round(time.perf_counter() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": package_versions(),
    }
    atomic_write_json(manifest_path, manifest)
    if verbose and n_warn:
        print(f"preprocess {name}: {n_warn} data warning(s) (see {manifest_path.name})")
    if verbose and errors:
        print(f"preprocess {name}: {len(errors)} subject(s) skipped with errors (see {manifest_path.name}):")
        for e in errors:
            print(f"  - {e['subject']}: {e['error']}")
    return path


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    cfg = get_preset(args.preset).data
    n = args.n_slices if args.n_slices else getattr(cfg, f"slices_{args.purpose}")
    out = Path(args.out)
    kw = {"out_file": out} if out.suffix == ".npz" else {}
    t0 = time.perf_counter()
    path = preprocess_cohort(args.input, out if not kw else out.parent, cfg, n, force=args.force, **kw)
    man = json.loads(path.with_suffix(".json").read_text())
    print(f"{path}: {man['n_slices_total']} slices {tuple(man['image_size'])} from {man['n_subjects']} subjects "
          f"({man['layout']} layout), {man['n_errors']} error(s), {time.perf_counter() - t0:.1f} s")
    return 0 if man["n_errors"] == 0 else 1


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="NIfTI cohort (or the authors' arrays) -> 2D sagittal dataset "
                              "file (.npz + manifest)", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, type=Path,
                   help="cohort folder (phantom, BIDS, images/+labels/, or a folder of the authors' .npy arrays)")
    p.add_argument("--out", required=True, type=Path, help="output .npz file, or a folder (name with hash)")
    p.add_argument("--preset", default="paper", help="preset whose DataConfig is used (default paper)")
    p.add_argument("--purpose", default="adapt", choices=("pretrain", "pseudo", "adapt", "detect"),
                   help="which slices_<purpose> count of the preset to use")
    p.add_argument("--n-slices", type=int, default=None, help="override the number of middle slices")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cli)

