"""Audio normalisation in extraction: whole-stimulus, from the model or checkpoint, in the cache key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from conftest import tiny_wav2vec2_kwargs
from test_cli_extract import dataset, datasets_cache, main, passes  # noqa: F401 (fixtures)
from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
from wav2brain.data.audio import normalize_audio
from wav2brain.features import ExtractionConfig, extract_activations, prepare_audio
from wav2brain.features.cache import FeatureCache, model_identity
from wav2brain.features.pipeline import RunTiming, stimulus_features

# a layer-norm front end, as the lv60 family that is pretrained on normalised audio
LV60_LIKE = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}
CHUNKS = {"chunk_seconds": 1.0, "context_seconds": 0.5}


def lv60_like(**overrides) -> Wav2Vec2Model:
    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs(), **LV60_LIKE, **overrides)).eval()


def brain(do_normalize: bool) -> Wav2Vec2ForBrainEncoding:
    torch.manual_seed(0)
    config = Wav2Vec2BrainEncodingConfig(
        **tiny_wav2vec2_kwargs(), **LV60_LIKE, num_voxels=3, do_normalize=do_normalize
    )
    return Wav2Vec2ForBrainEncoding(config).eval()


def story(seconds: float = 3.0) -> np.ndarray:
    """Quiet noise growing louder, with a DC offset: far from zero mean and unit variance."""
    n = int(seconds * 16_000)
    rng = np.random.default_rng(0)
    return (0.05 * rng.standard_normal(n) * np.linspace(0.2, 1.0, n) + 0.02).astype(np.float32)


def relative_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in a)


def test_normalising_equals_extraction_on_prenormalised_audio():
    model, audio = lv60_like(), story()
    normalised = extract_activations(model, audio, ExtractionConfig(normalize=True, **CHUNKS))
    by_hand = normalize_audio(prepare_audio(audio))
    assert abs(by_hand.mean()) < 1e-6 and abs(by_hand.std() - 1) < 1e-3
    expected = extract_activations(model, by_hand, ExtractionConfig(normalize=False, **CHUNKS))
    for layer, value in expected.items():
        np.testing.assert_array_equal(normalised[layer], value)
    # negative control: raw audio gives other features
    raw = extract_activations(model, audio, ExtractionConfig(normalize=False, **CHUNKS))
    assert relative_difference(raw, normalised) > 0.1


@pytest.mark.parametrize("do_normalize", [True, False])
def test_the_default_follows_the_models_do_normalize(do_normalize):
    model, audio = brain(do_normalize), story()
    assert ExtractionConfig().for_model(model).normalize is do_normalize
    default = extract_activations(model, audio, ExtractionConfig(**CHUNKS))
    explicit = extract_activations(model, audio, ExtractionConfig(normalize=do_normalize, **CHUNKS))
    for layer, value in explicit.items():
        np.testing.assert_array_equal(default[layer], value)
    # a model config without do_normalize (a plain Wav2Vec2Model) means raw audio
    assert ExtractionConfig().for_model(lv60_like()).normalize is False
    # an explicit value wins over the model
    assert (
        ExtractionConfig(normalize=not do_normalize).for_model(model).normalize is not do_normalize
    )


def test_bad_normalize_value():
    with pytest.raises(ValueError, match="normalize must be True, False or None, got 'yes'"):
        ExtractionConfig(normalize="yes")


def test_the_cache_key_includes_the_normalisation(tmp_path):
    model, audio, timing = brain(True), story(), RunTiming(1.5, 0.0)
    cache = FeatureCache(tmp_path)
    calls = []
    handle = model.wav2vec2.encoder.register_forward_hook(lambda *args: calls.append(1))

    def entry(extraction: ExtractionConfig):
        return stimulus_features(
            model,
            audio,
            stimulus_id="story",
            model_id=model_identity(model, "tiny"),
            cache=cache,
            timings=[timing],
            extraction=extraction,
        )[timing]

    try:
        normalised = entry(ExtractionConfig(normalize=True, **CHUNKS))
        raw = entry(ExtractionConfig(normalize=False, **CHUNKS))
        assert raw.path != normalised.path
        assert normalised.metadata["key"]["extraction"]["normalize"] is True
        done = len(calls)
        default = entry(ExtractionConfig(**CHUNKS))  # the model says do_normalize: a hit
        assert default.path == normalised.path and len(calls) == done
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def lv60_dir(tmp_path_factory):
    """A plain checkpoint whose feature extractor says do_normalize=True."""
    path = tmp_path_factory.mktemp("lv60")
    lv60_like().save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(path)
    return path


def test_extract_defaults_to_the_checkpoints_do_normalize(dataset, lv60_dir, tmp_path, passes):  # noqa: F811
    out = tmp_path / "features"
    argv = [str(dataset), "--model", str(lv60_dir), "--out", str(out), "--stimuli", "beta"]
    assert main(argv) == 0
    default = pd.read_parquet(out / "index.parquet")
    assert main([*argv, "--normalize"]) == 0
    assert len(passes) == 1  # the checkpoint's do_normalize=True: the same entries, no model work
    pd.testing.assert_frame_equal(pd.read_parquet(out / "index.parquet"), default)
    assert main([*argv, "--no-normalize"]) == 0
    assert len(passes) == 2
    raw = pd.read_parquet(out / "index.parquet")
    assert set(raw["key"]).isdisjoint(default["key"])
