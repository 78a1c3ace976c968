"""The recipe's data: windows of a prepared dataset, split by story, with a voxel selection.

:class:`RecipeData` resolves everything the model depends on before any training (the TR, the
subjects and their selected voxel counts) and lists each window item as (response row, TR, audio
source) so that the same items feed the audio path (:class:`AudioItems`) and the cached path
(:class:`PooledItems`, see :mod:`wav2brain.training.cache`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wav2brain.data.audio import normalize_audio
from wav2brain.data.windows import (
    MODEL_TR_TOLERANCE_S,
    BrainWindowCollator,
    BrainWindows,
    WindowConfig,
)
from wav2brain.training.splits import Splits, choose_splits, unit_of

SELECTION_SUFFIXES = (".txt", ".npy", ".nii.gz", ".nii")
"""File types of a per-subject voxel selection (``sub-<label><suffix>`` in a folder)."""


def subject_selection_file(folder: Path, subject: str) -> Path:
    """The one file of a voxel-selection ``folder`` that holds ``subject``'s selection.

    Raises
    ------
    FileNotFoundError
        None or several of ``sub-<subject>.txt / .npy / .nii.gz / .nii``, naming what was found.
    """
    found = [
        folder / f"sub-{subject}{suffix}"
        for suffix in SELECTION_SUFFIXES
        if (folder / f"sub-{subject}{suffix}").is_file()
    ]
    if len(found) != 1:
        raise FileNotFoundError(
            f"voxel_selection folder {folder}: expected one file sub-{subject}.txt / "
            f".npy / .nii.gz for subject {subject!r}, found {[f.name for f in found]}"
        )
    return found[0]


def read_voxel_selection(path: str | Path, dataset: str | Path, n_voxels: int) -> np.ndarray:
    """Column indices (sorted, unique) into the BOLD rows selected by ``path``.

    ``path`` is a NIfTI ROI on the grid of the dataset's ``mask.nii.gz`` (nonzero = selected;
    columns are the mask's voxels in C order, the prepared layout) or a text / ``.npy`` file of
    column indices.

    Raises
    ------
    FileNotFoundError
        ``path`` (or the dataset's mask for a NIfTI ROI) is missing.
    ValueError
        An ROI on another grid, an empty selection, or indices outside ``[0, n_voxels)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"voxel_selection {path} not found")
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        mask_path = Path(dataset) / "mask.nii.gz"
        if not mask_path.is_file():
            raise FileNotFoundError(
                f"voxel_selection {path} is a NIfTI ROI, but {mask_path} (the dataset's voxel "
                "order) is missing; give column indices (.txt / .npy) instead"
            )
        mask_img, roi_img = nib.load(str(mask_path)), nib.load(str(path))
        if roi_img.shape[:3] != mask_img.shape[:3] or not np.allclose(
            roi_img.affine, mask_img.affine
        ):
            raise ValueError(
                f"voxel_selection {path} has shape {roi_img.shape[:3]} on another grid than the "
                f"dataset's mask {mask_path} {mask_img.shape[:3]}: resample the ROI to the mask"
            )
        mask = np.asarray(mask_img.dataobj) > 0
        if int(mask.sum()) != n_voxels:
            raise ValueError(
                f"{mask_path} has {int(mask.sum())} voxels but the BOLD rows have {n_voxels} "
                "(voxels dropped at prepare): give column indices (.txt / .npy) instead of an ROI"
            )
        columns = np.flatnonzero(np.asarray(roi_img.dataobj)[mask] != 0)
    else:
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
        columns = np.asarray(values)
        if columns.ndim != 1 or not np.all(np.equal(np.mod(columns, 1), 0)):
            raise ValueError(f"voxel_selection {path}: expected a list of integer column indices")
        columns = np.unique(columns.astype(np.int64))
        bad = columns[(columns < 0) | (columns >= n_voxels)]
        if bad.size:
            raise ValueError(
                f"voxel_selection {path}: column(s) {bad[:5].tolist()} outside [0, {n_voxels})"
            )
    if columns.size == 0:
        raise ValueError(f"voxel_selection {path} selects no voxel of the dataset")
    return columns


def selected_columns(
    voxel_selection: str | Path | None, dataset: str | Path, counts: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Each subject's selected columns of its BOLD (sorted, unique), or all of them (None).

    ``voxel_selection`` is one file for every subject (:func:`read_voxel_selection`) or a folder
    of ``sub-<label>`` files (:func:`subject_selection_file`); ``counts`` gives each subject's
    column count.
    """
    if voxel_selection is None:
        return {s: np.arange(n) for s, n in counts.items()}
    selection = Path(voxel_selection)
    if not selection.is_dir():
        return {s: read_voxel_selection(selection, dataset, n) for s, n in counts.items()}
    return {
        subject: read_voxel_selection(subject_selection_file(selection, subject), dataset, count)
        for subject, count in counts.items()
    }


@dataclass(frozen=True)
class WindowItem:
    """One training example: response ``row``, TR ``t`` and the audio it is paired with."""

    row: int
    t: int
    stimulus: str
    start: int
    end: int


class RecipeData:
    """Windows of ``dataset`` for a model of ``tr`` / ``history_trs``, split and voxel-selected.

    Parameters
    ----------
    dataset : str or Path
        A prepared dataset folder.
    window_config : WindowConfig
        With ``tr`` set (the model's TR): runs of another TR are refused, naming them.
    splits_options : mapping
        Keyword arguments of :func:`~wav2brain.training.splits.choose_splits` (with
        ``split_by``).
    subjects : sequence of str, optional
        Subjects to keep (default all); unknown ones are refused.
    voxel_selection : str or Path, optional
        See :func:`read_voxel_selection`.
    shuffle_train_stories : bool
        Pair each training run with the audio of the next training story (cyclically): the
        chance-level control. Needs at least two training stories (``split_by="stimulus"``).
    """

    def __init__(
        self,
        dataset: str | Path,
        window_config: WindowConfig,
        splits_options: Mapping[str, Any],
        *,
        subjects: Sequence[str] | None = None,
        voxel_selection: str | Path | None = None,
        shuffle_train_stories: bool = False,
    ) -> None:
        self.dataset = Path(dataset)
        self.windows = BrainWindows.from_folder(self.dataset, window_config)
        available = sorted(self.windows.subject_voxels)
        self.subjects = list(subjects) if subjects else available
        unknown = sorted(set(self.subjects) - set(available))
        if unknown:
            raise ValueError(
                f"{self.dataset}: subject(s) {unknown} not in the dataset ({available})"
            )
        self.columns = self._columns(voxel_selection)
        meta = self.windows.responses.select_columns(["subject", "stimulus_id", "run"]).to_dict()
        self._row_subject = meta["subject"]
        self._row_stimulus = meta["stimulus_id"]
        split_by = splits_options.get("split_by", "stimulus")
        row_unit = [
            unit_of(split_by, stim, run)
            for stim, run in zip(meta["stimulus_id"], meta["run"], strict=True)
        ]
        kept_rows = [r for r, s in enumerate(meta["subject"]) if s in self.subjects]
        self.splits: Splits = choose_splits([row_unit[r] for r in kept_rows], **splits_options)
        substitute = self._substitutes(shuffle_train_stories, split_by)
        self.items: dict[str, list[WindowItem]] = {"train": [], "validation": [], "test": []}
        kept = set(kept_rows)
        for index in range(len(self.windows)):
            row, t = self.windows.locate(index)
            if row not in kept:
                continue
            split = self.splits.split_of(row_unit[row])
            start, end = self.windows.window_bounds(index)
            stimulus = self._row_stimulus[row]
            if split == "train" and stimulus in substitute:
                stimulus = substitute[stimulus]
                if end > len(self.windows.audio(stimulus)):
                    continue  # the substitute story is shorter: no audio for this TR
            self.items[split].append(WindowItem(row, t, stimulus, start, end))

    def _columns(self, voxel_selection: str | Path | None) -> dict[str, np.ndarray]:
        counts = {s: self.windows.subject_voxels[s] for s in self.subjects}
        return selected_columns(voxel_selection, self.dataset, counts)

    def _substitutes(self, shuffle: bool, split_by: str) -> dict[str, str]:
        if not shuffle:
            return {}
        stories = sorted(self.splits.train)
        if split_by != "stimulus" or len(stories) < 2:
            raise ValueError(
                "shuffle_train_stories needs split_by='stimulus' and at least two training "
                f"stories, got split_by={split_by!r} and train={stories}"
            )
        return {story: stories[(i + 1) % len(stories)] for i, story in enumerate(stories)}

    @property
    def subject_voxels(self) -> dict[str, int]:
        """Selected voxel count of each subject (the model's heads)."""
        return {s: int(len(c)) for s, c in self.columns.items()}

    @property
    def tr(self) -> float:
        """The (single) TR of the dataset's runs (s)."""
        return float(self.windows.config.tr)

    def subject_of(self, item: WindowItem) -> str:
        """Subject of an item."""
        return self._row_subject[item.row]

    def labels(self, item: WindowItem) -> np.ndarray:
        """Selected BOLD (float32 ``[V_subject]``) of an item."""
        bold = self.windows.bold(item.row)[item.t]
        return np.asarray(bold[self.columns[self.subject_of(item)]], dtype=np.float32)

    def audio(self, item: WindowItem) -> np.ndarray:
        """The audio window of an item (float32, normalised when the model expects it)."""
        window = np.array(
            self.windows.audio(item.stimulus)[item.start : item.end], dtype=np.float32
        )
        return normalize_audio(window) if self.windows.config.do_normalize else window


def dataset_tr(dataset: str | Path) -> float:
    """The one TR (s) of a prepared dataset's runs; refuses datasets mixing TRs, naming them."""
    windows = BrainWindows.from_folder(dataset)
    trs = np.asarray(windows.responses["tr"], dtype=np.float64)
    if np.ptp(trs) > MODEL_TR_TOLERANCE_S:
        values = sorted({round(float(t), 4) for t in trs})
        raise ValueError(
            f"{dataset}: runs have several TRs {values}; a model bins audio with one TR: "
            "prepare runs of one TR per dataset"
        )
    return float(trs[0])


class AudioItems(Dataset):
    """Items of one split as audio windows (the end-to-end path)."""

    def __init__(self, data: RecipeData, split: str, subjects: Sequence[str]) -> None:
        self.data = data
        self.items = data.items[split]
        self.subject_to_id = {s: i for i, s in enumerate(subjects)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {
            "input_values": self.data.audio(item),
            "labels": self.data.labels(item),
            "subject_ids": self.subject_to_id[self.data.subject_of(item)],
        }


class PooledItems(Dataset):
    """Items of one split as cached TR-pooled hidden states (stage 1 from the cache)."""

    def __init__(self, data: RecipeData, split: str, subjects: Sequence[str], cache: Any) -> None:
        self.data = data
        self.items = data.items[split]
        self.subject_to_id = {s: i for i, s in enumerate(subjects)}
        self.cache = cache

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        states, valid = self.cache.lookup(item)
        return {
            "pooled_hidden_states": states,
            "valid_bins": valid,
            "labels": self.data.labels(item),
            "subject_ids": self.subject_to_id[self.data.subject_of(item)],
        }


@dataclass
class RecipeCollator:
    """Batches audio items (:class:`BrainWindowCollator`) or pooled items (stacked)."""

    label_width: int | None = None

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if "pooled_hidden_states" not in items[0]:
            return BrainWindowCollator(label_width=self.label_width)(items)
        width = max(len(item["labels"]) for item in items)
        labels = torch.zeros(len(items), width, dtype=torch.float32)
        for b, item in enumerate(items):
            labels[b, : len(item["labels"])] = torch.as_tensor(item["labels"])
        return {
            "pooled_hidden_states": torch.stack(
                [
                    torch.as_tensor(np.asarray(i["pooled_hidden_states"], dtype=np.float32))
                    for i in items
                ]
            ),
            "valid_bins": torch.stack(
                [torch.tensor(np.asarray(i["valid_bins"])) for i in items]  # copied: memory-mapped
            ),
            "labels": labels,
            "subject_ids": torch.tensor([i["subject_ids"] for i in items], dtype=torch.long),
        }
