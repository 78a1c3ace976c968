"""Voxelwise Pearson r between predicted and measured BOLD, summarised per subject.

The brain score of an encoding model is the correlation, over held-out time points, between its
prediction and the measured response of each voxel (Li et al. 2024 report it for the refined
model). This module turns ``[n_samples, n_voxels]`` predictions and references into the mean,
median and top-10 % mean r and the fraction of voxels whose r is significantly above 0.

Significance
------------
One-sided Fisher test, ``z = atanh(r) * sqrt(n_eff - 3)``, ``p = 1 - Phi(z)``, then
Benjamini-Hochberg at ``fdr_q`` over the voxels of a subject. BOLD time courses are
autocorrelated, so the number of samples overstates the evidence: pass ``n_eff`` (scalar or per
voxel), e.g. Bartlett's effective sample size of the two series (what
:func:`wav2brain.training.metrics.brain_scores` does). Without it ``n_eff`` is the number of
samples, the independent-samples approximation, which is too lenient for autocorrelated data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TOP_FRACTION = 0.1
"""Share of the best voxels averaged by ``top10_mean``."""

FDR_Q = 0.05
"""Default false discovery rate of ``fraction_significant``."""


def pearson_columns(predictions: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Pearson r of each column pair ``[n_voxels]``; NaN where either column is constant."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(references, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    scale = np.sqrt((x * x).sum(0) * (y * y).sum(0))
    covariance = (x * y).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, covariance / np.where(scale > 0, scale, 1.0), np.nan)


def benjamini_hochberg(p_values: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of the p-values rejected by the Benjamini-Hochberg step-up rule at ``q``."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    ranked = p[order]
    below = ranked <= q * np.arange(1, len(p) + 1) / max(len(p), 1)
    rejected = np.zeros(len(p), dtype=bool)
    if below.any():
        rejected[order[: int(np.flatnonzero(below)[-1]) + 1]] = True
    return rejected


def _summary(r: np.ndarray, n_eff: np.ndarray, fdr_q: float) -> dict[str, float]:
    from scipy.stats import norm

    keep = np.isfinite(r)
    r, n_eff = r[keep], n_eff[keep]
    if r.size == 0:
        nan = float("nan")
        return {
            "mean": nan,
            "median": nan,
            "top10_mean": nan,
            "fraction_significant": nan,
            "n_voxels": 0,
        }
    top = np.sort(r)[::-1][: max(int(np.ceil(TOP_FRACTION * r.size)), 1)]
    z = np.arctanh(np.clip(r, -0.999999, 0.999999)) * np.sqrt(np.maximum(n_eff - 3.0, 1.0))
    significant = benjamini_hochberg(norm.sf(z), fdr_q)
    return {
        "mean": float(r.mean()),
        "median": float(np.median(r)),
        "top10_mean": float(top.mean()),
        "fraction_significant": float(significant.mean()),
        "n_voxels": int(r.size),
    }


def voxelwise_scores(
    predictions: np.ndarray,
    references: np.ndarray,
    *,
    subjects: Sequence[Any] | np.ndarray | None = None,
    n_eff: float | np.ndarray | dict[Any, float | np.ndarray] | None = None,
    fdr_q: float = FDR_Q,
) -> dict[str, Any]:
    """Per-voxel Pearson r of predictions against references, summarised (per subject).

    Parameters
    ----------
    predictions, references : array [n_samples, n_voxels]
        Predicted and measured BOLD of held-out samples (TRs). Columns that are constant in either
        (e.g. zero padding beyond a subject's own voxels) have no r and are left out.
    subjects : sequence [n_samples], optional
        Subject of each sample: r is computed within each subject, and the summary is given per
        subject under ``"per_subject"``; the top-level figures are the means over subjects.
    n_eff : float, array [n_voxels] or dict subject -> either, optional
        Effective number of independent samples behind each r (see the module docstring);
        defaults to the number of samples.
    fdr_q : float
        False discovery rate of ``fraction_significant`` (Benjamini-Hochberg per subject).

    Returns
    -------
    dict
        ``mean``, ``median``, ``top10_mean`` (mean of the best 10 % of voxels),
        ``fraction_significant``, ``n_voxels``, and with ``subjects`` also ``per_subject``.

    Raises
    ------
    ValueError
        Shapes that differ, fewer than 3 samples (of a subject), non-finite values, or a ``q``
        outside (0, 1).
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if predictions.ndim != 2 or predictions.shape != references.shape:
        raise ValueError(
            f"predictions {predictions.shape} and references {references.shape} must both be "
            "[n_samples, n_voxels]"
        )
    if not (np.isfinite(predictions).all() and np.isfinite(references).all()):
        raise ValueError("predictions and references must be finite (NaN/inf found)")
    if not 0 < fdr_q < 1:
        raise ValueError(f"fdr_q must lie in (0, 1), got {fdr_q}")
    groups = np.zeros(len(predictions), dtype=int) if subjects is None else np.asarray(subjects)
    if len(groups) != len(predictions):
        raise ValueError(f"subjects has {len(groups)} entries for {len(predictions)} samples")
    per_subject: dict[str, dict[str, float]] = {}
    for subject in np.unique(groups):
        rows = groups == subject
        if rows.sum() < 3:
            raise ValueError(
                f"subject {subject!r} has {int(rows.sum())} samples; r needs at least 3"
            )
        r = pearson_columns(predictions[rows], references[rows])
        given = n_eff.get(subject) if isinstance(n_eff, dict) else n_eff
        effective = np.broadcast_to(
            np.asarray(float(rows.sum()) if given is None else given, dtype=np.float64), r.shape
        )
        per_subject[str(subject)] = _summary(r, effective, fdr_q)
    if subjects is None:
        return per_subject[str(groups[0])]
    keys = ("mean", "median", "top10_mean", "fraction_significant")
    result: dict[str, Any] = {
        key: float(np.mean([scores[key] for scores in per_subject.values()])) for key in keys
    }
    result["n_voxels"] = int(sum(scores["n_voxels"] for scores in per_subject.values()))
    result["per_subject"] = per_subject
    return result
