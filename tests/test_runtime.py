import json

import pytest

from u2ad_core.book import widgets
from u2ad_core.book.notebook import setup
from u2ad_core.core.runtime import atomic_path, atomic_write_json, make_generator, resolve_device


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_generator_replays():
    import torch

    a = torch.rand(5, generator=make_generator(3))
    b = torch.rand(5, generator=make_generator(3))
    assert torch.equal(a, b)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda", "mps"}
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_interact_is_static_when_headless(monkeypatch):
    monkeypatch.setenv("U2AD_HEADLESS", "1")
    seen = {}
    widgets.interact(lambda k, kind, idx: seen.update(k=k, kind=kind, idx=idx),
                     k=(3, 21, 2), kind=["eu", "au"], idx=(0, 10))
    assert seen["k"] in range(3, 22)
    assert seen["kind"] == "eu" and seen["idx"] == 5
    widgets.interact(lambda k: seen.update(k2=k), defaults={"k": 10}, k=(3, 21, 2))
    assert seen["k2"] == 10


def test_setup_resolves_paths_per_preset(tmp_path):
    ctx = setup(preset="smoke", device="cpu", seed=7, data_dir=tmp_path / "d", run_dir=tmp_path / "r",
                overrides={"pretrain.epochs": 1}, show=False)
    assert ctx.data_dir == tmp_path / "d" / "smoke" and ctx.data_dir.is_dir()
    assert ctx.preset.seed == 7 and ctx.preset.pretrain.epochs == 1
    assert ctx.header()["preset"] == "smoke"
