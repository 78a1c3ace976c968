"""Train / validation / test splits by story (or by run), never by window.

Neighbouring windows share 5/6 of their audio (6 TRs of history, one TR apart), so a split by
window would put nearly the same input in training and test. The unit of a split is a stimulus
(``split_by="stimulus"``: every subject's runs of a story go to one split) or a run, keyed
``"<stimulus>:run-<N>"`` for every subject (``split_by="run"``: a story heard twice can train on
one hearing and test on the other). Units are named in the recipe or drawn with a seed, and the
result is written to ``splits.json`` in the output folder, which a resumed run must match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.atomic import write_text_atomic

SPLIT_BY = ("stimulus", "run")
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class Splits:
    """Units (stories or runs) of each split."""

    split_by: str
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``splits.json`` holds)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    def split_of(self, unit: str) -> str | None:
        """Name of the split that holds ``unit`` (None when none does)."""
        for name in ("train", "validation", "test"):
            if unit in getattr(self, name):
                return name
        return None


def unit_of(split_by: str, stimulus_id: str, run: Any) -> str:
    """The split unit of a response row: its stimulus, or ``"<stimulus>:run-<run>"``."""
    if split_by == "stimulus":
        return str(stimulus_id)
    return f"{stimulus_id}:run-{1 if run is None else run}"


def choose_splits(
    units: Sequence[str],
    *,
    split_by: str = "stimulus",
    train: Sequence[str] | None = None,
    validation: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
    n_validation: int = 1,
    n_test: int = 1,
    seed: int = 0,
) -> Splits:
    """Assign every unit to one split: the named ones, the others drawn with ``seed``.

    Units not named go to test (``n_test`` of them, if test is not named), then validation
    (``n_validation``), then train, in a seeded random order; ``n_validation`` may be 0 (no
    validation split). Every split but validation must end up non-empty.

    Raises
    ------
    ValueError
        An unknown ``split_by``, a named unit that is not in the data, a unit named twice, or too
        few units for the splits asked for.
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by={split_by!r}: expected one of {SPLIT_BY}")
    available = sorted(set(units))
    named = {"train": train, "validation": validation, "test": test}
    seen: dict[str, str] = {}
    for name, chosen in named.items():
        for unit in chosen or ():
            if unit not in available:
                raise ValueError(
                    f"{name}_units names {unit!r}, which is not a {split_by} of the dataset "
                    f"(available: {available})"
                )
            if unit in seen:
                raise ValueError(f"{unit!r} is named in both {seen[unit]}_units and {name}_units")
            seen[unit] = name
    rest = [u for u in available if u not in seen]
    order = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    result = {name: list(chosen) if chosen is not None else None for name, chosen in named.items()}
    for name, count in (("test", n_test), ("validation", n_validation)):
        if result[name] is None:
            result[name], order = order[:count], order[count:]
    if result["train"] is None:
        result["train"], order = order, []
    for name in ("train", "test"):
        if not result[name]:
            raise ValueError(
                f"no {split_by} left for the {name} split: the dataset has {len(available)} "
                f"({available}); name fewer in the other splits or lower n_validation / n_test"
            )
    return Splits(
        split_by=split_by,
        train=tuple(sorted(result["train"])),
        validation=tuple(sorted(result["validation"])),
        test=tuple(sorted(result["test"])),
        seed=seed if len(seen) < len(available) else None,
    )


def record_splits(splits: Splits, output_dir: str | Path) -> Path:
    """Write ``splits.json``, or check an existing one (a resumed run) holds the same splits.

    Raises
    ------
    ValueError
        ``output_dir`` already holds other splits (a run with other data or split options).
    """
    path = Path(output_dir) / SPLITS_FILE
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != splits.to_dict():
            raise ValueError(
                f"{path} holds other splits than this run's ({found} vs {splits.to_dict()}): the "
                "output folder belongs to another run; give a new output_dir"
            )
        return path
    return write_text_atomic(json.dumps(splits.to_dict(), indent=2) + "\n", path)
