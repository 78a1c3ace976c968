"""Voxelwise correlation: an ``evaluate`` metric of brain-encoding predictions (per-voxel Pearson r).

Load it by path, offline (no Hub request)::

    import evaluate
    from wav2brain.metrics.voxelwise_correlation import METRIC_PATH

    metric = evaluate.load(str(METRIC_PATH))
    metric.compute(predictions=pred, references=bold, subjects=subject_of_each_row)

``evaluate`` copies this file into its module cache and imports it from there, so it imports the
computation from the installed package (:func:`wav2brain.metrics.voxelwise.voxelwise_scores`,
which ``evaluate`` checks is importable before loading): the folder ships inside wav2brain, so
wherever it is, wav2brain is installed, and the metric and the training recipe's
``compute_metrics`` give the same numbers by construction.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from wav2brain.metrics.voxelwise import voxelwise_scores

_DESCRIPTION = """\
Per-voxel Pearson correlation between predicted and measured BOLD over held-out samples (TRs),
summarised as the mean, median and top-10 % mean r and the fraction of voxels whose r is
significantly above zero (one-sided Fisher test with effective sample size `n_eff`,
Benjamini-Hochberg over the voxels of a subject). With `subjects`, r is computed within each
subject and the summary is also given per subject; the top-level figures are means over subjects.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of list of float): one row per sample (TR), one value per voxel.
    references (list of list of float): measured BOLD, same shape. Rows of subjects with fewer
        voxels may be shorter: they are zero-padded to the widest row, and constant (padding)
        columns are left out of a subject's scores.
    subjects (list, optional): subject of each row.
    n_eff (float, list of float or dict subject -> either, optional): effective number of
        independent samples behind each r (autocorrelation); default the number of rows.
    fdr_q (float, optional): false discovery rate of `fraction_significant` (default 0.05).
Returns:
    mean, median, top10_mean, fraction_significant, n_voxels, and per_subject with `subjects`.
Examples:
    >>> metric = evaluate.load(str(METRIC_PATH))
    >>> metric.compute(predictions=[[0.1, 1.0], [0.2, 0.0], [0.4, 2.0]],
    ...                references=[[1.0, 0.5], [2.0, 0.0], [4.0, 1.0]])["mean"]
    1.0
"""

_CITATION = """\
@inproceedings{li2024refining,
  title     = {Refining Self-Supervised Learnt Speech Representation using Brain Activations},
  author    = {Li, Hengyu and Mei, Kangdi and Liu, Zhaoci and Ai, Yang and Chen, Liping and
               Zhang, Jie and Ling, Zhenhua},
  booktitle = {Proc. Interspeech 2024},
  pages     = {1480--1484},
  year      = {2024}
}
"""


def _rows(values, name: str) -> np.ndarray:
    """Rows of possibly different lengths as one float64 array, zero-padded to the widest row."""
    rows = [np.asarray(row, dtype=np.float64) for row in values]
    if not rows:
        raise ValueError(f"{name} is empty: expected one row of voxel values per sample")
    if any(row.ndim != 1 for row in rows):
        raise ValueError(f"each row of {name} must be a flat list of voxel values")
    width = max(row.size for row in rows)
    array = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        array[i, : row.size] = row
    return array


class VoxelwiseCorrelation(evaluate.Metric):
    """Per-voxel Pearson r of predicted against measured BOLD (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, predictions, references, subjects=None, n_eff=None, fdr_q=0.05):
        mismatched = [
            i
            for i, (p, r) in enumerate(zip(predictions, references, strict=True))
            if len(p) != len(r)
        ]
        if mismatched:
            i = mismatched[0]
            raise ValueError(
                f"row {i}: {len(predictions[i])} predicted voxels but {len(references[i])} "
                "measured ones; each prediction row must match its reference row"
            )
        if isinstance(n_eff, list | tuple):
            n_eff = np.asarray(n_eff, dtype=np.float64)
        return voxelwise_scores(
            _rows(predictions, "predictions"),
            _rows(references, "references"),
            subjects=subjects,
            n_eff=n_eff,
            fdr_q=fdr_q,
        )
