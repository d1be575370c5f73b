"""The run store: folder per hashed spec, exact resume after an interruption, reuse of a done
run, init identity, atomic writes; and a baseline resumes through it like U2AD does."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from u2ad_core.core import runstore
from u2ad_core.core.config import config_hash
from u2ad_core.core.presets import get_preset
from u2ad_core.core.runtime import make_generator

SPEC = {"format": 1, "method": "toy", "lr": 0.1, "seed": 0}


class Interrupt(RuntimeError):
    pass


def toy_fit(run_dir, spec=SPEC, epochs=4, stop_after=None, resume=True, reuse=True):
    """A tiny resumable training written against the store: a seeded linear regression,
    checkpointed after every epoch; ``stop_after`` raises once that many epochs are done.
    Returns (run, weights, history, reused)."""
    run = runstore.open_run(run_dir, "toy", {**spec, "epochs": epochs})
    if reuse and run.done:
        return run, runstore.load_state(run.model_path)["model"], run.read_metrics(), True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9)
    g = make_generator(spec["seed"])
    history, start = [], 0
    state = run.start(resume, config={"who": "test"}, stale=("maps",))
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        start, history = state["epoch"], list(state["history"])
    (run.path / "maps").mkdir(exist_ok=True)
    for epoch in range(start, epochs):
        x = torch.randn(8, 3, generator=g)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"epoch": epoch, "stage": "fit", "loss": float(loss.detach()), "note": None})
        run.write_metrics(history)
        run.save_checkpoint({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "generator": g.get_state(), "history": history})
        if stop_after == epoch + 1:
            raise Interrupt
    run.finish({"model": model.state_dict()}, {"epochs": epochs})
    return run, model.state_dict(), history, False


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_follows_the_spec(tmp_path):
    run = runstore.open_run(tmp_path, "toy", SPEC)
    assert run.path == tmp_path / f"toy-{config_hash(SPEC)}" and run.run_hash == config_hash(SPEC)
    assert not run.path.exists() and not run.done  # nothing on disk until the run starts
    assert runstore.open_run(tmp_path, "toy", dict(reversed(SPEC.items()))).path == run.path
    assert runstore.open_run(tmp_path, "toy", {**SPEC, "lr": 0.2}).path != run.path
    with pytest.raises(ValueError, match="run name"):
        runstore.open_run(tmp_path, "a/b", SPEC)


def test_resume_after_an_interruption_is_exact(tmp_path):
    _, full, full_hist, _ = toy_fit(tmp_path / "full")
    with pytest.raises(Interrupt):
        toy_fit(tmp_path / "part", stop_after=2)
    run = runstore.open_run(tmp_path / "part", "toy", {**SPEC, "epochs": 4})
    assert not run.done and not (run.path / "done.json").exists()
    assert runstore.load_state(run.checkpoint_path)["epoch"] == 2 and len(run.read_metrics()) == 2
    _, resumed, hist, reused = toy_fit(tmp_path / "part")
    assert not reused and same(full, resumed) and hist == full_hist
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2, 3]


def test_fresh_start_ignores_the_checkpoint_and_drops_stale_outputs(tmp_path):
    with pytest.raises(Interrupt):
        toy_fit(tmp_path, stop_after=2)
    run = runstore.open_run(tmp_path, "toy", {**SPEC, "epochs": 4})
    (run.path / "maps" / "old.npz").write_bytes(b"x")
    assert run.start(resume=False, stale=("maps",)) is None and not (run.path / "maps").exists()
    with pytest.raises(Interrupt):  # a fresh start trains from epoch 0 again
        toy_fit(tmp_path, stop_after=1, resume=False)
    assert runstore.load_state(run.checkpoint_path)["epoch"] == 1


def test_a_done_run_is_reused_and_its_history_read_back(tmp_path):
    run, w, hist, reused = toy_fit(tmp_path)
    assert not reused and run.done
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoint.pt", "config.json", "done.json", "maps",
                                                           "metrics.csv", "model.pt"]
    again, w2, hist2, reused2 = toy_fit(tmp_path)
    assert reused2 and again.path == run.path and same(w, w2)
    assert hist2 == hist  # epoch int, stage str, loss float, empty cell None
    assert isinstance(hist2[0]["epoch"], int) and hist2[0]["note"] is None
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg == {"who": "test", "run_hash": run.run_hash, "spec": run.spec}
    done = json.loads((run.path / "done.json").read_text())
    assert done == {"epochs": 4, "run_hash": run.run_hash}
    # a changed spec is another run, beside the first
    other, *_ = toy_fit(tmp_path, spec={**SPEC, "lr": 0.05})
    assert other.path != run.path and run.done and other.done
    # reuse=False retrains in the same folder
    assert not toy_fit(tmp_path, reuse=False, resume=False)[3]


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    a, *_ = toy_fit(tmp_path)
    b = runstore.open_run(tmp_path, "toy", {**SPEC, "lr": 0.3, "epochs": 4})
    b.path.mkdir()
    shutil.copy(a.checkpoint_path, b.checkpoint_path)
    with pytest.raises(RuntimeError, match="belongs to run"):
        b.start()
    assert b.start(resume=False) is None


def test_write_metrics_columns(tmp_path):
    rows = [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5, "gan": 2.0}]
    run = runstore.Run(tmp_path, "h", {})
    run.write_metrics(rows)  # every key, in order of first appearance; missing -> empty
    assert (tmp_path / "metrics.csv").read_text() == "epoch,loss,gan\n0,1.0,\n1,0.5,2.0\n"
    assert run.read_metrics()[0] == {"epoch": 0, "loss": 1.0, "gan": None}
    run.write_metrics(rows, columns=("epoch", "stage", "loss"))  # fixed columns, others left out
    assert (tmp_path / "metrics.csv").read_text() == "epoch,stage,loss\n0,,1.0\n1,,0.5\n"


def test_init_identity_distinguishes_starting_weights(tmp_path):
    assert runstore.init_weights(None) is None and runstore.init_weights("scratch") is None
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        b.weight.add_(1.0)
    ia, ib = runstore.init_weights(a), runstore.init_weights(b)
    assert ia.run_hash != ib.run_hash and len(ia.run_hash) == 16
    assert runstore.init_weights(a).run_hash == ia.run_hash and same(ia.state, a.state_dict())
    a.run_hash = "named"
    assert runstore.init_weights(a).run_hash == "named"
    # a run folder: its model.pt (run hash and epoch), else its checkpoint.pt
    run, w, _, _ = toy_fit(tmp_path)
    runstore.save_state({"model": w, "run_hash": run.run_hash, "epoch": 4}, run.model_path)
    iw = runstore.init_weights(run.path)
    assert (iw.run_hash, iw.epoch, iw.path) == (run.run_hash, 4, run.model_path) and same(iw.state, w)
    run.model_path.unlink()
    ic = runstore.init_weights(run.path)
    assert ic.path == run.checkpoint_path and ic.epoch == 4
    with pytest.raises(FileNotFoundError, match="init checkpoint"):
        runstore.init_weights(run.path, files=("model.pt",))
    # a foreign file without a run hash is named by its weights
    runstore.save_state({"model": b.state_dict()}, tmp_path / "foreign.pt")
    assert runstore.init_weights(tmp_path / "foreign.pt").run_hash == ib.run_hash
    runstore.save_state({"weights": b.state_dict()}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="no model weights"):
        runstore.init_weights(tmp_path / "odd.pt")
    # other starting weights, another run
    specs = [{**SPEC, "init": {"run_hash": i.run_hash}} for i in (ia, ib)]
    assert runstore.open_run(tmp_path, "t", specs[0]).path != runstore.open_run(tmp_path, "t", specs[1]).path


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    runstore.save_state({"epoch": 1}, target)
    real_save = torch.save

    def dies_half_way(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as fh:
            fh.truncate(10)  # a partial file...
        raise KeyboardInterrupt  # ...and the process is stopped

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        runstore.save_state({"epoch": 2}, target)
    with pytest.raises(KeyboardInterrupt):
        runstore.save_state({"epoch": 2}, tmp_path / "model.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert runstore.load_state(target)["epoch"] == 1  # the previous version, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no partial or temporary file
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        runstore.load_state(tmp_path / "bad.pt")


# ------------------------------------------------------------------ every method resumes through the store
@pytest.mark.parametrize("method", ["dae", "cddpm", "dal"])
def test_baseline_resumes_exactly(method, tmp_path):
    from u2ad_core.baselines import BASELINES, fit_run

    p = get_preset("smoke")
    p = replace(p, baselines=replace(p.baselines, pretrain_epochs=3, batch_size=4, width=4, levels=4,
                                     checkpoint_every=1))
    rng = np.random.default_rng(0)
    cord = np.zeros((6, 32, 32), np.uint8)
    cord[:, 4:28, 12:20] = 1
    data = SimpleNamespace(images=np.clip(rng.uniform(0.1, 0.3, cord.shape) + 0.4 * cord, 0, 1).astype(np.float32),
                           cord=cord)
    m = BASELINES[method]

    def step(model, opts, x, roi, g, cfg, info):
        if info.epoch == 2:
            raise Interrupt
        return m.train_step(model, opts, x, roi, g, cfg, info)

    full = fit_run(m, p, data, "cpu", 0, tmp_path / "full", show_progress=False)
    with pytest.raises(Interrupt):
        fit_run(replace(m, train_step=step), p, data, "cpu", 0, tmp_path / "part", show_progress=False)
    (run_path,) = (tmp_path / "part" / "baselines").iterdir()
    assert run_path.name == full.run_path.name and not (run_path / "done.json").exists()
    assert runstore.load_state(run_path / "checkpoint.pt")["epoch"] == 2
    resumed = fit_run(m, p, data, "cpu", 0, tmp_path / "part", show_progress=False)
    assert not resumed.reused and not (run_path / "checkpoint.pt").exists()
    assert same(full.model.state_dict(), resumed.model.state_dict())
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    again = fit_run(m, p, data, "cpu", 0, tmp_path / "part", show_progress=False)
    assert again.reused and [r["loss"] for r in again.history] == [r["loss"] for r in full.history]
