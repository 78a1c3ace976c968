"""Held-out brain scores of the recipe: voxelwise r per subject with an autocorrelation-aware test.

:func:`brain_scores` slices each subject's own voxels out of padded predictions, computes
Bartlett's effective sample size per voxel from the within-run autocorrelations of prediction and
measurement (:func:`wav2brain.metrics.autocorrelation.effective_sample_size`, lags up to
:data:`MAX_LAG_TRS`), and summarises with :func:`wav2brain.metrics.voxelwise_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from wav2brain.metrics.voxelwise import voxelwise_scores

MAX_LAG_TRS = 10
"""Longest lag (TRs) of the effective-sample-size sum: 15 s at TR 1.5 s, past the HRF's tail
(our choice; clipped to each subject's shortest held-out run minus one)."""


def _runs(run_ids: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(run_ids == run) for run in dict.fromkeys(run_ids.tolist())]


def brain_scores(
    predictions: np.ndarray,
    references: np.ndarray,
    subjects: Sequence[str],
    runs: Sequence[int],
    voxel_counts: Mapping[str, int],
) -> dict[str, Any]:
    """Voxelwise scores of held-out items (rows), per subject and averaged over subjects.

    Parameters
    ----------
    predictions, references : array [n_items, width]
        Predictions and BOLD, padded beyond each subject's own voxels (any values there).
    subjects : sequence of str [n_items]
        Subject of each row.
    runs : sequence of int [n_items]
        Run (response row) of each row: rows of one run are consecutive TRs.
    voxel_counts : mapping subject -> int
        Each subject's own voxels (the first columns).
    """
    from wav2brain.metrics.autocorrelation import effective_sample_size

    predictions = np.array(predictions, dtype=np.float64)
    references = np.array(references, dtype=np.float64)
    subjects = np.asarray(subjects)
    runs = np.asarray(runs)
    n_eff: dict[str, np.ndarray] = {}
    for subject in np.unique(subjects):
        rows = np.flatnonzero(subjects == subject)
        width = int(voxel_counts[str(subject)])
        # beyond the subject's voxels: constant zeros, which have no r and are left out
        predictions[np.ix_(rows, np.arange(width, predictions.shape[1]))] = 0.0
        references[np.ix_(rows, np.arange(width, references.shape[1]))] = 0.0
        pieces = _runs(runs[rows])
        max_lag = min(MAX_LAG_TRS, min(len(p) for p in pieces) - 1)
        n_eff[str(subject)] = effective_sample_size(
            [predictions[rows[p]] for p in pieces], [references[rows[p]] for p in pieces], max_lag
        )
    return voxelwise_scores(predictions, references, subjects=subjects, n_eff=n_eff)


def flat_scores(scores: Mapping[str, Any]) -> dict[str, float]:
    """Scores as flat floats for the Trainer's logs: ``mean_r``, ..., ``<subject>_mean_r``."""
    keys = ("mean", "median", "top10_mean")
    flat = {f"{key}_r": float(scores[key]) for key in keys}
    flat["fraction_significant"] = float(scores["fraction_significant"])
    for subject, values in scores.get("per_subject", {}).items():
        flat[f"sub-{subject}_mean_r"] = float(values["mean"])
    return flat


def metrics_function(
    subjects: Sequence[str], runs: Sequence[int], voxel_counts: Mapping[str, int]
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for the Trainer over items in this order (an unshuffled eval set)."""

    def compute_metrics(prediction: Any) -> dict[str, float]:
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        return flat_scores(
            brain_scores(predictions, prediction.label_ids, subjects, runs, voxel_counts)
        )

    return compute_metrics
