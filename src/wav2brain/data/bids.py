"""Find each functional run of a BIDS dataset with its stimulus WAV, stimulus onset and TR.

Sources, in the order they are used:

* ``events.tsv`` beside the run (or inherited from a higher level). The row whose ``trial_type``
  is ``"story"`` picks the stimulus by its ``stim_file``: one task may point to several WAVs
  (milkyway: original, vodka, synonyms), so the run's row, not the task name, decides.
  ``stim_file`` is relative to ``<root>/stimuli`` as BIDS specifies (relative to the root or
  absolute is accepted too). The WAV's first sample plays at the onset of the *first* row naming
  it: Narratives' stimulus files include the music lead-in (pieman: music 0-13 s, story from
  15 s; ``pieman_audio.wav`` lasts 450 s = the 300-TR scan, 86,400,000 data bytes at 48 kHz
  stereo 16-bit; prettymouth's 712 s = its 475 TRs), while a story-only file has a story row
  only (tunnel: onset 3 s, 1534 s long). Taking the story row's onset as the WAV start would
  shift every pieman window by 15 s. The story's place in the WAV is kept
  (:attr:`RunSpec.story_offset`), and the run must cover the WAV up to the story's end.
* ``*_bold.json`` sidecars with BIDS inheritance: every sidecar from the root down to the run's
  folder whose entities are a subset of the run's (``task-souls_bold.json`` at the root of LeBel
  applies to ``sub-UTS01/ses-2/func/sub-UTS01_ses-2_task-souls_bold.nii.gz``); deeper and more
  specific files override. ``RepetitionTime`` is the TR in seconds.
* A user mapping table (:func:`read_mapping_table`) for datasets without events (LeBel stories,
  LeBel's preprocessed ``.hf5`` responses). When a table is given it is the list of runs; the BIDS
  tree only fills in a missing TR from the sidecars.
* fMRIPrep confounds (``*_desc-confounds_timeseries.tsv``, or the older
  ``*_desc-confounds_regressors.tsv``) in the BOLD file's folder, matched by the run's entities
  (:func:`find_confounds`), or a mapping table's ``confounds`` column.

Junk (``._*`` AppleDouble files, ``.DS_Store``, hidden folders) is never read.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal, NamedTuple

BOLD_SUFFIXES = ("_bold.nii.gz", "_bold.nii", "_bold.func.gii")
"""File endings of functional images found by discovery."""

ARRAY_SUFFIXES = (".hf5", ".h5", ".hdf5", ".npy")
"""File endings of already-preprocessed response arrays [TRs, voxels] (mapping tables only)."""

MAPPING_COLUMNS = ("subject", "task", "run", "bold", "stimulus", "onset")
"""Required columns of a mapping table; optional: session, tr, duration, space, alignment,
confounds."""

CONFOUNDS_SUFFIXES = ("timeseries", "regressors")
"""Suffixes of fMRIPrep's ``desc-confounds`` tables, preferred first: ``timeseries`` since
fMRIPrep 20.2, ``regressors`` in 1.2-20.1."""

_NON_RUN_ENTITIES = ("space", "res", "den", "hemi", "desc")
"""Entities that name a derivative of a run (output space, resolution, hemisphere, description),
not the run: a run's confounds table lacks them."""

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9.+]+)$")


@dataclass(frozen=True)
class RunSpec:
    """One functional run and the stimulus heard during it.

    Attributes
    ----------
    subject, task : str
        BIDS labels without prefix (``"001"``, ``"pieman"``).
    run, session : str or None
        BIDS labels without prefix, None when the file names have no such entity.
    bold_path : Path
        NIfTI, GIfTI (left hemisphere when both exist) or preprocessed array file.
    stimulus_path : Path
        The stimulus sound file.
    stimulus_id : str
        Stimulus name shared by runs that heard the same audio (the WAV stem without
        ``_audio``: ``"milkywayvodka"``, ``"souls"``).
    onset : float
        Seconds from the first volume (row 0 of the array) to the WAV's first sample; negative
        when the responses start after the sound (LeBel's trimmed arrays).
    tr : float
        Repetition time in seconds.
    duration : float or None
        Seconds of stimulus, from its first sample, the run must cover (events: story offset +
        story ``duration``; else the WAV's length).
    space : str
        ``space-`` entity of the file name, ``"native"`` without one.
    alignment_path : Path or None
        Gentle ``align.json`` or Praat TextGrid of the stimulus, when one was found.
    story_offset : float
        Seconds from the WAV's first sample to the story (Narratives pieman: 15 s of music and
        silence first); 0 when the WAV is the story.
    confounds_path : Path or None
        Confounds table of the run, one row per volume (TR) of the scan before trimming
        (fMRIPrep ``desc-confounds_timeseries.tsv``), when one was found.
    tr_sources : tuple of (str, float) pairs
        Every source that gave this run a TR (mapping-table row, sidecar), named, for
        :func:`wav2brain.data.timing.check_tr` once the image header is read too.
    slice_time_reference : float
        Seconds into each volume at which its signal is sampled
        (:func:`wav2brain.data.timing.slice_time_reference`); 0 = acquisition start.
    slice_time_source : str
        How ``slice_time_reference`` was decided, for the dataset card.
    mask_path : Path or None
        A brain mask that comes with the image (fMRIPrep ``desc-brain_mask``), when one was found.
    echo : str or None
        ``echo-`` entity of a multi-echo file, None for single-echo data.
    word_tier, phone_tier : str or None
        Names of the TextGrid tiers holding the words and the phonemes of the alignment
        (mapping-table columns ``word_tier``/``phone_tier``); None: found by name
        (:func:`wav2brain.data.alignments.read_textgrid`).
    """

    subject: str
    task: str
    run: str | None
    session: str | None
    bold_path: Path
    stimulus_path: Path
    stimulus_id: str
    onset: float
    tr: float
    duration: float | None = None
    space: str = "native"
    alignment_path: Path | None = None
    story_offset: float = 0.0
    confounds_path: Path | None = None
    tr_sources: tuple[tuple[str, float], ...] = ()
    slice_time_reference: float = 0.0
    slice_time_source: str = "acquisition start (no slice-timing correction)"
    mask_path: Path | None = None
    echo: str | None = None
    word_tier: str | None = None
    phone_tier: str | None = None

    @property
    def is_array(self) -> bool:
        """Whether ``bold_path`` holds a preprocessed array rather than an image."""
        return self.bold_path.name.lower().endswith(ARRAY_SUFFIXES)

    @property
    def key(self) -> str:
        """A readable unique name: ``sub-001_ses-1_task-pieman_run-1``."""
        parts = [f"sub-{self.subject}"]
        if self.session is not None:
            parts.append(f"ses-{self.session}")
        parts.append(f"task-{self.task}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)


def require_file(path: Path) -> None:
    """Raise FileNotFoundError for a missing file, naming unfetched git-annex links explicitly."""
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(
            f"{path} is a broken link (git-annex/DataLad content not fetched? run `datalad get`)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")


def is_junk(path: Path) -> bool:
    """Whether a path is OS junk (``._*`` AppleDouble, ``.DS_Store``) or inside a hidden folder."""
    return any(part.startswith(".") for part in path.parts if part not in (".", ".."))


def parse_entities(name: str) -> tuple[dict[str, str], str]:
    """Split a BIDS file name into entities and suffix.

    ``sub-01_ses-2_task-x_run-1_bold.nii.gz`` -> ``({"sub": "01", "ses": "2", "task": "x",
    "run": "1"}, "bold")``. Parts that are not ``key-value`` (other than the suffix) are ignored.
    """
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    entities = {}
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if match:
            entities[match.group(1)] = match.group(2)
    return entities, parts[-1]


def read_sidecar(bold_path: Path, root: Path) -> dict:
    """Merge the ``*_bold.json`` sidecars that apply to a run (BIDS inheritance principle).

    Candidates lie in the folders from ``root`` down to the run's folder; a candidate applies
    when its entities are a subset of the run's. Shallower and less specific files are applied
    first, so the run's own sidecar wins.

    Raises
    ------
    ValueError
        If an applicable sidecar is not valid JSON (the file is named).
    """
    entities, _ = parse_entities(bold_path.name)
    found = []
    for depth, folder in enumerate(_folders_down_to(root, bold_path.parent)):
        for candidate in sorted(folder.glob("*_bold.json")):
            if is_junk(candidate.relative_to(root)):
                continue
            cand_entities, suffix = parse_entities(candidate.name)
            if suffix != "bold":
                continue
            if all(entities.get(k) == v for k, v in cand_entities.items()):
                found.append((depth, len(cand_entities), candidate))
    merged: dict = {}
    for _, _, candidate in sorted(found):
        try:
            merged.update(json.loads(candidate.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"sidecar {candidate} is not valid JSON: {err}") from err
    return merged


def find_events(bold_path: Path, root: Path) -> Path | None:
    """The most specific ``*_events.tsv`` that applies to a run, or None."""
    entities, _ = parse_entities(bold_path.name)
    entities.pop("space", None)
    entities.pop("desc", None)
    entities.pop("hemi", None)
    best = None
    for depth, folder in enumerate(_folders_down_to(root, bold_path.parent)):
        for candidate in sorted(folder.glob("*_events.tsv")):
            if is_junk(candidate.relative_to(root)):
                continue
            cand_entities, suffix = parse_entities(candidate.name)
            if suffix == "events" and all(entities.get(k) == v for k, v in cand_entities.items()):
                rank = (depth, len(cand_entities))
                if best is None or rank >= best[0]:
                    best = (rank, candidate)
    return None if best is None else best[1]


def find_confounds(bold_path: Path) -> Path | None:
    """The fMRIPrep confounds table beside a BOLD file, or None.

    A candidate in the BOLD file's folder is ``*_desc-confounds_timeseries.tsv`` (or
    ``_regressors.tsv``) whose entities, without ``desc``, equal the BOLD's without
    ``space``/``res``/``den``/``hemi``/``desc`` (``sub``, ``ses``, ``task``, ``acq``, ``run``...):
    ``sub-01_task-x_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz`` ->
    ``sub-01_task-x_run-1_desc-confounds_timeseries.tsv``. ``timeseries`` wins over
    ``regressors`` when both exist.
    """
    entities = _run_entities(bold_path.name)
    found = {}
    for candidate in bold_path.parent.glob("*_desc-confounds_*.tsv"):
        cand_entities, suffix = parse_entities(candidate.name)
        if (
            not is_junk(Path(candidate.name))
            and suffix in CONFOUNDS_SUFFIXES
            and cand_entities.get("desc") == "confounds"
            and _run_entities(candidate.name) == entities
        ):
            found[suffix] = candidate
    return next((found[s] for s in CONFOUNDS_SUFFIXES if s in found), None)


def _run_entities(name: str) -> dict[str, str]:
    """A file name's entities without those of derivatives (:data:`_NON_RUN_ENTITIES`)."""
    entities, _ = parse_entities(name)
    return {k: v for k, v in entities.items() if k not in _NON_RUN_ENTITIES}


def discover_runs(
    root: str | Path,
    subjects: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    runs: Iterable[str] | None = None,
    mapping: str | Path | Sequence[RunSpec] | None = None,
    trial_type: str = "story",
    on_missing_stimulus: Literal["error", "skip"] = "error",
    exclude: Iterable[str] | None = None,
) -> list[RunSpec]:
    """List the functional runs of a BIDS dataset with stimulus, onset and TR.

    Parameters
    ----------
    root : str or Path
        BIDS dataset root.
    subjects, tasks, runs : iterable of str, optional
        Keep only these labels (with or without the ``sub-``/``task-``/``run-`` prefix). A
        ``runs`` filter drops runs whose file names have no ``run-`` entity.
    mapping : path or sequence of RunSpec, optional
        Mapping table (see :func:`read_mapping_table`) or its parsed rows. When given, it is
        the list of runs, and events files are not read.
    trial_type : str
        ``trial_type`` of the events row that marks the stimulus (``"story"`` in Narratives).
    on_missing_stimulus : {"error", "skip"}
        What to do with a run whose stimulus cannot be found: raise (default), or skip it with
        a warning (a dataset mirror that lacks some WAVs).
    exclude : iterable of str, optional
        Shell patterns (:mod:`fnmatch`) of BOLD file names to leave out, e.g. the scans a
        dataset's authors exclude (Narratives lists them in ``code/scan_exclude.json``).

    Returns
    -------
    list of RunSpec
        Sorted by subject, session, task, run.

    Raises
    ------
    FileNotFoundError
        No such root; a run's stimulus or image missing (the file is named).
    ValueError
        Missing TR, unreadable WAV, ambiguous or malformed events (the file is named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS root not found: {root}")
    if on_missing_stimulus not in ("error", "skip"):
        raise ValueError(
            f"on_missing_stimulus must be 'error' or 'skip', got {on_missing_stimulus!r}"
        )
    keep = _Filter(subjects, tasks, runs)
    excluded = tuple(exclude or ())
    if mapping is not None:
        if isinstance(mapping, (str, Path)):
            mapping = read_mapping_table(mapping, root)
        chosen = (s for s in mapping if keep(s.subject, s.task, s.run))
        return sorted((s for s in chosen if not _matches(s.bold_path, excluded)), key=_sort_key)
    found = []
    for bold_path in _bold_files(root):
        entities, _ = parse_entities(bold_path.name)
        if "sub" not in entities or "task" not in entities:
            continue
        if not keep(entities["sub"], entities["task"], entities.get("run")):
            continue
        if _matches(bold_path, excluded):
            continue
        try:
            found.append(_run_from_events(root, bold_path, entities, trial_type))
        except _MissingStimulusError as err:
            if on_missing_stimulus == "error":
                raise FileNotFoundError(str(err)) from None
            warnings.warn(f"skipping run: {err}", stacklevel=2)
    return sorted(found, key=_sort_key)


def read_mapping_table(path: str | Path, root: str | Path | None = None) -> list[RunSpec]:
    """Read a CSV/TSV that maps runs to stimuli for datasets without events.

    Columns: ``subject, task, run, bold, stimulus, onset`` (required; ``run`` may be empty or
    ``n/a``) and ``session, tr, duration, space, alignment, confounds, word_tier, phone_tier``
    (optional; the two tier columns name the TextGrid tiers of the alignment). ``bold``,
    ``stimulus``, ``alignment`` and ``confounds`` are paths relative to ``root`` (default: the
    table's folder) or absolute; ``stimulus`` may also be relative to ``<root>/stimuli``.
    ``confounds`` is a TSV/CSV with one row per volume of the scan (before trimming) and named
    columns; without it, an fMRIPrep table beside the BOLD file is used
    (:func:`find_confounds`). ``onset`` and ``duration`` are in
    seconds, ``tr`` in seconds; without ``tr`` the run's ``*_bold.json`` sidecars give it (images
    only). Without ``duration`` the WAV's length is used for images, and no coverage is checked for
    preprocessed arrays (their authors crop them to the span they model).

    Raises
    ------
    FileNotFoundError
        Table, BOLD, stimulus, alignment or confounds file missing (the row is named).
    ValueError
        Missing columns, non-numeric onset/tr/duration, no TR found (the row is named).
    """
    import pandas as pd

    path = Path(path)
    require_file(path)
    root = Path(root) if root is not None else path.parent
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    missing = [c for c in MAPPING_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"mapping table {path} lacks column(s) {missing}; expected {list(MAPPING_COLUMNS)} "
            f"(found {list(table.columns)})"
        )
    specs = []
    for index, row in table.iterrows():
        where = f"mapping table {path}, row {index + 2}"
        bold = _resolve(root, row["bold"])
        _require(bold, where)
        stimulus = _find_stimulus(root, row["stimulus"])
        if stimulus is None:
            raise FileNotFoundError(f"{where}: stimulus {row['stimulus']!r} not found under {root}")
        tr = _number(row.get("tr", ""), "tr", where)
        if tr is None:
            if bold.name.lower().endswith(ARRAY_SUFFIXES):
                raise ValueError(f"{where}: a preprocessed array needs a 'tr' column (seconds)")
            tr = _sidecar_tr(bold, root)
        wav_duration = _wav_duration(stimulus)
        duration = _number(row.get("duration", ""), "duration", where)
        if duration is None and not bold.name.lower().endswith(ARRAY_SUFFIXES):
            duration = wav_duration
        onset = _number(row["onset"], "onset", where)
        if onset is None:
            raise ValueError(f"{where}: 'onset' is empty; expected seconds from the first volume")
        alignment = _label(row.get("alignment", ""))
        alignment_path = _resolve(root, alignment) if alignment else find_alignment(root, stimulus)
        if alignment:
            _require(alignment_path, where)
        confounds = _label(row.get("confounds", ""))
        confounds_path = _resolve(root, confounds) if confounds else find_confounds(bold)
        if confounds:
            _require(confounds_path, where)
        specs.append(
            RunSpec(
                subject=_strip(row["subject"], "sub"),
                task=_strip(row["task"], "task"),
                run=_optional(_strip(row["run"], "run")),
                session=_optional(_strip(row.get("session", ""), "ses")),
                bold_path=bold,
                stimulus_path=stimulus,
                stimulus_id=stimulus_id(stimulus),
                onset=onset,
                tr=tr,
                duration=duration,
                space=_label(row.get("space", "")) or _space(bold),
                alignment_path=alignment_path,
                confounds_path=confounds_path,
                word_tier=_optional(row.get("word_tier", "")),
                phone_tier=_optional(row.get("phone_tier", "")),
            )
        )
    return specs


def stimulus_id(stimulus_path: Path) -> str:
    """The stimulus name: the file stem without a trailing ``_audio`` (Narratives style)."""
    stem = stimulus_path.name.split(".", 1)[0]
    return stem[: -len("_audio")] if stem.endswith("_audio") else stem


def find_alignment(root: Path, stimulus_path: Path) -> Path | None:
    """Look for a stimulus's word/phoneme alignment in the usual places, by stimulus id.

    Order: ``stimuli/gentle/<id>/align.json`` (Narratives, full dataset; also what
    :mod:`wav2brain.simulation` writes), ``stimuli/<id>_align.json``, ``stimuli/<id>.json``,
    ``derivative[s]/TextGrids/<id>.TextGrid`` (LeBel), ``stimuli/<id>.TextGrid``. The task name is
    not used: one task may play several stimuli (milkyway), each with its own alignment.
    """
    sid = stimulus_id(stimulus_path)
    candidates = [
        root / "stimuli" / "gentle" / sid / "align.json",
        root / "stimuli" / f"{sid}_align.json",
        root / "stimuli" / f"{sid}.json",
        root / "derivative" / "TextGrids" / f"{sid}.TextGrid",
        root / "derivatives" / "TextGrids" / f"{sid}.TextGrid",
        root / "stimuli" / f"{sid}.TextGrid",
    ]
    return next((c for c in candidates if c.is_file()), None)


class _MissingStimulusError(Exception):
    """A run without a usable stimulus (error or skip, as the caller chose)."""


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch(path.name, pattern) for pattern in patterns)


class _Filter:
    """Subject/task/run label filter tolerant of BIDS prefixes."""

    def __init__(
        self,
        subjects: Iterable[str] | None,
        tasks: Iterable[str] | None,
        runs: Iterable[str] | None,
    ) -> None:
        self.subjects = _label_set(subjects, "sub")
        self.tasks = _label_set(tasks, "task")
        self.runs = _label_set(runs, "run")

    def __call__(self, subject: str, task: str, run: str | None) -> bool:
        return (
            (self.subjects is None or subject in self.subjects)
            and (self.tasks is None or task in self.tasks)
            and (self.runs is None or (run is not None and run in self.runs))
        )


def _label_set(values: Iterable[str] | str | None, prefix: str) -> set[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return {_strip(str(v), prefix) for v in values}


def _strip(value: str, prefix: str) -> str:
    value = str(value).strip()
    return value[len(prefix) + 1 :] if value.startswith(f"{prefix}-") else value


def _optional(value: str) -> str | None:
    return None if value.strip().lower() in ("", "n/a", "nan", "none") else value.strip()


def _label(value) -> str:
    return _optional(str(value)) or ""


def _number(value, field: str, where: str) -> float | None:
    text = _label(value)
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where}: {field} {text!r} is not a number of seconds") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {field} {text!r} is not finite")
    return number


def _resolve(root: Path, value: str) -> Path:
    path = Path(str(value).strip())
    return path if path.is_absolute() else root / path


def _require(path: Path, where: str) -> None:
    try:
        require_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: {err}") from None


def _find_stimulus(root: Path, name: str) -> Path | None:
    """Resolve a stimulus name against ``<root>/stimuli`` (BIDS), the root, or an absolute path."""
    name = str(name).strip()
    if not name:
        return None
    path = Path(name)
    candidates = [path] if path.is_absolute() else [root / "stimuli" / path, root / path]
    for candidate in candidates:
        if candidate.is_symlink() and not candidate.exists():
            require_file(candidate)
        if candidate.is_file():
            return candidate
    return None


def _wav_duration(path: Path) -> float:
    from wav2brain.data.audio import audio_info

    return audio_info(path)[2]


def _sidecar_tr(bold_path: Path, root: Path) -> float:
    sidecar = read_sidecar(bold_path, root)
    tr = sidecar.get("RepetitionTime")
    if tr is None:
        raise ValueError(
            f"no RepetitionTime for {bold_path}: none of its *_bold.json sidecars (run or task "
            f"level, under {root}) gives one; add it, or a 'tr' column to a mapping table"
        )
    try:
        tr = float(tr)
    except (TypeError, ValueError):
        raise ValueError(f"RepetitionTime {tr!r} for {bold_path} is not a number") from None
    if not tr > 0:
        raise ValueError(f"RepetitionTime {tr} for {bold_path} must be > 0 seconds")
    return tr


def _space(bold_path: Path) -> str:
    return parse_entities(bold_path.name)[0].get("space", "native")


def _folders_down_to(root: Path, folder: Path) -> list[Path]:
    rel = folder.relative_to(root)
    folders = [root]
    for part in rel.parts:
        folders.append(folders[-1] / part)
    return folders


def _bold_files(root: Path) -> list[Path]:
    """Functional images under ``sub-*/[ses-*/]func``, one per run (left hemisphere for GIfTI)."""
    files = []
    for pattern in ("sub-*/func/*", "sub-*/ses-*/func/*"):
        for path in root.glob(pattern):
            name = path.name
            if is_junk(path.relative_to(root)) or not name.endswith(BOLD_SUFFIXES):
                continue
            if name.endswith(".func.gii") and "hemi-R" in name.split("_"):
                continue
            files.append(path)
    return sorted(files)


def _run_from_events(root: Path, bold_path: Path, entities: dict, trial_type: str) -> RunSpec:
    require_file(bold_path)
    events_path = find_events(bold_path, root)
    if events_path is None:
        raise _MissingStimulusError(
            f"no stimulus for {bold_path}: no *_events.tsv applies to it; "
            "give a mapping table (subject, task, run, bold, stimulus, onset)"
        )
    try:
        event = _stimulus_event(events_path, trial_type)
    except _MissingStimulusError as err:
        raise _MissingStimulusError(f"no stimulus for {bold_path}: {err}") from None
    stimulus = _find_stimulus(root, event.stim_file)
    if stimulus is None:
        raise _MissingStimulusError(
            f"no stimulus for {bold_path}: stim_file {event.stim_file!r} of {events_path} "
            f"not found in {root / 'stimuli'}"
        )
    tr = _sidecar_tr(bold_path, root)
    wav_duration = _wav_duration(stimulus)
    story_end = None
    if event.story_duration is not None:
        story_end = event.story_offset + event.story_duration
        if wav_duration < story_end - tr:
            warnings.warn(
                f"{events_path}: the story ends {story_end:.2f} s after the first row naming "
                f"{stimulus.name}, but the WAV lasts {wav_duration:.2f} s; if it holds the story "
                "only, give a mapping table with the story row's onset",
                stacklevel=3,
            )
    return RunSpec(
        subject=entities["sub"],
        task=entities["task"],
        run=entities.get("run"),
        session=entities.get("ses"),
        bold_path=bold_path,
        stimulus_path=stimulus,
        stimulus_id=stimulus_id(stimulus),
        onset=event.wav_onset,
        tr=tr,
        duration=wav_duration if story_end is None else story_end,
        space=_space(bold_path),
        alignment_path=find_alignment(root, stimulus),
        story_offset=event.story_offset,
        confounds_path=find_confounds(bold_path),
    )


class _StimulusEvent(NamedTuple):
    """Where a run's stimulus plays: WAV start and story start/duration, in seconds."""

    stim_file: str
    wav_onset: float
    story_offset: float
    story_duration: float | None


def _stimulus_event(events_path: Path, trial_type: str) -> _StimulusEvent:
    """The stimulus of an events file: its ``trial_type`` row picks the WAV, its first row starts it."""
    import pandas as pd

    try:
        events = pd.read_csv(events_path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse events file {events_path}: {err}") from err
    if "onset" not in events.columns:
        raise ValueError(f"events file {events_path} has no 'onset' column: {list(events.columns)}")
    if "stim_file" not in events.columns:
        raise _MissingStimulusError(f"{events_path} has no 'stim_file' column")
    named = events[events["stim_file"].map(_label) != ""]
    rows = named
    if "trial_type" in events.columns and (named["trial_type"] == trial_type).any():
        rows = named[named["trial_type"] == trial_type]
    if rows.empty:
        raise _MissingStimulusError(f"no row of {events_path} names a stim_file")
    if len(rows) > 1:
        raise ValueError(
            f"events file {events_path} has {len(rows)} stimulus rows "
            f"{sorted(set(rows['stim_file']))} with trial_type {trial_type!r}; expected one per run"
        )
    where = f"events file {events_path}"
    story = rows.iloc[0]
    stim_file = _label(story["stim_file"])
    story_onset = _number(story["onset"], "onset", where)
    if story_onset is None:
        raise ValueError(f"{where}: the stimulus row has no onset")
    same_wav = named[named["stim_file"].map(_label) == stim_file]
    onsets = [_number(v, "onset", where) for v in same_wav["onset"]]
    wav_onset = min(v for v in onsets if v is not None)
    duration = _number(story["duration"], "duration", where) if "duration" in rows.columns else None
    return _StimulusEvent(stim_file, wav_onset, story_onset - wav_onset, duration)


def _sort_key(spec: RunSpec) -> tuple:
    return (spec.subject, spec.session or "", spec.task, spec.run or "", str(spec.bold_path))
