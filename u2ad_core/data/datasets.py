"""Dataset files: :class:`SliceData`, the torch :class:`SliceDataset`, and :func:`prepare_all`.

A dataset file is one compressed ``.npz`` per cohort and purpose with a JSON manifest beside
it (the contract is in ``CONTRIBUTING.md``). Arrays, N slices of H x W:

=================  ========================  ===============================================
field              dtype / shape             meaning
=================  ========================  ===============================================
images             float32 (N, H, W)         in [0, 1]
cord               uint8 (N, H, W)           cord mask (the ROI)
csf                uint8 (N, H, W)           CSF mask (zeros when unknown)
segments           uint8 (N, H, W)           0 none, 1..6 = C2-3 ... C7-T1
lesion             uint8 (N, H, W)           lesion / pseudo-anomaly mask (evaluation only)
subject            str (N,)                  subject id
slice_index        int (N,)                  sagittal slice index in the source volume
slice_offset       int (N,)                  offset from the middle slice (0 = middle)
patient_label      int8 (N,)                 1 lesion, 0 none, -1 unknown
lesion_segments    str (N,)                  e.g. ``C4-5;C5-6``
site               str (N,), optional        acquisition site
original           float32 (N, H, W), opt.   pseudo-anomaly sets: image before anomalies
clean              float32 (N, H, W), opt.   phantom: the noise-free image (oracle)
twin               float32 (N, H, W), opt.   phantom: the lesion-free twin, same noise (oracle)
                                             (on disk ``twin_xor``: its bits XOR ``images``'s)
=================  ========================  ===============================================

``clean`` and ``twin`` are what a real scan hides (:mod:`u2ad_core.data.phantom` writes them beside
each subject, :mod:`u2ad_core.data.preprocess` carries them through the image's own slicing,
resampling, crop and intensity map): on the grid and scale of ``images``, ``twin == images``
wherever the lesion's contrast does not reach, ``None`` for real data and files without them,
among them the knob grids' cohorts (``raw/<cohort>~<hash>/``), generated without the oracle
unless :func:`prepare_all` is asked for it (``oracle=True``).
They are for diagnostics only: no training, scoring or detection code reads them (the torch
:class:`SliceDataset` does not serve them), and :func:`build_pseudo_set` drops them.

:func:`prepare_all` makes every file a preset needs, once: it generates the phantom cohorts
into ``data_dir/raw/<cohort>/`` (skipped when the stamp matches), preprocesses them into
``data_dir/processed/`` and builds the pseudo-anomaly set from ``openneuro_like``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from u2ad_core.core import labels as L
from u2ad_core.core.config import DataConfig, config_hash
from u2ad_core.core.presets import Preset, get_preset
from u2ad_core.core.runtime import atomic_write_json
from u2ad_core.data.phantom import COHORT_SPECS, generate_cohort, phantom_dir_name
from u2ad_core.data.preprocess import ORACLE_FIELDS, preprocess_cohort, read_dataset_npz, save_dataset_npz
from u2ad_core.data.pseudo import add_pseudo_anomalies

__all__ = [
    "data_hash",
    "SliceData",
    "load_dataset",
    "load_data",
    "SliceDataset",
    "COHORT_PURPOSE",
    "cohort_seed",
    "build_pseudo_set",
    "prepare_all",
]

REQUIRED = ("images", "cord", "csf", "segments", "lesion", "subject", "slice_index", "slice_offset",
            "patient_label", "lesion_segments")
OPTIONAL = ("site", "original", "clean", "twin")
PER_SLICE_IMAGES = ("images", "cord", "csf", "segments", "lesion", "original", "clean", "twin")

COHORT_PURPOSE: dict[str, str] = {
    "spine_generic_like": "pretrain",
    "openneuro_like": "pseudo",
    "renji_like": "adapt",
    "ruijin_like": "adapt",
}
"""Which ``DataConfig.slices_<purpose>`` count each cohort is preprocessed with."""


@dataclass
class SliceData:
    """The arrays of a dataset file (numpy; see the module docstring for the fields)."""

    images: np.ndarray
    cord: np.ndarray
    csf: np.ndarray
    segments: np.ndarray
    lesion: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray
    slice_offset: np.ndarray
    patient_label: np.ndarray
    lesion_segments: np.ndarray
    site: np.ndarray | None = None
    original: np.ndarray | None = None
    clean: np.ndarray | None = None
    twin: np.ndarray | None = None
    path: Path | None = field(default=None, compare=False)
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        for f in REQUIRED + OPTIONAL:
            v = getattr(self, f)
            if v is not None and len(v) != n:
                raise ValueError(f"SliceData: field {f!r} has {len(v)} rows, images has {n}")
        for f in ("clean", "twin"):
            v = getattr(self, f)
            if v is not None and v.shape != self.images.shape:
                raise ValueError(f"SliceData: oracle field {f!r} has shape {v.shape}, images {self.images.shape}")
        if self.site is None:
            self.site = np.array([""] * n)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        src = f", path={self.path.name}" if self.path else ""
        return (f"SliceData(n={len(self)}, size={tuple(self.images.shape[1:])}, "
                f"subjects={len(self.subjects())}{src})")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as a dict (optional ones only when present)."""
        out = {f: getattr(self, f) for f in REQUIRED}
        for f in OPTIONAL:
            if getattr(self, f) is not None:
                out[f] = getattr(self, f)
        return out

    def subset(self, sel) -> "SliceData":
        """Rows selected by a boolean mask or an index array (a new object; arrays are copies)."""
        sel = np.asarray(sel)
        if sel.dtype == bool and sel.shape != (len(self),):
            raise ValueError(f"boolean selection must have shape ({len(self)},), got {sel.shape}")
        kw = {f: (None if getattr(self, f) is None else getattr(self, f)[sel]) for f in REQUIRED + OPTIONAL}
        return SliceData(**kw, path=self.path, manifest=self.manifest)

    def middle(self) -> "SliceData":
        """The middle sagittal slice of every subject (``slice_offset == 0``; used for detection)."""
        return self.subset(self.slice_offset == 0)

    def subjects(self) -> list[str]:
        """Unique subject ids in order of first appearance."""
        _, first = np.unique(self.subject, return_index=True)
        return [str(self.subject[i]) for i in np.sort(first)]

    def patient_table(self):
        """One row per subject: subject, site, patient_label, lesion_segments (pandas)."""

        _, first = np.unique(self.subject, return_index=True)
        first = np.sort(first)
        return pd.DataFrame({
            "subject": self.subject[first].astype(str),
            "site": self.site[first].astype(str),
            "patient_label": self.patient_label[first].astype(int),
            "lesion_segments": self.lesion_segments[first].astype(str),
        })

    def save(self, path: str | Path, manifest: dict[str, Any] | None = None) -> Path:
        """Write ``path`` (.npz, compressed) and its manifest ``path.with_suffix('.json')``."""
        path = save_dataset_npz(path, self.arrays())
        if manifest is not None:
            atomic_write_json(path.with_suffix(".json"), manifest)
        return path


def data_hash(data: Any, fields: Sequence[str] = ("images", "cord")) -> str:
    """Hash of the arrays training reads (default ``images`` and ``cord``), not of file metadata.

    Training runs (U2AD and the baselines) put it in their run hash, so that a run is reused
    only on the very same slices; the supervised detectors add ``("segments", "lesion")``.
    """

    h = hashlib.sha256()
    for name in fields:
        a = np.ascontiguousarray(np.asarray(getattr(data, name)))
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def load_dataset(path: str | Path, oracle: bool = True) -> SliceData:
    """Read a dataset file written by :func:`u2ad_core.data.preprocess.preprocess_cohort` (or ``save``).

    ``oracle=False`` leaves out the oracle fields ``clean`` / ``twin`` (``None``; not even
    decompressed: the noise-free image is half of a phantom cohort's file), as :func:`load_data`
    does for the training and scoring code, which never reads them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path} (run prepare_all or `u2ad preprocess`)")
    with np.load(path, allow_pickle=False) as z:
        missing = [f for f in REQUIRED if f not in z.files]
        if missing:
            raise ValueError(f"{path}: not a dataset file, missing fields {missing}")
        kw = read_dataset_npz(z, REQUIRED + tuple(f for f in OPTIONAL if oracle or f not in ORACLE_FIELDS))
        for f in OPTIONAL:
            kw.setdefault(f, None)
    man_path = path.with_suffix(".json")
    manifest = json.loads(man_path.read_text()) if man_path.is_file() else {}
    return SliceData(**kw, path=path, manifest=manifest)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> SliceData:
    return load_dataset(path, oracle=False)


def load_data(data: Any, cache: bool = False) -> tuple[Any, str]:
    """``(data, source)`` for a training or scoring call: a dataset path is read without the
    oracle fields (:func:`load_dataset` with ``oracle=False``; ``cache=True`` reads each file once
    per process, keyed by path and modification time: the returned arrays are shared, never modify
    them), an object with ``images`` and ``cord`` ``(N, H, W)`` is used as it is (``source``
    ``"<in memory>"``)."""
    if isinstance(data, (str, Path)):
        p = Path(data)
        if not p.exists():
            raise FileNotFoundError(f"dataset file not found: {p} (run prepare_all or u2ad preprocess first)")
        data = _load_cached(str(p.resolve()), p.stat().st_mtime_ns) if cache else load_dataset(p, oracle=False)
        return data, str(p)
    if not hasattr(data, "images") or not hasattr(data, "cord"):
        raise TypeError(f"data must be a dataset path or a SliceData (images, cord), got {type(data).__name__}")
    return data, "<in memory>"


class _TorchDatasetBase:  # resolved lazily so that importing this module does not need torch
    pass


try:
    from torch.utils.data import Dataset as _TorchDatasetBase  # type: ignore[no-redef]  # noqa: F811
except ImportError:  # pragma: no cover
    pass


class SliceDataset(_TorchDatasetBase):
    """A torch ``Dataset`` over a :class:`SliceData` (or a dataset file path).

    ``ds[i]`` is a dict: ``image`` float32 (1, H, W); ``cord``, ``csf``, ``lesion`` float32
    (1, H, W) in {0, 1}; ``segments`` int64 (1, H, W); ``original`` float32 (1, H, W) when the
    file has it; ``index``, ``slice_offset``, ``patient_label`` int64 scalars; ``subject`` str.
    ``transform`` (optional) is applied to that dict.
    """

    def __init__(self, data: SliceData | str | Path, transform=None):
        self.data = data if isinstance(data, SliceData) else load_dataset(data)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:

        d = self.data
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(d.images[i], np.float32))[None],
            "cord": torch.from_numpy(d.cord[i].astype(np.float32))[None],
            "csf": torch.from_numpy(d.csf[i].astype(np.float32))[None],
            "lesion": torch.from_numpy(d.lesion[i].astype(np.float32))[None],
            "segments": torch.from_numpy(d.segments[i].astype(np.int64))[None],
            "index": torch.tensor(int(i)),
            "slice_offset": torch.tensor(int(d.slice_offset[i])),
            "patient_label": torch.tensor(int(d.patient_label[i])),
            "subject": str(d.subject[i]),
        }
        if d.original is not None:
            item["original"] = torch.from_numpy(np.ascontiguousarray(d.original[i], np.float32))[None]
        return self.transform(item) if self.transform else item


# --------------------------------------------------------------------------------------
# Pseudo-anomaly evaluation set
# --------------------------------------------------------------------------------------
def build_pseudo_set(source: SliceData, seed: int) -> tuple[SliceData, list[dict[str, float]]]:
    """The pseudo-anomaly set (paper 4.1 / Appendix A.1) from a healthy :class:`SliceData`.

    ``images`` = with anomalies, ``original`` = before, ``lesion`` = anomaly mask,
    ``patient_label`` = 1 where an anomaly was placed, ``lesion_segments`` = the segments
    the anomaly pixels fall in.
    """

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 424242]))
    anom, mask, params = add_pseudo_anomalies(source.images, source.cord, source.csf, rng=rng, return_params=True)
    segs = []
    for i in range(len(source)):
        v = source.segments[i][mask[i] > 0]
        v = sorted(set(v[v > 0].tolist()))
        segs.append(";".join(L.SEGMENTS[x - 1] for x in v))
    data = SliceData(
        images=anom.astype(np.float32), cord=source.cord, csf=source.csf, segments=source.segments,
        lesion=mask.astype(np.uint8), subject=source.subject, slice_index=source.slice_index,
        slice_offset=source.slice_offset, patient_label=mask.any((1, 2)).astype(np.int8),
        lesion_segments=np.array(segs, dtype=str), site=source.site, original=source.images.astype(np.float32),
    )
    return data, params


# --------------------------------------------------------------------------------------
# Everything a preset needs
# --------------------------------------------------------------------------------------
def cohort_seed(seed: int, cohort: str) -> int:
    """Per-cohort generation seed derived from the run seed (cohorts differ, runs repeat)."""

    idx = list(COHORT_SPECS).index(cohort)
    return int(np.random.SeedSequence([int(seed), idx, 2024]).generate_state(1)[0])


def _data_config(preset: Preset | DataConfig | str) -> DataConfig:
    if isinstance(preset, str):
        return get_preset(preset).data
    if isinstance(preset, DataConfig):
        return preset
    if hasattr(preset, "data"):
        return preset.data
    raise TypeError(f"preset must be a Preset, a DataConfig or a preset name, got {type(preset).__name__}")


def _default_workers(n: int) -> int:
    env = os.environ.get("U2AD_WORKERS")
    if env:
        return max(1, int(env))
    return 2 if (n >= 16 and (os.cpu_count() or 1) >= 2) else 1


def prepare_all(preset: Preset | DataConfig | str, data_dir: str | Path, seed: int = 0,
                show_progress: bool = True, verbose: bool = True, workers: int | None = None,
                cohorts: Sequence[str] | None = None, oracle: bool | None = None) -> dict[str, Path]:
    """Generate (once) and preprocess (once) every cohort of a preset; return the file paths.

    Returns ``{"spine_generic_like", "openneuro_like", "pseudo", "renji_like", "ruijin_like"}``
    -> ``.npz`` path. Phantom cohorts go to ``data_dir/raw/<cohort>/`` (regenerated only when
    their stamp differs), dataset files to ``data_dir/processed/``. Prints one line per cohort.
    Clinical cohorts generated with other knobs than the defaults (``DataConfig.phantom``) go to
    ``raw/<cohort>~<hash>/`` (:func:`u2ad_core.data.phantom.phantom_dir_name`). ``cohorts``: only
    these (e.g. ``["renji_like"]`` for a knob grid); ``"pseudo"`` comes with ``openneuro_like``.
    ``oracle``: write the phantom's oracle volumes and carry them into ``clean`` / ``twin``; ``None``
    (default) for the cohorts of the calibrated phantom only, not for a knob grid's ``~<hash>`` ones
    (:func:`u2ad_core.data.phantom.oracle_by_default`); ``True`` / ``False`` force it for every
    cohort generated here (a cohort that has them keeps them: ``False`` reuses it as it is).
    """

    cfg = _data_config(preset)
    data_dir = Path(data_dir)
    raw, proc = data_dir / "raw", data_dir / "processed"
    proc.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    t_all = time.perf_counter()
    if cohorts is not None:
        unknown = set(cohorts) - set(COHORT_SPECS)
        if unknown:
            raise KeyError(f"unknown cohorts {sorted(unknown)}; choose from {list(COHORT_SPECS)}")
    for name in COHORT_SPECS:
        if cohorts is not None and name not in cohorts:
            continue
        t0 = time.perf_counter()
        n = int(getattr(cfg.cohorts, name))
        out = raw / phantom_dir_name(name, cfg)
        stamp_before = (out / "phantom.json").read_text() if (out / "phantom.json").is_file() else None
        w = workers if workers is not None else _default_workers(n)
        generate_cohort(name, n, cohort_seed(seed, name), out, cfg, workers=w, show_progress=show_progress,
                        oracle=oracle)
        generated = stamp_before != (out / "phantom.json").read_text()
        purpose = COHORT_PURPOSE[name]
        n_sl = int(getattr(cfg, f"slices_{purpose}"))
        before = set(proc.glob(f"{name}_n{n_sl}_*.npz"))
        p = preprocess_cohort(out, proc, cfg, n_sl, name=name, show_progress=show_progress, verbose=verbose)
        fresh = p not in before
        paths[name] = p
        if verbose:
            man = json.loads(p.with_suffix(".json").read_text())
            status = ("generated" if generated else "cached raw") + (", preprocessed" if fresh else ", cached")
            n_pos = sum(1 for s in man["subjects"] if s.get("patient_label") == 1)
            print(f"{name:<19} {man['n_subjects']:>4} subjects x {n_sl} slices = {man['n_slices_total']:>5} "
                  f"images {tuple(man['image_size'])}, {n_pos} with lesion, {man['n_errors']} errors "
                  f"-> processed/{p.name} [{status}, {time.perf_counter() - t0:.1f} s]", flush=True)
        if name == "openneuro_like":
            t0 = time.perf_counter()
            key = {"source": p.name, "seed": int(seed), "pseudo": 1}
            pp = proc / f"pseudo_n{n_sl}_{config_hash(key)}.npz"
            if not (pp.is_file() and pp.with_suffix(".json").is_file()):
                src = load_dataset(p)
                data, params = build_pseudo_set(src, seed)
                data.save(pp, {"name": "pseudo", "config": key, "config_hash": config_hash(key),
                               "source": str(p), "n_slices_total": len(data),
                               "n_anomalies": len(params), "anomalies": params[:2000]})
                status = "built"
            else:
                status = "cached"
            paths["pseudo"] = pp
            if verbose:
                man = json.loads(pp.with_suffix(".json").read_text())
                print(f"{'pseudo':<19} {man['n_slices_total']:>5} images from openneuro_like with "
                      f"{man['n_anomalies']} pseudo-anomalies -> processed/{pp.name} "
                      f"[{status}, {time.perf_counter() - t0:.1f} s]", flush=True)
    if verbose:
        print(f"data ready in {time.perf_counter() - t_all:.1f} s ({data_dir.parent.name}/{data_dir.name})", flush=True)
    return {k: paths[k] for k in ("spine_generic_like", "openneuro_like", "pseudo", "renji_like", "ruijin_like")
            if k in paths}



