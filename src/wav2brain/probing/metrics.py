"""Scores of the probing tasks and their uncertainty over seeds.

- :func:`accuracy` for utterance classification (KS, IC, SID, ER);
- :func:`error_rate` for CTC tasks: phone error rate over space-separated phonemes (PR) and word
  error rate over words (ASR), both corpus-level (total edits over total reference tokens, as
  SUPERB reports them), computed by ``jiwer``;
- :func:`equal_error_rate` for speaker verification (ASV), from ``sklearn.metrics.roc_curve``;
- :func:`confidence_interval` of a mean over seeds (Student t) and :func:`paired_difference` of two
  upstreams trained with the same seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HIGHER_IS_BETTER = {"accuracy": True, "per": False, "wer": False, "eer": False}
"""Direction of every metric a task reports (the arrows of the SUPERB table)."""


def accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (same length, at least one)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(
            f"accuracy needs two non-empty 1-d arrays of one length, got {labels.shape} and "
            f"{predictions.shape}"
        )
    return float(np.mean(labels == predictions))


def error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level token error rate: (substitutions + deletions + insertions) / reference tokens.

    Tokens are separated by whitespace: phonemes for the phone error rate, words for the word error
    rate. An empty hypothesis counts as deleting every reference token.

    Raises
    ------
    ValueError
        When the lists differ in length, are empty, or a reference has no token (its error rate
        would be undefined).
    """
    import jiwer

    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"error_rate needs as many hypotheses as references (at least one), got "
            f"{len(hypotheses)} and {len(references)}"
        )
    empty = [i for i, ref in enumerate(references) if not ref.split()]
    if empty:
        raise ValueError(f"references {empty[:5]} have no token; every reference needs one")
    return float(
        jiwer.wer(
            [" ".join(r.split()) for r in references], [" ".join(h.split()) for h in hypotheses]
        )
    )


def equal_error_rate(
    targets: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """Equal error rate of verification ``scores`` (higher = more likely the same speaker).

    The ROC curve (``sklearn.metrics.roc_curve``) gives the false-acceptance rate ``fpr`` and the
    false-rejection rate ``fnr = 1 - tpr`` at every threshold; the EER is where they cross, linearly
    interpolated between the two thresholds around the crossing (the usual convention; the value is
    exact when both rates meet at a threshold).

    Raises
    ------
    ValueError
        When lengths differ, scores are not finite, or the trials lack targets or non-targets.
    """
    from sklearn.metrics import roc_curve

    targets = np.asarray(targets).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.shape != scores.shape or targets.ndim != 1:
        raise ValueError(
            f"equal_error_rate needs 1-d targets and scores of one length, got {targets.shape} and "
            f"{scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("verification scores contain NaN or infinite values")
    if targets.all() or not targets.any():
        raise ValueError(
            f"equal_error_rate needs both target and non-target trials, got {int(targets.sum())} "
            f"targets among {targets.size} trials"
        )
    fpr, tpr, _ = roc_curve(targets, scores)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    k = int(np.flatnonzero(diff <= 0)[0])
    if diff[k] == 0:  # k >= 1: the curve starts at fpr 0, fnr 1
        return float(fpr[k])
    # the rates cross between points k-1 (fnr > fpr) and k (fnr < fpr)
    t = diff[k - 1] / (diff[k - 1] - diff[k])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its confidence interval (``low``, ``high``; NaN for one seed)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN for one seed)."""
        return (self.high - self.low) / 2


def confidence_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Student-t confidence interval of the mean of ``values`` (one per seed).

    With one value the interval is undefined (NaN bounds): a single seed says nothing about the
    spread over seeds. Identical values give a zero-width interval.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"confidence_interval needs finite values, got {values!r}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, float("nan"), float("nan"), 1)
    spread = float(values.std(ddof=1)) / np.sqrt(values.size)
    half = float(stats.t.ppf((1 + level) / 2, values.size - 1)) * spread
    return Interval(mean, mean - half, mean + half, int(values.size))


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95
) -> tuple[Interval, bool]:
    """Mean of ``b - a`` over seeds (paired: seed ``k`` of both), its interval and significance.

    Significant means the interval excludes zero (a paired t-test at ``1 - level``); with one seed
    nothing is significant.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same seeds, got {a.size} and {b.size} values")
    interval = confidence_interval(b - a, level)
    significant = bool(interval.n > 1 and (interval.low > 0 or interval.high < 0))
    return interval, significant
