"""Training windows sliced on the fly from the ``stimuli`` and ``responses`` tables.

Item ``i`` is one (run, TR ``t``) pair: the ``history_trs * tr`` seconds of 16 kHz audio ending at
TR ``t`` and the BOLD of TR ``t``. Nothing is copied ahead of time: the audio of each stimulus is
decoded once (lazily, into a per-process cache; float32, 64 kB per second of audio) and the BOLD row
is read from the memory-mapped Arrow table of ``load_dataset``.

Timing convention
-----------------
TR ``t`` is acquired at scan time ``t * tr`` (s, the time of the volume in the stored, trimmed scan;
nilearn's ``frame_times`` with ``slice_time_ref = 0``). The stimulus starts at scan time ``onset``,
so the window ends at stimulus time ``end = t * tr - onset - lag_trs * tr`` (s) and starts
``history_trs * tr`` seconds earlier. A positive ``lag_trs`` pairs the BOLD with earlier audio
(the haemodynamic delay); with the default 0 the 9-s history itself spans the delay, as in Li et al.
(2024).

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

from wav2brain.data.hf_layout import RESPONSES, SAMPLING_RATE, STIMULI, decode_audio


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
        every run must have this TR (to 1 ms), because windows are cut with each run's own TR and
        a model binning them with another TR would silently drop or misplace audio.
    """

    history_trs: int = 6
    lag_trs: float = 0.0
    sampling_rate: int = SAMPLING_RATE
    full_windows_only: bool = False
    tr: float | None = None

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
        carry ``subject_ids``, the position of their subject. Without it, all runs must share one
        voxel count and items carry no subject id.

    Notes
    -----
    Items are dicts ``{"input_values": float32 [samples], "labels": float32 [V]}`` (+ an int
    ``subject_ids``), fed to :class:`BrainWindowCollator`. Keys are named after the arguments of
    ``Wav2Vec2ForBrainEncoding.forward`` because the ``Trainer`` drops item keys that ``forward``
    does not take before collating.
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
        meta = self.responses.select_columns(
            ["subject", "stimulus_id", "onset", "tr", "n_trs", "n_voxels"]
        ).to_dict()
        self._row_stimulus: list[str] = meta["stimulus_id"]
        self._row_subject: list[str] = meta["subject"]
        self._row_tr = np.asarray(meta["tr"], dtype=np.float64)
        self._check_tr(meta)
        self._row_onset = np.asarray(meta["onset"], dtype=np.float64)
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
        self._index = self._build_index(meta["n_trs"])
        self._audio: dict[str, np.ndarray] = {}
        self._bold_cache: tuple[int, np.ndarray] | None = None
        self._responses_arrow = self.responses.with_format("arrow")

    def _check_tr(self, meta: dict[str, list]) -> None:
        """Refuse runs whose TR differs from ``config.tr`` (when given) by more than 1 ms."""
        if self.config.tr is None:
            return
        off = np.flatnonzero(np.abs(self._row_tr - self.config.tr) > 1e-3)
        if off.size:
            runs = ", ".join(
                f"subject {meta['subject'][i]!r} / {meta['stimulus_id'][i]!r} at {self._row_tr[i]} s"
                for i in off[:5]
            )
            raise ValueError(
                f"{off.size} run(s) have a TR other than WindowConfig.tr={self.config.tr} s "
                f"(the model's TR): {runs}; select runs of one TR or build the model with their TR"
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
        if self.subject_to_id is None:
            if len(set(counts.values())) > 1:
                raise ValueError(
                    f"runs have different voxel counts {counts}: pass subjects=[...] for "
                    "per-subject heads, or select one subject's runs"
                )
        else:
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

    def _window_end(self, row: int, trs: np.ndarray) -> np.ndarray:
        """Window end (samples into the stimulus) of TRs ``trs`` of response row ``row``."""
        tr = self._row_tr[row]
        end_s = trs * tr - self._row_onset[row] - self.config.lag_trs * tr
        return np.round(end_s * self.config.sampling_rate).astype(np.int64)

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
        end = int(self._window_end(row, np.array([t]))[0])
        start = max(end - self.window_samples(self._row_tr[row]), 0)
        item: dict[str, Any] = {
            "input_values": np.array(wave[start:end], dtype=np.float32),
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


@dataclass
class BrainWindowCollator:
    """Batch :class:`BrainWindows` items for ``Wav2Vec2ForBrainEncoding`` and the ``Trainer``.

    Audio is right-padded with zeros to the longest window of the batch; ``attention_mask`` is 1 on
    real samples, so the model knows where each window ends.

    Parameters
    ----------
    label_width : int, optional
        Width (voxels) of ``labels``; defaults to the largest voxel count in the batch. Labels of
        subjects with fewer voxels are zero-padded (the model masks them by subject).
    return_attention_mask : bool
        Whether to return ``attention_mask`` [B, samples].
    """

    label_width: int | None = None
    return_attention_mask: bool = True

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(item["input_values"]) for item in items]
        widths = [len(item["labels"]) for item in items]
        width = self.label_width if self.label_width is not None else max(widths)
        if max(widths) > width:
            raise ValueError(f"labels have {max(widths)} voxels, more than label_width={width}")
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
