"""Feature cache: keys, hits without model work, atomic writes, detection of bad entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import wav2brain
from wav2brain.features.cache import (
    CACHE_FORMAT_VERSION,
    METADATA_FIELD,
    FeatureCache,
    FeatureKey,
    audio_sha256,
    model_identity,
    open_entry,
)
from wav2brain.features.extract import ExtractionConfig, extract_activations
from wav2brain.features.hrf import resample_frames
from wav2brain.features.pipeline import RunTiming, run_features, stimulus_features
from wav2brain.features.resample import TRGrid, TRGridConfig

FS = 50.0


@pytest.fixture(scope="module")
def model():
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from conftest import tiny_wav2vec2_kwargs

    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs())).eval()


@pytest.fixture(scope="module")
def audio():
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(16_000 * 6)).astype(np.float32)  # 6 s


class Counter:
    """Counts transformer encoder calls (every model pass goes through ``model.encoder``)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.encoder.register_forward_hook(self.hook)

    def hook(self, *args):
        self.calls += 1


@pytest.fixture
def counter(model):
    counter = Counter(model)
    yield counter
    counter.handle.remove()


def features(model, audio, cache, timings, **kwargs):
    return stimulus_features(
        model,
        audio,
        stimulus_id="story/1",
        model_id=model_identity(model, "tiny"),
        cache=cache,
        timings=timings,
        extraction=ExtractionConfig(chunk_seconds=2.0, context_seconds=1.0),
        **kwargs,
    )


def test_hit_does_no_model_work_and_matches_direct_sampling(model, audio, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    timing = RunTiming(1.5, 2.0)
    first = features(model, audio, cache, [timing])[timing]
    assert counter.calls > 0
    calls = counter.calls
    again = features(model, audio, FeatureCache(tmp_path), [timing])[timing]
    assert counter.calls == calls  # hit: no model work
    assert again.path == first.path and sorted(again.layers) == ["layer_01", "layer_02"]
    assert isinstance(again["layer_02"], np.memmap) and not again["layer_02"].flags.writeable
    frames = extract_activations(
        model, audio, ExtractionConfig(chunk_seconds=2.0, context_seconds=1.0)
    )
    on_run = run_features(again, timing, 12, TRGridConfig())
    for layer, value in frames.items():
        direct = resample_frames(value, FS, 1.5, 12, 2.0, TRGridConfig())
        np.testing.assert_allclose(on_run[layer], direct, atol=1e-5 * np.abs(direct).max())
    assert on_run["layer_01"].shape == (12, 32)


def test_runs_share_entries_by_tr_and_phase_in_one_pass(model, audio, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    timings = [RunTiming(1.5, 0.0), RunTiming(1.5, 3.0), RunTiming(1.52, 0.0), RunTiming(1.5, 0.7)]
    entries = features(model, audio, cache, timings)
    one_pass = counter.calls
    paths = {t: e.path for t, e in entries.items()}
    assert paths[timings[0]] == paths[timings[1]]  # onsets 2 TRs apart: same grid
    assert len(set(paths.values())) == 3  # TR 1.52 and the 0.7-s phase get their own entries
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
    counter.calls = 0
    features(model, audio, cache, timings[:1])
    assert counter.calls == 0
    features(model, audio, FeatureCache(tmp_path / "single"), [RunTiming(2.0, 0.0)])
    assert counter.calls == one_pass  # three grids cost the model work of one
    direct = extract_activations(
        model, audio, ExtractionConfig(chunk_seconds=2.0, context_seconds=1.0)
    )
    for timing, entry in entries.items():
        run = run_features(entry, timing, 10, TRGridConfig())
        expected = resample_frames(
            direct["layer_01"], FS, timing.tr_s, 10, timing.onset_s, TRGridConfig()
        )
        np.testing.assert_allclose(run["layer_01"], expected, atol=1e-5 * np.abs(expected).max())


def test_keys_separate_settings_and_fir_entries_align_with_delays(model, audio, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    timing = RunTiming(2.0, 1.0)
    hrf = features(model, audio, cache, [timing])[timing]
    fir_config = TRGridConfig(method="fir", delays=(1, 2))
    fir = features(model, audio, cache, [timing], grid_config=fir_config)[timing]
    assert hrf.path != fir.path
    on_run = run_features(fir, timing, 8, fir_config, layers=["layer_02"])
    assert list(on_run) == ["layer_02"] and on_run["layer_02"].shape == (8, 64)
    louder = features(model, 2 * audio, cache, [timing])[timing]
    assert louder.path != hrf.path  # the audio hash is in the key
    other = stimulus_features(
        model,
        audio,
        stimulus_id="story/1",
        model_id=model_identity(model, "tiny", revision="v2"),
        cache=cache,
        timings=[timing],
        extraction=ExtractionConfig(chunk_seconds=2.0, context_seconds=1.0),
    )[timing]
    assert other.path != hrf.path and other.path.parent == hrf.path.parent


def corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def corrupt_garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def corrupt_no_metadata(path):
    from safetensors.numpy import save_file

    save_file({"layer_01": np.zeros((3, 32), np.float32)}, str(path))


def rewrite_record(path, change):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as handle:
        record = json.loads(handle.metadata()[METADATA_FIELD])
    change(record)
    save_file(load_file(str(path)), str(path), metadata={METADATA_FIELD: json.dumps(record)})


def corrupt_version(path):
    rewrite_record(path, lambda record: record.update(format_version=CACHE_FORMAT_VERSION - 1))


def corrupt_package_version(path):
    rewrite_record(path, lambda record: record.update(wav2brain_version="0.0.1-other"))


def corrupt_key(path):
    rewrite_record(path, lambda record: record["key"].update(tr_s=9.9))


def corrupt_units(path):
    rewrite_record(path, lambda record: record["units"].update(layer_01=31))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (corrupt_truncate, "not a valid safetensors"),
        (corrupt_garbage, "not a valid safetensors"),
        (corrupt_no_metadata, "no 'wav2brain' metadata"),
        (corrupt_version, "cache format"),
        (corrupt_package_version, "written by wav2brain 0.0.1-other, this is "),
        (corrupt_key, "another key"),
        (corrupt_units, "expected F32"),
    ],
)
def test_bad_entries_are_detected_and_recomputed(model, audio, tmp_path, counter, corrupt, message):
    cache = FeatureCache(tmp_path)
    timing = RunTiming(1.5, 0.0)
    good = features(model, audio, cache, [timing])[timing]
    reference = {name: np.array(value) for name, value in good.layers.items()}
    path = good.path
    corrupt(path)
    with pytest.raises(ValueError, match=message):
        open_entry(path, FeatureKey(**good.metadata["key"]))
    counter.calls = 0
    fresh = features(model, audio, cache, [timing])[timing]
    assert counter.calls > 0 and fresh.path == path  # recomputed in place
    for name, value in reference.items():
        np.testing.assert_array_equal(fresh[name], value)
    assert open_entry(path).metadata["format_version"] == CACHE_FORMAT_VERSION
    assert open_entry(path).metadata["wav2brain_version"] == wav2brain.__version__


def test_an_upgrade_of_wav2brain_makes_entries_stale(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = FeatureKey({"name": "m"}, "s", audio_sha256(np.zeros(4)), {}, {}, 1.5, 0.0, FS)
    cache.put(key, TRGrid(1.5, 0.0, 4), {"a": np.ones((4, 2), np.float32)})
    assert cache.get(key) is not None
    monkeypatch.setattr(wav2brain, "__version__", "99.0.0")
    assert cache.get(key) is None
    assert (
        cache.put(key, TRGrid(1.5, 0.0, 4), {"a": np.ones((4, 2), np.float32)}).metadata[
            "wav2brain_version"
        ]
        == "99.0.0"
    )


def test_writes_are_atomic_and_leave_no_partial_file(tmp_path, monkeypatch):
    import safetensors.numpy

    cache = FeatureCache(tmp_path)
    key = FeatureKey({"name": "m"}, "s", audio_sha256(np.zeros(4)), {}, {}, 1.5, 0.0, FS)
    grid = TRGrid(1.5, 0.0, 4)

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half an entry")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, grid, {"a": np.ones((4, 2), np.float32)})
    assert list(tmp_path.rglob("*")) == [cache.path(key).parent]
    assert cache.get(key) is None
    monkeypatch.undo()
    entry = cache.get_or_compute(key, lambda: (grid, {"a": np.ones((4, 2), np.float32)}))
    np.testing.assert_array_equal(entry["a"], 1.0)
    with pytest.raises(KeyError, match="layer 'b'"):
        entry["b"]


def test_bad_input_is_refused_before_model_work(model, audio, tmp_path, counter):
    cache = FeatureCache(tmp_path)
    key = FeatureKey({"name": "m"}, "s", "0", {}, {}, 1.5, 0.0, FS)
    with pytest.raises(ValueError, match=r"expected \[4 rows, units\]"):
        cache.put(key, TRGrid(1.5, 0.0, 4), {"a": np.ones((5, 2), np.float32)})
    with pytest.raises(ValueError, match="no layers"):
        cache.put(key, TRGrid(1.5, 0.0, 4), {})
    with pytest.raises(ValueError, match="no run timings"):
        features(model, audio, cache, [])
    with pytest.raises(ValueError, match="shorter than the model's receptive field"):
        features(model, audio[:300], cache, [RunTiming(1.5, 0.0)])
    with pytest.raises(ValueError, match="TR must be a positive"):
        features(model, audio, cache, [RunTiming(-1.5, 0.0)])
    with pytest.raises(ValueError, match="onset must be a finite"):
        features(model, audio, cache, [RunTiming(1.5, float("inf"))])
    with pytest.raises(ValueError, match="is not a wav2vec2-family model"):
        features(torch.nn.Linear(2, 2), audio, cache, [RunTiming(1.5, 0.0)])
    assert counter.calls == 0 and not list(tmp_path.rglob("*.safetensors"))


def test_model_identity_tracks_weights_unless_a_revision_pins_them(model):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from conftest import tiny_wav2vec2_kwargs

    torch.manual_seed(1)
    other = Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs()))
    a, b = model_identity(model, "tiny"), model_identity(other, "tiny")
    assert a["config_sha256"] == b["config_sha256"] and a["weights_sha256"] != b["weights_sha256"]
    pinned = model_identity(other, "tiny", revision="abc123")
    assert pinned["revision"] == "abc123" and "weights_sha256" not in pinned
