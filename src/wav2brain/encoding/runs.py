"""Reading a prepared dataset one subject at a time: BOLD and cached features of a subject's runs.

The dataset-level analyses (:func:`wav2brain.encoding.dataset.encode_dataset`, and the anchoring
analysis) read the same runs the same way, through this module:

- :func:`read_responses` reads the metadata of every run (the ``responses`` table without its
  ``bold`` column) from the Parquet shards of a prepared folder: no BOLD is loaded.
- :func:`load_bold` reads one run's BOLD ``[n_trs, n_voxels]`` from its shard, page by page
  into the caller's array.
- :class:`FeatureIndex` maps each run to the feature-cache entry serving it (``runs.parquet`` of
  ``wav2brain extract``) and :meth:`FeatureIndex.features` places an entry's memory-mapped rows on
  the run's TRs: a slice of the entry (no copy) when the run lies inside the stimulus grid.
- :func:`subject_runs` groups the records by subject (in table order) and :class:`SubjectData`
  holds one subject's BOLD (one array, runs stacked) and its features, layer by layer, optionally
  cleaned as the BOLD was (:func:`clean_features`).

Only one subject's BOLD is ever held; features are built one layer at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RUN_KEYS = ("subject", "session", "task", "run", "stimulus_id")
"""Columns naming a run (in ``responses`` and in the feature cache's ``runs.parquet``)."""

META_COLUMNS = (
    *RUN_KEYS,
    "onset",
    "tr",
    "n_trs",
    "n_voxels",
    "space",
    "mask",
    "dropped_voxel_indices",
)
"""The ``responses`` columns read by :func:`read_responses` (every one but ``bold``)."""

SLICE_TIME_COLUMN = "slice_time_reference"
"""Optional ``responses`` column (fraction of the TR); part of the timing when present."""


def _text(value: Any) -> str | None:
    """A table cell as text (None and NaN read as None)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``responses`` table, without its BOLD.

    ``onset`` and ``tr`` are in seconds, ``n_trs`` in TRs; ``mask`` is the file (relative to
    the dataset folder) whose voxels are the columns of ``bold``, or None; ``dropped`` are the
    voxel columns stored as zeros (NaN or constant in this run); ``shard`` and ``row`` locate the
    BOLD.
    """

    subject: str
    session: str | None
    task: str | None
    run: str | None
    stimulus_id: str
    onset: float
    tr: float
    n_trs: int
    n_voxels: int
    space: str
    mask: str | None
    slice_time_reference: float | None
    dropped: tuple[int, ...]
    shard: Path
    row: int

    @property
    def key(self) -> str:
        """A printable identifier of the run (subject|session|task|run|stimulus_id)."""
        return run_key({name: getattr(self, name) for name in RUN_KEYS})

    @property
    def timing(self) -> tuple:
        """Everything that must match for two runs' TRs and voxels to be the same samples.

        Stimulus, onset (s), TR (s), TR count, space, mask, voxel count and slice-time
        reference: runs differing in any of these are never averaged together.
        """
        return (
            self.stimulus_id,
            round(self.onset, 6),
            round(self.tr, 6),
            self.n_trs,
            self.space,
            self.mask,
            self.n_voxels,
            self.slice_time_reference,
        )

    def identity(self) -> dict:
        """What the run's results depend on, read without loading it (for resume keys).

        The metadata, and the shard's resolved path, size and modification time (ns): a
        re-prepared run gets a new shard file.
        """
        stat = self.shard.stat()
        return {
            "key": self.key,
            "timing": list(self.timing),
            "dropped": list(self.dropped),
            "shard": str(self.shard.resolve()),
            "row": self.row,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }


def run_key(row: Mapping) -> str:
    """A printable identifier of a run from its table columns (None and NaN read as empty)."""
    return "|".join(_text(row.get(name)) or "" for name in RUN_KEYS)


def check_dataset(dataset: Path) -> list[Path]:
    """The ``responses`` shards of a prepared folder; FileNotFoundError when it is not one."""
    from wav2brain.data.hf_layout import CARD_NAME, RESPONSES

    if not (dataset / CARD_NAME).is_file():
        raise FileNotFoundError(
            f"{dataset} is not a prepared dataset folder: no {CARD_NAME} (run `wav2brain prepare`)"
        )
    shards = sorted((dataset / RESPONSES).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"{dataset / RESPONSES}: no Parquet shards (run `wav2brain prepare`)"
        )
    return shards


def read_responses(dataset: Path) -> list[RunRecord]:
    """Metadata of every run of a prepared folder, in shard order; no BOLD is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    for shard in check_dataset(dataset):
        try:
            names = set(pq.read_schema(shard).names)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{shard}: not a readable Parquet file ({error})") from None
        missing = [c for c in (*META_COLUMNS, "bold") if c not in names]
        if missing:
            raise ValueError(f"{shard}: responses shard without columns {missing}")
        columns = list(META_COLUMNS) + ([SLICE_TIME_COLUMN] if SLICE_TIME_COLUMN in names else [])
        for row, values in enumerate(pq.read_table(shard, columns=columns).to_pylist()):
            record = RunRecord(
                subject=str(values["subject"]),
                session=_text(values["session"]),
                task=_text(values["task"]),
                run=_text(values["run"]),
                stimulus_id=str(values["stimulus_id"]),
                onset=float(values["onset"]),
                tr=float(values["tr"]),
                n_trs=int(values["n_trs"]),
                n_voxels=int(values["n_voxels"]),
                space=str(values["space"]),
                mask=_text(values["mask"]),
                slice_time_reference=(
                    None
                    if values.get(SLICE_TIME_COLUMN) is None
                    else float(values[SLICE_TIME_COLUMN])
                ),
                dropped=tuple(int(i) for i in values["dropped_voxel_indices"] or ()),
                shard=shard,
                row=row,
            )
            if not (np.isfinite(record.tr) and record.tr > 0 and np.isfinite(record.onset)):
                raise ValueError(
                    f"{shard} row {row} (run {record.key}): TR {record.tr} s and onset "
                    f"{record.onset} s; expected TR > 0 and a finite onset"
                )
            records.append(record)
    return records


def load_bold(record: RunRecord, out: np.ndarray | None = None) -> np.ndarray:
    """One run's BOLD as float32 ``[n_trs, n_voxels]``, read from its shard.

    Read page by page (:func:`wav2brain.data.hf_layout.read_bold`): about one Parquet page is
    held besides the result, never the 4x of decoding the nested cell. ``out`` (C-contiguous
    float32, that shape) receives the values, so a subject's runs are written into one
    preallocated matrix; without it a new array is returned.
    """
    from wav2brain.data.hf_layout import read_bold

    return read_bold(record.shard, record.row, (record.n_trs, record.n_voxels), out)


class FeatureIndex:
    """The feature cache of ``wav2brain extract``: which entry serves each run, and its rows.

    Parameters
    ----------
    root : Path
        The cache folder (holds ``runs.parquet``).
    """

    def __init__(self, root: Path) -> None:
        import pandas as pd

        if not root.is_dir():
            raise FileNotFoundError(f"--features {root}: no such feature cache folder")
        path = root / "runs.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `wav2brain extract` first")
        self.root = root
        self.path = path
        self.rows = {run_key(row): row for row in pd.read_parquet(path).to_dict("records")}
        self._records: dict[Path, dict] = {}

    def check(self, records: Sequence[RunRecord]) -> None:
        """Raise a ValueError naming the runs that have no cached features."""
        missing = [r.key for r in records if r.key not in self.rows]
        if missing:
            raise ValueError(
                f"{len(missing)} runs without cached features in {self.path}: {missing[:5]} "
                "(re-run extract)"
            )

    def entry_path(self, record: RunRecord) -> Path:
        """The cache entry (safetensors file) serving ``record``."""
        return self.root / self.rows[record.key]["path"]

    def entry_record(self, record: RunRecord) -> dict:
        """The stored record (key, grid, units) of the entry serving ``record``; header only."""
        from wav2brain.features.cache import open_entry

        path = self.entry_path(record)
        if path not in self._records:
            self._records[path] = open_entry(path).metadata
        return self._records[path]

    def identity(self, record: RunRecord) -> dict:
        """What the run's features depend on: its ``runs.parquet`` row and its entry's record."""
        row = {
            name: None if isinstance(value, float) and value != value else value
            for name, value in self.rows[record.key].items()
        }
        return {"row": json.loads(json.dumps(row, default=str)), "entry": self.entry_record(record)}

    def layers(self, record: RunRecord) -> list[str]:
        """The cached layer names of the entry serving ``record``."""
        return list(self.entry_record(record)["units"])

    def features(self, record: RunRecord, layer: str, entries: dict | None = None) -> np.ndarray:
        """Features of ``layer`` on the run's TRs, float32 ``[n_trs, units]`` (FIR: stacked delays).

        A read-only slice of the memory-mapped entry when the run lies inside the stimulus grid
        (see :func:`~wav2brain.features.resample.align_to_run`). ``entries`` caches opened
        entries by path (the caller drops it to unmap them).
        """
        from wav2brain.features.cache import open_entry
        from wav2brain.features.pipeline import RunTiming, run_features
        from wav2brain.features.resample import TRGridConfig

        path = self.entry_path(record)
        entries = {} if entries is None else entries
        if path not in entries:
            entries[path] = open_entry(path)
        entry = entries[path]
        grid_config = TRGridConfig(**entry.metadata["key"]["grid_config"])
        timing = RunTiming(record.tr, record.onset)
        return run_features(entry, timing, record.n_trs, grid_config, [layer])[layer]


def subject_runs(
    records: Sequence[RunRecord], subjects: Sequence[str] | None = None
) -> dict[str, list[RunRecord]]:
    """Records grouped by subject (first appearance order), restricted to ``subjects``."""
    present = list(dict.fromkeys(r.subject for r in records))
    if subjects:
        unknown = sorted(set(subjects) - set(present))
        if unknown:
            raise ValueError(f"--subjects {unknown} not in the dataset: have {sorted(present)}")
        present = [s for s in present if s in set(subjects)]
    grouped: dict[str, list[RunRecord]] = {s: [] for s in present}
    for record in records:
        if record.subject in grouped:
            grouped[record.subject].append(record)
    return grouped


def read_cleaning(dataset: Path):
    """The :class:`~wav2brain.data.fmri.CleaningConfig` the dataset's BOLD was cleaned with.

    Read from ``wav2brain prepare``'s manifest; a folder without one (a converter's output)
    gets the defaults, which is what ``prepare`` applies unless told otherwise.
    """
    from dataclasses import fields

    from wav2brain.data.fmri import CleaningConfig
    from wav2brain.data.prepare import MANIFEST_NAME

    path = dataset / MANIFEST_NAME
    if not path.is_file():
        logger.info(
            "%s has no %s: features cleaned with the default drift rule", dataset, MANIFEST_NAME
        )
        return CleaningConfig()
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))["settings"]["cleaning"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: no readable settings.cleaning ({error})") from None
    known = {f.name for f in fields(CleaningConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    if values.get("confound_columns") is not None:
        values["confound_columns"] = tuple(values["confound_columns"])
    return CleaningConfig(**values)


def clean_features(features: np.ndarray, tr: float, cleaning) -> np.ndarray:
    """One run's features cleaned as its BOLD was: the same drift basis, filters and z-scoring.

    The BOLD of a run is detrended (Legendre polynomials up to the AFNI ``-polort A`` order of
    the run, :func:`~wav2brain.data.fmri.drift_order`), filtered and z-scored per voxel by
    ``prepare``. Features that keep their run means and slow trends would ask the ridge to fit
    structure the targets no longer have: run-mean shifts and feature drift become nuisance
    regressors against detrended targets. Applying the very same cleaning to each feature column
    (nuisance confounds such as motion excepted: they are properties of the scan, not of the
    stimulus) removes that mismatch. Each statistic is the run's own (the run is the unit the
    BOLD was cleaned on), so no TR of another run, and no BOLD, enters.

    Returns float32 ``[n_trs, units]``; constant columns (TRs outside a story) stay 0.
    """
    from wav2brain.data.fmri import clean_signals

    return clean_signals(np.array(features, dtype=np.float32), tr, cleaning, None)


@dataclass
class SubjectData:
    """One subject's runs: stacked BOLD and, on request, stacked features of one layer.

    Attributes
    ----------
    subject : str
    records : list of RunRecord
        The runs, in the order their TRs are stacked.
    bold : float32 ``[sum n_trs, n_voxels]``
    starts : int64 ``[n_runs + 1]``
        Row of each run's first TR in ``bold`` (and the total).
    """

    subject: str
    records: list[RunRecord]
    bold: np.ndarray
    starts: np.ndarray
    _entries: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, subject: str, records: Sequence[RunRecord]) -> SubjectData:
        """Read the BOLD of ``records`` (all of ``subject``, sharing a voxel count) into one array."""
        widths = {r.n_voxels for r in records}
        if len(widths) != 1:
            raise ValueError(f"sub-{subject}: runs differ in voxel count {sorted(widths)}")
        starts = np.concatenate([[0], np.cumsum([r.n_trs for r in records])]).astype(np.int64)
        bold = np.empty((int(starts[-1]), widths.pop()), dtype=np.float32)
        for record, start, stop in zip(records, starts[:-1], starts[1:], strict=True):
            load_bold(record, bold[start:stop])
        return cls(subject, list(records), bold, starts)

    def run_bold(self, index: int) -> np.ndarray:
        """The BOLD rows of run ``index`` (a view)."""
        return self.bold[self.starts[index] : self.starts[index + 1]]

    def features(self, index: FeatureIndex, layer: str, cleaning=None) -> np.ndarray:
        """Features of ``layer`` on every run, stacked like ``bold``: float32 ``[TRs, units]``.

        ``cleaning`` (a CleaningConfig) cleans each run's features as its BOLD was
        (:func:`clean_features`); None keeps the cached values.
        """
        parts = []
        for record in self.records:
            values = index.features(record, layer, self._entries)
            parts.append(
                values if cleaning is None else clean_features(values, record.tr, cleaning)
            )
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0], dtype=np.float32)

    def release(self) -> None:
        """Unmap the cache entries opened for this subject."""
        self._entries.clear()


def iter_subjects(
    records: Sequence[RunRecord], subjects: Sequence[str] | None = None
) -> Iterator[SubjectData]:
    """Each subject's :class:`SubjectData`, one at a time (the previous one can be freed)."""
    for subject, own in subject_runs(records, subjects).items():
        yield SubjectData.load(subject, own)
