"""Per-voxel scores of predictions: Pearson r, R², mean squared error, and ceiling-normalised r.

All functions reduce over samples (TRs, axis 0 of the targets) and return one value per target
(voxel). They take numpy arrays or torch tensors and return the same kind.

Conventions (those of himalaya and scikit-learn): a target whose held-out variance is zero has
R² = 0 and r = 0 (not NaN), so that alpha selection and averages stay defined.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class PredictionScores(NamedTuple):
    """Scores [n_predictions, n_targets] of :func:`prediction_scores`."""

    r2: torch.Tensor
    r: torch.Tensor
    neg_mse: torch.Tensor


def prediction_scores(predictions: torch.Tensor, targets: torch.Tensor) -> PredictionScores:
    """Score several predictions of the same targets at once.

    Parameters
    ----------
    predictions : Tensor [n_predictions, n_samples, n_targets]
        For example one prediction per alpha. Centred in place (the caller's buffer is reused).
    targets : Tensor [n_samples, n_targets]

    Returns
    -------
    PredictionScores of tensors [n_predictions, n_targets]: R², Pearson r and ``-MSE``.

    Notes
    -----
    The moments are taken about each column's own mean, so no sum of squares of uncentred data
    is ever subtracted from another (the squared error is rebuilt exactly from centred moments
    plus the squared difference of means).
    """
    target_mean = targets.mean(0)
    centred_targets = targets - target_mean
    target_ss = centred_targets.square().sum(0)
    prediction_mean = predictions.mean(1)
    centred = predictions.sub_(prediction_mean[:, None, :])
    prediction_ss = torch.linalg.vector_norm(centred, dim=1).square()
    cross = torch.einsum("atv,tv->av", centred, centred_targets)
    return scores_from_moments(
        targets.shape[0], prediction_mean, prediction_ss, cross, target_mean, target_ss
    )


def scores_from_moments(
    n_samples: int,
    prediction_mean: torch.Tensor,
    prediction_ss: torch.Tensor,
    cross: torch.Tensor,
    target_mean: torch.Tensor,
    target_ss: torch.Tensor,
) -> PredictionScores:
    """Scores from the first and centred second moments of predictions and targets.

    Parameters
    ----------
    n_samples : int
        Number of samples (TRs) the moments sum over.
    prediction_mean, prediction_ss, cross : Tensor [n_predictions, n_targets]
        Mean of each prediction, its sum of squares about that mean, and the sum of products of
        the centred prediction with the centred target.
    target_mean, target_ss : Tensor [n_targets]
        Mean of each target and its sum of squares about that mean.

    Returns
    -------
    PredictionScores, as :func:`prediction_scores` (which reduces predictions to these moments).
    """
    squared_error = (
        prediction_ss - 2 * cross + target_ss + n_samples * (prediction_mean - target_mean).square()
    ).clamp_min(0)
    valid = target_ss > 0
    r2 = torch.where(valid, 1 - squared_error / torch.where(valid, target_ss, 1), 0)
    denominator = torch.sqrt(prediction_ss * target_ss)
    r = torch.where(denominator > 0, cross / torch.where(denominator > 0, denominator, 1), 0)
    return PredictionScores(r2=r2, r=r, neg_mse=-squared_error / n_samples)


def _score_pair(y_true, y_pred) -> tuple[PredictionScores, bool]:
    """Score one prediction; return the scores and whether the inputs were numpy arrays."""
    is_numpy = not isinstance(y_true, torch.Tensor)
    true = torch.as_tensor(np.asarray(y_true) if is_numpy else y_true, dtype=torch.float32)
    pred = torch.as_tensor(y_pred, dtype=true.dtype, device=true.device)
    if true.shape != pred.shape or true.ndim not in (1, 2):
        raise ValueError(
            f"y_true and y_pred must have the same 1-D or 2-D shape [n_samples, n_targets], "
            f"got {tuple(true.shape)} and {tuple(pred.shape)}"
        )
    if true.ndim == 1:
        true, pred = true[:, None], pred[:, None]
    return prediction_scores(pred[None].clone(), true), is_numpy


def _as_input_kind(values: torch.Tensor, like_numpy: bool, squeeze: bool):
    """Return ``values`` [1, n_targets] as the caller's kind, squeezed for 1-D inputs."""
    values = values[0, 0] if squeeze else values[0]
    return values.cpu().numpy() if like_numpy else values


def pearson_r(y_true, y_pred):
    """Pearson correlation per target between ``y_true`` and ``y_pred`` [n_samples, n_targets]."""
    scores, is_numpy = _score_pair(y_true, y_pred)
    return _as_input_kind(scores.r, is_numpy, np.ndim(y_true) == 1)


def r2_score(y_true, y_pred):
    """Coefficient of determination per target, ``1 - SSE / SST`` (can be negative)."""
    scores, is_numpy = _score_pair(y_true, y_pred)
    return _as_input_kind(scores.r2, is_numpy, np.ndim(y_true) == 1)


def normalized_score(score, ceiling, min_ceiling: float = 0.1, significant=None):
    """Divide per-voxel scores by their noise ceiling where the ceiling is trustworthy, else NaN.

    Parameters
    ----------
    score : array or Tensor [n_voxels]
        For example held-out Pearson r.
    ceiling : array or Tensor [n_voxels]
        The noise ceiling of the same score (see :mod:`wav2brain.encoding.noise_ceiling`).
    min_ceiling : float
        Ceilings at or below this value (or NaN) give NaN instead of a ratio. 0.1 (r) is a
        common cut in the encoding literature, kept as the default of this function; with
        ``significant`` pass 0, as :func:`~wav2brain.encoding.dataset.encode_dataset` does.
    significant : bool array [n_voxels], optional
        Where the ceiling is significantly above zero
        (:func:`~wav2brain.encoding.noise_ceiling.ceiling_test`); NaN elsewhere. A ratio over a
        ceiling that cannot be told from zero is dominated by the ceiling's estimation noise and
        can be arbitrarily large: a test with the ceiling's own degrees of freedom decides where
        to divide, which a fixed cut such as 0.1 cannot (it passes most noise-only voxels with
        few TRs and rejects real but weak ceilings with many).

    Returns
    -------
    The same kind as ``score``: ``score / ceiling`` where defined, else NaN.
    """
    if min_ceiling < 0:
        raise ValueError(f"min_ceiling must be >= 0, got {min_ceiling}")
    is_numpy = not isinstance(score, torch.Tensor)
    score_t = torch.as_tensor(np.asarray(score, dtype=np.float64)) if is_numpy else score
    ceiling_t = torch.as_tensor(
        np.asarray(ceiling) if not isinstance(ceiling, torch.Tensor) else ceiling,
        dtype=score_t.dtype,
        device=score_t.device,
    )
    if ceiling_t.shape != score_t.shape:
        raise ValueError(
            f"ceiling shape {tuple(ceiling_t.shape)} != score shape {tuple(score_t.shape)}"
        )
    defined = ceiling_t > min_ceiling
    if significant is not None:
        mask = torch.as_tensor(np.array(significant, dtype=bool), device=score_t.device)
        if mask.shape != score_t.shape:
            raise ValueError(
                f"significant shape {tuple(mask.shape)} != score shape {tuple(score_t.shape)}"
            )
        defined = defined & mask
    ratio = torch.where(defined, score_t / torch.where(defined, ceiling_t, 1), torch.nan)
    return ratio.numpy() if is_numpy else ratio
