"""The Hugging Face folder layout of an audio–fMRI dataset: two Parquet tables, a card, a mask.

A prepared folder looks like this (and can be pushed to the Hub as it is)::

    DIR/
      README.md                 dataset card; YAML ``configs:`` for ``stimuli`` and ``responses``
      mask.nii.gz               the voxel mask (NIfTI data only); column j of ``bold`` is voxel j
                                of the mask in nibabel's C order (``nilearn.masking.apply_mask``)
      stimuli/<id>.parquet      one row per stimulus: 16 kHz audio stored once, words, phonemes
      responses/<run>.parquet   one row per subject × run: BOLD float32 [T, V] and its metadata

Choices, and why:

- **Audio** is a ``datasets.Audio(sampling_rate=16000, decode=False)`` column holding FLAC bytes
  (16-bit PCM, as precise as the 16-bit WAVs public datasets ship; about 60 % of the size of a
  16-bit WAV on synthesised speech).
  ``Audio`` is what Hub users and the dataset viewer expect, while ``decode=False`` keeps
  ``load_dataset`` and row access working without torchcodec: :func:`decode_audio` reads the
  bytes with soundfile. Users with torchcodec can ``cast_column("audio", Audio())``. A stimulus
  whose resampled wave exceeds full scale (where 16-bit PCM would clip) is stored as 32-bit float
  WAV bytes instead, so nothing is ever clipped.
- **BOLD** is one ``Array2D(shape=(None, V), dtype="float32")`` cell per run, stored in Parquet as
  ``list<fixed_size_list<float32, V>>`` without dictionary encoding, with byte-stream-split and
  zstd. Dictionary pages never pay off on continuous values: on a 600 × 20,000 float32 AR(1)
  matrix (48 MB raw) pyarrow's defaults took 1.1 s and 80 MB, these options 0.1 s and 40 MB.
  One column, never one per voxel. Datasets whose runs have different voxel counts (native-space subjects) get
  ``List(List(float32))`` instead, since ``Array2D`` fixes its second dimension.
  ``datasets`` reads the column as it is; the dataset-level analyses read one run's cell with
  :func:`read_bold`, page by page into their own array (:mod:`wav2brain.data.parquet_pages`),
  since pyarrow's decoding of one nested cell holds several times the run.
- Every shard is written to a temporary name in its folder and renamed (atomic on POSIX), and the
  card is written last, so a folder with a ``README.md`` is complete.
- **The card fingerprints the files it describes.** ``datasets`` caches a local folder under
  ``<cache>/<folder name>/<config>/<version>/<hash>``, and that hash covers only the card's YAML
  (``dataset_info`` and the ``configs`` entries with their file *patterns*), never the files'
  contents or the folder's path. Two folders with the same name and card, or one folder prepared
  again with other values in its shards, would share a cache entry and the second load would
  return the first's rows. So each ``configs`` entry carries, in its ``description`` (a
  ``BuilderConfig`` field, hence part of that hash), the SHA-256 fingerprint of its table's files
  (:func:`table_files`): any change to any shard changes the card, and with it the cache key of
  ``load_dataset`` and the resume keys that hash the card (``wav2brain encode``). The fingerprint
  hashes every byte: sizes or Parquet footers alone would miss a changed value that compresses
  to the same size. It costs a tenth of merely writing the same shards (4 runs of 600 TRs ×
  40,000 voxels, 355 MB: 0.58 s against 5.8 s, ``benchmarks/bench_fingerprint.py``), far less
  of a whole ``prepare``, which also reads and cleans every scan.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wav2brain.atomic import partial_path, write_text_atomic
from wav2brain.data.timing import REFERENCE_COLUMN, REFERENCE_NONE

SAMPLING_RATE = 16_000
STIMULI = "stimuli"
RESPONSES = "responses"
CARD_NAME = "README.md"
MASK_NAME = "mask.nii.gz"
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["subject", "task", "run", "session", "stimulus_id", "space", "id"],
    "use_byte_stream_split": ["bold"],
}
TAGS = ("neuroscience", "fmri", "audio", "speech", "brain-encoding", "wav2brain")
FINGERPRINT_PREFIX = "wav2brain files sha256:"
"""Start of each ``configs`` entry's ``description``; the table's fingerprint follows it."""


@dataclass
class CardText:
    """Human-written parts of a dataset card.

    Parameters
    ----------
    pretty_name : str
        Title of the card.
    license : str
        Hub licence identifier (``cc0-1.0``, ``other``, ...).
    source : str
        Markdown describing the source: citation, licence, TR, preprocessing.
    """

    pretty_name: str = "wav2brain audio–fMRI dataset"
    license: str = "other"
    source: str = ""


@dataclass
class RunSummary:
    """What the card says about one written ``responses`` row (also kept in the manifest).

    Parameters
    ----------
    shard : str
        Shard path relative to the dataset folder.
    subject, task, run, session, stimulus_id, space : str or None
        Identifiers of the run.
    n_trs : int
        Number of TRs stored.
    n_voxels : int
        Number of BOLD columns.
    tr : float
        Repetition time (s).
    dropped_voxels : int
        NaN or constant voxels of this run (stored as zeros, indices in the row).
    slice_time_reference : float
        Seconds into each TR at which its signal is sampled (:mod:`wav2brain.data.timing`).
    slice_time_source : str
        Why that reference (sidecar ``StartTime``, acquisition start, set by the user).
    bold_file : str
        Name of the BOLD file the row was read from: the card's only record of entities the
        ``responses`` columns do not hold (``echo-``, ``acq-``, ``desc-``); empty when unknown.
    """

    shard: str
    subject: str
    task: str
    run: str | None
    session: str | None
    stimulus_id: str
    space: str
    n_trs: int
    n_voxels: int
    tr: float
    dropped_voxels: int
    slice_time_reference: float = 0.0
    slice_time_source: str = REFERENCE_NONE
    bold_file: str = ""


@dataclass
class StimulusSummary:
    """What the card says about one ``stimuli`` row.

    Parameters
    ----------
    shard : str
        Shard path relative to the dataset folder.
    id : str
        Stimulus id.
    duration : float
        Seconds of audio.
    n_words, n_phonemes : int
        Aligned tokens stored.
    alignment : str or None
        The alignment file the tokens come from (relative to the BIDS root), None when the
        stimulus has none (no words or phonemes; the card lists these stimuli).
    """

    shard: str
    id: str
    duration: float
    n_words: int
    n_phonemes: int
    alignment: str | None = None


@dataclass
class DatasetSummary:
    """Everything the card reports besides the human-written text.

    Parameters
    ----------
    stimuli, runs : list
        Summaries of the written rows.
    cleaning : dict
        The cleaning settings (``dataclasses.asdict`` of the ``CleaningConfig``).
    mask : dict
        Mask description: file name (or None), voxel count, grid shape.
    """

    stimuli: list[StimulusSummary] = field(default_factory=list)
    runs: list[RunSummary] = field(default_factory=list)
    cleaning: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)


def token_feature() -> dict:
    """Features of one aligned token: label, start (s), end (s)."""
    from datasets import Value

    return {"label": Value("string"), "start": Value("float64"), "end": Value("float64")}


def stimuli_features():
    """``datasets.Features`` of the ``stimuli`` table (audio at 16 kHz, durations in seconds)."""
    from datasets import Audio, Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "audio": Audio(sampling_rate=SAMPLING_RATE, decode=False),
            "sampling_rate": Value("int32"),
            "n_samples": Value("int64"),
            "duration": Value("float64"),
            "words": List(token_feature()),
            "phonemes": List(token_feature()),
        }
    )


def responses_features(n_voxels: int | None):
    """``datasets.Features`` of the ``responses`` table.

    Parameters
    ----------
    n_voxels : int or None
        Voxel count shared by all runs (``bold`` is then ``Array2D((None, V))``), or None when
        runs differ (``bold`` is then ``List(List(float32))``).
    """
    from datasets import Array2D, Features, List, Value

    bold = (
        Array2D(shape=(None, n_voxels), dtype="float32")
        if n_voxels is not None
        else List(List(Value("float32")))
    )
    return Features(
        {
            "subject": Value("string"),
            "session": Value("string"),
            "task": Value("string"),
            "run": Value("string"),
            "stimulus_id": Value("string"),
            "onset": Value("float64"),
            "tr": Value("float64"),
            REFERENCE_COLUMN: Value("float64"),
            "n_trs": Value("int32"),
            "n_voxels": Value("int32"),
            "space": Value("string"),
            "mask": Value("string"),
            "dropped_voxels": Value("int32"),
            "dropped_voxel_indices": List(Value("int32")),
            "bold": bold,
        }
    )


def encode_audio(wave: np.ndarray, name: str, sampling_rate: int = SAMPLING_RATE) -> dict:
    """Encode a mono float wave as an ``Audio`` cell ``{"bytes", "path"}``.

    Parameters
    ----------
    wave : np.ndarray
        Float samples [samples], nominal range [-1, 1].
    name : str
        Stem of the ``path`` field.
    sampling_rate : int
        Hz.

    Returns
    -------
    dict
        FLAC (16-bit) bytes, or 32-bit float WAV bytes when the wave exceeds full scale.
    """
    import soundfile as sf

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"audio of {name!r} must be mono [samples], got shape {wave.shape}")
    buffer = io.BytesIO()
    if wave.size and float(np.max(np.abs(wave))) > 1.0:
        sf.write(buffer, wave, sampling_rate, format="WAV", subtype="FLOAT")
        path = f"{name}.wav"
    else:
        sf.write(buffer, wave, sampling_rate, format="FLAC", subtype="PCM_16")
        path = f"{name}.flac"
    return {"bytes": buffer.getvalue(), "path": path}


def decode_audio(cell: Mapping[str, Any], sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode an ``Audio(decode=False)`` cell with soundfile into float32 [samples].

    Raises ValueError if the stored rate differs from ``sampling_rate`` (Hz) or the cell is empty.
    """
    import soundfile as sf

    data = cell.get("bytes") if isinstance(cell, Mapping) else None
    if data is None:
        path = cell.get("path") if isinstance(cell, Mapping) else None
        if path is None:
            raise ValueError(f"audio cell holds neither bytes nor a path: {cell!r}")
        data = Path(path).read_bytes()
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if rate != sampling_rate:
        raise ValueError(
            f"audio {cell.get('path')!r} is stored at {rate} Hz, expected {sampling_rate} Hz"
        )
    if wave.ndim != 1:
        raise ValueError(f"audio {cell.get('path')!r} has {wave.shape[1]} channels, expected 1")
    return wave


def tokens_to_rows(tokens: Sequence[Any]) -> list[dict]:
    """Turn ``AlignedToken``-like objects (label, start s, end s) into struct rows."""
    return [
        {"label": str(tok.label), "start": float(tok.start), "end": float(tok.end)}
        for tok in tokens
    ]


def stimulus_table(stimulus_id: str, wave: np.ndarray, alignment: Any | None) -> pa.Table:
    """One ``stimuli`` row as an Arrow table with the layout's schema.

    Parameters
    ----------
    stimulus_id : str
        Identifier referenced by ``responses.stimulus_id``.
    wave : np.ndarray
        16 kHz mono float32 [samples].
    alignment : Alignment or None
        Words and phonemes with times (s from the start of the wave).
    """
    words = tokens_to_rows(alignment.words) if alignment is not None else []
    phonemes = tokens_to_rows(alignment.phonemes) if alignment is not None else []
    row = {
        "id": [stimulus_id],
        "audio": [encode_audio(wave, stimulus_id)],
        "sampling_rate": [SAMPLING_RATE],
        "n_samples": [int(len(wave))],
        "duration": [len(wave) / SAMPLING_RATE],
        "words": [words],
        "phonemes": [phonemes],
    }
    return pa.table(row, schema=stimuli_features().arrow_schema)


def bold_array(bold: np.ndarray) -> pa.Array:
    """Wrap float32 [T, V] as a one-row ``list<fixed_size_list<float32, V>>`` array (zero-copy)."""
    bold = np.ascontiguousarray(bold, dtype=np.float32)
    if bold.ndim != 2:
        raise ValueError(f"BOLD must be [TRs, voxels], got shape {bold.shape}")
    inner = pa.FixedSizeListArray.from_arrays(pa.array(bold.reshape(-1)), bold.shape[1])
    return pa.ListArray.from_arrays(pa.array([0, bold.shape[0]], pa.int32()), inner)


def read_bold(
    path: Path, row: int, shape: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """The BOLD of row ``row`` of a ``responses`` shard, float32 ``shape`` = (TRs, voxels).

    Read page by page into ``out`` (or a new array) by
    :func:`wav2brain.data.parquet_pages.read_float32_row`, which holds about one Parquet page
    besides the result; pyarrow's decoding of the nested cell would hold about 4x the run. A
    shard in a layout that reader does not index (a dictionary-encoded or nullable ``bold``
    written by another tool) is decoded with pyarrow instead, with the same result and checks.
    Raises a ValueError naming the file and row when the shard is unreadable or its ``bold``
    does not hold ``TRs x voxels`` values.
    """
    from wav2brain.data.parquet_pages import UnsupportedLayout, read_float32_row

    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be C-contiguous float32 {tuple(shape)}, got {out.dtype} {out.shape}"
        )
    try:
        return read_float32_row(path, "bold", row, out)
    except UnsupportedLayout:
        pass
    import pyarrow.compute as pc

    column = pq.read_table(path, columns=["bold"], pre_buffer=False, use_threads=False)["bold"]
    values = column.slice(row, 1).combine_chunks()
    values = values.storage if isinstance(values, pa.ExtensionArray) else values
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = pc.list_flatten(values)
    if len(values) != out.size or values.null_count:
        raise ValueError(
            f"{path} row {row}: bold holds {len(values)} values ({values.null_count} null), "
            f"expected {shape[0]} TRs x {shape[1]} voxels (n_trs, n_voxels columns)"
        )
    out.reshape(-1)[:] = values.to_numpy(zero_copy_only=False)
    return out


def response_table(meta: Mapping[str, Any], bold: np.ndarray, dropped: np.ndarray) -> pa.Table:
    """One ``responses`` row as an Arrow table.

    Parameters
    ----------
    meta : mapping
        subject, session, task, run, stimulus_id, onset (s, stimulus start in the stored scan),
        tr (s), space, and optionally mask (file of the mask whose voxels are the columns) and
        slice_time_reference (s into each TR at which it samples the brain; default 0, the
        acquisition start).
    bold : np.ndarray
        float32 [T, V].
    dropped : np.ndarray
        Indices (int) of the NaN/constant voxels of this run, stored as zeros in ``bold``.
    """
    columns = {
        key: pa.array([meta[key]], pa.string())
        for key in ("subject", "session", "task", "run", "stimulus_id")
    }
    columns.update(
        {
            "onset": pa.array([float(meta["onset"])], pa.float64()),
            "tr": pa.array([float(meta["tr"])], pa.float64()),
            REFERENCE_COLUMN: pa.array([float(meta.get(REFERENCE_COLUMN, 0.0))], pa.float64()),
            "n_trs": pa.array([bold.shape[0]], pa.int32()),
            "n_voxels": pa.array([bold.shape[1]], pa.int32()),
            "space": pa.array([meta["space"]], pa.string()),
            "mask": pa.array([meta.get("mask")], pa.string()),
            "dropped_voxels": pa.array([len(dropped)], pa.int32()),
            "dropped_voxel_indices": pa.array(
                [np.asarray(dropped, np.int32)], pa.list_(pa.int32())
            ),
            "bold": bold_array(bold),
        }
    )
    return pa.table(columns)


def write_shard(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to the Parquet file ``path`` atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    options = dict(PARQUET_OPTIONS)
    names = set(table.column_names)
    options["use_dictionary"] = [c for c in options["use_dictionary"] if c in names]
    options["use_byte_stream_split"] = [c for c in options["use_byte_stream_split"] if c in names]
    try:
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def shared_voxel_count(runs: Sequence[RunSummary]) -> int | None:
    """The voxel count shared by all runs, or None if runs differ."""
    counts = {run.n_voxels for run in runs}
    return counts.pop() if len(counts) == 1 else None


def table_pattern(name: str) -> str:
    """The ``data_files`` pattern of a table, relative to the folder (``responses/*.parquet``)."""
    return f"{name}/*.parquet"


@dataclass(frozen=True)
class TableFiles:
    """The files of one table as they are on disk when the card is written.

    Parameters
    ----------
    n_files : int
        Number of files.
    num_bytes : int
        Their total size (bytes).
    fingerprint : str
        SHA-256 (hex) over one line ``<path relative to the folder> <size> <SHA-256 of the
        content>`` per file, sorted by path: it changes when any file is added, removed,
        renamed or changed by one byte.
    """

    n_files: int
    num_bytes: int
    fingerprint: str


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's content, read in blocks (never the whole file in memory)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def files_fingerprint(out: Path, paths: Sequence[Path]) -> TableFiles:
    """Count, size and fingerprint (:class:`TableFiles`) of ``paths``, files under ``out``."""
    lines, total = [], 0
    for path in sorted(paths, key=lambda p: p.relative_to(out).as_posix()):
        size = path.stat().st_size
        lines.append(f"{path.relative_to(out).as_posix()}\t{size}\t{file_sha256(path)}\n")
        total += size
    digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    return TableFiles(n_files=len(lines), num_bytes=total, fingerprint=digest)


def table_files(out: Path, summary: DatasetSummary) -> dict[str, TableFiles]:
    """:class:`TableFiles` of each table of the folder ``out``, read from disk.

    A table's files are its Parquet shards (the ``configs`` pattern, :func:`table_pattern`);
    those of ``responses`` also include the mask images the card describes
    (``summary.mask["files"]``), since column ``j`` of ``bold`` means voxel ``j`` of its mask.
    """
    masks = [out / name for name in summary.mask.get("files", {})]
    return {
        name: files_fingerprint(
            out, sorted(out.glob(table_pattern(name))) + (masks if name == RESPONSES else [])
        )
        for name in (STIMULI, RESPONSES)
    }


def card_metadata(summary: DatasetSummary, text: CardText, files: Mapping[str, TableFiles]) -> dict:
    """The YAML header of the card: licence, tags, ``configs`` and ``dataset_info``.

    ``files`` gives each table's files on disk (:func:`table_files`): their size goes into
    ``dataset_info`` and their fingerprint into the ``description`` of the table's ``configs``
    entry, which ``datasets`` hashes into its cache key (see the module notes).
    """
    configs, infos = [], []
    tables = (
        (STIMULI, stimuli_features(), len(summary.stimuli)),
        (RESPONSES, responses_features(shared_voxel_count(summary.runs)), len(summary.runs)),
    )
    for name, features, n_rows in tables:
        configs.append(
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": table_pattern(name)}],
                "description": f"{FINGERPRINT_PREFIX}{files[name].fingerprint}",
            }
        )
        infos.append(
            {
                "config_name": name,
                "features": features._to_yaml_list(),
                "splits": [
                    {"name": "train", "num_bytes": files[name].num_bytes, "num_examples": n_rows}
                ],
            }
        )
    return {
        "pretty_name": text.pretty_name,
        "license": text.license,
        "tags": list(TAGS),
        "configs": configs,
        "dataset_info": infos,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def card_body(summary: DatasetSummary, text: CardText, files: Mapping[str, TableFiles]) -> str:
    """The markdown body of the card: source text, usage, files, tables of stimuli and runs."""
    subjects = sorted({run.subject for run in summary.runs})
    trs = sorted({run.tr for run in summary.runs})
    dropped = sum(run.dropped_voxels for run in summary.runs)
    run_rows = [
        (
            r.subject,
            r.session,
            r.task,
            r.run,
            r.stimulus_id,
            r.space,
            r.tr,
            r.n_trs,
            r.n_voxels,
            r.dropped_voxels,
            r.bold_file,
        )
        for r in summary.runs
    ]
    stim_rows = [
        (s.id, f"{s.duration:.2f}", s.n_words, s.n_phonemes, s.alignment or "none")
        for s in summary.stimuli
    ]
    unaligned = [s.id for s in summary.stimuli if s.alignment is None]
    parts = [
        f"# {text.pretty_name}",
        "Prepared with `wav2brain prepare`: audio-fMRI pairs in two tables. Each stimulus's "
        "audio is stored once (16 kHz mono, FLAC bytes in an `Audio(decode=False)` column); "
        "training windows are sliced on the fly by `wav2brain.data.windows.BrainWindows`.",
        text.source.strip(),
        "## Contents",
        f"- subjects: {len(subjects)} ({', '.join(subjects)})",
        f"- runs: {len(summary.runs)}; stimuli: {len(summary.stimuli)}",
        f"- TR (s): {', '.join(f'{tr:g}' for tr in trs)}",
        f"- stimuli without a word/phoneme alignment (no words or phonemes stored): "
        f"{len(unaligned)}" + (f" ({', '.join(unaligned)})" if unaligned else ""),
        f"- NaN or constant voxels dropped (stored as zeros, indices in "
        f"`dropped_voxel_indices`): {dropped} in total",
        "## Usage",
        "```python\n"
        "from datasets import load_dataset\n"
        'responses = load_dataset(DIR, "responses", split="train")  # BOLD float32 [T, V]\n'
        'stimuli = load_dataset(DIR, "stimuli", split="train")      # audio, words, phonemes\n'
        "from wav2brain.data.windows import BrainWindows, BrainWindowCollator\n"
        "windows = BrainWindows(stimuli, responses)  # item t: 6 TRs of audio ending at TR t\n"
        "windows = BrainWindows.for_model(DIR, model)  # the model's TR, history and subjects\n"
        "```",
        "Column `j` of `bold` is voxel `j` of the mask in C order; `onset` (s) is when the "
        "stimulus starts, counted from the first stored TR.",
        "## Timing",
        timing_text(summary.runs),
        "## Files",
        "Fingerprint: SHA-256 over one line (path, size in bytes, SHA-256 of the content) per "
        "file, sorted by path; the same value is the `description` of the table's `configs` "
        "entry, so the cache key of `datasets.load_dataset` changes whenever a file does.",
        markdown_table(
            ("table", "files", "bytes", "fingerprint"),
            [(name, f.n_files, f.num_bytes, f"`{f.fingerprint}`") for name, f in files.items()],
        ),
        "## Mask",
        "```json\n" + json.dumps(summary.mask, indent=2, sort_keys=True) + "\n```",
        "## Cleaning",
        "```json\n" + json.dumps(summary.cleaning, indent=2, sort_keys=True, default=str) + "\n```",
        "## Stimuli",
        markdown_table(("id", "duration (s)", "words", "phonemes", "alignment"), stim_rows),
        "## Runs",
        markdown_table(
            (
                "subject",
                "session",
                "task",
                "run",
                "stimulus",
                "space",
                "TR (s)",
                "TRs",
                "voxels",
                "dropped voxels",
                "file",
            ),
            run_rows,
        ),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def timing_text(runs: Sequence[RunSummary]) -> str:
    """The card's account of when each TR samples the brain: the rule and each reference used."""
    groups: dict[tuple[float, str], list[str]] = {}
    for run in runs:
        key = (float(run.slice_time_reference), run.slice_time_source)
        groups.setdefault(key, []).append(Path(run.shard).stem)
    lines = [
        "TR `k` of a run samples the brain at stimulus time "
        "`k * tr + slice_time_reference - onset` (s); `slice_time_reference` (column of "
        "`responses`) is the time into each TR at which its signal is taken "
        "(`wav2brain.data.timing`). Training windows end there and feature rows are sampled there."
    ]
    for (reference, source), names in sorted(groups.items()):
        which = "every run" if len(groups) == 1 else f"{len(names)} run(s): {', '.join(names)}"
        lines.append(f"- slice-time reference {reference:g} s, {source}: {which}")
    return "\n".join(lines)


def write_card(out: Path, summary: DatasetSummary, text: CardText) -> Path:
    """Write ``out/README.md`` (YAML header + markdown) atomically; call it last.

    The files of each table are read from disk here (:func:`table_files`), so the card's
    fingerprints describe exactly what a reader of the folder finds.
    """
    import yaml

    files = table_files(out, summary)
    metadata = card_metadata(summary, text, files)
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    body = card_body(summary, text, files)
    return write_text_atomic(f"---\n{header}---\n\n{body}", out / CARD_NAME)
