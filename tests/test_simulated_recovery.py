"""SIMULATED end-to-end recovery: simulate → prepare → extract (CLI) → the recovery check.

The check (:func:`wav2brain.simulation.recovery.simulated_recovery`) must pass on a correct
pipeline and fail when every run's onset is wrong by half a TR or by one TR, the errors a
tolerance on r cannot see (HRF-filtered features keep about 0.98 of their correlation at half a
TR). The wrong onsets are written into a copy of the BIDS events files, so the error enters
where a real one would, and the same check runs on the result.

Sizing, measured (SIMULATED): 5 subjects (the t over subjects has 4 degrees of freedom), 3
stories of 100 s heard 3 times at a TR of 1.5 s (720 held-out TRs per subject), on the demo's
8-mm grid (54 voxels per subject driven by hidden states of one layer: on the 12-mm grid the same
voxels recur in every subject, so their planted-voxel counts are not independent). The correct
pipeline passes with 0 of 270 planted voxels outside their interval (r within 0.003 of the
oracle fit on the exact layer, which itself falls 0.055 short of the planted regressor's own r:
the ridge's estimation loss with 32 distinct units), and the timing controls detect shifts.
The simulator's drift is linear here, which prepare's automatic drift order (1 for runs under
150 s) removes.
The feature caches of the broken datasets are seeded with the correct one's entries (same model,
audio and grid phases), so only the first extraction runs the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from wav2brain.cli import main
from wav2brain.reports.ground_truth import recovery_rows
from wav2brain.simulation import SimulationConfig, simulate_dataset
from wav2brain.simulation.files import GROUND_TRUTH_DIR
from wav2brain.simulation.recovery import RecoveryConfig, RecoveryResult, simulated_recovery

CONFIG = SimulationConfig(
    n_subjects=5,
    n_stories=3,
    n_runs_per_story=3,
    story_duration_s=100.0,
    tr_s=1.5,
    drift_order=1,
    voxel_size_mm=8.0,
)


def _prepare_and_extract(
    bids: Path, out: Path, name: str, model: Path, seed_cache: Path | None = None
) -> tuple[Path, Path]:
    """prepare (ground-truth mask) → extract through ``wav2brain.cli.main``.

    Every prepared folder gets its own ``name``: datasets 5 serves ``load_dataset(folder,
    config)`` from the Arrow cache of an earlier folder with the same name and card, so
    ``extract`` would read the correct dataset's onsets for a broken copy.
    """
    dataset, features = out / name, out / "features"
    mask = str(bids / GROUND_TRUTH_DIR / "brain_mask.nii.gz")
    prepare = ["prepare", str(bids), "--out", str(dataset), "--mask", mask, "--quiet"]
    assert main(prepare) == 0
    if seed_cache is not None:
        shutil.copytree(seed_cache, features)
    assert main(["extract", str(dataset), "--model", str(model), "--out", str(features)]) == 0
    return dataset, features


def _with_onsets_moved(bids: Path, out: Path, seconds: float) -> Path:
    """A copy of ``bids`` whose events onsets are all ``seconds`` later (a wrong events file)."""
    shutil.copytree(bids, out)
    for path in sorted(out.glob("sub-*/func/*_events.tsv")):
        events = pd.read_csv(path, sep="\t")
        events["onset"] = events["onset"] + seconds
        events.to_csv(path, sep="\t", index=False)
    return out


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "bids", CONFIG)


@pytest.fixture(scope="module")
def model(simulated) -> Path:
    """The ground-truth model, always named by the same path (part of the cache key)."""
    return simulated / GROUND_TRUTH_DIR / "model"


@pytest.fixture(scope="module")
def correct(simulated, model, tmp_path_factory) -> tuple[Path, Path, RecoveryResult]:
    out = tmp_path_factory.mktemp("ok")
    dataset, features = _prepare_and_extract(simulated, out, "dataset_correct", model)
    # the sub-TR-shifted entries join the cache, where the broken datasets find them
    return dataset, features, simulated_recovery(simulated, dataset, features, work_dir=features)


def _broken(simulated, model, correct, tmp_path: Path, onset_error_trs: float) -> RecoveryResult:
    """The same check on a dataset whose every onset is ``onset_error_trs`` TRs late."""
    bids = _with_onsets_moved(simulated, tmp_path / "bids", onset_error_trs * CONFIG.tr_s)
    name = f"dataset_{onset_error_trs:g}_tr_late"
    dataset, features = _prepare_and_extract(bids, tmp_path, name, model, seed_cache=correct[1])
    return simulated_recovery(bids, dataset, features, work_dir=features)


def test_correct_pipeline_passes(correct):
    _, _, result = correct
    assert result.passed and result.failures == ()
    assert result.simulated and result.label == "SIMULATED"
    assert [s.subject for s in result.subjects] == ["001", "002", "003", "004", "005"]
    for subject in result.subjects:
        assert subject.n_planted == 54 and subject.n_noise == 1000 and subject.n_trs > 600
        # the pipeline scores what the same fit on the exact layer scores ...
        assert abs(subject.planted_mean_gap) < 0.02
        # ... which loses to estimation against the planted regressor's own correlation
        assert 0 < subject.planted_mean_signal_r - subject.planted_mean_ceiling < 0.1
        assert subject.planted_median_n_eff < subject.n_trs  # autocorrelation counted
    assert result.planted.passed and result.noise.passed and result.null.passed
    assert 0.0375 <= result.null.rate <= 0.0625
    assert all(row.passed for row in recovery_rows(result))  # the rows of check-simulated
    for control in result.controls:
        assert control.passed and control.df == 4
        assert all(t > control.critical_t for t in control.t.values())
    half = next(c for c in result.controls if c.shift_trs == 0.5)
    # the figure: the true timing's advantage at half a TR is a few hundredths of r
    assert all(0.005 < a < 0.05 for a in half.mean_advantage_r.values())
    assert json.loads(result.to_json()) == result.to_dict()
    assert result.to_dict()["config"]["shifts_trs"] == [0.5, 1.0]


def test_onsets_half_a_tr_late_fail_the_check(simulated, model, correct, tmp_path):
    result = _broken(simulated, model, correct, tmp_path, 0.5)
    assert not result.passed
    half = next(c for c in result.controls if c.shift_trs == 0.5)
    assert not half.passed
    assert half.t["-0.5"] < 0  # moving the onsets back to the truth fits better
    assert any("±0.5 TR" in failure for failure in result.failures)
    assert "encoding.timing_0.5tr" in _failing_rows(result)


def test_onsets_one_tr_late_fail_the_check(simulated, model, correct, tmp_path):
    result = _broken(simulated, model, correct, tmp_path, 1.0)
    assert not result.passed
    one = next(c for c in result.controls if c.shift_trs == 1.0)
    assert not one.passed and one.t["-1"] < 0
    assert "encoding.timing_1tr" in _failing_rows(result)


def test_driven_voxels_counted_as_noise_fail_the_noise_test(simulated, correct, tmp_path):
    """Negative control of the noise test: a ground truth that lists only the unit-driven voxels
    leaves the envelope-, word- and phoneme-driven ones among the noise voxels, where they are
    predicted far more often than the permutation null allows."""
    dataset, features, _ = correct
    truth = tmp_path / "bids" / GROUND_TRUTH_DIR
    shutil.copytree(simulated / GROUND_TRUTH_DIR, truth)
    voxels = pd.read_csv(truth / "voxels.tsv", sep="\t")
    voxels[voxels["feature"] == "unit"].to_csv(truth / "voxels.tsv", sep="\t", index=False)
    config = RecoveryConfig(shifts_trs=(1.0,), max_noise_voxels=None)
    result = simulated_recovery(tmp_path / "bids", dataset, features, config)
    assert not result.passed and not result.noise.passed
    assert result.null.passed and result.planted.passed
    assert result.noise.rate > result.null.rate and result.noise.p_value < 0.01
    assert any("noise voxels" in failure for failure in result.failures)
    assert _failing_rows(result) == ["encoding.noise_rate"]


def _failing_rows(result: RecoveryResult) -> list[str]:
    """The check-simulated rows of ``result`` that fail."""
    return [row.name for row in recovery_rows(result) if not row.passed]


def test_bad_input(simulated, model, correct, tmp_path):
    dataset, features, _ = correct
    with pytest.raises(FileNotFoundError, match="voxels.tsv"):
        simulated_recovery(tmp_path, dataset, features)
    with pytest.raises(FileNotFoundError, match="mask.nii.gz"):
        simulated_recovery(simulated, tmp_path, features)
    with pytest.raises(FileNotFoundError, match="runs.parquet"):
        simulated_recovery(simulated, dataset, tmp_path)
    with pytest.raises(ValueError, match="RecoveryConfig.level"):
        simulated_recovery(simulated, dataset, features, RecoveryConfig(level=0.7))

    one = tmp_path / "dataset_one_subject"
    assert main(["prepare", str(simulated), "--out", str(one), "--subjects", "001", "--quiet",
                 "--mask", str(simulated / GROUND_TRUTH_DIR / "brain_mask.nii.gz")]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="at least 2"):
        simulated_recovery(simulated, one, features)

    stories = tmp_path / "dataset_one_story"
    assert main(["prepare", str(simulated), "--out", str(stories), "--tasks", "story01", "--quiet",
                 "--mask", str(simulated / GROUND_TRUTH_DIR / "brain_mask.nii.gz")]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="at least 2 stories"):
        simulated_recovery(simulated, stories, features)

    partial = tmp_path / "partial_cache"
    partial.mkdir()
    runs = pd.read_parquet(features / "runs.parquet")
    runs.iloc[1:].to_parquet(partial / "runs.parquet")
    with pytest.raises(ValueError, match="without cached features"):
        simulated_recovery(simulated, dataset, partial)

    deeper = tmp_path / "deeper" / GROUND_TRUTH_DIR
    shutil.copytree(simulated / GROUND_TRUTH_DIR, deeper)
    pairs = pd.read_csv(deeper / "planted_pairs.tsv", sep="\t")
    pairs["layer"] = 7
    pairs.to_csv(deeper / "planted_pairs.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"planted layers \['layer_07'\]"):
        simulated_recovery(tmp_path / "deeper", dataset, features)

    other = tmp_path / "other" / GROUND_TRUTH_DIR
    shutil.copytree(simulated / GROUND_TRUTH_DIR, other)
    _reinitialise(other / "model")
    with pytest.raises(ValueError, match="another model"):
        simulated_recovery(tmp_path / "other", dataset, features)


def _reinitialise(path: Path) -> None:
    """Overwrite the model saved at ``path`` with freshly initialised weights (same config)."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(123)
    AutoModel.from_config(AutoConfig.from_pretrained(path)).save_pretrained(path)
