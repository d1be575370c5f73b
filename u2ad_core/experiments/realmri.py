"""Real MRI through the whole pipeline (notebook 11): what transfers from the phantom.

The public example files (:mod:`u2ad_core.data.fetch`, ``data/real`` or ``../shared/data/real``)
give two healthy real sources with a cord mask, and the U2AD authors' clinical slices:

- ``sct_t2``: the SCT test subject (healthy research 3D T2w, 1 mm). Its manual masks come with
  a crop around C2-C5; the same subject's whole-neck field of view (``full_fov_2014``) is used
  as the image and the crop's masks are placed into it where the two affines say the crop lies
  (:func:`sct_t2_volume`), so that the model sees real anatomy around the cord instead of the
  crop's zero padding. The cord is labelled over C2-C5 only: the ROI is that part.
- ``pam50``: the PAM50 template (an average of 50 healthy subjects: noise-free, straight cord).
- the authors' arrays (``u2ad_official/*.npy``): two clinical DCM slices (cord, CSF, discs,
  bodies, herniation labelled; **no hyperintensity label**) and three Spine Generic slices
  without a cord label (unusable where a cord ROI is needed).

Functions, on N slices of H x W (rows superior -> inferior, columns anterior -> posterior):

- :func:`find_real_dir` / :func:`missing_files`: where the files are, verified by SHA-256.
- :func:`healthy_slices`: the ``sct_t2`` and ``pam50`` slices preprocessed like the phantom
  (:func:`u2ad_core.data.preprocess.preprocess_volume`) into one :class:`~u2ad_core.data.datasets.SliceData`.
- :func:`preprocessing_steps`: each step of the preprocessing of one subject, for a figure.
- :func:`recon_stats`: a model's Monte-Carlo reconstruction of each slice: ROI (cord) MSE and
  mean EU per slice (the domain-shift measurement); :func:`shift_table` sets two groups side by
  side, :func:`paired_change` compares the same slices before and after adaptation.
- :func:`adapt_overrides`: the preset's U2AD adaptation schedule, stretched for a small real set.
- :func:`insert_lesions`: synthetic T2 hyperintensities of calibrated conspicuity in real slices,
  drawn like the phantom's (:data:`u2ad_core.data.phantom.LESION_TYPES`: faint / intense contrast
  between cord and CSF, edge profile; the phantom's size ranges, :data:`LESION_GEOMETRY`).
- :func:`lesion_pairs`: lesion copies of slices and their clean twins (the detection set);
  :func:`score_methods` and :func:`pair_detection_table`: U2AD against Z-scoring and the
  morphology-only score on it, with pixel AUROC / AUPRC and patient-level separation, mean and
  std over folds of pairs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score

from u2ad_core.baselines import SignalModel, anomaly_maps, get_method, score_anomaly_maps
from u2ad_core.core import labels as L
from u2ad_core.core.config import DataConfig
from u2ad_core.core.context import repo_root
from u2ad_core.core.presets import Preset
from u2ad_core.core.runtime import make_generator
from u2ad_core.data.datasets import REQUIRED, SliceData
from u2ad_core.data.fetch import MANIFEST, verify_file
from u2ad_core.data.io import DataError, DataWarning, SubjectFiles, Volume, load_subject, read_array, read_nifti, to_ras
from u2ad_core.data.phantom import LESION_TYPES
from u2ad_core.data.preprocess import preprocess_volume
from u2ad_core.data.pseudo import as_numpy_rng, cord_axis
from u2ad_core.data.realism import MIN_CSF_MM2, RING_MM
from u2ad_core.method.scoring import score_dataset
from u2ad_core.method.uncertainty import mc_uncertainty
from u2ad_core.metrics import compare, pixel_metrics, reconstruction_metrics, verdict

__all__ = [
    "SCT_DIR", "T2_FILES", "PAM50_FILES", "ARRAYS_DIR", "LESION_GEOMETRY", "HEALTHY_SOURCES",
    "real_dir_candidates", "missing_files", "find_real_dir", "sct_t2_volume", "pam50_subject",
    "healthy_slices", "preprocessing_steps", "recon_stats", "shift_table", "paired_change", "adapt_overrides",
    "tissue_means", "insert_lesions", "lesion_pairs", "score_methods", "pair_detection_table",
]

SCT_DIR = "sct_testing_data"
T2_FILES = {"image": "t2/t2.nii.gz", "cord": "t2/t2_seg-manual.nii.gz", "levels": "t2/t2_seg-manual_labeled.nii.gz",
            "full_fov": "full_fov_2014/t2.nii.gz"}
PAM50_FILES = {"image": "template/PAM50_small_t2.nii.gz", "cord": "template/PAM50_small_cord.nii.gz",
               "csf": "template/PAM50_small_csf_derived.nii.gz", "discs": "template/PAM50_small_label_disc.nii.gz",
               "levels": "template/PAM50_small_levels.nii.gz"}
ARRAYS_DIR = "u2ad_official"
HEALTHY_SOURCES = ("sct_t2", "pam50")

LESION_GEOMETRY: dict[str, tuple[float, float]] = {
    "half_length_mm": (1.5, 7.5),  # the phantom's lesions: 3-15 mm long along the cord (size 1)
    "ap_fraction": (0.28, 0.5),  # the phantom's half AP extent over the cord's AP diameter
}
"""Size ranges of the phantom's lesions (:mod:`u2ad_core.data.phantom`, ``_sample_anatomy``), used
for the synthetic lesions in real slices."""


# --------------------------------------------------------------------------------------
# Where the files are
# --------------------------------------------------------------------------------------
def real_dir_candidates(root: str | Path | None = None) -> list[Path]:
    """``data/real`` under the project root, then ``../shared/data/real`` beside it."""
    r = Path(root) if root is not None else repo_root()
    return [r / "data" / "real", r.parent / "shared" / "data" / "real"]


def missing_files(real_dir: str | Path) -> list[str]:
    """Problems with ``real_dir`` (missing or corrupt files, checked by size and SHA-256 against
    :data:`u2ad_core.data.fetch.MANIFEST`); empty when everything this chapter needs is there. The
    derived CSF mask of the template is optional (without it the CSF is estimated)."""
    root = Path(real_dir)
    return [why for e in MANIFEST if e.path is not None and (why := verify_file(root / e.dest, e))]


def find_real_dir(explicit: str | Path | None = None, root: str | Path | None = None) -> Path | None:
    """The folder holding the verified real files: ``explicit`` when given (and nothing else),
    else the first of :func:`real_dir_candidates` with no :func:`missing_files`; ``None`` when none."""
    cands = [Path(explicit)] if explicit not in (None, "") else real_dir_candidates(root)
    for c in cands:
        if c.is_dir() and not missing_files(c):
            return c
    return None


# --------------------------------------------------------------------------------------
# The healthy real sources
# --------------------------------------------------------------------------------------
def sct_t2_volume(real_dir: str | Path):
    """The SCT ``t2`` subject in its whole-neck field of view, masks from the crop, in RAS.

    Returns a :class:`~u2ad_core.data.io.Volume`: image float32 (X, Y, Z) of
    ``full_fov_2014/t2.nii.gz``; ``cord`` and ``levels`` (uint8, same shape) from
    ``t2/t2_seg-manual*.nii.gz``, placed at the voxel offset given by the two affines. Raises
    :class:`~u2ad_core.data.io.DataError` naming the files when the crop is not an integer shift of
    the full grid with the same axes and zooms, or when the full image under the crop differs
    from the crop.
    """
    d = Path(real_dir) / SCT_DIR
    full_p, crop_p = d / T2_FILES["full_fov"], d / T2_FILES["image"]
    full, fa = read_nifti(full_p, "image")
    crop, ca = read_nifti(crop_p, "image")
    m = np.linalg.inv(fa) @ ca
    t = m[:3, 3]
    if not (np.allclose(m[:3, :3], np.eye(3), atol=1e-4) and np.allclose(t, np.rint(t), atol=1e-3)):
        raise DataError(f"{crop_p}: not an integer-voxel crop of {full_p} "
                        f"(affines differ by {np.round(m, 3).tolist()})")
    t = np.rint(t).astype(int)
    sl = tuple(slice(a, a + n) for a, n in zip(t, crop.shape))
    if (t < 0).any() or any(s.stop > n for s, n in zip(sl, full.shape)) or not np.array_equal(full[sl], crop):
        raise DataError(f"{full_p}: the image at offset {t.tolist()} is not {crop_p}")

    def place(path: Path, what: str) -> np.ndarray:
        a, aff = read_nifti(path, what)
        if a.shape != crop.shape or not np.allclose(aff, ca, atol=1e-3):
            raise DataError(f"{path}: {what} is not on the grid of {crop_p}")
        out = np.zeros(full.shape, np.uint8)
        out[sl] = np.rint(a).astype(np.uint8)
        return np.ascontiguousarray(to_ras(out, fa)[0])

    img, aff_ras, ornt = to_ras(full.astype(np.float32), fa)
    sag = int(np.flatnonzero(ornt[:, 0] == 0)[0])
    nx = img.shape[0]
    src = np.arange(nx) if ornt[sag, 1] > 0 else nx - 1 - np.arange(nx)
    cord = (place(d / T2_FILES["cord"], "cord") > 0).astype(np.uint8)
    return Volume(subject="sct_t2", image=np.ascontiguousarray(img, np.float32), affine=aff_ras,
                  zooms=tuple(float(z) for z in np.sqrt((aff_ras[:3, :3] ** 2).sum(0))), source_index=src,
                  cord=cord, levels=place(d / T2_FILES["levels"], "levels"),
                  orientation="".join(nib.aff2axcodes(fa)),
                  files={"image": str(full_p), "cord": str(d / T2_FILES["cord"]),
                         "levels": str(d / T2_FILES["levels"])})


def pam50_subject(real_dir: str | Path):
    """The PAM50 template as a :class:`~u2ad_core.data.io.SubjectFiles` (CSF mask when present)."""
    d = Path(real_dir) / SCT_DIR
    csf = d / PAM50_FILES["csf"]
    return SubjectFiles("pam50", d / PAM50_FILES["image"], cord=d / PAM50_FILES["cord"],
                        csf=csf if csf.is_file() else None, discs=d / PAM50_FILES["discs"],
                        levels=d / PAM50_FILES["levels"], site="template", patient_label=0)


def healthy_slices(real_dir: str | Path, data_cfg: DataConfig, n_slices: int):
    """The healthy real slices (``sct_t2`` and ``pam50``), preprocessed like the phantom.

    ``n_slices`` middle sagittal slices of each source through
    :func:`u2ad_core.data.preprocess.preprocess_volume` (foreground intensity normalisation, the
    preset's pixel size, crop and image size). Returns a
    :class:`~u2ad_core.data.datasets.SliceData` of ``2 * n_slices`` slices (subject = source name,
    site ``"sct"`` / ``"template"``, patient_label 0).
    """
    parts = []
    for name, vol, site in (("sct_t2", sct_t2_volume(real_dir), "sct"),
                            ("pam50", load_subject(pam50_subject(real_dir)), "template")):
        o = preprocess_volume(vol, data_cfg, n_slices)
        n = len(o["slice_offset"])
        o.update(subject=np.array([name] * n), site=np.array([site] * n), patient_label=np.zeros(n, np.int8),
                 lesion_segments=np.array([""] * n))
        parts.append(o)
    arrays = {f: np.concatenate([o[f] for o in parts]) for f in REQUIRED}
    data = SliceData(**arrays, site=np.concatenate([o["site"] for o in parts]).astype(str))
    data.manifest = {"layout": "real", "data_config": {"pixel_mm": float(data_cfg.pixel_mm)},
                     "segments_source": {name: o["segments_source"] for name, o in zip(HEALTHY_SOURCES, parts)}}
    return data


def _stored_plane(path: Path, vol) -> tuple[np.ndarray, str, float]:
    """The middle sagittal plane of ``path`` as stored (no reorientation), its axis codes and its
    pixel aspect (row mm / column mm)."""
    if path.suffix == ".npy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # label 7: reported where the data is loaded
            return read_array(path)[0], "channel 0 of (3, 256, 256): rows S-I, columns A-P", 1.0
    data, aff = read_nifti(path, "image")
    codes = nib.aff2axcodes(aff)
    sag = next(i for i, c in enumerate(codes) if c in "LR")
    cord = vol.cord
    x_mid = int(round(float((cord.sum(axis=(1, 2)) * np.arange(cord.shape[0])).sum() / cord.sum())))
    plane = np.take(data, int(vol.source_index[x_mid]), axis=sag)
    rest = [i for i in range(3) if i != sag]
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    return (plane, f"{''.join(codes)}: rows {codes[rest[0]]}, columns {codes[rest[1]]}",
            float(zooms[rest[0]] / zooms[rest[1]]))


def preprocessing_steps(vol, data_cfg: DataConfig, stored_path: str | Path | None = None) -> list[dict[str, Any]]:
    """The preprocessing of one subject's middle slice, step by step, for a figure.

    ``vol``: a :class:`~u2ad_core.data.io.Volume` (RAS); ``stored_path``: the image file, whose
    middle sagittal plane is shown first as stored (no reorientation). Returns a list of steps,
    each ``{"title", "image" (2D), "aspect" (row mm / column mm), "units"}``; the last also has
    ``"cord"``, ``"csf"``, ``"segments"`` (H, W) and ``"segments_source"``. Steps: as stored;
    reoriented to RAS (rows superior -> inferior, stored intensities; NIfTI only);
    intensity-normalised at native resolution (clip to the foreground's 0.2-99.8 percentiles,
    min-max; skipped for the authors' arrays, already in [0, 1]); resampled and cropped onto
    the preset's grid, with the masks (:func:`u2ad_core.data.preprocess.preprocess_volume`).
    """
    out = preprocess_volume(vol, data_cfg, 1)
    cord = vol.cord
    x_mid = int(round(float((cord.sum(axis=(1, 2)) * np.arange(cord.shape[0])).sum() / cord.sum())))
    ras = np.flip(vol.image[x_mid].T, (0, 1))  # rows S -> I, columns A -> P
    lo, hi = out["intensity_range"]
    aspect = vol.zooms[2] / vol.zooms[1]
    steps = []
    if stored_path is not None:
        plane, axes, asp = _stored_plane(Path(stored_path), vol)
        steps.append({"title": f"as stored\n({axes})", "image": plane, "aspect": asp,
                      "units": "stored value" if not vol.normalised else "[0, 1]"})
    if not vol.normalised:
        steps.append({"title": f"reoriented (RAS), slice {x_mid}\n{vol.zooms[1]:.2g} x {vol.zooms[2]:.2g} mm pixels",
                      "image": ras, "aspect": aspect, "units": "stored value"})
        steps.append({"title": "foreground clip 0.2-99.8 %,\nmin-max to [0, 1]",
                      "image": np.clip((ras - lo) / (hi - lo), 0, 1), "aspect": aspect, "units": "[0, 1]"})
    h, w = out["images"].shape[1:]
    steps.append({"title": f"{data_cfg.pixel_mm:g} mm grid, {h} x {w}\n({data_cfg.crop} crop)",
                  "image": out["images"][0], "aspect": 1.0, "units": "[0, 1]", "cord": out["cord"][0],
                  "csf": out["csf"][0], "segments": out["segments"][0], "segments_source": out["segments_source"]})
    return steps


# --------------------------------------------------------------------------------------
# Domain shift
# --------------------------------------------------------------------------------------
def recon_stats(model, data, preset: Preset, device: str = "cpu", seed: int = 0, group: str = ""):
    """One batched Monte-Carlo reconstruction of every slice; per-slice ROI error and EU.

    ``data``: :class:`~u2ad_core.data.datasets.SliceData` (N slices); ROI = the cord mask; K =
    ``preset.mc.k`` reconstructions per ROI patch at ``preset.masking.mask_ratio``, seeded by
    ``seed`` (:func:`u2ad_core.method.uncertainty.mc_uncertainty`). Returns ``(df, mc)``: ``df`` one
    row per slice with group, subject, slice_offset, ``mse`` (of the MC mean over the cord),
    ``eu_mean`` (mean EU over the cord), ``ssim`` and ``au_mean``; ``mc`` the MC result
    (``mean``, ``eu`` (N, H, W) tensors).
    """
    images = np.asarray(data.images, np.float32)
    roi = np.asarray(data.cord) > 0
    mc = mc_uncertainty(model, images, roi, k=preset.mc.k, mask_ratio=preset.masking.mask_ratio,
                        generator=make_generator(seed), ddof=preset.mc.ddof, batch_size=preset.mc.batch_size,
                        device=device)
    per = reconstruction_metrics(images, mc.mean.float().cpu(), mc.eu.float().cpu(), roi, reduce=False)
    df = pd.DataFrame({"group": group, "subject": np.asarray(data.subject).astype(str),
                       "slice_offset": np.asarray(data.slice_offset).astype(int),
                       **{k: per[k] for k in ("mse", "eu_mean", "ssim", "au_mean")}})
    return df, mc


def _words_of(v: str) -> str:
    """A verdict of :mod:`u2ad_core.metrics.verdicts` in this chapter's words (``"higher"`` /
    ``"lower"`` for A: the metrics here are measurements, not scores to maximise)."""
    return {"better": "higher", "worse": "lower"}.get(v, v)


def _words(a_mean: float, a_std: float, b_mean: float, b_std: float) -> str:
    return _words_of(compare(a_mean, a_std, b_mean, b_std, higher_is_better=True))


def shift_table(df: pd.DataFrame, a: str, b: str, metrics: Sequence[str] = ("mse", "eu_mean")) -> pd.DataFrame:
    """Group ``a`` beside group ``b`` of :func:`recon_stats` rows, per metric: mean and std over
    slices, the ratio of the means, and the words (``"higher"`` / ``"lower"`` for ``a`` only when
    the gap exceeds the larger of the two stds, else ``"no clear difference"``)."""
    rows = []
    for m in metrics:
        va = df.loc[df["group"] == a, m].to_numpy(np.float64)
        vb = df.loc[df["group"] == b, m].to_numpy(np.float64)
        if not (len(va) and len(vb)):
            raise ValueError(f"shift_table: no rows for group {a!r} or {b!r}")
        ma, sa, mb, sb = np.nanmean(va), np.nanstd(va, ddof=1), np.nanmean(vb), np.nanstd(vb, ddof=1)
        rows.append({"metric": m, f"{a} mean": ma, f"{a} std": sa, f"{b} mean": mb, f"{b} std": sb,
                     "ratio": ma / mb if mb else np.nan, f"{a} vs {b}": _words(ma, sa, mb, sb),
                     f"n {a}": len(va), f"n {b}": len(vb)})
    return pd.DataFrame(rows)


def paired_change(before: np.ndarray, after: np.ndarray, log: bool = False) -> dict[str, Any]:
    """Per-slice paired change of a metric (e.g. ROI MSE before and after adaptation), ``(N,)`` each.

    Returns before / after means, the mean and std (over slices) of ``after - before``, and the
    words: ``"lower"`` / ``"higher"`` only when the mean change exceeds the std of the changes,
    else ``"no clear difference"`` (:func:`u2ad_core.metrics.verdict`; ``"not measured"`` when
    no slice has both values).

    ``log=True`` judges a positive, multiplicative quantity (a variance such as the mean EU, whose
    slices can differ by orders of magnitude) on a log scale: ``change`` / ``change_std`` are then
    the mean and std of ``log(after / before)`` and ``relative_change`` is the geometric-mean
    change ``exp(mean) - 1``, so a tenfold rise on most slices reads as one, whatever a few
    extreme slices do to the arithmetic means.
    """
    b = np.asarray(before, np.float64)
    a = np.asarray(after, np.float64)
    if log:
        if np.nanmin(np.concatenate([a, b])) <= 0:
            raise ValueError("paired_change(log=True) needs positive values on every slice")
        d = np.log(a) - np.log(b)
    else:
        d = a - b
    md, sd = float(np.nanmean(d)), float(np.nanstd(d, ddof=1)) if len(d) > 1 else float("nan")
    words = _words_of(verdict(md, sd))
    rel = float(np.expm1(md)) if log else (md / float(np.nanmean(b)) if np.nanmean(b) else float("nan"))
    return {"before": float(np.nanmean(b)), "after": float(np.nanmean(a)), "change": md, "change_std": sd,
            "relative_change": rel, "words": words, "scale": "log" if log else "linear"}


def adapt_overrides(preset: Preset, factor: int = 3) -> dict[str, Any]:
    """The preset's U2AD adaptation schedule stretched ``factor`` times (epochs, LR step, stage-2
    start, refresh interval Q, checkpoints): a real set of a dozen slices makes an epoch ~10x
    shorter than the preset's clinical cohort, and the proportions of the schedule (LR steps,
    EU stage then AU stage) stay those of the preset (themselves the paper's, shortened)."""
    a = preset.adapt
    f = int(factor)
    return {"adapt.epochs": a.epochs * f, "adapt.lr_step": a.lr_step * f, "adapt.stage2_start": a.stage2_start * f,
            "adapt.refresh_every": a.refresh_every * f, "adapt.checkpoint_every": a.checkpoint_every * f}


# --------------------------------------------------------------------------------------
# Synthetic lesions in real anatomy
# --------------------------------------------------------------------------------------
def tissue_means(images: np.ndarray, cord: np.ndarray, csf: np.ndarray | None = None,
                 pixel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean cord and mean CSF intensity per slice, ``(N,)`` each.

    images, cord, csf: (N, H, W). CSF: the CSF mask where it covers at least
    :data:`u2ad_core.data.realism.MIN_CSF_MM2`, else the brightest quartile of a ring 1-4 mm around
    the cord (the realism report's estimate, :data:`u2ad_core.data.realism.RING_MM`). NaN for a
    slice without cord.
    """
    x = np.asarray(images, np.float64)
    c = np.asarray(cord) > 0
    f = np.zeros_like(c) if csf is None else np.asarray(csf) > 0
    n_c = c.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cm = np.where(n_c > 0, (x * c).sum((1, 2)) / n_c, np.nan)
    use_mask = f.sum((1, 2)) * pixel_mm**2 >= MIN_CSF_MM2
    fm = np.full(len(x), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        fm[use_mask] = (x * f).sum((1, 2))[use_mask] / f.sum((1, 2))[use_mask]
    r1 = max(1, int(round(RING_MM[0] / pixel_mm)))
    r4 = max(r1 + 1, int(round(RING_MM[1] / pixel_mm)))
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)  # 2D dilation of every slice at once
    ring = ndi.binary_dilation(c, st, iterations=r4) & ~ndi.binary_dilation(c, st, iterations=r1)
    for i in np.flatnonzero(~use_mask & (n_c > 0)):
        v = x[i][ring[i]]
        if v.size:
            fm[i] = v[v >= np.percentile(v, 75)].mean()
    return cm, fm


def insert_lesions(images: np.ndarray, cord: np.ndarray, csf: np.ndarray | None = None, rng: Any = None,
                   conspicuity: str = "mixed", faint_fraction: float = 0.5, size: float = 1.0,
                   pixel_mm: float = 1.0, min_width: float = 2.0):
    """One synthetic T2 hyperintensity per slice, drawn like the phantom's lesions.

    images (N, H, W) in [0, 1]; cord, csf (N, H, W) masks (csf may be None). Per slice: a type
    (``conspicuity`` ``"faint"`` / ``"intense"``, or ``"mixed"`` with ``faint_fraction`` faint),
    a contrast ``c`` uniform in the type's range of :data:`u2ad_core.data.phantom.LESION_TYPES`
    (0 = the slice's cord mean, 1 = its CSF mean, :func:`tissue_means`), a half length along the
    cord and a half width across it from :data:`LESION_GEOMETRY` (times ``size``), and a centre on
    the cord centre line (:func:`u2ad_core.data.pseudo.cord_axis`) at a random row whose lesion fits in
    the labelled cord. With ``r2`` the normalised squared radius of an ellipse aligned with the
    local cord axis, the profile is the phantom's ``clip((reach - r2) / (reach - 0.5), 0, 1) **
    edge`` (fuzzy for faint, sharp for intense). The phantom blends the tissue value towards the
    target before adding noise; a real slice already has its noise and texture, so here the
    lesion is *added*: ``x + profile * (target - cord mean)`` on cord pixels (clipped to [0, 1]),
    which keeps the real texture. The label is the core, ``r2 < 0.8`` within the cord (as the
    phantom's). Randomness: ``rng`` (numpy Generator, int seed or torch.Generator).

    Returns ``(out, lesion, params)``: float32 (N, H, W), uint8 (N, H, W), and one dict per
    slice (row, col, type, contrast, target, length_mm, width_fraction, n_pixels; ``n_pixels``
    0 and the slice unchanged when its cord is too thin or absent).
    """
    if conspicuity not in (*LESION_TYPES, "mixed"):
        raise ValueError(f"conspicuity must be one of {[*LESION_TYPES, 'mixed']}, got {conspicuity!r}")
    g = as_numpy_rng(rng)
    x = np.asarray(images, np.float32)
    c = np.asarray(cord) > 0
    if x.ndim != 3 or c.shape != x.shape:
        raise ValueError(f"images {x.shape} and cord {c.shape} must both be (N, H, W)")
    N, H, W = x.shape
    cm, fm = tissue_means(x, c, csf, pixel_mm)
    centre, slope, width = cord_axis(c)
    # per-slice draws (always the same number of draws, whatever the data: reproducible)
    u_type, u_con = g.random(N), g.random(N)
    hl = g.uniform(*LESION_GEOMETRY["half_length_mm"], size=N) * size / pixel_mm  # half length, px
    apf = np.minimum(g.uniform(*LESION_GEOMETRY["ap_fraction"], size=N) * size, 0.6)
    keys = g.random((N, H))
    kinds = np.where(u_type < faint_fraction, "faint", "intense") if conspicuity == "mixed" \
        else np.full(N, conspicuity)
    lo = np.array([LESION_TYPES[k]["contrast"][0] for k in kinds])
    hi = np.array([LESION_TYPES[k]["contrast"][1] for k in kinds])
    edge = np.array([float(LESION_TYPES[k]["edge"]) for k in kinds])
    reach = np.array([float(LESION_TYPES[k]["reach"]) for k in kinds])
    con = lo + u_con * (hi - lo)
    target = cm + con * (fm - cm)
    # a centre row where the cord is wide enough and the lesion fits between the cord's ends
    rows = np.arange(H)[None, :]
    has = c.any(2)
    top = np.where(has.any(1), has.argmax(1), 0)
    bot = np.where(has.any(1), H - 1 - has[:, ::-1].argmax(1), -1)
    wide = width >= min_width
    fits = wide & (rows - top[:, None] >= hl[:, None]) & (bot[:, None] - rows >= hl[:, None])
    ok_rows = np.where(fits.any(1)[:, None], fits, wide)
    active = ok_rows.any(1) & np.isfinite(target)
    row = (keys * ok_rows).argmax(1)
    ii = np.arange(N)
    c0, s0, w0 = centre[ii, row], slope[ii, row], width[ii, row]
    av = np.maximum(apf * w0, 0.5)  # half width across the cord, px
    rr = np.arange(H, dtype=np.float64)[None, :, None]
    cc = np.arange(W, dtype=np.float64)[None, None, :]
    dr = rr - row[:, None, None]
    dc = cc - c0[:, None, None]
    norm = np.sqrt(1 + s0**2)[:, None, None]
    along = (dr + s0[:, None, None] * dc) / norm
    across = (-s0[:, None, None] * dr + dc) / norm
    r2 = (along / hl[:, None, None]) ** 2 + (across / av[:, None, None]) ** 2
    rch = reach[:, None, None]
    prof = np.clip((rch - r2) / (rch - 0.5), 0.0, 1.0) ** edge[:, None, None]
    prof = np.where(c & active[:, None, None], prof, 0.0)
    shift = np.nan_to_num(target - cm)[:, None, None]
    out = np.clip(x + prof * shift, 0.0, 1.0).astype(np.float32)
    lesion = (c & (r2 < 0.8) & active[:, None, None]).astype(np.uint8)
    params = []
    for i in range(N):
        params.append({"row": int(row[i]), "col": float(c0[i]), "type": str(kinds[i]), "contrast": float(con[i]),
                       "cord_mean": float(cm[i]), "csf_mean": float(fm[i]), "target": float(target[i]),
                       "length_mm": float(2 * hl[i] * pixel_mm), "width_fraction": float(2 * av[i] / max(w0[i], 1e-9)),
                       "n_pixels": int(lesion[i].sum())})
    return out, lesion, params


def lesion_pairs(data, rng: Any, copies: int = 3, **insert_kw):
    """The detection set: ``copies`` lesion copies of every slice of ``data`` and their clean twins.

    ``data``: :class:`~u2ad_core.data.datasets.SliceData` (healthy, N slices). Lesions from
    :func:`insert_lesions` (``insert_kw``: conspicuity, faint_fraction, size, pixel_mm). Returns
    ``(pairs, pair, params)``: a SliceData of ``2 * M`` slices (the M lesion copies first, then
    their M clean twins, M = N x copies less any slice whose cord could not hold a lesion;
    ``patient_label`` 1 / 0, ``lesion`` the core mask, ``lesion_segments`` the segments it
    touches, ``original`` the clean image, ``subject`` unique per copy), ``pair`` (2M,) int
    (lesion copy and clean twin share it), and the lesion parameters (M dicts, with
    ``source`` and ``slice_offset``).
    """
    idx = np.repeat(np.arange(len(data)), int(copies))
    out, les, params = insert_lesions(data.images[idx], data.cord[idx], data.csf[idx], rng=rng, **insert_kw)
    keep = les.reshape(len(idx), -1).any(1)
    idx, out, les = idx[keep], out[keep], les[keep]
    params = [dict(p, source=str(data.subject[i]), slice_offset=int(data.slice_offset[i]))
              for p, i, k in zip(params, np.repeat(np.arange(len(data)), int(copies)), keep) if k]
    m = len(idx)
    copy_no = np.concatenate([np.arange(copies)] * len(data))[keep]
    names = np.array([f"{data.subject[i]}{int(data.slice_offset[i]):+d}#{r}" for i, r in zip(idx, copy_no)])
    segs = []
    for k in range(m):
        v = data.segments[idx[k]][les[k] > 0]
        segs.append(";".join(L.SEGMENTS[s - 1] for s in sorted(set(v[v > 0].tolist()))))
    two = np.concatenate([idx, idx])
    pairs = SliceData(
        images=np.concatenate([out, data.images[idx]]).astype(np.float32), cord=data.cord[two], csf=data.csf[two],
        segments=data.segments[two], lesion=np.concatenate([les, np.zeros_like(les)]),
        subject=np.concatenate([np.char.add(names, "/lesion"), np.char.add(names, "/clean")]),
        slice_index=data.slice_index[two], slice_offset=np.zeros(2 * m, np.int64),
        patient_label=np.r_[np.ones(m, np.int8), np.zeros(m, np.int8)],
        lesion_segments=np.array(segs + [""] * m), site=data.site[two],
        original=data.images[two].astype(np.float32),
    )
    pairs.manifest = dict(data.manifest)
    return pairs, np.r_[np.arange(m), np.arange(m)], params


# --------------------------------------------------------------------------------------
# Detection on the synthetic-lesion set
# --------------------------------------------------------------------------------------
def score_methods(models: Mapping[str, Any], data, preset: Preset, device: str = "cpu", seed: int = 0,
                  signal: Sequence[str] = ("zscore", "morphology")) -> dict[str, Any]:
    """Score ``data`` with each U2AD model of ``models`` (name -> EdgeMAE; one batched MC run
    each, :func:`u2ad_core.method.scoring.score_dataset` with ``preset.score``) and each ``signal``
    baseline (:func:`u2ad_core.baselines.anomaly_maps` with ``preset.baselines``, then the same
    scoring). Returns name -> :class:`~u2ad_core.method.scoring.ScoreResult` (baselines named by their
    label)."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        out[name] = score_dataset(model, data, preset.score, mc_k=preset.score.k,
                                  mask_ratio=preset.masking.mask_ratio, device=device, seed=seed,
                                  batch_size=preset.mc.batch_size, ddof=preset.mc.ddof)
    for meth in signal:
        m = get_method(meth)
        _, maps = anomaly_maps(m, SignalModel(m.name, m.sub_config(preset.baselines)), data, sided=preset.score.sided)
        out[m.label] = score_anomaly_maps(maps, data, preset.score)
    return out


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    s = np.nan_to_num(np.asarray(s, np.float64), nan=-np.inf)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def pair_detection_table(results: Mapping[str, Any], data, pair: np.ndarray, n_folds: int = 5, seed: int = 0,
                    reference: str | None = None, groups: np.ndarray | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pixel and patient-level detection of each method on a :func:`lesion_pairs` set.

    ``results``: name -> ScoreResult on ``data`` (2M slices). The M pairs are split at random
    (seed) into ``n_folds`` folds; in each fold, over its lesion and clean slices: pixel AUROC /
    AUPRC of the raw anomaly map over the cord pixels (:func:`u2ad_core.metrics.pixel_metrics`),
    patient AUROC of the patient scores (lesion copy = 1, clean twin = 0) and the paired win rate
    (share of pairs whose lesion copy scores above its clean twin; ties count one half).
    ``groups``: an optional label per pair (M,), e.g. the lesion type; the metrics are then
    computed for every group separately too (column ``group``; ``"all"`` for every pair).
    Returns ``(table, folds)``: one row per method (and group) with mean and std over folds of
    each metric (and, with ``reference``, the words of ``patient_auroc`` against that method in
    the same group: ``"better"`` / ``"worse"`` only beyond the larger fold std), and the per-fold
    rows.
    """
    pair = np.asarray(pair)
    m = int(pair.max()) + 1
    fold_of_pair = np.random.default_rng(seed).permutation(m) % n_folds
    fold = fold_of_pair[pair]
    y = np.asarray(data.patient_label).astype(int)
    lesion = np.asarray(data.lesion)
    grp = np.full(m, "all", dtype=object) if groups is None else np.asarray(groups, dtype=object)
    if len(grp) != m:
        raise ValueError(f"pair_detection_table: groups has {len(grp)} labels for {m} pairs")
    names = ["all"] + ([] if groups is None else sorted(set(grp.tolist())))
    rows = []
    for (name, res), gname in ((nr, gn) for nr in results.items() for gn in names):
        s = res.table["patient_score"].to_numpy(np.float64)
        in_g = np.ones(len(pair), bool) if gname == "all" else (grp[pair] == gname)
        for f in range(n_folds):
            sel = (fold == f) & in_g
            if not sel.any():
                continue
            px = pixel_metrics(res.raw_maps[sel], lesion[sel], res.roi[sel])
            p = pair[sel]
            sl, sc = np.full(m, np.nan), np.full(m, np.nan)
            sl[p[y[sel] == 1]] = s[sel][y[sel] == 1]
            sc[p[y[sel] == 0]] = s[sel][y[sel] == 0]
            both = np.isfinite(sl) & np.isfinite(sc)
            win = float(np.mean((sl[both] > sc[both]) + 0.5 * (sl[both] == sc[both]))) if both.any() else np.nan
            rows.append({"method": name, "group": gname, "fold": f,
                         "pixel_auroc": px["auroc"], "pixel_auprc": px["auprc"],
                         "pixel_prevalence": px["n_lesion_pixels"] / max(px["n_pixels"], 1),
                         "patient_auroc": _auroc(y[sel], s[sel]), "win_rate": win, "n_pairs": int(both.sum())})
    folds = pd.DataFrame(rows)
    metrics = ["pixel_auroc", "pixel_auprc", "patient_auroc", "win_rate", "pixel_prevalence"]
    g = folds.groupby(["method", "group"], sort=False)
    table = g[metrics].mean().add_suffix("_mean").join(g[metrics].std(ddof=1).add_suffix("_std"))
    table = table.join(g["n_pairs"].sum()).reset_index()
    if reference is not None:
        ref = table[table["method"] == reference].set_index("group")
        table[f"patient AUROC vs {reference}"] = [
            "(reference)" if r["method"] == reference else
            compare(r["patient_auroc_mean"], r["patient_auroc_std"], ref.loc[r["group"], "patient_auroc_mean"],
                    ref.loc[r["group"], "patient_auroc_std"])
            for _, r in table.iterrows()]
    return table, folds
