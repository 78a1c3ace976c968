"""Cross-validation splits over whole runs or stories, never over neighbouring TRs.

BOLD responses are autocorrelated over several TRs (the haemodynamic response lasts ~20 s), so a
validation TR next to a training TR leaks its signal. With ``groups`` (the run or story of every
TR) every split holds out whole groups: ``cv=int`` follows scikit-learn's ``GroupKFold`` (each
group lands in exactly one validation fold; folds balanced by TR count), and ``cv`` equal to the
number of groups or ``cv="groups"`` is ``LeaveOneGroupOut``. Without groups the samples are cut
into ``cv`` contiguous blocks in time order (scikit-learn's ``KFold`` without shuffling); only the
TRs on either side of a block boundary then touch, which is the usual fallback when all data come
from one run.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

Split = tuple[np.ndarray, np.ndarray]


def make_splits(n_samples: int, groups=None, cv=5) -> list[Split]:
    """Return the (train, validation) row indices of each fold.

    Parameters
    ----------
    n_samples : int
        Number of rows (TRs).
    groups : array-like [n_samples], optional
        The run or story of each TR.
    cv : int, "groups", a scikit-learn splitter, or an iterable of (train, validation) pairs
        Number of folds, leave-one-group-out, or explicit splits.

    Returns
    -------
    list of (train, validation) int64 arrays of row indices, both non-empty and disjoint.
    """
    from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut

    if groups is not None:
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != n_samples:
            raise ValueError(
                f"groups must have one entry per sample ({n_samples}), got shape {groups.shape}"
            )
    rows = np.zeros((n_samples, 1))
    if isinstance(cv, str):
        if cv != "groups" or groups is None:
            raise ValueError(f"cv={cv!r} needs groups; use an int, a splitter or 'groups'")
        splits = LeaveOneGroupOut().split(rows, groups=groups)
    elif isinstance(cv, (int, np.integer)):
        if cv < 2:
            raise ValueError(f"cv must be at least 2 folds, got {cv}")
        if groups is None:
            if n_samples < cv:
                raise ValueError(f"cannot cut {n_samples} samples into cv={cv} blocks")
            splits = KFold(n_splits=int(cv)).split(rows)
        else:
            n_groups = len(np.unique(groups))
            if n_groups < cv:
                raise ValueError(
                    f"cv={cv} folds over whole runs needs at least {cv} groups, got {n_groups} "
                    f"({np.unique(groups).tolist()[:10]}); lower cv or add runs"
                )
            splitter = LeaveOneGroupOut() if n_groups == cv else GroupKFold(n_splits=int(cv))
            splits = splitter.split(rows, groups=groups)
    elif hasattr(cv, "split"):
        splits = cv.split(rows, groups=groups)
    elif isinstance(cv, Iterable):
        splits = cv
    else:
        raise ValueError(
            f"cv must be an int, 'groups', a splitter or (train, val) pairs, got {cv!r}"
        )
    return [_check_split(train, val, n_samples) for train, val in splits]


def _check_split(train, val, n_samples: int) -> Split:
    """Validate one split and return it as int64 arrays."""
    train, val = np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)
    if len(train) == 0 or len(val) == 0:
        raise ValueError("every split needs non-empty training and validation rows")
    for name, index in (("train", train), ("validation", val)):
        if index.min() < 0 or index.max() >= n_samples:
            raise ValueError(
                f"{name} indices must lie in [0, {n_samples}), got {index.min()}..{index.max()}"
            )
    if np.intersect1d(train, val).size:
        raise ValueError("training and validation rows of a split overlap")
    return train, val
