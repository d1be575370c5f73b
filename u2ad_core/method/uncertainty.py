"""Monte-Carlo uncertainty: epistemic (EU) and aleatoric (AU) maps (paper Algorithm 1).

Each ROI patch of an image is reconstructed ``K`` times while masked; per pixel, the mean
of the K reconstructions is ``mean``, their variance is ``eu`` (``ddof=1``: the paper's
unbiased variance; the authors' code uses ``ddof=0``) and ``au = |x - mean|``.

Two engines give the same estimator:
* :func:`mc_uncertainty` (fast). Every pass masks exactly ``m = round(r * n_roi)`` of the
  image's ROI patches (like training; at least 1). The passes of an image come from one
  cyclic sequence of ``K`` random permutations of its ROI patches, cut into consecutive
  chunks of ``m``: chunk ``c`` is the masked set of pass ``c``. Where a chunk straddles two
  permutations, the head of the next permutation is drawn from the patches *not* in the
  tail of the previous one, so the ``m`` patches of a pass are always distinct. The
  ``ceil(K * n_roi / m)`` passes (the fewest possible: each pass masks at most ``m`` patches)
  mask every ROI patch exactly K times; the last chunk is filled up from a (K+1)-th
  permutation, and those surplus masked slots are *discarded* from the statistics, so
  ``counts`` is exactly K for every ROI patch. All passes of all images are flattened into
  one batch axis (image x pass) and run in chunks of ``batch_size`` under
  ``torch.inference_mode()`` (autocast fp16 on CUDA only, or as asked by ``autocast``: see
  :data:`AUTOCAST`; the model's output heads and everything after them stay float32); sums and sums of squares
  of ``pred - x`` (shifted by the input to avoid cancellation) are accumulated in float32 on
  the device with ``index_add_``; there is no Python loop over images (only over chunks of passes, and over
  groups of ``image_group`` images to bound memory). On CPU the ``nn.MultiheadAttention``
  "fast path" is switched off during inference (measured slower for these small heads).
* :func:`mc_uncertainty_reference`: the paper's Algorithm 1 as written, one image and one
  pass at a time, random ROI masking until every ROI patch has been masked at least K times,
  then K of each patch's reconstructions chosen at random. For tests and the benchmark.

Conventions (both engines): the reconstruction is pasted onto the input outside the ROI
*pixels* (as in the loss), so outside the ROI pixels ``mean = x``, ``eu = 0``, ``au = 0``;
images without ROI patches get no pass at all. Results are float32 CPU tensors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from u2ad_core.core.runtime import progress as _progress
from u2ad_core.method.masking import _uniform, n_masked, random_roi_mask

__all__ = [
    "AUTOCAST",
    "MCResult",
    "MCPlan",
    "mc_plan",
    "mc_uncertainty",
    "mc_uncertainty_reference",
    "reconstruct_once",
]


@dataclass
class MCResult:
    """Monte-Carlo maps for N images of size H x W (float32 CPU tensors).

    mean, eu, au: (N, H, W); counts: int64 (N, L) masked reconstructions kept per patch, as
    counted from the passes that ran (K for ROI patches, 0 elsewhere); n_passes: forward passes run (all images);
    samples: (K, N, H, W) the kept reconstructions (sample j of a patch = its j-th kept
    reconstruction) or None; k, ddof as used.
    """

    mean: torch.Tensor
    eu: torch.Tensor
    au: torch.Tensor
    counts: torch.Tensor
    n_passes: int
    samples: torch.Tensor | None = None
    k: int = 10
    ddof: int = 1


@dataclass
class MCPlan:
    """The masks of the fast engine for N images (see :func:`mc_plan`).

    image: int64 (P,) image of each pass; masks: bool (P, L) masked patches of each pass;
    sample: int64 (P, L) for each masked patch that counts, which of its K reconstructions
    it is (0..K-1), -1 for visible patches and surplus slots; passes: int64 (N,) per image.
    """

    image: torch.Tensor
    masks: torch.Tensor
    sample: torch.Tensor
    passes: torch.Tensor


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------
def _as_nchw(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"uncertainty: {name} must be a tensor or numpy array, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"uncertainty: {name} must be (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    return x


def _model_device(model: torch.nn.Module, device: Any) -> torch.device:
    if device is not None and str(device) != "auto":
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


AUTOCAST = ("auto", "off", "bf16", "fp16")
"""``autocast`` choices of the engines: ``"auto"`` = fp16 on CUDA, none elsewhere; ``"off"``;
``"bf16"`` / ``"fp16"`` on any device (on CPU: for tests).

Why fp16 and not bf16 for Monte-Carlo inference: EU is the variance *between* reconstructions
(about 6e-7 per cord pixel for the ``cpu`` model on the phantom). Rounding in the transformer
blocks differs from pass to pass (different masks, different inputs), so it adds its own
variance: measured on the ``cpu`` model (24 phantom slices, K = 10), bf16 (8-bit mantissa)
raised the mean EU by 6.9 %, fp16 (11-bit) by 0.12 %. Inference needs no gradient range, so fp16
is safe here; training keeps bf16 (``train.py``)."""


def _autocast(device: torch.device, mode: str = "auto"):
    if mode not in AUTOCAST:
        raise ValueError(f"uncertainty: autocast must be one of {AUTOCAST}, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def _inference(model: torch.nn.Module, device: torch.device, autocast: str = "auto"):
    """inference_mode + eval mode + autocast (CUDA); on CPU the MHA "fast path" is switched
    off (measured slower for these small heads on CPU) and restored afterwards."""
    mha = getattr(torch.backends, "mha", None)
    old = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None and device.type == "cpu":
            mha.set_fastpath_enabled(False)
        with torch.inference_mode(), _eval_mode(model), _autocast(device, autocast):
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(old)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _check_k(k: int, ddof: int) -> None:
    if int(k) < 1:
        raise ValueError(f"uncertainty: k must be >= 1, got {k}")
    if int(k) - int(ddof) < 1:
        raise ValueError(f"uncertainty: k={k} with ddof={ddof} leaves no degrees of freedom; use k > ddof")


# --------------------------------------------------------------------------------------
# fast engine
# --------------------------------------------------------------------------------------
def mc_plan(roi_patches: torch.Tensor, k: int, mask_ratio: float = 0.75,
            generator: torch.Generator | None = None) -> MCPlan:
    """Masks covering every ROI patch exactly ``k`` times in the fewest passes.

    roi_patches: bool (N, L). Per image: ``m = max(1, round(r * n))`` masked patches per pass,
    ``ceil(k * n / m)`` passes (0 when n = 0). Vectorised over images (a loop over the k+1
    permutations only). See the module docstring for the construction.
    """
    roi = roi_patches.bool().cpu()
    N, L = roi.shape
    n = roi.sum(1)  # (N,)
    m = torch.where(n > 0, n_masked(n, mask_ratio).clamp(min=1), torch.zeros_like(n))
    m_safe = m.clamp(min=1)
    passes = torch.where(n > 0, (k * n + m_safe - 1) // m_safe, torch.zeros_like(n))
    ar = torch.arange(L)
    big = 3.0

    orders = []
    rank_prev = None
    for j in range(k + 1):
        u = _uniform((N, L), generator, torch.device("cpu"))
        if j == 0:
            order = torch.argsort(u.masked_fill(~roi, big), dim=1)
        else:
            a = (j * n) % m_safe  # tail of permutation j-1 inside the straddling chunk
            head = torch.where(a > 0, m - a, torch.zeros_like(a))
            forbidden = roi & (rank_prev >= (n - a)[:, None])
            key1 = (u + forbidden.float()).masked_fill(~roi, big)
            rank1 = torch.empty_like(ar.expand(N, L)).scatter_(1, torch.argsort(key1, dim=1), ar.expand(N, L))
            is_head = rank1 < head[:, None]
            u2 = _uniform((N, L), generator, torch.device("cpu"))
            key2 = torch.where(is_head, rank1.float() - L, u2).masked_fill(~roi, big)
            order = torch.argsort(key2, dim=1)
        rank_prev = torch.empty_like(order).scatter_(1, order, ar.expand(N, L))
        orders.append(order)
    O = torch.stack(orders, dim=1)  # (N, k+1, L): ROI patches first in each permutation

    S = int((passes * m).max()) if N else 0
    s = torch.arange(S)[None].expand(N, S)
    n_safe = n.clamp(min=1)[:, None]
    valid = s < (passes * m)[:, None]
    jj = torch.div(s, n_safe, rounding_mode="floor").clamp(max=k)
    rr = s % n_safe
    seq = O[torch.arange(N)[:, None], jj, rr]  # (N, S): patch masked at sequence position s
    counted = s < (k * n)[:, None]
    c = torch.div(s, m_safe[:, None], rounding_mode="floor")
    offset = torch.cumsum(passes, 0) - passes
    pass_id = offset[:, None] + c
    P = int(passes.sum())
    masks = torch.zeros(P * L, dtype=torch.bool)
    flat = (pass_id * L + seq)[valid]
    masks[flat] = True
    sample = torch.full((P * L,), -1, dtype=torch.long)
    cv = valid & counted
    sample[(pass_id * L + seq)[cv]] = jj[cv]
    image = torch.repeat_interleave(torch.arange(N), passes)
    return MCPlan(image=image, masks=masks.reshape(P, L), sample=sample.reshape(P, L), passes=passes)


def _patch_pixels(model, patch_mask: torch.Tensor) -> torch.Tensor:
    """bool/float (N, L) -> same dtype (N, H, W)."""
    return model.unpatchify(patch_mask[..., None].expand(*patch_mask.shape, model.patch_size ** 2)
                            .to(torch.float32), 1)[:, 0]


def mc_uncertainty(
    model: torch.nn.Module,
    images: Any,
    roi: Any,
    k: int = 10,
    mask_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    ddof: int = 1,
    batch_size: int = 64,
    device: Any = None,
    keep_samples: bool = False,
    progress: bool = False,
    image_group: int = 1024,
    autocast: str = "auto",
) -> MCResult:
    """Fast Monte-Carlo EU / AU maps (see the module docstring).

    images, roi: (N, 1, H, W) or (N, H, W), tensors or arrays (roi nonzero = ROI).
    k: reconstructions per ROI patch (paper K = 10); mask_ratio r; generator: the masks
    (None: torch's default generator); ddof: 1 unbiased (paper) or 0 (authors' code);
    batch_size: passes (image x pass) per forward (on CPU at most ``CPU_MAX_TOKENS`` tokens); device: None = the model's device;
    image_group: images whose plan and accumulators live on the device at once (memory
    bound only; results do not depend on it except through the random stream);
    autocast: :data:`AUTOCAST` (default ``"auto"``: fp16 on CUDA only).
    Returns :class:`MCResult` with float32 CPU tensors.
    """
    _check_k(k, ddof)
    x = _as_nchw(images, "images").float()
    r = _as_nchw(roi, "roi")
    if r.shape != x.shape:
        raise ValueError(f"mc_uncertainty: roi shape {tuple(r.shape)} differs from images {tuple(x.shape)}")
    if int(batch_size) < 1:
        raise ValueError(f"mc_uncertainty: batch_size must be >= 1, got {batch_size}")
    dev = _model_device(model, device)
    N = x.shape[0]
    roi_p = model.roi_patches(r.cpu())
    if dev.type == "cpu":  # large batches only add memory traffic on CPU (see CPU_MAX_TOKENS)
        batch_size = min(int(batch_size), max(1, CPU_MAX_TOKENS // _tokens_per_pass(model, roi_p)))
    bar = None
    if progress:
        n = roi_p.sum(1)
        m = n_masked(n, mask_ratio).clamp(min=1)
        bar = _progress(total=int(torch.where(n > 0, (k * n + m - 1) // m, 0).sum()), desc="MC passes")
    means, eus, samples, counts, n_passes = [], [], [], [], 0
    try:
        for g0 in range(0, N, max(1, int(image_group))):
            sl = slice(g0, g0 + image_group)
            mean, eu, smp, cnt, P = _mc_group(model, x[sl], r[sl], roi_p[sl], k, mask_ratio, generator, ddof,
                                              int(batch_size), dev, keep_samples, bar, autocast)
            means.append(mean)
            counts.append(cnt)
            eus.append(eu)
            samples.append(smp)
            n_passes += P
    finally:
        if bar is not None:
            bar.close()
    mean = torch.cat(means) if means else x[:, 0].clone()
    eu = torch.cat(eus) if eus else torch.zeros_like(x[:, 0])
    au = (x[:, 0] - mean).abs()
    counts_t = torch.cat(counts) if counts else torch.zeros_like(roi_p, dtype=torch.long)
    samples_t = torch.cat(samples, dim=1) if keep_samples and samples else None
    return MCResult(mean=mean, eu=eu, au=au, counts=counts_t, n_passes=n_passes, samples=samples_t, k=k,
                    ddof=ddof)


# On CPU a forward of more than a few thousand tokens runs no faster per token (the paper
# model, 1025 tokens per pass: 0.65 s per pass at 1-4 passes per forward, 1.0 s at 8-16, with
# the activations out of cache), so CPU forwards are capped at this many tokens.
CPU_MAX_TOKENS = 4096


def _tokens_per_pass(model, roi_p: torch.Tensor) -> int:
    """Largest decoder sequence of one pass: 1 + L, or 1 + the largest context window."""
    keep = model.context_patches(roi_p) if hasattr(model, "context_patches") else None
    if keep is None or keep.shape[0] == 0:
        return int(model.num_patches) + 1
    return int(keep.sum(1).max()) + 1


def _mc_group(model, x, r, roi_p, k, mask_ratio, generator, ddof, batch_size, dev, keep_samples, bar,
              autocast="auto"):
    """The fast engine on one group of images:
    (mean (n,H,W), eu (n,H,W), samples or None, counts int64 (n, L) from the executed passes, passes)."""
    N, _, H, W = x.shape
    L = model.num_patches
    plan = mc_plan(roi_p, k, mask_ratio, generator)
    P = int(plan.image.numel())
    xd = x.to(dev).contiguous()
    rd = r.to(dev) > 0
    x_p = model.patchify(xd)  # (N, L, p*p)
    sum1 = torch.zeros_like(x_p)  # sums of (pred - x) over the K kept reconstructions
    sum2 = torch.zeros_like(x_p)  # ... and of its square
    samples_p = x_p[None].repeat(k, 1, 1, 1) if keep_samples else None  # (K, N, L, p*p)
    image_d = plan.image.to(dev)
    masks_d = plan.masks.to(dev)
    sample_d = plan.sample.to(dev)
    counts = torch.zeros(N, L, dtype=torch.long, device=dev)
    with _inference(model, dev, autocast):
        for s0 in range(0, P, batch_size):
            sl = slice(s0, min(P, s0 + batch_size))
            idx = image_d[sl]
            pred, _ = model.reconstruct(xd[idx], rd[idx], masks_d[sl], with_edge=False)
            smp = sample_d[sl]
            d = model.patchify(pred.float()) - x_p[idx]  # (b, L, p*p)
            d = torch.where((smp >= 0)[..., None], d, torch.zeros_like(d))  # surplus/visible: 0
            sum1.index_add_(0, idx, d)
            sum2.index_add_(0, idx, d * d)
            counts.index_add_(0, idx, (smp >= 0).long())
            if samples_p is not None:
                bi, li = torch.nonzero(smp >= 0, as_tuple=True)
                samples_p[smp[bi, li], idx[bi], li] = d[bi, li] + x_p[idx[bi], li]
            if bar is not None:
                bar.update(sl.stop - sl.start)
    mean_d = sum1 / k
    var = ((sum2 - sum1 * mean_d) / (k - ddof)).clamp_(min=0.0)
    mean = model.unpatchify(x_p + mean_d, 1)[:, 0].float().cpu()
    eu = model.unpatchify(var, 1)[:, 0].float().cpu()
    samples = None
    if samples_p is not None:
        samples = model.unpatchify(samples_p.reshape(k * N, L, -1), 1).reshape(k, N, H, W).float().cpu()
    return mean, eu, samples, counts.cpu(), P


# --------------------------------------------------------------------------------------
# reference engine (paper Algorithm 1) and single-pass reconstruction
# --------------------------------------------------------------------------------------
def mc_uncertainty_reference(
    model: torch.nn.Module,
    images: Any,
    roi: Any,
    k: int = 10,
    mask_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    ddof: int = 1,
    device: Any = None,
    keep_samples: bool = False,
    max_passes: int = 100_000,
) -> MCResult:
    """Paper Algorithm 1, straightforwardly: per image, random ROI masking one pass at a time
    until every ROI patch has been masked >= K times; keep K random reconstructions per patch.

    Same inputs and outputs as :func:`mc_uncertainty` (``counts`` = K on ROI patches).
    """
    _check_k(k, ddof)
    x = _as_nchw(images, "images").float()
    r = _as_nchw(roi, "roi")
    if r.shape != x.shape:
        raise ValueError(f"mc_uncertainty_reference: roi shape {tuple(r.shape)} differs from images {tuple(x.shape)}")
    dev = _model_device(model, device)
    N, _, H, W = x.shape
    L = model.num_patches
    means, eus, samples_all = [], [], []
    counts = torch.zeros(N, L, dtype=torch.long)
    n_passes = 0
    with _inference(model, dev):
        for i in range(N):
            xi = x[i:i + 1].to(dev)
            ri = r[i:i + 1].to(dev)
            rp = model.roi_patches(ri)  # (1, L)
            n = int(rp.sum())
            x_p = model.patchify(xi)[0]  # (L, p*p)
            if n == 0:
                means.append(x_p)
                eus.append(torch.zeros_like(x_p))
                samples_all.append(x_p[None].expand(k, -1, -1))
                continue
            ratio = mask_ratio if int(n_masked(n, mask_ratio)) >= 1 else 1.0 / n
            preds, masks = [], []
            seen = torch.zeros(L, dtype=torch.long, device=dev)
            while bool((seen[rp[0]] < k).any()):
                if len(preds) >= max_passes:
                    raise RuntimeError(f"mc_uncertainty_reference: image {i} needs more than {max_passes} passes")
                mask = random_roi_mask(rp, ratio, generator)
                pred, _ = model.reconstruct(xi, ri, mask, with_edge=False)
                preds.append(model.patchify(pred.float())[0])
                masks.append(mask[0])
                seen += mask[0].long()
            n_passes += len(preds)
            pr = torch.stack(preds)  # (P, L, p*p)
            mk = torch.stack(masks)  # (P, L)
            key = _uniform(tuple(mk.shape), generator, mk.device).masked_fill(~mk, 2.0)
            pick = torch.argsort(key, dim=0)[:k]  # (K, L) passes whose reconstruction is kept
            kept = pr.gather(0, pick[..., None].expand(k, L, pr.shape[-1]))  # (K, L, p*p)
            use = rp[0][None, :, None]
            kept = torch.where(use, kept, x_p[None])
            dev_k = kept - x_p[None]  # shifted by the input, as in the fast engine (exact 0 outside)
            means.append(x_p + dev_k.mean(0))
            eus.append(dev_k.var(0, correction=ddof))
            samples_all.append(kept)
            counts[i] = rp[0].long().cpu() * k
    mean = model.unpatchify(torch.stack(means), 1)[:, 0].float().cpu()
    eu = model.unpatchify(torch.stack(eus), 1)[:, 0].float().cpu()
    au = (x[:, 0] - mean).abs()
    samples = None
    if keep_samples:
        sp = torch.stack(samples_all, dim=1)  # (K, N, L, p*p)
        samples = model.unpatchify(sp.reshape(k * N, L, -1), 1).reshape(k, N, H, W).float().cpu()
    return MCResult(mean=mean, eu=eu, au=au, counts=counts, n_passes=n_passes, samples=samples, k=k, ddof=ddof)


def reconstruct_once(
    model: torch.nn.Module,
    images: Any,
    roi: Any,
    mask_ratio: float = 0.75,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    device: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-pass MAE reconstruction with random ROI masking (the "MAE" ablation row).

    images, roi: (N, 1, H, W) or (N, H, W). Returns ``(pred (N, H, W), mask bool (N, L))``,
    float32 / bool CPU tensors; pred is pasted onto the input outside the ROI pixels. Only
    the masked patches are reconstructions of hidden content.
    """
    x = _as_nchw(images, "images").float()
    r = _as_nchw(roi, "roi")
    dev = _model_device(model, device)
    mask = random_roi_mask(model.roi_patches(r.cpu()), mask_ratio, generator)
    out = []
    with _inference(model, dev):
        for s0 in range(0, x.shape[0], max(1, int(batch_size))):
            sl = slice(s0, s0 + batch_size)
            pred, _ = model.reconstruct(x[sl].to(dev), r[sl].to(dev), mask[sl].to(dev), with_edge=False)
            out.append(pred.float()[:, 0].cpu())
    pred = torch.cat(out) if out else x[:, 0].clone()
    return pred, mask
