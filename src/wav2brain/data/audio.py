"""Read stimulus audio at any sample rate and channel count as 16 kHz mono float32.

wav2vec 2.0 expects 16 kHz mono input. Stimulus WAVs come at 44.1 or 48 kHz, mono or stereo,
16-bit or float. Channels are averaged (the mean is what a listener hears through both earphones
and keeps the level of a mono file written as two identical channels), then the signal is resampled
with a polyphase FIR filter (:func:`scipy.signal.resample_poly`), which is exact for rational rate
ratios and, unlike FFT resampling, does not wrap the end of an hour-long story onto its start.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from wav2brain.data.bids import require_file

TARGET_SAMPLING_RATE = 16_000
"""Sampling rate (Hz) of the wav2vec 2.0 front end."""

_BLOCK_FRAMES = 1 << 20
"""Frames (samples per channel) read per block when mixing down to mono."""


def audio_info(path: str | Path) -> tuple[int, int, float]:
    """Read a sound file's header only.

    Parameters
    ----------
    path : str or Path
        Sound file (WAV, FLAC, ... anything libsndfile reads).

    Returns
    -------
    sampling_rate : int
        Hz.
    channels : int
    duration : float
        Seconds.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (a git-annex link whose content was never fetched included).
    ValueError
        If libsndfile cannot read the header.
    """
    import soundfile as sf

    path = Path(path)
    require_file(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if info.samplerate <= 0 or info.frames <= 0:
        raise ValueError(
            f"audio file {path} holds no samples (rate {info.samplerate} Hz, "
            f"{info.frames} frames); expected a non-empty sound file"
        )
    return int(info.samplerate), int(info.channels), info.frames / info.samplerate


NORMALIZE_EPSILON = 1e-7
"""Variance floor of :func:`normalize_audio` (transformers' value)."""


def load_audio(path: str | Path, sampling_rate: int = TARGET_SAMPLING_RATE) -> np.ndarray:
    """Read a sound file as mono float32 at ``sampling_rate``.

    The file is read in blocks of ``2**20`` frames and mixed to mono block by block, so a stereo
    hour at 48 kHz never exists in memory as a float32 [samples, 2] array.

    Parameters
    ----------
    path : str or Path
        Sound file.
    sampling_rate : int
        Target rate in Hz (16 kHz for wav2vec 2.0).

    Returns
    -------
    np.ndarray
        float32 [samples] at ``sampling_rate``, samples in [-1, 1] for integer files.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If the file cannot be read, or ``sampling_rate`` is not positive.
    """
    import soundfile as sf

    if sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate}")
    path = Path(path)
    orig_sr, _, _ = audio_info(path)
    try:
        with sf.SoundFile(str(path)) as handle:
            mono = np.empty(handle.frames, dtype=np.float32)
            filled = 0
            for block in handle.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
                mono[filled : filled + len(block)] = block.mean(axis=1)
                filled += len(block)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    return resample_audio(mono[:filled], orig_sr, sampling_rate)


def resample_audio(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono signal with a polyphase anti-aliasing filter.

    Parameters
    ----------
    wave : np.ndarray
        [samples] mono signal.
    orig_sr, target_sr : int
        Sampling rates in Hz.

    Returns
    -------
    np.ndarray
        float32 [ceil(samples * target_sr / orig_sr)].
    """
    from scipy.signal import resample_poly

    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"resample_audio expects a mono signal [samples], got shape {wave.shape}")
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sampling rates must be positive Hz, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    factor = gcd(int(orig_sr), int(target_sr))
    out = resample_poly(wave, int(target_sr) // factor, int(orig_sr) // factor)
    return out.astype(np.float32, copy=False)


def normalize_audio(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance float32 audio, as ``Wav2Vec2FeatureExtractor(do_normalize=True)``.

    Checkpoints pretrained on normalised audio (the lv60 family) expect it. The statistics are
    those of ``wave`` as given: one training window, or a whole stimulus when extracting features.
    """
    wave = np.asarray(wave, dtype=np.float32)
    return (wave - wave.mean()) / np.sqrt(wave.var() + NORMALIZE_EPSILON)
