"""Phonetic classes (manner, place, voicing) of espeak-ng IPA phonemes, in one table.

Consonants follow the IPA chart; vowels get manner ``"vowel"`` (monophthongs) or ``"diphthong"``,
place ``"front"`` / ``"central"`` / ``"back"`` (of the first element for diphthongs) and voicing
``"voiced"``. Labels not in the table are looked up without length marks (``ː``, ``:``) and
without a final rhotic ``ɹ`` (espeak writes r-coloured vowels as ``ɑːɹ``); a label still unknown
has no class and is only used for the phoneme selectivity index.
"""

from __future__ import annotations

FEATURES: tuple[str, ...] = ("manner", "place", "voicing")
"""The three phonetic feature dimensions."""

PHONETIC_CLASSES: dict[str, tuple[str, str, str]] = {
    # plosives
    "p": ("plosive", "bilabial", "voiceless"),
    "b": ("plosive", "bilabial", "voiced"),
    "t": ("plosive", "alveolar", "voiceless"),
    "d": ("plosive", "alveolar", "voiced"),
    "k": ("plosive", "velar", "voiceless"),
    "ɡ": ("plosive", "velar", "voiced"),
    "g": ("plosive", "velar", "voiced"),
    "ʔ": ("plosive", "glottal", "voiceless"),
    # affricates
    "tʃ": ("affricate", "postalveolar", "voiceless"),
    "dʒ": ("affricate", "postalveolar", "voiced"),
    # fricatives
    "f": ("fricative", "labiodental", "voiceless"),
    "v": ("fricative", "labiodental", "voiced"),
    "θ": ("fricative", "dental", "voiceless"),
    "ð": ("fricative", "dental", "voiced"),
    "s": ("fricative", "alveolar", "voiceless"),
    "z": ("fricative", "alveolar", "voiced"),
    "ʃ": ("fricative", "postalveolar", "voiceless"),
    "ʒ": ("fricative", "postalveolar", "voiced"),
    "x": ("fricative", "velar", "voiceless"),
    "h": ("fricative", "glottal", "voiceless"),
    # nasals
    "m": ("nasal", "bilabial", "voiced"),
    "n": ("nasal", "alveolar", "voiced"),
    "ŋ": ("nasal", "velar", "voiced"),
    # approximants, liquids, taps
    "l": ("lateral", "alveolar", "voiced"),
    "əl": ("lateral", "alveolar", "voiced"),
    "ɹ": ("approximant", "alveolar", "voiced"),
    "r": ("approximant", "alveolar", "voiced"),
    "ɾ": ("tap", "alveolar", "voiced"),
    "w": ("approximant", "labiovelar", "voiced"),
    "j": ("approximant", "palatal", "voiced"),
    # monophthongs
    "i": ("vowel", "front", "voiced"),
    "ɪ": ("vowel", "front", "voiced"),
    "e": ("vowel", "front", "voiced"),
    "ɛ": ("vowel", "front", "voiced"),
    "æ": ("vowel", "front", "voiced"),
    "a": ("vowel", "front", "voiced"),
    "ə": ("vowel", "central", "voiced"),
    "ɐ": ("vowel", "central", "voiced"),
    "ɜ": ("vowel", "central", "voiced"),
    "ɚ": ("vowel", "central", "voiced"),
    "ᵻ": ("vowel", "central", "voiced"),
    "ʉ": ("vowel", "central", "voiced"),
    "ʌ": ("vowel", "back", "voiced"),
    "ɑ": ("vowel", "back", "voiced"),
    "ɒ": ("vowel", "back", "voiced"),
    "ɔ": ("vowel", "back", "voiced"),
    "o": ("vowel", "back", "voiced"),
    "ʊ": ("vowel", "back", "voiced"),
    "u": ("vowel", "back", "voiced"),
    # diphthongs
    "eɪ": ("diphthong", "front", "voiced"),
    "aɪ": ("diphthong", "front", "voiced"),
    "aɪə": ("diphthong", "front", "voiced"),
    "aʊ": ("diphthong", "front", "voiced"),
    "iə": ("diphthong", "front", "voiced"),
    "eə": ("diphthong", "front", "voiced"),
    "əʊ": ("diphthong", "central", "voiced"),
    "ʌʉ": ("diphthong", "back", "voiced"),
    "oʊ": ("diphthong", "back", "voiced"),
    "ɔɪ": ("diphthong", "back", "voiced"),
}
"""espeak-ng IPA label (stress marks removed) to (manner, place, voicing)."""


def phonetic_class(label: str) -> tuple[str, str, str] | None:
    """(manner, place, voicing) of a phoneme label, or None when it has no class (module doc)."""
    text = label.strip().lower()
    for candidate in (text, text.replace("ː", "").replace(":", "")):
        if candidate in PHONETIC_CLASSES:
            return PHONETIC_CLASSES[candidate]
        if len(candidate) > 1 and candidate.endswith("ɹ") and candidate[:-1] in PHONETIC_CLASSES:
            return PHONETIC_CLASSES[candidate[:-1]]
    return None
