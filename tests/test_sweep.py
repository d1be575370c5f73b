"""Sweeps (u2ad_core.book.sweep) and results files (u2ad_core.book.results).

The integration tests execute the tiny fixture notebook ``tests/fixtures/sweep_tiny.ipynb``
with papermill on Dask LocalClusters of two single-threaded worker processes on 127.0.0.1
(about 30 s in all on a 2-core machine: each point starts a Jupyter kernel).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from u2ad_core.book import results as R
from u2ad_core.book import sweep as S
from u2ad_core.core.presets import PRESETS, get_preset

FIXTURE = Path(__file__).parent / "fixtures" / "sweep_tiny.ipynb"


# --------------------------------------------------------------------------------------
# results files
# --------------------------------------------------------------------------------------
def test_results_roundtrip_jsonable_and_sweep_copy(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    monkeypatch.delenv(R.SWEEP_ENV, raising=False)
    p = R.write_results(tmp_path / "run", [{"a": np.float32(0.5), "b": float("nan"), "c": np.int64(3),
                                            "d": Path("x/y"), "e": np.arange(2)}], name="t3")
    assert p == tmp_path / "run" / "t3.results.json"
    rows = R.read_results(p)
    assert rows == [{"a": 0.5, "b": None, "c": 3, "d": "x/y", "e": [0, 1]}]
    assert R.find_results(tmp_path / "run") == {"t3": p}
    # one dict is one row; column order is kept
    monkeypatch.setenv(R.SWEEP_ENV, str(tmp_path / "point"))
    p2 = R.write_results(tmp_path / "run", {"z": 1, "a": 2})
    assert list(R.read_results(p2)[0]) == ["z", "a"]
    copy = tmp_path / "point" / "results" / "results.results.json"
    assert R.read_results(copy) == [{"z": 1, "a": 2}]


def test_results_errors(tmp_path):
    with pytest.raises(TypeError, match="every row must be a dict"):
        R.write_results(tmp_path, [1, 2])
    with pytest.raises(ValueError, match="plain file stem"):
        R.write_results(tmp_path, {"a": 1}, name="../x")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a results file"):
        R.read_results(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="results file not found"):
        R.read_results(tmp_path / "missing.results.json")


# --------------------------------------------------------------------------------------
# grid planning (no execution)
# --------------------------------------------------------------------------------------
def test_expand_grid_is_cartesian_in_key_order():
    pts = S.expand_grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(pts) == 6 and pts[0] == {"a": 1, "b": "x"} and pts[-1] == {"a": 2, "b": "z"}
    assert S.expand_grid({"a": 3}) == [{"a": 3}]
    with pytest.raises(ValueError, match="no values"):
        S.expand_grid({"a": []})
    with pytest.raises(ValueError, match="empty"):
        S.expand_grid({})


def test_parse_value_reads_yaml_scalars():
    assert S.parse_value("1") == 1 and S.parse_value("0.1") == 0.1
    assert S.parse_value("true") is True and S.parse_value("eu") == "eu"


def test_plan_routes_dotted_names_to_overrides_and_validates(tmp_path):
    pts = S.plan_sweep(FIXTURE, {"x": [1, 2], "masking.tau": [0.5]}, preset="smoke",
                       overrides={"adapt.epochs": 1}, out=tmp_path)
    assert len(pts) == 2
    inj = pts[0].injected
    assert inj["x"] == 1 and "masking.tau" not in inj
    assert inj["overrides"] == {"adapt.epochs": 1, "masking.tau": 0.5}
    assert inj["run_dir"] == str(tmp_path / "runs" / pts[0].point_id / "run")
    assert set(S.STANDARD_PARAMETERS) <= set(inj)
    # ids are stable and depend on the preset / seed, not on the output folder
    again = S.plan_sweep(FIXTURE, {"x": [1, 2], "masking.tau": [0.5]}, preset="smoke",
                         overrides={"adapt.epochs": 1}, out=tmp_path / "elsewhere")
    assert [p.point_id for p in again] == [p.point_id for p in pts]
    other = S.plan_sweep(FIXTURE, {"x": [1, 2], "masking.tau": [0.5]}, preset="cpu",
                         overrides={"adapt.epochs": 1}, out=tmp_path)
    assert other[0].key != pts[0].key
    with pytest.raises(ValueError, match="not parameters of"):
        S.plan_sweep(FIXTURE, {"tau": [1]}, preset="smoke", out=tmp_path)
    with pytest.raises(KeyError, match="unknown config field"):
        S.plan_sweep(FIXTURE, {"masking.tauu": [1]}, preset="smoke", out=tmp_path)
    with pytest.raises(ValueError, match="cannot be swept"):
        S.plan_sweep(FIXTURE, {"overrides": [{}]}, preset="smoke", out=tmp_path)
    with pytest.raises(FileNotFoundError):
        S.plan_sweep(tmp_path / "nope.ipynb", {"x": [1]}, out=tmp_path)


def test_ablation_grids_are_typed_and_paper_grid_is_table4():
    assert set(PRESETS) == {"smoke", "cpu", "cpu_long", "paper", "paper_ci"}
    grids = {name: get_preset(name).grids.ablation for name in PRESETS}
    paper = grids["paper"]
    assert paper.k_values == (3, 5, 10, 15, 20)
    assert paper.taus == (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    assert paper.mask_ratios[0] == 0.35 and paper.mask_ratios[-1] == 0.95 and len(paper.mask_ratios) == 7
    assert paper.grid_adapt_epochs is None  # never shrunk for the paper preset
    for name, g in grids.items():
        assert get_preset(name).mc.k in g.k_values  # the preset's own K is a grid point
        assert set(g.downsample) == {2, 4} or name == "paper_ci"
        assert "renji_like" in g.table3_cohorts and set(g.control_cohorts) <= set(g.table3_cohorts)
    for name in ("paper", "paper_ci", "smoke"):  # Table 3 and its controls on both clinical cohorts
        assert grids[name].table3_cohorts == grids[name].control_cohorts == (
            "renji_like", "ruijin_like")
    assert grids["cpu"].table3_cohorts == ("renji_like",) and grids["cpu"].grid_adapt_epochs == 2


# --------------------------------------------------------------------------------------
# execution on Dask (LocalCluster, 2 workers, loopback)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    """Two points on a LocalCluster that run_sweep starts itself (workers=2, 127.0.0.1)."""
    out = tmp_path_factory.mktemp("sweep") / "xs"
    res = S.run_sweep(FIXTURE, {"x": [1, 2], "masking.tau": [0.5]}, preset="smoke", out=out,
                      workers=2, verbose=False)
    return out, res


@pytest.fixture(scope="module")
def cluster():
    """An existing cluster (the --scheduler path): 2 single-threaded processes on loopback."""
    import logging

    from dask.distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=None, silence_logs=logging.ERROR)
    yield c
    c.close()


@pytest.mark.slow
def test_two_point_sweep_gathers_both_rows(first_sweep):
    out, res = first_sweep
    assert res.ok and len(res.ran) == 2 and not res.skipped
    t = res.table.sort_values("x")
    assert list(t["x"]) == [1, 2] and list(t["y"]) == [1, 4]
    assert list(t["masking.tau"]) == [0.5, 0.5] and list(t["tau"]) == [0.5, 0.5]  # dotted -> overrides
    assert set(t["omp_threads"]) == {"1"}  # one thread per worker kernel
    assert set(t["preset"]) == {"smoke"}
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("point_id,x,masking.tau,") and len(csv) == 3
    for pid in res.ran:
        assert (out / "runs" / pid / "executed.ipynb").is_file()
        assert json.loads((out / "runs" / pid / "done.json").read_text())["key"]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["workers"] == 2 and summary["rows"] == 2


@pytest.mark.slow
def test_rerun_skips_done_points(first_sweep):
    out, res = first_sweep
    stamps = {pid: (out / "runs" / pid / "executed.ipynb").stat().st_mtime_ns for pid in res.ran}
    again = S.run_sweep(FIXTURE, {"x": [1, 2], "masking.tau": [0.5]}, preset="smoke", out=out,
                        workers=2, verbose=False)
    assert again.ran == [] and sorted(again.skipped) == sorted(res.ran)
    assert sorted(again.table["y"]) == [1, 4]
    assert stamps == {pid: (out / "runs" / pid / "executed.ipynb").stat().st_mtime_ns for pid in res.ran}


@pytest.mark.slow
def test_failing_point_is_reported_and_others_land(cluster, tmp_path):
    grid = {"x": [3], "fail": [False, True]}
    res = S.run_sweep(FIXTURE, grid, preset="smoke", out=tmp_path, scheduler=cluster.scheduler_address,
                      verbose=False)
    assert len(res.failed) == 1 and len(res.ran) == 1
    f = res.failed[0]
    assert f.params == {"x": 3, "fail": True}
    assert f.cell == 4  # the source notebook's 4th cell raises
    assert "asked to fail at x=3" in f.error and "sweep_tiny.ipynb" in f.error
    assert Path(f.executed).is_file()
    assert json.loads((tmp_path / "runs" / f.point_id / "failed.json").read_text())["cell"] == 4
    assert list(res.table["y"]) == [9] and list(res.table["fail"]) == [False]
    # a second run retries only the failed point
    again = S.run_sweep(FIXTURE, grid, preset="smoke", out=tmp_path, scheduler=cluster.scheduler_address,
                        verbose=False)
    assert again.skipped == res.ran and [p.point_id for p in again.failed] == [f.point_id]
    assert not math.isnan(again.seconds)


def _fake_execute(behaviours, calls):
    """execute_notebook stand-in: pops one behaviour per call (an exception to raise, or rows to write)."""
    def fake(src, out, parameters, cwd, kernel_name="python3"):
        calls.append(out)
        what = behaviours.pop(0)
        if isinstance(what, BaseException):
            raise what
        R.write_results(Path(cwd) / "run", what, name="pt")  # SWEEP_ENV is set by run_point
        return 0.1
    return fake


def test_run_point_restarts_a_kernel_that_died_while_starting(tmp_path, monkeypatch, capsys):

    calls = []
    monkeypatch.setattr(S, "execute_notebook", _fake_execute(
        [RuntimeError("Kernel died before replying to kernel_info"), [{"y": 4}]], calls))
    task = {"notebook": str(FIXTURE), "point_dir": str(tmp_path / "p"), "parameters": {}, "cwd": str(tmp_path),
            "point_id": "p0"}
    out = S.run_point(task)
    assert out["status"] == "ok" and out["attempts"] == 2 and len(calls) == 2
    assert out["results"] == {"pt": [{"y": 4}]} and "error" not in out
    assert "did not start" in capsys.readouterr().err
    # it gives up after start_attempts, reporting the last error
    calls.clear()
    monkeypatch.setattr(S, "execute_notebook", _fake_execute(
        [RuntimeError("zmq.error.ZMQError: Address already in use")] * 2, calls))
    out = S.run_point(task)
    assert out["status"] == "failed" and out["attempts"] == 2 and "Address already in use" in out["error"]


def test_run_point_never_reruns_a_failing_cell_or_a_kernel_that_died_later(tmp_path, monkeypatch):
    from u2ad_core.book import build as book

    task = {"notebook": str(FIXTURE), "point_dir": str(tmp_path / "p"), "parameters": {}, "cwd": str(tmp_path),
            "point_id": "p0"}
    for exc in (book.NotebookFailed(FIXTURE, 4, 3, "ValueError", "boom", None), MemoryError("killed")):
        calls = []
        monkeypatch.setattr(S, "execute_notebook", _fake_execute([exc, [{"y": 1}]], calls))
        out = S.run_point(task)
        assert out["status"] == "failed" and out["attempts"] == 1 and len(calls) == 1


def test_cli_registered_and_rejects_unknown_parameter(tmp_path, capsys):
    from u2ad_core.cli import main

    rc = main(["sweep", str(FIXTURE), "-p", "nope", "1", "--preset", "smoke", "--out", str(tmp_path)])
    assert rc == 2
    assert "not parameters of" in capsys.readouterr().err


def test_scheduler_from_the_environment(monkeypatch):
    """u2ad book --scheduler ADDR: every sweep a notebook runs attaches to that cluster."""
    from dask.distributed import LocalCluster

    from u2ad_core.book import sweep as S

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv(S.SCHEDULER_ENV, cluster.scheduler_address)
        with S._client(None, None, 1) as client:
            assert client.scheduler.address == cluster.scheduler_address


def test_children_started_for_a_sweep_do_not_write_onto_the_page(capfd):
    """Workers (and the point kernels they start) inherit stderr; inside a notebook it would be
    captured onto the page: their stderr goes to /dev/null, the caller's own comes back after."""
    import subprocess
    import sys

    from u2ad_core.book import sweep as S

    with S._stderr_of_children_to_devnull():
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child noise')"], check=True)
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('after')"], check=True)
    err = capfd.readouterr().err
    assert "child noise" not in err and "after" in err
