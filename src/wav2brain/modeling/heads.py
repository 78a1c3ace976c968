"""Encoding heads: a shared body over the TR bins and one linear readout per subject."""

from __future__ import annotations

import torch
from torch import nn

from .configuration_brain_encoding import Wav2Vec2BrainEncodingConfig


class ConvBody(nn.Module):
    """Temporal convolution over the TR bins, GELU, flatten: ``[B, H, D] -> [B, C * (H - k + 1)]``.

    Flattening (rather than averaging) keeps the lag of each bin, which matters because the
    haemodynamic response weights the TRs 3-6 s before the prediction most.
    """

    def __init__(self, config: Wav2Vec2BrainEncodingConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(config.hidden_size, config.head_hidden_size, config.head_kernel_size)
        self.activation = nn.GELU()
        self.output_size = config.head_features

    def forward(self, pooled: torch.Tensor, valid_bins: torch.Tensor) -> torch.Tensor:
        """Map pooled bins ``[B, H, D]`` (empty bins are zeros) to features ``[B, output_size]``."""
        return self.activation(self.conv(pooled.transpose(1, 2))).flatten(1)


class LinearBody(nn.Module):
    """Per-bin linear projection to ``head_hidden_size`` units, flatten: ``[B, H * C]``.

    With the linear readout the whole head is a linear map of the pooled bins whose rank is limited
    by ``head_hidden_size``, which keeps the readout size independent of the backbone width.
    """

    def __init__(self, config: Wav2Vec2BrainEncodingConfig) -> None:
        super().__init__()
        self.projection = nn.Linear(config.hidden_size, config.head_hidden_size)
        self.output_size = config.head_features

    def forward(self, pooled: torch.Tensor, valid_bins: torch.Tensor) -> torch.Tensor:
        """Map pooled bins ``[B, H, D]`` to features ``[B, H * C]``."""
        return self.projection(pooled).flatten(1)


class MeanBody(nn.Module):
    """Mean over the non-empty TR bins: ``[B, H, D] -> [B, D]`` (no parameters)."""

    def __init__(self, config: Wav2Vec2BrainEncodingConfig) -> None:
        super().__init__()
        self.output_size = config.head_features

    def forward(self, pooled: torch.Tensor, valid_bins: torch.Tensor) -> torch.Tensor:
        """Average the bins flagged valid in ``valid_bins`` ``[B, H]``."""
        weights = valid_bins.to(pooled.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.einsum("bh,bhd->bd", weights, pooled)


BODIES: dict[str, type[nn.Module]] = {"conv": ConvBody, "linear": LinearBody, "mean": MeanBody}


class BrainEncodingHead(nn.Module):
    """Shared body, dropout, and one linear readout per subject.

    With ``config.readout_rank`` the readout is factorised: a shared ``low_rank`` projection
    ``Linear(head_features, rank)`` without bias (the subjects' readouts carry the bias), then one
    ``Linear(rank, V)`` per subject; without it (``low_rank`` is None) each subject's readout is
    ``Linear(head_features, V)``. Predictions of a batch are ``[B, V]`` with ``V`` the largest voxel
    count among the subjects in the batch; entries beyond a subject's own count are zero.
    """

    def __init__(self, config: Wav2Vec2BrainEncodingConfig) -> None:
        super().__init__()
        self.body = BODIES[config.head](config)
        self.dropout = nn.Dropout(config.final_dropout)
        rank = config.readout_rank
        self.low_rank = None if rank is None else nn.Linear(self.body.output_size, rank, bias=False)
        width = self.body.output_size if rank is None else rank
        self.readouts = nn.ModuleList(
            nn.Linear(width, count) for count in config.subject_voxel_counts
        )

    def forward(
        self, pooled: torch.Tensor, valid_bins: torch.Tensor, subject_ids: torch.Tensor
    ) -> torch.Tensor:
        """Predict voxels from pooled bins ``[B, H, D]`` for the heads ``subject_ids`` ``[B]``."""
        features = self.dropout(self.body(pooled, valid_bins))
        if self.low_rank is not None:
            features = self.low_rank(features)
        present = torch.unique(subject_ids).tolist()
        if len(present) == 1:
            return self.readouts[present[0]](features)
        width = max(self.readouts[s].out_features for s in present)
        predictions = features.new_zeros(features.shape[0], width)
        for subject in present:
            rows = (subject_ids == subject).nonzero(as_tuple=True)[0]
            readout = self.readouts[subject]
            predictions = predictions.index_put(
                (rows[:, None], torch.arange(readout.out_features, device=rows.device)[None, :]),
                readout(features[rows]),
            )
        return predictions

    def weight_matrices(self) -> list[torch.Tensor]:
        """Weight tensors penalised by ``head_l2`` (every parameter with more than one dimension)."""
        return [p for p in self.parameters() if p.ndim > 1]
