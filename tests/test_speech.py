"""espeak-ng synthesis through ctypes: struct layout, timings that match the audio, bad input."""

from __future__ import annotations

import ctypes
import re
import threading

import numpy as np
import pytest

from wav2brain.data.alignments import AlignedToken
from wav2brain.simulation.speech import (
    SynthesizedSpeech,
    _Event,
    check_voices,
    concatenate_speech,
    synthesize,
    synthesize_many,
)
from wav2brain.simulation.stories import iter_sentences

TEXT = "The old sailor carried a golden lantern. Maria waited beside the quiet river."


@pytest.fixture(scope="module")
def speech() -> SynthesizedSpeech:
    return synthesize(TEXT, voice="en-us", rate_wpm=170)


def test_event_struct_matches_speak_lib_h():
    # speak_lib.h: six 32-bit ints, a pointer, then a union of int / char* / char[8].
    pointer = ctypes.sizeof(ctypes.c_void_p)
    assert _Event.sample.offset == 20
    assert _Event.user_data.offset == 24
    assert _Event.id.offset == 24 + pointer
    assert ctypes.sizeof(_Event) == 24 + pointer + 8


def test_synthesis_gives_audio_words_and_phonemes(speech):
    assert speech.sampling_rate == 22050
    assert speech.waveform.dtype == np.float32 and speech.waveform.ndim == 1
    assert 2.0 < speech.duration < 10.0
    assert np.abs(speech.waveform).max() > 0.05
    assert [w.label for w in speech.words] == re.findall(r"[A-Za-z]+", TEXT)
    for previous, word in zip(speech.words, speech.words[1:], strict=False):
        assert previous.start < previous.end <= word.start
    assert speech.words[-1].end <= speech.duration
    assert len(speech.phonemes) > 2 * len(speech.words)
    for word in speech.words:
        inside = [p for p in speech.phonemes if word.start <= p.start and p.end <= word.end]
        assert inside, f"word {word.label!r} has no phoneme"
        assert inside[0].start == word.start and inside[-1].end == word.end
    assert all(p.end > p.start and p.label and "ˈ" not in p.label for p in speech.phonemes)
    assert {"k", "l", "s"} <= {p.label for p in speech.phonemes}


def test_event_times_line_up_with_the_sound(speech):
    """Words are loud, the sentence pause between them is quiet: event samples index the audio."""
    rate = speech.sampling_rate

    def rms(start: float, end: float) -> float:
        segment = speech.waveform[int(start * rate) : int(end * rate)]
        return float(np.sqrt(np.mean(segment**2)))

    sentence_break = next(i for i, w in enumerate(speech.words) if w.label == "Maria")
    pause = (speech.words[sentence_break - 1].end, speech.words[sentence_break].start)
    assert pause[1] - pause[0] > 0.1
    word_level = np.median([rms(w.start, w.end) for w in speech.words])
    assert rms(pause[0] + 0.02, pause[1] - 0.02) < 0.1 * word_level


def test_rate_voice_and_pitch_change_the_speech(speech):
    fast = synthesize(TEXT, voice="en-us", rate_wpm=300)
    assert fast.duration < 0.75 * speech.duration
    british = synthesize(TEXT, voice="en-gb-x-rp", rate_wpm=170)
    assert [w.label for w in british.words] == [w.label for w in speech.words]
    n = min(british.waveform.size, speech.waveform.size)
    assert not np.allclose(british.waveform[:n], speech.waveform[:n])
    again = synthesize(TEXT, voice="en-us", rate_wpm=170)
    assert np.array_equal(again.waveform, speech.waveform) and again.words == speech.words


def test_synthesis_is_thread_safe(speech):
    results: list[SynthesizedSpeech] = []
    threads = [
        threading.Thread(target=lambda: results.append(synthesize(TEXT, rate_wpm=170)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for result in results:
        assert np.array_equal(result.waveform, speech.waveform)
        assert result.phonemes == speech.phonemes


def test_concatenate_shifts_tokens(speech):
    joined = concatenate_speech([speech, speech])
    assert joined.waveform.size == 2 * speech.waveform.size
    offset = speech.waveform.size / speech.sampling_rate
    second = joined.words[len(speech.words)]
    assert second.label == speech.words[0].label
    assert second.start == pytest.approx(speech.words[0].start + offset)
    assert len(joined.phonemes) == 2 * len(speech.phonemes)


def test_concatenate_rejects_empty_and_mixed_rates(speech):
    with pytest.raises(ValueError, match="at least one"):
        concatenate_speech([])
    other = SynthesizedSpeech(np.zeros(10, np.float32), 16000, [], [], "")
    with pytest.raises(ValueError, match="different sample rates"):
        concatenate_speech([speech, other])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "non-empty string"),
        ({"text": "   "}, "non-empty string"),
        ({"text": None}, "non-empty string"),
        ({"text": "hello", "voice": "xx-nowhere"}, "no voice named 'xx-nowhere'"),
        ({"text": "hello", "rate_wpm": 20}, r"rate_wpm must be an integer in \[80, 450\]"),
        ({"text": "hello", "rate_wpm": 170.5}, "rate_wpm"),
        ({"text": "hello", "pitch": 101}, "pitch"),
        ({"text": "hello", "pitch": True}, "pitch"),
    ],
)
def test_bad_input_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(**kwargs)


def test_many_texts_in_one_process(speech):
    parts = synthesize_many(["Hello there.", TEXT], "en-us", [200, 170])
    assert [p.text for p in parts] == ["Hello there.", TEXT]
    assert [w.label for w in parts[1].words] == [w.label for w in speech.words]
    with pytest.raises(ValueError, match="at least one text"):
        synthesize_many([])
    with pytest.raises(ValueError, match="got 1 rates_wpm for 2 texts"):
        synthesize_many(["a", "b"], rates_wpm=[170])
    with pytest.raises(ValueError, match="rate_wpm"):
        synthesize_many(["a", "b"], rates_wpm=[170, 1000])


def test_check_voices_names_every_unknown_voice():
    check_voices(["en-us", "en-gb-x-rp", "en-gb-scotland"])
    with pytest.raises(ValueError, match="'xx-one', 'xx-two'"):
        check_voices(["en-us", "xx-one", "xx-two"])
    with pytest.raises(ValueError, match="voice name"):
        check_voices(["en-us", ""])


def test_story_sentences_are_seeded():
    first = [s for s, _ in zip(iter_sentences(3), range(5), strict=False)]
    again = [s for s, _ in zip(iter_sentences(3), range(5), strict=False)]
    other = [s for s, _ in zip(iter_sentences(4), range(5), strict=False)]
    assert first == again and first != other
    assert all(s[0].isupper() and s.endswith(".") for s in first)


@pytest.mark.parametrize("seed", ["1", 1.5, True, None])
def test_story_seed_must_be_an_integer(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        next(iter_sentences(seed))


def test_aligned_token_is_the_shared_type(speech):
    assert all(isinstance(token, AlignedToken) for token in speech.words + speech.phonemes)
