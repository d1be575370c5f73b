"""Benchmark of the Monte-Carlo engines: ``u2ad bench mc --preset cpu --k 10 --json``.

One run, one model (random initialisation of the preset's size, seed 0), one set of
synthetic images (smooth random background with a vertical, gently curving cord-like ROI
band 9 px wide; deterministic), measured for both engines of :mod:`u2ad_core.method.uncertainty`:

* ``fast_images_per_s`` / ``reference_images_per_s`` and their ``ratio`` (best of
  ``--repeats`` wall-clock timings each, alternating, after a warm-up); ``ratio_cpu_time``
  is the same ratio in process CPU seconds, less sensitive to other work on a shared machine;
* ``achieved_gflops``: FLOPs of the fast engine counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (in a separate, untimed run; the CPU flash
  attention kernel, which torch's counter does not know, is counted with torch's own SDPA
  formula, 4 * B * heads * Lq * Lk * head_dim) divided by the fast engine's time;
* ``matmul_peak_gflops``: the better of two plain fp32 matmuls measured in the same run, one
  shaped like the model's largest GEMM (all tokens of a forward chunk x D @ D x mlp_ratio*D)
  and one 1024 x 1024 x 1024; ``fraction_of_peak = achieved_gflops / matmul_peak_gflops``;
* ``op_seconds`` / ``op_fraction``: where the fast engine's time goes, from the torch profiler
  (one more, untimed run on ``profile_images`` images): the self time of every operator, summed
  into ``attention`` (scaled-dot-product / multi-head attention kernels, softmax, batched
  matmuls), ``linear`` (``addmm``, ``mm``, ``linear``, ``matmul``: projections, MLPs, heads)
  and ``other`` (layer norms, GELU, gathers, copies, the engine's own bookkeeping);
  ``op_gflop_fraction``: the FLOPs of the same run split the same way; ``op_gflops``: the FLOP
  rate of attention and of the linear layers (their FLOPs over their profiled self time; the
  profiler adds a little time, so these are slight underestimates).

``--set model.context_radius=3`` (any dotted preset override) measures a variant, e.g. the
context window of :class:`~u2ad_core.core.config.ModelConfig`.

Numbers depend on the machine and on what else runs on it; this is a measurement tool, not
a test.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

from u2ad_core.book.sweep import parse_value
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import resolve_device
from u2ad_core.method.masking import n_masked
from u2ad_core.method.model import build_model, count_parameters
from u2ad_core.method.uncertainty import CPU_MAX_TOKENS, _tokens_per_pass, mc_uncertainty, mc_uncertainty_reference

__all__ = ["synthetic_images", "bench_mc", "op_split", "cli_register"]


def synthetic_images(n: int, size: tuple[int, int], seed: int = 0, band: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic test images: (images float32 (n, 1, H, W) in [0, 1], roi uint8 (n, H, W)).

    Background: bilinearly upsampled coarse noise (smooth). ROI: a vertical band ``band`` px
    wide whose centre wanders by a few pixels (a cord-like strip), a little brighter.
    """
    g = torch.Generator().manual_seed(int(seed))
    H, W = size
    coarse = torch.rand(n, 1, max(2, H // 16), max(2, W // 16), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    rows = torch.arange(H, dtype=torch.float32)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    shift = (torch.rand(n, 1, generator=g) - 0.5) * 0.2 * W
    centre = torch.round(W / 2 + shift + 3.0 * torch.sin(2 * math.pi * rows[None] / H + phase))  # (n, H)
    cols = torch.arange(W, dtype=torch.float32)
    roi = ((cols[None, None] - centre[..., None]).abs() <= (band - 1) / 2).to(torch.uint8)  # (n, H, W)
    img = 0.25 + 0.35 * smooth[:, 0] + 0.25 * roi + 0.03 * torch.randn(n, H, W, generator=g)
    return img.clamp(0, 1)[:, None].contiguous(), roi


def _time(fn, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def _matmul_gflops(m: int, k: int, n: int, device: torch.device, repeats: int = 3) -> float:
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    a @ b
    dt, _ = _time(lambda: a @ b, repeats)
    return 2.0 * m * k * n / dt / 1e9


def _count_flops(fn, split: bool = False):
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # here: with the profiler (see op_split)

    def cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_flash_flop
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    total = int(counter.get_total_flops())
    if not split:
        return total
    by = {"attention": 0, "linear": 0, "other": 0}
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).lower()
        key = "attention" if any(a in name for a in _ATTENTION_OPS) else (
            "linear" if any(f"aten.{b}" in name for b in ("addmm", "mm", "linear", "matmul")) else "other")
        by[key] += int(n)
    return total, by


_ATTENTION_OPS = ("attention", "softmax", "bmm")
_LINEAR_OPS = ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul")


def op_split(fn) -> dict[str, float]:
    """Self CPU seconds of ``fn()`` per category (attention / linear / other), torch profiler."""
    from torch.profiler import ProfilerActivity, profile  # here: ~1.4 s to import, for every u2ad command

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = {"attention": 0.0, "linear": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        name = ev.key.lower()
        t = ev.self_cpu_time_total / 1e6
        if any(a in name for a in _ATTENTION_OPS):
            out["attention"] += t
        elif ev.key in _LINEAR_OPS:
            out["linear"] += t
        else:
            out["other"] += t
    return out


def bench_mc(preset: str = "cpu", k: int | None = None, n_images: int | None = None, device: str = "auto",
             repeats: int | None = None, batch_size: int | None = None, seed: int = 0,
             overrides: dict[str, Any] | None = None, profile_images: int | None = None) -> dict[str, Any]:
    """Run the benchmark and return the result dict (see the module docstring).

    Defaults: k = the preset's ``mc.k``; 16 images (4 for ``paper``); repeats 3 (1 for
    ``paper``); batch size = the preset's ``mc.batch_size``; ``overrides``: dotted preset
    overrides (e.g. ``{"model.context_radius": 3}``); ``profile_images``: images in the
    profiled run (default 4; 1 for ``paper``).
    """

    cfg = get_preset(preset, **(overrides or {}))
    k = int(k if k is not None else cfg.mc.k)
    batch_size = int(batch_size if batch_size is not None else cfg.mc.batch_size)
    n_images = int(n_images if n_images is not None else (4 if preset == "paper" else 16))
    repeats = int(repeats if repeats is not None else (1 if preset == "paper" else 3))
    dev = torch.device(resolve_device(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg.model).to(dev).eval()
    images, roi = synthetic_images(n_images, cfg.model.image_size, seed=seed)
    ratio = cfg.masking.mask_ratio

    def gen():
        return torch.Generator().manual_seed(seed)

    def fast():
        return mc_uncertainty(model, images, roi, k=k, mask_ratio=ratio, generator=gen(),
                              batch_size=batch_size, device=dev)

    def ref():
        return mc_uncertainty_reference(model, images, roi, k=k, mask_ratio=ratio, generator=gen(), device=dev)

    # warm-up (allocator, kernels) on one image
    mc_uncertainty(model, images[:1], roi[:1], k=2, mask_ratio=ratio, generator=gen(), batch_size=batch_size,
                   device=dev)
    mc_uncertainty_reference(model, images[:1], roi[:1], k=2, mask_ratio=ratio, generator=gen(), device=dev)

    # alternate the engines so that load from other processes hits both alike; keep the best
    t_fast = t_ref = c_fast = c_ref = float("inf")
    for _ in range(max(1, repeats)):
        c0 = time.process_time()
        dt, res_fast = _time(fast, 1)
        t_fast, c_fast = min(t_fast, dt), min(c_fast, time.process_time() - c0)
        c0 = time.process_time()
        dt, res_ref = _time(ref, 1)
        t_ref, c_ref = min(t_ref, dt), min(c_ref, time.process_time() - c0)
    flops = _count_flops(fast)
    achieved = flops / t_fast / 1e9
    n_prof = int(profile_images if profile_images is not None else (1 if preset == "paper" else 4))
    n_prof = max(1, min(n_prof, n_images))
    def prof_run():
        return mc_uncertainty(model, images[:n_prof], roi[:n_prof], k=k, mask_ratio=ratio, generator=gen(),
                              batch_size=batch_size, device=dev)

    ops = op_split(prof_run)
    op_total = sum(ops.values()) or float("nan")
    _, op_flops = _count_flops(prof_run, split=True)

    per_pass = _tokens_per_pass(model, model.roi_patches(roi))
    if dev.type == "cpu":  # what mc_uncertainty actually runs per forward on CPU
        batch_size = min(batch_size, max(1, CPU_MAX_TOKENS // per_pass))
    tokens = min(batch_size, res_fast.n_passes) * per_pass
    d = cfg.model.embed_dim
    peak_gemm = _matmul_gflops(tokens, d, int(d * cfg.model.mlp_ratio), dev)
    peak_square = _matmul_gflops(1024, 1024, 1024, dev)
    peak = max(peak_gemm, peak_square)
    roi_patches = model.roi_patches(roi).sum(1).float()
    return {
        "preset": preset,
        "overrides": dict(overrides or {}),
        "context_radius": cfg.model.context_radius,
        "mean_tokens_per_pass": _mean_tokens(model, roi, ratio),
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "k": k,
        "n_images": n_images,
        "batch_size": batch_size,
        "image_size": list(cfg.model.image_size),
        "parameters": count_parameters(model),
        "mean_roi_patches": float(roi_patches.mean()),
        "fast_seconds": t_fast,
        "reference_seconds": t_ref,
        "fast_images_per_s": n_images / t_fast,
        "reference_images_per_s": n_images / t_ref,
        "ratio": t_ref / t_fast,
        "fast_cpu_seconds": c_fast,
        "reference_cpu_seconds": c_ref,
        "ratio_cpu_time": c_ref / c_fast,
        "seconds_per_image_fast": t_fast / n_images,
        "seconds_per_image_reference": t_ref / n_images,
        "fast_passes": int(res_fast.n_passes),
        "reference_passes": int(res_ref.n_passes),
        "fast_gflop": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_gemm_shape": [tokens, d, int(d * cfg.model.mlp_ratio)],
        "matmul_gemm_gflops": peak_gemm,
        "matmul_square_gflops": peak_square,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": achieved / peak,
        "max_abs_mean_difference": float((res_fast.mean - res_ref.mean).abs().max()),
        "profile_images": n_prof,
        "op_seconds": ops,
        "op_fraction": {key: v / op_total for key, v in ops.items()},
        "op_gflop_fraction": {key: v / max(1, sum(op_flops.values())) for key, v in op_flops.items()},
        "op_gflops": {key: (op_flops[key] / ops[key] / 1e9 if ops[key] > 0 else float("nan"))
                      for key in ("attention", "linear")},
        "repeats": repeats,
    }


def _mean_tokens(model, roi: torch.Tensor, ratio: float) -> dict[str, float]:
    """Mean encoder / decoder tokens per MC pass (class token included) for these ROIs."""

    rp = model.roi_patches(roi)
    keep = model.context_patches(rp)
    n_keep = (keep.sum(1) if keep is not None else torch.full((rp.shape[0],), model.num_patches)).float()
    n_hidden = n_masked(rp.sum(1), ratio).clamp(min=1).float()
    return {"encoder": float((1 + n_keep - n_hidden).mean()), "decoder": float((1 + n_keep).mean())}


def _run(args: argparse.Namespace) -> int:

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"u2ad bench mc: --set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    out = bench_mc(args.preset, args.k, args.n_images, args.device, args.repeats, args.batch_size,
                   overrides=overrides)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        width = max(len(k) for k in out)
        for key, value in out.items():
            if isinstance(value, dict):
                value = ", ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}" for a, b in value.items())
            v = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {v}")
    return 0


def cli_register(subparsers) -> None:
    """Add ``u2ad bench mc``."""
    p = subparsers.add_parser("bench", help="benchmarks (bench mc: Monte-Carlo engines)")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH")
    mc = sub.add_parser("mc", help="fast vs reference Monte-Carlo uncertainty engine, FLOP rate")
    mc.add_argument("--preset", default="cpu", help="smoke | cpu | paper (model and image size)")
    mc.add_argument("--k", type=int, default=None, help="reconstructions per patch (default: preset mc.k)")
    mc.add_argument("--n-images", type=int, default=None, help="synthetic images (default 16; paper 4)")
    mc.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    mc.add_argument("--json", action="store_true", help="print one JSON object")
    mc.add_argument("--repeats", type=int, default=None,
                    help="timings per engine, alternating, best kept (default 3; paper 1)")
    mc.add_argument("--batch-size", type=int, default=None, help="passes per forward (default: preset mc.batch_size)")
    mc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="dotted preset override, e.g. model.context_radius=3 (repeatable)")
    mc.set_defaults(func=_run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
