"""Training windows sliced on the fly from the ``stimuli`` and ``responses`` tables.

Item ``i`` is one (run, TR ``t``) pair: the ``history_trs * tr`` seconds of 16 kHz audio ending at
TR ``t`` and the BOLD of TR ``t``. Nothing is copied ahead of time: the audio of each stimulus is
decoded once (lazily, into a per-process cache; float32, 64 kB per second of audio) and the BOLD row
is read from the memory-mapped Arrow table of ``load_dataset``.

Timing convention
-----------------
TR ``t`` samples the brain at stimulus time ``t * tr + reference - onset`` (s), the rule of
:mod:`wav2brain.data.timing` that the features' TR grid follows too: volume ``t`` of the stored,
trimmed scan starts at scan time ``t * tr``, its signal is sampled ``reference`` seconds later (the
run's slice-time reference, column ``slice_time_reference``: 0 for raw data, about half a TR for
fMRIPrep output), and the stimulus starts at scan time ``onset``. The window ends at that time
minus ``lag_trs * tr`` (rounded to the nearest sample) and starts ``history_trs * tr`` seconds
earlier. A positive ``lag_trs`` pairs the BOLD with earlier audio (the haemodynamic delay); with the
default 0 the 9-s history itself spans the delay, as in Li et al. (2024).

Which TRs are items
-------------------
A TR is an item when its window ends inside the stimulus and its most recent TR bin is full of
stimulus audio, ``tr <= end <= duration``: the BOLD then follows audio the participant heard, every
window is at least one TR long (so the model's front end always has frames), and TRs after the end
of the story (whose audio would be silence we do not have) or before its start are left out. A window that starts before the stimulus
(the first ``history_trs`` TRs of the story) is shorter than ``history_trs * tr`` seconds: it holds
only the audio that exists, the collator right-pads it, and ``Wav2Vec2ForBrainEncoding`` flags the
TR bins without audio as empty (see ``modeling/tr_pooling.py``), which is what left padding means
here. ``WindowConfig.full_windows_only=True`` keeps only TRs whose whole window lies inside the
stimulus.

Audio normalisation
-------------------
With ``WindowConfig.do_normalize`` (a checkpoint pretrained on normalised audio, the lv60 family)
each window is normalised on its own with :func:`wav2brain.data.audio.normalize_audio`, before
padding, as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` normalises each input it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from wav2brain.data.audio import normalize_audio
from wav2brain.data.hf_layout import RESPONSES, SAMPLING_RATE, STIMULI, decode_audio
from wav2brain.data.timing import REFERENCE_COLUMN, sample_times, stored_references

MODEL_TR_TOLERANCE_S = 1e-3
"""Largest difference (s) between a run's TR and the model's TR (``WindowConfig.tr``)."""

MODEL_SETTINGS = ("tr", "history_trs", "do_normalize")
"""WindowConfig fields that :meth:`BrainWindows.for_model` takes from the model's config."""


@dataclass
class WindowConfig:
    """How windows are cut.

    Parameters
    ----------
    history_trs : int
        Length of the window (TRs); 6 TRs at TR 1.5 s give 9 s of audio.
    lag_trs : float
        Shift of the window end before TR ``t`` (TRs, may be fractional).
    sampling_rate : int
        Audio rate (Hz); must match the stored audio.
    full_windows_only : bool
        Keep only TRs whose whole window lies inside the stimulus.
    tr : float, optional
        TR (s) the model bins its input with (``Wav2Vec2BrainEncodingConfig.tr``). When given,
        every run must have this TR (to :data:`MODEL_TR_TOLERANCE_S`), because windows are cut
        with each run's own TR and a model binning them with another TR would silently drop or
        misplace audio.
    do_normalize : bool
        Normalise each window to zero mean and unit variance
        (:func:`~wav2brain.data.audio.normalize_audio`), as the checkpoint's feature extractor
        does with ``do_normalize=True``.
    """

    history_trs: int = 6
    lag_trs: float = 0.0
    sampling_rate: int = SAMPLING_RATE
    full_windows_only: bool = False
    tr: float | None = None
    do_normalize: bool = False

    def __post_init__(self) -> None:
        if self.history_trs < 1:
            raise ValueError(f"history_trs must be at least 1 TR, got {self.history_trs}")
        if self.tr is not None and not self.tr > 0:
            raise ValueError(f"tr must be a positive number of seconds, got {self.tr}")
        if self.sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be positive (Hz), got {self.sampling_rate}")


def _single_split(table: Any, name: str):
    """Accept a ``Dataset`` or a one-split ``DatasetDict``; refuse streaming datasets."""
    from datasets import Dataset as HFDataset
    from datasets import DatasetDict

    if isinstance(table, DatasetDict):
        if len(table) != 1:
            raise ValueError(f"{name}: expected one split, got {list(table)}; pass ds['train']")
        table = next(iter(table.values()))
    if not isinstance(table, HFDataset):
        raise ValueError(
            f"{name} must be a datasets.Dataset loaded without streaming=True (windows need "
            f"random access), got {type(table).__name__}"
        )
    return table


def _run_name(meta: Mapping[str, Sequence[Any]], row: int) -> str:
    """``sub-01_ses-1_task-x_run-2`` of response row ``row`` (entities that are set)."""
    parts = [("sub", "subject"), ("ses", "session"), ("task", "task"), ("run", "run")]
    return "_".join(f"{key}-{meta[col][row]}" for key, col in parts if meta[col][row] is not None)


def _bold_view(cell: pa.Array) -> np.ndarray:
    """Zero-copy float32 [T, V] view of a one-row ``bold`` array (Array2D or list of lists)."""
    if isinstance(cell, pa.ExtensionArray):
        cell = cell.storage
    rows = cell.flatten()  # the run's T inner lists (flatten honours the slice offset)
    values = rows.flatten()
    n_trs = len(rows)
    width = len(values) // n_trs if n_trs else 0
    if n_trs and width * n_trs != len(values):
        raise ValueError("bold rows have unequal lengths: expected [T, V] with a fixed V")
    return values.to_numpy(zero_copy_only=False).reshape(n_trs, width)


class BrainWindows(Dataset):
    """A map-style torch dataset of (audio window, BOLD at one TR) pairs.

    Parameters
    ----------
    stimuli, responses : datasets.Dataset
        The two tables of a prepared folder (``load_dataset(DIR, "stimuli", split="train")`` ...).
    config : WindowConfig
        Window length, lag and validity rule.
    subjects : sequence of str or mapping str -> int, optional
        Subject order for per-subject heads (``Wav2Vec2BrainEncodingConfig.subjects``); items then
        carry ``subject_ids``, the position of their subject. Without it items carry no subject
        id (what a single-head model takes); runs may still have different voxel counts, so that
        :attr:`subject_voxels` can size a per-subject model, which :meth:`for_model` then windows.

    Attributes
    ----------
    subject_voxels : dict of str to int
        Voxel count of each subject, in sorted subject order.

    Notes
    -----
    Items are dicts ``{"input_values": float32 [samples], "labels": float32 [V]}`` (+ an int
    ``subject_ids``), fed to :class:`BrainWindowCollator`; ``V`` is the subject's own voxel count.
    Keys are named after the arguments of ``Wav2Vec2ForBrainEncoding.forward`` because the
    ``Trainer`` drops item keys that ``forward`` does not take before collating.
    """

    def __init__(
        self,
        stimuli: Any,
        responses: Any,
        config: WindowConfig | None = None,
        subjects: Sequence[str] | Mapping[str, int] | None = None,
    ) -> None:
        self.config = config or WindowConfig()
        self.stimuli = _single_split(stimuli, STIMULI)
        self.responses = _single_split(responses, RESPONSES)
        self.subject_to_id = self._subject_ids(subjects)
        columns = ["subject", "session", "task", "run", "stimulus_id", "onset", "tr", "n_trs"]
        columns += ["n_voxels"]
        if REFERENCE_COLUMN in self.responses.column_names:
            columns.append(REFERENCE_COLUMN)
        meta = self.responses.select_columns(columns).to_dict()
        self._row_stimulus: list[str] = meta["stimulus_id"]
        self._row_subject: list[str] = meta["subject"]
        self._row_name = [_run_name(meta, row) for row in range(len(meta["subject"]))]
        self._row_tr = np.asarray(meta["tr"], dtype=np.float64)
        self._check_tr()
        self._row_onset = np.asarray(meta["onset"], dtype=np.float64)
        self._row_reference = stored_references(meta, f"{RESPONSES} table")
        self.subject_voxels = self._voxel_counts(meta["subject"], meta["n_voxels"])
        stimulus_meta = self.stimuli.select_columns(["id", "n_samples", "sampling_rate"]).to_dict()
        self._stimulus_row = {sid: i for i, sid in enumerate(stimulus_meta["id"])}
        self._stimulus_samples = dict(
            zip(stimulus_meta["id"], stimulus_meta["n_samples"], strict=True)
        )
        bad_rates = {
            sid: rate
            for sid, rate in zip(stimulus_meta["id"], stimulus_meta["sampling_rate"], strict=True)
            if rate != self.config.sampling_rate
        }
        if bad_rates:
            rates = ", ".join(f"{sid!r} at {rate} Hz" for sid, rate in bad_rates.items())
            raise ValueError(
                f"stimuli stored as {rates}; WindowConfig.sampling_rate is "
                f"{self.config.sampling_rate} Hz"
            )
        self._row_n_trs = np.asarray(meta["n_trs"], dtype=np.int64)
        self._index = self._build_index(meta["n_trs"])
        self._audio: dict[str, np.ndarray] = {}
        self._bold_cache: tuple[int, np.ndarray] | None = None
        self._responses_arrow = self.responses.with_format("arrow")

    def _check_tr(self) -> None:
        """Refuse runs whose TR differs from ``config.tr`` (when given), naming runs and TRs."""
        if self.config.tr is None:
            return
        off = np.flatnonzero(np.abs(self._row_tr - self.config.tr) > MODEL_TR_TOLERANCE_S)
        if off.size:
            runs = ", ".join(f"{self._row_name[i]} at TR {self._row_tr[i]} s" for i in off[:5])
            more = f" and {off.size - 5} more" if off.size > 5 else ""
            raise ValueError(
                f"{off.size} run(s) have a TR other than the model's TR (WindowConfig.tr="
                f"{self.config.tr} s): {runs}{more}; select runs of one TR or build the model "
                "with their TR"
            )

    def _subject_ids(self, subjects) -> dict[str, int] | None:
        if subjects is None:
            return None
        if isinstance(subjects, Mapping):
            return {str(k): int(v) for k, v in subjects.items()}
        return {str(s): i for i, s in enumerate(subjects)}

    def _voxel_counts(self, row_subjects: list[str], n_voxels: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for subject, count in zip(row_subjects, n_voxels, strict=True):
            if counts.setdefault(subject, count) != count:
                raise ValueError(
                    f"subject {subject!r} has runs with {counts[subject]} and {count} voxels; "
                    "expected one voxel count per subject"
                )
        counts = dict(sorted(counts.items()))
        if self.subject_to_id is not None:
            missing = sorted(set(counts) - set(self.subject_to_id))
            if missing:
                raise ValueError(
                    f"subjects {missing} of the responses are not in the subject mapping "
                    f"{sorted(self.subject_to_id)}"
                )
        return counts

    def window_samples(self, tr: float) -> int:
        """Full window length (samples) for a TR of ``tr`` seconds."""
        return round(self.config.history_trs * tr * self.config.sampling_rate)

    def tr_times(self, row: int, trs: np.ndarray | None = None) -> np.ndarray:
        """Stimulus time (s) at which TRs ``trs`` (default: all) of response row ``row`` sample
        the brain: :func:`wav2brain.data.timing.sample_times` with the row's TR, onset and
        slice-time reference."""
        trs = np.arange(self._row_n_trs[row]) if trs is None else trs
        tr = float(self._row_tr[row])
        return sample_times(trs, tr, float(self._row_onset[row]), float(self._row_reference[row]))

    def _window_end(self, row: int, trs: np.ndarray) -> np.ndarray:
        """Window end (samples into the stimulus) of TRs ``trs`` of response row ``row``."""
        end_s = self.tr_times(row, trs) - self.config.lag_trs * self._row_tr[row]
        return np.round(end_s * self.config.sampling_rate).astype(np.int64)

    def window_bounds(self, index: int) -> tuple[int, int]:
        """Samples ``[start, end)`` of the stimulus that item ``index`` holds."""
        row, t = self.locate(index)
        end = int(self._window_end(row, np.array([t]))[0])
        return max(end - self.window_samples(self._row_tr[row]), 0), end

    def window_key(self, index: int) -> tuple[str, int, int]:
        """``(stimulus_id, start, end)``: the audio item ``index`` holds. Items of equal keys
        have the same input (every subject who heard a story at that TR)."""
        row, _ = self.locate(index)
        return (self._row_stimulus[row], *self.window_bounds(index))

    def _build_index(self, n_trs: list[int]) -> np.ndarray:
        """[items, 2] int64 array of (response row, TR) pairs, following the validity rule."""
        pieces = []
        for row, count in enumerate(n_trs):
            sid = self._row_stimulus[row]
            if sid not in self._stimulus_samples:
                raise ValueError(
                    f"response row {row} (subject {self._row_subject[row]!r}) refers to stimulus "
                    f"{sid!r}, which is not in the stimuli table ({sorted(self._stimulus_samples)})"
                )
            trs = np.arange(count, dtype=np.int64)
            end = self._window_end(row, trs)
            if self.config.full_windows_only:
                valid = end - self.window_samples(self._row_tr[row]) >= 0
            else:
                valid = end >= round(self._row_tr[row] * self.config.sampling_rate)
            valid &= end <= self._stimulus_samples[sid]
            pieces.append(np.stack([np.full(valid.sum(), row), trs[valid]], axis=1))
        return np.concatenate(pieces) if pieces else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def locate(self, index: int) -> tuple[int, int]:
        """(response row, TR) of item ``index``."""
        row, tr = self._index[index]
        return int(row), int(tr)

    def audio(self, stimulus_id: str) -> np.ndarray:
        """Decoded 16 kHz float32 audio of a stimulus (cached after the first call)."""
        wave = self._audio.get(stimulus_id)
        if wave is None:
            cell = self.stimuli[self._stimulus_row[stimulus_id]]["audio"]
            wave = decode_audio(cell, self.config.sampling_rate)
            self._audio[stimulus_id] = wave
        return wave

    def bold(self, row: int) -> np.ndarray:
        """float32 [T, V] view of the BOLD of response row ``row`` (no copy for memory-mapped data)."""
        if self._bold_cache is None or self._bold_cache[0] != row:
            cell = self._responses_arrow[row]["bold"]
            self._bold_cache = (row, _bold_view(cell.chunk(0)))
        return self._bold_cache[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, t = self.locate(index)
        wave = self.audio(self._row_stimulus[row])
        start, end = self.window_bounds(index)
        window = np.array(wave[start:end], dtype=np.float32)
        item: dict[str, Any] = {
            "input_values": normalize_audio(window) if self.config.do_normalize else window,
            "labels": np.array(self.bold(row)[t], dtype=np.float32),
        }
        if self.subject_to_id is not None:
            item["subject_ids"] = self.subject_to_id[self._row_subject[row]]
        return item

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        config: WindowConfig | None = None,
        subjects: Sequence[str] | Mapping[str, int] | None = None,
        **load_kwargs: Any,
    ) -> BrainWindows:
        """Load both tables of a prepared folder with ``datasets.load_dataset`` and window them."""
        from datasets import load_dataset

        stimuli = load_dataset(str(folder), STIMULI, split="train", **load_kwargs)
        responses = load_dataset(str(folder), RESPONSES, split="train", **load_kwargs)
        return cls(stimuli, responses, config=config, subjects=subjects)

    @classmethod
    def for_model(
        cls,
        folder: str | Path,
        model: Any,
        *,
        load_kwargs: Mapping[str, Any] | None = None,
        selected: Mapping[str, int] | None = None,
        **options: Any,
    ) -> BrainWindows:
        """Windows of a prepared folder cut for ``model``: its TR, history and audio scaling.

        Parameters
        ----------
        folder : str or Path
            A prepared dataset folder.
        model : Wav2Vec2ForBrainEncoding or its config
            ``tr`` (s), ``history_trs`` (TRs), ``do_normalize`` (False when the config has no
            such field) and the subjects with their voxel counts (``subjects`` /
            ``subject_voxels``, or ``num_voxels`` for a single head) come from ``model.config``.
        load_kwargs : mapping, optional
            Passed to ``datasets.load_dataset`` (``cache_dir``, ...).
        selected : mapping subject -> int, optional
            Voxels each subject's head predicts when the model was trained on a voxel selection
            (the caller slices the labels); default each subject's whole BOLD.
        **options
            The other :class:`WindowConfig` fields (``lag_trs``, ``full_windows_only``, ...).

        Raises
        ------
        ValueError
            An option the model decides (``tr``, ``history_trs``, ``do_normalize``); runs of
            another TR than the model's (each run named with both TRs); subjects the model has no
            head for; a subject whose voxel count differs from its head's.
        """
        config = getattr(model, "config", model)
        decided = sorted(set(options) & set(MODEL_SETTINGS))
        if decided:
            raise ValueError(
                f"for_model takes {decided} from the model's config; do not pass them (use "
                "BrainWindows.from_folder with a WindowConfig to choose them yourself)"
            )
        window_config = WindowConfig(
            tr=float(config.tr),
            history_trs=int(config.history_trs),
            do_normalize=bool(getattr(config, "do_normalize", False)),
            **options,
        )
        subjects = getattr(config, "subjects", None)
        windows = cls.from_folder(folder, window_config, subjects=subjects, **(load_kwargs or {}))
        heads = getattr(config, "subject_voxels", None)
        if heads is None:
            heads = {subject: config.num_voxels for subject in windows.subject_voxels}
        counts = dict(windows.subject_voxels)
        if selected is not None:
            counts = {subject: int(selected[subject]) for subject in counts}
        wrong = {
            subject: (count, heads[subject])
            for subject, count in counts.items()
            if heads[subject] != count
        }
        if wrong:
            what = "selected voxels" if selected is not None else "voxels in the data"
            shown = ", ".join(
                f"subject {s!r}: {data} {what}, {head} in the model's head"
                for s, (data, head) in wrong.items()
            )
            raise ValueError(f"{folder}: voxel counts differ from the model's heads: {shown}")
        return windows


@dataclass
class BrainWindowCollator:
    """Batch :class:`BrainWindows` items for ``Wav2Vec2ForBrainEncoding`` and the ``Trainer``.

    Audio is right-padded with zeros to the longest window of the batch; ``attention_mask`` is 1 on
    real samples, so the model knows where each window ends. Labels are zero-padded to the widest
    subject of the batch, the width of the predictions ``Wav2Vec2ForBrainEncoding`` returns for
    those subjects (it masks each example's voxels beyond its own subject's count): a batch that
    holds only a 5-voxel subject has 5-wide labels, even when another subject has 9 voxels.

    Parameters
    ----------
    label_width : int, optional
        The widest labels allowed (voxels): the model's ``num_voxels``, its widest head. A batch
        with wider labels is refused (data with more voxels than any head of the model).
    return_attention_mask : bool
        Whether to return ``attention_mask`` [B, samples].
    """

    label_width: int | None = None
    return_attention_mask: bool = True

    def __post_init__(self) -> None:
        if self.label_width is not None and self.label_width < 1:
            raise ValueError(f"label_width must be a positive voxel count, got {self.label_width}")

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(item["input_values"]) for item in items]
        widths = [len(item["labels"]) for item in items]
        width = max(widths)
        if self.label_width is not None and width > self.label_width:
            raise ValueError(
                f"labels have {width} voxels, more than label_width={self.label_width} (the "
                "model's widest head)"
            )
        audio = torch.zeros(len(items), max(lengths), dtype=torch.float32)
        mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
        labels = torch.zeros(len(items), width, dtype=torch.float32)
        for b, item in enumerate(items):
            audio[b, : lengths[b]] = torch.as_tensor(item["input_values"])
            mask[b, : lengths[b]] = 1
            labels[b, : widths[b]] = torch.as_tensor(item["labels"])
        batch = {"input_values": audio, "labels": labels}
        if self.return_attention_mask:
            batch["attention_mask"] = mask
        if "subject_ids" in items[0]:
            batch["subject_ids"] = torch.tensor(
                [item["subject_ids"] for item in items], dtype=torch.long
            )
        return batch
