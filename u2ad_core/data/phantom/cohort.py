"""Writing phantom subjects and cohorts: NIfTI images and labels, ``participants.tsv``,
``phantom.json`` (the cache stamp), and the ``u2ad phantom`` command.

A subject is deterministic in ``(seed, index)``: anatomy and scanner noise come from the
generator ``SeedSequence([seed, index, 7])``, the artefacts from ``SeedSequence([seed, index, 8])``.
Beside each subject its oracle volumes (noise-free image, lesion-free twin; :func:`_write_oracle`)
go to ``sub-<id>/oracle/``, for diagnostics only, in the cohorts where they are read: those of the
calibrated phantom (:func:`oracle_by_default`; ``oracle`` of :func:`generate_cohort` forces it).
Which patients carry a lesion is drawn once per cohort (:func:`_lesion_flags`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from nibabel import orientations as O

from u2ad_core.core import labels as L
from u2ad_core.core.config import DataConfig, PhantomConfig, config_hash
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import atomic_path, atomic_write_json, atomic_write_text, progress
from u2ad_core.data.io import ORACLE_DIR, ORACLE_FILES, oracle_files
from u2ad_core.data.phantom.anatomy import _sample_anatomy
from u2ad_core.data.phantom.render import _render
from u2ad_core.data.phantom.sites import COHORT_SPECS, SITES, SiteProfile, effective_site, n_lesion_patients

PHANTOM_VERSION = 5
"""Bumped whenever the generator changes what it writes (invalidates cached cohorts).
4: the oracle volumes (noise-free image, lesion-free twin) beside every subject.
5: the oracle volumes uncompressed (``.nii``), and only in the cohorts that ask for them
(``phantom.json`` says whether a cohort has them); images and labels unchanged since 3."""


# --------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------
def _reorient_ras_to(data: np.ndarray, affine: np.ndarray, codes: str):
    """Store a RAS array in another orientation (``"PSR"``, ``"LAS"`` ...), affine updated."""
    ornt = O.ornt_transform(O.axcodes2ornt(("R", "A", "S")), O.axcodes2ornt(tuple(codes)))
    out = O.apply_orientation(data, ornt)
    new_aff = affine @ O.inv_ornt_aff(ornt, data.shape)
    assert nib.aff2axcodes(new_aff) == tuple(codes)
    return np.ascontiguousarray(out), new_aff


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, slope: float | None = None) -> None:
    """Write ``data`` with ``affine`` as qform and sform (mm), atomically, gzipped for a ``.nii.gz``
    path and uncompressed for a ``.nii`` one; ``slope``: the NIfTI ``scl_slope`` (readers see
    ``data * slope``; the stored values stay ``data`` exactly)."""
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(float(slope), 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(img, str(tmp))


# --------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------
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


def _subject_site(site_name: str, knobs: PhantomConfig | None) -> SiteProfile:
    """The profile a subject is rendered with: the site itself for healthy cohorts (``knobs``
    ``None``); moved by ``scanner_shift`` and with its along-cord bias scaled by
    ``inhomogeneity`` for clinical ones."""
    if knobs is None:
        return SITES[site_name]
    sp = effective_site(SITES[site_name], knobs.scanner_shift)
    if knobs.inhomogeneity != 1.0:
        if knobs.inhomogeneity < 0:
            raise ValueError(f"PhantomConfig.inhomogeneity must be >= 0, got {knobs.inhomogeneity}")
        sp = replace(sp, bias_si=float(knobs.inhomogeneity) * (sp.bias if sp.bias_si is None else sp.bias_si))
    return sp


def _stored(vol: np.ndarray, site: SiteProfile) -> np.ndarray:
    """``vol`` (CSF = 1) in the site's stored scale and integer dtype (rounded, clipped)."""
    stored = vol * np.float32(site.scale)
    info = np.iinfo(np.dtype(site.dtype))
    return np.clip(np.rint(stored), info.min, info.max).astype(site.dtype)


ORACLE_SUBSTEPS = 4
"""The noise-free oracle volume is stored in 1/4 of the image's stored unit (an integer, NIfTI
``scl_slope`` = 1/4): 8x finer than the image's own rounding, and 1/50 to 1/480 of the noise
sigma (12-120 stored units at the sites of :data:`SITES`). A float32 copy would be 2x to 4x the
size on disk for digits below the image's quantisation."""

ORACLE_DTYPES = (np.int16, np.uint16, np.int32)
"""The noise-free oracle volume's dtype: the first of these that holds its values (uncompressed,
so the bytes per voxel are its size on disk)."""


def _write_oracle(subject_dir: Path, subject: str, oracle: dict[str, np.ndarray], affine: np.ndarray,
                  site: SiteProfile, lesion: bool) -> None:
    """Write the oracle volumes of :func:`~u2ad_core.data.phantom.render._oracle` beside the subject
    (:func:`u2ad_core.data.io.oracle_files`), in the image's orientation and grid.

    - the noise-free image in the image's stored scale (CSF = ``site.scale``), as the integers
      ``rint(clean * scale * ORACLE_SUBSTEPS)`` (the first of :data:`ORACLE_DTYPES` that holds
      them) with ``scl_slope = 1 / ORACLE_SUBSTEPS`` (readers get ``clean * scale`` to within 1/8
      of a stored unit);
    - the lesion-free twin through :func:`_stored` exactly like the image (same dtype and scale),
      so it equals the stored image bit for bit wherever the float twin equals the float image;
      written for subjects with a lesion only (``lesion``): without one the twin *is* the image,
      and :func:`u2ad_core.data.io.scan_cohort` takes the image for it.

    Both uncompressed (:data:`u2ad_core.data.io.ORACLE_FILES`): gzip took 0.03-0.04 s a volume,
    more than rendering the twin, and reading them back 0.01-0.016 s (uncompressed: 0.002-0.004
    and ~0.001 s). On disk the noise-free volume (mostly int16) takes what the gzipped int32 one
    did, the twin ~1.4x its gzipped size: the cpu preset's main cohorts hold 306 MB of oracle
    files (239 MB gzipped) beside 178 MB of images and labels.
    """
    paths = oracle_files(subject_dir, subject)
    paths["clean"].parent.mkdir(parents=True, exist_ok=True)
    fine = np.rint(oracle["clean"].astype(np.float64) * (site.scale * ORACLE_SUBSTEPS))
    lo, hi = (float(fine.min()), float(fine.max())) if fine.size else (0.0, 0.0)
    dt = next(t for t in ORACLE_DTYPES if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    clean_o, aff_o = _reorient_ras_to(fine.astype(dt), affine, site.orientation)
    _save_nifti(paths["clean"], clean_o, aff_o, slope=1.0 / ORACLE_SUBSTEPS)
    if lesion:
        twin_o, _ = _reorient_ras_to(_stored(oracle["twin"], site), affine, site.orientation)
        _save_nifti(paths["twin"], twin_o, aff_o)


def _render_subject(cohort: str, index: int, seed: int, n_slices: int, lesion: bool, site: str | None = None,
                    knobs: PhantomConfig | None = None, oracle: bool = False):
    """Render subject ``index`` of ``cohort`` exactly as :func:`generate_subject` does (same
    generators, same draws). Returns ``(site_name, site_profile, anatomy, image, labels, affine,
    extras)`` (see :func:`~u2ad_core.data.phantom.render._render`; ``oracle`` adds
    ``extras["oracle"]`` and changes nothing else)."""
    spec = COHORT_SPECS[cohort]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7]))
    arng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 8]))
    site_name = site or spec.sites[index % len(spec.sites)]
    dcm = spec.diagnosis == "DCM"
    knobs = (knobs or PhantomConfig()) if dcm else None
    sp = _subject_site(site_name, knobs)
    an = _sample_anatomy(rng, dcm=dcm, lesion=lesion, knobs=knobs)
    vol, lab, aff, extras = _render(an, sp, n_slices, rng, knobs=knobs, artefact_rng=arng, oracle=oracle)
    return site_name, sp, an, vol, lab, aff, extras


def generate_subject(cohort: str, index: int, seed: int, out_dir: str | Path, n_slices: int,
                     lesion: bool, site: str | None = None, knobs: PhantomConfig | None = None,
                     oracle: bool = True) -> SubjectResult:
    """Generate and write subject ``index`` of ``cohort`` (deterministic in ``(seed, index)``), with
    its oracle volumes (:func:`_write_oracle`) when ``oracle``: the image and labels are the same
    bytes either way.

    ``knobs`` (:class:`~u2ad_core.core.config.PhantomConfig`, default: the calibrated defaults) apply
    to the clinical (DCM) cohorts only. Anatomy and scanner noise come from one stream, the
    artefacts from another, so a knob changes only what it names.
    """
    spec = COHORT_SPECS[cohort]
    site_name, sp, an, vol, lab, aff, extras = _render_subject(cohort, index, seed, n_slices, lesion, site, knobs,
                                                               oracle=oracle)
    sid = f"{cohort.split('_')[0]}{index + 1:03d}"
    out = Path(out_dir) / f"sub-{sid}"
    out.mkdir(parents=True, exist_ok=True)
    img_o, aff_o = _reorient_ras_to(_stored(vol, sp), aff, sp.orientation)
    lab_o, _ = _reorient_ras_to(lab, aff, sp.orientation)
    f_img = out / f"sub-{sid}_T2w.nii.gz"
    f_lab = out / f"sub-{sid}_labels.nii.gz"
    _save_nifti(f_img, img_o, aff_o)
    _save_nifti(f_lab, lab_o, aff_o)
    if oracle:
        _write_oracle(out, f"sub-{sid}", extras["oracle"], aff, sp, lesion=bool(an.lesions))
    segs = sorted({sg for le in extras["lesions"] for sg in le["segments"]}, key=L.SEGMENTS.index)
    return SubjectResult(
        subject=f"sub-{sid}", site=site_name, diagnosis=spec.diagnosis,
        lesion_segments=";".join(segs), lesion_types=";".join(le["type"] for le in extras["lesions"]),
        compressed_segments=";".join(an.compressed),
        cord_ap_mm=round(an.cord_ap, 2), orientation=sp.orientation, n_slices=n_slices,
        image=str(f_img.relative_to(out_dir)), labels=str(f_lab.relative_to(out_dir)),
    )


# --------------------------------------------------------------------------------------
# Cohorts
# --------------------------------------------------------------------------------------
def generation_config(cohort: str, n: int, seed: int, data_cfg: DataConfig | None = None) -> dict[str, Any]:
    """What determines a generated cohort (its hash is the cache stamp in ``phantom.json``)."""
    if cohort not in COHORT_SPECS:
        raise KeyError(f"unknown cohort {cohort!r}; choose one of {sorted(COHORT_SPECS)}")
    data_cfg = data_cfg or DataConfig()
    spec = COHORT_SPECS[cohort]
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
    if COHORT_SPECS[cohort].diagnosis != "DCM" or data_cfg.phantom == PhantomConfig():
        return cohort
    return f"{cohort}~{config_hash(data_cfg.phantom, n=8)}"


def oracle_by_default(cohort: str, data_cfg: DataConfig | None = None) -> bool:
    """Whether :func:`generate_cohort` writes the oracle volumes when not told (``oracle=None``):
    for the cohorts where they are read, those in their plain folder under ``raw/`` (the healthy
    cohorts, and the clinical ones with the calibrated knobs ``PhantomConfig()``); not for a knob
    grid's ``<cohort>~<hash>`` folders (:func:`phantom_dir_name`), which no diagnostic reads."""
    return phantom_dir_name(cohort, data_cfg) == cohort


def _stamp(out_dir: str | Path) -> dict[str, Any] | None:
    """``out_dir/phantom.json`` when ``out_dir`` holds a complete cohort (with participants.tsv)."""
    stamp = Path(out_dir) / "phantom.json"
    if not stamp.is_file() or not (Path(out_dir) / "participants.tsv").is_file():
        return None
    try:
        meta = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("complete", False) else None


def cohort_has_oracle(out_dir: str | Path) -> bool:
    """True when the cohort in ``out_dir`` was generated with its oracle volumes (its stamp says so)."""
    meta = _stamp(out_dir)
    return bool(meta) and meta.get("oracle") is True


def cohort_is_current(out_dir: str | Path, gen_cfg: dict[str, Any], oracle: bool = False) -> bool:
    """True when ``out_dir`` holds a complete cohort generated with exactly ``gen_cfg`` and, when
    ``oracle``, with its oracle volumes (a cohort with them serves a request without them too)."""
    meta = _stamp(out_dir)
    if meta is None or meta.get("generation_hash") != config_hash(gen_cfg):
        return False
    return not oracle or meta.get("oracle") is True


def _lesion_flags(cohort: str, n: int, seed: int) -> np.ndarray:
    """Which of the ``n`` subjects carry a lesion (:func:`n_lesion_patients` of them, at random)."""
    k = n_lesion_patients(cohort, n)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 99991]))
    flags = np.zeros(n, bool)
    flags[rng.permutation(n)[:k]] = True
    return flags


def _gen_one(args: tuple) -> SubjectResult:
    """:func:`generate_subject` on one job tuple (a module-level function, so a pool can pickle it)."""
    return generate_subject(*args)


def _generate_subjects(name: str, jobs: list[tuple], workers: int, show_progress: bool) -> list[SubjectResult]:
    """Run :func:`generate_subject` on every job (in a fork pool when ``workers > 1``), in order."""
    bar = progress(total=len(jobs), desc=f"phantom {name}", unit="subj", disable=None if show_progress else True)
    rows: list[SubjectResult] = []
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_gen_one, jobs, chunksize=2):
                rows.append(r)
                bar.update(1)
    else:
        for j in jobs:
            rows.append(_gen_one(j))
            bar.update(1)
    bar.close()
    return rows


def _participants_tsv(rows: list[SubjectResult]) -> str:
    """The ``participants.tsv`` text of ``rows`` (empty lists written as ``n/a``)."""
    df = pd.DataFrame([asdict(r) for r in rows])
    df["lesion_segments"] = df["lesion_segments"].replace("", "n/a")
    df["compressed_segments"] = df["compressed_segments"].replace("", "n/a")
    df["lesion_types"] = df["lesion_types"].replace("", "n/a")
    return df.to_csv(sep="\t", index=False)


def generate_cohort(name: str, n: int | None, seed: int, out_dir: str | Path,
                    data_cfg: DataConfig | None = None, workers: int = 1,
                    show_progress: bool = True, force: bool = False, oracle: bool | None = None) -> Path:
    """Generate a phantom cohort into ``out_dir``; returns ``out_dir``.

    name: one of :data:`COHORT_SPECS` (``spine_generic_like``, ``openneuro_like``, ``renji_like``,
    ``ruijin_like``). n: subjects (``None`` -> ``data_cfg.cohorts.<name>``). The fraction of
    lesion patients of the paper is kept (:func:`n_lesion_patients`). Volumes have
    ``data_cfg.n_sagittal_healthy`` or ``n_sagittal_clinical`` sagittal slices.

    oracle: write each subject's oracle volumes (noise-free image, lesion-free twin,
    ``sub-<id>/oracle/``, :data:`u2ad_core.data.io.ORACLE_FILES`; diagnostics only). ``None``
    (default): only where they are read, the cohorts of the calibrated phantom
    (:func:`oracle_by_default`: not a knob grid's cohorts); ``True`` / ``False``: force. They change
    nothing else (images and labels are the same bytes) and add a fifth to the generation time
    (the cpu preset's main cohorts: 21 -> 25 s on 2 workers). ``phantom.json`` records
    ``"oracle": true`` or ``false``.

    Idempotent: when ``out_dir/phantom.json`` carries the same generation hash the cohort is
    reused (``force=True`` regenerates), provided it has the oracle when ``oracle`` asks for it:
    a cohort without it is then regenerated with it, and one with it serves a request without
    (:func:`cohort_is_current`). The cohort is written into a temporary sibling folder and
    renamed into place, so a half-written cohort is never mistaken for a result.
    """
    data_cfg = data_cfg or DataConfig()
    if name not in COHORT_SPECS:
        raise KeyError(f"unknown cohort {name!r}; choose one of {sorted(COHORT_SPECS)}")
    if n is None:
        n = int(getattr(data_cfg.cohorts, name))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    gcfg = generation_config(name, n, seed, data_cfg)
    oracle = oracle_by_default(name, data_cfg) if oracle is None else bool(oracle)
    if not force and cohort_is_current(out_dir, gcfg, oracle=oracle):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))  # unique per call
    t0 = time.perf_counter()
    try:
        flags = _lesion_flags(name, n, seed)
        knobs = data_cfg.phantom if COHORT_SPECS[name].diagnosis == "DCM" else None
        jobs = [(name, i, seed, tmp, gcfg["n_sagittal"], bool(flags[i]), None, knobs, oracle) for i in range(n)]
        rows = _generate_subjects(name, jobs, workers, show_progress)
        atomic_write_text(tmp / "participants.tsv", _participants_tsv(rows))
        atomic_write_json(tmp / "phantom.json", {
            "generation": gcfg, "generation_hash": config_hash(gcfg), "complete": True,
            "n_lesion": int(flags.sum()), "seconds": round(time.perf_counter() - t0, 2),
            "layout": "phantom", "oracle": oracle,
            **({"oracle_files": {"dir": f"sub-<id>/{ORACLE_DIR}", "files": dict(ORACLE_FILES),
                                 "clean_unit": f"1/{ORACLE_SUBSTEPS} of the image's stored unit (scl_slope)",
                                 "twin": "lesion patients only; without a lesion the twin is the image"}}
               if oracle else {}),
        })
        _move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _move_into_place(new: Path, target: Path) -> None:
    """Rename the complete cohort folder ``new`` to ``target``, replacing an older cohort there.

    Two processes generating the same cohort at once (e.g. two sweep workers over one data
    folder) both finish: the one that renames last finds ``target`` already complete and keeps
    it (same seed, same files), instead of failing; ``new`` is then left for the caller to remove.
    """
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            target.rename(old / target.name)
        except FileNotFoundError:  # another process moved it first
            pass
        shutil.rmtree(old, ignore_errors=True)
    try:
        new.rename(target)
    except OSError:
        if not (target / "phantom.json").is_file():  # not a finished cohort of another process
            raise


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    knobs = {}
    for item in args.knob or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--knob expects NAME=VALUE (a PhantomConfig field), got {item!r}")
        knobs[f"data.phantom.{key.strip()}"] = yaml.safe_load(value)
    cfg = get_preset(args.preset, **knobs).data
    t0 = time.perf_counter()
    out = generate_cohort(args.cohort, args.n, args.seed, args.out, cfg, workers=args.workers, force=args.force,
                          oracle=args.oracle)
    meta = json.loads((out / "phantom.json").read_text())
    print(f"{args.cohort}: {meta['generation']['n']} subjects ({meta['n_lesion']} with lesion) -> {out} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def cli_register(subparsers) -> None:
    """Add ``u2ad phantom`` (generate one cohort) to ``subparsers``."""
    p = subparsers.add_parser("phantom", help="generate a phantom cohort (NIfTI + participants.tsv)",
                              description="Procedural phantom of the cervical spine: sagittal T2w-like NIfTI "
                                          "cohorts (no external files).")
    p.add_argument("--cohort", required=True, choices=sorted(COHORT_SPECS))
    p.add_argument("--n", type=int, default=None, help="subjects (default: the preset's cohort size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--preset", default="paper", help="preset giving the slices per volume (default paper)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is current")
    p.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=None,
                   help="write (or not) each subject's noise-free image and lesion-free twin under "
                        "sub-<id>/oracle/ (default: only with the calibrated knobs, i.e. without --knob)")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE",
                   help="a difficulty knob for clinical cohorts (PhantomConfig field), e.g. coupling=independent, "
                        "lesion_conspicuity=faint, artefacts=false, scanner_shift=0.5 (repeatable)")
    p.set_defaults(func=_cli)
