"""``do_normalize``: read from a plain checkpoint's feature extractor, settable, exported by save_backbone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoFeatureExtractor,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
from wav2brain.modeling import checkpoint_do_normalize

SHORT = {"tr": 0.5, "history_trs": 3, "head_hidden_size": 8}


def plain_checkpoint(tiny_kwargs, folder, do_normalize: bool | None):
    """A tiny saved ``Wav2Vec2Model``, with a feature extractor unless ``do_normalize`` is None."""
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**tiny_kwargs)).save_pretrained(folder)
    if do_normalize is not None:
        Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("value", [True, False])
def test_the_flag_round_trips(tiny_kwargs, tmp_path, value):
    config = Wav2Vec2BrainEncodingConfig(num_voxels=3, do_normalize=value, **tiny_kwargs)
    config.save_pretrained(tmp_path)
    assert Wav2Vec2BrainEncodingConfig.from_pretrained(tmp_path).do_normalize is value


def test_defaults_to_raw_audio(tiny_kwargs):
    assert Wav2Vec2BrainEncodingConfig(num_voxels=3, **tiny_kwargs).do_normalize is False


@pytest.mark.parametrize(("saved", "expected"), [(True, True), (False, False), (None, False)])
def test_a_plain_checkpoints_extractor_is_picked_up(tiny_kwargs, tmp_path, saved, expected):
    path = plain_checkpoint(tiny_kwargs, tmp_path / "plain", saved)
    assert checkpoint_do_normalize(path) is saved
    model = Wav2Vec2ForBrainEncoding.from_pretrained(path, num_voxels=4, **SHORT)
    assert model.config.do_normalize is expected
    # a keyword wins over the checkpoint
    config = Wav2Vec2BrainEncodingConfig.from_pretrained(
        path, num_voxels=4, do_normalize=not expected
    )
    assert config.do_normalize is (not expected)


def test_a_brain_checkpoint_keeps_its_own_setting(tiny_kwargs, tmp_path):
    config = Wav2Vec2BrainEncodingConfig(num_voxels=3, do_normalize=False, **tiny_kwargs, **SHORT)
    Wav2Vec2ForBrainEncoding(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path)  # a stray extractor
    assert Wav2Vec2ForBrainEncoding.from_pretrained(tmp_path).config.do_normalize is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"do_normalize": "yes"}', "do_normalize must be true or false, got 'yes'"),
        ("{not json", "unreadable feature-extractor config"),
    ],
)
def test_a_bad_extractor_file_is_named(tiny_kwargs, tmp_path, content, message):
    path = plain_checkpoint(tiny_kwargs, tmp_path / "plain", None)
    (path / "preprocessor_config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        Wav2Vec2BrainEncodingConfig.from_pretrained(path, num_voxels=4)
    assert "preprocessor_config.json" in str(error.value)


@pytest.mark.parametrize("value", [True, False])
def test_save_backbone_exports_the_models_setting(tiny_kwargs, tmp_path, value):
    path = plain_checkpoint(tiny_kwargs, tmp_path / "plain", value)
    model = Wav2Vec2ForBrainEncoding.from_pretrained(path, num_voxels=4, **SHORT)
    model.save_backbone(tmp_path / "backbone")
    saved = json.loads((tmp_path / "backbone" / "preprocessor_config.json").read_text())
    assert saved["do_normalize"] is value
    assert AutoFeatureExtractor.from_pretrained(tmp_path / "backbone").do_normalize is value
    assert checkpoint_do_normalize(tmp_path / "backbone") is value


@pytest.mark.parametrize(
    ("extractor", "message"),
    [
        ({"do_normalize": False}, "feature_extractor.do_normalize=False disagrees"),
        ({"do_normalize": True, "sampling_rate": 8000}, "feature_extractor.sampling_rate=8000"),
    ],
)
def test_save_backbone_refuses_a_disagreeing_extractor(tiny_kwargs, tmp_path, extractor, message):
    config = Wav2Vec2BrainEncodingConfig(num_voxels=3, do_normalize=True, **tiny_kwargs, **SHORT)
    model = Wav2Vec2ForBrainEncoding(config)
    with pytest.raises(ValueError, match=message):
        model.save_backbone(tmp_path / "out", Wav2Vec2FeatureExtractor(**extractor))
    assert not (tmp_path / "out").exists()  # refused before writing
    model.save_backbone(tmp_path / "out", Wav2Vec2FeatureExtractor(do_normalize=True))
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["do_normalize"]
