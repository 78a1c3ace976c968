"""The scan-time convention: when TR ``k`` of a run samples the brain, in stimulus time.

One rule, used by :class:`~wav2brain.data.windows.BrainWindows` and the features' TR grid
(:func:`wav2brain.features.resample.run_grid`), so that a training window and a feature row of
the same TR can never disagree.

Convention
----------
Volume ``k`` of a stored (trimmed) run is acquired from scan time ``k * tr`` (s); its signal is
taken to be sampled ``reference_s`` seconds later (the slice-time reference, nilearn's
``slice_time_ref`` times the TR). The stimulus's first sample plays at scan time ``onset`` (s).
So TR ``k`` samples the brain at stimulus time

    t_k = k * tr + reference_s - onset.

The reference comes from the data (:func:`slice_time_reference`): a slice-time corrected image
(fMRIPrep's ``SliceTimingCorrected: true``) was interpolated to ``StartTime`` seconds into each
volume (fMRIPrep: the middle of the slice times, about half a TR); otherwise no slice was moved and
the reference is 0, the acquisition start, because the raw ``SliceTiming`` differs per slice and
no single time is right for every voxel. ``prepare`` stores the reference of each run in the
``responses`` column :data:`REFERENCE_COLUMN` (s), can override it for a whole dataset, and writes the
choice (value and reason, per group of runs) in the dataset card; every reader takes it from there
(:func:`stored_references`).

Folders prepared before the column existed are read with a reference of 0, with a warning: every
earlier version of wav2brain sampled TR ``k`` at the acquisition start, so 0 is what their windows
and features were built with; refusing them would only force a re-preparation that changes nothing
for raw data (and the warning tells the user of slice-time corrected data to re-prepare).

TR sources
----------
The TR may come from a mapping table, a BIDS sidecar and the image header;
:func:`check_tr` compares every one that exists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TR_RANGE_S: tuple[float, float] = (0.2, 20.0)
"""Plausible repetition times (s); a value outside is almost certainly a unit error (ms)."""

TR_TOLERANCE: float = 0.01
"""Largest relative disagreement between two sources of one run's TR (1 %)."""

REFERENCE_NONE = "acquisition start (no slice-timing correction)"
REFERENCE_CORRECTED = "slice-time corrected (sidecar StartTime)"
REFERENCE_USER = "set by the user: prepare --slice-time-reference"

REFERENCE_COLUMN = "slice_time_reference"
"""Column of the ``responses`` table holding each run's slice-time reference (s, float64)."""


def check_tr(sources: Mapping[str, float | None], where: str) -> float:
    """The TR (s) of a run, checked across every source that gives one.

    Parameters
    ----------
    sources : mapping of str to float or None
        Source description (``"mapping table runs.tsv row 3"``, ``"sidecar sub-01_bold.json"``,
        ``"NIfTI header sub-01_bold.nii.gz"``) to its TR in seconds; None means the source is
        silent. The first source that gives a value is the one returned.
    where : str
        The run, for the error message.

    Raises
    ------
    ValueError
        When no source gives a TR, a value lies outside :data:`TR_RANGE_S`, or two sources
        disagree by more than :data:`TR_TOLERANCE`; the message names every source and value.
    """
    given = {name: value for name, value in sources.items() if value is not None}
    listing = ", ".join(f"{name}: {value!r}" for name, value in given.items())
    if not given:
        raise ValueError(f"{where}: no TR found (looked in {', '.join(sources) or 'nothing'})")
    low, high = TR_RANGE_S
    for name, value in given.items():
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            hint = " (milliseconds instead of seconds?)" if number > high else ""
            raise ValueError(
                f"{where}: TR {value!r} from {name} is outside {low}-{high} s{hint}; "
                f"TR sources: {listing}"
            )
    values = [float(v) for v in given.values()]
    if (max(values) - min(values)) > TR_TOLERANCE * min(values):
        raise ValueError(f"{where}: TR sources disagree by more than {TR_TOLERANCE:.0%}: {listing}")
    return values[0]


def slice_time_reference(sidecar: Mapping[str, Any], tr: float) -> tuple[float, str]:
    """Seconds into each volume at which its signal is sampled, and how that was decided.

    Parameters
    ----------
    sidecar : mapping
        The run's (inherited) BOLD sidecar.
    tr : float
        Repetition time (s).

    Returns
    -------
    reference_s : float
        In ``[0, tr)``: ``StartTime`` when ``SliceTimingCorrected`` is true, else 0.
    source : str
        :data:`REFERENCE_CORRECTED` or :data:`REFERENCE_NONE`.

    Raises
    ------
    ValueError
        A corrected image without ``StartTime``, or a ``StartTime`` outside ``[0, tr)``.
    """
    if not sidecar.get("SliceTimingCorrected", False):
        return 0.0, REFERENCE_NONE
    start = sidecar.get("StartTime")
    if start is None:
        raise ValueError(
            "sidecar says SliceTimingCorrected but gives no StartTime (s): the time the slices "
            "were corrected to is unknown; pass the slice-time reference explicitly"
        )
    return check_reference(float(start), tr, "sidecar StartTime"), REFERENCE_CORRECTED


def check_reference(reference_s: float, tr: float, where: str) -> float:
    """``reference_s`` if it is a time (s) within one TR, else ValueError naming ``where``."""
    if not math.isfinite(reference_s) or not 0.0 <= reference_s < tr:
        raise ValueError(
            f"{where}: slice-time reference {reference_s!r} s must lie in [0, TR={tr}) s"
        )
    return float(reference_s)


def first_sample_time(tr: float, onset: float, reference_s: float = 0.0) -> float:
    """Stimulus time (s) at which TR 0 of the run samples the brain: ``reference_s - onset``.

    Raises ValueError for a non-finite onset or a reference outside ``[0, tr)``.
    """
    if not math.isfinite(onset):
        raise ValueError(f"run onset must be a finite number of seconds, got {onset!r}")
    check_reference(reference_s, tr, "run")
    return float(reference_s) - float(onset)


def sample_times(
    trs: np.ndarray | Sequence[int], tr: float, onset: float, reference_s: float = 0.0
) -> np.ndarray:
    """Stimulus time (s, float64) at which each TR index in ``trs`` samples the brain.

    ``t_k = k * tr + reference_s - onset`` (module docstring); ``trs`` are TR indices of the
    stored run (``np.arange(n_trs)`` for all of them), not a count.
    """
    index = np.asarray(trs)
    if index.dtype.kind not in "iu":
        raise ValueError(f"TR indices must be integers, got dtype {index.dtype}")
    return index.astype(np.float64) * float(tr) + first_sample_time(tr, onset, reference_s)


def stored_references(columns: Mapping[str, Any], where: str) -> np.ndarray:
    """Slice-time reference (s, float64) of every row of a ``responses`` table.

    Parameters
    ----------
    columns : mapping
        Column name to values (``Dataset.to_dict()``, a pandas DataFrame); must hold ``tr`` and,
        in folders prepared since it exists, :data:`REFERENCE_COLUMN`.
    where : str
        The table (folder), for messages.

    Returns
    -------
    array [rows] float64
        The stored references; zeros, with a warning, for a table without the column (a folder
        prepared before it existed, whose every TR was sampled at the acquisition start).

    Raises
    ------
    ValueError
        A stored value that is not a time within its run's TR (the row is named).
    """
    trs = np.asarray(columns["tr"], dtype=np.float64)
    if REFERENCE_COLUMN not in columns:
        logger.warning(
            "%s has no %s column (prepared by an older wav2brain): every run is read with a "
            "slice-time reference of 0 s (acquisition start), as it was prepared; re-prepare "
            "slice-time corrected data (fMRIPrep) to use its StartTime",
            where,
            REFERENCE_COLUMN,
        )
        return np.zeros(len(trs), dtype=np.float64)
    values = np.asarray(columns[REFERENCE_COLUMN], dtype=np.float64)
    for row, (value, tr) in enumerate(zip(values, trs, strict=True)):
        check_reference(float(value), float(tr), f"{where} row {row}")
    return values
