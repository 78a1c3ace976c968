"""The convolutional front end and feature projection, streamed exactly over frame ranges.

Every frame of the front end depends on 400 samples only, except for one thing: wav2vec2-base's
``feat_extract_norm="group"`` front end (also HuBERT-base, WavLM-base) normalises the first conv
layer with ``GroupNorm(512, 512)``, i.e. each channel by its mean and variance over the *whole
input's time axis*. Cutting the input into chunks would change those statistics (a per-chunk
normalisation, an approximation whose error depends on loudness changes across the story). We
instead compute them exactly, in a streaming first pass over the first conv layer (cheap: one input
channel) with Chan's parallel mean/variance merge in float64, and normalise every chunk with the
global statistics. The result equals a single pass over the whole stimulus, which is the model's
definition of its response to that stimulus. ``feat_extract_norm="layer"`` front ends
(wav2vec2-large-lv60, data2vec-audio) normalise each frame alone and need no first pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wav2brain.features.chunking import FrameGeometry, Window

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class GroupNormStats:
    """Per-channel mean and variance (biased) of the first conv layer over the whole input."""

    mean: torch.Tensor
    var: torch.Tensor


def has_group_norm(backbone: nn.Module) -> bool:
    """Whether the first conv layer normalises over time (``feat_extract_norm="group"``)."""
    from torch import nn

    first = backbone.feature_extractor.conv_layers[0]
    return isinstance(getattr(first, "layer_norm", None), nn.GroupNorm)


def geometry_of(backbone: nn.Module) -> FrameGeometry:
    """Frame stride and receptive field of ``backbone``'s conv front end (from its config)."""
    config = backbone.config
    return FrameGeometry(tuple(config.conv_kernel), tuple(config.conv_stride))


def group_norm_stats(
    backbone: nn.Module, audio: torch.Tensor, block_samples: int
) -> GroupNormStats:
    """Global statistics of the first conv layer's output, from moments of the audio alone.

    The first conv layer is linear (``y_cj = w_c . p_j + b_c`` for the audio patch ``p_j`` of
    ``kernel`` samples at ``j * stride``), so over all patches ``mean_c = w_c . mu + b_c`` and
    ``var_c = w_c' Sigma w_c`` with ``mu`` and ``Sigma`` the mean and (biased) covariance of the
    patches: a ``kernel x kernel`` matrix instead of 512 channels at 3.2 kHz. Patches are streamed
    in blocks and merged with Chan's parallel algorithm, in float64.

    Parameters
    ----------
    backbone
        A model whose first conv layer has a ``GroupNorm`` (see :func:`has_group_norm`).
    audio
        Waveform ``[samples]`` (16 kHz), on the model's device.
    block_samples
        Audio samples per block (bounds memory).
    """
    import torch

    conv = backbone.feature_extractor.conv_layers[0].conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    patches = audio.unfold(0, kernel, stride)
    per_block = max(1, block_samples // stride)
    count = 0
    mean = torch.zeros(kernel, dtype=torch.float64, device=audio.device)
    m2 = torch.zeros(kernel, kernel, dtype=torch.float64, device=audio.device)
    for first in range(0, patches.shape[0], per_block):
        block = patches[first : first + per_block].to(torch.float64)
        block_mean = block.mean(dim=0)
        centred = block - block_mean
        delta = block_mean - mean
        total = count + block.shape[0]
        m2 = m2 + centred.T @ centred + torch.outer(delta, delta) * (count * block.shape[0] / total)
        mean = mean + delta * (block.shape[0] / total)
        count = total
    weight = conv.weight[:, 0, :].to(torch.float64)
    bias = conv.bias.to(torch.float64) if conv.bias is not None else 0.0
    var = ((weight @ (m2 / count)) * weight).sum(dim=1)
    return GroupNormStats(mean=weight @ mean + bias, var=var)


class FrontEnd:
    """Projected features ``[frames, hidden]`` (the transformer's input) for any frame range.

    Parameters
    ----------
    backbone
        A wav2vec2-family backbone in eval mode.
    audio
        Waveform ``[samples]`` (16 kHz mono) on the model's device and dtype.
    stats
        Global group-norm statistics (:func:`group_norm_stats`) when the front end has a group norm.
    """

    def __init__(
        self, backbone: nn.Module, audio: torch.Tensor, stats: GroupNormStats | None
    ) -> None:
        self.backbone = backbone
        self.audio = audio
        self.stats = stats
        self.geometry = geometry_of(backbone)

    def _first_layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """First conv layer, with the global group-norm statistics when there are any."""
        if self.stats is None:
            return layer(x)
        import torch

        norm = layer.layer_norm
        x = layer.conv(x)
        scale = torch.rsqrt(self.stats.var + norm.eps).to(x.dtype) * norm.weight
        shift = norm.bias - self.stats.mean.to(x.dtype) * scale
        return layer.activation(x * scale[:, None] + shift[:, None])

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """Features of frames ``[start, stop)``, from one call over the samples they cover.

        With global statistics (or a layer-norm front end) each frame depends on its own 400
        samples only; a group-norm front end without them normalises over this range.
        """
        first, last = self.geometry.sample_span(start, stop)
        x = self.audio[first:last][None, None]
        layers = self.backbone.feature_extractor.conv_layers
        x = self._first_layer(layers[0], x)
        for layer in layers[1:]:
            x = layer(x)
        projected = self.backbone.feature_projection(x.transpose(1, 2))
        if isinstance(projected, tuple):
            projected = projected[0]
        return projected[0]


class TransformerInputs:
    """Transformer inputs ``[batch, frames, hidden]`` for successive batches of windows.

    Front-end frames are computed once each, in pieces of ``piece_frames``, and kept in a buffer
    that only spans the current batch, so memory does not grow with the stimulus. Windows must come
    in order of non-decreasing start (as :func:`~wav2brain.features.chunking.plan_windows` makes
    them).

    With ``causal=True`` and a group-norm front end, each window's front end is instead computed
    in one call over the window's own audio, normalised by that audio's statistics: global
    statistics would let later audio leak into earlier frames, and this way a causal window equals
    a single pass over exactly the audio it covers (at the price of recomputing the front end for
    the context, and of the conv layers' memory for a whole window).

    Parameters
    ----------
    backbone
        A wav2vec2-family backbone in eval mode.
    audio
        Waveform ``[samples]`` (16 kHz mono) on the model's device and dtype.
    piece_frames
        Frames per front-end call (bounds the conv layers' memory).
    causal
        Whether windows must not depend on audio after their end.
    """

    def __init__(
        self, backbone: nn.Module, audio: torch.Tensor, piece_frames: int, causal: bool
    ) -> None:
        self.per_window = causal and has_group_norm(backbone)
        stats = None
        if has_group_norm(backbone) and not causal:
            block = piece_frames * geometry_of(backbone).stride
            stats = group_norm_stats(backbone, audio, block)
        self.frontend = FrontEnd(backbone, audio, stats)
        self.piece_frames = piece_frames
        self._buffer = audio.new_zeros((0, backbone.config.hidden_size))
        self._start = 0

    def __call__(self, windows: Sequence[Window]) -> torch.Tensor:
        """Stacked inputs of ``windows`` (all of one length)."""
        import torch

        if self.per_window:
            return torch.stack([self.frontend.frames(w.start, w.stop) for w in windows])
        start, stop = windows[0].start, max(w.stop for w in windows)
        pieces = [self._buffer[start - self._start :]]
        for first in range(
            max(start, self._start + self._buffer.shape[0]), stop, self.piece_frames
        ):
            pieces.append(self.frontend.frames(first, min(first + self.piece_frames, stop)))
        self._buffer, self._start = torch.cat(pieces), start
        return torch.stack([self._buffer[w.start - start : w.stop - start] for w in windows])
