"""Story text for simulated datasets: sentences from a small seeded grammar (no corpus download).

The grammar is a handful of phrase templates over a few hundred common English words, enough
for varied word lengths, phoneme content and sentence rhythm. It is not meant to be meaningful
prose: the simulator needs real speech with exact word and phoneme timings, not a plot.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_NAMES = ("Anna", "Tom", "Maria", "Oliver", "Grace", "Samuel", "Lucy", "Peter", "Nora", "Felix")
_ADJECTIVES = (
    "old", "quiet", "bright", "small", "heavy", "golden", "narrow", "gentle", "broken", "distant",
    "cold", "warm", "strange", "silver", "empty", "crowded", "wooden", "patient", "curious", "tired",
)  # fmt: skip
_NOUNS = (
    "river", "house", "garden", "letter", "window", "forest", "village", "lantern", "bridge",
    "market", "teacher", "sailor", "kitchen", "mountain", "station", "painter", "harbor", "story",
    "winter", "morning", "clock", "road", "field", "boat", "door", "song", "friend", "stranger",
)  # fmt: skip
_VERBS_PAST = (
    "found", "carried", "watched", "opened", "painted", "remembered", "followed", "crossed",
    "counted", "repaired", "described", "noticed", "visited", "answered", "lifted", "forgot",
)  # fmt: skip
_INTRANSITIVE_PAST = (
    "waited", "laughed", "walked home", "listened", "stopped", "wondered", "smiled", "slept",
)  # fmt: skip
_PREPOSITIONS = ("near", "behind", "across", "under", "beside", "beyond", "inside", "along")
_ADVERBS = ("slowly", "quietly", "suddenly", "carefully", "again", "at last", "once more")
_OPENERS = ("Later that day", "In the evening", "Long ago", "After a while", "That winter")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator) -> str:
    if rng.random() < 0.25:
        return _pick(rng, _NAMES)
    determiner = _pick(rng, ("the", "a", "the", "every", "one"))
    if rng.random() < 0.5:
        return f"{determiner} {_pick(rng, _ADJECTIVES)} {_pick(rng, _NOUNS)}"
    return f"{determiner} {_pick(rng, _NOUNS)}"


def _sentence(rng: np.random.Generator) -> str:
    subject = _noun_phrase(rng)
    if rng.random() < 0.3:
        predicate = _pick(rng, _INTRANSITIVE_PAST)
    else:
        predicate = f"{_pick(rng, _VERBS_PAST)} {_noun_phrase(rng)}"
    parts = [subject, predicate]
    if rng.random() < 0.5:
        parts.append(f"{_pick(rng, _PREPOSITIONS)} {_noun_phrase(rng)}")
    if rng.random() < 0.3:
        parts.append(_pick(rng, _ADVERBS))
    clause = " ".join(parts)
    if rng.random() < 0.2:
        clause = f"{_pick(rng, _OPENERS)}, {clause}"
    if rng.random() < 0.25:
        clause = f"{clause}, and {_noun_phrase(rng)} {_pick(rng, _INTRANSITIVE_PAST)}"
    return clause[0].upper() + clause[1:] + "."


def iter_sentences(seed: int) -> Iterator[str]:
    """Yield an endless, reproducible stream of grammatical English sentences.

    Parameters
    ----------
    seed : int
        Seed of the generator; the same seed gives the same sentences.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    rng = np.random.default_rng(seed)
    while True:
        yield _sentence(rng)
