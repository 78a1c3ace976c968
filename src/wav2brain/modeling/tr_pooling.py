"""Assign wav2vec2 frames to TR bins and average them (exact to the frame, vectorised).

A window of ``history_trs`` (H) TRs ends at the last valid sample of each example (the predicted TR).
With the TR length ``T = tr * sampling_rate`` (samples) and ``end`` the example's valid length
(samples), bin ``k`` (0 = oldest, H - 1 = most recent) covers samples
``[end - (H - k) * T, end - (H - k - 1) * T)``.

Frame ``i`` of the convolutional front end spans samples ``[stride * i, stride * i + field)``
(``stride`` = product of ``conv_stride``, 320 for wav2vec2; ``field`` = receptive field, 400).
A frame belongs to the bin that contains its centre, ``stride * i + field / 2``: the centre rule gives
every frame exactly one bin, so bins of consecutive TRs never share a frame, and a frame's receptive
field reaches at most half its width (200 samples, 12.5 ms for wav2vec2) past its bin's edges. Frames whose centre lies before the
window are ignored; bins before the start of the audio (a window with less than H TRs of audio) get
no frames, are zero after pooling (left padding) and are flagged as invalid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def receptive_field(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> tuple[int, int]:
    """Return ``(stride, field)`` (samples) of a stack of 1-D convolutions.

    Parameters
    ----------
    conv_kernel, conv_stride : sequence of int
        Kernel sizes and strides of the convolutional layers, input side first.

    Returns
    -------
    stride : int
        Distance between consecutive frames (samples).
    field : int
        Number of input samples one frame depends on (samples).
    """
    stride, field = 1, 1
    for kernel, step in zip(conv_kernel, conv_stride, strict=True):
        field += (kernel - 1) * stride
        stride *= step
    return stride, field


def tr_bin_weights(
    sample_lengths: torch.Tensor,
    n_frames: int,
    *,
    tr: float,
    history_trs: int,
    sampling_rate: int,
    frame_stride: int,
    frame_field: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaging matrix from frames to the TR bins of each example.

    Parameters
    ----------
    sample_lengths : torch.Tensor
        ``[B]`` valid audio length of each example (samples); padding follows it.
    n_frames : int
        Number of frames of the padded batch (frames).
    tr : float
        Repetition time (seconds).
    history_trs : int
        Number of bins H (TRs).
    sampling_rate : int
        Audio sampling rate (Hz).
    frame_stride, frame_field : int
        Frame hop and receptive field (samples), see :func:`receptive_field`.

    Returns
    -------
    weights : torch.Tensor
        ``[B, H, n_frames]`` float32; row ``(b, k)`` averages the frames of bin ``k`` (all zeros for an
        empty bin), so ``weights @ frames`` gives the pooled ``[B, H, D]`` features.
    valid_bins : torch.Tensor
        ``[B, H]`` bool, True where a bin holds at least one frame.
    """
    device = sample_lengths.device
    lengths = sample_lengths.to(torch.float64)
    frame_index = torch.arange(n_frames, device=device, dtype=torch.float64)
    centres = frame_index * frame_stride + frame_field / 2.0
    # a frame exists for an example only if its whole receptive field lies inside the valid audio
    exists = frame_index[None, :] * frame_stride + frame_field <= lengths[:, None]
    tr_samples = tr * sampling_rate
    offsets = torch.arange(history_trs, -1, -1, device=device, dtype=torch.float64) * tr_samples
    edges = lengths[:, None] - offsets[None, :]  # [B, H + 1], oldest edge first
    inside = (centres[None, None, :] >= edges[:, :-1, None]) & (
        centres[None, None, :] < edges[:, 1:, None]
    )
    membership = (inside & exists[:, None, :]).to(torch.float32)
    counts = membership.sum(dim=-1)
    weights = membership / counts.clamp(min=1.0)[..., None]
    return weights, counts > 0
