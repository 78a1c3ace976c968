"""Offline probing tasks (``wav2brain make-probe-tasks``): HF folders, disjoint splits, determinism.

Every task is made once per module at the ``small`` size (a few seconds) and read back with
``datasets.load_dataset`` offline; negative controls show that the split checks catch leaks.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wav2brain.data.hf_layout import decode_audio
from wav2brain.probing.checks import (
    check_disjoint_splits,
    check_labels_seen,
    check_trials,
    split_overlaps,
)
from wav2brain.probing.tasks import (
    SILENCE,
    SPLITS,
    SUPERB_KEYWORDS,
    TASKS,
    UNKNOWN,
    ProbeTaskConfig,
    check_probe_task,
    check_task_splits,
    load_probe_task,
    make_probe_tasks,
    parse_tasks,
)

SMALL = ProbeTaskConfig.from_size("small")
TINY_ASR = ProbeTaskConfig.from_size("small", asr_utterances=(6, 2, 2), asr_speakers=(2, 1, 1))
"""An ASR task of ten sentences, for the tests of folders rather than of data."""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    return make_probe_tasks(tmp_path_factory.mktemp("tasks"), size="small", seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_cache")


@pytest.fixture(scope="module")
def loaded(made, cache) -> dict[str, tuple]:
    return {task: load_probe_task(folder, cache) for task, folder in made.items()}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_every_task_loads_offline_with_the_agreed_columns(made, loaded):
    assert list(made) == list(TASKS)
    target = {"ks": "label", "ic": "label", "sid": "label", "pr": "phonemes", "asr": "text"}
    for task, (dataset, info, trials) in loaded.items():
        assert list(dataset) == list(SPLITS), task
        features = dataset["train"].features
        assert features["audio"].sampling_rate == 16_000
        assert {"id", "audio", "speaker", "text"} <= set(features), task
        assert info["task"] == task and info["seed"] == 0 and info["size"] == "small"
        assert info["target_column"] == target.get(task, "speaker")
        assert info["sizes"] == {s: dataset[s].num_rows for s in SPLITS}
        assert (trials is not None) == (task == "asv")
        assert (made[task] / "task.json").is_file() and (made[task] / "README.md").is_file()
    ks = loaded["ks"][0]["train"].features["label"]
    assert ks.names == [*SUPERB_KEYWORDS, UNKNOWN, SILENCE]
    assert loaded["sid"][0]["train"].features["label"].names == sorted(
        set(loaded["sid"][0]["train"]["speaker"])
    )
    assert {"action", "object", "location"} <= set(loaded["ic"][0]["train"].features)
    for task, kind in (("ks", "utterance"), ("pr", "ctc"), ("asv", "verification")):
        assert loaded[task][1]["type"] == kind


def test_each_made_folder_passes_its_own_checks(made, cache):
    for folder in made.values():
        check_probe_task(folder, cache)


def test_splits_are_disjoint_by_sentence_utterance_and_speaker(loaded):
    disjoint = {
        "ks": ["speaker"],
        "ic": ["text", "speaker"],
        "sid": ["text", "id"],
        "pr": ["text", "speaker"],
        "asr": ["text", "speaker"],
        "asv": ["text", "speaker"],
    }
    for task, columns in disjoint.items():
        dataset = loaded[task][0]
        assert set(columns) <= set(loaded[task][1]["disjoint_columns"])
        for column in columns:
            assert split_overlaps(dataset, column) == {}, (task, column)
    sid = loaded["sid"][0]
    assert (
        set(sid["validation"]["speaker"])
        == set(sid["test"]["speaker"])
        == set(sid["train"]["speaker"])
    )


def test_a_leaky_split_is_caught_by_the_same_checker(loaded):
    """Negative control: one train row copied into test is named by column and splits."""
    from datasets import DatasetDict, concatenate_datasets

    for task, column in (("sid", "text"), ("asv", "speaker"), ("ks", "speaker"), ("pr", "text")):
        dataset = loaded[task][0]
        leaky = DatasetDict(dataset)
        leaky["test"] = concatenate_datasets([dataset["test"], dataset["train"].select([0])])
        with pytest.raises(
            ValueError, match=f"task '{task}': splits 'train' and 'test' share 1 value"
        ):
            check_task_splits(loaded[task][1], leaky, loaded[task][2])
        assert ("train", "test") in split_overlaps(leaky, column)
    ks = loaded["ks"][0]
    unseen = DatasetDict(
        {"train": ks["train"].filter(lambda row: row["label"] != 0), "test": ks["test"]}
    )
    with pytest.raises(
        ValueError, match=r"task 'ks', split 'test': column 'label' has 1 label\(s\) .*\['yes'\]"
    ):
        check_labels_seen(unseen, "label", task="ks")
    with pytest.raises(ValueError, match="column 'text'"):
        check_disjoint_splits({"train": {"text": ["a b"]}, "test": {"text": ["a b"]}}, "text")
    with pytest.raises(ValueError, match="has no column 'nope'"):
        split_overlaps(loaded["asr"][0], "nope")


def test_unseen_labels_and_bad_trials_are_caught():
    splits = {"train": {"label": [0, 1]}, "test": {"label": [1, 2]}}
    with pytest.raises(ValueError, match=r"split 'test': .* never has: \['2'\] \(first in row 1\)"):
        check_labels_seen(splits, "label", task="ks")
    phones = {"train": {"p": ["a b"]}, "test": {"p": ["b a", "a c"]}}
    with pytest.raises(ValueError, match=r"1 unit\(s\) .*\['c'\] \(first in row 1\)"):
        check_labels_seen(phones, "p", task="pr", tokens=str.split)
    assert check_labels_seen({"train": {"p": ["a b"]}, "test": {"p": ["b"]}}, "p", tokens=str.split)
    test = {"speaker": ["x", "x", "y"]}
    good = {"enrol": [0, 0], "test": [1, 2], "target": [True, False]}
    enrol, probe, target = check_trials(good, test["speaker"])
    assert (
        enrol.tolist() == [0, 0] and probe.tolist() == [1, 2] and target.tolist() == [True, False]
    )
    for bad, message in (
        ({"enrol": [0, 0], "test": [1, 2], "target": [True, True]}, "says target=True"),
        ({"enrol": [0, 0], "test": [1, 3], "target": [True, False]}, "pairs rows 0 and 3"),
        ({"enrol": [0, 1], "test": [1, 0], "target": [True, True]}, "repeats the pair"),
        ({"enrol": [0], "test": [1], "target": [True]}, "both target and non-target"),
        ({"enrol": [0, 0], "test": [1], "target": [True, False]}, "have 2, 1, 2 values"),
        ({"enrol": [0], "test": [1]}, r"lack column\(s\) \['target'\]"),
        ({"enrol": [0, 1], "test": [0, 2], "target": [True, False]}, "pairs rows 0 and 0"),
        ({"enrol": [0, 0], "test": [1, 2], "target": [1, 0]}, "'target' must be bool"),
        ({"enrol": [0.0, 0.0], "test": [1, 2], "target": [True, False]}, "row indices"),
        ({"enrol": [], "test": [], "target": []}, "no trials"),
    ):
        with pytest.raises(ValueError, match=message):
            check_trials(bad, test["speaker"])


def test_classes_are_balanced_in_every_split(loaded):
    for task, per_split in (
        ("ks", SMALL.ks_examples_per_class),
        ("ic", SMALL.ic_utterances_per_intent),
        ("sid", SMALL.sid_utterances_per_speaker),
    ):
        dataset = loaded[task][0]
        n_classes = dataset["train"].features["label"].num_classes
        for split, expected in zip(SPLITS, per_split, strict=True):
            counts = Counter(dataset[split]["label"])
            assert len(counts) == n_classes, (task, split)
            assert set(counts.values()) == {expected}, (task, split, counts)


def test_intent_label_is_its_three_slots(loaded):
    test = loaded["ic"][0]["test"]
    features = test.features
    for row in test.select(range(10)):
        slots = [features[c].int2str(row[c]) for c in ("action", "object", "location")]
        assert features["label"].int2str(row["label"]) == "_".join(slots)


def test_audio_is_16k_float_and_speech_is_heard(loaded):
    dataset = loaded["ks"][0]["test"]
    names = dataset.features["label"].names
    for row in dataset:
        wave = decode_audio(row["audio"], 16_000)
        assert wave.dtype == np.float32 and wave.shape == (16_000,)
        level = float(np.sqrt(np.mean(wave**2)))
        if names[row["label"]] == SILENCE:
            assert row["text"] == "" and row["speaker"] == "" and row["snr_db"] is None
        else:
            assert level > 0.01 and row["snr_db"] in SMALL.ks_snrs_db, row["id"]
    for task in ("ic", "sid", "pr", "asr", "asv"):
        for row in loaded[task][0]["validation"].select(range(4)):
            wave = decode_audio(row["audio"], 16_000)
            assert np.sqrt(np.mean(wave**2)) > 0.01 and row["duration"] == len(wave) / 16_000
            assert row["text"] == row["text"].lower() and row["text"].split()


def test_phonemes_are_space_separated_ipa_and_asv_trials_are_half_target(loaded):
    for row in loaded["pr"][0]["test"]:
        tokens = row["phonemes"].split(" ")
        assert all(tokens) and not any(mark in row["phonemes"] for mark in "ˈˌ_")
    info = loaded["pr"][1]
    train_phones = {p for v in loaded["pr"][0]["train"]["phonemes"] for p in v.split()}
    assert set(info["phoneme_set"]) == train_phones
    trials = loaded["asv"][2]
    assert len(trials["target"]) == SMALL.asv_trials
    assert sum(trials["target"]) == SMALL.asv_trials // 2


def test_same_seed_gives_byte_identical_folders_whatever_else_is_made(made, tmp_path):
    """Each task has its own seed stream: made alone, it is the same bytes as made with all."""
    again = make_probe_tasks(tmp_path / "again", tasks="asv,ks", size="small", seed=0)
    for task in ("ks", "asv"):
        assert shard_bytes(again[task]) == shard_bytes(made[task])
    other = make_probe_tasks(tmp_path / "other", tasks="asv", size="small", seed=1)["asv"]
    name = "data/test-00000-of-00001.parquet"
    assert shard_bytes(other)[name] != shard_bytes(made["asv"])[name]


def test_existing_folders_are_kept_refused_or_replaced_and_never_read_stale(tmp_path, caplog):
    from datasets import load_dataset

    cache = tmp_path / "cache"
    other_seed = dataclasses.replace(TINY_ASR, seed=1)
    first = make_probe_tasks(tmp_path / "out", tasks="asr", config=TINY_ASR)["asr"]
    old_card = (first / "README.md").read_text()
    old_text = load_dataset(str(first), cache_dir=str(cache))["test"]["text"]
    mtime = (first / "README.md").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="wav2brain.probing.tasks"):
        make_probe_tasks(tmp_path / "out", tasks="asr", config=TINY_ASR)
    assert "already holds it, kept" in caplog.text
    assert (first / "README.md").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match=r"'asr' made with other settings \(seed\).*--overwrite"):
        make_probe_tasks(tmp_path / "out", tasks="asr", config=other_seed)
    assert (first / "README.md").read_text() == old_card
    make_probe_tasks(tmp_path / "out", tasks="asr", config=other_seed, overwrite=True)
    assert json.loads((first / "task.json").read_text())["seed"] == 1
    assert not list((tmp_path / "out").glob("*.partial"))
    new_text = load_dataset(str(first), cache_dir=str(cache))["test"]["text"]
    assert list(new_text) != list(old_text)
    # negative control: the old card (old fingerprint) over the new shards brings the stale rows
    (first / "README.md").write_text(old_card)
    stale = load_dataset(str(first), cache_dir=str(cache))["test"]["text"]
    assert list(stale) == list(old_text)


def test_an_interrupted_task_leaves_no_folder_and_is_redone(tmp_path, monkeypatch):
    import wav2brain.probing.tasks as tasks

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks, "_card", crash)
    with pytest.raises(KeyboardInterrupt):
        make_probe_tasks(tmp_path, tasks="asr", config=TINY_ASR)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert make_probe_tasks(tmp_path, tasks="asr", config=TINY_ASR)["asr"].is_dir()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": "ks,er"}, r"unknown probing task\(s\) 'er'; choose from ks, ic, sid"),
        ({"tasks": "ks,ks"}, "repeats a name"),
        ({"tasks": ""}, "tasks must be names"),
        ({"size": "huge"}, r"size must be one of small, default, got 'huge'"),
        ({"config": SMALL, "seed": 3}, "either config or seed / size"),
    ],
)
def test_bad_requests_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_probe_tasks(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ks_speakers": (500, 50, 50)}, "ks_speakers needs 600 distinct speakers"),
        ({"asv_trials": 61}, "asv_trials must be even"),
        ({"asv_trials": 1000}, "distinct same-speaker pairs"),
        ({"ks_noise_kinds": ("violet",)}, "ks_noise_kinds must be drawn from"),
        ({"ks_keywords": ("yes", "cat")}, r"share \['cat'\]"),
        ({"pitches": (50, 120)}, r"pitches must hold integers in \[0, 100\], got 120"),
        ({"ic_sentence_fractions": (0.5, 0.5, 0.5)}, "summing to 1"),
        ({"pr_utterances": (10, 0, 5)}, r"pr_utterances \(validation\) must be an integer >= 1"),
        ({"sid_utterances_per_speaker": (3, 1)}, "one integer per split"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"variants": ("m1", "zz")}, r"no voice variant \['zz'\]"),
        ({"ks_silence_dbfs": -30.0}, "ks_silence_dbfs must be"),
    ],
)
def test_bad_config_fields_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        ProbeTaskConfig.from_size("small", **overrides)


def test_unknown_voice_and_too_long_words_are_named(tmp_path):
    with pytest.raises(ValueError, match="no voice named 'en-xx\\+f1', 'en-xx\\+f2'"):
        make_probe_tasks(tmp_path, config=ProbeTaskConfig.from_size("small", voices=("en-xx",)))
    short = ProbeTaskConfig.from_size(
        "small",
        ks_clip_s=0.2,
        ks_margin_s=0.0,
        rates_wpm=(80,),
        ks_examples_per_class=(1, 1, 1),
        ks_speakers=(1, 1, 1),
    )
    with pytest.raises(ValueError, match=r"longer than ks_clip_s=0.2 s"):
        make_probe_tasks(tmp_path, tasks="ks", config=short)
    assert not (tmp_path / "ks").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        make_probe_tasks(tmp_path / "file", tasks="ks", size="small")


def test_parse_tasks_and_size_names():
    assert parse_tasks("pr, asr") == ("pr", "asr")
    assert SMALL.size_name() == "small"
    assert ProbeTaskConfig(seed=4).size_name() == "default"
    assert ProbeTaskConfig.from_size("small", asv_trials=40).size_name() == "custom"
    assert "ks_snrs_db" in SMALL.task_fields("ks") and "ic_speakers" not in SMALL.task_fields("ks")


def test_command_line(tmp_path, capsys):
    from wav2brain.cli import main

    assert main(["make-probe-tasks", "--out", str(tmp_path), "--tasks", "ks,xx"]) == 2
    assert "unknown probing task(s) 'xx'" in capsys.readouterr().err
    argv = ["make-probe-tasks", "--out", str(tmp_path), "--tasks", "asr", "--size", "small"]
    assert main([*argv, "--seed", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"asr": str(tmp_path / "asr")}
    assert main([*argv, "--seed", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "asr")


def test_breathy_voice_variants_are_reproducible_across_seconds(monkeypatch):
    """espeak seeds its noise generator with the time; speech.py fixes the seed instead."""
    import time

    import wav2brain.simulation.speech as speech

    first = speech.synthesize("go", "en-029+f3", 170, 50).waveform
    time.sleep(1.05)
    assert np.array_equal(speech.synthesize("go", "en-029+f3", 170, 50).waveform, first)
    monkeypatch.setattr(speech, "_RAND_SEED", 1)  # negative control: the seed is what matters
    assert not np.array_equal(speech.synthesize("go", "en-029+f3", 170, 50).waveform, first)


def test_a_folder_that_is_not_a_task_is_refused_not_replaced(tmp_path):
    from wav2brain.probing.tasks import read_task_info

    (tmp_path / "ks").mkdir()
    (tmp_path / "ks" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match=r"ks exists but holds no readable task.json"):
        make_probe_tasks(tmp_path, tasks="ks", size="small")
    assert (tmp_path / "ks" / "mine.txt").read_text() == "user data"
    with pytest.raises(FileNotFoundError, match="is not a probing task folder: no task.json"):
        read_task_info(tmp_path / "ks")


def test_harness_and_task_maker_share_one_rule_and_message(loaded):
    """The same defect gets the same message from make-probe-tasks' check and the harness."""
    from datasets import DatasetDict

    from wav2brain.probing.harness import task_from_splits

    ks, info, _ = loaded["ks"]
    no_yes = DatasetDict(ks)
    no_yes["train"] = ks["train"].filter(lambda row: row["label"] != 0)
    with pytest.raises(ValueError) as maker:
        check_task_splits(info, no_yes)
    with pytest.raises(ValueError) as harness:
        task_from_splits("ks", no_yes)
    assert str(maker.value) == str(harness.value)
    assert "task 'ks', split 'validation': column 'label' has 1 label(s)" in str(maker.value)
    # a phoneme that training never has, caught by both (CTC units, not whole strings)
    pr, info, _ = loaded["pr"]
    unseen = DatasetDict(pr)
    unseen["test"] = pr["test"].map(
        lambda row, k: {"phonemes": row["phonemes"] + (" Q" if k == 1 else "")}, with_indices=True
    )
    with pytest.raises(ValueError) as maker:
        check_task_splits(info, unseen)
    with pytest.raises(ValueError) as harness:
        task_from_splits("pr", unseen)
    assert str(maker.value) == str(harness.value)
    assert "'phonemes' has 1 unit(s) that split 'train' never has: ['Q'] (first in row 1)" in (
        str(maker.value)
    )
    check_task_splits(info, pr)  # negative control: the made task passes
