"""Wav2Vec2BrainEncodingConfig: defaults, subjects, serialisation and bad values."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, Wav2Vec2Config

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding


def test_defaults_follow_the_refinement_paper(tiny_kwargs):
    tiny_kwargs.pop("layerdrop")
    tiny_kwargs.pop("mask_time_prob")
    config = Wav2Vec2BrainEncodingConfig(num_voxels=10, **tiny_kwargs)
    assert isinstance(config, Wav2Vec2Config)
    assert config.model_type == "wav2vec2-brain-encoding"
    assert (config.tr, config.history_trs, config.sampling_rate) == (1.5, 6, 16000)
    assert config.window_samples == 6 * 1.5 * 16000
    assert (config.layerdrop, config.mask_time_prob) == (0.0, 0.0)
    assert (config.layer_aggregation, config.head, config.loss) == ("weighted_sum", "conv", "mse")
    assert config.subject_voxel_counts == [10]


def test_subjects_keep_their_order_through_json(tiny_kwargs, tmp_path):
    config = Wav2Vec2BrainEncodingConfig(subject_voxels={"sub-b": 4, "sub-a": 9}, **tiny_kwargs)
    assert config.subjects == ["sub-b", "sub-a"]
    assert config.num_voxels == 9
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert list(saved["subject_voxels"]) == ["sub-a", "sub-b"]  # JSON sorts keys
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, Wav2Vec2BrainEncodingConfig)
    assert reloaded.subjects == ["sub-b", "sub-a"]
    assert reloaded.subject_voxel_counts == [4, 9]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_voxels": 10, "tr": 0.0}, "tr must be"),
        ({"num_voxels": 10, "tr": float("nan")}, "tr must be"),
        ({"num_voxels": 10, "history_trs": 0}, "history_trs"),
        ({"num_voxels": 10, "head": "rnn"}, "head='rnn'"),
        ({"num_voxels": 10, "loss": "mae"}, "loss='mae'"),
        ({"num_voxels": 10, "layer_aggregation": "first"}, "layer_aggregation='first'"),
        ({"num_voxels": 10, "layer_aggregation": 3}, "out of range for 3 hidden states"),
        ({"num_voxels": 10, "layer_aggregation": -4}, "out of range"),
        ({"num_voxels": 10, "head_kernel_size": 7}, "head_kernel_size=7"),
        ({"num_voxels": 10, "history_trs": 2, "head_kernel_size": 3}, "history_trs=2"),
        ({"num_voxels": 10, "head_kernel_size": 0}, "head_kernel_size=0"),
        ({"num_voxels": 10, "readout_rank": 0}, r"readout_rank=0 must lie in \[1, 1024\)"),
        ({"num_voxels": 10, "readout_rank": 1024}, "saves nothing over the full readout"),
        ({"num_voxels": 10, "head": "mean", "readout_rank": 32}, r"\[1, 32\): the 'mean' head"),
        ({"num_voxels": 10, "head_hidden_size": 0}, "head_hidden_size"),
        ({"num_voxels": 10, "head_l2": -1.0}, "head_l2"),
        ({"num_voxels": 10, "backbone_l2_sp": float("inf")}, "backbone_l2_sp"),
        ({"num_voxels": 0}, "num_voxels must be"),
        ({"subject_voxels": {}}, "subject_voxels is empty"),
        ({"subject_voxels": {"s1": 0}}, "positive voxel counts"),
        ({"subject_voxels": {"s1": 3}, "subjects": ["s2"]}, "exactly once"),
        ({"subject_voxels": {"s1": 3}, "subjects": ["s1", "s1"]}, "exactly once"),
        ({"subjects": ["s1"]}, "without subject_voxels"),
        ({"subject_voxels": {"s1": 3, "s2": 5}, "num_voxels": 4}, "largest count is 5"),
    ],
)
def test_bad_values_raise(tiny_kwargs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Wav2Vec2BrainEncodingConfig(**kwargs, **tiny_kwargs)


@pytest.mark.parametrize(("history", "kernel"), [(1, 1), (2, 2), (3, 3), (6, 3), (12, 3)])
def test_default_kernel_is_clamped_to_the_history(tiny_kwargs, tmp_path, history, kernel):
    config = Wav2Vec2BrainEncodingConfig(num_voxels=4, history_trs=history, **tiny_kwargs)
    assert config.head_kernel_size == kernel
    assert config.head_features == 256 * (history - kernel + 1)
    config.save_pretrained(tmp_path)
    assert Wav2Vec2BrainEncodingConfig.from_pretrained(tmp_path).head_kernel_size == kernel
    # an explicit kernel is kept as given
    explicit = Wav2Vec2BrainEncodingConfig(
        num_voxels=4, history_trs=history, head_kernel_size=1, **tiny_kwargs
    )
    assert explicit.head_kernel_size == 1


def test_consistent_num_voxels_with_subjects_is_accepted(tiny_kwargs):
    config = Wav2Vec2BrainEncodingConfig(
        subject_voxels={"s1": 3, "s2": 5}, num_voxels=5, **tiny_kwargs
    )
    assert config.subject_voxel_counts == [3, 5]


def test_model_needs_an_output_size(tiny_kwargs):
    config = Wav2Vec2BrainEncodingConfig(**tiny_kwargs)
    with pytest.raises(ValueError, match="num_voxels=<int> or subject_voxels"):
        Wav2Vec2ForBrainEncoding(config)
