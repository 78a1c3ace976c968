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

Checks made at discovery, before anything is read beyond headers and sidecars:

* the TR of every source (mapping-table row, most specific sidecar giving ``RepetitionTime``) is
  recorded in :attr:`RunSpec.tr_sources` and checked by :func:`wav2brain.data.timing.check_tr`
  (0.2-20 s, sources within 1 %); with no source the TR is NaN until the image header gives it;
* labels compare as BIDS labels (``run-7`` is ``run-07``); several files for one run are refused,
  echoes of a multi-echo run named as such (:func:`check_unique_runs`);
* runs of one stimulus must agree about where the story starts in its WAV
  (:func:`check_story_positions`);
* exclusion lists (:mod:`wav2brain.data.exclusions`) are applied;
* a stimulus without a word/phoneme alignment (:func:`find_alignment`) is warned about once.

Every error names the file and, for mapping tables, the table and the row.

pybids (``BIDSLayout(validate=False)``) is not the engine: on the full Narratives metadata its
events lookup takes minutes and on LeBel it gives story runs another task's events
(``benchmarks/bench_discovery.py``); the tests use it as the oracle for entities and inherited
metadata instead.

Junk (``._*`` AppleDouble files, ``.DS_Store``, hidden folders) is never read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

BOLD_SUFFIXES = ("_bold.nii.gz", "_bold.nii", "_bold.func.gii")
"""File endings of functional images found by discovery."""

ARRAY_SUFFIXES = (".hf5", ".h5", ".hdf5", ".npy")
"""File endings of already-preprocessed response arrays [TRs, voxels] (mapping tables only)."""

MAPPING_COLUMNS = ("subject", "task", "run", "bold", "stimulus", "onset")
"""Required columns of a mapping table; optional: :data:`MAPPING_OPTIONAL_COLUMNS`."""

MAPPING_OPTIONAL_COLUMNS = (
    "session",
    "tr",
    "duration",
    "space",
    "alignment",
    "confounds",
    "echo",
    "acquisition",
    "repeat",
    "word_tier",
    "phone_tier",
)
"""Optional columns of a mapping table (:func:`read_mapping_table` says what each holds)."""

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
        Repetition time in seconds, checked across every source that gave one
        (:attr:`tr_sources`, :func:`wav2brain.data.timing.check_tr`). NaN when neither a mapping
        table nor a sidecar gives it and only the image header can tell (derivative BOLD without
        sidecars): the image reader then takes the header TR and checks it against
        ``tr_sources``, which lack the header.
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
        ``echo-`` entity of a multi-echo file (or a mapping table's ``echo`` column), None for
        single-echo data.
    acquisition : str or None
        ``acq-`` entity: two acquisitions of one task and run are two runs (part of :attr:`key`).
    repeat : int or None
        0-based index into the first axis of a preprocessed array stored as
        [repeats, TRs, voxels] (LeBel's held-out story), so each repeat is its own run; None
        reads a 2-D array (or averages the repeats of a 3-D one).
    origin : str or None
        Where the run was described (``"mapping table runs.tsv, row 3 (line 4)"``,
        ``"events file sub-01_task-x_events.tsv"``), for error messages.
    word_tier, phone_tier : str, tuple of str, or None
        Names of the TextGrid tiers holding the words and the phonemes of the alignment
        (mapping-table columns ``word_tier``/``phone_tier``; several names: the grid's one tier
        with any of them); None: found by name
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
    acquisition: str | None = None
    repeat: int | None = None
    origin: str | None = None
    word_tier: str | tuple[str, ...] | None = None
    phone_tier: str | tuple[str, ...] | None = None

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
        if self.acquisition is not None:
            parts.append(f"acq-{self.acquisition}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    @property
    def described(self) -> str:
        """The BOLD file and, when known, the table row or events file that described the run."""
        return f"{self.bold_path} ({self.origin})" if self.origin else str(self.bold_path)


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
    merged: dict = {}
    for _, content in sidecar_chain(bold_path, root):
        merged.update(content)
    return merged


def sidecar_chain(bold_path: Path, root: Path) -> list[tuple[Path, dict]]:
    """The sidecars that apply to a run with their content, least specific first.

    A BOLD file outside ``root`` has none. See :func:`read_sidecar` for the rule.
    """
    root, bold_path = Path(root), Path(bold_path)
    try:
        bold_path.parent.relative_to(root)
    except ValueError:
        return []
    entities, _ = parse_entities(bold_path.name)
    found = []
    for depth, folder in enumerate(_folders_down_to(root, bold_path.parent)):
        for candidate in sorted(folder.glob("*_bold.json")):
            if is_junk(candidate.relative_to(root)):
                continue
            cand_entities, suffix = parse_entities(candidate.name)
            if suffix != "bold":
                continue
            if all(same_label(k, entities.get(k), v) for k, v in cand_entities.items()):
                found.append((depth, len(cand_entities), candidate))
    chain = []
    for _, _, candidate in sorted(found):
        try:
            chain.append((candidate, json.loads(candidate.read_text())))
        except json.JSONDecodeError as err:
            raise ValueError(f"sidecar {candidate} is not valid JSON: {err}") from err
    return chain


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
            if suffix == "events" and all(
                same_label(k, entities.get(k), v) for k, v in cand_entities.items()
            ):
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


AlignOn = Literal["first", "story"] | Mapping[str, Literal["first", "story"]] | None
"""``align_on`` of :func:`discover_runs`: one choice for every stimulus, or per stimulus id."""

ALIGN_CHOICES = ("first", "story")


def discover_runs(
    root: str | Path,
    subjects: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    runs: Iterable[str] | None = None,
    mapping: str | Path | Sequence[RunSpec] | None = None,
    trial_type: str = "story",
    on_missing_stimulus: Literal["error", "skip"] = "error",
    exclude: str | Path | Iterable[str] | None = None,
    *,
    sessions: Iterable[str] | None = None,
    echo: str | int | None = None,
    align_on: AlignOn = None,
) -> list[RunSpec]:
    """List the functional runs of a BIDS dataset with stimulus, onset and TR.

    Parameters
    ----------
    root : str or Path
        BIDS dataset root.
    subjects, sessions, tasks, runs : iterable of str, optional
        Keep only these labels (with or without the ``sub-``/``ses-``/``task-``/``run-``
        prefix). Labels compare as BIDS labels: ``run`` (an index) by value, so ``7`` matches
        ``run-07``; a subject or session given as a number matches a zero-padded label when no
        label equals it exactly (``1`` -> ``sub-001``). A value that matches no run of the
        dataset is an error. A ``runs`` filter drops runs whose file names have no ``run-``.
    mapping : path or sequence of RunSpec, optional
        Mapping table (see :func:`read_mapping_table`) or its parsed rows. When given, it is
        the list of runs, and events files are not read.
    trial_type : str
        ``trial_type`` of the events row that marks the stimulus (``"story"`` in Narratives).
    on_missing_stimulus : {"error", "skip"}
        What to do with a run whose stimulus cannot be found: raise (default), or skip it with
        a warning (a dataset mirror that lacks some WAVs).
    exclude : path, or iterable of str, optional
        Runs to leave out: an exclusion file (:func:`wav2brain.data.exclusions.read_exclusions`:
        Narratives' ``code/scan_exclude.json``, or a text file of run keys / file names) or its
        entries. See :func:`wav2brain.data.exclusions.is_excluded` for how an entry matches.
    echo : str or int, optional
        Keep only this echo of multi-echo data (``echo-`` entity or a table's ``echo`` column).
        Without it, several echoes of one run are refused: wav2brain does not combine echoes
        (use tedana or fMRIPrep's optimal combination first, or choose one echo).
    align_on : {"first", "story"} or mapping of stimulus id to it, optional
        What to do when runs of one stimulus disagree about where the story starts in the WAV
        (:func:`check_story_positions`); None refuses them.

    Returns
    -------
    list of RunSpec
        Sorted by subject, session, task, run.

    Raises
    ------
    FileNotFoundError
        No such root; a run's stimulus or image missing (the file is named).
    ValueError
        TR missing, implausible or disagreeing between sources; unreadable WAV; ambiguous or
        malformed events; filter values that match no run; several files for one run (echoes of
        a multi-echo run are named as such); runs of one stimulus that disagree about the story's
        position in the WAV (each error names the files and table rows).
    """
    from wav2brain.data.exclusions import is_excluded, read_exclusions, warn_unmatched

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS root not found: {root}")
    if on_missing_stimulus not in ("error", "skip"):
        raise ValueError(
            f"on_missing_stimulus must be 'error' or 'skip', got {on_missing_stimulus!r}"
        )
    excluded = read_exclusions(exclude)
    if mapping is not None:
        if isinstance(mapping, (str, Path)):
            mapping = read_mapping_table(mapping, root)
        candidates = [_Candidate.of_spec(spec) for spec in mapping]
    else:
        candidates = [_Candidate.of_file(path) for path in _bold_files(root)]
        candidates = [c for c in candidates if "sub" in c.entities and "task" in c.entities]
    keep = _Filter(subjects=subjects, sessions=sessions, tasks=tasks, runs=runs, echo=echo)
    chosen = keep(candidates)
    warn_unmatched(excluded, candidates)
    chosen = [c for c in chosen if not is_excluded(c.entities, c.bold_path, excluded)]
    found = []
    for candidate in chosen:
        if candidate.spec is not None:
            found.append(candidate.spec)
            continue
        try:
            found.append(
                _run_from_events(root, candidate.bold_path, candidate.entities, trial_type)
            )
        except _MissingStimulusError as err:
            if on_missing_stimulus == "error":
                raise FileNotFoundError(str(err)) from None
            warnings.warn(f"skipping run: {err}", stacklevel=2)
    found = sorted(found, key=_sort_key)
    check_unique_runs(found)
    _warn_missing_alignments(found, root)
    return check_story_positions(found, align_on)


def check_unique_runs(runs: Sequence[RunSpec]) -> None:
    """Refuse several files for one run (one :attr:`RunSpec.key`), naming files and rows.

    Run labels compare as BIDS indices (``run-7`` and ``run-07`` are one run). Echoes of a
    multi-echo run are named as such, with how to choose one. One BOLD file named twice for one
    stimulus (and repeat) is refused too: a copied mapping-table row, whatever its labels say.
    """
    groups: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(_run_identity(run), []).append(run)
    for group in groups.values():
        if len(group) < 2:
            continue
        key = group[0].key
        listing = "; ".join(run.described for run in group)
        echoes = sorted({run.echo for run in group if run.echo is not None})
        if len(echoes) > 1:
            raise ValueError(
                f"{key} is a multi-echo run ({len(echoes)} echoes: {echoes}): {listing}. "
                "wav2brain does not combine echoes; choose one with --echo N "
                "(prepare_dataset(echo=N)), list one echo per run in the mapping table (its "
                "'echo' column), or combine them first (tedana, fMRIPrep --me-output-echos)"
            )
        raise ValueError(
            f"several files describe the run {key}: {listing}; expected one file per run "
            "(exclude the others, or tell them apart with acq-/run- entities)"
        )
    images: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        identity = (run.bold_path.resolve(), run.stimulus_id, run.repeat)
        images.setdefault(identity, []).append(run)
    for (bold, stimulus, _), group in images.items():
        if len(group) > 1:
            listing = "; ".join(f"{run.key}: {run.origin or run.bold_path}" for run in group)
            raise ValueError(
                f"one BOLD file {bold} is given {len(group)} times for stimulus {stimulus!r} "
                f"({listing}); expected one row per run (a copied row? a repeated scan stored "
                "as [repeats, TRs, voxels] needs a 'repeat' column)"
            )


def _run_identity(run: RunSpec) -> tuple:
    """What makes a run one run: its labels, the run index compared by value (``7`` = ``07``)."""
    index = run.run
    if index is not None and index.isdigit():
        index = str(int(index))
    return (run.subject, run.session, run.task, run.acquisition, index)


def check_story_positions(runs: Sequence[RunSpec], align_on: AlignOn = None) -> list[RunSpec]:
    """Check that runs of one stimulus agree about where the story starts in its WAV.

    The story's position in a WAV (:attr:`RunSpec.story_offset`: the ``trial_type`` row's onset
    minus the onset of the first row naming the WAV) is a property of the WAV, so every run of
    a stimulus must give the same value, within a tenth of the smallest TR of those runs (0.1 s
    when no TR is known yet). Narratives' prettymouth is the real case: sub-038 has the story at
    15.0 s, sub-105 at 13.5 s, both after music at 0.0 s; both scans are on the authors'
    exclusion list.

    Parameters
    ----------
    runs : sequence of RunSpec
        Discovered runs.
    align_on : {"first", "story"}, or mapping of stimulus id to one, optional
        For a stimulus whose runs disagree: ``"first"`` keeps each run aligned on the first row
        naming the WAV (the default rule; each run keeps its own story position), ``"story"``
        aligns each run on its ``trial_type`` row, the story's position being the one a strict
        majority of the runs agree on (the others are moved with a warning). None (or a stimulus
        missing from the mapping) refuses the disagreement.

    Returns
    -------
    list of RunSpec
        ``runs``, with realigned runs replaced (``"story"``).

    Raises
    ------
    ValueError
        Disagreeing runs without a choice (each run is named with its position), an unknown
        choice, or ``"story"`` without a majority.
    """
    choices = _align_choices(align_on, {run.stimulus_id for run in runs})
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(run.stimulus_id, []).append(run)
    moved: dict[int, RunSpec] = {}
    for sid, group in groups.items():
        trs = [run.tr for run in group if math.isfinite(run.tr)]
        tolerance = 0.1 * min(trs) if trs else 0.1
        offsets = [run.story_offset for run in group]
        if max(offsets) - min(offsets) <= tolerance:
            continue
        listing = "; ".join(f"{run.described}: story at {run.story_offset:g} s" for run in group)
        choice = choices.get(sid)
        if choice is None:
            raise ValueError(
                f"runs of stimulus {sid!r} disagree about where the story starts in "
                f"{group[0].stimulus_path.name} (by more than a tenth of a TR, "
                f"{tolerance:.3g} s; seconds after the first events row naming the WAV): "
                f"{listing}. The story's position is a property of the WAV, so one of them is "
                "misaligned: exclude the wrong run(s) (--exclude FILE, exclude=...), or say "
                f"which row to align on: --align-on {sid}=first (the first row naming the WAV, "
                f"each run as its events say) or --align-on {sid}=story (the story row, at the "
                "position most runs agree on)"
            )
        if choice == "first":
            continue
        agreeing = [
            [other for other in group if abs(other.story_offset - run.story_offset) <= tolerance]
            for run in group
        ]
        majority = max(agreeing, key=len)
        if 2 * len(majority) <= len(group):
            raise ValueError(
                f"--align-on {sid}=story: no position of the story in "
                f"{group[0].stimulus_path.name} is shared by more than half of its runs "
                f"({listing}); exclude the wrong run(s) or align on 'first'"
            )
        position = float(statistics.median(run.story_offset for run in majority))
        for run in group:
            if any(run is other for other in majority):
                continue
            shift = run.story_offset - position
            moved[id(run)] = dataclasses.replace(
                run,
                onset=run.onset + shift,
                story_offset=position,
                duration=None if run.duration is None else run.duration - shift,
            )
            warnings.warn(
                f"{run.described}: aligned on its story row: the WAV {run.stimulus_path.name} "
                f"starts at {run.onset + shift:g} s (its events say {run.onset:g} s), the story "
                f"being {position:g} s into it as in {len(majority)} of {len(group)} runs",
                stacklevel=3,
            )
    return [moved.get(id(run), run) for run in runs]


def _align_choices(align_on: AlignOn, stimuli: set[str]) -> dict[str, str]:
    """``align_on`` as ``{stimulus id: choice}``, every value checked."""
    if align_on is None:
        return {}
    if isinstance(align_on, str):
        choices = dict.fromkeys(stimuli, align_on)
    else:
        choices = dict(align_on)
        unknown = sorted(set(choices) - stimuli)
        if unknown:
            raise ValueError(
                f"align_on names stimuli {unknown} that no run plays; stimuli: {sorted(stimuli)}"
            )
    for sid, choice in choices.items():
        if choice not in ALIGN_CHOICES:
            raise ValueError(
                f"align_on for stimulus {sid!r} is {choice!r}; expected one of {ALIGN_CHOICES}"
            )
    return choices


DURATION_TOLERANCE_S = 0.01
"""How far (s) a mapping table's ``duration`` may exceed its WAV's length (rounding of a typed
value); more is a mistake (a duration in ms, or the scan's length instead of the stimulus's)."""


def read_mapping_table(path: str | Path, root: str | Path | None = None) -> list[RunSpec]:
    """Read a CSV/TSV that maps runs to stimuli for datasets without events.

    One row per run. Columns (the README's "Mapping tables" section says the same):

    * required: ``subject, task, run, bold, stimulus, onset`` (``run`` may be empty or ``n/a``);
    * optional: ``session, tr, duration, space, alignment, confounds, echo, acquisition, repeat,
      word_tier, phone_tier`` (the two tier columns name the TextGrid tiers of the alignment).

    ``bold``, ``stimulus``, ``alignment`` and ``confounds`` are paths relative to ``root``
    (default: the table's folder) or absolute; ``stimulus`` may also be relative to
    ``<root>/stimuli``. ``onset`` is the time in seconds from the first stored volume (row 0 of
    the image or array) to the WAV's first sample, negative when the responses start after the
    sound (LeBel's trimmed arrays). ``duration`` (s) is how much of the WAV, from its first
    sample, the run must cover; without it the WAV's length is used for images, and no coverage
    is checked for preprocessed arrays (their authors crop them to the span they model). ``tr``
    is in seconds; it is checked (:func:`wav2brain.data.timing.check_tr`) against the run's
    ``*_bold.json`` sidecars when the image lies under ``root``; an array needs it.
    ``confounds`` is a TSV/CSV with one row per volume of the scan (before trimming) and named
    columns; without it, an fMRIPrep table beside the BOLD file is used (:func:`find_confounds`).
    ``alignment`` names the stimulus's word/phoneme alignment; without it one is searched
    (:func:`find_alignment`). ``echo`` and ``acquisition`` are BIDS labels (default: the file
    name's ``echo-``/``acq-``); ``repeat`` is the 0-based index into the first axis of an array
    stored as [repeats, TRs, voxels]. Every error names the table and the row (row 1 is the
    first line after the header).

    Raises
    ------
    FileNotFoundError
        Table, BOLD, stimulus, alignment or confounds file missing (the row is named).
    ValueError
        Missing columns, a column that looks like a misspelt known one (``duraton``), non-numeric
        onset/tr/duration/repeat, a duration outside the WAV's length, no TR, a TR outside
        0.2-20 s or disagreeing with the sidecar by more than 1 % (the row and every source are
        named).
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
    unknown = [c for c in table.columns if c not in MAPPING_COLUMNS + MAPPING_OPTIONAL_COLUMNS]
    _refuse_misspelt_columns(path, unknown, list(table.columns))
    if unknown:
        warnings.warn(
            f"mapping table {path}: column(s) {unknown} are not read (a misspelling?); known "
            f"columns: {list(MAPPING_COLUMNS + MAPPING_OPTIONAL_COLUMNS)}",
            stacklevel=2,
        )
    specs = []
    for index, row in table.iterrows():
        number = int(index) + 1
        where = f"mapping table {path}, row {number} (line {number + 1})"
        try:
            specs.append(_spec_from_row(row, number, path, root, where))
        except (ValueError, FileNotFoundError) as err:
            if where in str(err):
                raise
            kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
            raise kind(f"{where}: {err}") from None
    return specs


def _refuse_misspelt_columns(path: Path, unknown: Sequence[str], present: Sequence[str]) -> None:
    """Refuse a column that is probably a known one misspelt (``duraton``, ``TR``, ``sesion``).

    A column is taken as misspelt when it is, ignoring case and surrounding spaces, within a
    ``difflib`` similarity of 0.8 of a known column that the table lacks; reading on without it
    would silently drop the user's values (a ``duraton`` column leaves coverage unchecked).
    Columns like nothing known (``notes``) are only warned about by the caller: tables often
    carry bookkeeping columns.
    """
    import difflib

    absent = [c for c in MAPPING_COLUMNS + MAPPING_OPTIONAL_COLUMNS if c not in present]
    guesses = {}
    for column in unknown:
        close = difflib.get_close_matches(str(column).strip().lower(), absent, n=1, cutoff=0.8)
        if close:
            guesses[column] = close[0]
    if guesses:
        shown = ", ".join(f"{column!r} (expected {known!r})" for column, known in guesses.items())
        raise ValueError(
            f"mapping table {path}: column(s) {shown} look like misspelt known columns; rename "
            f"them (known columns: {list(MAPPING_COLUMNS + MAPPING_OPTIONAL_COLUMNS)})"
        )


def _spec_from_row(row, number: int, path: Path, root: Path, where: str) -> RunSpec:
    """One mapping-table row as a RunSpec (``where`` names the table and row in errors)."""
    bold = _resolve(root, row["bold"])
    _require(bold, where)
    is_array = bold.name.lower().endswith(ARRAY_SUFFIXES)
    stimulus = _find_stimulus(root, row["stimulus"])
    if stimulus is None:
        raise FileNotFoundError(f"{where}: stimulus {row['stimulus']!r} not found under {root}")
    entities, _ = parse_entities(bold.name)
    table_tr = _number(row.get("tr", ""), "tr", where)
    if is_array and table_tr is None:
        raise ValueError(f"{where}: a preprocessed array needs a 'tr' column (seconds)")
    chain = [] if is_array else sidecar_chain(bold, root)
    sources = {f"mapping table {path.name} row {number}": table_tr}
    sources.update(_sidecar_tr_source(chain))
    tr, tr_sources = _checked_tr(sources, f"{where} ({bold.name})")
    wav_duration = _wav_duration(stimulus)
    duration = _number(row.get("duration", ""), "duration", where)
    if duration is not None and not 0 < duration <= wav_duration + DURATION_TOLERANCE_S:
        raise ValueError(
            f"{where}: duration {duration} s is not within the WAV {stimulus} "
            f"({wav_duration:.3f} s long); expected the seconds of the WAV, from its first "
            "sample, that the run must cover"
        )
    if duration is None and not is_array:
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
    reference, reference_source = _slice_time(chain, tr, where)
    return RunSpec(
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
        tr_sources=tr_sources,
        slice_time_reference=reference,
        slice_time_source=reference_source,
        echo=_optional(_strip(row.get("echo", ""), "echo")) or entities.get("echo"),
        acquisition=(_optional(_strip(row.get("acquisition", ""), "acq")) or entities.get("acq")),
        repeat=_repeat(row.get("repeat", ""), where),
        origin=where,
        word_tier=_optional(row.get("word_tier", "")),
        phone_tier=_optional(row.get("phone_tier", "")),
    )


def _repeat(value, where: str) -> int | None:
    """The ``repeat`` column: a 0-based index, or None when empty."""
    text = _label(value)
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{where}: repeat {text!r} is not a 0-based index (0, 1, 2...)")
    return int(text)


def _sidecar_tr_source(chain: Sequence[tuple[Path, dict]]) -> dict[str, float | None]:
    """``{"sidecar <file>": RepetitionTime}`` of the most specific sidecar that gives one."""
    for candidate, content in reversed(chain):
        if "RepetitionTime" in content:
            value = content["RepetitionTime"]
            try:
                return {f"sidecar {candidate.name}": float(value)}
            except (TypeError, ValueError):
                raise ValueError(
                    f"sidecar {candidate}: RepetitionTime {value!r} is not a number of seconds"
                ) from None
    return {}


def _checked_tr(
    sources: dict[str, float | None], where: str
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """The TR agreed by every source (NaN when none gives one) and the sources that gave it."""
    from wav2brain.data.timing import check_tr

    given = tuple((name, float(value)) for name, value in sources.items() if value is not None)
    if not given:
        return math.nan, ()
    return check_tr(dict(given), where), given


def _slice_time(chain: Sequence[tuple[Path, dict]], tr: float, where: str) -> tuple[float, str]:
    """The run's slice-time reference from its inherited sidecar (:mod:`wav2brain.data.timing`).

    With the TR still unknown (NaN: header only) the range check waits for the header: any
    ``StartTime`` >= 0 is accepted here.
    """
    from wav2brain.data.timing import slice_time_reference

    merged: dict = {}
    for _, content in chain:
        merged.update(content)
    try:
        return slice_time_reference(merged, tr if math.isfinite(tr) else math.inf)
    except ValueError as err:
        names = ", ".join(str(c) for c, _ in chain)
        raise ValueError(f"{where}: {err} (sidecars: {names})") from None


def stimulus_id(stimulus_path: Path) -> str:
    """The stimulus name: the file stem without a trailing ``_audio`` (Narratives style)."""
    stem = stimulus_path.name.split(".", 1)[0]
    return stem[: -len("_audio")] if stem.endswith("_audio") else stem


ALIGNMENT_PLACES = (
    ("stimuli/gentle", "<id>/align.json"),
    ("stimuli", "<id>_align.json"),
    ("stimuli", "<id>.json"),
    ("derivative/TextGrids", "<id>.TextGrid"),
    ("derivatives/TextGrids", "<id>.TextGrid"),
    ("stimuli", "<id>.TextGrid"),
    ("stimuli/TextGrids", "<id>.TextGrid"),
    ("stimuli/alignments", "<id>.TextGrid"),
)
"""Where :func:`find_alignment` looks, in order: (folder under the root, file pattern)."""
BESIDE_STIMULUS = ("<id>_align.json", "<id>/align.json", "<id>.TextGrid")
"""Patterns :func:`find_alignment` tries next to the stimulus file itself, after the places."""


def find_alignment(root: Path, stimulus_path: Path) -> Path | None:
    """Look for a stimulus's word/phoneme alignment in the usual places.

    Places (:data:`ALIGNMENT_PLACES`, first hit wins): ``stimuli/gentle/<id>/align.json``
    (Narratives, full dataset; also what :mod:`wav2brain.simulation` writes),
    ``stimuli/<id>_align.json``, ``stimuli/<id>.json``, ``derivative[s]/TextGrids/<id>.TextGrid``
    (LeBel), ``stimuli/[TextGrids/|alignments/]<id>.TextGrid``, then beside the stimulus file
    (:data:`BESIDE_STIMULUS`: ``stimuli/audio/x.wav`` finds ``stimuli/audio/x_align.json``).
    ``<id>`` is the stimulus file's
    own stem or its id (without ``_audio``), in any of its common spellings: case, ``-`` and
    ``_`` are ignored, so ``book_section-1.wav`` finds ``book_section1.TextGrid``,
    ``book_section_1.TextGrid`` or ``Book-Section-1.TextGrid``. An exact name wins over a
    respelled one. The task name is not used: one task may play several stimuli (milkyway),
    each with its own alignment.

    Raises
    ------
    ValueError
        Two different files in one place that both respell the stimulus's name.
    """
    root, stimulus_path = Path(root), Path(stimulus_path)
    names = {stimulus_path.name.split(".", 1)[0], stimulus_id(stimulus_path)}
    wanted = {_spelling(name) for name in names}
    places = [(root / folder, pattern) for folder, pattern in ALIGNMENT_PLACES]
    places += [(stimulus_path.parent, pattern) for pattern in BESIDE_STIMULUS]
    for base, pattern in places:
        if not base.is_dir():
            continue
        exact = [base / pattern.replace("<id>", name) for name in sorted(names)]
        hit = next((path for path in exact if path.is_file()), None)
        if hit is not None:
            return hit
        head, _, tail = pattern.partition("<id>")
        respelled = sorted(
            path
            for path in base.glob(pattern.replace("<id>", "*"))
            if path.is_file()
            and not is_junk(path.relative_to(base))
            and _spelling(_id_part(path.relative_to(base).as_posix(), head, tail)) in wanted
        )
        if len(respelled) > 1:
            raise ValueError(
                f"alignment of {stimulus_path.name} is ambiguous: {[str(p) for p in respelled]} "
                "all respell its name; name one in the mapping table's 'alignment' column"
            )
        if respelled:
            return respelled[0]
    return None


def alignment_search_text(root: Path, stimulus_path: Path) -> str:
    """Where :func:`find_alignment` looked for a stimulus, for a warning."""
    sid = stimulus_id(Path(stimulus_path))
    places = ", ".join(
        f"{folder}/{pattern.replace('<id>', sid)}" for folder, pattern in ALIGNMENT_PLACES
    )
    beside = ", ".join(pattern.replace("<id>", sid) for pattern in BESIDE_STIMULUS)
    return (
        f"{places} under {root}, and {beside} beside {Path(stimulus_path).name} "
        f"(any spelling of {sid!r})"
    )


def _spelling(name: str) -> str:
    """A name with case, ``-`` and ``_`` ignored (``Book_Section-1`` -> ``booksection1``)."""
    return re.sub(r"[-_]", "", name).lower()


def _id_part(relative: str, head: str, tail: str) -> str:
    """The ``<id>`` part of a path matched by ``head + * + tail``."""
    return relative[len(head) : len(relative) - len(tail)]


def _warn_missing_alignments(runs: Sequence[RunSpec], root: Path) -> None:
    """One warning per stimulus without an alignment, naming where it was searched."""
    seen = set()
    for run in runs:
        if run.alignment_path is None and run.stimulus_id not in seen:
            seen.add(run.stimulus_id)
            warnings.warn(
                f"stimulus {run.stimulus_id!r} ({run.stimulus_path}) has no word/phoneme "
                f"alignment: none found in {alignment_search_text(root, run.stimulus_path)}; "
                "name one in a mapping table's 'alignment' column. Its words and phonemes will "
                "be empty",
                stacklevel=3,
            )


class _Candidate(NamedTuple):
    """A run before its events are read: entities, BOLD file and (mapping tables) its RunSpec."""

    entities: dict[str, str]
    bold_path: Path
    spec: RunSpec | None

    @classmethod
    def of_file(cls, path: Path) -> _Candidate:
        return cls(parse_entities(path.name)[0], path, None)

    @classmethod
    def of_spec(cls, spec: RunSpec) -> _Candidate:
        labels = {
            "sub": spec.subject,
            "ses": spec.session,
            "task": spec.task,
            "acq": spec.acquisition,
            "run": spec.run,
            "echo": spec.echo,
        }
        return cls({k: v for k, v in labels.items() if v is not None}, spec.bold_path, spec)


class _MissingStimulusError(Exception):
    """A run without a usable stimulus (error or skip, as the caller chose)."""


INDEX_ENTITIES = ("run", "echo")
"""BIDS entities whose labels are indices: ``run-7`` and ``run-07`` are the same run."""


def same_label(entity: str, label: str | None, wanted: str) -> bool:
    """Whether a file's label of ``entity`` equals ``wanted`` as BIDS labels (indices by value)."""
    if label is None:
        return False
    if label == wanted:
        return True
    return (
        entity in INDEX_ENTITIES
        and label.isdigit()
        and wanted.isdigit()
        and int(label) == int(wanted)
    )


class _Filter:
    """Subject/session/task/run/echo label filter tolerant of BIDS prefixes and zero padding.

    The echo filter keeps single-echo runs (no ``echo-`` entity): it chooses among echoes.
    """

    _FIELDS = (
        ("sub", "subjects"),
        ("ses", "sessions"),
        ("task", "tasks"),
        ("run", "runs"),
        ("echo", "echo"),
    )

    def __init__(self, **wanted) -> None:
        prefixes = {option: entity for entity, option in self._FIELDS}
        self.wanted = {
            prefixes[option]: _label_set(values, prefixes[option])
            for option, values in wanted.items()
            if values is not None
        }

    def __call__(self, candidates: Sequence[_Candidate]) -> list[_Candidate]:
        """The candidates whose labels match; a wanted value that matches none is an error."""
        accepted: dict[str, set[str]] = {}
        for entity, wanted in self.wanted.items():
            labels = {c.entities[entity] for c in candidates if entity in c.entities}
            accepted[entity] = set()
            unmatched = []
            for value in sorted(wanted):
                hits = {label for label in labels if same_label(entity, label, value)}
                if not hits and entity in ("sub", "ses") and value.isdigit():
                    hits = {
                        label for label in labels if label.isdigit() and int(label) == int(value)
                    }
                if len(hits) > 1 and entity in ("sub", "ses"):
                    raise ValueError(
                        f"{entity}-{value} matches several labels {sorted(hits)}; give the label "
                        "exactly as the file names spell it"
                    )
                accepted[entity] |= hits
                if not hits:
                    unmatched.append(value)
            if unmatched and candidates:
                option = dict(self._FIELDS)[entity]
                raise ValueError(
                    f"{option} {unmatched} match no run; labels found: {sorted(labels) or 'none'}"
                )
        return [
            c
            for c in candidates
            if all(
                c.entities.get(entity) in labels or (entity == "echo" and "echo" not in c.entities)
                for entity, labels in accepted.items()
            )
        ]


def _label_set(values: Iterable[str] | str | None, prefix: str) -> set[str] | None:
    if values is None:
        return None
    if isinstance(values, (str, int)):
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
    chain = sidecar_chain(bold_path, root)
    tr, tr_sources = _checked_tr(_sidecar_tr_source(chain), str(bold_path))
    reference, reference_source = _slice_time(chain, tr, str(bold_path))
    wav_duration = _wav_duration(stimulus)
    story_end = None
    if event.story_duration is not None:
        story_end = event.story_offset + event.story_duration
        if wav_duration < story_end - (tr if math.isfinite(tr) else 0.0):
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
        tr_sources=tr_sources,
        slice_time_reference=reference,
        slice_time_source=reference_source,
        echo=entities.get("echo"),
        acquisition=entities.get("acq"),
        origin=f"events file {events_path}",
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
    """Subject, session, task, acquisition, run (as a number when it is one), echo, file."""
    run = spec.run or ""
    return (
        spec.subject,
        spec.session or "",
        spec.task,
        spec.acquisition or "",
        run.zfill(12) if run.isdigit() else run,
        spec.echo or "",
        str(spec.bold_path),
    )
