"""Audio at any rate and channel count -> 16 kHz mono float32, checked against scipy's FFT resampler."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample as fft_resample

from fabricate import fabricate_layout
from wav2brain.data import audio_info, load_audio, resample_audio


def sine(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"),
    [(44100, 2, "PCM_16"), (48000, 1, "FLOAT"), (22050, 1, "PCM_24"), (8000, 2, "PCM_16")],
)
def test_load_audio_matches_sine_and_fft_oracle(tmp_path, rate, channels, subtype):
    seconds, freq = 1.0, 440.0
    wave = sine(rate, seconds, freq)
    path = tmp_path / "tone.wav"
    sf.write(path, np.repeat(wave[:, None], channels, axis=1), rate, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == int(np.ceil(len(wave) * 16000 / rate))
    truth = sine(16000, len(out) / 16000, freq)
    oracle = fft_resample(sf.read(path, always_2d=True)[0].mean(axis=1), len(out))
    inner = slice(400, len(out) - 400)  # both filters have edge effects
    assert np.max(np.abs(out[inner] - truth[inner])) < 5e-3
    assert np.max(np.abs(out[inner] - oracle[inner])) < 5e-3


def test_stereo_is_averaged(tmp_path):
    left = sine(16000, 0.5)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, -left], axis=1), 16000, subtype="FLOAT")
    assert np.max(np.abs(load_audio(path))) < 1e-6
    sf.write(path, np.stack([left, 0 * left], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), left / 2, atol=1e-6)


def test_other_target_rate_and_identity():
    wave = sine(16000, 0.25).astype(np.float32)
    np.testing.assert_array_equal(resample_audio(wave, 16000, 16000), wave)
    assert len(resample_audio(wave, 16000, 8000)) == len(wave) // 2


def test_fabricated_narratives_wavs_last_as_long_as_the_story(real_layouts, tmp_path):
    root = fabricate_layout(real_layouts / "ds002345", tmp_path / "ds002345")
    rates = set()
    for name, seconds in [("pieman", 437.0), ("milkywaysynonyms", 425.0), ("tunnel", 1534.0)]:
        path = root / "stimuli" / f"{name}_audio.wav"
        rate, channels, duration = audio_info(path)
        rates.add((rate, channels))
        assert duration == pytest.approx(seconds, abs=1e-3)
    assert len(rates) > 1  # mixed sample rates / channel counts
    out = load_audio(root / "stimuli" / "milkywaysynonyms_audio.wav")
    assert len(out) == pytest.approx(425.0 * 16000, abs=16)


def test_bad_audio_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + bytes(range(200)))
    with pytest.raises(ValueError, match="cannot read audio file .*garbage.wav"):
        load_audio(garbage)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    with pytest.raises(ValueError, match="empty.wav holds no samples"):
        load_audio(empty)
    with pytest.raises(ValueError, match="sampling_rate must be a positive"):
        load_audio(garbage, sampling_rate=0)
    with pytest.raises(ValueError, match="mono signal"):
        resample_audio(np.zeros((10, 2)), 16000, 8000)
    with pytest.raises(ValueError, match="positive Hz"):
        resample_audio(np.zeros(10), 0, 16000)
