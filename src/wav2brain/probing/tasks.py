"""Offline SUPERB-style probing tasks spoken by espeak-ng, written as Hugging Face dataset folders.

``make_probe_tasks(out)`` writes one folder per task, each readable offline with
``datasets.load_dataset(str(out / task))``::

    out/<task>/
      README.md                        card: YAML ``configs`` (splits train / validation / test)
                                       whose ``description`` fingerprints the files, then the text
      task.json                        what a probe needs: type, target column, metric, classes ...
      data/<split>-00000-of-0000N.parquet   16 kHz FLAC audio (``Audio(decode=False)``) + labels
      trials.parquet                   ASV only: enrol, test (row indices into split test), target

All data are SIMULATED (synthetic speech). The tasks, and the choices where SUPERB's corpora
offer no rule to copy:

- **ks**, keyword spotting (Speech Commands v1 as SUPERB uses it): 1-s clips of SUPERB's ten
  command words, ``_unknown_`` (Speech Commands' twenty auxiliary words) and ``_silence_``
  (noise only), every class equally often in every split. Each word is cut from its synthesis at
  its first phoneme's start and last phoneme's end (plus ``ks_margin_s`` each side), placed at a
  random offset in the clip, and mixed with white, pink or brown noise at an SNR drawn from
  ``ks_snrs_db`` (speech power over the word's samples against noise power). Silence clips
  are noise at an RMS level drawn uniformly in ``ks_silence_dbfs``. Splits share no speaker, as
  Speech Commands' hash-by-speaker split does (the words themselves are, necessarily, shared).
- **ic**, intent classification (Fluent Speech Commands): templated commands with action,
  object and location slots (:data:`IC_TEMPLATES`, :data:`IC_OBJECTS`). ``label`` is the whole
  intent ``action_object_location`` (a ``ClassLabel`` whose accuracy is SUPERB's "all three slots
  right" accuracy), and ``action`` / ``object`` / ``location`` are the three label columns of Fluent
  Speech Commands. Each intent has several phrasings; they are dealt to the splits, so splits
  share no sentence (as Fluent Speech Commands' unseen-phrase challenge split) and no speaker.
- **sid**, speaker identification (VoxCeleb1): speakers are espeak voice x variant x pitch x
  rate combinations (:mod:`wav2brain.probing.synthesis`), each in every split, each sentence
  spoken once: splits share no sentence, hence no utterance. ``label`` is the speaker.
- **pr**, phoneme recognition (LibriSpeech, phoneme targets): sentences of the simulator's grammar
  (:func:`wav2brain.simulation.stories.iter_sentences`); ``phonemes`` holds espeak-ng's phoneme
  events, space-separated IPA without stress marks. Splits share no sentence and no speaker
  (LibriSpeech's splits are speaker-disjoint).
- **asr**, a small word-level ASR set: the same grammar (about 110 words), ``text`` lower-case
  words without punctuation; splits share no sentence and no speaker.
- **asv**, speaker verification (VoxCeleb1): train, validation and test speakers are disjoint,
  each utterance a different sentence; ``trials.parquet`` pairs test rows, half of them the same
  speaker (target), drawn without replacement.

Every row has ``id``, ``audio``, ``speaker`` (:attr:`Speaker.name`, empty for ``_silence_``),
``voice``, ``pitch``, ``rate_wpm``, ``text`` (what was spoken, normalised; ``""`` for silence) and
``duration`` (s). Each task is made from its own seed stream (``[seed, task index]``), so
making a subset of the tasks gives the same folders as making all of them, and the same
configuration always gives byte-identical shards (with the same versions of espeak-ng, scipy,
libsndfile and pyarrow; another version may change samples or bytes, and the card's fingerprint
with them).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wav2brain.atomic import partial_path, write_text_atomic
from wav2brain.data.hf_layout import (
    CARD_NAME,
    FINGERPRINT_PREFIX,
    SAMPLING_RATE,
    encode_audio,
    files_fingerprint,
    markdown_table,
    write_shard,
)
from wav2brain.probing.checks import (
    SPLITS,
    check_disjoint_splits,
    check_labels_seen,
    check_splits_present,
    check_trials,
    ctc_units,
    where,
)
from wav2brain.probing.synthesis import (
    NOISE_KINDS,
    Speaker,
    Utterance,
    espeak_variants,
    limit_peak,
    make_noise,
    normalize_text,
    rms,
    speak,
    speaker_pool,
)

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("ks", "ic", "sid", "pr", "asr", "asv")
SIZES: tuple[str, ...] = ("small", "default")
FORMAT_VERSION = 1
TASK_FILE = "task.json"
TRIALS_FILE = "trials.parquet"
DATA_DIR = "data"
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
_MAX_REDRAWS = 20

SUPERB_KEYWORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)  # fmt: skip
"""SUPERB's ten keyword-spotting commands (Speech Commands v1), in s3prl's class order."""

SPEECH_COMMANDS_AUXILIARY: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
)  # fmt: skip
"""Speech Commands v1's other twenty words: the ``_unknown_`` class."""

IC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "activate": ("turn on the {object}", "switch on the {object}", "put the {object} on"),
    "deactivate": ("turn off the {object}", "switch off the {object}", "shut the {object} off"),
    "increase": ("turn up the {object}", "increase the {object}", "raise the {object}"),
    "decrease": ("turn down the {object}", "decrease the {object}", "lower the {object}"),
    "bring": ("bring me the {object}", "fetch the {object}", "get me the {object}"),
    "change_language": (
        "switch the language to {object}",
        "change the language to {object}",
        "set the language to {object}",
    ),
}
"""Phrasings of each action (Fluent Speech Commands' six actions)."""

IC_OBJECTS: dict[str, tuple[str, ...]] = {
    "activate": ("lights", "lamp", "music", "heat"),
    "deactivate": ("lights", "lamp", "music", "heat"),
    "increase": ("heat", "volume"),
    "decrease": ("heat", "volume"),
    "bring": ("newspaper", "juice", "socks", "shoes"),
    "change_language": ("chinese", "korean", "english", "german"),
}
"""Objects each action takes (as in Fluent Speech Commands)."""

IC_LOCATED_OBJECTS: tuple[str, ...] = ("lights", "heat")
"""Objects said with a location (the others take location ``none``)."""

IC_LOCATIONS: tuple[str, ...] = ("none", "kitchen", "bedroom", "washroom")
IC_COURTESY: tuple[str, ...] = ("{}", "please {}", "{} please")
"""Each phrasing is said plainly, with "please" first, or with "please" last."""

TASK_INFO: dict[str, dict[str, Any]] = {
    "ks": {
        "name": "keyword spotting",
        "type": "utterance",
        "target_column": "label",
        "metric": "accuracy",
        "disjoint_columns": ["id", "speaker"],
        "card_category": "audio-classification",
    },
    "ic": {
        "name": "intent classification",
        "type": "utterance",
        "target_column": "label",
        "metric": "accuracy",
        "disjoint_columns": ["id", "text", "speaker"],
        "label_columns": ["action", "object", "location"],
        "card_category": "audio-classification",
    },
    "sid": {
        "name": "speaker identification",
        "type": "utterance",
        "target_column": "label",
        "metric": "accuracy",
        "disjoint_columns": ["id", "text"],
        "card_category": "audio-classification",
    },
    "pr": {
        "name": "phoneme recognition",
        "type": "ctc",
        "target_column": "phonemes",
        "metric": "per",
        "disjoint_columns": ["id", "text", "speaker"],
        "card_category": "automatic-speech-recognition",
    },
    "asr": {
        "name": "word-level speech recognition",
        "type": "ctc",
        "target_column": "text",
        "metric": "wer",
        "disjoint_columns": ["id", "text", "speaker"],
        "card_category": "automatic-speech-recognition",
    },
    "asv": {
        "name": "automatic speaker verification",
        "type": "verification",
        "target_column": "speaker",
        "metric": "eer",
        "disjoint_columns": ["id", "text", "speaker"],
        "card_category": "audio-classification",
    },
}
"""What each task is; copied into its ``task.json``."""

_SMALL: dict[str, Any] = {
    "ks_examples_per_class": (16, 4, 8),
    "ks_speakers": (24, 8, 8),
    "ic_utterances_per_intent": (3, 1, 1),
    "ic_speakers": (16, 6, 6),
    "sid_speakers": 8,
    "sid_utterances_per_speaker": (5, 2, 2),
    "pr_utterances": (40, 8, 12),
    "pr_speakers": (12, 4, 4),
    "asr_utterances": (40, 8, 12),
    "asr_speakers": (12, 4, 4),
    "asv_speakers": (10, 4, 6),
    "asv_utterances_per_speaker": 4,
    "asv_trials": 60,
}


@dataclass(frozen=True)
class ProbeTaskConfig:
    """Every number of the offline probing tasks (defaults: the ``"default"`` size).

    Triples are (train, validation, test). Speakers are drawn without replacement from the
    ``voices x variants x pitches x rates_wpm`` pool (576 by default), shuffled per task.

    Attributes
    ----------
    seed : int
        Master seed (>= 0); task ``t`` uses the stream ``[seed, TASKS.index(t)]``.
    voices, variants : tuple of str
        espeak-ng voices (English accents) and voice variants (``m1``..``m8``, ``f1``..``f5``, ...).
    pitches : tuple of int
        Base pitches (espeak units, 0-100, 50 = the voice's own).
    rates_wpm : tuple of int
        Speaking rates (words/min, 80-450).
    sentence_words : (int, int)
        Fewest and most words of a grammar sentence (sid, pr, asr, asv).
    peak : float
        Waves are scaled down to at most this magnitude (full scale 1), so 16-bit FLAC never clips.
    rows_per_shard : int
        Rows per Parquet file.
    ks_keywords, ks_unknown_words : tuple of str
        Command words (one class each) and the words of ``_unknown_``.
    ks_examples_per_class : (int, int, int)
        Clips of every class per split.
    ks_speakers : (int, int, int)
        Disjoint speakers per split; clips go to them in turn.
    ks_clip_s : float
        Clip length (s); Speech Commands' clips last 1 s.
    ks_margin_s : float
        Audio kept before the first and after the last phoneme of a word (s).
    ks_snrs_db : tuple of float
        Signal-to-noise ratios (dB) drawn uniformly for speech clips.
    ks_noise_kinds : tuple of str
        Noise colours drawn uniformly (:data:`~wav2brain.probing.synthesis.NOISE_KINDS`).
    ks_silence_dbfs : (float, float)
        Range of the noise RMS of ``_silence_`` clips (dB re full scale, <= 0).
    ic_utterances_per_intent : (int, int, int)
        Utterances of every intent per split (phrasings and speakers taken in turn).
    ic_speakers : (int, int, int)
        Disjoint speakers per split.
    ic_sentence_fractions : (float, float, float)
        Share of each intent's phrasings dealt to each split (each split gets at least one).
    sid_speakers : int
        Speakers (classes), each present in every split.
    sid_utterances_per_speaker : (int, int, int)
        Utterances of every speaker per split, each a different sentence.
    pr_utterances, asr_utterances : (int, int, int)
        Sentences per split, each spoken once.
    pr_speakers, asr_speakers : (int, int, int)
        Disjoint speakers per split; sentences go to them in turn.
    asv_speakers : (int, int, int)
        Disjoint speakers per split.
    asv_utterances_per_speaker : int
        Utterances of every speaker (>= 2), each a different sentence.
    asv_trials : int
        Test trials (even); half are target trials.
    """

    seed: int = 0
    voices: tuple[str, ...] = (
        "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
        "en-us-nyc", "en",
    )  # fmt: skip
    variants: tuple[str, ...] = ("m1", "m3", "m5", "m7", "f1", "f2", "f3", "f4")
    pitches: tuple[int, ...] = (35, 50, 65)
    rates_wpm: tuple[int, ...] = (140, 170, 200)
    sentence_words: tuple[int, int] = (4, 10)
    peak: float = 0.95
    rows_per_shard: int = 500
    ks_keywords: tuple[str, ...] = SUPERB_KEYWORDS
    ks_unknown_words: tuple[str, ...] = SPEECH_COMMANDS_AUXILIARY
    ks_examples_per_class: tuple[int, int, int] = (40, 10, 20)
    ks_speakers: tuple[int, int, int] = (120, 30, 30)
    ks_clip_s: float = 1.0
    ks_margin_s: float = 0.03
    ks_snrs_db: tuple[float, ...] = (5.0, 10.0, 20.0, 30.0)
    ks_noise_kinds: tuple[str, ...] = NOISE_KINDS
    ks_silence_dbfs: tuple[float, float] = (-55.0, -25.0)
    ic_utterances_per_intent: tuple[int, int, int] = (8, 2, 4)
    ic_speakers: tuple[int, int, int] = (96, 24, 24)
    ic_sentence_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    sid_speakers: int = 40
    sid_utterances_per_speaker: tuple[int, int, int] = (6, 2, 2)
    pr_utterances: tuple[int, int, int] = (200, 40, 80)
    pr_speakers: tuple[int, int, int] = (60, 20, 20)
    asr_utterances: tuple[int, int, int] = (200, 40, 80)
    asr_speakers: tuple[int, int, int] = (60, 20, 20)
    asv_speakers: tuple[int, int, int] = (40, 10, 20)
    asv_utterances_per_speaker: int = 6
    asv_trials: int = 500

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> ProbeTaskConfig:
        """The ``"small"`` (seconds to make; tests) or ``"default"`` (a few minutes) preset.

        ``overrides`` replace any field of the preset.
        """
        if size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
        preset = _SMALL if size == "small" else {}
        return cls(**{**preset, **overrides})

    def size_name(self) -> str:
        """``"small"`` or ``"default"`` when this is that preset (any seed), else ``"custom"``."""
        for size in SIZES:
            if ProbeTaskConfig.from_size(size, seed=self.seed) == self:
                return size
        return "custom"

    def task_fields(self, task: str) -> dict[str, Any]:
        """The fields task ``task`` depends on (shared ones and its own ``<task>_*``), as JSON."""
        shared = ("seed", "voices", "variants", "pitches", "rates_wpm", "peak", "rows_per_shard")
        if task in ("sid", "pr", "asr", "asv"):
            shared += ("sentence_words",)
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if (f.name in shared or f.name.startswith(f"{task}_"))
        }
        return json.loads(json.dumps(values))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"ProbeTaskConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _check_triple(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, tuple | list) or len(value) != len(SPLITS):
        raise ValueError(
            f"ProbeTaskConfig.{name} must give one integer per split {SPLITS}, got {value!r}"
        )
    for split, item in zip(SPLITS, value, strict=True):
        _check_int(f"{name} ({split})", item, minimum)


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ValueError(
            f"ProbeTaskConfig.{name} must be a number in [{low}, {high}], got {value!r}"
        )


def _check_words(name: str, values: Any, minimum: int) -> None:
    if not isinstance(values, tuple | list) or len(values) < minimum:
        raise ValueError(f"ProbeTaskConfig.{name} needs at least {minimum} entries, got {values!r}")
    bad = [v for v in values if not isinstance(v, str) or not v or v != v.strip()]
    if bad:
        raise ValueError(f"ProbeTaskConfig.{name} holds entries that are not words: {bad!r}")
    if len(set(values)) != len(values):
        repeated = sorted(v for v, n in Counter(values).items() if n > 1)
        raise ValueError(f"ProbeTaskConfig.{name} repeats {repeated!r}")


def _validate(config: ProbeTaskConfig) -> None:
    """Raise ValueError naming the first field that cannot make the tasks."""
    from wav2brain.simulation.speech import ESPEAK_PITCH_RANGE, ESPEAK_RATE_RANGE_WPM

    _check_int("seed", config.seed, 0)
    _check_words("voices", config.voices, 1)
    _check_words("variants", config.variants, 1)
    if unknown := sorted(set(config.variants) - set(espeak_variants())):
        raise ValueError(
            f"ProbeTaskConfig.variants: espeak-ng has no voice variant {unknown!r} "
            "(it would speak the plain voice); e.g. m1..m8, f1..f5"
        )
    for name, values, (low, high) in (
        ("pitches", config.pitches, ESPEAK_PITCH_RANGE),
        ("rates_wpm", config.rates_wpm, ESPEAK_RATE_RANGE_WPM),
    ):
        if not isinstance(values, tuple | list) or not values:
            raise ValueError(f"ProbeTaskConfig.{name} needs at least one value, got {values!r}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"ProbeTaskConfig.{name} must hold integers in [{low}, {high}], got {value!r}"
                )
        if len(set(values)) != len(values):
            raise ValueError(f"ProbeTaskConfig.{name} repeats a value: {values!r}")
    pool = len(config.voices) * len(config.variants) * len(config.pitches) * len(config.rates_wpm)
    words = config.sentence_words
    if not isinstance(words, tuple | list) or len(words) != 2:
        raise ValueError(f"ProbeTaskConfig.sentence_words must be (fewest, most), got {words!r}")
    _check_int("sentence_words (fewest)", words[0], 1)
    _check_int("sentence_words (most)", words[1], max(words[0], 3))
    _check_number("peak", config.peak, 0.01, 1.0)
    _check_int("rows_per_shard", config.rows_per_shard, 1)

    _check_words("ks_keywords", config.ks_keywords, 1)
    _check_words("ks_unknown_words", config.ks_unknown_words, 1)
    if shared := sorted(set(config.ks_keywords) & set(config.ks_unknown_words)):
        raise ValueError(f"ks_keywords and ks_unknown_words share {shared!r}")
    if reserved := sorted({SILENCE, UNKNOWN} & set(config.ks_keywords)):
        raise ValueError(f"ks_keywords may not use the reserved class names {reserved!r}")
    _check_triple("ks_examples_per_class", config.ks_examples_per_class, 1)
    _check_triple("ks_speakers", config.ks_speakers, 1)
    _check_number("ks_clip_s", config.ks_clip_s, 0.1, 10.0)
    _check_number("ks_margin_s", config.ks_margin_s, 0.0, config.ks_clip_s / 4)
    if not isinstance(config.ks_snrs_db, tuple | list) or not config.ks_snrs_db:
        raise ValueError(
            f"ProbeTaskConfig.ks_snrs_db needs at least one SNR (dB), got {config.ks_snrs_db!r}"
        )
    for snr in config.ks_snrs_db:
        _check_number("ks_snrs_db", snr, -20.0, 100.0)
    bad_kinds = [k for k in config.ks_noise_kinds if k not in NOISE_KINDS]
    if not config.ks_noise_kinds or bad_kinds:
        raise ValueError(
            f"ProbeTaskConfig.ks_noise_kinds must be drawn from {NOISE_KINDS}, got "
            f"{config.ks_noise_kinds!r}"
        )
    if not isinstance(config.ks_silence_dbfs, tuple | list) or len(config.ks_silence_dbfs) != 2:
        raise ValueError(
            "ProbeTaskConfig.ks_silence_dbfs must be (low, high) dBFS, got "
            f"{config.ks_silence_dbfs!r}"
        )
    low, high = config.ks_silence_dbfs
    _check_number("ks_silence_dbfs (low)", low, -120.0, 0.0)
    _check_number("ks_silence_dbfs (high)", high, low, 0.0)

    _check_triple("ic_utterances_per_intent", config.ic_utterances_per_intent, 1)
    _check_triple("ic_speakers", config.ic_speakers, 1)
    fractions = config.ic_sentence_fractions
    if (
        not isinstance(fractions, tuple | list)
        or len(fractions) != len(SPLITS)
        or not all(isinstance(f, int | float) and f > 0 for f in fractions)
        or abs(sum(fractions) - 1.0) > 1e-6
    ):
        raise ValueError(
            "ProbeTaskConfig.ic_sentence_fractions must be three positive shares summing to 1, "
            f"got {fractions!r}"
        )

    _check_int("sid_speakers", config.sid_speakers, 2)
    _check_triple("sid_utterances_per_speaker", config.sid_utterances_per_speaker, 1)
    for task in ("pr", "asr"):
        _check_triple(f"{task}_utterances", getattr(config, f"{task}_utterances"), 1)
        _check_triple(f"{task}_speakers", getattr(config, f"{task}_speakers"), 1)
    _check_triple("asv_speakers", config.asv_speakers, 2)
    _check_int("asv_utterances_per_speaker", config.asv_utterances_per_speaker, 2)
    _check_int("asv_trials", config.asv_trials, 2)
    if config.asv_trials % 2:
        raise ValueError(
            f"ProbeTaskConfig.asv_trials must be even (half target), got {config.asv_trials}"
        )
    n_test, per = config.asv_speakers[2], config.asv_utterances_per_speaker
    targets = n_test * per * (per - 1) // 2
    if config.asv_trials // 2 > targets:
        raise ValueError(
            f"ProbeTaskConfig.asv_trials={config.asv_trials} needs {config.asv_trials // 2} "
            f"target trials, but {n_test} test speakers x {per} utterances give only {targets} "
            "distinct same-speaker pairs"
        )
    for name in ("ks_speakers", "ic_speakers", "pr_speakers", "asr_speakers", "asv_speakers"):
        needed = sum(getattr(config, name))
        if needed > pool:
            raise ValueError(
                f"ProbeTaskConfig.{name} needs {needed} distinct speakers, but voices x variants "
                f"x pitches x rates_wpm give only {pool}"
            )
    if config.sid_speakers > pool:
        raise ValueError(
            f"ProbeTaskConfig.sid_speakers={config.sid_speakers} exceeds the "
            f"{pool} speakers of the pool"
        )


def parse_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """Task names from ``"ks,ic"`` or a sequence, checked, in the order given (no repeats)."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not names or any(not isinstance(t, str) or not t for t in names):
        raise ValueError(f"tasks must be names from {', '.join(TASKS)}, got {tasks!r}")
    if unknown := [t for t in names if t not in TASKS]:
        raise ValueError(
            f"unknown probing task(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(TASKS)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"tasks repeats a name: {tasks!r}")
    return tuple(names)


# ---------------------------------------------------------------------------------------------
# Split checks (the rules themselves live in wav2brain.probing.checks)


def check_task_splits(
    info: Mapping[str, Any], splits: Mapping[str, Any], trials: Mapping[str, Any] | None = None
) -> None:
    """Run every check ``info`` (a ``task.json``) implies on ``splits`` (and the ASV ``trials``).

    Splits train / validation / test must exist; the ``disjoint_columns`` must be disjoint;
    utterance tasks must have every evaluation label in train, phoneme recognition every
    phoneme; verification tasks must have valid trials. The rules are those of
    :mod:`wav2brain.probing.checks`, which the probing harness applies too. ASR's characters are
    checked only when probed: a configuration made for tests of folders (a few sentences) may
    miss a letter, and is still a valid dataset.
    """
    task = info["task"]
    column = info["target_column"]
    check_splits_present(splits, task=task)
    check_disjoint_splits(splits, info["disjoint_columns"], task=task)
    if info["type"] == "utterance":
        check_labels_seen(splits, column, task=task)
    if column == "phonemes":
        check_labels_seen(splits, column, task=task, tokens=lambda text: ctc_units(text, column))
    if info["type"] == "verification":
        if trials is None:
            raise ValueError(f"{where(task)}: a verification task needs its trials ({TRIALS_FILE})")
        check_trials(trials, list(splits["test"]["speaker"]), task=task)


def read_task_info(folder: str | Path) -> dict[str, Any]:
    """The ``task.json`` of a task folder (FileNotFoundError naming the folder if absent)."""
    path = Path(folder) / TASK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a probing task folder: no {TASK_FILE}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_probe_task(folder: str | Path, cache_dir: str | Path | None = None):
    """Load a task folder: ``(DatasetDict, task.json dict, trials table or None)``.

    Uses ``datasets.load_dataset(folder)`` (offline; the card's fingerprint keys the cache).
    """
    import pyarrow.parquet as pq
    from datasets import load_dataset

    folder = Path(folder)
    info = read_task_info(folder)
    dataset = load_dataset(str(folder), cache_dir=None if cache_dir is None else str(cache_dir))
    trials_path = folder / TRIALS_FILE
    trials = pq.read_table(trials_path).to_pydict() if trials_path.is_file() else None
    return dataset, info, trials


def check_probe_task(folder: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Load a task folder and run :func:`check_task_splits` on it; return its ``task.json``."""
    dataset, info, trials = load_probe_task(folder, cache_dir)
    check_task_splits(info, dataset, trials)
    return info


# ---------------------------------------------------------------------------------------------
# Building the rows of each task


@dataclass
class _Built:
    """Rows per split (column -> list), the label names and any trials of one task."""

    rows: dict[str, dict[str, list]]
    classes: dict[str, list[str]] = field(default_factory=dict)
    trials: dict[str, list] | None = None


def _task_rng(config: ProbeTaskConfig, task: str) -> np.random.Generator:
    return np.random.default_rng([config.seed, TASKS.index(task)])


def _split_speakers(
    config: ProbeTaskConfig, rng: np.random.Generator, counts: Sequence[int]
) -> dict[str, list[Speaker]]:
    pool = speaker_pool(config.voices, config.variants, config.pitches, config.rates_wpm, rng)
    bounds = np.cumsum([0, *counts])
    return {s: pool[bounds[i] : bounds[i + 1]] for i, s in enumerate(SPLITS)}


def _sentences(config: ProbeTaskConfig, rng: np.random.Generator) -> Iterator[str]:
    """Endless distinct normalised grammar sentences of ``sentence_words`` words.

    Raises ValueError when 10,000 draws in a row give no new sentence (the grammar is spent).
    """
    from wav2brain.simulation.stories import iter_sentences

    fewest, most = config.sentence_words
    found: set[str] = set()
    stale = 0
    for sentence in iter_sentences(int(rng.integers(2**31))):
        text = normalize_text(sentence)
        if fewest <= len(text.split()) <= most and text not in found:
            found.add(text)
            stale = 0
            yield text
        elif (stale := stale + 1) > 10_000:
            raise ValueError(
                f"the grammar gives no sentence of {fewest}-{most} words beyond the {len(found)} "
                "already used; ask for fewer utterances or widen sentence_words"
            )


def _base_row(speaker: Speaker | None, text: str, wave: np.ndarray) -> dict[str, Any]:
    return {
        "speaker": speaker.name if speaker else "",
        "voice": speaker.espeak_voice if speaker else "",
        "pitch": speaker.pitch if speaker else None,
        "rate_wpm": speaker.rate_wpm if speaker else None,
        "text": text,
        "wave": wave,
    }


def _spoken_rows(
    config: ProbeTaskConfig,
    requests: Sequence[tuple[Speaker, str]],
    extra: Sequence[dict] | None = None,
    phonemes: bool = False,
) -> list[dict[str, Any]]:
    """Synthesise ``requests`` and make one row each (``extra``: task columns of each row)."""
    rows = []
    extra = [{} for _ in requests] if extra is None else extra
    for (speaker, text), spoken, columns in zip(requests, speak(requests), extra, strict=True):
        row = _base_row(speaker, text, limit_peak(spoken.waveform, config.peak))
        row.update(columns)
        if phonemes:
            row["phonemes"] = " ".join(spoken.phonemes)
        rows.append(row)
    return rows


def _keyword_clip(
    config: ProbeTaskConfig, spoken: Utterance, rng: np.random.Generator, where: str
) -> tuple[np.ndarray, str, float]:
    """Cut the word, place it at a random offset in a clip and add noise at a drawn SNR (dB)."""
    n_clip = int(round(config.ks_clip_s * SAMPLING_RATE))
    start = max(0, int((spoken.speech_start_s - config.ks_margin_s) * SAMPLING_RATE))
    stop = int(math.ceil((spoken.speech_end_s + config.ks_margin_s) * SAMPLING_RATE))
    stop = min(spoken.waveform.size, stop)
    word = spoken.waveform[start:stop].astype(np.float64)
    if word.size > n_clip:
        raise ValueError(
            f"ks: {where} lasts {word.size / SAMPLING_RATE:.2f} s, longer than ks_clip_s="
            f"{config.ks_clip_s} s; lengthen ks_clip_s or use faster rates_wpm"
        )
    offset = int(rng.integers(0, n_clip - word.size + 1))
    clip = np.zeros(n_clip)
    clip[offset : offset + word.size] = word
    kind = str(rng.choice(config.ks_noise_kinds))
    snr = float(rng.choice(config.ks_snrs_db))
    noise = make_noise(kind, n_clip, rng) * rms(word) / 10 ** (snr / 20)
    return limit_peak(clip + noise, config.peak), kind, snr


def _build_ks(config: ProbeTaskConfig) -> _Built:
    rng = _task_rng(config, "ks")
    speakers = _split_speakers(config, rng, config.ks_speakers)
    classes = [*config.ks_keywords, UNKNOWN, SILENCE]
    unknown = [config.ks_unknown_words[i] for i in rng.permutation(len(config.ks_unknown_words))]
    rows: dict[str, list[dict]] = {}
    n_clip = int(round(config.ks_clip_s * SAMPLING_RATE))
    for split, per_class in zip(SPLITS, config.ks_examples_per_class, strict=True):
        requests, labels, split_rows = [], [], []
        group, unknown_turn = speakers[split], itertools.count()
        for label, _ in itertools.product(classes, range(per_class)):
            if label == SILENCE:
                continue
            word = unknown[next(unknown_turn) % len(unknown)] if label == UNKNOWN else label
            requests.append((group[len(requests) % len(group)], word))
            labels.append(label)
        for (speaker, word), spoken, label in zip(requests, speak(requests), labels, strict=True):
            where = f"{word!r} spoken by {speaker.name}"
            wave, kind, snr = _keyword_clip(config, spoken, rng, where)
            row = _base_row(speaker, word, wave)
            row.update(label=classes.index(label), noise=kind, snr_db=snr)
            split_rows.append(row)
        low, high = config.ks_silence_dbfs
        for _ in range(per_class):
            kind = str(rng.choice(config.ks_noise_kinds))
            level = 10 ** (rng.uniform(low, high) / 20)
            wave = limit_peak(make_noise(kind, n_clip, rng) * level, config.peak)
            row = _base_row(None, "", wave)
            row.update(label=classes.index(SILENCE), noise=kind, snr_db=None)
            split_rows.append(row)
        rows[split] = split_rows
    return _Built(_columns(rows, rng), {"label": classes})


def _ic_intents() -> list[tuple[str, str, str]]:
    return [
        (action, obj, location)
        for action, objects in IC_OBJECTS.items()
        for obj in objects
        for location in (IC_LOCATIONS if obj in IC_LOCATED_OBJECTS else IC_LOCATIONS[:1])
    ]


def _ic_phrasings(action: str, obj: str, location: str) -> list[str]:
    """Every distinct phrasing of one intent (normalised text)."""
    located = [f"{obj} in the {location}", f"{location} {obj}"]
    phrases = [obj] if location == "none" else located
    texts = [
        courtesy.format(template.format(object=phrase))
        for template in IC_TEMPLATES[action]
        for phrase in phrases
        for courtesy in IC_COURTESY
    ]
    return list(dict.fromkeys(normalize_text(text) for text in texts))


def _deal(items: Sequence[Any], fractions: Sequence[float]) -> list[list[Any]]:
    """Cut ``items`` into one consecutive part per split, at least one item each."""
    n = len(items)
    if n < len(fractions):
        raise ValueError(f"cannot deal {n} item(s) to {len(fractions)} splits")
    sizes = [max(1, int(round(f * n))) for f in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    if sizes[0] < 1:
        raise ValueError(f"cannot deal {n} item(s) by shares {tuple(fractions)}")
    bounds = np.cumsum([0, *sizes])
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(len(sizes))]


def _build_ic(config: ProbeTaskConfig) -> _Built:
    rng = _task_rng(config, "ic")
    speakers = _split_speakers(config, rng, config.ic_speakers)
    intents = _ic_intents()
    actions = list(IC_TEMPLATES)
    objects = list(dict.fromkeys(o for objs in IC_OBJECTS.values() for o in objs))
    names = ["_".join(intent) for intent in intents]
    dealt = {}
    for intent in intents:
        texts = _ic_phrasings(*intent)
        order = rng.permutation(len(texts))
        dealt[intent] = _deal([texts[i] for i in order], config.ic_sentence_fractions)
    rows: dict[str, list[dict]] = {}
    for index, (split, per_intent) in enumerate(
        zip(SPLITS, config.ic_utterances_per_intent, strict=True)
    ):
        requests, extra = [], []
        for intent in intents:
            texts = dealt[intent][index]
            for k in range(per_intent):
                speaker = speakers[split][len(requests) % len(speakers[split])]
                requests.append((speaker, texts[k % len(texts)]))
                extra.append(
                    {
                        "label": names.index("_".join(intent)),
                        "action": actions.index(intent[0]),
                        "object": objects.index(intent[1]),
                        "location": IC_LOCATIONS.index(intent[2]),
                    }
                )
        rows[split] = _spoken_rows(config, requests, extra)
    classes = {"label": names, "action": actions, "object": objects, "location": list(IC_LOCATIONS)}
    return _Built(_columns(rows, rng), classes)


def _build_sid(config: ProbeTaskConfig) -> _Built:
    rng = _task_rng(config, "sid")
    pool = speaker_pool(config.voices, config.variants, config.pitches, config.rates_wpm, rng)
    speakers = sorted(pool[: config.sid_speakers], key=lambda s: s.name)
    names = [s.name for s in speakers]
    counts = config.sid_utterances_per_speaker
    sentences = _sentences(config, rng)
    rows = {}
    for split, per_speaker in zip(SPLITS, counts, strict=True):
        requests = [(s, next(sentences)) for s in speakers for _ in range(per_speaker)]
        extra = [{"label": names.index(s.name)} for s, _ in requests]
        rows[split] = _spoken_rows(config, requests, extra)
    return _Built(_columns(rows, rng), {"label": names})


def _build_sentences(config: ProbeTaskConfig, task: str) -> _Built:
    """pr and asr: each sentence spoken once, by the speakers of its split in turn.

    Phoneme recognition needs every evaluation phoneme in train (a CTC head has no output for
    another): train is made first, and a validation or test sentence in which espeak-ng speaks
    a phoneme train lacks (a rare diphthong, an accent's r-coloured vowel) is replaced by the
    next sentence of the grammar, at most ``_MAX_REDRAWS`` rounds.
    """
    rng = _task_rng(config, task)
    counts = getattr(config, f"{task}_utterances")
    speakers = _split_speakers(config, rng, getattr(config, f"{task}_speakers"))
    sentences = _sentences(config, rng)
    rows: dict[str, list[dict]] = {}
    seen: set[str] | None = None
    for split, count in zip(SPLITS, counts, strict=True):
        group, kept = speakers[split], []
        for _ in range(_MAX_REDRAWS):
            needed = range(len(kept), count)
            requests = [(group[i % len(group)], next(sentences)) for i in needed]
            new = _spoken_rows(config, requests, phonemes=task == "pr")
            kept += [r for r in new if seen is None or set(r["phonemes"].split()) <= seen]
            if len(kept) == count:
                break
        else:
            raise ValueError(
                f"{task}: {count - len(kept)} {split} sentence(s) kept a phoneme that train "
                f"never has after {_MAX_REDRAWS} redraws; make more train utterances"
            )
        rows[split] = kept
        if task == "pr" and seen is None:
            seen = {p for row in kept for p in row["phonemes"].split()}
    return _Built(_columns(rows, rng))


def _build_asv(config: ProbeTaskConfig) -> _Built:
    rng = _task_rng(config, "asv")
    speakers = _split_speakers(config, rng, config.asv_speakers)
    per = config.asv_utterances_per_speaker
    sentences = _sentences(config, rng)
    rows = {}
    for split in SPLITS:
        requests = [(s, next(sentences)) for s in speakers[split] for _ in range(per)]
        rows[split] = _spoken_rows(config, requests)
    columns = _columns(rows, rng)
    return _Built(columns, trials=_asv_trials(columns["test"]["speaker"], config.asv_trials, rng))


def _asv_trials(speakers: Sequence[str], n_trials: int, rng: np.random.Generator) -> dict:
    """``n_trials`` distinct row pairs, half of one speaker, in random order and direction."""
    pairs = list(itertools.combinations(range(len(speakers)), 2))
    same = [p for p in pairs if speakers[p[0]] == speakers[p[1]]]
    different = [p for p in pairs if speakers[p[0]] != speakers[p[1]]]
    half = n_trials // 2
    if len(different) < half:
        raise ValueError(f"asv: only {len(different)} different-speaker pairs for {half} trials")
    chosen = [same[i] for i in rng.choice(len(same), half, replace=False)]
    chosen += [different[i] for i in rng.choice(len(different), half, replace=False)]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    flips = rng.random(len(chosen)) < 0.5
    enrol = [int(b if flip else a) for (a, b), flip in zip(chosen, flips, strict=True)]
    test = [int(a if flip else b) for (a, b), flip in zip(chosen, flips, strict=True)]
    target = [speakers[i] == speakers[j] for i, j in zip(enrol, test, strict=True)]
    return {"enrol": enrol, "test": test, "target": target}


def _columns(rows: Mapping[str, list[dict]], rng: np.random.Generator) -> dict[str, dict]:
    """Shuffle each split's rows, give them ids and turn them into columns (wave kept as is)."""
    out = {}
    for split, split_rows in rows.items():
        order = rng.permutation(len(split_rows))
        ordered = [split_rows[i] for i in order]
        columns: dict[str, list] = {key: [row[key] for row in ordered] for key in ordered[0]}
        columns["id"] = [f"{split}-{i:05d}" for i in range(len(ordered))]
        columns["duration"] = [row["wave"].size / SAMPLING_RATE for row in ordered]
        out[split] = columns
    return out


_BUILDERS = {
    "ks": _build_ks,
    "ic": _build_ic,
    "sid": _build_sid,
    "pr": lambda config: _build_sentences(config, "pr"),
    "asr": lambda config: _build_sentences(config, "asr"),
    "asv": _build_asv,
}


# ---------------------------------------------------------------------------------------------
# Writing a task folder


def task_features(task: str, classes: Mapping[str, Sequence[str]]):
    """``datasets.Features`` of a task's rows (``Audio(16 kHz, decode=False)``, see hf_layout)."""
    from datasets import Audio, ClassLabel, Features, Value

    columns: dict[str, Any] = {
        "id": Value("string"),
        "audio": Audio(sampling_rate=SAMPLING_RATE, decode=False),
        "speaker": Value("string"),
        "voice": Value("string"),
        "pitch": Value("int32"),
        "rate_wpm": Value("int32"),
        "text": Value("string"),
        "duration": Value("float64"),
    }
    for name, names in classes.items():
        columns[name] = ClassLabel(names=list(names))
    if task == "ks":
        columns.update(noise=Value("string"), snr_db=Value("float64"))
    if task == "pr":
        columns["phonemes"] = Value("string")
    return Features(columns)


def _shard_tables(task: str, columns: Mapping[str, list], features, per_shard: int):
    """Arrow tables of one split, ``per_shard`` rows each, audio encoded as 16-bit FLAC."""
    n_rows = len(columns["id"])
    for start in range(0, n_rows, per_shard):
        stop = min(n_rows, start + per_shard)
        data = {name: columns[name][start:stop] for name in features if name != "audio"}
        data["audio"] = [
            encode_audio(wave, f"{task}-{ident}")
            for wave, ident in zip(columns["wave"][start:stop], data["id"], strict=True)
        ]
        yield pa.table({name: data[name] for name in features}, schema=features.arrow_schema)


def _task_json(task: str, config: ProbeTaskConfig) -> dict[str, Any]:
    """The part of ``task.json`` known before any work (compared to resume or refuse)."""
    info = {key: value for key, value in TASK_INFO[task].items() if key != "card_category"}
    return {
        "task": task,
        **info,
        "format_version": FORMAT_VERSION,
        "seed": config.seed,
        "size": config.size_name(),
        "sampling_rate": SAMPLING_RATE,
        "simulated": True,
        "config": config.task_fields(task),
    }


def _request_key(info: Mapping[str, Any]) -> dict[str, Any]:
    return {key: info.get(key) for key in ("task", "format_version", "config")}


def _data_summary(built: _Built) -> dict[str, Any]:
    """Counts for ``task.json`` and the card: rows, speakers, texts, labels per split."""
    summary: dict[str, Any] = {"sizes": {}, "speakers": {}, "texts": {}}
    for split, columns in built.rows.items():
        summary["sizes"][split] = len(columns["id"])
        summary["speakers"][split] = len({s for s in columns["speaker"] if s})
        summary["texts"][split] = len({t for t in columns["text"] if t})
    if built.classes:
        summary["classes"] = {name: list(names) for name, names in built.classes.items()}
    first = next(iter(built.rows.values()))
    if "phonemes" in first:
        summary["phoneme_set"] = sorted(
            {p for columns in built.rows.values() for v in columns["phonemes"] for p in v.split()}
        )
    summary["vocabulary_size"] = len(
        {w for columns in built.rows.values() for t in columns["text"] for w in t.split()}
    )
    if built.trials is not None:
        summary["trials"] = {
            "file": TRIALS_FILE,
            "split": "test",
            "n_trials": len(built.trials["target"]),
            "n_target": int(sum(built.trials["target"])),
        }
    return summary


def _describe(task: str, config: Mapping[str, Any]) -> str:
    """One paragraph of the card saying what the rows are, from the task's settings."""
    speakers = (
        "Speakers are espeak-ng voice x variant x pitch x rate combinations "
        f"({len(config['voices'])} voices, {len(config['variants'])} variants, pitches "
        f"{config['pitches']}, rates {config['rates_wpm']} words/min)."
    )
    if task == "ks":
        what = (
            f"{config['ks_clip_s']:g}-s clips of {len(config['ks_keywords'])} command words, "
            f"`{UNKNOWN}` ({len(config['ks_unknown_words'])} other words) and `{SILENCE}` "
            f"(noise only, {config['ks_silence_dbfs'][0]:g} to {config['ks_silence_dbfs'][1]:g} "
            f"dBFS RMS); words in {', '.join(config['ks_noise_kinds'])} noise at "
            f"{', '.join(f'{v:g}' for v in config['ks_snrs_db'])} dB SNR, every class equally "
            "often in every split."
        )
    elif task == "ic":
        what = (
            "Templated spoken commands; `label` is the intent `action_object_location`, "
            "`action`, `object` and `location` its slots (Fluent Speech Commands' columns). "
            "Each intent's phrasings are dealt to the splits."
        )
    elif task == "sid":
        what = (
            f"{config['sid_speakers']} speakers (`label`), each in every split; each sentence "
            "is spoken once."
        )
    elif task == "pr":
        what = "Grammar sentences; `phonemes` are espeak-ng's phonemes, space-separated IPA."
    elif task == "asr":
        what = "Grammar sentences; `text` is the lower-case words spoken."
    else:
        what = (
            "Grammar sentences; train, validation and test speakers are disjoint, and "
            f"`{TRIALS_FILE}` pairs rows of split test."
        )
    return f"{what} {speakers}"


def _card(task: str, info: Mapping[str, Any], features, folder: Path) -> str:
    """README.md of a task folder: YAML (configs with the fingerprint, dataset_info) and text."""
    import yaml

    files = sorted((folder / DATA_DIR).glob("*.parquet")) + [folder / TASK_FILE]
    if (folder / TRIALS_FILE).is_file():
        files.append(folder / TRIALS_FILE)
    fingerprint = files_fingerprint(folder, files)
    split_bytes = {
        split: sum(p.stat().st_size for p in (folder / DATA_DIR).glob(f"{split}-*.parquet"))
        for split in SPLITS
    }
    metadata = {
        "pretty_name": f"wav2brain probing task {task}: {info['name']} (SIMULATED speech)",
        "license": "other",
        "task_categories": [TASK_INFO[task]["card_category"]],
        "language": ["en"],
        "tags": ["speech", "superb", "synthetic", "espeak-ng", "simulated", "wav2brain"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"{DATA_DIR}/{split}-*.parquet"} for split in SPLITS
                ],
                "description": f"{FINGERPRINT_PREFIX}{fingerprint.fingerprint}",
            }
        ],
        "dataset_info": [
            {
                "config_name": "default",
                "features": features._to_yaml_list(),
                "splits": [
                    {
                        "name": split,
                        "num_bytes": split_bytes[split],
                        "num_examples": info["sizes"][split],
                    }
                    for split in SPLITS
                ],
            }
        ],
    }
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    split_rows = [(s, info["sizes"][s], info["speakers"][s], info["texts"][s]) for s in SPLITS]
    parts = [
        f"# {metadata['pretty_name']}",
        "SIMULATED: every utterance is synthetic speech from espeak-ng, made offline by "
        "`wav2brain make-probe-tasks` (see `wav2brain.probing.tasks` for how each task is "
        "built and why). espeak-ng is GPL-3.0 software; the audio it produced here is data "
        "made by this toolkit.",
        _describe(task, info["config"]),
        "\n".join(
            [
                f"- type: {info['type']}; target column: `{info['target_column']}`; metric: "
                f"{info['metric']}",
                f"- splits share no value of: "
                f"{', '.join(f'`{c}`' for c in info['disjoint_columns'])}",
                f"- seed {info['seed']}, size {info['size']}; audio 16 kHz mono, 16-bit FLAC "
                "bytes in an `Audio(decode=False)` column (decode with "
                '`wav2brain.data.hf_layout.decode_audio` or `cast_column("audio", Audio())` '
                "where torchcodec is installed)",
            ]
        ),
        "## Usage",
        "```python\nfrom datasets import load_dataset\n"
        f"splits = load_dataset(DIR)  # DIR = this folder; splits {', '.join(SPLITS)}\n```",
        markdown_table(("split", "rows", "speakers", "distinct texts"), split_rows),
    ]
    if "trials" in info:
        parts.append(
            f"Verification trials: `{TRIALS_FILE}` (columns `enrol`, `test`: row indices into "
            f"split `test`; `target`: same speaker), {info['trials']['n_trials']} trials, "
            f"{info['trials']['n_target']} of them target."
        )
    parts += [
        "## Files",
        "Fingerprint: SHA-256 over one line (path, size in bytes, SHA-256 of the content) per "
        "file, sorted by path; it is the `description` of the `configs` entry, so the cache key "
        "of `datasets.load_dataset` changes whenever a file does.",
        markdown_table(
            ("files", "bytes", "fingerprint"),
            [(fingerprint.n_files, fingerprint.num_bytes, f"`{fingerprint.fingerprint}`")],
        ),
        "## task.json",
        "```json\n" + json.dumps(info, indent=2, ensure_ascii=False) + "\n```",
    ]
    return f"---\n{header}---\n\n" + "\n\n".join(parts) + "\n"


def _write_task(task: str, config: ProbeTaskConfig, folder: Path) -> dict[str, Any]:
    """Build ``task`` and write it into the (empty) folder ``folder``; return its task.json."""
    import pyarrow.parquet as pq

    built = _BUILDERS[task](config)
    info = {**_task_json(task, config), **_data_summary(built)}
    trials = None if built.trials is None else pa.table(built.trials)
    check_task_splits(info, built.rows, None if trials is None else built.trials)
    features = task_features(task, built.classes)
    for split in SPLITS:
        tables = list(_shard_tables(task, built.rows[split], features, config.rows_per_shard))
        for index, table in enumerate(tables):
            name = f"{split}-{index:05d}-of-{len(tables):05d}.parquet"
            write_shard(table, folder / DATA_DIR / name)
    if trials is not None:
        tmp = partial_path(folder / TRIALS_FILE)
        pq.write_table(trials, tmp, compression="zstd")
        os.replace(tmp, folder / TRIALS_FILE)
    write_text_atomic(json.dumps(info, indent=2, ensure_ascii=False) + "\n", folder / TASK_FILE)
    write_text_atomic(_card(task, info, features, folder), folder / CARD_NAME)
    return info


def _existing_conflict(folder: Path, expected: Mapping[str, Any]) -> str | None:
    """Why the existing ``folder`` is not this task as configured (None when it is)."""
    if not folder.is_dir():
        return f"{folder} exists and is not a folder"
    try:
        found = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{folder} exists but holds no readable {TASK_FILE}"
    if not (folder / CARD_NAME).is_file():
        return f"{folder} has no {CARD_NAME}"
    ours, theirs = _request_key(expected), _request_key(found)
    if ours == theirs:
        return None
    differ = sorted(
        key
        for key in set(ours["config"] or {}) | set(theirs.get("config") or {})
        if (ours["config"] or {}).get(key) != (theirs.get("config") or {}).get(key)
    )
    what = ", ".join(differ) if differ else "task or format version"
    return f"{folder} holds task {theirs.get('task')!r} made with other settings ({what})"


def make_probe_tasks(
    out: str | Path,
    tasks: str | Iterable[str] = TASKS,
    seed: int | None = None,
    size: str | None = None,
    *,
    config: ProbeTaskConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write each probing task as a Hugging Face dataset folder ``out/<task>``.

    Parameters
    ----------
    out : path
        Parent folder (created).
    tasks : str or iterable of str
        Task names from :data:`TASKS` (``"ks,ic"`` or a list).
    seed : int, optional
        Master seed (default 0).
    size : {"small", "default"}, optional
        Preset of :meth:`ProbeTaskConfig.from_size` (default ``"default"``).
    config : ProbeTaskConfig, optional
        Every number; replaces ``seed`` and ``size`` (giving both is an error).
    overwrite : bool
        Replace a task folder made with other settings (else ValueError). A folder made with
        the same settings is kept as it is (an interrupted run resumes at the next task).

    Returns
    -------
    dict
        Task name -> folder, in the order of ``tasks``.
    """
    from wav2brain.simulation.speech import check_voices

    names = parse_tasks(tasks)
    if config is not None:
        if seed is not None or size is not None:
            raise ValueError("give either config or seed / size, not both")
    else:
        config = ProbeTaskConfig.from_size(
            "default" if size is None else size, seed=0 if seed is None else seed
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    check_voices(sorted({f"{v}+{variant}" for v in config.voices for variant in config.variants}))
    expected = {task: _task_json(task, config) for task in names}
    conflicts = [
        reason
        for task in names
        if (out / task).exists() and (reason := _existing_conflict(out / task, expected[task]))
    ]
    if conflicts and not overwrite:
        raise ValueError("; ".join(conflicts) + " (pass overwrite=True / --overwrite to replace)")
    paths = {}
    for task in names:
        folder = out / task
        paths[task] = folder
        if folder.exists() and _existing_conflict(folder, expected[task]) is None:
            logger.info("%s: %s already holds it, kept", task, folder)
            continue
        started = time.perf_counter()
        tmp = partial_path(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            info = _write_task(task, config, tmp)
            if folder.exists():
                old = folder.with_name(folder.name + ".old" + tmp.suffix)
                shutil.rmtree(old, ignore_errors=True)
                if folder.is_dir():
                    folder.rename(old)
                else:
                    folder.unlink()
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sizes = " / ".join(f"{s} {info['sizes'][s]}" for s in SPLITS)
        logger.info(
            "%s: %s rows in %.1f s -> %s", task, sizes, time.perf_counter() - started, folder
        )
    return paths
