"""``wav2brain extract`` on a tiny prepared folder (written with the real hf_layout writers)."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from wav2brain.commands import extract
from wav2brain.data.hf_layout import (
    RESPONSES,
    STIMULI,
    CardText,
    DatasetSummary,
    RunSummary,
    StimulusSummary,
    response_table,
    stimulus_table,
    write_card,
    write_shard,
)

RUNS = (  # subject, stimulus, TR (s), onset (s), TRs
    ("01", "alpha", 1.5, 3.0, 10),
    ("02", "alpha", 1.52, 0.0, 9),
    ("03", "alpha", 1.5, 0.0, 8),  # same grid as subject 01 (onsets 2 TRs apart)
    ("01", "beta", 1.5, 1.0, 6),
)


def write_folder(root, runs, references=None):
    """A prepared folder: stimuli alpha (5 s) and beta (3 s), ``runs`` of 3 voxels.

    ``references`` maps a run's position in ``runs`` to its slice-time reference (s; default 0).
    """
    rng = np.random.default_rng(0)
    waves = {"alpha": 5.0, "beta": 3.0}
    stimuli = []
    for sid, seconds in waves.items():
        wave = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
        write_shard(stimulus_table(sid, wave, None), root / STIMULI / f"{sid}.parquet")
        stimuli.append(StimulusSummary(f"{STIMULI}/{sid}.parquet", sid, seconds, 0, 0))
    summaries = []
    for position, (subject, sid, tr, onset, n_trs) in enumerate(runs):
        meta = dict(
            subject=subject,
            session=None,
            task=sid,
            run="1",
            stimulus_id=sid,
            onset=onset,
            tr=tr,
            slice_time_reference=(references or {}).get(position, 0.0),
            space="MNI",
        )
        shard = f"{RESPONSES}/sub-{subject}_task-{sid}.parquet"
        bold = rng.standard_normal((n_trs, 3)).astype(np.float32)
        write_shard(response_table(meta, bold, np.array([], int)), root / shard)
        summaries.append(RunSummary(shard, subject, sid, "1", None, sid, "MNI", n_trs, 3, tr, 0))
    summary = DatasetSummary(stimuli=stimuli, runs=summaries, mask={"n_voxels": 3})
    write_card(root, summary, CardText(pretty_name="Tiny"))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Stimuli alpha (5 s) and beta (3 s) and the four :data:`RUNS`, 3 voxels each."""
    return write_folder(tmp_path_factory.mktemp("prepared"), RUNS)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep ``load_dataset``'s Arrow cache inside the test folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture
def passes(monkeypatch):
    """Counts model passes (calls of iter_activations made by the pipeline)."""
    from wav2brain.features import pipeline

    calls = []
    original = pipeline.iter_activations

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "iter_activations", counting)
    return calls


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wav2brain")
    extract.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["extract", *argv])
    return args.func(args)


def test_extract_writes_cache_and_index_then_reuses_it(dataset, model_dir, tmp_path, passes):
    out = tmp_path / "features"
    argv = [
        str(dataset),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--chunk-seconds",
        "2",
        "--context-seconds",
        "1",
    ]
    assert main(argv) == 0
    assert len(passes) == 2  # one model pass per stimulus, whatever the number of grids
    index = pd.read_parquet(out / "index.parquet")
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(set(index["path"])) == 3  # alpha at TR 1.5 and 1.52, beta at TR 1.5 phase 0.5
    assert set(index["layer"]) == {"layer_01", "layer_02"} and set(index["units"]) == {32}
    assert list(index.columns[:3]) == ["stimulus_id", "tr", "phase_s"]
    assert len(runs) == 4 and set(runs["subject"]) == {"01", "02", "03"}
    alpha = runs[runs["stimulus_id"] == "alpha"].set_index("subject")
    assert alpha.loc["01", "path"] == alpha.loc["03", "path"] != alpha.loc["02", "path"]
    assert alpha.loc["01", "row_offset"] == alpha.loc["03", "row_offset"] - 2
    from wav2brain.features.cache import open_entry

    entry = open_entry(out / index["path"].iloc[0])
    assert entry.grid.n_rows == index["n_trs"].iloc[0]
    assert not list(out.rglob("*.partial"))
    assert main(argv) == 0
    assert len(passes) == 2  # second run: cache hits only, no model work
    pd.testing.assert_frame_equal(pd.read_parquet(out / "index.parquet"), index)
    assert main([*argv, "--stimuli", "beta"]) == 0  # a selection keeps the other stimuli's rows
    assert len(passes) == 2
    for name, full in (("index", index), ("runs", runs)):
        merged = pd.read_parquet(out / f"{name}.parquet")
        pd.testing.assert_frame_equal(
            merged.sort_values(["stimulus_id", "path"]).reset_index(drop=True),
            full.sort_values(["stimulus_id", "path"]).reset_index(drop=True),
        )


def test_tables_grow_with_selections_and_bad_old_tables_are_named(
    dataset, model_dir, tmp_path, passes
):
    out = tmp_path / "features"
    argv = [str(dataset), "--model", str(model_dir), "--out", str(out), "--layers", "1"]
    assert main([*argv, "--stimuli", "beta"]) == 0
    assert main([*argv, "--stimuli", "alpha"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(zip(runs["subject"], runs["stimulus_id"], strict=True)) == sorted(
        (subject, sid) for subject, sid, *_ in RUNS
    )
    assert set(pd.read_parquet(out / "index.parquet")["stimulus_id"]) == {"alpha", "beta"}
    (out / "runs.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"runs.parquet: unreadable table .* delete it"):
        main([*argv, "--stimuli", "beta"])
    assert len(passes) == 2  # refused before any model work


def test_extract_fir_layers_and_stimulus_selection(dataset, model_dir, tmp_path, passes):
    out = tmp_path / "fir"
    assert (
        main(
            [
                str(dataset),
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--method",
                "fir",
                "--downsample",
                "average",
                "--delays",
                "1",
                "2",
                "--layers",
                "2",
                "--tensor",
                "ffn_intermediate",
                "--stimuli",
                "beta",
            ]
        )
        == 0
    )
    index = pd.read_parquet(out / "index.parquet")
    assert set(index["stimulus_id"]) == {"beta"} and set(index["layer"]) == {"layer_02"}
    assert set(index["units"]) == {64}  # the feed-forward intermediate of the tiny model
    assert len(passes) == 1


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--stimuli", "gamma"], ValueError, r"--stimuli \['gamma'\] not in"),
        (["--method", "fir", "--delays", "1", "1"], ValueError, "TRGridConfig.delays"),
        (["--chunk-seconds", "0"], ValueError, "chunk_seconds"),
        (["--layers", "7"], ValueError, "7"),
    ],
)
def test_bad_arguments_fail_before_model_work(
    dataset, model_dir, tmp_path, passes, argv, error, message
):
    with pytest.raises(error, match=message):
        main([str(dataset), "--model", str(model_dir), "--out", str(tmp_path / "o"), *argv])
    assert passes == [] and not (tmp_path / "o" / "index.parquet").exists()


def test_missing_dataset_or_model_is_named(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared dataset folder"):
        main([str(tmp_path / "nowhere"), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        main([str(dataset), "--model", str(tmp_path), "--out", str(tmp_path / "o")])


NO_CHECKPOINT = [  # --model (and options), the error and its message; {cwd} is the test's folder
    (
        ["./nope/model"],
        FileNotFoundError,
        "--model ./nope/model does not exist (relative to {cwd})",
    ),
    (["~nobody-here/m"], FileNotFoundError, "--model ~nobody-here/m does not exist"),
    (
        ["nope/model/dir"],
        ValueError,
        "--model nope/model/dir: not a folder here (relative to {cwd}) and not a Hub id owner/name",
    ),
    (
        ["someone/tiny"],  # offline (conftest): the Hub cannot be reached
        FileNotFoundError,
        "--model someone/tiny is not a folder here, and the Hub could not be reached or has no "
        "such model (OSError: ",
    ),
    (["someone/tiny", "--revision", "v1"], FileNotFoundError, "such model at revision v1 ("),
]


@pytest.mark.parametrize("model, error, message", NO_CHECKPOINT)
def test_a_model_spec_that_names_no_checkpoint_fails_in_one_line_before_model_work(
    dataset, tmp_path, monkeypatch, passes, capsys, model, error, message
):
    import re

    from huggingface_hub import constants

    from wav2brain.cli import main as wav2brain

    assert constants.HF_HUB_OFFLINE  # no test reaches the Hub
    monkeypatch.chdir(tmp_path)
    argv = [str(dataset), "--model", *model, "--out", str(tmp_path / "o")]
    with pytest.raises(error, match=re.escape(message.format(cwd=tmp_path))) as raised:
        main(argv)
    assert "\n" not in str(raised.value)
    capsys.readouterr()
    assert wav2brain(["extract", *argv]) == 2
    err = "\n" + capsys.readouterr().err  # the last line (after the datasets progress bars)
    assert err.endswith(f"\nwav2brain extract: error: {raised.value}\n")
    assert passes == [] and not (tmp_path / "o").exists()


def test_a_folder_that_is_no_loadable_checkpoint_is_named(dataset, model_dir, tmp_path):
    argv = [str(dataset), "--out", str(tmp_path / "o"), "--model"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="file is not a checkpoint folder: no config.json"):
        main([*argv, str(tmp_path / "file")])
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="config-only: cannot load it \\(OSError: "):
        main([*argv, str(config_only)])


def test_folders_here_or_under_home_and_hub_ids_are_model_specs(model_dir, monkeypatch):
    from wav2brain.features.extract import checkpoint_path

    monkeypatch.chdir(model_dir.parent)
    monkeypatch.setenv("HOME", str(model_dir.parent))
    name = model_dir.name
    assert checkpoint_path(f"./{name}") == checkpoint_path(name) == name
    assert checkpoint_path(f"~/{name}") == str(model_dir)
    assert checkpoint_path("someone/tiny") == "someone/tiny"  # for the Hub, unchanged
    assert checkpoint_path("tiny") == "tiny"


def test_a_model_folder_under_home_is_extracted(dataset, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(model_dir.parent))
    out = tmp_path / "o"
    assert main([str(dataset), "--model", f"~/{model_dir.name}", "--out", str(out)]) == 0
    assert (out / "index.parquet").is_file()


def test_runs_with_bad_timing_are_named_before_model_work(dataset, model_dir, tmp_path, passes):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    meta = dict(
        subject="03",
        session=None,
        task="alpha",
        run="1",
        stimulus_id="alpha",
        onset=0.0,
        tr=0.0,
        space="MNI",
    )
    shard = bad / RESPONSES / "sub-03_task-alpha.parquet"  # same row count as the card says
    write_shard(response_table(meta, np.zeros((8, 3), np.float32), np.array([], int)), shard)
    with pytest.raises(ValueError, match="sub-03 task-alpha run-1 has TR 0.0 s"):
        main([str(bad), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert passes == []


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The real path: a SIMULATED BIDS dataset (one subject, one 8-s story) made by prepare."""
    import warnings

    from wav2brain.data.prepare import prepare_dataset
    from wav2brain.simulation import SimulationConfig, simulate_dataset

    root = tmp_path_factory.mktemp("simulated")
    config = SimulationConfig(n_subjects=1, n_stories=1, story_duration_s=8.0, post_stimulus_s=4.0)
    simulate_dataset(root / "bids", config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a constant voxel dropped by prepare
        return prepare_dataset(root / "bids", root / "hf", progress=False)


def test_extract_on_a_simulated_prepared_dataset_aligns_runs(simulated, model_dir, tmp_path):
    from datasets import load_dataset
    from transformers import Wav2Vec2Model

    from wav2brain.data.hf_layout import decode_audio
    from wav2brain.features.cache import open_entry
    from wav2brain.features.extract import extract_activations
    from wav2brain.features.hrf import frames_to_trs
    from wav2brain.features.pipeline import RunTiming, run_features
    from wav2brain.features.resample import TRGridConfig

    out = tmp_path / "features"
    assert main([str(simulated), "--model", str(model_dir), "--out", str(out)]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    stimuli = load_dataset(str(simulated), "stimuli", split="train")
    assert len(runs) == 1 and runs["onset"].iloc[0] >= 0
    run = runs.iloc[0]
    entry = open_entry(out / run["path"])
    features = run_features(
        entry, RunTiming(run["tr"], run["onset"]), int(run["n_trs"]), TRGridConfig()
    )
    wave = decode_audio(stimuli[0]["audio"])
    frames = extract_activations(Wav2Vec2Model.from_pretrained(model_dir), wave)
    for layer, value in frames.items():
        direct = frames_to_trs(value, 50.0, run["tr"], int(run["n_trs"]), run["onset"])
        np.testing.assert_allclose(features[layer], direct, atol=1e-5 * np.abs(direct).max())
    silent = int(np.floor(run["onset"] / run["tr"])) + 1  # TRs sampled before the story starts
    assert np.all(features["layer_01"][:silent] == 0) and np.any(features["layer_01"][silent:])


def test_each_run_is_sampled_at_its_own_slice_time_reference(model_dir, tmp_path, passes):
    from datasets import load_dataset
    from transformers import Wav2Vec2Model

    from wav2brain.data.hf_layout import decode_audio
    from wav2brain.data.timing import sample_times
    from wav2brain.features.cache import open_entry
    from wav2brain.features.extract import extract_activations
    from wav2brain.features.hrf import resample_frames
    from wav2brain.features.pipeline import RunTiming, run_features
    from wav2brain.features.resample import TRGridConfig

    runs = (
        ("01", "alpha", 1.5, 0.0, 8),  # acquisition start: samples at 1.5 k s
        ("02", "alpha", 1.5, 0.75, 8),  # story 0.75 s later, sampled mid-TR: the same times
        ("03", "alpha", 1.5, 0.0, 8),  # sampled mid-TR: 0.75 s later than subject 01
    )
    dataset = write_folder(tmp_path / "prepared", runs, references={1: 0.75, 2: 0.75})
    out = tmp_path / "features"
    assert main([str(dataset), "--model", str(model_dir), "--out", str(out), "--layers", "1"]) == 0
    table = pd.read_parquet(out / "runs.parquet").set_index("subject")
    assert table["slice_time_reference"].to_dict() == {"01": 0.0, "02": 0.75, "03": 0.75}
    assert table.loc["01", "path"] == table.loc["02", "path"] != table.loc["03", "path"]
    assert table.loc["01", "row_offset"] == table.loc["02", "row_offset"]
    assert len(pd.read_parquet(out / "index.parquet")) == 2  # two sub-TR phases: 0 and 0.75 s
    assert len(passes) == 1  # one model pass for both grids

    stimuli = load_dataset(str(dataset), "stimuli", split="train")
    frames = extract_activations(
        Wav2Vec2Model.from_pretrained(model_dir), decode_audio(stimuli[0]["audio"])
    )["layer_01"]
    for subject, row in table.iterrows():
        timing = RunTiming(row["tr"], row["onset"], row["slice_time_reference"])
        entry = open_entry(out / row["path"])
        grid = timing.grid(8)
        assert np.array_equal(
            grid.times(), sample_times(np.arange(8), 1.5, row["onset"], timing.reference_s)
        )
        ours = run_features(entry, timing, 8, TRGridConfig(), ["layer_01"])["layer_01"]
        direct = resample_frames(
            frames, 50.0, 1.5, 8, row["onset"], TRGridConfig(), timing.reference_s
        )
        np.testing.assert_allclose(ours, direct, atol=1e-5 * np.abs(direct).max(), err_msg=subject)
    first, late = (
        run_features(open_entry(out / table.loc[s, "path"]), RunTiming(1.5, 0.0, ref), 8,
                     TRGridConfig(), ["layer_01"])["layer_01"]
        for s, ref in (("01", 0.0), ("03", 0.75))
    )  # fmt: skip
    assert not np.allclose(first, late)  # the negative control: the reference matters


def test_a_folder_prepared_before_the_reference_column_extracts_at_zero(
    model_dir, tmp_path, caplog
):
    from test_windows import drop_reference_column

    dataset = write_folder(tmp_path / "old", RUNS[:1])
    drop_reference_column(dataset)
    out = tmp_path / "features"
    with caplog.at_level("WARNING", logger="wav2brain.data.timing"):
        assert (
            main([str(dataset), "--model", str(model_dir), "--out", str(out), "--layers", "1"]) == 0
        )
    assert "no slice_time_reference column" in caplog.text
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs["slice_time_reference"].tolist() == [0.0]
