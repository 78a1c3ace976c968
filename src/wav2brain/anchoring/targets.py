"""Targets besides voxels: region and network time courses, one family of tests each.

A :class:`TargetFamily` is a set of named time courses of one subject (``[TRs, regions]``, runs
stacked like the BOLD). Families come from

- a parcellation (``wav2brain.anchoring.networks.Parcellation``, read through its ``kind``,
  ``names``, ``labels`` and ``source`` only): each region's time course is the mean of its voxels'
  BOLD (:func:`region_timecourses`); the labels also name the region of each AN's best voxel;
- time courses given as they are (functional networks, e.g. the per-subject CanICA/DictLearning
  time courses of :func:`wav2brain.anchoring.networks.functional_networks`).

Each family is coupled with the ANs by the same statistics as the voxels
(:func:`~wav2brain.anchoring.coupling.couple`), with its own BH-FDR and FWER: regions and voxels
are different questions, and pooling the few region tests with the many voxel tests would let
the voxels set the regions' threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TargetFamily:
    """Named time courses of one subject: float32 ``[TRs, len(names)]``.

    ``labels`` (int [voxels], -1 unlabelled) when the family comes from a parcellation.
    """

    name: str
    kind: str
    names: tuple[str, ...]
    values: np.ndarray
    source: str
    labels: np.ndarray | None = None


def check_labels(parcellation, n_voxels: int, subject: str) -> np.ndarray:
    """A parcellation's labels as int64 [n_voxels], checked against the subject's voxels."""
    labels = np.asarray(parcellation.labels)
    if labels.ndim != 1 or labels.size != n_voxels:
        raise ValueError(
            f"parcellation {parcellation.source!r} ({parcellation.kind}) labels "
            f"{labels.size} voxels but sub-{subject}'s BOLD has {n_voxels}"
        )
    labels = labels.astype(np.int64)
    bad = (labels < -1) | (labels >= len(parcellation.names))
    if bad.any():
        raise ValueError(
            f"parcellation {parcellation.source!r}: labels must be -1 or in [0, "
            f"{len(parcellation.names)}), got {sorted(set(labels[bad].tolist()))[:5]}"
        )
    return labels


def region_timecourses(bold: np.ndarray, labels: np.ndarray, n_regions: int) -> np.ndarray:
    """Mean BOLD of each region's voxels: float32 [TRs, n_regions] (0 for an empty region)."""
    inside = labels >= 0
    membership = np.zeros((bold.shape[1], n_regions), dtype=np.float32)
    membership[np.nonzero(inside)[0], labels[inside]] = 1.0
    sizes = membership.sum(0)
    return (bold @ membership) / np.maximum(sizes, 1.0)


def family_names(parcellations: Sequence, extra: Mapping[str, object]) -> list[str]:
    """Unique family names: a parcellation's kind (``roi``, ``network``; numbered when repeated)."""
    kinds = [p.kind for p in parcellations]
    names = []
    for i, kind in enumerate(kinds):
        names.append(kind if kinds.count(kind) == 1 else f"{kind}{i + 1}")
    clash = sorted(set(names) & set(extra))
    if clash:
        raise ValueError(f"target families {clash} given both as parcellations and time courses")
    return names + list(extra)


@dataclass(frozen=True)
class Timecourses:
    """Time courses given per subject and run (functional networks), one family.

    Attributes
    ----------
    names : tuple of str
        One per column.
    runs : mapping of subject to a sequence of float arrays [run TRs, len(names)]
        In the order of the subject's runs in the responses table.
    kind : str
        ``"network"`` by default.
    source : str
    stages : tuple of str
        Stage of each network (``auditory``, ``higher-order``, ``other``; empty: unknown).
    """

    names: tuple[str, ...]
    runs: Mapping[str, Sequence[np.ndarray]]
    kind: str = "network"
    source: str = "time courses"
    stages: tuple[str, ...] = ()

    def stacked(self, subject: str, lengths: Sequence[int]) -> np.ndarray:
        """One subject's runs stacked [TRs, names], checked against the runs' TR counts."""
        if subject not in self.runs:
            raise ValueError(f"{self.source}: no time courses for sub-{subject}")
        parts = [np.asarray(v, dtype=np.float32) for v in self.runs[subject]]
        shapes = [p.shape for p in parts]
        expected = [(int(n), len(self.names)) for n in lengths]
        if shapes != expected:
            raise ValueError(
                f"{self.source}: sub-{subject} time courses have shapes {shapes}, expected "
                f"{expected} (the runs' TRs x {len(self.names)} networks)"
            )
        return np.concatenate(parts)
