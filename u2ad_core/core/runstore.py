"""A cached, resumable training run on disk: one folder per hashed specification.

Every trained model of the project (U2AD's pretraining and adaptation in
:mod:`u2ad_core.method.train`, the baselines in :mod:`u2ad_core.baselines.training`, the detectors, and
any method added later) is one run. The caller describes the run by ``spec``, a JSON-able dict of
everything that shapes its result (its own format version, configuration, data hash, the
identity of the starting weights, the seed); the run lives in::

    run_dir / f"{name}-{config_hash(spec)}"

    config.json     {"run_hash", "spec", **config}: what was run (written when it starts)
    checkpoint.pt   the caller's resumable state (weights, optimisers, generator, history...),
                    stamped with the run hash
    metrics.csv     one row per epoch, rewritten after every epoch
    model.pt        the final weights, for loading
    done.json       written last: the run is complete, and a later call reuses it

Every file is written atomically (:func:`u2ad_core.core.runtime.atomic_path`): an interrupted
run leaves the previous version or nothing, never a partial file. A run is **reused** when
``done.json`` and ``model.pt`` exist; otherwise :meth:`Run.start` continues from
``checkpoint.pt`` (``resume=True``, the default) or starts afresh. Lifecycle::

    run = open_run(run_dir, name, spec)
    if reuse and run.done:
        ...                                          # load run.path / "model.pt"
    state = run.start(resume, config={...})          # the checkpoint dict, or None
    for epoch in ...:
        run.write_metrics(history)
        run.save_checkpoint({"epoch": epoch + 1, "model": ..., "history": history})
    run.finish({"model": ...}, {"epochs": ..., "wall_s": ...})

The training code does not write this by hand: :func:`u2ad_core.core.engine.fit` runs the
lifecycle for every method.

The hash covers the spec only, so the folder of a given spec never changes unless the
caller's spec does (callers bump their ``FORMAT_VERSION`` to retrain old runs).
:func:`init_weights` gives the identity of a starting model (a run folder, a checkpoint
file or a module) for the caller's spec, so that fine-tuning from other weights is another
run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from u2ad_core.core.config import config_hash
from u2ad_core.core.runtime import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["Run", "InitWeights", "open_run", "init_weights", "save_state", "load_state", "weights_hash", "train_seconds",
           "RANDOM_INIT"]

CONFIG, CHECKPOINT, METRICS, MODEL, DONE = "config.json", "checkpoint.pt", "metrics.csv", "model.pt", "done.json"
RANDOM_INIT = ("", "none", "scratch", "random")
"""Strings that mean "no starting weights" (a random initialisation) for :func:`init_weights`."""


# --------------------------------------------------------------------------------------
# torch files
# --------------------------------------------------------------------------------------
def save_state(obj: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically: a failure leaves ``path`` as it was."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(dict(obj), tmp)
    return Path(path)


def load_state(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """A dict saved by :func:`save_state` (tensors, numbers, strings only: ``weights_only``),
    mapped to ``device``. Raises ``FileNotFoundError`` or a ``RuntimeError`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location=device, weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise RuntimeError(f"cannot read checkpoint {p}: {exc}") from exc


def weights_hash(state: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over a state dict's names and tensor bytes (sorted by name)."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One run folder (module doc): ``path = run_dir / f"{name}-{run_hash}"``."""

    path: Path
    run_hash: str
    spec: dict[str, Any] = field(repr=False)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def done(self) -> bool:
        """The run is complete (``done.json`` and ``model.pt`` exist) and can be reused."""
        return (self.path / DONE).is_file() and self.model_path.is_file()

    def start(self, resume: bool = True, config: Mapping[str, Any] | None = None,
              stale: Sequence[str] = ()) -> dict[str, Any] | None:
        """Open the run for training: create the folder, write ``config.json`` (``run_hash``,
        ``spec`` and ``config``), drop ``done.json``; return the checkpoint dict when
        ``resume`` and ``checkpoint.pt`` exists, else ``None`` after removing the folders
        named in ``stale`` (outputs of an earlier attempt that a fresh start rewrites).

        Raises ``RuntimeError`` when the checkpoint belongs to another run hash.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / CONFIG, {**(config or {}), "run_hash": self.run_hash, "spec": self.spec})
        (self.path / DONE).unlink(missing_ok=True)
        if resume and self.checkpoint_path.is_file():
            state = load_state(self.checkpoint_path)
            if state.get("run_hash") != self.run_hash:
                raise RuntimeError(f"{self.checkpoint_path} belongs to run {state.get('run_hash')}, not "
                                   f"{self.run_hash}; delete it or pass resume=False")
            return state
        for name in stale:
            shutil.rmtree(self.path / name, ignore_errors=True)
        return None

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write ``checkpoint.pt`` (atomically), stamped with this run's hash."""
        save_state({**state, "run_hash": self.run_hash}, self.checkpoint_path)

    def write_metrics(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
        """Write ``metrics.csv`` (atomically): one line per row. ``columns`` fixes the columns
        (other keys are left out); by default every key, in order of first appearance. A
        missing or ``None`` value is an empty cell."""
        if columns is None:
            columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        atomic_write_text(self.path / METRICS, buf.getvalue())

    def read_metrics(self, text: Sequence[str] = ("stage",)) -> list[dict[str, Any]]:
        """``metrics.csv`` as rows (``[]`` when absent): empty cells ``None``, ``epoch`` int,
        the ``text`` columns strings, every other column float."""
        p = self.path / METRICS
        if not p.is_file():
            return []
        with open(p, newline="") as fh:
            return [{k: None if v == "" else v if k in text else int(v) if k == "epoch" else float(v)
                     for k, v in r.items()} for r in csv.DictReader(fh)]

    def finish(self, model: Mapping[str, Any], info: Mapping[str, Any], keep_checkpoint: bool = True) -> None:
        """Complete the run: write ``model.pt`` (``model``), drop ``checkpoint.pt`` unless
        ``keep_checkpoint``, and write ``done.json`` (``info`` and the run hash) last."""
        save_state(model, self.model_path)
        if not keep_checkpoint:
            self.checkpoint_path.unlink(missing_ok=True)
        atomic_write_json(self.path / DONE, {**info, "run_hash": self.run_hash})


def train_seconds(run_path: str | Path | None) -> float:
    """Training wall time a finished run recorded in its ``done.json`` (NaN if absent): the
    run's own time, also when it trained in a worker process or was reused from a cache."""
    if run_path is None:
        return float("nan")
    try:
        return float(json.loads((Path(run_path) / DONE).read_text())["wall_s"])
    except (OSError, KeyError, TypeError, ValueError):
        return float("nan")


def open_run(run_dir: str | Path, name: str, spec: Mapping[str, Any]) -> Run:
    """The run of ``spec``: folder ``run_dir / f"{name}-{config_hash(spec)}"`` (not created
    until :meth:`Run.start`)."""
    if not name or "/" in name:
        raise ValueError(f"run name must be a non-empty folder name, got {name!r}")
    spec = dict(spec)
    run_hash = config_hash(spec)
    return Run(Path(run_dir) / f"{name}-{run_hash}", run_hash, spec)


# --------------------------------------------------------------------------------------
# Starting weights
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitWeights:
    """Starting weights of a run and their identity.

    run_hash: the hash of the run that made them (its ``run_hash`` attribute or file key), or
    :func:`weights_hash` of the weights when they carry none; epoch: the epoch of a
    checkpoint file (``None`` when unknown); state: the model's state dict (CPU tensors);
    saved: the whole dict read from ``path`` (``None`` for a module).
    """

    run_hash: str
    epoch: int | None
    state: dict[str, Any] = field(repr=False)
    saved: dict[str, Any] | None = field(default=None, repr=False)
    path: Path | None = None


def init_weights(init: Any, files: Sequence[str] = (MODEL, CHECKPOINT)) -> InitWeights | None:
    """Identity and weights of a starting model; ``None`` for a random initialisation.

    init: ``None`` or a string of :data:`RANDOM_INIT` (random), an ``nn.Module`` (its
    ``run_hash`` attribute, if any, names it), a run folder (the first of ``files`` found in
    it) or a checkpoint file holding ``"model"`` (a state dict) and, for a run of this
    project, ``"run_hash"`` and ``"epoch"``.
    """
    if init is None or (isinstance(init, str) and init.strip().lower() in RANDOM_INIT):
        return None
    if isinstance(init, torch.nn.Module):
        state = {k: v.detach().cpu() for k, v in init.state_dict().items()}
        rh = getattr(init, "run_hash", None)
        return InitWeights(rh if rh is not None else weights_hash(state), None, state)
    p = Path(init)
    if p.is_dir():
        p = next((p / f for f in files if (p / f).is_file()), p / files[0])
    if not p.is_file():
        raise FileNotFoundError(f"init checkpoint not found: {init} (pass a run directory, one of its "
                                f"{' / '.join(files)}, or a model)")
    saved = load_state(p)
    if not isinstance(saved.get("model"), Mapping):
        raise ValueError(f"{p} holds no model weights (no 'model' state dict); is it a u2ad_core checkpoint?")
    rh = saved.get("run_hash")
    return InitWeights(rh if rh is not None else weights_hash(saved["model"]), saved.get("epoch"),
                       dict(saved["model"]), saved, p)
