"""Hub behaviour: Auto classes, plain-checkpoint start, save/load round trips, save_backbone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
)
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PreTrainedModel

from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

SHORT = {"tr": 0.5, "history_trs": 3, "head_kernel_size": 2, "head_hidden_size": 8}


def audio(batch: int = 2, samples: int = 24000) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(3))


@pytest.fixture(params=[Wav2Vec2Model, Wav2Vec2ForPreTraining])
def plain_checkpoint(tiny_kwargs, tmp_path, request):
    """A plain wav2vec2 checkpoint as pretraining leaves it (layerdrop and time masking on), saved
    as a bare ``Wav2Vec2Model`` or, like facebook/wav2vec2-base, as ``Wav2Vec2ForPreTraining``.
    Returns the folder and the backbone (``Wav2Vec2Model``)."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(**{**tiny_kwargs, "layerdrop": 0.1, "mask_time_prob": 0.05})
    model = request.param(config).eval()
    model.save_pretrained(tmp_path / "plain")
    return tmp_path / "plain", model.base_model


def hidden_states(model: Wav2Vec2Model, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model.eval()(values, output_hidden_states=True).hidden_states


def test_start_from_a_plain_checkpoint(plain_checkpoint):
    path, plain = plain_checkpoint
    model, info = Wav2Vec2ForBrainEncoding.from_pretrained(
        path, num_voxels=5085, output_loading_info=True, **SHORT
    )
    assert isinstance(model.config, Wav2Vec2BrainEncodingConfig)
    assert model.config.num_voxels == 5085 and model.config.tr == 0.5
    # the brain model's backbone settings replace the pretraining ones
    assert (model.config.layerdrop, model.config.mask_time_prob) == (0.0, 0.0)
    head_keys = {k for k in model.state_dict() if not k.startswith("wav2vec2.")}
    assert info["missing_keys"] == head_keys
    assert head_keys == {
        "layer_weight_logits",
        "head.body.conv.weight",
        "head.body.conv.bias",
        "head.readouts.0.weight",
        "head.readouts.0.bias",
    }
    # left out: the pretraining-only SpecAugment vector (time masking is off) and quantiser/projections
    assert all(
        key.endswith("masked_spec_embed") or key.startswith(("quantizer.", "project_"))
        for key in info["unexpected_keys"]
    ), info["unexpected_keys"]
    own = model.wav2vec2.state_dict()
    for name, value in plain.state_dict().items():
        if name in own:
            assert torch.equal(own[name], value), name
    assert torch.equal(model.layer_weight_logits, torch.zeros(3))
    values = audio()
    for ours, theirs in zip(
        hidden_states(model.wav2vec2, values), hidden_states(plain, values), strict=True
    ):
        torch.testing.assert_close(ours, theirs)
    assert model(values).predictions.shape == (2, 5085)


def test_a_plain_checkpoint_loads_with_one_info_line_not_warnings(plain_checkpoint, caplog):
    """The new head is expected from a plain checkpoint: no warning, one info line; a missing
    backbone weight (negative control) is still a warning naming it."""
    import logging

    from safetensors.torch import load_file, save_file

    path, _ = plain_checkpoint
    with caplog.at_level(logging.INFO):
        model, info = Wav2Vec2ForBrainEncoding.from_pretrained(
            path, num_voxels=3, output_loading_info=True
        )
    assert isinstance(model, Wav2Vec2ForBrainEncoding) and "layer_weight_logits" in str(info)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [], [r.getMessage()[:200] for r in warnings]
    notes = [
        r.getMessage() for r in caplog.records if "plain wav2vec2 checkpoint" in r.getMessage()
    ]
    assert len(notes) == 1 and "head and layer weights are new" in notes[0]
    caplog.clear()  # transformers' own loading warns here, and the log capture sees it
    with caplog.at_level(logging.INFO):
        Wav2Vec2PreTrainedModel.from_pretrained.__func__(
            Wav2Vec2ForBrainEncoding, path, num_voxels=3
        )
    assert any("LOAD REPORT" in r.getMessage() for r in caplog.records if r.levelno >= 30)
    weights = load_file(str(path / "model.safetensors"))
    dropped = next(k for k in weights if k.endswith("encoder.layers.0.attention.q_proj.weight"))
    save_file({k: v for k, v in weights.items() if k != dropped}, str(path / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.INFO):
        Wav2Vec2ForBrainEncoding.from_pretrained(path, num_voxels=3)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("backbone weights are not in the checkpoint" in m and "q_proj" in m for m in warned)


def test_plain_checkpoint_keeps_explicit_backbone_settings(plain_checkpoint):
    config = Wav2Vec2BrainEncodingConfig.from_pretrained(
        plain_checkpoint[0], num_voxels=3, layerdrop=0.2
    )
    assert (config.layerdrop, config.mask_time_prob) == (0.2, 0.0)


def test_plain_checkpoint_without_output_size(plain_checkpoint):
    with pytest.raises(ValueError, match="num_voxels=<int> or subject_voxels"):
        Wav2Vec2ForBrainEncoding.from_pretrained(plain_checkpoint[0])


@pytest.mark.parametrize("subjects", [None, {"sub-02": 4, "sub-01": 6}])
def test_save_and_reload_give_the_same_predictions(tiny_kwargs, tmp_path, subjects):
    torch.manual_seed(0)
    size = {"subject_voxels": subjects} if subjects else {"num_voxels": 7}
    config = Wav2Vec2BrainEncodingConfig(**tiny_kwargs, **SHORT, **size)
    model = Wav2Vec2ForBrainEncoding(config).eval()
    with torch.no_grad():
        model.layer_weight_logits.copy_(torch.tensor([0.5, -0.2, 1.0]))
    ids = torch.tensor([0, 1]) if subjects else None
    values = audio()
    before = model(values, subject_ids=ids).predictions
    model.save_pretrained(tmp_path / "brain")
    assert not list((tmp_path / "brain").glob("*.bin"))
    assert (tmp_path / "brain" / "model.safetensors").is_file()
    # AutoConfig/AutoModel resolve the registered classes without trust_remote_code
    auto_config = AutoConfig.from_pretrained(tmp_path / "brain")
    assert isinstance(auto_config, Wav2Vec2BrainEncodingConfig)
    reloaded = AutoModel.from_pretrained(tmp_path / "brain")
    assert isinstance(reloaded, Wav2Vec2ForBrainEncoding)
    assert reloaded.config.subjects == model.config.subjects
    after = reloaded(values, subject_ids=ids).predictions
    # identical weights; only float32 rounding of the BLAS kernels may differ
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(reloaded.layer_weights, model.layer_weights)


def test_save_backbone_round_trip(tiny_kwargs, tmp_path):
    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(num_voxels=4, **tiny_kwargs, **SHORT)
    model = Wav2Vec2ForBrainEncoding(config).eval()
    target = tmp_path / "backbone"
    target.mkdir()
    (target / "config.json").write_text("{}")  # an older file is replaced
    assert model.save_backbone(target) == target
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["backbone"]  # no staging folder left
    saved = json.loads((target / "config.json").read_text())
    assert saved["model_type"] == "wav2vec2"
    assert saved["architectures"] == ["Wav2Vec2Model"]
    assert not {"num_voxels", "tr", "head", "history_trs"} & set(saved)
    plain = Wav2Vec2Model.from_pretrained(target)
    assert type(plain.config) is Wav2Vec2Config
    values = audio()
    for ours, theirs in zip(
        hidden_states(model.wav2vec2, values), hidden_states(plain, values), strict=True
    ):
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    extractor = AutoFeatureExtractor.from_pretrained(target)
    assert isinstance(extractor, Wav2Vec2FeatureExtractor)
    assert extractor.sampling_rate == 16000 and not extractor.do_normalize
