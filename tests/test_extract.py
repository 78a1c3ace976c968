"""Streamed extraction: stitched chunks equal a single forward pass, for every tensor and family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertForSequenceClassification,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from conftest import tiny_wav2vec2_kwargs
from wav2brain.features import (
    ExtractionConfig,
    activation_units,
    extract_activations,
    iter_activations,
    prepare_audio,
)
from wav2brain.features.chunking import FrameGeometry, batch_windows, plan_windows
from wav2brain.features.frontend import group_norm_stats
from wav2brain.modeling import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

SR = 16_000
WHOLE = 30.0  # s of context: more than the test audio, so every window sees all of it


def tiny(model_cls=Wav2Vec2Model, config_cls=Wav2Vec2Config, **overrides):
    torch.manual_seed(0)
    return model_cls(config_cls(**{**tiny_wav2vec2_kwargs(), **overrides})).eval()


def story(seconds: float = 4.0, extra: int = 123, seed: int = 0) -> np.ndarray:
    """Noise whose loudness rises 20-fold over the clip (so per-chunk statistics would differ)."""
    n = int(seconds * SR) + extra
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * np.linspace(0.05, 1.0, n)).astype(np.float32)


def single_pass(model, audio: np.ndarray) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = model(torch.from_numpy(audio)[None], output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def max_diff(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> float:
    assert list(got) == list(want)
    for name in got:
        assert got[name].shape == tuple(want[name].shape), name
    return max(float(np.abs(got[name] - want[name].numpy()).max()) for name in got)


def manual_taps(backbone, hidden_states: tuple[torch.Tensor, ...]) -> dict[str, dict]:
    """Attention outputs and FFN intermediates recomputed from each layer's input."""
    stable = getattr(backbone.config, "do_stable_layer_norm", False)
    attention, intermediate, bias = {}, {}, {}
    with torch.no_grad():
        for k, layer in enumerate(backbone.encoder.layers, start=1):
            h = hidden_states[k - 1][None]
            out = layer.attention(layer.layer_norm(h) if stable else h, **bias)
            if isinstance(backbone, WavLMModel):  # relative position bias made by layer 1
                bias = {"position_bias": out[2], "index": k}
            attn = out[0]
            mid = layer.final_layer_norm(h + attn) if stable else layer.layer_norm(h + attn)
            ffn = layer.feed_forward
            attention[f"layer_{k:02d}"] = attn[0]
            intermediate[f"layer_{k:02d}"] = ffn.intermediate_act_fn(ffn.intermediate_dense(mid))[0]
    return {"attention_output": attention, "ffn_intermediate": intermediate}


# --- chunk planning ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("n", "chunk", "context"), [(1, 5, 3), (17, 5, 0), (103, 10, 7), (50, 7, 40)]
)
def test_windows_tile_frames_once_with_context(n, chunk, context, causal):
    windows = plan_windows(n, chunk, context, causal)
    kept = [f for w in windows for f in range(w.core_start, w.core_stop)]
    assert kept == list(range(n))
    for w in windows:
        assert 0 <= w.start <= w.core_start < w.core_stop <= w.stop <= n
        assert w.core_stop - w.core_start == min(chunk, n - w.core_start)
        assert w.core_start - w.start == min(context, w.core_start)
        assert w.stop - w.core_stop == (0 if causal else min(context, n - w.core_stop))
    assert [w.start for w in windows] == sorted(w.start for w in windows)
    batches = list(batch_windows(windows, 3))
    assert [w for batch in batches for w in batch] == windows
    for batch in batches:
        assert 1 <= len(batch) <= 3 and len({w.length for w in batch}) == 1


def test_plan_windows_rejects_bad_sizes():
    with pytest.raises(ValueError, match="chunk_frames"):
        plan_windows(10, 0, 3)


def test_geometry_matches_transformers_output_lengths():
    model = tiny()
    geometry = FrameGeometry(tuple(model.config.conv_kernel), tuple(model.config.conv_stride))
    assert (geometry.stride, geometry.receptive_field) == (320, 400)
    for n in [399, 400, 719, 720, 721, 16_000, 16_123]:
        want = int(model._get_feat_extract_output_lengths(torch.tensor(n)))
        assert geometry.n_frames(n) == max(want, 0)


# --- stitched == single pass ----------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_stitched_hidden_states_equal_single_pass(norm):
    model = tiny(feat_extract_norm=norm)
    audio = story()
    want = {f"layer_{k:02d}": h for k, h in enumerate(single_pass(model, audio))}
    for chunk, batch, front in [(0.37, 3, 0.13), (1.01, 1, 5.0), (2.5, 4, 0.5), (60.0, 2, 1.0)]:
        config = ExtractionConfig(
            layers=(0, 1, 2),
            chunk_seconds=chunk,
            context_seconds=WHOLE,
            batch_size=batch,
            front_end_seconds=front,
        )
        blocks = list(iter_activations(model, audio, config))
        starts = [b.start_frame for b in blocks]
        assert starts == [0, *[b.stop_frame for b in blocks[:-1]]]
        got = {name: np.concatenate([b.numpy()[name] for b in blocks]) for name in want}
        assert max_diff(got, want) < 1e-4, (norm, chunk)


def test_group_norm_uses_whole_stimulus_statistics():
    """Per-chunk group norm (what a naive chunker does) would miss the single pass by far."""
    model = tiny(feat_extract_norm="group")
    audio = story()
    want = single_pass(model, audio)[2]
    naive = np.concatenate(
        [single_pass(model, audio[i * 320 : (i + 40) * 320 + 80])[2] for i in range(0, 199, 40)]
    )
    got = extract_activations(
        model, audio, ExtractionConfig(chunk_seconds=0.8, context_seconds=WHOLE)
    )
    assert np.abs(got["layer_02"] - want.numpy()).max() < 1e-4
    assert np.abs(naive - want.numpy()).max() > 1e-2


@pytest.mark.parametrize("conv_bias", [False, True])
def test_group_norm_statistics_from_audio_moments_match_the_conv_output(conv_bias):
    model = tiny(feat_extract_norm="group", conv_bias=conv_bias)
    audio = torch.from_numpy(story(seconds=1.0))
    conv = model.feature_extractor.conv_layers[0].conv
    with torch.no_grad():
        bias = None if conv.bias is None else conv.bias.double()
        out = torch.nn.functional.conv1d(
            audio[None, None].double(), conv.weight.double(), bias, stride=conv.stride
        )[0]
        stats = group_norm_stats(model, audio, block_samples=1234)
    torch.testing.assert_close(stats.mean, out.mean(dim=1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats.var, out.var(dim=1, correction=0), rtol=1e-9, atol=1e-9)


def test_short_context_is_an_approximation():
    """The exactness above comes from the context: with 0.2 s of it, chunks do differ."""
    model = tiny()
    audio = story()
    want = {"layer_02": single_pass(model, audio)[2]}
    got = extract_activations(
        model, audio, ExtractionConfig(layers=(2,), chunk_seconds=0.5, context_seconds=0.2)
    )
    assert max_diff(got, want) > 1e-4


def test_default_chunking_is_exact_within_one_core_and_approximate_across_cores():
    """Default 10-s cores: a 4-s clip is one window (a single pass); a 25-s clip is not."""
    model = tiny(feat_extract_norm="group")
    short = story()
    want = {"layer_02": single_pass(model, short)[2]}
    assert max_diff(extract_activations(model, short, ExtractionConfig(layers=(2,))), want) < 1e-4
    long = story(seconds=25.0)
    want = {"layer_02": single_pass(model, long)[2]}
    assert max_diff(extract_activations(model, long, ExtractionConfig(layers=(2,))), want) > 1e-4


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_causal_chunks_see_no_audio_after_their_core(norm):
    model = tiny(feat_extract_norm=norm)
    audio = story()
    config = ExtractionConfig(layers=(1, 2), chunk_seconds=0.73, context_seconds=WHOLE, causal=True)
    blocks = list(iter_activations(model, audio, config))
    assert blocks[-1].stop_frame == single_pass(model, audio)[0].shape[0]
    for block in blocks:
        prefix = single_pass(model, audio[: (block.stop_frame - 1) * 320 + 400])
        want = {f"layer_{k:02d}": prefix[k][block.start_frame :] for k in (1, 2)}
        assert max_diff(block.numpy(), want) < 1e-4


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("tensor", ["attention_output", "ffn_intermediate"])
def test_hooked_tensors_equal_manual_recomputation(tensor, stable):
    model = tiny(do_stable_layer_norm=stable, feat_extract_norm="layer")
    audio = story(seconds=3.0)
    want = manual_taps(model, single_pass(model, audio))[tensor]
    config = ExtractionConfig(tensor=tensor, chunk_seconds=0.61, context_seconds=WHOLE)
    got = extract_activations(model, audio, config)
    units = model.config.intermediate_size if tensor == "ffn_intermediate" else 32
    assert activation_units(model, config) == {"layer_01": units, "layer_02": units}
    assert max_diff(got, want) < 1e-4


FAMILIES = {
    "hubert": (HubertModel, HubertConfig, {"feat_extract_norm": "group"}),
    "wavlm": (WavLMModel, WavLMConfig, {"feat_extract_norm": "group"}),
    "data2vec": (Data2VecAudioModel, Data2VecAudioConfig, {"num_conv_pos_embeddings": 2}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_other_families_stitch_exactly(family):
    model_cls, config_cls, overrides = FAMILIES[family]
    model = tiny(model_cls, config_cls, **overrides)
    audio = story(seconds=3.0)
    hidden = single_pass(model, audio)
    want = {f"layer_{k:02d}": hidden[k] for k in (1, 2)}
    config = ExtractionConfig(chunk_seconds=0.55, context_seconds=WHOLE, batch_size=2)
    assert max_diff(extract_activations(model, audio, config), want) < 1e-4
    ffn = ExtractionConfig(tensor="ffn_intermediate", chunk_seconds=0.55, context_seconds=WHOLE)
    want_ffn = manual_taps(model, hidden)["ffn_intermediate"]
    assert max_diff(extract_activations(model, audio, ffn), want_ffn) < 1e-4


def test_heads_and_brain_model_resolve_to_their_backbone():
    audio = story(seconds=2.0)
    config = ExtractionConfig(chunk_seconds=0.5, context_seconds=WHOLE)
    ctc = tiny(Wav2Vec2ForCTC, Wav2Vec2Config, vocab_size=12)
    hubert = tiny(HubertForSequenceClassification, HubertConfig, num_labels=3)
    torch.manual_seed(0)
    brain = Wav2Vec2ForBrainEncoding(
        Wav2Vec2BrainEncodingConfig(**tiny_wav2vec2_kwargs(), num_voxels=7, head_hidden_size=8)
    )
    holder = torch.nn.Module()
    holder.wav2vec2 = ctc.wav2vec2
    for wrapper, backbone in [
        (ctc, ctc.wav2vec2),
        (hubert, hubert.hubert),
        (brain, brain.wav2vec2),
        (holder, ctc.wav2vec2),
    ]:
        hidden = single_pass(backbone, audio)
        want = {f"layer_{k:02d}": hidden[k] for k in (1, 2)}
        assert max_diff(extract_activations(wrapper, audio, config), want) < 1e-4


# --- model state ------------------------------------------------------------------------------------


def test_training_model_is_extracted_in_eval_mode_and_left_as_found():
    model = tiny(layerdrop=0.5, mask_time_prob=0.5, hidden_dropout=0.3)
    audio = story(seconds=2.0)
    want = {f"layer_{k:02d}": h for k, h in enumerate(single_pass(model, audio)) if k}
    model.train()
    config = ExtractionConfig(chunk_seconds=0.4, context_seconds=WHOLE)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    blocks = iter_activations(model, audio, config)
    first = next(blocks)
    first.activations["layer_01"].add_(0.0)  # ordinary tensors, not inference tensors
    assert not first.activations["layer_01"].is_inference()
    blocks.close()  # stopping early removes the hooks and restores the mode
    assert model.training
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    assert max_diff(extract_activations(model, audio, config), want) < 1e-4
    assert model.training


def test_compute_dtype_is_applied_and_results_are_float32():
    model = tiny()
    audio = story(seconds=1.0)
    want = extract_activations(model, audio)
    got = extract_activations(model, audio, ExtractionConfig(dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert all(v.dtype == np.float32 for v in got.values())
    assert 1e-4 < max(np.abs(got[k] - want[k]).max() for k in got) < 0.5


# --- bad input --------------------------------------------------------------------------------------


def test_model_outside_the_family_is_refused_by_class_name():
    with pytest.raises(ValueError, match="Linear is not a wav2vec2-family model"):
        extract_activations(torch.nn.Linear(2, 2), story(seconds=1.0))
    with pytest.raises(ValueError, match="str is not a wav2vec2-family model"):
        activation_units("facebook/wav2vec2-base")


def test_audio_shorter_than_the_receptive_field_is_refused_with_its_duration():
    model = tiny()
    with pytest.raises(ValueError, match=r"24\.94 ms long \(399 samples.*400 samples \(25 ms\)"):
        extract_activations(model, np.zeros(399, np.float32))
    with pytest.raises(ValueError, match=r"12\.50 ms long"):  # 100 samples at 8 kHz
        extract_activations(model, np.zeros(100, np.float32), sampling_rate=8000)
    out = extract_activations(model, story(seconds=0.0, extra=400))
    assert out["layer_02"].shape == (1, 32)


def test_stereo_8khz_audio_is_converted_to_16khz_mono():
    model = tiny()
    rng = np.random.default_rng(1)
    stereo = rng.standard_normal((8000 * 2 + 37, 2)).astype(np.float32)
    mono16 = resample_poly(stereo.mean(axis=1), 2, 1).astype(np.float32)
    np.testing.assert_allclose(prepare_audio(stereo, 8000), mono16, atol=1e-5)
    config = ExtractionConfig(chunk_seconds=0.5, context_seconds=WHOLE)
    got = extract_activations(model, stereo, config, sampling_rate=8000)
    hidden = single_pass(model, mono16)
    assert max_diff(got, {f"layer_{k:02d}": hidden[k] for k in (1, 2)}) < 1e-4
    with pytest.raises(ValueError, match=r"looks like \[channels, samples\]"):
        prepare_audio(stereo.T, 8000)
    with pytest.raises(ValueError, match="sampling_rate must be positive"):
        prepare_audio(stereo, 0)
    for bad in (np.nan, np.inf, -np.inf):
        wave = np.zeros(800, np.float32)
        wave[17] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            prepare_audio(wave)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tensor": "keys"}, "tensor must be one of"),
        ({"chunk_seconds": 0.0}, "chunk_seconds must be at least one frame"),
        ({"context_seconds": -1.0}, "context_seconds must be >= 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"front_end_seconds": 0.01}, "front_end_seconds must be at least one frame"),
        ({"dtype": "float64"}, "dtype must be"),
    ],
)
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExtractionConfig(**kwargs)


@pytest.mark.parametrize(
    ("tensor", "layers"),
    [("hidden_states", (3,)), ("attention_output", (0,)), ("hidden_states", (1, 1))],
)
def test_bad_layers_are_refused_before_model_work(tensor, layers):
    with pytest.raises(ValueError, match="layers must be distinct indices"):
        iter_activations(tiny(), story(seconds=1.0), ExtractionConfig(tensor=tensor, layers=layers))
