"""Runs to leave out of a dataset: exclusion lists and how their entries match runs.

An exclusion list is a file or a list of entries. Files:

* JSON (``.json``): every string anywhere in it is an entry, so Narratives' published
  ``code/scan_exclude.json`` (``{task: {subject: ["sub-038_task-prettymouth", ...]}}``) reads as
  is, and so does a plain JSON list of entries;
* text (anything else): one entry per line; blank lines and ``#`` comments are ignored.

An entry is one of:

* a run key or BIDS name prefix, ``key-value`` pairs joined by ``_`` (``sub-038_task-prettymouth``,
  ``sub-001_task-pieman_run-1``, optionally ending with a suffix and extension such as
  ``_bold.nii.gz``): it excludes every run whose file-name entities include all of its pairs,
  labels compared as BIDS labels (``run-1`` matches ``run-01``), whatever the file's other
  entities (``space-``, ``hemi-``, ``desc-``), so one entry covers a scan's NIfTI, GIfTI and
  derivatives;
* a shell pattern (containing ``*``, ``?`` or ``[``): matched (:mod:`fnmatch`) against the BOLD
  file's name.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from wav2brain.data.bids import parse_entities, same_label

_PATTERN_CHARS = ("*", "?", "[")


def read_exclusions(exclude: str | Path | Iterable[str] | None) -> tuple[str, ...]:
    """The entries of an exclusion file (a str/Path), or the given entries themselves.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A JSON file that does not parse, or an entry that is neither a name nor a pattern.
    """
    if exclude is None:
        return ()
    if isinstance(exclude, (str, Path)):
        return _read_file(Path(exclude))
    entries = tuple(str(entry).strip() for entry in exclude)
    for entry in entries:
        _check_entry(entry, "exclude")
    return entries


def _read_file(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"exclusion file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"exclusion file {path} is not valid JSON ({error})") from None
        entries = tuple(_strings(content))
        where = [f"exclusion file {path}"] * len(entries)
    else:
        entries, where = (), []
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                entries += (entry,)
                where.append(f"exclusion file {path}, line {number}")
    for entry, place in zip(entries, where, strict=True):
        _check_entry(entry, place)
    return entries


def _strings(content: Any) -> Iterable[str]:
    """Every string value (not key) in a JSON document, in order."""
    if isinstance(content, str):
        yield content.strip()
    elif isinstance(content, dict):
        for value in content.values():
            yield from _strings(value)
    elif isinstance(content, list):
        for value in content:
            yield from _strings(value)


def _check_entry(entry: str, where: str) -> None:
    if not entry:
        raise ValueError(f"{where}: empty exclusion entry")
    if not any(c in entry for c in _PATTERN_CHARS) and not _entities(entry):
        raise ValueError(
            f"{where}: exclusion entry {entry!r} is neither a BIDS name (sub-01_task-x[_run-1]) "
            "nor a shell pattern (sub-01_*)"
        )


def _entities(entry: str) -> dict[str, str]:
    """``key-value`` pairs of an entry (suffix and extension ignored); {} if none."""
    name = Path(entry).name
    entities, suffix = parse_entities(name)
    if "-" in suffix:  # no suffix: the last part is a pair too (sub-01_task-x)
        entities, _ = parse_entities(f"{name.split('.', 1)[0]}_bold")
    return entities


def is_excluded(entities: dict[str, str], bold_path: Path, entries: Sequence[str]) -> bool:
    """Whether a run (its file-name or table entities and BOLD file) matches an entry."""
    for entry in entries:
        if any(c in entry for c in _PATTERN_CHARS):
            if fnmatch(Path(bold_path).name, entry):
                return True
            continue
        wanted = _entities(entry)
        if all(same_label(key, entities.get(key), value) for key, value in wanted.items()):
            return True
    return False


def warn_unmatched(entries: Sequence[str], candidates: Sequence[Any]) -> None:
    """Warn once about entries that match no run of the dataset (a typo, or a partial copy).

    ``candidates`` have ``entities`` and ``bold_path`` (every run found, before filters).
    """
    unmatched = [
        entry
        for entry in entries
        if not any(is_excluded(c.entities, c.bold_path, [entry]) for c in candidates)
    ]
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        warnings.warn(
            f"{len(unmatched)} of {len(entries)} exclusion entries match no run here: {shown}",
            stacklevel=3,
        )
