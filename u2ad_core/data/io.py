"""Reading cohorts of NIfTI volumes (or the authors' 2D arrays): layout detection, loading, clear errors.

Four folder layouts are recognised automatically by :func:`detect_layout`:
``phantom``
    What :mod:`u2ad_core.data.phantom` writes: ``phantom.json``, ``participants.tsv`` and
    ``sub-<id>/sub-<id>_T2w.nii.gz`` + ``sub-<id>/sub-<id>_labels.nii.gz`` (label map), and
    when the cohort has them (``phantom.json``: ``"oracle": true``) the oracle volumes
    ``sub-<id>/oracle/`` (:data:`ORACLE_FILES`).
``bids`` (Spine Generic)
    ``sub-*/anat/sub-*_T2w.nii.gz`` with ``derivatives/labels/sub-*/anat/*_T2w_seg-manual.nii.gz``
    (binary cord mask) and, when present, ``*_T2w_labels-disc-manual.nii.gz`` (one voxel per
    disc, value 3 = C2-3 ... 8 = C7-T1) and a CSF mask ``*_T2w_csf*.nii.gz``.
``authors``
    The U2AD authors' folders: ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz`` (label
    maps with 1 disc, 2 vertebral body, 3 cord, 4 CSF, 5 disc herniation, 6 T2 hyperintensity).
``u2ad_arrays``
    The authors' preprocessed samples (their ``data/private/train/*.npy``): a flat folder of
    ``<name>.npy`` files, each a float array of shape (3, 256, 256) = ``[image, roi, labels]``;
    the image is one sagittal slice already in [0, 1] (rows superior -> inferior, columns
    anterior -> posterior) at :data:`AUTHORS_PIXEL_MM` (their 200 mm crop zoomed to 256), the
    label map has the values above. Label 7 (undocumented in the authors' data; a thin
    low-signal band behind the cord) is ignored with a :class:`DataWarning`; the ROI channel
    is not used (the preprocessing derives its own masks). Read by :func:`load_array`.

A single subject with arbitrary file names (e.g. the SCT test data in ``../shared/data/real``)
is read with :func:`load_subject` on a :class:`SubjectFiles` built by hand.

Every volume is reoriented to RAS with its affine (``nibabel.orientations``; never an assumed
axis order). Files are opened read-only; nothing is ever written into an input folder.
Every problem raises :class:`DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as O

from u2ad_core.core import labels as L

__all__ = [
    "DataError",
    "DataWarning",
    "LAYOUTS",
    "AUTHORS_PIXEL_MM",
    "SubjectFiles",
    "Cohort",
    "Volume",
    "detect_layout",
    "scan_cohort",
    "read_nifti",
    "load_subject",
    "read_array",
    "load_array",
    "to_ras",
    "ORACLE_DIR",
    "ORACLE_FILES",
    "oracle_files",
]

LAYOUTS = ("phantom", "bids", "authors", "u2ad_arrays")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
AUTHORS_PIXEL_MM = 200.0 / 256.0
"""Pixel size (mm) of the authors' arrays: 1 mm in-plane, centre crop 200, zoomed to 256."""
ARRAY_SHAPE = (3, 256, 256)
IGNORED_LABELS: dict[int, str] = {7: "undocumented in the authors' data; a thin low-signal band behind the cord, "
                                     "likely a ligament"}
"""Label values accepted in the authors' arrays and set to background, with a :class:`DataWarning`."""


ORACLE_DIR = "oracle"
ORACLE_FILES: dict[str, str] = {"clean": "_T2w_noisefree.nii", "twin": "_T2w_lesionfree.nii"}
"""A phantom subject's oracle volumes, ``sub-<id>/oracle/sub-<id><suffix>`` (:func:`oracle_files`),
uncompressed NIfTI on the image's grid and intensity scale: ``clean`` the noise-free image (an
integer in 1/4 of the image's stored unit, NIfTI ``scl_slope`` 1/4; int16, uint16 or int32,
the smallest that holds it), ``twin`` the lesion-free twin with the same noise draw, stored exactly
as the image is (same dtype and scale), written for lesion patients only: a subject with a
noise-free file and no twin file has no lesion, its twin is its image. Uncompressed because gzip
was most of their cost (phantom version 5; version 4 wrote them as ``.nii.gz``). Written for the
cohorts of the calibrated phantom only unless asked (``oracle`` of
:func:`u2ad_core.data.phantom.generate_cohort`). Diagnostics only: no method reads them, and no
layout takes them for an image."""


def oracle_files(subject_dir: str | Path, subject: str) -> dict[str, Path]:
    """``{"clean": path, "twin": path}`` of a phantom subject's oracle volumes (:data:`ORACLE_FILES`)."""
    d = Path(subject_dir) / ORACLE_DIR
    return {k: d / f"{subject}{suffix}" for k, suffix in ORACLE_FILES.items()}


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the problem."""


class DataWarning(UserWarning):
    """Input data that is read, with something ignored; the message names the file."""


# --------------------------------------------------------------------------------------
# What a subject is made of
# --------------------------------------------------------------------------------------
@dataclass
class SubjectFiles:
    """Paths of one subject's files (any may be ``None`` except ``image``).

    labels: label map with the values of :mod:`u2ad_core.core.labels`; cord / csf: binary masks;
    discs: disc point labels (3 = C2-3 ... 8 = C7-T1); levels: vertebral levels (2 = C2 ...
    8 = T1), e.g. a cord mask labelled by level. ``patient_label`` 1 / 0 / -1 (unknown).
    clean / twin: the phantom's oracle volumes (:data:`ORACLE_FILES`; ``None`` for real data);
    ``twin`` is ``image`` itself for a phantom subject without a lesion.
    """

    subject: str
    image: Path
    labels: Path | None = None
    cord: Path | None = None
    csf: Path | None = None
    discs: Path | None = None
    levels: Path | None = None
    clean: Path | None = None
    twin: Path | None = None
    site: str = ""
    patient_label: int = -1
    lesion_segments: str = ""
    problem: str = ""  # set by scan_cohort when something required is missing

    def files(self) -> dict[str, str]:
        return {k: str(getattr(self, k)) for k in ("image", "labels", "cord", "csf", "discs", "levels", "clean", "twin")
                if getattr(self, k) is not None}


@dataclass
class Cohort:
    """A scanned input folder."""

    root: Path
    layout: str
    subjects: list[SubjectFiles]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Volume:
    """One subject in RAS orientation: axis 0 = left->right (sagittal slices), 1 = P->A, 2 = I->S.

    image: float32 (X, Y, Z). Masks uint8 (X, Y, Z) or ``None``. ``zooms`` (3,) mm.
    ``source_index[i]`` is the index along the stored file's sagittal axis of RAS slice ``i``.
    ``normalised``: the intensities are already in [0, 1] (the authors' arrays); the
    preprocessing then keeps them instead of clipping and min-maxing again. ``clean`` / ``twin``:
    float32 (X, Y, Z) on the image's grid and intensity scale, the phantom's noise-free image and
    lesion-free twin (:data:`ORACLE_FILES`), ``None`` for real data.
    """

    subject: str
    image: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]
    source_index: np.ndarray
    labels: np.ndarray | None = None
    cord: np.ndarray | None = None
    csf: np.ndarray | None = None
    discs: np.ndarray | None = None
    levels: np.ndarray | None = None
    clean: np.ndarray | None = None
    twin: np.ndarray | None = None
    orientation: str = ""
    files: dict[str, str] = field(default_factory=dict)
    normalised: bool = False


# --------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------
def read_nifti(path: str | Path, what: str = "image"):
    """Load a NIfTI file (read-only) and its data as a 3D array.

    Returns ``(array, affine)``. Raises :class:`DataError` for a missing, unreadable or
    corrupt file, a volume that is not 3D (trailing singleton dimensions are dropped), or
    (``what == "image"``) NaN / infinite / constant values.
    """

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read {what} as NIfTI ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D {what} volume, got shape {tuple(data.shape)}")
    if min(data.shape) < 1:
        raise DataError(f"{path}: empty {what} volume, shape {tuple(data.shape)}")
    if what == "image":
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise DataError(f"{path}: image contains NaN or infinite values")
        if data.max() == data.min():
            raise DataError(f"{path}: image is constant (all voxels = {data.max()})")
    return data, np.asarray(img.affine, dtype=np.float64)


def to_ras(data: np.ndarray, affine: np.ndarray):
    """Reorient ``data`` to the closest RAS axes. Returns ``(data_ras, affine_ras, ornt)``.

    ``ornt`` is nibabel's orientation transform (row = stored axis: [RAS axis, flip]).
    """

    ornt = O.io_orientation(affine)
    out = O.apply_orientation(data, ornt)
    aff = affine @ O.inv_ornt_aff(ornt, data.shape)
    return out, aff, ornt


def _check_same_grid(ref_path: Path, ref_shape, ref_aff, path: Path, shape, aff, what: str) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise DataError(f"{path}: {what} grid {tuple(shape)} differs from the image grid {tuple(ref_shape)} "
                        f"of {ref_path}")
    if not np.allclose(aff, ref_aff, atol=1e-3, rtol=1e-4):
        raise DataError(f"{path}: {what} affine differs from the image affine of {ref_path} "
                        "(masks must be on the image grid)")


def load_subject(sf: SubjectFiles) -> Volume:
    """Read a subject's image and masks, check them, and reorient everything to RAS.

    Raises :class:`DataError` (naming the file) when the subject was flagged by the scan
    (missing labels), a file is unreadable / not 3D, an image is NaN or constant, a mask lies
    on another grid, or the cord mask is empty.
    """

    if sf.problem:
        raise DataError(sf.problem)
    if Path(sf.image).suffix == ".npy":
        return load_array(sf)
    img, aff = read_nifti(sf.image, "image")
    img_ras, aff_ras, ornt = to_ras(img.astype(np.float32, copy=False), aff)
    sag_src = int(np.flatnonzero(ornt[:, 0] == 0)[0])
    n_x = img_ras.shape[0]
    src_idx = np.arange(n_x) if ornt[sag_src, 1] > 0 else (n_x - 1 - np.arange(n_x))
    vol = Volume(
        subject=sf.subject, image=np.ascontiguousarray(img_ras, dtype=np.float32), affine=aff_ras,
        zooms=tuple(float(z) for z in np.sqrt((aff_ras[:3, :3] ** 2).sum(0))),
        source_index=src_idx, orientation="".join(nib.aff2axcodes(aff)), files=sf.files(),
    )
    for key in ("labels", "cord", "csf", "discs", "levels"):
        p = getattr(sf, key)
        if p is None:
            continue
        m, maff = read_nifti(p, key)
        _check_same_grid(Path(sf.image), img.shape, aff, Path(p), m.shape, maff, key)
        if m.dtype.kind == "f":
            if not np.isfinite(m).all():
                raise DataError(f"{p}: {key} contains NaN or infinite values")
            m = np.rint(m)
        m_ras, _, _ = to_ras(m, maff)
        setattr(vol, key, np.ascontiguousarray(m_ras).astype(np.uint8 if m.max() < 256 else np.int16))
    if vol.labels is not None:
        present = set(np.unique(vol.labels).tolist()) - {0}
        unknown = present - set(L.LABELS)
        if unknown:
            raise DataError(f"{sf.labels}: unexpected label values {sorted(unknown)}; expected "
                            f"{sorted(L.LABELS)} ({', '.join(L.LABELS.values())})")
        if vol.cord is None:
            vol.cord = np.isin(vol.labels, (L.CORD, L.HYPERINTENSITY)).astype(np.uint8)
        if vol.csf is None and (vol.labels == L.CSF).any():
            vol.csf = (vol.labels == L.CSF).astype(np.uint8)
    if vol.cord is None:
        raise DataError(f"{sf.image}: no cord mask or label map for subject {sf.subject}")
    vol.cord = (vol.cord > 0).astype(np.uint8)
    if not vol.cord.any():
        src = sf.cord or sf.labels
        raise DataError(f"{src}: empty cord mask (no voxel labelled cord) for subject {sf.subject}")
    if vol.csf is not None:
        vol.csf = (vol.csf > 0).astype(np.uint8)
    _load_oracle(vol, sf, img.shape, aff)
    return vol


def _load_oracle(vol: Volume, sf: SubjectFiles, shape: tuple[int, ...], aff: np.ndarray) -> None:
    """Set ``vol.clean`` / ``vol.twin`` (float32, RAS, the image's scale) from ``sf.clean`` /
    ``sf.twin``; a twin path equal to the image path reuses the image (a lesion-free phantom
    subject). Each must lie on the image grid (:class:`DataError` naming the file otherwise)."""
    for key in ("clean", "twin"):
        p = getattr(sf, key)
        if p is None:
            continue
        if Path(p) == Path(sf.image):
            setattr(vol, key, vol.image.copy())
            continue
        what = {"clean": "noise-free oracle image", "twin": "lesion-free oracle image"}[key]
        a, a_aff = read_nifti(p, what)
        _check_same_grid(Path(sf.image), shape, aff, Path(p), a.shape, a_aff, what)
        if not np.isfinite(a).all():
            raise DataError(f"{p}: {what} contains NaN or infinite values")
        a_ras, _, _ = to_ras(np.asarray(a, np.float32), a_aff)
        setattr(vol, key, np.ascontiguousarray(a_ras, dtype=np.float32))


# --------------------------------------------------------------------------------------
# The authors' 2D arrays
# --------------------------------------------------------------------------------------
def read_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one of the authors' ``.npy`` samples and check it.

    Returns ``(image, labels)``: image float32 (256, 256) in [0, 1], labels uint8 (256, 256)
    with the values of :mod:`u2ad_core.core.labels` (ignored values, e.g. 7, set to 0 with a
    :class:`DataWarning` naming the file). Raises :class:`DataError` naming the file for a
    missing / unreadable file, a shape other than (3, 256, 256), a non-finite, constant or
    out-of-range image, a non-integer label channel, or unknown label values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: array file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # ValueError, OSError, UnpicklingError, ...
        raise DataError(f"{path}: cannot read as a numpy array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        raise DataError(f"{path}: expected a numeric array, got {getattr(arr, 'dtype', type(arr))}")
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise DataError(f"{path}: expected shape {ARRAY_SHAPE} = [image, roi, labels] (the authors' sample format), "
                        f"got {tuple(arr.shape)}" + ("" if arr.ndim != 3 else f" ({arr.shape[0]} channels, not 3)"))
    if tuple(arr.shape) != ARRAY_SHAPE:
        raise DataError(f"{path}: expected shape {ARRAY_SHAPE} = [image, roi, labels] at {AUTHORS_PIXEL_MM:.5f} mm, "
                        f"got {tuple(arr.shape)} (image size {arr.shape[1]} x {arr.shape[2]}, not 256 x 256)")
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: array contains NaN or infinite values")
    image = arr[0].astype(np.float32)
    if image.max() == image.min():
        raise DataError(f"{path}: image channel is constant (all pixels = {image.max()})")
    if image.min() < -1e-6 or image.max() > 1 + 1e-6:
        raise DataError(f"{path}: image channel spans [{image.min():.4g}, {image.max():.4g}], expected [0, 1] "
                        "(the authors' normalised format)")
    lab = arr[2]
    if lab.min() < 0 or not np.array_equal(lab, np.rint(lab)):
        raise DataError(f"{path}: label channel (index 2) must hold non-negative integers")
    lab = lab.astype(np.int64)
    present = set(np.unique(lab).tolist()) - {0}
    unknown = present - set(L.LABELS) - set(IGNORED_LABELS)
    if unknown:
        raise DataError(f"{path}: unexpected label values {sorted(unknown)}; expected {sorted(L.LABELS)} "
                        f"({', '.join(L.LABELS.values())}) or the ignored {sorted(IGNORED_LABELS)}")
    for v in sorted(present & set(IGNORED_LABELS)):
        n = int((lab == v).sum())
        warnings.warn(f"{path}: label value {v} ({IGNORED_LABELS[v]}) on {n} pixels ignored (set to background)",
                      DataWarning, stacklevel=2)
        lab[lab == v] = 0
    return np.clip(image, 0.0, 1.0), lab.astype(np.uint8)


def load_array(sf: SubjectFiles) -> Volume:
    """One of the authors' arrays as a one-slice :class:`Volume` in RAS.

    The (H, W) slice (rows S->I, columns A->P) becomes ``image[0, j, k] = slice[H-1-k, W-1-j]``
    (axis 1 posterior -> anterior, axis 2 inferior -> superior), voxel :data:`AUTHORS_PIXEL_MM`
    in-plane; ``normalised`` is set (already in [0, 1]). Cord = labels 3 or 6, CSF = label 4.
    Raises :class:`DataError` as :func:`read_array` does, and for an empty cord.
    """
    image, lab = read_array(sf.image)

    def ras(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(a, (0, 1)).T[None])

    p = AUTHORS_PIXEL_MM
    vol = Volume(subject=sf.subject, image=ras(image), affine=np.diag([p, p, p, 1.0]), zooms=(p, p, p),
                 source_index=np.zeros(1, np.int64), labels=ras(lab), orientation="array (S-I rows, A-P columns)",
                 files={"image": str(sf.image)}, normalised=True)
    vol.cord = np.isin(vol.labels, (L.CORD, L.HYPERINTENSITY)).astype(np.uint8)
    if not vol.cord.any():
        raise DataError(f"{sf.image}: empty cord mask (no pixel labelled cord, value {L.CORD}) "
                        f"for subject {sf.subject}")
    if (vol.labels == L.CSF).any():
        vol.csf = (vol.labels == L.CSF).astype(np.uint8)
    return vol


# --------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------
def _strip_nii(name: str) -> str:
    for s in NIFTI_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _label_from_row(row: dict[str, str]) -> tuple[int, str]:
    """(patient_label, lesion_segments) from a participants row (phantom or BIDS)."""
    segs = row.get("lesion_segments", "")
    segs = ";".join(L.parse_segments(segs)) if segs else ""
    diag = (row.get("diagnosis") or row.get("pathology") or "").strip().lower()
    if "lesion_segments" in row:
        return (1 if segs else 0), segs
    if diag in {"hc", "healthy", "control"}:
        return 0, ""
    return -1, ""


def detect_layout(root: str | Path) -> str:
    """``"phantom"``, ``"bids"``, ``"authors"`` or ``"u2ad_arrays"``; :class:`DataError` when none matches."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: input folder not found")
    if (root / "phantom.json").is_file():
        return "phantom"
    if any(root.glob("sub-*/anat/sub-*_T2w.nii*")):
        return "bids"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "authors"
    if any(root.glob("*.npy")):
        return "u2ad_arrays"
    raise DataError(
        f"{root}: unknown layout; expected one of: phantom (phantom.json + sub-*/sub-*_T2w.nii.gz), "
        "Spine Generic BIDS (sub-*/anat/sub-*_T2w.nii.gz + derivatives/labels/...), "
        "the authors' images/ + labels/ folders, or a folder of the authors' (3, 256, 256) .npy arrays"
    )


def scan_cohort(root: str | Path) -> Cohort:
    """List the subjects of an input folder (any of the four layouts).

    Subjects whose required files are missing are kept, with ``problem`` set, so that the
    preprocessing reports them instead of dropping them silently.
    """
    root = Path(root)
    layout = detect_layout(root)
    subjects: list[SubjectFiles] = []
    meta: dict[str, Any] = {}
    if layout == "phantom":
        meta = json.loads((root / "phantom.json").read_text())
        tsv = root / "participants.tsv"
        rows = {r["subject"]: r for r in _read_tsv(tsv)} if tsv.is_file() else {}
        for d in sorted(p for p in root.glob("sub-*") if p.is_dir()):
            sid = d.name
            img = d / f"{sid}_T2w.nii.gz"
            lab = d / f"{sid}_labels.nii.gz"
            row = rows.get(sid, {})
            pl, segs = _label_from_row(row) if row else (-1, "")
            sf = SubjectFiles(sid, img, lab if lab.is_file() else None, site=row.get("site", ""),
                              patient_label=pl, lesion_segments=segs)
            orc = oracle_files(d, sid)
            if orc["clean"].is_file():  # an oracle cohort; no twin file: no lesion, the twin is the image
                sf.clean, sf.twin = orc["clean"], (orc["twin"] if orc["twin"].is_file() else img)
            if not img.is_file():
                sf.problem = f"{img}: image file missing for subject {sid}"
            elif sf.labels is None:
                sf.problem = f"{img}: missing labels (expected {lab})"
            subjects.append(sf)
        missing = set(rows) - {s.subject for s in subjects}
        for sid in sorted(missing):
            subjects.append(SubjectFiles(sid, root / sid / f"{sid}_T2w.nii.gz",
                                         problem=f"{root / sid}: listed in participants.tsv but no folder"))
    elif layout == "bids":
        tsv = root / "participants.tsv"
        rows = {}
        if tsv.is_file():
            for r in _read_tsv(tsv):
                rows[r.get("participant_id") or r.get("subject", "")] = r
        for img in sorted(root.glob("sub-*/anat/sub-*_T2w.nii*")):
            sid = img.parent.parent.name
            stem = _strip_nii(img.name)
            der = root / "derivatives" / "labels" / sid / "anat"
            cord = next(iter(sorted(der.glob(f"{stem}_seg-manual.nii*"))), None)
            disc = next(iter(sorted(der.glob(f"{stem}_labels-disc-manual.nii*"))), None)
            csf = next(iter(sorted(der.glob(f"{stem}_csf*.nii*"))), None)
            row = rows.get(sid, {})
            pl, segs = _label_from_row(row) if row else (-1, "")
            site = row.get("institution_id") or row.get("site") or ""
            sf = SubjectFiles(sid, img, cord=cord, discs=disc, csf=csf, site=site,
                              patient_label=pl, lesion_segments=segs)
            if cord is None:
                sf.problem = f"{img}: missing labels (no {der / (stem + '_seg-manual.nii.gz')})"
            subjects.append(sf)
    else:  # authors (NIfTI images/ + labels/) or u2ad_arrays (flat folder of .npy)
        tsv = next((p for p in (root / "participants.tsv", root / "labels.tsv") if p.is_file()), None)
        rows = {}
        if tsv is not None:
            for r in _read_tsv(tsv):
                rows[r.get("subject") or r.get("participant_id", "")] = r
        if layout == "u2ad_arrays":
            for arr in sorted(root.glob("*.npy")):
                row = rows.get(arr.stem, {})
                pl, segs = _label_from_row(row) if row else (-1, "")
                subjects.append(SubjectFiles(arr.stem, arr, site=row.get("site", ""), patient_label=pl,
                                             lesion_segments=segs))
        for img in ([] if layout == "u2ad_arrays" else
                    sorted(list((root / "images").glob("*.nii.gz")) + list((root / "images").glob("*.nii")))):
            name = _strip_nii(img.name)
            lab = next((root / "labels" / (name + s) for s in NIFTI_SUFFIXES
                        if (root / "labels" / (name + s)).is_file()), None)
            row = rows.get(name, {})
            pl, segs = _label_from_row(row) if row else (-1, "")
            sf = SubjectFiles(name, img, labels=lab, site=row.get("site", ""), patient_label=pl,
                              lesion_segments=segs)
            if lab is None:
                sf.problem = f"{img}: missing labels (expected {root / 'labels' / (name + '.nii.gz')})"
            subjects.append(sf)
        meta["labels_from_maps"] = not rows  # patient labels derived from label value 6
    if not subjects:
        raise DataError(f"{root}: no subjects found for layout {layout!r}")
    return Cohort(root=root, layout=layout, subjects=subjects, meta=meta)
