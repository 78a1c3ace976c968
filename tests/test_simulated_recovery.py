"""SIMULATED end-to-end recovery (issue 4): simulate → prepare → extract → encode via the CLI.

Voxels driven by a planted hidden unit must reach held-out r within 0.05 of their true (held-out
oracle) ceiling with the encoding model of the planted layer, and noise-only voxels must stay at
chance. See :mod:`wav2brain.simulation.recovery` for the ceiling and layer choices.

Sizing, measured: with the simulator's default model (32 units per layer) the planted voxels fall
short of their oracle ceiling by a ridge estimation loss that shrinks with training TRs (about
-0.03 on average with ~640 training TRs, -0.02 with ~780 here; largest for the lowest ceilings,
since the loss grows like ``(units / TRs) (1 - r^2) / r``). Four stories of 240 s at a TR of 1 s
(about 260 TRs each, ~780 training TRs per fold) keep every planted voxel within the tolerance
while the whole module runs in about 25 s on one core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wav2brain.cli import main
from wav2brain.simulation import SimulationConfig, simulate_dataset
from wav2brain.simulation.files import GROUND_TRUTH_DIR
from wav2brain.simulation.recovery import held_out_oracle, simulated_recovery

CONFIG = SimulationConfig(n_subjects=2, n_stories=4, story_duration_s=240.0, tr_s=1.0)
ALPHAS = [str(a) for a in np.logspace(-1, 4, 8)]


def _pipeline(bids: Path, out: Path, drift_order: int) -> pd.DataFrame:
    """prepare (ground-truth mask) → extract → encode through ``wav2brain.cli.main``."""
    truth = bids / GROUND_TRUTH_DIR
    dataset, cache, encoded = out / "dataset", out / "features", out / "encoding"
    mask = str(truth / "brain_mask.nii.gz")
    prepare = ["prepare", str(bids), "--out", str(dataset), "--mask", mask, "--quiet"]
    assert main([*prepare, "--drift-order", str(drift_order)]) == 0
    assert (
        main(["extract", str(dataset), "--model", str(truth / "model"), "--out", str(cache)]) == 0
    )
    encode = ["encode", str(dataset), "--features", str(cache), "--out", str(encoded)]
    assert main([*encode, "--alphas", *ALPHAS]) == 0
    return pd.read_parquet(encoded / "scores.parquet")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "bids", CONFIG)


@pytest.fixture(scope="module")
def recovered(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    # the simulator plants Legendre drift up to CONFIG.drift_order: remove that much
    scores = _pipeline(simulated, out, CONFIG.drift_order)
    return out / "dataset", scores


def test_planted_voxels_reach_their_ceiling_and_noise_stays_at_chance(simulated, recovered):
    dataset, scores = recovered
    result = simulated_recovery(simulated, dataset, scores)
    assert set(result["subjects"]) == {"001", "002"}
    for subject in result["subjects"].values():
        n_trs = subject["n_trs"]
        assert subject["n_planted"] == 10 and subject["n_noise"] > 900 and n_trs > 250
        assert subject["driven_max_gap"] <= 0.05 and subject["driven_within"] == 1.0
        assert abs(subject["noise_mean_r"]) < 1 / np.sqrt(n_trs)
        assert subject["noise_above_chance"] <= 0.01  # 3 SD: 0.13 % expected by chance
        assert subject["passed"]
    assert result["passed"] and result["planted_within"] == 1.0
    # noise |r| of a mean over 4 folds of ~260 TRs: E|r| = sqrt(2/pi)/sqrt(4 * 260) = 0.025
    assert result["noise_mean_abs_r"] < 0.05


def test_check_fails_on_misaligned_scores(simulated, recovered):
    dataset, scores = recovered
    shifted = scores.copy()
    shifted["voxel"] = (shifted["voxel"] + 1) % (shifted["voxel"].max() + 1)
    result = simulated_recovery(simulated, dataset, shifted)
    assert not result["passed"] and result["planted_within"] < 0.5


def test_linear_detrend_leaves_the_planted_drift(simulated, tmp_path):
    """With a linear detrend only, the simulator's quadratic drift stays in the data: it lowers
    the true ceilings and lets slow feature components predict drift in noise voxels."""
    scores = _pipeline(simulated, tmp_path, drift_order=1)
    result = simulated_recovery(simulated, tmp_path / "dataset", scores)
    assert not result["passed"]


def test_bad_input(simulated, recovered, tmp_path):
    dataset, scores = recovered
    with pytest.raises(FileNotFoundError, match="voxels.tsv"):
        simulated_recovery(tmp_path, dataset, scores)
    with pytest.raises(FileNotFoundError, match="mask.nii.gz"):
        simulated_recovery(simulated, tmp_path, scores)
    with pytest.raises(ValueError, match="planted layers"):
        simulated_recovery(simulated, dataset, scores[scores["layer"] != "layer_02"])
    bold = {"a": np.zeros((5, 2))}
    with pytest.raises(ValueError, match="stories"):
        held_out_oracle(bold, {"b": np.zeros((5, 2))})


def test_held_out_oracle_is_mean_correlation_over_folds():
    rng = np.random.default_rng(0)
    signal = {k: rng.standard_normal((50, 3)) for k in "ab"}
    bold = {k: signal[k] + rng.standard_normal((50, 3)) for k in "ab"}
    expected = np.mean(
        [[np.corrcoef(signal[k][:, v], bold[k][:, v])[0, 1] for v in range(3)] for k in "ab"],
        axis=0,
    )
    np.testing.assert_allclose(held_out_oracle(bold, signal), expected, atol=1e-6)
