"""Word and phoneme alignments of a stimulus: Gentle ``align.json`` and Praat TextGrid.

Times are seconds from the stimulus WAV's first sample. Silence and pause marks (empty labels,
``sp``, ``sil``) are dropped: they are not words or phonemes, and keeping them would make a pause
look like a phoneme to selectivity analyses.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wav2brain.atomic import write_text_atomic

SILENCE_LABELS = frozenset({"", "sp", "sil", "<sil>", "{sl}", "{lg}", "{ns}"})
"""Interval labels treated as silence (compared lower-case, stripped)."""

WORD_TIER_NAMES = ("word", "words")
"""TextGrid tier names (any case) read as words when no word tier is named."""
PHONE_TIER_NAMES = ("phone", "phones", "phoneme", "phonemes")
"""TextGrid tier names (any case) read as phonemes when no phone tier is named."""
TIER_OPTIONS = (
    "--word-tier/--phone-tier (prepare_dataset(word_tier=..., phone_tier=...), mapping-table "
    "columns word_tier/phone_tier)"
)
"""How a user names TextGrid tiers, quoted by the errors of :func:`read_textgrid`."""

TierChoice = str | int | Sequence[str] | None
"""A TextGrid tier: a name, several names (any one of them), a 0-based index, or None (default
names)."""

_GENTLE_POSITION = re.compile(r"_[BIES]$")
_TOKEN = re.compile(
    r'"((?:[^"]|"")*)"'  # a quoted string, "" escapes a quote
    r"|(?<![\[\w.])([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\]\w.])"  # a free number
    r"|(<exists>|<absent>)"
)


@dataclass(frozen=True)
class AlignedToken:
    """One word or phoneme: ``label`` heard from ``start`` to ``end`` (seconds)."""

    label: str
    start: float
    end: float


@dataclass
class Alignment:
    """Words and phonemes of one stimulus, each sorted by start time (seconds)."""

    words: list[AlignedToken] = field(default_factory=list)
    phonemes: list[AlignedToken] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[dict]]:
        """Columns for a table: ``{"words": [{label, start, end}, ...], "phonemes": [...]}``."""
        return {
            "words": [vars(t).copy() for t in self.words],
            "phonemes": [vars(t).copy() for t in self.phonemes],
        }


def read_alignment(
    path: str | Path,
    word_tier: TierChoice = None,
    phone_tier: TierChoice = None,
) -> Alignment:
    """Read a Gentle ``.json`` or a Praat ``.TextGrid`` by file ending.

    ``word_tier`` / ``phone_tier`` name TextGrid tiers (:func:`read_textgrid`); given for a
    Gentle file, which has no tiers, they are probably a mistake and raise ValueError.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        if word_tier is not None or phone_tier is not None:
            raise ValueError(
                f"alignment {path} is a Gentle .json, which has no tiers: word_tier="
                f"{word_tier!r} / phone_tier={phone_tier!r} apply to TextGrids only"
            )
        return read_gentle_json(path)
    if path.suffix.lower() == ".textgrid":
        return read_textgrid(path, word_tier=word_tier, phone_tier=phone_tier)
    raise ValueError(f"alignment {path}: expected a Gentle .json or a Praat .TextGrid file")


def read_gentle_json(path: str | Path) -> Alignment:
    """Read a Gentle forced-alignment ``align.json``.

    Words with ``case`` other than ``"success"`` (``"not-found-in-audio"``) have no times and are
    skipped. The label is the transcript form (``word``). Phones (``{"phone": "dh_B",
    "duration": 0.03}``) are laid end to end from the word start, as Gentle defines them; a phone
    ``start`` key (written by :func:`write_gentle_json`) is used when present. Gentle's position
    suffix (``_B``, ``_I``, ``_E``, ``_S``) is removed.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; invalid JSON, no ``words`` list, or a word whose end precedes its start.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"alignment file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Gentle alignment {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("words"), list):
        raise ValueError(f"Gentle alignment {path} has no 'words' list")
    words, phonemes = [], []
    for index, entry in enumerate(doc["words"]):
        try:
            _read_gentle_word(entry, words, phonemes)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"Gentle alignment {path}, word {index}: {err}") from err
    return Alignment(_sorted(words), _sorted(phonemes))


def _read_gentle_word(entry: dict, words: list, phonemes: list) -> None:
    """Append one Gentle word (if aligned) and its phones; raise on malformed values."""
    if entry.get("case", "success") != "success" or "start" not in entry:
        return
    start, end = float(entry["start"]), float(entry["end"])
    label = str(entry.get("word", entry.get("alignedWord", "")))
    if end < start:
        raise ValueError(f"({label!r}) end {end} s precedes start {start} s")
    words.append(AlignedToken(label, start, end))
    cursor = start
    for phone in entry.get("phones", []):
        phone_start = float(phone.get("start", cursor))
        cursor = phone_start + float(phone["duration"])
        phone_label = _GENTLE_POSITION.sub("", str(phone["phone"]))
        if phone_label.strip().lower() not in SILENCE_LABELS:
            phonemes.append(AlignedToken(phone_label, phone_start, cursor))


def write_gentle_json(alignment: Alignment, path: str | Path, transcript: str) -> Path:
    """Write an alignment as Gentle ``align.json`` (atomically: temporary file, then rename).

    Each phoneme goes to the word whose interval holds its midpoint, with Gentle's position
    suffix and an extra ``start`` key so that :func:`read_gentle_json` restores times exactly;
    phonemes outside every word are not representable in Gentle's format and are left out.
    ``startOffset``/``endOffset`` are character offsets of each word in ``transcript``, found in
    order (case-insensitive); a word absent from the transcript gets none.
    """
    path = Path(path)
    lowered = transcript.lower()
    cursor = 0
    entries = []
    phonemes = sorted(alignment.phonemes, key=lambda t: t.start)
    for word in sorted(alignment.words, key=lambda t: t.start):
        entry = {"alignedWord": word.label.lower(), "case": "success", "end": word.end}
        found = lowered.find(word.label.lower(), cursor)
        if found >= 0:
            entry["startOffset"], entry["endOffset"] = found, found + len(word.label)
            cursor = found + len(word.label)
        inside = [p for p in phonemes if word.start <= (p.start + p.end) / 2 < word.end]
        entry["phones"] = [
            {
                "duration": p.end - p.start,
                "phone": f"{p.label}_{_position(i, len(inside))}",
                "start": p.start,
            }
            for i, p in enumerate(inside)
        ]
        entry["start"] = word.start
        entry["word"] = word.label
        entries.append(entry)
    write_text_atomic(json.dumps({"transcript": transcript, "words": entries}, indent=1), path)
    return path


def read_textgrid(
    path: str | Path,
    word_tier: TierChoice = None,
    phone_tier: TierChoice = None,
) -> Alignment:
    """Read words and phonemes from a Praat TextGrid (long or short text format).

    Parameters
    ----------
    path : str or Path
        ``.TextGrid`` file, UTF-8 or UTF-16 (Praat writes either).
    word_tier, phone_tier : str, sequence of str, or int, optional
        Tier name (any case), several names (the grid's one tier with any of them: one
        ``--word-tier Mot words`` serves a dataset whose TextGrids name the tier either way), or
        0-based index. By default the one tier named ``word``/``words``
        (:data:`WORD_TIER_NAMES`) and the one named ``phone(s)``/``phoneme(s)``
        (:data:`PHONE_TIER_NAMES`).

    Returns
    -------
    Alignment
        Words of the word tier, phonemes of the phone tier. Without a phone tier there are no
        phonemes (a single ``words`` tier gives words only; its words are never copied into
        the phonemes). A grid whose only tier is a phone tier gives phonemes only.

    Notes
    -----
    Tiers are found by name, never by position: the tier order of real TextGrids varies, and a
    guess would silently read phones as words. Real TextGrids are not always clean either:
    LeBel's contain an overlapping phone interval. Overlaps are clipped (an interval starting
    before its predecessor ends starts at that end; one left empty is dropped), with one warning
    per tier that names the file and the count.

    Raises
    ------
    FileNotFoundError
        Missing file.
    ValueError
        Not a TextGrid; a named tier absent or an index out of range (the tiers are listed);
        two tiers matching one name; the word and phone tier being the same; no word tier while
        the grid holds tiers other than the phone tier (the tiers are listed and the options
        that name tiers, :data:`TIER_OPTIONS`, quoted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TextGrid not found: {path}")
    tiers = _parse_textgrid(path)
    names = [name for name, _ in tiers]
    words = _tier_index(tiers, word_tier, WORD_TIER_NAMES, "word", path)
    phones = _tier_index(tiers, phone_tier, PHONE_TIER_NAMES, "phone", path)
    if words is not None and words == phones:
        raise ValueError(
            f"TextGrid {path}: the word and phone tiers are the same tier {names[words]!r}; "
            f"tiers: {names}"
        )
    if words is None and (phones is None or len(tiers) > 1):
        raise ValueError(
            f"TextGrid {path}: no word tier (none named {' or '.join(WORD_TIER_NAMES)}); tiers: "
            f"{names}. Name the word tier (and the phone tier, if any) with {TIER_OPTIONS}"
        )
    return Alignment(
        _clean_tier(tiers[words][1], path) if words is not None else [],
        _clean_tier(tiers[phones][1], path) if phones is not None else [],
    )


def _parse_textgrid(path: Path) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """Tiers as ``(name, [(xmin, xmax, text), ...])``; point tiers get ``xmin == xmax``."""
    text = _decode(path.read_bytes())
    tokens = []
    for match in _TOKEN.finditer(text):
        string, number, flag = match.groups()
        tokens.append(string.replace('""', '"') if string is not None else number or flag)
    if len(tokens) < 2 or tokens[0] != "ooTextFile" or tokens[1] != "TextGrid":
        raise ValueError(f"{path} is not a Praat text TextGrid (no 'ooTextFile' 'TextGrid' header)")
    try:
        position = 4  # header strings, xmin, xmax
        if tokens[position] == "<absent>":
            return []
        position += 1
        n_tiers = int(float(tokens[position]))
        position += 1
        tiers = []
        for _ in range(n_tiers):
            kind, name = tokens[position], tokens[position + 1]
            count = int(float(tokens[position + 4]))
            position += 5
            intervals = []
            for _ in range(count):
                if kind == "IntervalTier":
                    xmin, xmax, label = tokens[position : position + 3]
                    intervals.append((float(xmin), float(xmax), label))
                    position += 3
                else:
                    time, label = tokens[position : position + 2]
                    intervals.append((float(time), float(time), label))
                    position += 2
            tiers.append((name, intervals))
    except (IndexError, ValueError) as err:
        raise ValueError(
            f"TextGrid {path} is truncated or malformed near token {position}"
        ) from err
    return tiers


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig", errors="replace")


def _tier_index(tiers, choice, names, kind: str, path: Path) -> int | None:
    """Index of the ``kind`` tier: ``choice`` (name or index), else the one named in ``names``.

    None when ``choice`` is None and no tier has one of ``names``.
    """
    available = [name for name, _ in tiers]
    if isinstance(choice, int):
        if not -len(tiers) <= choice < len(tiers):
            raise ValueError(f"TextGrid {path}: no tier {choice}; it has {len(tiers)}: {available}")
        return choice % len(tiers)
    given = None if choice is None else (choice,) if isinstance(choice, str) else tuple(choice)
    wanted = {w.strip().lower() for w in (given if given is not None else names)}
    found = [i for i, name in enumerate(available) if name.strip().lower() in wanted]
    if len(found) > 1:
        raise ValueError(
            f"TextGrid {path}: tiers {found} are all named like a {kind} tier ({available}); "
            f"pick one by its 0-based index (read_textgrid({kind}_tier=...))"
        )
    if found:
        return found[0]
    if choice is not None:
        shown = " or ".join(repr(name) for name in given)
        raise ValueError(f"TextGrid {path}: no {kind} tier named {shown}; tiers: {available}")
    return None


def _clean_tier(intervals, path: Path) -> list[AlignedToken]:
    """Drop silences, sort, and clip overlaps (warning once with the count)."""
    tokens = sorted(
        (
            AlignedToken(label.strip(), xmin, xmax)
            for xmin, xmax, label in intervals
            if label.strip().lower() not in SILENCE_LABELS
        ),
        key=lambda t: (t.start, t.end),
    )
    cleaned: list[AlignedToken] = []
    fixed = 0
    for token in tokens:
        start = max(token.start, cleaned[-1].end) if cleaned else token.start
        if start != token.start or token.end < token.start:
            fixed += 1
        if token.end > start or (token.end == start == token.start):
            cleaned.append(AlignedToken(token.label, start, token.end))
    if fixed:
        warnings.warn(
            f"TextGrid {path}: clipped or dropped {fixed} overlapping/reversed interval(s)",
            stacklevel=3,
        )
    return cleaned


def _sorted(tokens: list[AlignedToken]) -> list[AlignedToken]:
    return sorted(tokens, key=lambda t: (t.start, t.end))


def _position(index: int, count: int) -> str:
    if count == 1:
        return "S"
    return "B" if index == 0 else "E" if index == count - 1 else "I"
