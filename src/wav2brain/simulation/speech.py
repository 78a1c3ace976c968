"""Offline speech synthesis with espeak-ng, with exact word and phoneme timings.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its data; this module drives the C API
(``speak_lib.h``, API revision 12) through :mod:`ctypes` in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode. The
synthesis callback receives the audio (16-bit PCM at espeak's own rate, 22050 Hz) together with
events: ``espeakEVENT_WORD`` gives the word's 1-based character position and length in the text,
``espeakEVENT_PHONEME`` the phoneme's name (IPA, because the library is initialised with
``espeakINITIALIZE_PHONEME_IPA``); every event carries ``sample``, its position in the output in
samples counted from the start of the ``espeak_Synth`` call (``audio_position`` is the same in ms).

Timing conventions (seconds from the start of the returned waveform):

* a phoneme starts at its event's sample and ends where the next phoneme event (including a pause)
  starts, or at the end of the audio;
* a word starts where its first phoneme starts and ends where its last phoneme ends;
* pauses (empty IPA names, ``_`` mnemonics) are not phonemes; stress marks (``ˈ``, ``ˌ``) are
  removed from phoneme labels so that a label names the phone, not its stress.

espeak-ng keeps its state in process-global variables and carries some of it from one synthesis to
the next, so the library only ever runs in a short-lived child process (see :func:`synthesize_many`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wav2brain.data.alignments import AlignedToken

ESPEAK_RATE_RANGE_WPM: tuple[int, int] = (80, 450)
"""Speaking rates espeak-ng accepts (words per minute), ``espeakRATE_MINIMUM..MAXIMUM``."""

ESPEAK_PITCH_RANGE: tuple[int, int] = (0, 100)
"""Base pitch range of ``espeak_SetParameter(espeakPITCH, ...)`` (espeak's units, 50 = normal)."""

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_STRESS_MARKS = "ˈˌ"
_RAND_SEED = 0


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of ``speak_lib.h`` (enum stored as ``int``)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class SynthesizedSpeech:
    """Speech audio with its word and phoneme alignment.

    Attributes
    ----------
    waveform : np.ndarray
        float32 mono samples in [-1, 1], shape [samples].
    sampling_rate : int
        Sample rate of ``waveform`` (Hz).
    words, phonemes : list of AlignedToken
        Labels with start and end times (s) from the start of ``waveform``.
    text : str
        The text that was spoken.
    """

    waveform: np.ndarray
    sampling_rate: int
    words: list[AlignedToken]
    phonemes: list[AlignedToken]
    text: str

    @property
    def duration(self) -> float:
        """Length of the waveform (s)."""
        return self.waveform.shape[0] / self.sampling_rate


@dataclass(frozen=True)
class _RawEvent:
    kind: int
    sample: int
    text_position: int
    length: int
    phoneme: str


class _Engine:
    """The initialised espeak-ng library (one per child process, see :func:`synthesize_many`)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetParameter.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib.espeak_Synth.restype = ctypes.c_int
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        data_path = espeakng_loader.get_data_path()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), options)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {data_path}")
        # espeak_Initialize seeds espeak's noise generator with the time (s); voice variants
        # with breath noise (``+f3``, ...) would then differ from one second to the next.
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_ng_SetRandSeed.restype = None
        self.lib.espeak_ng_SetRandSeed(_RAND_SEED)
        self.sampling_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[_RawEvent] = []
        self._callback = _SynthCallback(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, n_samples: int, events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type in (_EVENT_WORD, _EVENT_PHONEME):
                phoneme = ""
                if event.type == _EVENT_PHONEME:
                    phoneme = bytes(event.id.string).split(b"\0")[0].decode("utf-8", "replace")
                self._events.append(
                    _RawEvent(event.type, event.sample, event.text_position, event.length, phoneme)
                )
            index += 1
        return 0

    def synthesize(
        self, text: str, voice: str, rate_wpm: int, pitch: int
    ) -> tuple[np.ndarray, list[_RawEvent]]:
        """int16 PCM [samples] and the word / phoneme events of one ``espeak_Synth`` call."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice named {voice!r} (e.g. 'en-us', 'en-gb-x-rp')")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        self._chunks, self._events = [], []
        encoded = text.encode("utf-8")
        status = self.lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for text {text[:40]!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm, self._events


def _align(
    text: str, events: list[_RawEvent], n_samples: int, sampling_rate: int
) -> tuple[list[AlignedToken], list[AlignedToken]]:
    """Turn espeak word and phoneme events into tokens with start and end times (s).

    Phoneme events carry the text position of their word, which groups them: a word spans from
    its first phoneme's start to its last phoneme's end. (espeak's word event itself can come a
    phoneme early, overlapping the previous word, so it gives only the word's text.) Phonemes
    of no word (none in practice for plain text) and zero-length phonemes (espeak sometimes emits
    two events at one sample) are dropped, so every phoneme lies in a word and is heard.
    """
    labels = {
        event.text_position: text[event.text_position - 1 : event.text_position - 1 + event.length]
        for event in events
        if event.kind == _EVENT_WORD
    }
    phone_events = [event for event in events if event.kind == _EVENT_PHONEME]
    phone_ends = [event.sample for event in phone_events[1:]] + [n_samples]
    phonemes: list[AlignedToken] = []
    spans: dict[int, list[float]] = {}
    for event, end in zip(phone_events, phone_ends, strict=True):
        label = "".join(char for char in event.phoneme if char not in _STRESS_MARKS).strip()
        unheard = end <= event.sample or event.text_position not in labels
        if not label or label.startswith("_") or unheard:
            continue
        token = AlignedToken(label, event.sample / sampling_rate, end / sampling_rate)
        phonemes.append(token)
        spans.setdefault(event.text_position, [token.start, token.end])[1] = token.end
    words = [AlignedToken(labels[position], *span) for position, span in spans.items()]
    return words, phonemes


def _check_request(text: Any, voice: Any, rate_wpm: Any, pitch: Any) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text to synthesise must be a non-empty string, got {text!r}")
    if not isinstance(voice, str) or not voice:
        raise ValueError(f"voice must be an espeak-ng voice name, got {voice!r}")
    low, high = ESPEAK_RATE_RANGE_WPM
    if isinstance(rate_wpm, bool) or not isinstance(rate_wpm, int) or not low <= rate_wpm <= high:
        raise ValueError(
            f"rate_wpm must be an integer in [{low}, {high}] words/min, got {rate_wpm!r}"
        )
    low, high = ESPEAK_PITCH_RANGE
    if isinstance(pitch, bool) or not isinstance(pitch, int) or not low <= pitch <= high:
        raise ValueError(f"pitch must be an integer in [{low}, {high}], got {pitch!r}")


def _synthesize_all(
    texts: list[str], voice: str, rates_wpm: list[int], pitch: int
) -> list[SynthesizedSpeech]:
    """Synthesise ``texts`` in order with one freshly initialised engine (runs in a child)."""
    engine = _Engine()
    results = []
    for text, rate in zip(texts, rates_wpm, strict=True):
        pcm, events = engine.synthesize(text, voice, rate, pitch)
        words, phonemes = _align(text, events, pcm.shape[0], engine.sampling_rate)
        waveform = (pcm.astype(np.float32) / 32768.0).astype(np.float32)
        results.append(SynthesizedSpeech(waveform, engine.sampling_rate, words, phonemes, text))
    return results


def _unknown_voices(voices: list[str]) -> list[str]:
    """The names in ``voices`` that espeak-ng cannot select (runs in a child)."""
    engine = _Engine()
    return [v for v in voices if engine.lib.espeak_SetVoiceByName(v.encode()) != _EE_OK]


def _child(connection, function: Callable[..., Any], *args: Any) -> None:
    try:
        connection.send(function(*args))
    except BaseException as error:  # sent to the parent, which re-raises it
        connection.send(error)
    finally:
        connection.close()


def _run_isolated(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in a new child process (forked where possible); return its result."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, *args))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError as error:
        raise RuntimeError(f"espeak-ng process died (exit code {process.exitcode})") from error
    finally:
        process.join()
        receiver.close()
    if isinstance(result, BaseException):
        raise result
    return result


def check_voices(voices: Sequence[str]) -> None:
    """Raise ValueError naming every voice espeak-ng cannot select (a cheap check before work)."""
    for voice in voices:
        if not isinstance(voice, str) or not voice:
            raise ValueError(f"voice must be an espeak-ng voice name, got {voice!r}")
    if unknown := _run_isolated(_unknown_voices, list(voices)):
        raise ValueError(
            f"espeak-ng has no voice named {', '.join(map(repr, unknown))} "
            "(e.g. 'en-us', 'en-gb-x-rp', 'en-gb-scotland')"
        )


def synthesize_many(
    texts: Sequence[str],
    voice: str = "en-us",
    rates_wpm: Sequence[int] | int = 175,
    pitch: int = 50,
) -> list[SynthesizedSpeech]:
    """Speak several texts in order with one voice, in a fresh process; see :func:`synthesize`.

    espeak-ng carries synthesis state from one ``espeak_Synth`` call to the next (the waveform of
    the same text differs by a few samples on a second call, measured with espeak-ng 1.52; neither
    ``espeak_Initialize`` nor ``espeak_ng_SetRandSeed`` resets it). Each call of this function
    therefore runs the library in a new child process (forked where the platform allows), so that
    the same texts and settings always give the same samples, whatever ran before, and the
    process-global library state is never shared between threads.

    Parameters
    ----------
    texts : sequence of str
        Texts spoken one after the other (the state carried between them is part of the result).
    voice : str
        espeak-ng voice name.
    rates_wpm : int or sequence of int
        One rate for all texts, or one per text (words/min).
    pitch : int
        Base pitch (0-100).
    """
    texts = list(texts)
    rates = [rates_wpm] * len(texts) if isinstance(rates_wpm, int) else list(rates_wpm)
    if not texts:
        raise ValueError("synthesize_many needs at least one text, got none")
    if len(rates) != len(texts):
        raise ValueError(f"got {len(rates)} rates_wpm for {len(texts)} texts; give one or one each")
    for text, rate in zip(texts, rates, strict=True):
        _check_request(text, voice, rate, pitch)
    return _run_isolated(_synthesize_all, texts, voice, rates, pitch)


def synthesize(
    text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50
) -> SynthesizedSpeech:
    """Speak ``text`` with espeak-ng and return the audio with its word and phoneme alignment.

    Parameters
    ----------
    text : str
        Text to speak (UTF-8; words are taken from it by espeak's character positions).
    voice : str
        espeak-ng voice name, e.g. ``"en-us"``, ``"en-gb-x-rp"``, ``"en-gb-scotland"``.
    rate_wpm : int
        Speaking rate (words per minute), within :data:`ESPEAK_RATE_RANGE_WPM`.
    pitch : int
        Base pitch in espeak's units (0-100, 50 = the voice's normal pitch).

    Returns
    -------
    SynthesizedSpeech
        float32 waveform at espeak's sample rate (22050 Hz) with words and phonemes (s); the
        same arguments always give the same samples (see :func:`synthesize_many`).
    """
    return synthesize_many([text], voice, [rate_wpm], pitch)[0]


def concatenate_speech(parts: list[SynthesizedSpeech]) -> SynthesizedSpeech:
    """Join speech segments end to end, shifting each segment's tokens by the time before it (s).

    Raises
    ------
    ValueError
        If ``parts`` is empty or the segments have different sample rates.
    """
    if not parts:
        raise ValueError("concatenate_speech needs at least one segment, got none")
    rates = {part.sampling_rate for part in parts}
    if len(rates) != 1:
        raise ValueError(f"speech segments have different sample rates {sorted(rates)} Hz")
    sampling_rate = rates.pop()
    words: list[AlignedToken] = []
    phonemes: list[AlignedToken] = []
    offset_samples = 0
    for part in parts:
        shift = offset_samples / sampling_rate
        words += [AlignedToken(t.label, t.start + shift, t.end + shift) for t in part.words]
        phonemes += [AlignedToken(t.label, t.start + shift, t.end + shift) for t in part.phonemes]
        offset_samples += part.waveform.shape[0]
    waveform = np.concatenate([part.waveform for part in parts])
    text = " ".join(part.text for part in parts)
    return SynthesizedSpeech(waveform, sampling_rate, words, phonemes, text)
