"""One training loop for every trained model of the project, on the run store.

U2AD's pretraining and adaptation (:mod:`u2ad_core.method.train`), every baseline
(:mod:`u2ad_core.baselines.training`) and the supervised detectors
(:mod:`u2ad_core.detectors.protocol`) train through :func:`fit`. The caller opens the run
(:func:`u2ad_core.core.runstore.open_run`), builds the model, its optimiser(s) and a seeded CPU
``torch.Generator``, and gives a per-method ``train_step`` (one batch -> its losses); :func:`fit`
does the steps they share, in this order:

1. reuse a finished run (``reuse`` and ``run.done``: ``load(run.path)``, nothing trained);
2. :meth:`Run.start`: ``config.json``, then resume from ``checkpoint.pt`` (weights,
   optimiser(s), generator, epoch, history, wall time and the method's own state through
   ``Hooks.restore``) or start afresh;
3. every epoch (:func:`train_one_epoch`): ``Hooks.on_epoch_start`` (U2AD refreshes its EU / AU
   maps there), the learning rate of ``lr_at(epoch)`` in every parameter group, the data order
   (``torch.randperm(n, generator)``, or ``order(generator)``), ``train_step`` batch after
   batch with a non-finite check on every loss, and the epoch's row: ``epoch``, the hook's
   columns, ``lr``, the batch-size-weighted means of the losses, ``seconds``;
4. ``metrics.csv`` rewritten, ``checkpoint.pt`` every ``checkpoint_every`` epochs (and after
   the last one when ``keep_checkpoint``), ``Hooks.on_epoch_end`` (weight snapshots, callbacks);
5. ``Hooks.after_epochs`` (U2AD's final evaluation row), then :meth:`Run.finish`: ``model.pt``
   (``Hooks.final_state``) and ``done.json`` (``Hooks.done_info``).

All randomness of a step comes from the one ``generator`` (CPU), drawn in a fixed order (data
order first, then whatever ``train_step`` draws), and the generator's state is checkpointed, so
a run resumed after epoch ``k`` ends with the same weights as one that was never interrupted.
The loop follows MAE's ``engine_pretrain.train_one_epoch`` (one epoch in one short function)
and MONAI's ``SupervisedTrainer`` (one loop, a per-method iteration, checkpointing beside it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from u2ad_core.core.runstore import Run
from u2ad_core.core.runtime import progress

__all__ = ["StepInfo", "Hooks", "FitResult", "fit", "train_one_epoch", "batches", "set_lr"]


@dataclass(frozen=True)
class StepInfo:
    """Where a training step is: ``epoch`` (0-based), ``epochs`` (total of this run), ``step``
    (global batch counter, 0-based)."""

    epoch: int
    epochs: int
    step: int


@dataclass
class Hooks:
    """A method's additions to :func:`fit`; every field optional.

    on_epoch_start(epoch) -> dict | None: runs before the learning rate and the data order are
        set; the dict's entries join the epoch's row (after ``epoch``).
    on_epoch_end(epoch, row): after the row is written and the checkpoint saved.
    extra_state() -> dict: more entries of ``checkpoint.pt`` (e.g. U2AD's current maps).
    restore(state): reads them back from a resumed checkpoint.
    after_epochs(history) -> dict | None: one more row after the last epoch (written, and
        checkpointed when ``keep_checkpoint``), e.g. U2AD's final evaluation.
    final_state() -> dict: what ``model.pt`` holds (default ``{"model": state_dict}``).
    done_info(wall_s, history) -> dict: what ``done.json`` holds (the run hash is added).
    row(row) -> dict: reorders or renames the epoch's row before it is stored.
    """

    on_epoch_start: Callable[[int], Mapping[str, Any] | None] | None = None
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None
    extra_state: Callable[[], Mapping[str, Any]] | None = None
    restore: Callable[[Mapping[str, Any]], None] | None = None
    after_epochs: Callable[[list[dict[str, Any]]], Mapping[str, Any] | None] | None = None
    final_state: Callable[[], Mapping[str, Any]] | None = None
    done_info: Callable[[float, list[dict[str, Any]]], Mapping[str, Any]] | None = None
    row: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass
class FitResult:
    """What :func:`fit` returns: the model (eval mode; ``load``'s result when reused), the
    epoch rows, whether the run was reused, the training wall time (this and earlier
    sessions) and ``load``'s second value (``info``) when reused."""

    model: Any
    run_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    wall_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's data order: ``torch.randperm(n, generator)`` cut into batches of
    ``batch_size`` indices (the last one shorter). Returns a list of (b,) int64 tensors."""
    perm = torch.randperm(n, generator=generator)
    return [perm[s:s + batch_size] for s in range(0, n, batch_size)]


def _optimizers(optimizers) -> list[torch.optim.Optimizer]:
    if isinstance(optimizers, torch.optim.Optimizer):
        return [optimizers]
    return list(optimizers.values())


def set_lr(optimizers, lr: float) -> None:
    """Set ``lr`` in every parameter group of one optimiser or a dict of them."""
    for opt in _optimizers(optimizers):
        for group in opt.param_groups:
            group["lr"] = lr


def _optimizer_state(optimizers) -> dict[str, Any]:
    """``{"optimizer": state}`` for one optimiser, ``{"optimizers": {name: state}}`` for a dict."""
    if isinstance(optimizers, torch.optim.Optimizer):
        return {"optimizer": optimizers.state_dict()}
    return {"optimizers": {k: o.state_dict() for k, o in optimizers.items()}}


def _load_optimizers(optimizers, state: Mapping[str, Any]) -> None:
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers.load_state_dict(state["optimizer"])
    else:
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])


def train_one_epoch(train_step: Callable[[Any, StepInfo], Mapping[str, Any]], order: Sequence[Any],
                    epoch: int, epochs: int, step: int, label: str) -> tuple[dict[str, float], int]:
    """Run ``train_step(batch, StepInfo(epoch, epochs, step))`` over the batches of ``order``.

    ``train_step`` returns the batch's losses (floats or 0-d tensors); each must be finite
    (``FloatingPointError`` otherwise). Returns the losses' means weighted by the batch sizes
    (``len(batch)``) and the global step counter after the epoch.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in order:
        losses = train_step(batch, StepInfo(epoch, epochs, step))
        b = len(batch)
        for k, v in losses.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            if not math.isfinite(v):
                raise FloatingPointError(f"{label}: non-finite {k} at epoch {epoch}; lower the learning rate")
            sums[k] = sums.get(k, 0.0) + v * b
            counts[k] = counts.get(k, 0) + b
        step += 1
    return {k: v / counts[k] for k, v in sums.items()}, step


def _start(run: Run, model, optimizers, generator: torch.Generator, hooks: Hooks, resume: bool,
           config: Mapping[str, Any] | None, stale: Sequence[str]) -> tuple[int, list[dict[str, Any]], float]:
    """:meth:`Run.start`, then restore a checkpoint's weights, optimiser(s), generator and the
    method's own state. Returns ``(first epoch, history, wall seconds before)``."""
    state = run.start(resume, config=config, stale=stale)
    if state is None:
        return 0, [], 0.0
    model.load_state_dict(state["model"])
    _load_optimizers(optimizers, state)
    generator.set_state(state["generator"])
    if hooks.restore is not None:
        hooks.restore(state)
    return int(state["epoch"]), list(state["history"]), float(state.get("wall_s", 0.0))


def fit(
    run: Run,
    model: torch.nn.Module,
    optimizers: torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer],
    train_step: Callable[[Any, StepInfo], Mapping[str, Any]],
    *,
    epochs: int,
    n: int,
    batch_size: int,
    generator: torch.Generator,
    order: Callable[[torch.Generator], Sequence[Any]] | None = None,
    lr_at: Callable[[int], float] | None = None,
    hooks: Hooks | None = None,
    resume: bool = True,
    reuse: bool = True,
    load: Callable[[Path], tuple[Any, dict[str, Any]]] | None = None,
    history_text: Sequence[str] = ("stage",),
    config: Mapping[str, Any] | None = None,
    stale: Sequence[str] = (),
    checkpoint_every: int = 1,
    keep_checkpoint: bool = False,
    columns: Sequence[str] | None = None,
    label: str = "",
    show_progress: bool = True,
    t_start: float | None = None,
) -> FitResult:
    """Train ``model`` in ``run`` (module doc) and return a :class:`FitResult`.

    n, batch_size: items per epoch and batch size (``ceil(n / batch_size)`` steps an epoch;
    the default data order is :func:`batches`); order(generator): the epoch's batches
    instead (objects with a ``len``, drawn from ``generator`` at the start of the epoch).
    optimizers: one optimiser (checkpointed as ``"optimizer"``) or a dict of them
    (``"optimizers"``). load(path) -> (model, info): a finished run, when ``reuse``.
    history_text: the text columns of ``metrics.csv`` when a reused run's rows are read back.
    columns: fixed ``metrics.csv`` columns (default: every key, in order of appearance).
    t_start: ``time.perf_counter()`` when the caller began (wall time counts from there).
    """
    hooks = hooks or Hooks()
    t_start = time.perf_counter() if t_start is None else t_start
    if reuse and run.done:
        if load is None:
            raise ValueError("fit: reuse needs load=")
        loaded, info = load(run.path)
        return FitResult(loaded, run.path, run.read_metrics(text=history_text), reused=True, info=dict(info))
    start, history, wall_before = _start(run, model, optimizers, generator, hooks, resume, config, stale)

    def checkpoint(epoch_done: int) -> None:
        run.save_checkpoint({**(hooks.extra_state() if hooks.extra_state else {}),
                             "epoch": epoch_done, "model": model.state_dict(), **_optimizer_state(optimizers),
                             "generator": generator.get_state(), "history": history,
                             "wall_s": wall_before + time.perf_counter() - t_start})

    bs = max(1, int(batch_size))
    step = start * math.ceil(n / bs)
    bar = progress(total=epochs, initial=start, desc=label, unit="epoch",
                   **({} if show_progress else {"disable": True}))
    model.train()
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch}
            row.update((hooks.on_epoch_start(epoch) if hooks.on_epoch_start else None) or {})
            lr = None
            if lr_at is not None:
                lr = lr_at(epoch)
                set_lr(optimizers, lr)
                row["lr"] = lr
            plan = order(generator) if order is not None else batches(n, bs, generator)
            means, step = train_one_epoch(train_step, plan, epoch, epochs, step, label)
            row.update(means, seconds=round(time.perf_counter() - t0, 3))
            row = hooks.row(row) if hooks.row else row
            history.append(row)
            run.write_metrics(history, columns)
            done = epoch + 1
            if (done % max(1, int(checkpoint_every)) == 0 and done < epochs) or (keep_checkpoint and done == epochs):
                checkpoint(done)
            if hooks.on_epoch_end is not None:
                hooks.on_epoch_end(epoch, row)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "lr") if row.get(k) is not None}, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    last = hooks.after_epochs(history) if hooks.after_epochs else None
    if last is not None:
        history.append(dict(last))
        run.write_metrics(history, columns)
        if keep_checkpoint:
            checkpoint(epochs)
    model.eval()
    wall = wall_before + time.perf_counter() - t_start
    run.finish(hooks.final_state() if hooks.final_state else {"model": model.state_dict()},
               hooks.done_info(wall, history) if hooks.done_info else {"epochs": epochs, "wall_s": round(wall, 2)},
               keep_checkpoint=keep_checkpoint)
    return FitResult(model, run.path, history, reused=False, wall_s=wall)
