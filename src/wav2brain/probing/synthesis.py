"""Speech and noise of the offline probing tasks: espeak-ng speakers, 16 kHz speech, SNR mixing.

A *speaker* is one espeak-ng voice (an English accent), one voice variant (``+m3``, ``+f2``: the
variant files of espeak-ng, which change formants, breathiness and pitch contour), one base pitch
and one speaking rate. These are the only speaker traits espeak-ng offers; two speakers that
differ in rate alone are distinct speakers here, as two people with the same voice who speak at
different speeds would be. Synthesis goes through
:func:`wav2brain.simulation.speech.synthesize_many` (one child process per voice and pitch, so
the samples never depend on what ran before), and the 22,050 Hz output is resampled to 16 kHz
with :func:`wav2brain.data.audio.resample_audio`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2brain.data.audio import resample_audio
from wav2brain.data.hf_layout import SAMPLING_RATE

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown")
"""Noise colours of :func:`make_noise`: flat, 1/f and 1/f^2 power spectra."""

_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True, order=True)
class Speaker:
    """One synthetic speaker: espeak-ng voice, variant, base pitch (0-100) and rate (words/min)."""

    voice: str
    variant: str
    pitch: int
    rate_wpm: int

    @property
    def espeak_voice(self) -> str:
        """The name passed to ``espeak_SetVoiceByName`` (``en-us+f2``)."""
        return f"{self.voice}+{self.variant}" if self.variant else self.voice

    @property
    def name(self) -> str:
        """A stable identifier, e.g. ``en-us+f2-p50-r170``."""
        return f"{self.espeak_voice}-p{self.pitch}-r{self.rate_wpm}"


@dataclass(frozen=True)
class Utterance:
    """One spoken text at 16 kHz.

    Attributes
    ----------
    waveform : np.ndarray
        float32 [samples] at :data:`~wav2brain.data.hf_layout.SAMPLING_RATE` (16 kHz).
    phonemes : tuple of str
        espeak-ng's phonemes in order (IPA, stress marks removed; pauses are not phonemes).
    speech_start_s, speech_end_s : float
        Start of the first and end of the last phoneme (s from the start of ``waveform``).
    """

    waveform: np.ndarray
    phonemes: tuple[str, ...]
    speech_start_s: float
    speech_end_s: float


def espeak_variants() -> tuple[str, ...]:
    """Names of the voice variants espeak-ng ships (files of ``espeak-ng-data/voices/!v``).

    ``espeak_SetVoiceByName("en-us+xx")`` accepts an unknown variant and silently speaks the
    plain voice, so variants are checked against this list instead.
    """
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return tuple(sorted(path.name for path in folder.iterdir() if path.is_file()))


def normalize_text(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation removed (the ``text`` column)."""
    return " ".join(_WORD.findall(text.lower()))


def speaker_pool(
    voices: Sequence[str],
    variants: Sequence[str],
    pitches: Sequence[int],
    rates_wpm: Sequence[int],
    rng: np.random.Generator,
) -> list[Speaker]:
    """Every voice x variant x pitch x rate combination, in an order shuffled by ``rng``."""
    pool = [Speaker(*combo) for combo in itertools.product(voices, variants, pitches, rates_wpm)]
    return [pool[i] for i in rng.permutation(len(pool))]


def speak(requests: Sequence[tuple[Speaker, str]]) -> list[Utterance]:
    """Synthesise ``(speaker, text)`` requests; the result is in the order of the requests.

    Requests are grouped by espeak voice and pitch (one child process each, texts in request
    order with their speakers' rates), so the same requests always give the same samples.
    """
    from wav2brain.simulation.speech import synthesize_many

    groups: dict[tuple[str, int], list[int]] = {}
    for index, (speaker, _) in enumerate(requests):
        groups.setdefault((speaker.espeak_voice, speaker.pitch), []).append(index)
    results: list[Utterance | None] = [None] * len(requests)
    for (voice, pitch), indices in groups.items():
        texts = [requests[i][1] for i in indices]
        rates = [requests[i][0].rate_wpm for i in indices]
        for index, speech in zip(indices, synthesize_many(texts, voice, rates, pitch), strict=True):
            if not speech.phonemes:
                raise RuntimeError(f"espeak-ng produced no phonemes for {requests[index][1]!r}")
            results[index] = Utterance(
                waveform=resample_audio(speech.waveform, speech.sampling_rate, SAMPLING_RATE),
                phonemes=tuple(token.label for token in speech.phonemes),
                speech_start_s=speech.phonemes[0].start,
                speech_end_s=speech.phonemes[-1].end,
            )
    return [result for result in results if result is not None]


def make_noise(kind: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of unit RMS with a white, pink (1/f) or brown (1/f^2) power spectrum.

    Coloured noise is white noise shaped in the frequency domain (amplitude ``f**-0.5`` or
    ``f**-1``, the DC bin set to zero), then scaled to unit RMS. Returns float64 [n_samples].
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    white = rng.standard_normal(n_samples)
    if kind != "white":
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n_samples)
        exponent = 0.5 if kind == "pink" else 1.0
        gain = np.zeros_like(freqs)
        gain[1:] = freqs[1:] ** -exponent
        white = np.fft.irfft(spectrum * gain, n=n_samples)
    return white / np.sqrt(np.mean(white**2))


def rms(wave: np.ndarray) -> float:
    """Root mean square of a wave (its own units)."""
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def limit_peak(wave: np.ndarray, peak: float) -> np.ndarray:
    """``wave`` as float32, scaled down (never up) so that no |sample| exceeds ``peak``."""
    largest = float(np.max(np.abs(wave))) if wave.size else 0.0
    scale = peak / largest if largest > peak else 1.0
    return (np.asarray(wave, dtype=np.float64) * scale).astype(np.float32)
