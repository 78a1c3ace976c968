"""Turn a BIDS dataset into the Hugging Face folder of :mod:`wav2brain.data.hf_layout`.

Work happens in this order, so that bad input fails before anything expensive and an interrupted
preparation can be finished by running the same call again:

1. Discovery (:func:`wav2brain.data.bids.discover_runs`) and a header-only preflight of every run:
   the files exist, each scan covers onset + stimulus duration, the runs of one subject share a
   grid (images) or a column count (arrays), and, when ``CleaningConfig.confound_columns`` is set,
   every run has a confounds table with one row per volume and the requested columns
   (:func:`check_confounds`). Errors name the files.
2. The output folder is claimed: a new or empty folder gets a manifest (``wav2brain_prepare.json``:
   settings, then one entry per finished shard); a folder with a manifest written with the same
   settings is resumed; anything else is refused.
3. Masks (NIfTI runs): one per voxel grid, the user's mask matched to the grid
   (:func:`wav2brain.data.masks.load_mask`) or one computed from every run on that grid
   (:func:`wav2brain.data.masks.compute_mask`), saved as ``mask.nii.gz`` (``masks/grid-<k>.nii.gz``
   when runs lie on several grids). Columns of ``bold`` are the mask's voxels in C order.
4. One shard per stimulus, then one shard per run, each written to a temporary name and renamed,
   then recorded in the manifest. Only one run's BOLD is in memory at a time. A voxel that is NaN or
   constant in a run is stored as zeros in that run (its index in ``dropped_voxel_indices``), so
   that column ``j`` means the same voxel in every run of a grid.
5. The card (``README.md``) last: a folder with a card is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.atomic import PARTIAL_SUFFIX, write_text_atomic
from wav2brain.data.bids import AlignOn, RunSpec, discover_runs, require_file
from wav2brain.data.confounds import as_strategy, kept_confounds, run_confounds
from wav2brain.data.derivatives import DEFAULT_SPACE, pair_derivatives
from wav2brain.data.fmri import (
    CleaningConfig,
    check_coverage,
    check_overlap,
    gifti_volumes,
    resolve_tr,
)
from wav2brain.data.hf_layout import (
    CARD_NAME,
    MASK_NAME,
    RESPONSES,
    SAMPLING_RATE,
    STIMULI,
    CardText,
    DatasetSummary,
    RunSummary,
    StimulusSummary,
    response_table,
    stimulus_table,
    write_card,
    write_shard,
)
from wav2brain.data.timing import REFERENCE_COLUMN, REFERENCE_USER, check_reference

logger = logging.getLogger(__name__)

MANIFEST_NAME = "wav2brain_prepare.json"
MANIFEST_VERSION = 1


@dataclasses.dataclass
class RunProbe:
    """What the headers say about a run before any data is read.

    Attributes
    ----------
    n_volumes : int
        Volumes (TRs) in the file (GIfTI: counted from its XML).
    grid : str or None
        Key of the voxel grid (shape + affine) of a NIfTI run; None otherwise.
    n_columns : int or None
        Columns of a preprocessed array.
    run : RunSpec or None
        The run with its TR checked against the image header (:func:`wav2brain.data.fmri.resolve_tr`):
        the header's TR where no other source gave one, and the header among its ``tr_sources``.
    """

    n_volumes: int
    grid: str | None
    n_columns: int | None
    run: RunSpec | None = None


def probe_run(run: RunSpec, cleaning: CleaningConfig | None = None) -> RunProbe:
    """Read a run's header only (NIfTI shape/affine, array shape), check its TR and coverage.

    The TR is checked across every source, the image header included
    (:func:`wav2brain.data.fmri.resolve_tr`), before any data is read. The coverage check counts
    the volumes that ``cleaning``'s start and end trims (TRs) keep.

    Raises
    ------
    FileNotFoundError
        BOLD or stimulus file missing.
    ValueError
        Unreadable header, not 4D, TR sources that disagree by more than 1 % or no TR at all,
        or fewer volumes than onset + duration need (without a duration: volumes that barely
        overlap the WAV, :func:`~wav2brain.data.fmri.check_overlap`).
    """
    require_file(Path(run.bold_path))
    require_file(Path(run.stimulus_path))
    run = resolve_tr(run)
    name = run.bold_path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(run.bold_path))
        except Exception as error:  # nibabel raises several types for broken headers
            raise ValueError(f"{run.bold_path}: cannot read the NIfTI header ({error})") from None
        if len(img.shape) != 4:
            raise ValueError(f"{run.bold_path}: expected a 4D BOLD image, got shape {img.shape}")
        affine = np.round(np.asarray(img.affine, dtype=np.float64), 3).tolist()
        probe = RunProbe(img.shape[3], json.dumps([list(img.shape[:3]), affine]), None, run)
    elif run.is_array:
        shape = _array_shape(run.bold_path)
        probe = RunProbe(shape[-2], None, shape[-1], run)
    elif name.endswith(".gii"):
        probe = RunProbe(gifti_volumes(run.bold_path), None, None, run)
    else:
        raise ValueError(
            f"{run.bold_path}: unsupported BOLD file; expected .nii[.gz], .func.gii, .hf5, .npy"
        )
    trims = (cleaning.trim_start_trs, cleaning.trim_end_trs) if cleaning else (0, 0)
    check = check_coverage if run.duration is not None else check_overlap
    check(probe.n_volumes, run, run.described, *trims)
    return probe


def _array_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` or of the ``data`` dataset of an HDF5 file, without reading it."""
    if path.suffix.lower() == ".npy":
        return tuple(np.load(path, mmap_mode="r").shape)
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            key = "data" if "data" in handle else next(iter(handle.keys()), None)
            if key is None:
                raise ValueError(f"{path}: the HDF5 file holds no dataset; expected 'data'")
            return tuple(handle[key].shape)
    except OSError as error:
        raise ValueError(f"{path}: cannot read the HDF5 file ({error})") from None


def check_subject_consistency(runs: Sequence[RunSpec], probes: Sequence[RunProbe]) -> None:
    """Refuse runs of one subject on different grids or with different column counts."""
    first: dict[tuple[str, str], tuple[RunSpec, Any]] = {}
    for run, probe in zip(runs, probes, strict=True):
        for kind, value in (("grid", probe.grid), ("columns", probe.n_columns)):
            if value is None:
                continue
            seen = first.setdefault((run.subject, kind), (run, value))
            if seen[1] != value:
                what = "voxel grids (shape/affine)" if kind == "grid" else "voxel counts"
                detail = "" if kind == "grid" else f" ({seen[1]} vs {value} columns)"
                raise ValueError(
                    f"subject {run.subject!r} has runs with different {what}{detail}: "
                    f"{seen[0].bold_path} and {run.bold_path}; expected every run of a subject "
                    "in one space"
                )


def check_confounds(
    runs: Sequence[RunSpec], probes: Sequence[RunProbe], cleaning: CleaningConfig
) -> dict[str, list[str]]:
    """Check every run's confounds table before any writing; the columns each run will use.

    Does nothing (returns ``{}``) unless ``cleaning.confound_columns`` or
    ``cleaning.confounds_strategy`` is set (:func:`wav2brain.data.confounds.run_confounds`).
    Tables are small (one row per TR), so they are read whole here and again when the run is
    cleaned.

    Returns
    -------
    dict
        ``{run key: chosen column names}``.

    Raises
    ------
    ValueError
        A run without a confounds table (its BOLD file is named); a table whose row count
        differs from the scan's volume count (both numbers given); patterns that match no column
        (the available columns are listed); n/a past a column's first rows.
    """
    if not cleaning.uses_confounds:
        return {}
    strategy = cleaning.confounds_strategy
    asked = (
        [] if cleaning.confound_columns is None else [f"columns {list(cleaning.confound_columns)}"]
    )
    if strategy is not None:
        asked.append(f"strategy {list(strategy.strategy)}")
    used = {}
    for run, probe in zip(runs, probes, strict=True):
        if run.confounds_path is None:
            raise ValueError(
                f"{run.bold_path}: confound {' and '.join(asked)} were requested but the run "
                "has no confounds table (looked beside it for *_desc-confounds_timeseries.tsv or "
                "*_desc-confounds_regressors.tsv with the same sub/ses/task/run; a mapping table "
                "can name one in a 'confounds' column; cleaned derivatives such as desc-clean "
                "have theirs regressed already)"
            )
        n_volumes = probe.n_volumes
        matrix, names = run_confounds(
            run.confounds_path, n_volumes, cleaning.confound_columns, strategy, run.bold_path
        )
        start, stop = cleaning.trim_start_trs, n_volumes - cleaning.trim_end_trs
        if stop > start:
            names = kept_confounds(matrix, start, stop, names, run.confounds_path)[1]
        used[run.key] = names
    return used


def _confounds_summary(used: dict[str, list[str]]) -> list[str] | dict[str, list[str]]:
    """What the card says about the confounds: the columns, or per run when runs differ."""
    distinct = {tuple(names) for names in used.values()}
    return list(distinct.pop()) if len(distinct) == 1 else used


def _mask_fingerprint(mask: Any) -> Any:
    """JSON-friendly identity of a mask argument (path, or a hash of an in-memory image)."""
    if mask is None or isinstance(mask, (str, Path)):
        return None if mask is None else str(Path(mask).resolve())
    data = np.asarray(getattr(mask, "dataobj", mask))
    digest = hashlib.sha1(np.ascontiguousarray(data).tobytes())
    affine = getattr(mask, "affine", None)
    if affine is not None:
        digest.update(np.asarray(affine, np.float64).tobytes())
    return f"sha1:{digest.hexdigest()}"


def _run_plan(run: RunSpec, confound_columns: list[str] | None) -> dict:
    """The parts of a RunSpec that define its shard (paths, onset, TR, confound columns used)."""
    plan = {
        key: str(value) if isinstance(value, Path) else value for key, value in asdict(run).items()
    }
    plan["key"] = run.key
    plan.pop("origin")  # where the run was described (a temporary table, say), not its content
    if confound_columns is not None:
        plan["confound_columns"] = confound_columns
    return plan


def _settings(
    bids_root: Path,
    runs: Sequence[RunSpec],
    mask: Any,
    cleaning: CleaningConfig,
    confounds_used: dict[str, list[str]],
) -> dict:
    """Everything that determines the folder's content; a resumed folder must match it."""
    settings = {
        "bids_root": str(bids_root.resolve()),
        "mask": _mask_fingerprint(mask),
        "cleaning": asdict(cleaning),
        "runs": [_run_plan(run, confounds_used.get(run.key)) for run in runs],
    }
    return json.loads(json.dumps(settings, default=str))


def prepared_bids_root(folder: str | Path) -> Path | None:
    """The BIDS root a prepared folder was made from (its manifest's ``bids_root``), or None.

    None when the folder has no manifest or the manifest names no root.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    root = settings.get("bids_root") if isinstance(settings, dict) else None
    return Path(root) if root else None


class _Manifest:
    """The progress file: settings, masks, and every finished shard (rewritten atomically)."""

    def __init__(self, out: Path, settings: dict) -> None:
        self.path = out / MANIFEST_NAME
        self.state: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "settings": settings,
            "masks": {},
            "stimuli": {},
            "runs": {},
            "complete": False,
        }

    @classmethod
    def claim(cls, out: Path, settings: dict) -> _Manifest:
        """Open the manifest of ``out``, or start one in a new/empty folder."""
        manifest = cls(out, settings)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        if manifest.path.is_file():
            try:
                stored = json.loads(manifest.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest.path} is not valid JSON ({error})") from None
            if stored.get("settings") != settings:
                changed = sorted(
                    key
                    for key in set(settings) | set(stored.get("settings", {}))
                    if settings.get(key) != stored.get("settings", {}).get(key)
                )
                raise ValueError(
                    f"{out} was prepared with other settings (differing: {', '.join(changed)}); "
                    "use another --out folder or delete this one"
                )
            manifest.state = stored
            return manifest
        if out.is_dir() and any(PARTIAL_SUFFIX not in p.name for p in out.iterdir()):
            raise ValueError(
                f"--out {out} is a non-empty folder without {MANIFEST_NAME}; refusing to write "
                "into it (choose a new or empty folder)"
            )
        out.mkdir(parents=True, exist_ok=True)
        manifest.save()
        return manifest

    def save(self) -> None:
        write_text_atomic(json.dumps(self.state, indent=1, sort_keys=True), self.path)

    def done(self, section: str, key: str, out: Path) -> bool:
        """Whether a shard is recorded and still on disk."""
        entry = self.state[section].get(key)
        return entry is not None and (out / entry["shard"]).is_file()

    def record(self, section: str, key: str, entry: dict) -> None:
        self.state[section][key] = entry
        self.save()


def _remove_partials(out: Path) -> None:
    """Delete temporary files left by an interrupted write."""
    for pattern in (f"*{PARTIAL_SUFFIX}", f"*{PARTIAL_SUFFIX}.nii.gz"):
        for path in out.rglob(pattern):
            path.unlink(missing_ok=True)


def _grid_masks(
    runs: Sequence[RunSpec], probes: Sequence[RunProbe], mask: Any, out: Path, manifest: _Manifest
) -> dict[str, tuple[Any, str]]:
    """One mask image per voxel grid: ``{grid: (image, file name relative to out)}``.

    The user's mask, else the runs' own brain masks (:attr:`RunSpec.mask_path`, from
    derivatives; :func:`wav2brain.data.masks.combine_masks`), else one computed from the runs.
    """
    import nibabel as nib

    from wav2brain.data.masks import combine_masks, compute_mask, load_mask

    grids: dict[str, list[RunSpec]] = {}
    for run, probe in zip(runs, probes, strict=True):
        if probe.grid is not None:
            grids.setdefault(probe.grid, []).append(run)
    masks = {}
    for index, (grid, grid_runs) in enumerate(grids.items()):
        name = MASK_NAME if len(grids) == 1 else f"masks/grid-{index}.nii.gz"
        path = out / name
        if manifest.state["masks"].get(grid) == name and path.is_file():
            masks[grid] = (nib.load(str(path)), name)
            continue
        own = [run.mask_path for run in grid_runs if run.mask_path is not None]
        if mask is not None:
            image = load_mask(mask, nib.load(str(grid_runs[0].bold_path)))
        elif own:
            if len(own) != len(grid_runs):
                lacking = [str(r.bold_path) for r in grid_runs if r.mask_path is None]
                raise ValueError(
                    f"runs on one voxel grid mix derivative brain masks and none: {lacking} have "
                    "no desc-brain_mask; pass --mask for all of them"
                )
            image = combine_masks(own, nib.load(str(grid_runs[0].bold_path)))
        else:
            logger.info("computing a brain mask from %d run(s) on grid %d", len(grid_runs), index)
            image = compute_mask([run.bold_path for run in grid_runs])
        image = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.uint8), image.affine)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name[: -len('.nii.gz')]}{PARTIAL_SUFFIX}.nii.gz")
        image.to_filename(str(tmp))
        tmp.replace(path)
        manifest.state["masks"][grid] = name
        manifest.save()
        masks[grid] = (nib.load(str(path)), name)
    return masks


def read_alignments(runs: Sequence[RunSpec]) -> dict[str, Any]:
    """The alignment of each stimulus (None without one), read before any expensive work.

    Raises ValueError when runs of one stimulus name different alignment files or tiers, or
    when an alignment cannot be read as asked (a TextGrid whose tiers cannot be told apart:
    :func:`wav2brain.data.alignments.read_textgrid`).
    """
    from wav2brain.data.alignments import read_alignment

    chosen: dict[str, tuple] = {}
    for run in runs:
        source = (run.alignment_path, run.word_tier, run.phone_tier)
        if chosen.setdefault(run.stimulus_id, source) != source:
            raise ValueError(
                f"stimulus {run.stimulus_id!r}: its runs name different alignments or tiers "
                f"(file, word tier, phone tier): {chosen[run.stimulus_id]} and {source} "
                f"({run.described}); expected one per stimulus"
            )
    return {
        sid: read_alignment(path, word_tier, phone_tier) if path is not None else None
        for sid, (path, word_tier, phone_tier) in chosen.items()
    }


def _write_stimulus(run: RunSpec, alignment: Any, root: Path, out: Path) -> StimulusSummary:
    """Read, resample and store one stimulus with its alignment (None: no words or phonemes)."""
    from wav2brain.data.audio import load_audio

    wave = load_audio(run.stimulus_path)
    shard = f"{STIMULI}/{run.stimulus_id}.parquet"
    write_shard(stimulus_table(run.stimulus_id, wave, alignment), out / shard)
    source = run.alignment_path
    if source is not None:
        source = source.relative_to(root) if source.is_relative_to(root) else source.name
    return StimulusSummary(
        shard=shard,
        id=run.stimulus_id,
        duration=len(wave) / SAMPLING_RATE,
        n_words=len(alignment.words) if alignment is not None else 0,
        n_phonemes=len(alignment.phonemes) if alignment is not None else 0,
        alignment=None if source is None else Path(source).as_posix(),
    )


def _full_width(
    data: np.ndarray, kept: np.ndarray, base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Put the kept columns back at their place among the ``base`` features (zeros elsewhere).

    Returns the float32 [T, base.sum()] matrix and the indices of the dropped columns.
    """
    kept_in_base = kept[base]
    if kept_in_base.all():
        return data, np.zeros(0, np.int64)
    full = np.zeros((data.shape[0], kept_in_base.size), dtype=np.float32)
    full[:, kept_in_base] = data
    return full, np.flatnonzero(~kept_in_base)


def _write_run(
    run: RunSpec, out: Path, mask: Any, mask_name: str | None, cleaning: CleaningConfig
) -> RunSummary:
    """Load, clean and store one run's BOLD (the only run in memory)."""
    from wav2brain.data.fmri import load_bold
    from wav2brain.data.masks import feature_mask

    confounds = run.confounds_path if cleaning.uses_confounds else None
    bold = load_bold(run, mask=mask, cleaning=cleaning, confounds=confounds)
    if mask is None or mask_name is not None:
        base = np.ones(bold.kept.size, dtype=bool)
    else:
        base = feature_mask(mask, bold.kept.size, str(run.bold_path))
    data, dropped = _full_width(bold.data, bold.kept, base)
    meta = {
        "subject": run.subject,
        "session": run.session,
        "task": run.task,
        "run": run.run,
        "stimulus_id": run.stimulus_id,
        "onset": bold.onset,
        "tr": bold.tr,
        REFERENCE_COLUMN: run.slice_time_reference,
        "space": bold.space,
        "mask": mask_name,
    }
    shard = f"{RESPONSES}/{run.key}.parquet"
    write_shard(response_table(meta, data, dropped), out / shard)
    return RunSummary(
        shard=shard,
        subject=run.subject,
        task=run.task,
        run=run.run,
        session=run.session,
        stimulus_id=run.stimulus_id,
        space=bold.space,
        n_trs=int(data.shape[0]),
        n_voxels=int(data.shape[1]),
        tr=float(bold.tr),
        dropped_voxels=int(len(dropped)),
        slice_time_reference=float(run.slice_time_reference),
        slice_time_source=run.slice_time_source,
        bold_file=Path(run.bold_path).name,
    )


def _check_written_counts(summaries: Iterable[RunSummary], runs: Sequence[RunSpec]) -> None:
    """Refuse a subject whose stored runs ended up with different voxel counts."""
    paths = {run.key: run.bold_path for run in runs}
    first: dict[str, RunSummary] = {}
    for summary in summaries:
        seen = first.setdefault(summary.subject, summary)
        if seen.n_voxels != summary.n_voxels:
            key_a, key_b = Path(seen.shard).stem, Path(summary.shard).stem
            raise ValueError(
                f"subject {summary.subject!r}: {paths.get(key_a, key_a)} gave {seen.n_voxels} "
                f"voxels but {paths.get(key_b, key_b)} gave {summary.n_voxels}; expected one "
                "voxel count per subject (pass one --mask for all runs)"
            )


def _tier_names(names: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """A tier option as :class:`RunSpec` holds it: one name, or several as a tuple (hashable)."""
    return names if names is None or isinstance(names, str) else tuple(names)


def check_distinct_rows(runs: Sequence[RunSpec]) -> None:
    """Refuse runs that the ``responses`` table could not tell apart.

    A row is named by subject, session, task and run; the ``acq-`` entity is not a column yet, so
    two acquisitions of one run (``acq-mb4`` and ``acq-mb8``) would be two rows with the same name
    that every reader (windows, extract, encode) would mix up.

    Raises
    ------
    ValueError
        Naming both files and how to keep one.
    """
    seen: dict[tuple, RunSpec] = {}
    for run in runs:
        name = (run.subject, run.session, run.task, run.run)
        other = seen.setdefault(name, run)
        if other is not run:
            raise ValueError(
                f"{other.described} and {run.described} differ only by their acq- entity "
                f"({other.acquisition!r}, {run.acquisition!r}); the responses table names a run by "
                "subject, session, task and run, so prepare one acquisition at a time "
                "(--exclude the other, or give them distinct run labels in a mapping table)"
            )


def with_reference(runs: Sequence[RunSpec], reference_s: float | None) -> list[RunSpec]:
    """Runs with their slice-time reference (s) checked, or replaced by ``reference_s``.

    Raises ValueError naming the run when a reference is not a time within its TR.
    """
    if reference_s is None:
        for run in runs:
            if math.isnan(run.slice_time_reference):
                raise ValueError(
                    f"{run.key} ({run.described}): slice-time reference {run.slice_time_source}"
                )
            check_reference(
                run.slice_time_reference, run.tr, f"{run.key} ({run.slice_time_source})"
            )
        return list(runs)
    return [
        dataclasses.replace(
            run,
            slice_time_reference=check_reference(float(reference_s), run.tr, run.key),
            slice_time_source=REFERENCE_USER,
        )
        for run in runs
    ]


def prepare_dataset(
    bids_root: str | Path,
    out: str | Path,
    *,
    mask: Any = None,
    subjects: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    runs: Iterable[str] | None = None,
    mapping: str | Path | Sequence[RunSpec] | None = None,
    cleaning: CleaningConfig | None = None,
    card: CardText | None = None,
    trial_type: str = "story",
    slice_time_reference: float | None = None,
    word_tier: str | Sequence[str] | None = None,
    phone_tier: str | Sequence[str] | None = None,
    progress: bool = True,
    exclude: str | Path | Iterable[str] | None = None,
    sessions: Iterable[str] | None = None,
    echo: str | int | None = None,
    align_on: AlignOn = None,
    derivatives: str | Path | None = None,
    space: str = DEFAULT_SPACE,
    derivatives_desc: str = "preproc",
    derivatives_res: str | None = None,
    derivatives_masks: str | Path | None = None,
    confounds_strategy: Any = None,
) -> Path:
    """Write ``out`` as a Hugging Face dataset folder (``stimuli`` + ``responses`` + card + mask).

    Parameters
    ----------
    bids_root : str or Path
        BIDS dataset root.
    out : str or Path
        Output folder: new, empty, or an interrupted preparation with the same settings (resumed).
    mask : path, nibabel image, boolean vector or None
        NIfTI runs: a mask (matched to each voxel grid) or None to compute one per grid from the
        runs. Surfaces and arrays: a boolean vector over vertices/columns, or None for all.
    subjects, tasks, runs : iterable of str, optional
        Labels to keep (with or without BIDS prefixes).
    mapping : path or sequence of RunSpec, optional
        Mapping table for datasets without events (see :func:`wav2brain.data.bids.read_mapping_table`).
    cleaning : CleaningConfig, optional
        Detrending, z-scoring, filtering, smoothing, trimming (TRs). With ``confound_columns``
        set, each run's confounds table (:attr:`wav2brain.data.bids.RunSpec.confounds_path`)
        gives those columns, trimmed like the volumes, to :func:`nilearn.signal.clean`; the card
        and the manifest record the columns used. Without it no confounds are regressed.
    card : CardText, optional
        Title, licence and source text of the dataset card.
    trial_type : str
        ``trial_type`` of the events row that marks the stimulus.
    slice_time_reference : float, optional
        Seconds into each TR at which its signal is sampled, for every run, in place of what
        discovery found (sidecar ``StartTime`` of slice-time corrected data, else 0: the
        acquisition start; :mod:`wav2brain.data.timing`). Stored per run in the ``responses``
        column ``slice_time_reference`` and in the card; must lie in ``[0, TR)``.
    word_tier, phone_tier : str or sequence of str, optional
        Names of the TextGrid tiers holding words and phonemes, for alignments whose tiers are
        not named ``word(s)`` / ``phone(s)``; several names take each grid's one tier with any
        of them (TextGrids that name the tier differently from stimulus to stimulus); a mapping
        table's ``word_tier``/``phone_tier``
        columns override them for their rows. Stimuli without an alignment get no words or
        phonemes, and the card lists them.
    progress : bool
        Show tqdm progress bars.
    exclude : path or iterable of str, optional
        Runs to leave out: an exclusion file (JSON such as Narratives' ``scan_exclude.json``, or
        text, one run key / file name / pattern a line) or its entries
        (:mod:`wav2brain.data.exclusions`).
    sessions : iterable of str, optional
        Session labels to keep.
    echo : str or int, optional
        The echo to keep of multi-echo data (several echoes of one run are refused otherwise).
    align_on : {"first", "story"} or mapping of stimulus id to one, optional
        How to align runs of one stimulus that disagree about the story's position in the WAV
        (:func:`wav2brain.data.bids.check_story_positions`); None refuses them.
    derivatives : path, optional
        A derivatives tree (``derivatives/fmriprep``): each discovered run's image is replaced by
        its derivative in ``space`` with ``derivatives_desc`` (and ``derivatives_res``), with the
        derivative's brain mask (used unless ``mask`` is given), sidecar TR and slice timing and
        confounds table (:func:`wav2brain.data.derivatives.pair_derivatives`); events, stimuli
        and onsets still come from ``bids_root``.
    space : str
        Output space of the derivatives (``MNI152NLin2009cAsym``, ``fsaverage6``...).
    derivatives_desc, derivatives_res : str
        ``desc-`` (``preproc``; ``clean`` for Narratives' AFNI output) and ``res-``/``den-`` labels.
    derivatives_masks : path, optional
        Derivatives tree holding the brain masks, when not ``derivatives``.
    confounds_strategy : ConfoundStrategy or sequence of str, optional
        Shorthand for ``cleaning.confounds_strategy`` (nilearn ``load_confounds`` components,
        e.g. ``("motion", "wm_csf", "high_pass")``); giving both, differently, is an error.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    FileNotFoundError
        Missing BIDS root, BOLD, stimulus or mask file (named).
    ValueError
        No run matched the filters; a scan shorter than its stimulus; runs of a subject on
        different grids or with different voxel counts; requested confounds missing or not
        matching the scan (:func:`check_confounds`); alignments that cannot be read as asked
        (:func:`read_alignments`); an ``out`` folder that is not ours or was prepared with
        other settings.
    """
    from tqdm.auto import tqdm

    root, out = Path(bids_root), Path(out)
    cleaning = cleaning or CleaningConfig()
    if confounds_strategy is not None:
        strategy = as_strategy(confounds_strategy)
        if cleaning.confounds_strategy not in (None, strategy):
            raise ValueError(
                f"confounds_strategy {strategy} differs from cleaning.confounds_strategy "
                f"{cleaning.confounds_strategy}; give it once"
            )
        cleaning = dataclasses.replace(cleaning, confounds_strategy=strategy)
    if derivatives is None:
        given = {
            "space": space != DEFAULT_SPACE,
            "derivatives_desc": derivatives_desc != "preproc",
            "derivatives_res": derivatives_res is not None,
            "derivatives_masks": derivatives_masks is not None,
        }
        if any(given.values()):
            names = [name for name, set_ in given.items() if set_]
            raise ValueError(
                f"{', '.join(names)} apply to derivatives only; give derivatives (--derivatives "
                "DIR) too"
            )
    card = card or CardText()
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS root not found (or not a folder): {root}")
    found = discover_runs(
        root,
        subjects=subjects,
        tasks=tasks,
        runs=runs,
        mapping=mapping,
        trial_type=trial_type,
        exclude=exclude,
        sessions=sessions,
        echo=echo,
        align_on=align_on,
    )
    if not found:
        filters = {"subjects": subjects, "tasks": tasks, "runs": runs}
        shown = ", ".join(f"{k}={list(v)}" for k, v in filters.items() if v is not None)
        if mapping is not None:
            where = mapping if isinstance(mapping, (str, Path)) else f"{len(mapping)} rows"
            shown += f"{', ' if shown else ''}mapping={where}"
        raise ValueError(
            f"no functional runs with a stimulus found in {root}"
            + (f" matching {shown}" if shown else "")
            + f" (looked for *_bold.nii[.gz]/.func.gii with events.tsv rows of trial_type "
            f"{trial_type!r}, or a mapping table)"
        )
    if derivatives is not None:
        found = pair_derivatives(
            found,
            root,
            derivatives,
            space=space,
            desc=derivatives_desc,
            res=derivatives_res,
            masks_from=derivatives_masks,
        )
    check_distinct_rows(found)
    stimulus_paths: dict[str, Path] = {}
    for run in found:
        if stimulus_paths.setdefault(run.stimulus_id, run.stimulus_path) != run.stimulus_path:
            raise ValueError(
                f"stimulus id {run.stimulus_id!r} names two files: "
                f"{stimulus_paths[run.stimulus_id]} and {run.stimulus_path} ({run.described})"
            )
    found = [
        dataclasses.replace(
            run,
            word_tier=run.word_tier or _tier_names(word_tier),
            phone_tier=run.phone_tier or _tier_names(phone_tier),
        )
        for run in found
    ]
    alignments = read_alignments(found)
    probes = [probe_run(run, cleaning) for run in found]
    # After the probe: a run whose only TR is its image header has it now.
    found = with_reference([probe.run for probe in probes], slice_time_reference)
    check_subject_consistency(found, probes)
    confounds_used = check_confounds(found, probes, cleaning)
    if isinstance(mask, (str, Path)) and not Path(mask).is_file():
        raise FileNotFoundError(f"mask file not found: {mask}")

    manifest = _Manifest.claim(out, _settings(root, found, mask, cleaning, confounds_used))
    if manifest.state["complete"] and (out / CARD_NAME).is_file():
        logger.info("%s is already complete; nothing to do", out)
        return out
    _remove_partials(out)
    masks = _grid_masks(found, probes, mask, out, manifest)

    first_of_stimulus = {run.stimulus_id: run for run in reversed(found)}
    for sid, run in tqdm(sorted(first_of_stimulus.items()), desc="stimuli", disable=not progress):
        if not manifest.done("stimuli", sid, out):
            summary = _write_stimulus(run, alignments[sid], root, out)
            manifest.record("stimuli", sid, asdict(summary))
    for run, probe in tqdm(
        list(zip(found, probes, strict=True)), desc="runs", disable=not progress
    ):
        if manifest.done("runs", run.key, out):
            continue
        run_mask, mask_name = masks[probe.grid] if probe.grid is not None else (mask, None)
        summary = _write_run(run, out, run_mask, mask_name, cleaning)
        manifest.record("runs", run.key, asdict(summary))
        _check_written_counts(
            (RunSummary(**entry) for entry in manifest.state["runs"].values()), found
        )

    cleaning_card = asdict(cleaning)
    if confounds_used:
        cleaning_card["confounds_used"] = _confounds_summary(confounds_used)
    from_header = [run.key for run in found if _tr_from_header(run)]
    if from_header:
        cleaning_card["tr_from_image_header"] = from_header
    summary = DatasetSummary(
        stimuli=[
            StimulusSummary(**manifest.state["stimuli"][sid]) for sid in sorted(first_of_stimulus)
        ],
        runs=[RunSummary(**manifest.state["runs"][run.key]) for run in found],
        cleaning=cleaning_card,
        mask=_mask_description(masks, mask, any(run.mask_path for run in found)),
    )
    write_card(out, summary, card)
    manifest.state["complete"] = True
    manifest.save()
    return out


def _tr_from_header(run: RunSpec) -> bool:
    """Whether the run's TR came from its image header alone (no sidecar or table gave one)."""
    return bool(run.tr_sources) and all(" header " in name for name, _ in run.tr_sources)


def _mask_description(masks: dict[str, tuple[Any, str]], mask: Any, derived: bool) -> dict:
    """What the card says about the masks."""
    if not masks:
        source = "all columns" if mask is None else "user-given boolean vector over columns"
        return {"file": None, "source": source}
    files = {
        name: {
            "n_voxels": int(np.count_nonzero(np.asarray(image.dataobj))),
            "shape": list(image.shape[:3]),
        }
        for image, name in masks.values()
    }
    origin = "computed from the runs' mean EPI (nilearn compute_epi_mask, intersect_masks)"
    if derived:
        origin = "the derivatives' brain masks (desc-brain_mask, nilearn intersect_masks)"
    return {"files": files, "source": origin if mask is None else _mask_fingerprint(mask)}
