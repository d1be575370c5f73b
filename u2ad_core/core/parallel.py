"""Run independent training jobs several at a time on a CPU: one process per core, one thread each.

A small model trains faster per core on one thread than on many (its matrix products are too
small to split well): a training step of the ``cpu`` preset's EdgeMAE took 0.114 s on 2 threads
and 0.17 s on each of two 1-thread processes side by side on a 2-core machine (1.3x the
throughput), an MC pass 1.2x. :func:`run_jobs` is the one place that starts such processes;
U2AD's :func:`u2ad_core.method.train.train_strategies` and the detectors'
:func:`u2ad_core.detectors.protocol.cross_validate_detectors` use it.

The result of a job does not depend on where it ran, except for the last digits of
floating-point sums (one thread adds in another order than two).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from typing import Any, Callable, Sequence

import torch

from u2ad_core.core.runtime import progress

__all__ = ["default_workers", "run_jobs"]


def default_workers(workers: int | None = None, device: str = "cpu") -> int:
    """Processes to use: ``workers`` if given (>= 1), else 2 on a machine with at least 2
    cores, else 1; never more than the cores, and 1 off the CPU (CUDA / MPS run jobs in turn)."""
    cores = os.cpu_count() or 1
    n = int(workers) if workers else (2 if cores >= 2 else 1)
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return 1 if device != "cpu" else min(n, cores)


def _call(fn: Callable[..., Any], threads: int, args: tuple) -> Any:
    """A job in a worker process: ``threads`` torch threads, then ``fn(*args)``."""
    torch.set_num_threads(int(threads))
    return fn(*args)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], *, workers: int = 1, threads: int | None = None,
             here: bool = True, desc: str = "jobs", unit: str = "job", show_progress: bool = False) -> list[Any]:
    """``[fn(*args) for args in jobs]``, ``workers`` at a time in spawned processes.

    fn: a module-level (picklable) function; jobs: its argument tuples. Each worker process runs
    ``threads`` torch threads (default ``cpu_count // workers``). With ``here=True`` the jobs
    beyond the last full round of ``workers`` (the odd one out) run in this process, without
    changing its thread count; with ``here=False`` every job runs in the pool. With one worker
    (or one job and ``here``) everything runs here, in order. Results come back in the order of
    ``jobs``.
    """
    jobs = [tuple(a) for a in jobs]
    n = max(1, int(workers))
    pooled = (jobs[: len(jobs) - len(jobs) % n] if here else jobs) if n > 1 else []
    if n > 1 and not here and len(jobs) < 2:
        pooled = []
    rest = jobs[len(pooled):]
    out: list[Any] = [None] * len(jobs)
    bar = progress(total=len(jobs), desc=f"{desc} ({n} at a time)" if pooled else desc, unit=unit,
                   **({} if show_progress else {"disable": True}))
    try:
        if pooled:
            nt = int(threads) if threads else max(1, (os.cpu_count() or 1) // n)
            with cf.ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as ex:
                futures = {ex.submit(_call, fn, nt, a): i for i, a in enumerate(pooled)}
                for fut in cf.as_completed(futures):
                    out[futures[fut]] = fut.result()
                    bar.update(1)
        for i, a in enumerate(rest, start=len(pooled)):
            out[i] = fn(*a)
            bar.update(1)
    finally:
        bar.close()
    return out
