"""The simulated Narratives-layout dataset: layout, ground truth, determinism, bad input, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from wav2brain.commands import simulate as simulate_command
from wav2brain.simulation import (
    GROUND_TRUTH_DIR,
    ClusterSpec,
    PlantedUnit,
    SimulationConfig,
    simulate_dataset,
)
from wav2brain.simulation import dataset as simulate_module

SMALL = dict(n_subjects=1, n_stories=1, story_duration_s=4.0, post_stimulus_s=6.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The test-size default with two scans of each story (exercises the run entity)."""
    out = tmp_path_factory.mktemp("sim") / "ds"
    return simulate_dataset(out, SimulationConfig(n_runs_per_story=2))


def _truth(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / GROUND_TRUTH_DIR / name, sep="\t")


def _residual(values: np.ndarray, order: int = 2) -> np.ndarray:
    """``values`` [T, ...] minus its least-squares fit by polynomials up to ``order`` (detrending)."""
    basis = np.polynomial.legendre.legvander(np.linspace(-1, 1, values.shape[0]), order)
    coef, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return values - basis @ coef


def _detrended_runs(root: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """sub-001's BOLD (% change, detrended per run, [T, V]), the planted regressors detrended the
    same way ({feature: [T]}), both over all its runs, and the in-brain voxel ijk [V, 3]."""
    mask = nib.load(root / GROUND_TRUTH_DIR / "brain_mask.nii.gz").get_fdata() > 0
    bold, features = [], []
    for path in sorted((root / "sub-001" / "func").glob("*_bold.nii.gz")):
        task = path.name.split("_task-")[1].split("_")[0]
        data = nib.load(path).get_fdata()[mask].T
        bold.append(_residual(100 * (data / data.mean(axis=0) - 1)))
        table = _truth(root, f"task-{task}_regressors.tsv").drop(columns=["volume", "time_s"])
        features.append(pd.DataFrame(_residual(table.to_numpy()), columns=table.columns))
    design = pd.concat(features, ignore_index=True)
    return np.concatenate(bold), {k: design[k].to_numpy() for k in design}, np.argwhere(mask)


def test_layout_matches_narratives(dataset):
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert "SIMULATED" in description["Name"]
    assert "SIMULATED" in (dataset / "README").read_text()
    participants = pd.read_csv(dataset / "participants.tsv", sep="\t")
    assert list(participants["participant_id"]) == ["sub-001", "sub-002"]
    assert set(participants["task"]) == {"story01,story02"}
    stories = _truth(dataset, "stories.tsv").set_index("task")
    for task, story in stories.iterrows():
        wav = dataset / "stimuli" / f"{task}_audio.wav"
        info = sf.info(wav)
        assert info.samplerate == 22050 and info.channels == 1 and info.subtype == "PCM_16"
        for subject in ("sub-001", "sub-002"):
            for run in (1, 2):
                stem = dataset / subject / "func" / f"{subject}_task-{task}_run-{run}"
                sidecar = json.loads(Path(f"{stem}_bold.json").read_text())
                assert sidecar["RepetitionTime"] == 1.5 and sidecar["TaskName"] == task
                events = pd.read_csv(f"{stem}_events.tsv", sep="\t")
                assert list(events.columns) == ["onset", "duration", "trial_type", "stim_file"]
                assert set(events["stim_file"]) == {wav.name}
                image = nib.load(f"{stem}_bold.nii.gz")
                assert image.header.get_zooms() == (12.0, 12.0, 12.0, 1.5)
                assert image.shape[-1] == story["n_trs"]
                wav_end = story["audio_onset_s"] + info.duration
                assert image.shape[-1] * 1.5 >= wav_end
        story_row = events[events["trial_type"] == "story"].iloc[0]
        assert story_row["onset"] == pytest.approx(story["audio_onset_s"] + story["story_offset_s"])
        assert story_row["duration"] == pytest.approx(story["story_duration_s"])
    lead_ins = dict(zip(stories.index, stories["lead_in"], strict=True))
    assert lead_ins == {"story01": "music", "story02": "silence"}
    music = pd.read_csv(dataset / "sub-001/func/sub-001_task-story01_run-1_events.tsv", sep="\t")
    assert list(music["trial_type"]) == ["music", "story"]
    assert music["onset"].tolist()[0] == 0.0 and music["duration"].tolist()[0] == 6.0
    silence = pd.read_csv(dataset / "sub-001/func/sub-001_task-story02_run-1_events.tsv", sep="\t")
    assert list(silence["trial_type"]) == ["story"] and silence["onset"][0] == 3.0


def test_lead_in_music_is_audible_and_story_follows(dataset):
    wave, rate = sf.read(dataset / "stimuli" / "story01_audio.wav")
    music, gap = wave[: 6 * rate], wave[int(6.2 * rate) : int(7.8 * rate)]
    assert np.sqrt(np.mean(music**2)) > 0.05
    assert np.abs(gap).max() < 1e-3


def test_gentle_alignment_round_trips(dataset):
    from wav2brain.data.alignments import read_gentle_json

    stories = _truth(dataset, "stories.tsv").set_index("task")
    for task, story in stories.iterrows():
        alignment = read_gentle_json(dataset / "stimuli" / "gentle" / task / "align.json")
        assert len(alignment.words) == story["n_words"]
        assert len(alignment.phonemes) == story["n_phonemes"]
        assert alignment.words[0].start >= story["story_offset_s"]
        duration = sf.info(dataset / "stimuli" / f"{task}_audio.wav").duration
        assert alignment.words[-1].end <= duration
        transcript = (dataset / "stimuli" / "gentle" / task / "transcript.txt").read_text()
        assert alignment.words[0].label in transcript


@pytest.mark.filterwarnings("error::UserWarning")
def test_discover_runs_reads_the_dataset(dataset):
    from wav2brain.data.bids import discover_runs

    runs = discover_runs(dataset)
    assert len(runs) == 2 * 2 * 2
    stories = _truth(dataset, "stories.tsv").set_index("task")
    for spec in runs:
        story = stories.loc[spec.task]
        assert spec.tr == 1.5 and spec.run in ("1", "2")
        assert spec.stimulus_path == dataset / "stimuli" / f"{spec.task}_audio.wav"
        assert spec.alignment_path == dataset / "stimuli" / "gentle" / spec.task / "align.json"
        assert spec.onset == pytest.approx(story["audio_onset_s"])
        assert spec.story_offset == pytest.approx(story["story_offset_s"])
        assert spec.duration == pytest.approx(story["story_offset_s"] + story["story_duration_s"])
    assert {spec.onset for spec in runs} == {0.0, 3.0}


def test_planted_features_drive_their_clusters_only(dataset):
    voxels = _truth(dataset, "voxels.tsv")
    bold, regressors, ijk = _detrended_runs(dataset)
    index = {tuple(v): n for n, v in enumerate(ijk)}
    driven = np.array([index[tuple(v)] for v in voxels[["i", "j", "k"]].to_numpy()])
    noise_only = np.setdiff1d(np.arange(ijk.shape[0]), driven)

    def correlations(feature: str, columns: np.ndarray) -> np.ndarray:
        x = regressors[feature] - regressors[feature].mean()
        y = bold[:, columns] - bold[:, columns].mean(axis=0)
        return (x @ y) / np.sqrt((x @ x) * (y**2).sum(axis=0))

    observed = np.zeros(len(voxels))
    for feature, rows in voxels.groupby("regressor"):
        observed[rows.index] = correlations(feature, driven[rows.index])
        strong = rows.index[rows["target_noise_ceiling"] > 0.6]
        if strong.size:
            assert observed[strong].mean() > 0.3, feature
    noise_level = {f: np.abs(correlations(f, noise_only)).mean() for f in regressors}
    assert max(noise_level.values()) < 0.15, noise_level
    assert observed.mean() > 3 * max(noise_level.values())
    # detrending removes part of the (slow) signal, so r sits below the ceiling but follows it
    assert np.corrcoef(observed, voxels["target_noise_ceiling"])[0, 1] > 0.5


def test_noise_ceilings_are_consistent(dataset):
    voxels = _truth(dataset, "voxels.tsv")
    target = nib.load(dataset / GROUND_TRUTH_DIR / "target_noise_ceiling.nii.gz").get_fdata()
    clusters = nib.load(dataset / GROUND_TRUTH_DIR / "clusters.nii.gz").get_fdata()
    ijk = tuple(voxels[["i", "j", "k"]].to_numpy().T)
    np.testing.assert_allclose(target[ijk], voxels["target_noise_ceiling"], rtol=1e-5)
    assert (target[clusters == 0] == 0).all() and (clusters[ijk] > 0).all()
    low, high = SimulationConfig().ceiling_range
    assert (
        low <= voxels["target_noise_ceiling"].min() < voxels["target_noise_ceiling"].max() <= high
    )
    expected = voxels["weight"] / np.sqrt(voxels["weight"] ** 2 + 1.0)  # noise SD 1 %
    np.testing.assert_allclose(voxels["target_noise_ceiling"], expected, rtol=1e-5)
    for subject in ("sub-001", "sub-002"):
        realised = nib.load(dataset / GROUND_TRUTH_DIR / f"{subject}_noise_ceiling.nii.gz")
        values = realised.get_fdata()[ijk]
        assert np.corrcoef(values, voxels["target_noise_ceiling"])[0, 1] > 0.7
        assert (realised.get_fdata()[clusters == 0] == 0).all()
    cluster_table = _truth(dataset, "clusters.tsv")
    assert cluster_table["n_voxels"].sum() == len(voxels) and (cluster_table["n_voxels"] > 0).all()


def test_saved_model_reproduces_the_planted_unit(dataset):
    from nilearn.glm.first_level import compute_regressor
    from transformers import Wav2Vec2Model

    from wav2brain.features.extract import ExtractionConfig, extract_activations

    model = Wav2Vec2Model.from_pretrained(dataset / GROUND_TRUTH_DIR / "model")
    wave, rate = sf.read(dataset / "stimuli" / "story02_audio.wav", dtype="float32")
    activations = extract_activations(model, wave, ExtractionConfig(layers=(2,)), rate)
    unit = activations["layer_02"][:, 5]  # extract's defaults are the simulator's chunking
    stories = _truth(dataset, "stories.tsv").set_index("task")
    onset = stories.loc["story02", "audio_onset_s"]
    frames = (np.arange(unit.size) * 320 + 200) / 16000 + onset
    times = np.arange(stories.loc["story02", "n_trs"]) * 1.5
    condition = np.vstack([frames - 0.01, np.full(unit.size, 0.02), unit])
    expected = compute_regressor(condition, "glover", times, oversampling=150)[0][:, 0]
    planted = _truth(dataset, "task-story02_regressors.tsv")["hidden_states_layer2_unit5"]
    assert np.corrcoef(expected, planted)[0, 1] > 0.999


def test_same_seed_gives_identical_files(tmp_path):
    first = simulate_dataset(tmp_path / "a", SimulationConfig(seed=7, **SMALL))
    second = simulate_dataset(tmp_path / "b", SimulationConfig(seed=7, **SMALL))
    other = simulate_dataset(tmp_path / "c", SimulationConfig(seed=8, **SMALL))
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    bold = "sub-001/func/sub-001_task-story01_bold.nii.gz"
    a = nib.load(first / bold).get_fdata()
    c = nib.load(other / bold).get_fdata()
    assert a.shape[:3] == c.shape[:3] and not np.array_equal(a[..., :5], c[..., :5])


def test_existing_folder_is_refused_then_replaced(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"exists and is not empty.*--overwrite"):
        simulate_dataset(out, SimulationConfig(**SMALL))
    assert (out / "keep.txt").read_text() == "precious"
    simulate_dataset(out, SimulationConfig(**SMALL), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "dataset_description.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        simulate_dataset(tmp_path / "file", SimulationConfig(**SMALL), overwrite=True)


def test_interrupted_run_leaves_nothing_and_is_redone(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(simulate_module, "write_ground_truth", crash)
        with pytest.raises(KeyboardInterrupt):
            simulate_dataset(tmp_path / "ds", SimulationConfig(**SMALL))
    assert list(tmp_path.iterdir()) == []
    killed = tmp_path / ".ds.partial-killed"  # what a SIGKILL would leave
    (killed / "sub-001").mkdir(parents=True)
    simulate_dataset(tmp_path / "ds", SimulationConfig(**SMALL))
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": "1"}, "seed must be an integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"n_subjects": 0}, "n_subjects"),
        ({"n_stories": 2.0}, "n_stories"),
        ({"story_duration_s": -5.0}, "story_duration_s"),
        ({"story_duration_s": float("nan")}, "story_duration_s"),
        ({"voxel_size_mm": "12"}, "voxel_size_mm"),
        ({"tr_s": 0}, "tr_s"),
        ({"noise_ar1": 1.0}, "noise_ar1"),
        ({"rate_jitter": 1.5}, "rate_jitter"),
        ({"ceiling_range": (0.9, 0.3)}, "ceiling_range"),
        ({"ceiling_range": (0.2, 1.0)}, "ceiling_range"),
        ({"lead_ins": ("music", "applause")}, "lead_ins"),
        ({"voices": ()}, "voices"),
        ({"voices": "en-us"}, "voices"),
        ({"seed": np.int64(3)}, "seed must be an integer"),
        ({"rates_wpm": (500,)}, "rates_wpm"),
        ({"hrf_model": "fir"}, "hrf_model"),
        ({"clusters": ()}, "at least one ClusterSpec"),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "unit", (PlantedUnit(3, 0),)),)},
            r"layer must be an integer in \[0, 2\]",
        ),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "unit", (PlantedUnit(1, 32),)),)},
            r"unit must be an integer in \[0, 32\) for hidden_states",
        ),
        (
            {
                "clusters": (
                    ClusterSpec(
                        "a", (0, 0, 0), 10, "unit", (PlantedUnit(1, 64, "ffn_intermediate"),)
                    ),
                )
            },
            r"unit must be an integer in \[0, 64\) for ffn_intermediate",
        ),
        (
            {
                "clusters": (
                    ClusterSpec(
                        "a", (0, 0, 0), 10, "unit", (PlantedUnit(0, 1, "attention_output"),)
                    ),
                )
            },
            r"layer must be an integer in \[1, 2\] for attention_output",
        ),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "unit", (PlantedUnit(1, 1, "keys"),)),)},
            "unit tensor must be one of",
        ),
        ({"clusters": (ClusterSpec("a", (0, 0, 0), 10, "unit"),)}, "must name at least one"),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "envelope", (PlantedUnit(1, 1),)),)},
            "must name at least one PlantedUnit for feature 'unit' and none",
        ),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "unit", (PlantedUnit(1, 1),) * 2),)},
            "repeats a unit",
        ),
        ({"clusters": (ClusterSpec("a", (0, 0, 0), 10, "unit", ((1, 2),)),)}, "PlantedUnit values"),
        ({"transformer_init_std": 0.0}, "transformer_init_std"),
        ({"clusters": (ClusterSpec("a", (0, 0, 0), 10, "pitch"),)}, "feature must be one of"),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "envelope", labels=("s",)),)},
            "labels must be None or a non-empty tuple",
        ),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "phoneme_onset", labels=()),)},
            "labels must be None or a non-empty tuple",
        ),
        (
            {"clusters": (ClusterSpec("a", (0, 0, 0), 10, "envelope"),) * 2},
            "names must be unique",
        ),
    ],
)
def test_bad_config_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**overrides)


def test_bad_size_and_config_type(tmp_path):
    with pytest.raises(ValueError, match="size must be one of"):
        SimulationConfig.from_size("huge")
    with pytest.raises(ValueError, match="must be a SimulationConfig"):
        simulate_dataset(tmp_path / "x", {"seed": 1})
    demo = SimulationConfig.from_size("demo", n_subjects=5)
    assert demo.n_subjects == 5 and demo.story_duration_s * demo.n_stories >= 600
    assert not (tmp_path / "x").exists()


def test_unknown_voice_is_refused_before_any_work(tmp_path):
    config = SimulationConfig(voices=("en-us", "xx-nowhere"), **SMALL)
    with pytest.raises(ValueError, match="no voice named 'xx-nowhere'"):
        simulate_dataset(tmp_path / "ds", config)
    assert list(tmp_path.iterdir()) == []


def test_cluster_outside_the_brain_is_refused(tmp_path):
    outside = (ClusterSpec("nowhere", (0.0, 0.0, 300.0), 5.0, "envelope"),)
    with pytest.raises(ValueError, match=r"clusters \['nowhere'\] hold no brain voxel"):
        simulate_dataset(tmp_path / "ds", SimulationConfig(clusters=outside, **SMALL))
    assert list(tmp_path.iterdir()) == []


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wav2brain")
    simulate_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_simulates_and_refuses_a_full_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["simulate", "--out", str(out), "--seed", "3", "--subjects", "1", "--stories", "1"]
    argv += ["--story-duration", "4"]
    args = _parse(argv)
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads((out / GROUND_TRUTH_DIR / "simulation.json").read_text())["config"]
    assert config["seed"] == 3 and config["n_subjects"] == 1 and config["story_duration_s"] == 4.0
    with pytest.raises(ValueError, match="--overwrite"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parse(["simulate", "--out", str(out), "--seed", "abc"])
    with pytest.raises(SystemExit):
        _parse(["simulate", "--out", str(out), "--size", "huge"])
