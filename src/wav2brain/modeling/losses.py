"""Losses between predicted and measured BOLD over each subject's own voxels."""

from __future__ import annotations

import torch

_EPS = 1e-8


def voxel_mask(subject_ids: torch.Tensor, voxel_counts: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool mask of the voxels that belong to each example's subject.

    Parameters
    ----------
    subject_ids : torch.Tensor
        ``[B]`` head index of each example.
    voxel_counts : torch.Tensor
        ``[S]`` voxel count of each head.
    width : int
        Width (voxels) of the padded predictions.
    """
    columns = torch.arange(width, device=subject_ids.device)
    return columns[None, :] < voxel_counts[subject_ids][:, None]


def masked_mse(predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is True (all arrays ``[B, V]``)."""
    weight = mask.to(predictions.dtype)
    return ((predictions - labels) ** 2 * weight).sum() / weight.sum()


def masked_correlation(
    predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, subject_ids: torch.Tensor
) -> torch.Tensor:
    """Mean voxelwise Pearson r across the examples of each subject (a scalar).

    Each (subject, voxel) pair with at least two examples in the batch contributes one r computed
    across those examples (the batch plays the role of time, as in voxelwise encoding scores); the
    result is the mean over those pairs. A constant prediction or label column gives r = 0.
    """
    groups = torch.unique(subject_ids)
    onehot = (subject_ids[None, :] == groups[:, None]).to(predictions.dtype)  # [G, B]
    weight = mask.to(predictions.dtype)
    counts = onehot @ weight  # [G, V]
    mean_p = (onehot @ (predictions * weight)) / counts.clamp(min=1.0)
    mean_y = (onehot @ (labels * weight)) / counts.clamp(min=1.0)
    row_group = torch.searchsorted(groups, subject_ids)
    centred_p = (predictions - mean_p[row_group]) * weight
    centred_y = (labels - mean_y[row_group]) * weight
    covariance = onehot @ (centred_p * centred_y)
    scale = torch.sqrt((onehot @ centred_p**2) * (onehot @ centred_y**2)).clamp(min=_EPS)
    valid = counts >= 2
    return (covariance / scale)[valid].mean()


def encoding_loss(
    kind: str,
    predictions: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    subject_ids: torch.Tensor,
    correlation_weight: float,
) -> torch.Tensor:
    """Data term of the objective: ``"mse"``, ``"correlation"`` (1 - r) or ``"mse+correlation"``."""
    loss = predictions.new_zeros(())
    if kind in ("mse", "mse+correlation"):
        loss = loss + masked_mse(predictions, labels, mask)
    if kind in ("correlation", "mse+correlation"):
        weight = correlation_weight if kind == "mse+correlation" else 1.0
        r = masked_correlation(predictions, labels, mask, subject_ids)
        loss = loss + weight * (1.0 - r)
    return loss
