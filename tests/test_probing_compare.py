"""Comparison of upstreams (table, figures, resumability), ``wav2brain probe``, the s3prl route."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probe_fixtures import make_tasks
from wav2brain.probing import downstream as downstream_module
from wav2brain.probing import features as features_module
from wav2brain.probing.compare import compare_upstreams, parse_upstreams
from wav2brain.probing.downstream import (
    CTCConfig,
    DownstreamConfig,
    UtteranceConfig,
    VerificationConfig,
)
from wav2brain.probing.harness import ProbeConfig

TASKS = ("ks", "asv", "pr")
QUICK = ProbeConfig(
    seeds=(0, 1),
    downstream=DownstreamConfig(
        utterance=UtteranceConfig(epochs=4),
        ctc=CTCConfig(head="linear", epochs=2, batch_size=8),
        verification=VerificationConfig(epochs=4),
    ),
)


class Counter:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return make_tasks(tmp_path_factory.mktemp("tasks"), names=TASKS)


def test_parse_upstreams_labels():
    specs = parse_upstreams(["fbank", "/m/base", "refined=/m/base", "/x/base"])
    assert [s.label for s in specs] == ["fbank", "base", "refined", "base-2"]
    assert specs[2].spec == "/m/base"
    with pytest.raises(ValueError, match="LABEL=SPEC"):
        parse_upstreams(["=x"])


def test_same_model_twice_differs_by_zero_and_rerun_does_nothing(
    tasks_dir, model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    upstreams = [f"A={model_dir}", f"B={model_dir}"]
    comparison = compare_upstreams(upstreams, list(TASKS), out, tasks_dir=tasks_dir, config=QUICK)
    table = pd.read_parquet(out / "comparison.parquet")
    assert list(table["task"]) == list(TASKS)
    assert list(table.columns[:11]) == [
        "task", "metric", "higher_is_better", "upstream_a", "upstream_b", "a", "b",
        "difference", "ci_low", "ci_high", "significant",
    ]  # fmt: skip
    assert list(table["metric"]) == ["accuracy", "eer", "per"]
    assert (table["difference"] == 0).all() and (table["ci_low"] == 0).all()
    assert (table["ci_high"] == 0).all() and not table["significant"].any()
    assert (table["a"] == table["b"]).all()
    for name in ("comparison.md", "comparison.png", "layer_weights.png", "results.parquet"):
        assert (out / name).stat().st_size > 0
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "comparison.md").read_text()
    assert "| upstream | PR PER ↓ | KS Acc ↑ | ASV EER ↓ |" in markdown
    weights = pd.read_parquet(out / "layer_weights.parquet")
    assert set(weights["upstream"]) == {"A", "B"} and len(weights) == 2 * 3 * 3
    scores = pd.read_parquet(out / "results.parquet")
    assert len(scores) == 2 * 3 * 2
    assert not list(out.rglob("*.partial"))

    extract, fit = Counter(features_module.iter_activations), Counter(downstream_module.fit)
    monkeypatch.setattr(features_module, "iter_activations", extract)
    monkeypatch.setattr(downstream_module, "fit", fit)
    again = compare_upstreams(upstreams, list(TASKS), out, tasks_dir=tasks_dir, config=QUICK)
    assert extract.calls == 0 and fit.calls == 0
    pd.testing.assert_frame_equal(again.table, comparison.table)
    # another downstream configuration retrains but reuses the features
    other = replace(QUICK, seeds=(0, 1, 2))
    compare_upstreams(upstreams, ["ks"], out, tasks_dir=tasks_dir, config=other)
    assert extract.calls == 0 and fit.calls == 2 * 3


def test_different_upstreams_differ(tasks_dir, model_dir, tmp_path):
    """Negative control: fbank against the random tiny model is not a zero difference."""
    comparison = compare_upstreams(
        ["fbank", str(model_dir)],
        ["ks", "asv"],
        tmp_path / "out",
        tasks_dir=tasks_dir,
        config=QUICK,
    )
    assert (comparison.table["difference"] != 0).any()
    assert list(comparison.table["upstream_b"]) == [model_dir.name] * 2


def test_interrupted_comparison_resumes(tasks_dir, model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = downstream_module.train_ctc

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(downstream_module, "train_ctc", crash)
    with pytest.raises(KeyboardInterrupt):
        compare_upstreams(["fbank"], list(TASKS), out, tasks_dir=tasks_dir, config=QUICK)
    assert sorted(p.name for p in (out / "runs" / "fbank").iterdir()) == ["asv.json", "ks.json"]
    monkeypatch.setattr(downstream_module, "train_ctc", real)
    fit = Counter(downstream_module.fit)
    monkeypatch.setattr(downstream_module, "fit", fit)
    compare_upstreams(["fbank"], list(TASKS), out, tasks_dir=tasks_dir, config=QUICK)
    assert fit.calls == 2  # only pr, once per seed
    record = json.loads((out / "runs" / "fbank" / "pr.json").read_text())
    assert len(record["result"]["seeds"]) == 2


def test_cli_probe(tasks_dir, model_dir, tmp_path, capsys):
    from wav2brain.cli import main

    out = tmp_path / "out"
    argv = [
        "probe", "--upstream", "fbank", "--upstream", f"tiny={model_dir}", "--tasks", "ks",
        "--tasks-dir", str(tasks_dir), "--out", str(out), "--epochs", "3", "--seeds", "0", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "| fbank |" in capsys.readouterr().out
    assert pd.read_parquet(out / "comparison.parquet")["upstream_b"].tolist() == ["tiny"]


def test_cli_downstream_overrides_and_threads():
    from wav2brain.cli import build_parser
    from wav2brain.commands.probe import config_from_args
    from wav2brain.probing.downstream import TASK_DEFAULTS

    base = ["probe", "--upstream", "fbank", "--tasks", "pr", "--tasks-dir", "t", "--out", "o"]
    config = config_from_args(build_parser().parse_args(base))
    assert config.threads is None and config.downstream == DownstreamConfig()
    argv = base + [
        "--epochs", "3", "--ctc-head", "bilstm", "--downstream", "asr.hidden_size=16",
        "--downstream", "pr.epochs=7", "--threads", "1",
    ]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))
    pr, asr = config.downstream.for_task("pr", "ctc"), config.downstream.for_task("asr", "ctc")
    assert (pr.head, pr.epochs, pr.learning_rate) == (
        "bilstm",
        7,
        TASK_DEFAULTS["pr"].learning_rate,
    )
    assert (asr.hidden_size, asr.epochs) == (16, 3)
    assert config.downstream.for_task("ks", "utterance").epochs == 3
    assert config.threads == 1


def test_cli_refuses_bad_downstream_and_threads_before_work(
    tasks_dir, tmp_path, capsys, monkeypatch
):
    from wav2brain.cli import main

    stream = Counter(features_module.FbankUpstream.stream)
    monkeypatch.setattr(features_module.FbankUpstream, "stream", stream)
    base = ["probe", "--upstream", "fbank", "--tasks", "ks", "--tasks-dir", str(tasks_dir),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*base, "--downstream", "ks.width=3"]) == 2
    assert "downstream option 'ks.width=3': UtteranceConfig has no field 'width'" in (
        capsys.readouterr().err
    )
    assert main([*base, "--threads", "0"]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err
    assert main([*base, "--epochs", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert stream.calls == 0 and not (tmp_path / "out").exists()


def test_cli_refuses_non_wav2vec2_upstream_before_work(tasks_dir, tmp_path, capsys, monkeypatch):
    from transformers import BertConfig

    from wav2brain.cli import main

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "bert"
    )
    stream = Counter(features_module.FbankUpstream.stream)
    monkeypatch.setattr(features_module.FbankUpstream, "stream", stream)
    argv = [
        "probe", "--upstream", "fbank", "--upstream", str(tmp_path / "bert"), "--tasks", "ks",
        "--tasks-dir", str(tasks_dir), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(argv) == 2
    assert "model_type 'bert'" in capsys.readouterr().err
    assert stream.calls == 0
    argv[argv.index("ks")] = "ks,missing"
    argv[4] = "fbank"
    assert main(argv) == 2
    assert "missing does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- s3prl route


def s3prl_route_problems(folder: Path) -> list[str]:
    """What s3prl's ``hf_wav2vec2_custom`` upstream (``-k FOLDER``) would not find in ``folder``.

    The route (s3prl ``upstream/hf_wav2vec2/expert.py``) calls
    ``Wav2Vec2FeatureExtractor.from_pretrained(folder)`` (falling back to the Hub's
    ``facebook/wav2vec2-base`` extractor, i.e. the network, when that fails) and
    ``Wav2Vec2Model.from_pretrained(folder)``; it pads a batch with the extractor
    (``padding=True, return_attention_mask=True``), calls the model with
    ``output_hidden_states=True`` and assumes 320 samples per frame.
    """
    problems = []
    names = sorted(p.name for p in folder.iterdir())
    if names != ["config.json", "model.safetensors", "preprocessor_config.json"]:
        problems.append(f"files {names}")
    if (folder / "preprocessor_config.json").is_file():
        extractor = json.loads((folder / "preprocessor_config.json").read_text())
        wanted = {
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "sampling_rate": 16000,
            "feature_size": 1,
            "padding_value": 0.0,
        }
        problems += [
            f"{k}={extractor.get(k)!r}" for k, v in wanted.items() if extractor.get(k) != v
        ]
        problems += [
            f"{k} missing" for k in ("do_normalize", "return_attention_mask") if k not in extractor
        ]
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") != "wav2vec2" or config.get("architectures") != [
            "Wav2Vec2Model"
        ]:
            problems.append(f"model_type {config.get('model_type')} {config.get('architectures')}")
        if int(np.prod(config.get("conv_stride", [0]))) != 320:
            problems.append(f"conv_stride {config.get('conv_stride')}: not 320 samples per frame")
    return problems


def test_export_has_what_the_s3prl_route_reads(tiny_kwargs, tmp_path):
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    torch.manual_seed(0)
    model = Wav2Vec2ForBrainEncoding(
        Wav2Vec2BrainEncodingConfig(num_voxels=3, head_hidden_size=8, **tiny_kwargs)
    )
    folder = model.save_backbone(tmp_path / "backbone")
    assert s3prl_route_problems(folder) == []
    # what the route then does, offline
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    upstream = Wav2Vec2Model.from_pretrained(folder).eval()
    wavs = [np.random.default_rng(k).normal(0, 0.1, n).astype(np.float32) for k, n in
            enumerate((16000, 12000))]  # fmt: skip
    inputs = extractor(
        wavs, return_tensors="pt", padding=True, return_attention_mask=True, sampling_rate=16000
    )
    with torch.no_grad():
        hidden = upstream(**inputs, output_hidden_states=True).hidden_states
    assert len(hidden) == tiny_kwargs["num_hidden_layers"] + 1
    assert hidden[-1].shape[1] == 16000 // 320 - 1  # 49 frames of 20 ms

    # negative controls: a folder the route cannot use is reported
    (folder / "preprocessor_config.json").unlink()
    assert s3prl_route_problems(folder) == ["files ['config.json', 'model.safetensors']"]
    model.save_pretrained(tmp_path / "full")
    assert any("model_type" in p for p in s3prl_route_problems(tmp_path / "full"))


def test_package_exports_resolve():
    import wav2brain.probing as probing

    assert all(getattr(probing, name) is not None for name in probing.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        probing.nothing  # noqa: B018
