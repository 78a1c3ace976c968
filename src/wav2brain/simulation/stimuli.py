"""Stimuli of the simulated dataset: espeak-ng stories with a music or silence lead-in.

Internal helpers of :mod:`wav2brain.simulation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wav2brain.data.alignments import AlignedToken

if TYPE_CHECKING:
    from wav2brain.simulation.configuration import SimulationConfig


@dataclass(frozen=True)
class Stimulus:
    """One story's WAV (lead-in included) with its alignment and place in the scan."""

    task: str
    waveform: np.ndarray  # float32 [samples] at sampling_rate, as written (int16-quantised)
    sampling_rate: int
    words: list[AlignedToken]  # s from the WAV start
    phonemes: list[AlignedToken]
    transcript: str
    lead_in: str
    music_duration_s: float  # 0 without a music lead-in
    audio_onset_s: float  # scan time of the WAV's first sample
    story_offset_s: float  # time of the story in the WAV
    story_duration_s: float
    voice: str
    rate_wpm: int
    pitch: int
    n_trs: int


def make_music(duration_s: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded melody of 0.5-s triads (sines with 3 harmonics, attack/decay) over soft noise."""
    n = int(round(duration_s * sampling_rate))
    out = np.zeros(n, dtype=np.float64)
    note_len = int(0.5 * sampling_rate)
    t = np.arange(note_len) / sampling_rate
    envelope = np.minimum(t / 0.02, 1.0) * np.exp(-3.0 * t)
    for start in range(0, n, note_len):
        root = 220.0 * 2 ** (int(rng.integers(0, 12)) / 12)
        note = sum(
            np.sin(2 * np.pi * root * ratio * harmonic * t) / harmonic
            for ratio in (1.0, 1.26, 1.5)
            for harmonic in (1, 2, 3)
        )
        stop = min(start + note_len, n)
        out[start:stop] += (envelope * note)[: stop - start]
    out = 0.3 * out / np.max(np.abs(out)) + 0.01 * rng.standard_normal(n)
    return out.astype(np.float32)


def _speak_story(config: SimulationConfig, index: int, seed: int):
    """Synthesise sentences of a seeded story until ``story_duration_s`` of speech is reached.

    Each sentence's rate is the story's rate times a factor drawn uniformly in
    [1 - rate_jitter, 1 + rate_jitter] (clipped to espeak's range), so that word and phoneme
    rates vary within the story instead of following the loudness envelope in lockstep.
    Sentences go to espeak in batches estimated to last 1.2 times the speech still missing
    (words * 60 / rate + 0.5 s each); the story ends with the sentence that reaches the length.
    """
    from wav2brain.simulation.speech import (
        ESPEAK_RATE_RANGE_WPM,
        concatenate_speech,
        synthesize_many,
    )
    from wav2brain.simulation.stories import iter_sentences

    voice = config.voices[index % len(config.voices)]
    rate = config.rates_wpm[index % len(config.rates_wpm)]
    pitch = config.pitches[index % len(config.pitches)]
    rng = np.random.default_rng([seed, index])
    sentences = iter_sentences(seed)
    parts, total = [], 0.0
    while total < config.story_duration_s:
        batch, rates, estimate = [], [], 0.0
        while estimate < 1.2 * (config.story_duration_s - total):
            factor = 1.0 + rng.uniform(-config.rate_jitter, config.rate_jitter)
            rates.append(int(np.clip(round(rate * factor), *ESPEAK_RATE_RANGE_WPM)))
            batch.append(next(sentences))
            estimate += len(batch[-1].split()) * 60.0 / rates[-1] + 0.5
        for part in synthesize_many(batch, voice, rates, pitch):
            parts.append(part)
            total += part.duration
            if total >= config.story_duration_s:
                break
    return concatenate_speech(parts), voice, rate, pitch


def make_stimulus(config: SimulationConfig, index: int, seed: int) -> Stimulus:
    """Build story ``index``: speech, lead-in, quantisation to 16-bit and its place in the scan."""
    speech, voice, rate, pitch = _speak_story(config, index, seed)
    rate_hz = speech.sampling_rate
    lead_in = config.lead_ins[index % len(config.lead_ins)]
    if lead_in == "music":
        music = make_music(config.music_duration_s, rate_hz, np.random.default_rng(seed))
        gap = np.zeros(int(round(config.music_gap_s * rate_hz)), dtype=np.float32)
        head = np.concatenate([music, gap])
        audio_onset = 0.0
    else:
        head = np.zeros(0, dtype=np.float32)
        audio_onset = config.silence_duration_s
    offset = head.shape[0] / rate_hz
    waveform = np.concatenate([head, speech.waveform])
    waveform = (np.round(np.clip(waveform, -1.0, 32767 / 32768) * 32768) / 32768).astype(np.float32)

    def shifted(tokens):
        return [AlignedToken(t.label, t.start + offset, t.end + offset) for t in tokens]

    scan_s = audio_onset + waveform.shape[0] / rate_hz + config.post_stimulus_s
    return Stimulus(
        task=f"story{index + 1:02d}",
        waveform=waveform,
        sampling_rate=rate_hz,
        words=shifted(speech.words),
        phonemes=shifted(speech.phonemes),
        transcript=speech.text,
        lead_in=lead_in,
        music_duration_s=config.music_duration_s if lead_in == "music" else 0.0,
        audio_onset_s=audio_onset,
        story_offset_s=offset,
        story_duration_s=speech.duration,
        voice=voice,
        rate_wpm=rate,
        pitch=pitch,
        n_trs=int(math.ceil(scan_s / config.tr_s)),
    )
