"""Chapter 13's U2AD scoring from a run's cached Monte-Carlo maps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from u2ad_core.core.config import ModelConfig, ScoreConfig
from u2ad_core.core.presets import get_preset
from u2ad_core.data.datasets import SliceData
from u2ad_core.experiments.beyond import middle_scores, u2ad_scores
from u2ad_core.method.model import EdgeMAE
from u2ad_core.method.scoring import score_dataset
from u2ad_core.method.train import mc_maps
from u2ad_core.metrics import patient_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on 1 thread

SIZE = (64, 24)
PRESET = dataclasses.replace(get_preset("smoke"), score=ScoreConfig(k=2))


def slices(n: int, seed: int) -> SliceData:
    """n slices of n // 2 subjects (two each) with a vertical cord and six segments."""
    rng = np.random.default_rng(seed)
    cord = np.zeros((n, *SIZE), np.uint8)
    cord[:, 4:60, 9:15] = 1
    seg = np.zeros((n, *SIZE), np.uint8)
    for i in range(6):
        seg[:, 8 + 8 * i: 16 + 8 * i] = i + 1
    zeros = np.zeros((n, *SIZE), np.uint8)
    return SliceData(images=rng.random((n, *SIZE)).astype(np.float32), cord=cord, csf=zeros, segments=seg,
                     lesion=zeros, subject=np.array([f"p{seed}-{i // 2}" for i in range(n)]),
                     slice_index=np.arange(n) % 2, slice_offset=np.zeros(n, int),
                     patient_label=np.array([i // 2 % 2 for i in range(n)]),
                     lesion_segments=np.array(["C3-4" if i // 2 % 2 else "" for i in range(n)]))


@pytest.fixture(scope="module")
def model() -> EdgeMAE:
    torch.manual_seed(0)
    return EdgeMAE(ModelConfig(image_size=SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)).eval()


def test_u2ad_scores_take_the_rows_idx_of_the_cached_maps(model, tmp_path):
    data = slices(6, seed=1)
    full = u2ad_scores(model, tmp_path, data, data, np.arange(6), preset=PRESET, device="cpu")
    assert len(list((tmp_path / "mc").glob("*.npz"))) == 1  # the run's cache holds the maps
    idx = np.array([4, 1])
    part = u2ad_scores(model, tmp_path, data, data.subset(idx), idx, preset=PRESET, device="cpu")
    np.testing.assert_array_equal(part.raw_maps, full.raw_maps[idx])
    np.testing.assert_array_equal(part.eu, full.eu[idx])
    mm = mc_maps(tmp_path, data, PRESET, model=model)
    assert mm.cached
    np.testing.assert_array_equal(full.recon, mm.mean.numpy())
    assert len(list((tmp_path / "mc").glob("*.npz"))) == 1  # nothing recomputed


def test_u2ad_scores_use_the_preset_score_config(model, tmp_path):
    data = slices(4, seed=2)
    res = u2ad_scores(model, tmp_path, data, data, np.arange(4), preset=PRESET, device="cpu")
    mm = mc_maps(tmp_path, data, PRESET, model=model)
    ref = score_dataset(model, data, PRESET.score, mc=mm)
    np.testing.assert_array_equal(res.maps, ref.maps)
    assert res.table.equals(ref.table)


def test_middle_scores_are_maps_of_each_set_alone(model, tmp_path):
    data, healthy = slices(4, seed=3), slices(6, seed=4)
    res, h = middle_scores(model, tmp_path, data, healthy, preset=PRESET, device="cpu")
    assert len(list((tmp_path / "mc").glob("*.npz"))) == 2  # one cache entry per set of slices
    ref = u2ad_scores(model, tmp_path, data, data, np.arange(4), preset=PRESET, device="cpu")
    np.testing.assert_array_equal(res.maps, ref.maps)
    h_ref = u2ad_scores(model, tmp_path, healthy, healthy, np.arange(6), preset=PRESET, device="cpu")
    expect = patient_table(h_ref.table)["score"].to_numpy()
    assert h.shape == (3,)  # one score per healthy subject
    np.testing.assert_array_equal(h, expect)


def test_chapter13_rows_read_back_what_chapter13_wrote_and_name_it_when_missing(tmp_path):
    from u2ad_core.book.results import write_results
    from u2ad_core.experiments.beyond import PATIENT_SCORES, chapter13_rows

    with pytest.raises(FileNotFoundError, match="13_beyond_u2ad"):
        chapter13_rows(tmp_path, PATIENT_SCORES)
    write_results(tmp_path, [{"subject": "a", "score": 0.5}, {"subject": "b", "score": float("nan")}],
                  name=PATIENT_SCORES)
    df = chapter13_rows(tmp_path, PATIENT_SCORES)
    assert list(df["subject"]) == ["a", "b"] and df["score"].iloc[0] == 0.5 and np.isnan(df["score"].iloc[1])


def test_largest_lesions_are_lesion_slices_largest_first():
    from u2ad_core.experiments.beyond import largest_lesions

    d = slices(6, seed=2)  # patients 1 (slices 2, 3) have a lesion label
    d.lesion[2, 10:12, 10:12] = 1  # 4 pixels
    d.lesion[3, 10:14, 10:13] = 1  # 12 pixels
    assert list(largest_lesions(d, 2)) == [3, 2]
    assert list(largest_lesions(d, 1)) == [3]
    healthy = d.subset(np.array([0, 1, 4]))  # patients 0 and 2: no lesion label
    assert list(largest_lesions(healthy, 2)) == [0, 1]
    with pytest.raises(ValueError):
        largest_lesions(d, 0)
