"""The probing harness: upstreams, the feature cache, bad input, each task type end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from probe_fixtures import SR, make_tasks
from wav2brain.probing import downstream as downstream_module
from wav2brain.probing import features as features_module
from wav2brain.probing.downstream import (
    CTCConfig,
    DownstreamConfig,
    UtteranceConfig,
    VerificationConfig,
)
from wav2brain.probing.features import (
    FbankConfig,
    FbankUpstream,
    ProbeFeatureCache,
    check_upstream,
    load_upstream,
    mel_filters,
)
from wav2brain.probing.harness import (
    ProbeConfig,
    check_frames,
    load_task,
    probe_task,
    task_features,
    task_from_splits,
)

FAST = ProbeConfig(
    seeds=(0, 1),
    downstream=DownstreamConfig(
        utterance=UtteranceConfig(epochs=30),
        ctc=CTCConfig(head="linear", epochs=25, learning_rate=1e-2, batch_size=8),
    ),
)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return make_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def fbank():
    return load_upstream("fbank")


def _splits(tasks_dir: Path, name: str):
    from datasets import load_dataset

    return load_dataset(str(tasks_dir / name))


class Counter:
    """Counts calls of a wrapped function."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


# ---------------------------------------------------------------- upstreams


def test_fbank_frames_and_band():
    upstream = FbankUpstream()
    assert upstream.n_frames(16000) == 98 and upstream.n_frames(399) == 0
    assert upstream.dim == 240 and upstream.n_layers == 1
    t = np.arange(SR) / SR
    (block,) = upstream.stream(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert block.shape == (98, 1, 240)
    centres = mel_filters(FbankConfig()).argmax(axis=1) * SR / 512
    loudest = int(block[:, 0, :80].mean(0).argmax())
    assert abs(centres[loudest] - 1000) < 100  # the band holding the tone is the loudest
    with pytest.raises(ValueError, match="shorter than the fbank window"):
        next(upstream.stream(np.zeros(100, np.float32)))


def test_non_wav2vec2_upstream_is_refused_naming_model_type(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValueError, match="model_type 'bert'"):
        check_upstream(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="upstream .*empty is not a checkpoint folder"):
        check_upstream(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="upstream .*missing does not exist"):
        check_upstream(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="upstream no/such/model: not a folder here .* not a Hub"):
        check_upstream("no/such/model")
    with pytest.raises(FileNotFoundError, match="upstream nobody/no-model is not a folder here"):
        check_upstream("nobody/no-model")  # the tests run offline: the Hub cannot be reached


def test_upstream_kinds_are_accepted(model_dir, tiny_kwargs, tmp_path):
    from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    assert check_upstream("fbank") == "fbank"
    assert check_upstream(str(model_dir)) == "wav2vec2"
    brain = Wav2Vec2ForBrainEncoding(
        Wav2Vec2BrainEncodingConfig(num_voxels=3, head_hidden_size=8, **tiny_kwargs)
    )
    brain.save_pretrained(tmp_path / "brain")
    brain.save_backbone(tmp_path / "backbone")
    assert check_upstream(str(tmp_path / "brain")) == "wav2vec2-brain-encoding"
    upstream = load_upstream(str(tmp_path / "brain"))
    assert upstream.n_layers == tiny_kwargs["num_hidden_layers"] + 1
    exported = load_upstream(str(tmp_path / "backbone"))
    wave = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    np.testing.assert_allclose(
        np.concatenate(list(upstream.stream(wave))),
        np.concatenate(list(exported.stream(wave))),
        atol=1e-5,
    )


def test_transformers_features_are_the_hidden_states(model_dir):
    import torch
    from transformers import Wav2Vec2Model

    upstream = load_upstream(str(model_dir))
    wave = np.random.default_rng(1).normal(0, 0.1, 12000).astype(np.float32)
    ours = np.concatenate(list(upstream.stream(wave)))
    model = Wav2Vec2Model.from_pretrained(model_dir).eval()
    with torch.no_grad():
        hidden = model(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
    theirs = torch.stack(hidden, dim=2)[0].numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# ---------------------------------------------------------------- bad input


def test_missing_column_names_task_split_and_column(tasks_dir):
    splits = _splits(tasks_dir, "ks")
    splits["validation"] = splits["validation"].remove_columns("label")
    with pytest.raises(ValueError, match=r"task 'ks', split 'validation': columns \['label'\]"):
        task_from_splits("ks", splits)
    splits = _splits(tasks_dir, "pr")
    with pytest.raises(ValueError, match=r"columns \['text'\] missing"):
        task_from_splits("pr", splits, target_column="text")
    del splits["test"]
    with pytest.raises(ValueError, match=r"splits \['test'\] missing"):
        task_from_splits("pr", splits)


def test_unseen_evaluation_label_is_named(tasks_dir):
    splits = _splits(tasks_dir, "ks")
    splits["train"] = splits["train"].filter(lambda row: row["label"] != 3)
    with pytest.raises(
        ValueError, match=r"split 'validation': column 'label' has 1 label\(s\) .*\['down'\]"
    ):
        task_from_splits("ks", splits)


def test_unseen_ctc_unit_is_named(tasks_dir):
    splits = _splits(tasks_dir, "pr")
    splits["test"] = splits["test"].map(
        lambda row, k: {"phonemes": row["phonemes"] + (" ʒ" if k == 2 else "")}, with_indices=True
    )
    with pytest.raises(
        ValueError, match=r"split 'test': column 'phonemes' .*\['ʒ'\] \(first in row 2\)"
    ):
        task_from_splits("pr", splits)


def test_empty_target_and_non_audio_column(tasks_dir):
    splits = _splits(tasks_dir, "asr")
    splits["train"] = splits["train"].map(
        lambda row, k: {"text": "" if k == 4 else row["text"]}, with_indices=True
    )
    with pytest.raises(ValueError, match=r"split 'train': column 'text' is empty in rows \[4\]"):
        task_from_splits("asr", splits)
    splits = _splits(tasks_dir, "ks")
    test = splits["test"].remove_columns("audio")
    splits["test"] = test.add_column("audio", ["x.wav"] * test.num_rows)
    with pytest.raises(ValueError, match="column 'audio' is Value, expected datasets.Audio"):
        task_from_splits("ks", splits)


def test_verification_trials_are_checked(tasks_dir, tmp_path):
    import pandas as pd

    splits = _splits(tasks_dir, "asv")
    with pytest.raises(FileNotFoundError, match="needs test trials"):
        task_from_splits("asv", splits)
    trials = pd.read_parquet(tasks_dir / "asv" / "trials.parquet")
    bad = trials.assign(test=trials["test"] + 100)
    with pytest.raises(ValueError, match=r"trial 0 pairs rows \d+ and 101; expected two different"):
        task_from_splits("asv", splits, trials=bad)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['target'\]"):
        task_from_splits("asv", splits, trials=trials.drop(columns="target"))
    with pytest.raises(ValueError, match="both target and non-target"):
        task_from_splits("asv", splits, trials=trials[trials["target"]])


def test_unknown_type_and_folder(tasks_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("nope", tasks_dir)
    splits = _splits(tasks_dir, "ks")
    with pytest.raises(ValueError, match="unknown type"):
        task_from_splits("custom", splits)


def test_ctc_audio_too_short_for_its_target(tasks_dir, fbank):
    splits = _splits(tasks_dir, "pr")
    splits["test"] = splits["test"].map(
        lambda row, k: {"phonemes": " ".join(["a"] * 80) if k == 1 else row["phonemes"]},
        with_indices=True,
    )
    task = task_from_splits("pr", splits)
    with pytest.raises(ValueError, match=r"split 'test', row 1: \d+ frames .* for 159 CTC steps"):
        check_frames(task, fbank)


def test_bad_input_errors_come_before_any_extraction(tasks_dir, tmp_path, monkeypatch):
    from wav2brain.probing.compare import compare_upstreams

    counter = Counter(FbankUpstream.stream)
    monkeypatch.setattr(FbankUpstream, "stream", counter)
    bad = tmp_path / "tasks"
    make_tasks(bad, names=("ks",))
    meta = json.loads((bad / "ks" / "task.json").read_text())
    (bad / "ks" / "task.json").write_text(json.dumps({**meta, "target_column": "intent"}))
    with pytest.raises(ValueError, match="columns \\['intent'\\] missing"):
        compare_upstreams(["fbank"], ["ks"], tmp_path / "out", tasks_dir=bad)
    assert counter.calls == 0


# ---------------------------------------------------------------- cache


def test_second_run_does_no_model_work(tasks_dir, model_dir, tmp_path, monkeypatch):
    calls = Counter(features_module.iter_activations)
    monkeypatch.setattr(features_module, "iter_activations", calls)
    upstream = load_upstream(str(model_dir))
    task = load_task("ks", tasks_dir)
    cache = ProbeFeatureCache(tmp_path / "cache")
    first = task_features(upstream, task, cache)
    n_rows = sum(len(f) for f in first.values())
    assert calls.calls == n_rows
    again = task_features(load_upstream(str(model_dir)), load_task("ks", tasks_dir), cache)
    assert calls.calls == n_rows  # nothing recomputed
    for split, entry in again.items():
        assert isinstance(entry.data, np.memmap)
        np.testing.assert_array_equal(entry.data, first[split].data)
    # negative control: other audio (another seed) is another key
    other = make_tasks(tmp_path / "other", names=("ks",), seed=5)
    task_features(upstream, load_task("ks", other), cache)
    assert calls.calls == 2 * n_rows


def test_damaged_entry_is_rebuilt(tasks_dir, fbank, tmp_path):
    task = load_task("pr", tasks_dir)
    cache = ProbeFeatureCache(tmp_path / "cache")
    first = task_features(fbank, task, cache)
    assert first["train"].kind == "frames"
    assert first["train"].lengths().sum() == len(first["train"].data)
    data = first["train"].path / "data.bin"
    reference = np.array(first["train"].data)
    with data.open("r+b") as handle:
        handle.truncate(100)
    rebuilt = task_features(fbank, task, cache)["train"]
    np.testing.assert_array_equal(rebuilt.data, reference)
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_settings_enter_the_key(tasks_dir, tmp_path):
    task = load_task("ks", tasks_dir)
    cache = ProbeFeatureCache(tmp_path / "cache")
    a = task_features(FbankUpstream(), task, cache)["test"]
    b = task_features(FbankUpstream(FbankConfig(n_mels=40)), task, cache)["test"]
    c = task_features(FbankUpstream(), task, cache, storage_dtype="float16")["test"]
    assert len({a.path, b.path, c.path}) == 3
    assert b.data.shape[-1] == 120 and c.data.dtype == np.float16


# ---------------------------------------------------------------- end to end


def test_fbank_learns_keywords_well_above_chance(tasks_dir, fbank, tmp_path):
    result = probe_task(fbank, load_task("ks", tasks_dir), tmp_path / "cache", FAST)
    assert result.metric == "accuracy"
    assert result.interval.mean >= 0.75  # four classes: chance is 0.25
    assert result.layer_weights.tolist() == [1.0]
    assert all(len(s.validation) == 30 for s in result.seeds)


def test_untrained_downstream_is_at_chance(tasks_dir, fbank, tmp_path):
    """Negative control: labels shuffled in training leave test accuracy near chance."""
    splits = _splits(tasks_dir, "ks")
    rng = np.random.default_rng(0)
    labels = rng.permutation(splits["train"]["label"])
    splits["train"] = splits["train"].map(
        lambda row, k: {"label": int(labels[k])}, with_indices=True
    )
    result = probe_task(fbank, task_from_splits("ks", splits), tmp_path / "cache", FAST)
    assert result.interval.mean <= 0.6


def test_speaker_identification_and_verification(tasks_dir, fbank, tmp_path):
    sid = probe_task(fbank, load_task("sid", tasks_dir), tmp_path / "cache", FAST)
    assert sid.interval.mean >= 0.75
    asv = probe_task(fbank, load_task("asv", tasks_dir), tmp_path / "cache", FAST)
    assert asv.metric == "eer" and 0 <= asv.interval.mean < 0.4


def test_phoneme_and_word_recognition(tasks_dir, fbank, tmp_path):
    config = replace(FAST, seeds=(0,))
    pr = probe_task(fbank, load_task("pr", tasks_dir), tmp_path / "cache", config)
    assert pr.metric == "per" and pr.interval.mean < 0.5
    asr = probe_task(fbank, load_task("asr", tasks_dir), tmp_path / "cache", config)
    assert asr.metric == "wer" and 0 <= asr.interval.mean <= 1.5


def test_tiny_model_each_task_type(tasks_dir, model_dir, tmp_path):
    upstream = load_upstream(str(model_dir))
    config = replace(
        FAST,
        downstream=replace(
            FAST.downstream,
            utterance=UtteranceConfig(epochs=3),
            verification=VerificationConfig(epochs=3),
            ctc=replace(FAST.downstream.ctc, epochs=2),
        ),
    )
    for name in ("ks", "asv", "pr"):
        result = probe_task(upstream, load_task(name, tasks_dir), tmp_path / "cache", config)
        weights = result.layer_weights
        assert len(weights) == 3 and weights.sum() == pytest.approx(1.0)
        assert np.isfinite(result.interval.mean) and np.isfinite(result.interval.low)


def test_greedy_decoding_collapses_repeats_and_blanks():
    import torch

    path = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0, 0]])
    log_probs = torch.nn.functional.one_hot(path, 3).float().log()
    assert downstream_module.greedy_decode(log_probs, torch.tensor([9])) == [[1, 1, 2]]
    assert downstream_module.greedy_decode(log_probs, torch.tensor([3])) == [[1]]


# ---------------------------------------------------------------- downstream configuration


def test_each_superb_task_has_its_downstream():
    from wav2brain.probing.downstream import PART_TYPES, TASK_DEFAULTS
    from wav2brain.probing.harness import KNOWN_TASKS

    assert set(TASK_DEFAULTS) == set(KNOWN_TASKS)
    for name, (task_type, _) in KNOWN_TASKS.items():
        assert isinstance(TASK_DEFAULTS[name], PART_TYPES[task_type]), name
    config = DownstreamConfig()
    assert config.for_task("pr", "ctc").head == "linear"  # SUPERB's PR head
    assert config.for_task("asr", "ctc").head == "bilstm"  # SUPERB's ASR head
    assert config.for_task("pr", "ctc").learning_rate == 1e-2
    assert config.for_task("custom", "ctc") == CTCConfig()
    assert config.for_task("ks", "utterance") == UtteranceConfig()
    # a custom task reusing a SUPERB name with another type gets that type's defaults
    assert config.for_task("pr", "utterance") == UtteranceConfig()


def test_downstream_resolution_order():
    linear = CTCConfig(head="linear", epochs=2)
    typed = DownstreamConfig(ctc=linear)
    assert typed.for_task("asr", "ctc") == linear and typed.for_task("pr", "ctc") == linear
    own = CTCConfig(hidden_size=8)
    both = DownstreamConfig(ctc=linear, tasks={"asr": own})
    assert both.for_task("asr", "ctc") == own and both.for_task("pr", "ctc") == linear
    with pytest.raises(ValueError, match=r"tasks\['pr'\] is a UtteranceConfig; task 'pr' takes"):
        DownstreamConfig(tasks={"pr": UtteranceConfig()})
    with pytest.raises(ValueError, match=r"'custom' is of type 'ctc' but .*tasks\['custom'\]"):
        DownstreamConfig(tasks={"custom": UtteranceConfig()}).for_task("custom", "ctc")
    with pytest.raises(ValueError, match=r"DownstreamConfig.ctc must be a CTCConfig"):
        DownstreamConfig(ctc=UtteranceConfig())
    with pytest.raises(ValueError, match="unknown task type 'frames'"):
        DownstreamConfig().for_task("pr", "frames")


def test_downstream_changes_keep_every_other_default():
    from wav2brain.probing.downstream import TASK_DEFAULTS

    config = DownstreamConfig().with_changes("ctc", head="bilstm", epochs=5)
    pr, asr = config.for_task("pr", "ctc"), config.for_task("asr", "ctc")
    assert pr == replace(TASK_DEFAULTS["pr"], head="bilstm", epochs=5)
    assert asr == replace(TASK_DEFAULTS["asr"], epochs=5)
    assert config.for_task("custom", "ctc") == CTCConfig(epochs=5)
    assert config.for_task("ks", "utterance") == UtteranceConfig()  # other types untouched
    one = DownstreamConfig().with_changes("asr", hidden_size=16)
    assert one.for_task("asr", "ctc").hidden_size == 16
    assert one.for_task("pr", "ctc") == TASK_DEFAULTS["pr"]
    options = DownstreamConfig().with_options(
        ["pr.epochs=80", "utterance.learning_rate=1e-4", "asr.head=linear", "asr.dropout=0"]
    )
    assert options.for_task("pr", "ctc").epochs == 80
    assert options.for_task("sid", "utterance").learning_rate == 1e-4
    assert options.for_task("asr", "ctc").head == "linear"
    assert options.for_task("asr", "ctc").dropout == 0.0
    assert DownstreamConfig(standardize=False).with_options([]) == DownstreamConfig(
        standardize=False
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("pr.epochs", "expected TARGET.FIELD=VALUE"),
        ("epochs=3", "expected TARGET.FIELD=VALUE"),
        ("zz.epochs=3", "unknown downstream target 'zz'"),
        ("pr.width=3", "CTCConfig has no field 'width'"),
        ("pr.epochs=2.5", "expected an integer, got '2.5'"),
        ("pr.learning_rate=fast", "expected a number, got 'fast'"),
        ("pr.head=gru", "head must be one of"),
        ("ks.epochs=0", r"\{'epochs': 0\} must be positive"),
        ("asr.dropout=1", r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_downstream_option_is_named(option, message):
    with pytest.raises(ValueError, match=rf"downstream option '{option}': .*{message}"):
        DownstreamConfig().with_options([option])
    with pytest.raises(ValueError, match="has no field"):
        DownstreamConfig().with_changes("ctc", width=3)


def test_each_task_trains_its_own_downstream(tasks_dir, fbank, tmp_path, monkeypatch):
    seen = {}
    real = downstream_module.train_ctc

    def spy(*args, **kwargs):
        seen[len(seen)] = args[5]
        return real(*args, **kwargs)

    monkeypatch.setattr(downstream_module, "train_ctc", spy)
    config = replace(
        FAST,
        seeds=(0,),
        downstream=DownstreamConfig().with_changes("ctc", epochs=1, batch_size=8),
    )
    probe_task(fbank, load_task("pr", tasks_dir), tmp_path / "cache", config)
    probe_task(fbank, load_task("asr", tasks_dir), tmp_path / "cache", config)
    assert [seen[0].head, seen[1].head] == ["linear", "bilstm"]


def test_threads_are_set_for_the_run_and_restored(tasks_dir, fbank, tmp_path, monkeypatch):
    import torch

    counts = []
    real = downstream_module.train_utterance

    def spy(*args, **kwargs):
        counts.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(downstream_module, "train_utterance", spy)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    config = replace(FAST, seeds=(0,), threads=wanted)
    probe_task(fbank, load_task("ks", tasks_dir), tmp_path / "cache", config)
    assert counts == [wanted] and torch.get_num_threads() == before
    probe_task(fbank, load_task("ks", tasks_dir), tmp_path / "cache", replace(config, threads=None))
    assert counts[-1] == before  # negative control: None leaves torch's setting
    task = load_task("ks", tasks_dir)
    assert config.task_key(task) == replace(config, threads=None).task_key(task)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            ProbeConfig(threads=bad)


def test_task_key_holds_only_the_tasks_own_downstream(tasks_dir):
    pr, asr = load_task("pr", tasks_dir), load_task("asr", tasks_dir)
    config = ProbeConfig()
    other_asr = replace(config, downstream=config.downstream.with_changes("asr", hidden_size=8))
    assert other_asr.task_key(pr) == config.task_key(pr)
    assert other_asr.task_key(asr) != config.task_key(asr)  # negative control
    other_pr = replace(config, downstream=config.downstream.with_changes("pr", epochs=3))
    assert other_pr.task_key(pr) != config.task_key(pr)
