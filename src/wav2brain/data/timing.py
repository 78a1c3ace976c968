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
no single time is right for every voxel. The choice is recorded in the dataset card.

TR sources
----------
The TR may come from a mapping table, a BIDS sidecar and the image header;
:func:`check_tr` compares every one that exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

TR_RANGE_S: tuple[float, float] = (0.2, 20.0)
"""Plausible repetition times (s); a value outside is almost certainly a unit error (ms)."""

TR_TOLERANCE: float = 0.01
"""Largest relative disagreement between two sources of one run's TR (1 %)."""

REFERENCE_NONE = "acquisition start (no slice-timing correction)"
REFERENCE_CORRECTED = "slice-time corrected (sidecar StartTime)"


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
    """Stimulus time (s) at which TR 0 of the run samples the brain: ``reference_s - onset``."""
    if not math.isfinite(onset):
        raise ValueError(f"run onset must be a finite number of seconds, got {onset!r}")
    check_reference(reference_s, tr, "run")
    return float(reference_s) - float(onset)


def sample_times(
    trs: np.ndarray | int, tr: float, onset: float, reference_s: float = 0.0
) -> np.ndarray:
    """Stimulus time (s) at which each TR in ``trs`` samples the brain (the rule above).

    ``trs`` is an array of TR indices, or a count ``n`` meaning ``0 .. n-1``.
    """
    index = np.arange(trs) if np.isscalar(trs) else np.asarray(trs)
    return index * float(tr) + first_sample_time(tr, onset, reference_s)
