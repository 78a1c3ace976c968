"""Checks of probing splits: one rule each, shared by the harness and the offline task maker.

:func:`wav2brain.probing.harness.task_from_splits` (any task: SUPERB's corpora included) and
:func:`wav2brain.probing.tasks.check_task_splits` (every folder ``make-probe-tasks`` writes) call
these functions, so a bad task gets the same message whichever way it arrives. A split is
anything indexable by column name (``datasets.Dataset``, a pandas DataFrame, a dict of lists).
Every message starts with the task and, where one split is at fault, the split.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRIAL_COLUMNS: tuple[str, ...] = ("enrol", "test", "target")
WORD_DELIMITER = "|"
"""CTC unit standing for the space between words in ASR (as wav2vec2's CTC vocabularies)."""


def where(task: str, split: str | None = None) -> str:
    """The start of every message: ``task 'ks'`` or ``task 'ks', split 'test'``."""
    return f"task {task!r}" + ("" if split is None else f", split {split!r}")


def check_splits_present(splits: Mapping[str, Any], *, task: str) -> None:
    """Raise ValueError unless ``splits`` has ``train``, ``validation`` and ``test``."""
    if missing := [s for s in SPLITS if s not in splits]:
        raise ValueError(
            f"{where(task)}: splits {missing} missing; have {sorted(splits)}, expected "
            f"{list(SPLITS)}"
        )


def label_strings(split: Any, column: str) -> list[str | None]:
    """A column's values as strings (a ``ClassLabel``'s integers as their names; None kept)."""
    try:
        values = list(split[column])
    except (KeyError, ValueError) as error:
        raise ValueError(f"no column {column!r}") from error
    features = getattr(split, "features", None)
    names = getattr(features.get(column), "names", None) if features is not None else None
    if names is not None:
        return [names[v] if v is not None and v >= 0 else None for v in values]
    return [None if v is None else str(v) for v in values]


def ctc_units(text: str, target_column: str) -> list[str]:
    """CTC units of a target: space-separated phonemes, or lower-case characters with ``|``
    between words (any other column)."""
    if target_column == "phonemes":
        return text.split()
    return list(WORD_DELIMITER.join(text.lower().split()))


def split_overlaps(splits: Mapping[str, Any], column: str) -> dict[tuple[str, str], list]:
    """Values of ``column`` found in two splits, for every pair of splits that shares any.

    ``None`` and ``""`` (no speaker, no text) never count as shared. Returns
    ``(split_a, split_b) -> sorted shared values``; empty when the splits are disjoint.
    """
    values: dict[str, set] = {}
    for name, split in splits.items():
        try:
            column_values = split[column]
        except (KeyError, ValueError) as error:
            raise ValueError(f"split {name!r} has no column {column!r}") from error
        values[name] = {v for v in column_values if v is not None and v != ""}
    overlaps = {}
    for a, b in itertools.combinations(values, 2):
        if shared := values[a] & values[b]:
            overlaps[(a, b)] = sorted(shared, key=str)
    return overlaps


def check_disjoint_splits(
    splits: Mapping[str, Any], columns: str | Sequence[str], *, task: str = "dataset"
) -> None:
    """Raise ValueError if two splits share a value of any of ``columns`` (:func:`split_overlaps`).

    The message names the task, the column, both splits, how many values they share and the
    first few of them.
    """
    for column in [columns] if isinstance(columns, str) else columns:
        for (a, b), shared in split_overlaps(splits, column).items():
            shown = ", ".join(repr(v) for v in shared[:5])
            raise ValueError(
                f"{where(task)}: splits {a!r} and {b!r} share {len(shared)} value(s) of column "
                f"{column!r} ({shown}{', ...' if len(shared) > 5 else ''}); they must be disjoint"
            )


def check_labels_seen(
    splits: Mapping[str, Any],
    column: str,
    *,
    task: str = "dataset",
    tokens: Callable[[str], Iterable[str]] | None = None,
) -> tuple[str, ...]:
    """Raise ValueError naming a label of ``column`` outside ``train`` that ``train`` lacks.

    Parameters
    ----------
    splits
        Must include ``train``; every other split is compared with it.
    tokens
        Compare the units each value splits into (CTC targets: :func:`ctc_units`) instead of
        the values.

    Returns
    -------
    tuple of str
        The training split's labels (or units), sorted.

    The message names the task, the split, the column, how many labels (or units) are unseen,
    the first ten of them and the first row holding one.
    """
    if "train" not in splits:
        raise ValueError(f"{where(task)}: no split 'train' to compare {column!r} labels with")

    def units(value: str | None) -> list[str]:
        if value is None:
            return []
        return list(tokens(value)) if tokens is not None else [value]

    def values_of(name: str) -> list[str | None]:
        try:
            return label_strings(splits[name], column)
        except ValueError as error:
            raise ValueError(f"{where(task, name)}: {error}") from error

    seen = {u for value in values_of("train") for u in units(value)}
    kind = "unit(s)" if tokens is not None else "label(s)"
    for name in splits:
        if name == "train":
            continue
        values = values_of(name)
        unseen = sorted({u for value in values for u in units(value)} - seen, key=str)
        if unseen:
            row = next(k for k, value in enumerate(values) if set(units(value)) - seen)
            raise ValueError(
                f"{where(task, name)}: column {column!r} has {len(unseen)} {kind} that split "
                f"'train' never has: {unseen[:10]!r}{' ...' if len(unseen) > 10 else ''} (first "
                f"in row {row}); every label at evaluation must occur in training"
            )
    return tuple(sorted(seen, key=str))


def check_trials(
    trials: Mapping[str, Any], speakers: Sequence[str], *, task: str = "asv"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check verification trials against the test split's speakers; return them as arrays.

    Parameters
    ----------
    trials
        Columns ``enrol``, ``test`` (row indices into the test split) and ``target`` (bool:
        same speaker), as a DataFrame, a pyarrow-style dict of lists or any mapping.
    speakers
        The speaker of every test row.

    Returns
    -------
    enrol, test, target
        int64, int64 and bool arrays.

    Raises
    ------
    ValueError
        Naming the task, the column or the first bad trial: missing columns, columns of unequal
        length, no trials, indices that are not integers or lie outside the test split, a trial
        pairing a row with itself, a ``target`` that is not bool or disagrees with the speakers,
        a pair given twice (either order), trials that are all target or all non-target.
    """
    if missing := [c for c in TRIAL_COLUMNS if c not in trials]:
        raise ValueError(
            f"{where(task)}: trials lack column(s) {missing}; expected {', '.join(TRIAL_COLUMNS)}"
        )
    enrol, test, target = (np.asarray(trials[c]) for c in TRIAL_COLUMNS)
    if not len(enrol) == len(test) == len(target):
        raise ValueError(
            f"{where(task)}: trial columns enrol, test, target have {len(enrol)}, {len(test)}, "
            f"{len(target)} values; expected one each per trial"
        )
    if len(enrol) == 0:
        raise ValueError(f"{where(task)}: no trials")
    if target.dtype != bool:
        raise ValueError(f"{where(task)}: trials column 'target' must be bool, got {target.dtype}")
    n_rows = len(speakers)
    for column, values in (("enrol", enrol), ("test", test)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"{where(task)}: trials column {column!r} must hold row indices (integers), got "
                f"{values.dtype}"
            )
    bad = np.flatnonzero((enrol < 0) | (enrol >= n_rows) | (test < 0) | (test >= n_rows))
    bad = bad if len(bad) else np.flatnonzero(enrol == test)
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{where(task)}: trial {row} pairs rows {int(enrol[row])} and {int(test[row])}; "
            f"expected two different rows of split 'test' ({n_rows} rows)"
        )
    labels = np.asarray(speakers, dtype=object)
    same = labels[enrol] == labels[test]
    if len(wrong := np.flatnonzero(same != target)):
        row = int(wrong[0])
        i, j = int(enrol[row]), int(test[row])
        raise ValueError(
            f"{where(task)}: trial {row} says target={bool(target[row])} but rows {i} and {j} "
            f"are spoken by {labels[i]!r} and {labels[j]!r}"
        )
    pairs = np.stack([np.minimum(enrol, test), np.maximum(enrol, test)], axis=1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    if len(first) < len(pairs):
        row = int(np.setdiff1d(np.arange(len(pairs)), first)[0])
        raise ValueError(
            f"{where(task)}: trial {row} repeats the pair of rows {int(enrol[row])} and "
            f"{int(test[row])}"
        )
    if target.all() or not target.any():
        raise ValueError(f"{where(task)}: trials need both target and non-target pairs")
    return enrol.astype(np.int64), test.astype(np.int64), target
