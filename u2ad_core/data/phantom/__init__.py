"""Procedural phantom of the cervical spine: sagittal T2w-like NIfTI cohorts (no external files).

Why a phantom: the paper's four datasets (Spine Generic, OpenNeuro, RenjiDCM, RuijinDCM,
section 4.1) cannot be redistributed. This package builds look-alike cohorts from a seed so that
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

Modules, bottom to top:

- :mod:`.sites`: scanner / protocol profiles (:data:`SITES`), cohorts (:data:`COHORT_SPECS`), base
  tissue intensities, the scanner-shift knob (:func:`effective_site`).
- :mod:`.anatomy`: one subject's geometry (:class:`Anatomy`, ``_sample_anatomy``), compression
  and lesions (:data:`LESION_TYPES`, :data:`COUPLING`), the segments a lesion touches.
- :mod:`.scene`: the 2D sagittal template in ``(u, v)``: field of view, centre line, canal
  profiles, textures, background tissue and the structure layers.
- :mod:`.render`: one subject's volume, stage by stage: composite the layers per slab, add the
  lesions, the thick-slice artefacts, then the scanner (blur, contrast, ringing, bias, noise).
- :mod:`.cohort`: writing subjects and cohorts (NIfTI + ``participants.tsv`` + ``phantom.json``),
  the cache stamp, the ``u2ad phantom`` command.

On disk (the *phantom layout*, read by :mod:`u2ad_core.data.io`)::

    DIR/phantom.json                         generation config and its hash (the cache stamp)
    DIR/participants.tsv                     subject, site, diagnosis, lesion_segments, ...
    DIR/sub-<id>/sub-<id>_T2w.nii.gz         image (int16/uint16, site orientation)
    DIR/sub-<id>/sub-<id>_labels.nii.gz      label map (uint8; values of u2ad_core.core.labels)
    DIR/sub-<id>/oracle/sub-<id>_T2w_noisefree.nii   noise-free image (integer, 1/4 stored unit)
    DIR/sub-<id>/oracle/sub-<id>_T2w_lesionfree.nii  lesion-free twin, same noise (lesion patients)

The ``oracle/`` volumes (:data:`u2ad_core.data.io.ORACLE_FILES`, uncompressed) are what a real scan
hides, kept for diagnostics (the preprocessing carries them into ``SliceData.clean`` / ``twin``); no
method reads them. They are written where they are read, the cohorts of the calibrated phantom
(:func:`oracle_by_default`), not a knob grid's ``<cohort>~<hash>`` ones, unless ``oracle=True``
(:func:`generate_cohort`, :func:`u2ad_core.data.datasets.prepare_all`); ``phantom.json`` says
whether a cohort has them (``"oracle"``).
"""

from __future__ import annotations

# Re-exported: the public names below, and the private ones that tests and notebooks reach as
# ``phantom._sample_anatomy``, ``phantom._render``, ``phantom._reorient_ras_to``, ``phantom._segments_touched``.
from u2ad_core.data.phantom.anatomy import (
    COUPLING,
    DISCS,
    LESION_CONTRAST,
    LESION_TYPES,
    LEVELS,
    Anatomy,
    _sample_anatomy,
    _segment_of,
    _segments_touched,
)
from u2ad_core.data.phantom.cohort import (
    PHANTOM_VERSION,
    SubjectResult,
    _reorient_ras_to,
    cli_register,
    cohort_has_oracle,
    cohort_is_current,
    generate_cohort,
    generate_subject,
    generation_config,
    oracle_by_default,
    phantom_dir_name,
)
from u2ad_core.data.phantom.render import _render
from u2ad_core.data.phantom.sites import (
    COHORT_SPECS,
    REFERENCE_SITE,
    SITES,
    TISSUE,
    CohortSpec,
    SiteProfile,
    effective_site,
    n_lesion_patients,
)

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
    "COHORT_SPECS",
    "SubjectResult",
    "n_lesion_patients",
    "generation_config",
    "generate_subject",
    "generate_cohort",
    "cohort_is_current",
    "cohort_has_oracle",
    "oracle_by_default",
    "cli_register",
]
