"""Which patches to hide: ROI-restricted random, EU-guided and AU-guided masking.

Shapes: ``B`` images, ``L = (H / p) * (W / p)`` patches in row-major order (the order of
:meth:`u2ad_core.method.model.EdgeMAE.patchify`), masks are ``bool (B, L)`` with ``True`` = masked.

Common rules (method.md sections 2 and 4):
* Only ROI patches (any ROI pixel inside the patch) are ever masked; every non-ROI patch
  stays visible as context.
* Each image masks exactly ``round(r * n_roi)`` of its *own* ROI patches (half-up rounding,
  :func:`n_masked`), never a batch-wide count. An image without ROI patches masks nothing
  (and contributes no loss).
* All randomness comes from a ``torch.Generator``: the random numbers are drawn on the
  generator's device (CPU by default) and then moved, so the same generator state gives the
  same mask on every device. ``generator=None`` uses torch's default generator (seed it with
  :func:`u2ad_core.core.runtime.seed_everything`).

Samplers (one interface, for the training loop)::
    sampler = make_sampler("eu", preset.masking)
    mask = sampler.sample(roi_patches, generator, eu_scores=patch_scores(eu, p))

EU-guided masking (this project's reading of the paper's intent, ``eu_weighting="softmax"``):
a patch's score is the sum of EU over its pixels; the scores are z-scored per image over its
eligible ROI patches (mean 0, standard deviation 1; a constant score gives 0) and the masked
set is drawn without replacement with probabilities proportional to
``softmax(z / tau)`` (Gumbel-top-k). *Why z-scores*: raw EU is tiny (about 1e-4) and shrinks
as training goes on, so ``softmax(EU / tau)`` is uniform for any reasonable tau (this is why
the paper's formula is random masking in practice). A z-score makes the strength of the
guidance independent of the EU scale and of the image: with tau = 1, a patch one standard
deviation above the image's mean is e times more likely to be drawn first; tau -> infinity
gives random masking, tau -> 0 masks the top-scoring patches deterministically. Dividing by
the maximum instead would let one outlier patch flatten all the others.

*The coverage question.* EU is 0 outside the cord, so the paper's patch score (the *sum* of
EU over the patch, ``eu_score="sum"``) is larger for patches that hold more cord, whatever the
model's doubt: EU-guided masking might just be "mask the patches with more cord". Two controls
isolate that: :class:`CoverageMasking` runs the same sampler (same tau, z-score, Gumbel-top-k)
on the patch's count of ROI pixels alone, with no EU at all; ``eu_score="mean"`` divides the
EU sum by that count (the EU per cord pixel), so only the model's doubt remains
(:func:`patch_scores` with ``roi`` and ``reduce="mean"``).

``eu_weighting="paper"`` is the paper's literal formula (method.md section 4), kept for the
ablation: on raw EU, ``w = -log(softmax(EU / tau)) * U(0, 1)`` and the top 75 % of ``w`` are
masked, which favours *low*-EU patches and is nearly uniform because EU is tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from u2ad_core.core.config import MaskingConfig

__all__ = [
    "n_masked",
    "patch_scores",
    "roi_coverage",
    "random_roi_mask",
    "eu_guided_mask",
    "eu_mask_probabilities",
    "au_protected_patches",
    "empirical_mask_frequency",
    "RandomMasking",
    "EUGuidedMasking",
    "CoverageMasking",
    "AUGuidedMasking",
    "make_sampler",
]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"masking: {name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _squeeze_channel(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B,1,H,W) or (B,H,W) -> (B,H,W)."""
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"masking: {name} must have one channel, got shape {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"masking: {name} must be (B,H,W) or (B,1,H,W), got shape {tuple(x.shape)}")
    return x


def _check_roi_patches(roi_patches: torch.Tensor) -> torch.Tensor:
    roi_patches = _as_tensor(roi_patches, "roi_patches")
    if roi_patches.ndim != 2:
        raise ValueError(f"masking: roi_patches must be bool (B, L), got shape {tuple(roi_patches.shape)}")
    return roi_patches.bool()


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) drawn on the generator's device (CPU if None), then moved to ``device``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=gen_device)
    return u.to(device)


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    u = _uniform(shape, generator, device).clamp_(1e-12, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def n_masked(n_roi: torch.Tensor | int, ratio: float) -> torch.Tensor:
    """Number of masked patches for ``n_roi`` ROI patches: ``floor(ratio * n_roi + 0.5)``.

    Half-up rounding (Python's ``round`` rounds half to even); the same rule is used by the
    training samplers and the Monte-Carlo engine. Returns a long tensor shaped like ``n_roi``.
    """
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"masking: mask ratio must be in [0, 1], got {ratio}")
    n = torch.as_tensor(n_roi)
    return torch.floor(n.double() * float(ratio) + 0.5).long().clamp(min=0).minimum(n.long())


def _mask_top(key: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mask the ``count[b]`` eligible patches with the largest ``key`` in each row.

    key: float (B, L); eligible: bool (B, L); count: long (B,) <= eligible.sum(1).
    Returns bool (B, L).
    """
    key = key.masked_fill(~eligible, float("-inf"))
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(key.shape[1], device=key.device).expand_as(order))
    return (rank < count.to(key.device)[:, None]) & eligible


def _patch_sum(m: torch.Tensor, patch: int, who: str) -> torch.Tensor:
    """(B, H, W) -> float (B, L): sum over each ``patch`` x ``patch`` patch, row-major."""
    b, h, w = m.shape
    if h % patch or w % patch:
        raise ValueError(f"{who}: map size {h}x{w} is not a multiple of the patch size {patch}")
    m = m.float().reshape(b, h // patch, patch, w // patch, patch)
    return m.sum(dim=(2, 4)).reshape(b, (h // patch) * (w // patch))


def roi_coverage(roi: torch.Tensor | np.ndarray, patch: int) -> torch.Tensor:
    """Number of ROI pixels in each patch (the patch's cord coverage).

    roi: (B, H, W) or (B, 1, H, W), nonzero = ROI. Returns float (B, L), values in
    [0, patch**2]; ``> 0`` exactly on the ROI patches of ``EdgeMAE.roi_patches``.
    """
    r = _squeeze_channel(_as_tensor(roi, "roi"), "roi")
    return _patch_sum(r != 0, patch, "roi_coverage")


def patch_scores(
    score_map: torch.Tensor | np.ndarray,
    patch: int,
    roi: torch.Tensor | np.ndarray | None = None,
    reduce: str = "sum",
) -> torch.Tensor:
    """A pixel map reduced to one score per patch.

    score_map: (B, H, W) or (B, 1, H, W), H and W multiples of ``patch``; roi: optional pixel
    mask of the same shape (nonzero = ROI). ``reduce="sum"``: sum over the patch's pixels
    (only its ROI pixels when ``roi`` is given); ``"mean"``: that sum over the ROI pixels
    divided by their number (needs ``roi``; 0 for a patch without ROI pixels), i.e. the EU per
    cord pixel, which no longer grows with the patch's coverage.
    Returns float (B, L), L = (H/p)(W/p), row-major like ``EdgeMAE.patchify``.
    """
    m = _squeeze_channel(_as_tensor(score_map, "score_map"), "score_map")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"patch_scores: reduce (MaskingConfig.eu_score) must be 'sum' or 'mean', got {reduce!r}")
    if roi is None:
        if reduce == "mean":
            raise ValueError("patch_scores: reduce='mean' needs the ROI pixel mask (roi=...)")
        return _patch_sum(m, patch, "patch_scores")
    r = _squeeze_channel(_as_tensor(roi, "roi"), "roi").to(m.device) != 0
    if r.shape != m.shape:
        raise ValueError(f"patch_scores: roi {tuple(r.shape)} and score_map {tuple(m.shape)} differ in shape")
    total = _patch_sum(m.float() * r, patch, "patch_scores")
    if reduce == "sum":
        return total
    count = _patch_sum(r, patch, "patch_scores")
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def _zscore(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Per-row z-score over the eligible entries (0 elsewhere and for constant rows)."""
    s = scores.float().masked_fill(~eligible, 0.0)
    n = eligible.sum(1, keepdim=True).clamp(min=1)
    mean = s.sum(1, keepdim=True) / n
    var = ((s - mean) ** 2).masked_fill(~eligible, 0.0).sum(1, keepdim=True) / n
    std = var.sqrt()
    z = torch.where(std > 0, (s - mean) / std.clamp(min=1e-30), torch.zeros_like(s))
    return z.masked_fill(~eligible, 0.0)


# --------------------------------------------------------------------------------------
# functional samplers
# --------------------------------------------------------------------------------------
def random_roi_mask(
    roi_patches: torch.Tensor,
    ratio: float = 0.75,
    generator: torch.Generator | None = None,
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random ROI masking: exactly ``n_masked(n_roi, ratio)`` ROI patches per image.

    roi_patches: bool (B, L). eligible: optional bool (B, L) restricting which ROI patches
    may be masked (the count is still computed from all ROI patches, capped by the number of
    eligible ones). Returns bool (B, L), True = masked.
    """
    roi_patches = _check_roi_patches(roi_patches)
    elig = roi_patches if eligible is None else roi_patches & eligible.bool().to(roi_patches.device)
    count = n_masked(roi_patches.sum(1), ratio).to(roi_patches.device).minimum(elig.sum(1))
    key = _uniform(tuple(roi_patches.shape), generator, roi_patches.device)
    return _mask_top(key, elig, count)


def eu_guided_mask(
    roi_patches: torch.Tensor,
    eu_scores: torch.Tensor,
    ratio: float = 0.75,
    tau: float = 1.0,
    weighting: str = "softmax",
    generator: torch.Generator | None = None,
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """EU-guided masking (see the module docstring for the two weightings).

    roi_patches: bool (B, L); eu_scores: float (B, L) (e.g. ``patch_scores(eu, p)``).
    ``softmax``: Gumbel-top-k on ``z / tau`` with ``z`` the per-image z-score of the scores over
    the eligible ROI patches (sampling without replacement, probability ∝ softmax(z / tau)).
    ``paper``: the literal formula on raw scores, ``w = -log(softmax(s / tau)) * U(0, 1)``,
    mask the largest ``w``. Returns bool (B, L).
    """
    roi_patches = _check_roi_patches(roi_patches)
    scores = _as_tensor(eu_scores, "eu_scores").to(roi_patches.device).float()
    if scores.shape != roi_patches.shape:
        raise ValueError(
            f"eu_guided_mask: eu_scores has shape {tuple(scores.shape)}, expected {tuple(roi_patches.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"eu_guided_mask: tau must be > 0, got {tau}")
    elig = roi_patches if eligible is None else roi_patches & eligible.bool().to(roi_patches.device)
    count = n_masked(roi_patches.sum(1), ratio).to(roi_patches.device).minimum(elig.sum(1))
    shape = tuple(roi_patches.shape)
    if weighting == "softmax":
        key = _zscore(scores, elig) / tau + _gumbel(shape, generator, roi_patches.device)
    elif weighting == "paper":
        logits = (scores / tau).masked_fill(~elig, float("-inf"))
        logp = torch.log_softmax(logits, dim=1)
        w = -logp.masked_fill(~elig, 0.0)
        key = w * _uniform(shape, generator, roi_patches.device)
    else:
        raise ValueError(f"eu_guided_mask: eu_weighting must be 'softmax' or 'paper', got {weighting!r}")
    return _mask_top(key, elig, count)


def eu_mask_probabilities(
    eu_scores: torch.Tensor,
    roi_patches: torch.Tensor,
    tau: float = 1.0,
    weighting: str = "softmax",
    n_draws: int = 2000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """First-draw probabilities per patch (for plots): which patch is masked first.

    ``softmax``: exactly ``softmax(z / tau)`` over the ROI patches (z = per-image z-score).
    ``paper``: the probability that the patch has the largest key ``w`` (Monte Carlo with
    ``n_draws`` draws from ``generator``; the formula has no closed form worth the trouble).
    Returns float (B, L), rows summing to 1 over ROI patches (0 for rows without ROI).
    """
    roi_patches = _check_roi_patches(roi_patches)
    scores = _as_tensor(eu_scores, "eu_scores").to(roi_patches.device).float()
    if weighting == "softmax":
        logits = (_zscore(scores, roi_patches) / tau).masked_fill(~roi_patches, float("-inf"))
        p = torch.softmax(logits, dim=1)
        return torch.nan_to_num(p, nan=0.0)
    if weighting == "paper":
        b, l = roi_patches.shape
        logp = torch.log_softmax((scores / tau).masked_fill(~roi_patches, float("-inf")), dim=1)
        w = -logp.masked_fill(~roi_patches, 0.0)
        counts = torch.zeros(b, l)
        for _ in range(max(1, n_draws // 256 + (n_draws % 256 > 0))):
            u = _uniform((256, b, l), generator, roi_patches.device)
            key = (w[None] * u).masked_fill(~roi_patches[None], float("-inf"))
            idx = key.argmax(dim=2).cpu()  # (256, B)
            counts.scatter_add_(1, idx.T.contiguous(), torch.ones(b, idx.shape[0]))
        counts = counts * roi_patches.cpu()
        return (counts / counts.sum(1, keepdim=True).clamp(min=1)).to(roi_patches.device)
    raise ValueError(f"eu_mask_probabilities: weighting must be 'softmax' or 'paper', got {weighting!r}")


def au_protected_patches(
    au_map: torch.Tensor | np.ndarray,
    roi: torch.Tensor | np.ndarray,
    patch: int,
    percentile: float = 90.0,
    min_size: int = 2,
    score: str = "sum",
    top_k: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches touched by the top-k high-AU components (AU-guided masking, paper 3.4).

    au_map: float (B, H, W) or (B, 1, H, W); roi: (B, H, W) or (B, 1, H, W), nonzero = ROI.
    Per image: keep ROI pixels whose AU is strictly above the ``percentile``-th percentile of
    the non-zero AU values within the ROI; label connected components with 8-connectivity
    (``scipy.ndimage.label``, 3 x 3 structure; images never connect to each other); drop
    components under ``min_size`` pixels; score each by ``"sum"`` (paper) or ``"mean_sum"``
    (mean x sum, authors' code); protect every patch touched by the ``top_k`` best.

    Returns ``(protected bool (B, L), component_labels int64 (B, H, W))`` where the labels
    number the surviving components of each image by descending score (1 = best; the
    protected ones are 1..top_k; 0 = background). Runs on the CPU (scipy), returns CPU tensors.
    """

    au = _squeeze_channel(_as_tensor(au_map, "au_map"), "au_map").detach().float().cpu().numpy()
    rm = _squeeze_channel(_as_tensor(roi, "roi"), "roi").detach().cpu().numpy() > 0
    if au.shape != rm.shape:
        raise ValueError(f"au_protected_patches: au_map {au.shape} and roi {rm.shape} differ in shape")
    if score not in ("sum", "mean_sum"):
        raise ValueError(f"au_protected_patches: score must be 'sum' or 'mean_sum', got {score!r}")
    b, h, w = au.shape
    if h % patch or w % patch:
        raise ValueError(f"au_protected_patches: image {h}x{w} is not a multiple of the patch size {patch}")
    vals = np.where(rm & (au > 0), au, np.nan).reshape(b, -1)
    has = np.isfinite(vals).any(1)
    thr = np.full(b, np.inf)
    if has.any():
        thr[has] = np.nanpercentile(vals[has], percentile, axis=1)
    binary = rm & (au > thr[:, None, None])
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity within a slice, none across images
    lab, n = ndimage.label(binary, structure=structure)
    labels_out = np.zeros((b, h, w), dtype=np.int64)
    protected_px = np.zeros((b, h, w), dtype=bool)
    if n > 0:
        flat = lab.ravel()
        size = np.bincount(flat, minlength=n + 1)[1:]
        total = np.bincount(flat, weights=au.ravel(), minlength=n + 1)[1:]
        comp_score = total if score == "sum" else (total / np.maximum(size, 1)) * total
        # image index of each component: any pixel of it (components never cross images)
        img_of = np.zeros(n, dtype=np.int64)
        img_idx = np.broadcast_to(np.arange(b)[:, None, None], lab.shape).ravel()
        nz = flat > 0
        img_of[flat[nz] - 1] = img_idx[nz]
        keep = size >= min_size
        ids = np.nonzero(keep)[0]
        # rank within each image by descending score (ties: smaller label first)
        order = np.lexsort((ids, -comp_score[ids], img_of[ids]))
        ids = ids[order]
        imgs = img_of[ids]
        first = np.r_[0, np.nonzero(np.diff(imgs))[0] + 1] if len(ids) else np.zeros(0, np.int64)
        rank = np.arange(len(ids)) - np.repeat(first, np.diff(np.r_[first, len(ids)]))
        new_label = np.zeros(n + 1, dtype=np.int64)
        new_label[ids + 1] = rank + 1
        labels_out = new_label[lab]
        protected_px = (labels_out >= 1) & (labels_out <= top_k)
    prot = torch.from_numpy(protected_px).reshape(b, h // patch, patch, w // patch, patch)
    protected = prot.any(dim=4).any(dim=2).reshape(b, -1)
    return protected, torch.from_numpy(labels_out)


def empirical_mask_frequency(
    sampler: "RandomMasking", roi_patches: torch.Tensor, n_draws: int, generator: torch.Generator | None, **kwargs
) -> torch.Tensor:
    """Fraction of ``n_draws`` masks in which each patch is masked (for plots and tests).

    Returns float (B, L). ``kwargs`` are passed to ``sampler.sample``.
    """
    acc = torch.zeros(roi_patches.shape, dtype=torch.float32)
    for _ in range(n_draws):
        acc += sampler.sample(roi_patches, generator, **kwargs).float().cpu()
    return acc / max(n_draws, 1)


# --------------------------------------------------------------------------------------
# sampler classes (the training loop's interface)
# --------------------------------------------------------------------------------------
@dataclass
class RandomMasking:
    """Random ROI masking (pretraining and the "baseline" ablation row).

    ``sample(roi_patches (B,L) bool, generator, ...) -> (B,L) bool``; extra keyword arguments
    (EU scores, AU map) are accepted and ignored so that all samplers share one call.
    """

    cfg: MaskingConfig = MaskingConfig()

    def sample(
        self,
        roi_patches: torch.Tensor,
        generator: torch.Generator | None = None,
        eu_scores: torch.Tensor | None = None,
        au_map: torch.Tensor | None = None,
        roi: torch.Tensor | None = None,
        patch: int | None = None,
        mask_ratio: float | None = None,
    ) -> torch.Tensor:
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        return random_roi_mask(roi_patches, ratio, generator)


@dataclass
class EUGuidedMasking(RandomMasking):
    """Stage 1 of the adaptation: EU-guided masking (``cfg.tau``, ``cfg.eu_weighting``).

    Needs ``eu_scores`` (B, L) = :meth:`scores` of the EU map: ``patch_scores(eu, patch)``
    (``cfg.eu_score="sum"``, paper) or ``patch_scores(eu, patch, roi, "mean")`` (``"mean"``).
    """

    def scores(self, eu_map, roi, patch: int) -> torch.Tensor:
        """EU map (B, H, W) and ROI pixel mask (B, H, W) -> patch scores (B, L) per ``cfg.eu_score``."""
        if self.cfg.eu_score == "sum":
            return patch_scores(eu_map, patch)
        return patch_scores(eu_map, patch, roi=roi, reduce=self.cfg.eu_score)

    def sample(self, roi_patches, generator=None, eu_scores=None, au_map=None, roi=None, patch=None,
               mask_ratio=None):
        if eu_scores is None:
            raise ValueError("EUGuidedMasking.sample: eu_scores (B, L) is required "
                             "(patch_scores(eu_map, patch) from mc_uncertainty)")
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        return eu_guided_mask(roi_patches, eu_scores, ratio, self.cfg.tau, self.cfg.eu_weighting, generator)


@dataclass
class CoverageMasking(RandomMasking):
    """Control for EU guidance: EU-guided masking's sampler on cord coverage alone.

    The patch score is its number of ROI pixels (:func:`roi_coverage`), with no EU at all;
    everything else is :class:`EUGuidedMasking`'s (``cfg.tau``, ``cfg.eu_weighting``, per-image
    z-score, Gumbel-top-k, exact count ``round(r * n_roi)``). Needs ``roi`` (B, H, W) pixel
    mask and ``patch``; ``eu_scores`` and ``au_map`` are ignored, so for a given generator
    state the mask is the same whatever the EU map.
    """

    def sample(self, roi_patches, generator=None, eu_scores=None, au_map=None, roi=None, patch=None,
               mask_ratio=None):
        if roi is None or patch is None:
            raise ValueError("CoverageMasking.sample: roi (B, H, W) pixel mask and patch (int) are required")
        roi_patches = _check_roi_patches(roi_patches)
        coverage = roi_coverage(roi, patch)
        if coverage.shape != roi_patches.shape:
            raise ValueError(f"CoverageMasking.sample: roi gives {tuple(coverage.shape)} patches, "
                             f"roi_patches is {tuple(roi_patches.shape)}")
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        return eu_guided_mask(roi_patches, coverage.to(roi_patches.device), ratio, self.cfg.tau,
                              self.cfg.eu_weighting, generator)


@dataclass
class AUGuidedMasking(RandomMasking):
    """Stage 2: the top-k high-AU components' patches are never masked; the other ROI
    patches are sampled as in stage 1 (EU-guided if ``eu_scores`` is given, else random), with
    the same count ``round(r * n_roi)`` when enough unprotected ROI patches remain, else all
    of them.

    Needs ``au_map`` (B, H, W), ``patch`` (the model's patch size) and preferably ``roi``
    (B, H, W) pixel mask (without it the ROI patches, as pixels, are used for the threshold).
    """

    def protected(self, au_map, roi, patch, roi_patches=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``au_protected_patches`` with this sampler's configuration."""
        c = self.cfg
        if roi is None:
            if roi_patches is None:
                raise ValueError("AUGuidedMasking: give roi (B,H,W) or roi_patches (B,L)")
            au = _squeeze_channel(_as_tensor(au_map, "au_map"), "au_map")
            b, h, w = au.shape
            rp = roi_patches.bool().cpu().reshape(b, h // patch, 1, w // patch, 1)
            roi = rp.expand(b, h // patch, patch, w // patch, patch).reshape(b, h, w)
        return au_protected_patches(au_map, roi, patch, c.au_percentile, c.au_min_size,
                                    c.au_component_score, c.au_top_k)

    def sample(self, roi_patches, generator=None, eu_scores=None, au_map=None, roi=None, patch=None,
               mask_ratio=None):
        if au_map is None or patch is None:
            raise ValueError("AUGuidedMasking.sample: au_map (B, H, W) and patch (int) are required")
        roi_patches = _check_roi_patches(roi_patches)
        prot, _ = self.protected(au_map, roi, patch, roi_patches)
        eligible = ~prot.to(roi_patches.device)
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        if eu_scores is None:
            return random_roi_mask(roi_patches, ratio, generator, eligible=eligible)
        return eu_guided_mask(roi_patches, eu_scores, ratio, self.cfg.tau, self.cfg.eu_weighting,
                              generator, eligible=eligible)


def make_sampler(kind: str, cfg: MaskingConfig | None = None) -> RandomMasking:
    """``"random"`` | ``"eu"`` | ``"coverage"`` | ``"au"`` -> sampler instance."""
    cfg = cfg if cfg is not None else MaskingConfig()
    table = {"random": RandomMasking, "eu": EUGuidedMasking, "coverage": CoverageMasking,
             "au": AUGuidedMasking}
    try:
        return table[kind](cfg)
    except KeyError:
        raise ValueError(f"make_sampler: kind must be one of {sorted(table)}, got {kind!r}") from None
