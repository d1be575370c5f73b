"""Shared test settings: quiet progress bars, one torch thread, paths to the repo and ../shared."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("U2AD_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` beside the checkout; tests using it skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real MRI not available: {REAL_DATA} is absent (it lives in ../shared beside the checkout)")
    return REAL_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a loaded 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
