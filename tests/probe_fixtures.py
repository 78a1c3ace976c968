"""Tiny probing tasks fabricated with numpy, in the layout of interface 5 (``DIR/<task>``).

Each task is a folder with ``data/{train,validation,test}-00000-of-00001.parquet`` (an
``Audio(decode=False)`` column of FLAC bytes plus the target columns), a ``task.json`` and, for
``asv``, ``trials.parquet``. Classes are audible to a filterbank: keywords are tones, a speaker is
the spectral tilt of noise, phonemes and letters are tone segments (a word boundary is silence).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SR = 16_000
SIZES = {"train": 8, "validation": 3, "test": 3}
"""Utterances per class (or speaker) and split."""
SEQUENCE_SIZES = {"train": 40, "validation": 8, "test": 8}
"""Utterances per split of the CTC tasks."""

KEYWORDS = {"yes": 350.0, "no": 700.0, "up": 1400.0, "down": 2800.0}
PHONES = {"a": 400.0, "e": 800.0, "i": 1600.0, "o": 3200.0}
LETTERS = {"b": 500.0, "d": 1000.0, "g": 2000.0}
WORDS = ("bd", "dg", "gb", "db")


def _tone(freq: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = freq * (1 + rng.uniform(-0.03, 0.03))
    ramp = np.minimum(1, np.minimum(t, t[::-1]) / 0.01)
    return 0.3 * rng.uniform(0.6, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * ramp


def _noise(tilt: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SR), 50.0)
    wave = np.fft.irfft(spectrum * (freqs / 1000.0) ** tilt, n)
    return 0.2 * wave / np.abs(wave).max()


def _with_noise(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(wave + 0.01 * rng.standard_normal(len(wave)), -1, 1)


def _write(root: Path, name: str, meta: dict, splits: dict[str, dict], features) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wav2brain.data.hf_layout import encode_audio

    folder = root / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        columns = dict(columns)
        columns["audio"] = [
            encode_audio(w.astype(np.float32), f"{split}_{k}")
            for k, w in enumerate(columns["audio"])
        ]
        table = pa.table(columns, schema=features.arrow_schema)
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    (folder / "task.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def _features(**columns):
    from datasets import Audio, ClassLabel, Features, Value

    kinds = {"audio": Audio(sampling_rate=SR, decode=False)}
    for column, names in columns.items():
        kinds[column] = ClassLabel(names=list(names)) if names else Value("string")
    return Features(kinds)


def make_ks(root: Path, seed: int = 0, sizes: dict[str, int] = SIZES) -> Path:
    """Keyword spotting: one tone per keyword (0.4–0.6 s), ``label`` a ClassLabel."""
    rng = np.random.default_rng(seed)
    names = list(KEYWORDS)
    splits = {}
    for split, n in sizes.items():
        labels = [k for k in range(len(names)) for _ in range(n)]
        audio = [
            _with_noise(_tone(KEYWORDS[names[k]], rng.uniform(0.4, 0.6), rng), rng) for k in labels
        ]
        splits[split] = {"audio": audio, "label": labels}
    meta = {
        "task": "ks",
        "type": "utterance",
        "target_column": "label",
        "seed": seed,
        "sizes": sizes,
    }
    return _write(root, "ks", meta, splits, _features(label=names))


def make_sid(root: Path, seed: int = 0, sizes: dict[str, int] = SIZES, n_speakers: int = 4) -> Path:
    """Speaker identification: a speaker is a spectral tilt of noise; ``label`` and ``speaker``."""
    rng = np.random.default_rng(seed)
    names = [f"spk{k}" for k in range(n_speakers)]
    tilts = np.linspace(-1.5, 1.5, n_speakers)
    splits = {}
    for split, n in sizes.items():
        labels = [k for k in range(n_speakers) for _ in range(n)]
        audio = [_noise(tilts[k] + rng.normal(0, 0.05), 0.5, rng) for k in labels]
        splits[split] = {"audio": audio, "label": labels, "speaker": [names[k] for k in labels]}
    meta = {
        "task": "sid",
        "type": "utterance",
        "target_column": "label",
        "seed": seed,
        "sizes": sizes,
    }
    return _write(root, "sid", meta, splits, _features(label=names, speaker=None))


def make_asv(
    root: Path, seed: int = 0, per_speaker: int = 4, speakers: tuple[int, int, int] = (6, 3, 3)
) -> Path:
    """Verification: disjoint speakers per split (tilts interleaved), all test pairs as trials."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    tilts = np.linspace(-1.5, 1.5, sum(speakers))
    ids = np.arange(sum(speakers))
    order = {  # every split spans the tilt range: train takes most, the others the rest in turn
        "validation": ids[1::4][: speakers[1]],
        "test": ids[3::4][: speakers[2]],
    }
    order["train"] = np.setdiff1d(ids, np.r_[order["validation"], order["test"]])
    splits = {}
    for split in ("train", "validation", "test"):
        spk = [int(s) for s in order[split] for _ in range(per_speaker)]
        audio = [_noise(tilts[s] + rng.normal(0, 0.03), 0.5, rng) for s in spk]
        splits[split] = {"audio": audio, "speaker": [f"spk{s}" for s in spk]}
    meta = {"task": "asv", "type": "verification", "target_column": "speaker", "seed": seed}
    folder = _write(root, "asv", meta, splits, _features(speaker=None))
    test = np.asarray(splits["test"]["speaker"])
    enrol, other = np.triu_indices(len(test), k=1)
    trials = pd.DataFrame({"enrol": enrol, "test": other, "target": test[enrol] == test[other]})
    trials.to_parquet(folder / "trials.parquet", index=False)
    return folder


def _sequence_audio(
    units: list[str], freqs: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    pieces = [np.zeros(int(0.05 * SR))]
    for unit in units:
        if unit == " ":
            pieces.append(np.zeros(int(0.12 * SR)))
        else:
            pieces.append(_tone(freqs[unit], 0.12, rng))
            pieces.append(np.zeros(int(0.03 * SR)))
    pieces.append(np.zeros(int(0.05 * SR)))
    return _with_noise(np.concatenate(pieces), rng)


def make_pr(root: Path, seed: int = 0, sizes: dict[str, int] = SEQUENCE_SIZES) -> Path:
    """Phoneme recognition: 2–4 tone 'phonemes'; ``phonemes`` space-separated."""
    rng = np.random.default_rng(seed)
    names = list(PHONES)
    splits = {}
    for split, n in sizes.items():
        seqs = [
            [names[k] for k in rng.integers(0, len(names), rng.integers(2, 5))] for _ in range(n)
        ]
        splits[split] = {
            "audio": [_sequence_audio(s, PHONES, rng) for s in seqs],
            "phonemes": [" ".join(s) for s in seqs],
        }
    meta = {"task": "pr", "type": "ctc", "target_column": "phonemes", "seed": seed, "sizes": sizes}
    return _write(root, "pr", meta, splits, _features(phonemes=None))


def make_asr(root: Path, seed: int = 0, sizes: dict[str, int] = SEQUENCE_SIZES) -> Path:
    """Word recognition: 1–2 words of tone 'letters', silence between words; ``text``."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in sizes.items():
        texts = [
            " ".join(WORDS[k] for k in rng.integers(0, len(WORDS), rng.integers(1, 3)))
            for _ in range(n)
        ]
        splits[split] = {
            "audio": [_sequence_audio(list(t), LETTERS, rng) for t in texts],
            "text": texts,
        }
    meta = {"task": "asr", "type": "ctc", "target_column": "text", "seed": seed, "sizes": sizes}
    return _write(root, "asr", meta, splits, _features(text=None))


MAKERS = {"ks": make_ks, "sid": make_sid, "asv": make_asv, "pr": make_pr, "asr": make_asr}


def make_tasks(root: Path, names=tuple(MAKERS), seed: int = 0) -> Path:
    """Write the named tasks under ``root``; return ``root``."""
    for name in names:
        MAKERS[name](Path(root), seed)
    return Path(root)
