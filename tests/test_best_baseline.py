"""Chapter 10's choice of reconstruction baseline from chapter 09's results files."""

from __future__ import annotations

from u2ad_core.book.results import write_results
from u2ad_core.experiments.best_baseline import best_recon_baseline

ROWS = [
    {"cohort": "renji_like", "strategy": "S1", "model": "DAE", "auroc": 0.61},
    {"cohort": "renji_like", "strategy": "S1", "model": "VAE", "auroc": 0.72},
    {"cohort": "renji_like", "strategy": "S3", "model": "fAnoGAN", "auroc": 0.95},  # not S1
    {"cohort": "ruijin_like", "strategy": "S1", "model": "AnoDDPM", "auroc": 0.90},  # other cohort
    {"cohort": "renji_like", "strategy": "S1", "model": "Z-scoring", "auroc": 0.99},  # not a reconstruction
]


def test_without_chapter_09_results_dae_is_the_default(tmp_path):
    assert best_recon_baseline(tmp_path, "renji_like") == (
        "dae", "chapter 09's results were not found: DAE by default")
    assert best_recon_baseline(tmp_path / "absent", "renji_like")[0] == "dae"


def test_best_s1_auroc_of_the_cohort_among_the_reconstruction_baselines(tmp_path):
    write_results(tmp_path, ROWS, name="baselines")
    assert best_recon_baseline(tmp_path, "renji_like") == ("vae", "best S1 AUROC in chapter 09 (0.720)")
    assert best_recon_baseline(tmp_path, "ruijin_like") == ("anoddpm", "best S1 AUROC in chapter 09 (0.900)")
    # the candidates can be narrowed
    assert best_recon_baseline(tmp_path, "renji_like", methods=("dae",))[0] == "dae"


def test_no_matching_s1_row_falls_back_to_dae(tmp_path):
    write_results(tmp_path, ROWS, name="baselines")
    assert best_recon_baseline(tmp_path, "unknown_cohort") == (
        "dae", "no S1 reconstruction baseline in chapter 09's results: DAE by default")
