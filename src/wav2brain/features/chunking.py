"""Chunk planning for streamed extraction: which frames each forward pass sees and keeps.

All positions are in *frames* of the convolutional front end (one frame every ``stride`` samples,
20 ms for wav2vec2's 320-sample stride at 16 kHz). A window starts on a frame, so its input audio
starts on a multiple of the stride and the frames computed from it coincide exactly with the
frames of a single pass over the whole stimulus.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from wav2brain.modeling.tr_pooling import receptive_field


@dataclass(frozen=True)
class FrameGeometry:
    """Frame arithmetic of a stack of 1-d convolutions (no padding).

    Parameters
    ----------
    kernels, strides
        Kernel sizes and strides of the convolutional layers (samples, then frames of the
        previous layer), e.g. ``config.conv_kernel`` and ``config.conv_stride``.
    """

    kernels: tuple[int, ...]
    strides: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.kernels) != len(self.strides) or not self.kernels:
            raise ValueError(
                f"conv kernels {self.kernels} and strides {self.strides} must be non-empty and of "
                "equal length"
            )

    @property
    def stride(self) -> int:
        """Samples between consecutive frames (320 for wav2vec2)."""
        return receptive_field(self.kernels, self.strides)[0]

    @property
    def receptive_field(self) -> int:
        """Samples one frame depends on (400 for wav2vec2)."""
        return receptive_field(self.kernels, self.strides)[1]

    def n_frames(self, n_samples: int) -> int:
        """Frames a pass over ``n_samples`` samples yields (0 when shorter than the receptive field)."""
        if n_samples < self.receptive_field:
            return 0
        return (n_samples - self.receptive_field) // self.stride + 1

    def sample_span(self, start: int, stop: int) -> tuple[int, int]:
        """Samples ``[first, last)`` needed to compute frames ``[start, stop)``."""
        return start * self.stride, (stop - 1) * self.stride + self.receptive_field


@dataclass(frozen=True)
class Window:
    """One forward pass: frames ``[start, stop)`` go in, frames ``[core_start, core_stop)`` are kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int

    @property
    def length(self) -> int:
        """Frames fed to the transformer."""
        return self.stop - self.start

    @property
    def crop(self) -> slice:
        """Rows of the window's output that belong to its core."""
        return slice(self.core_start - self.start, self.core_stop - self.start)


def plan_windows(
    n_frames: int, chunk_frames: int, context_frames: int, causal: bool = False
) -> list[Window]:
    """Tile ``n_frames`` frames into consecutive cores, each with its context window.

    Cores are ``chunk_frames`` long (the last may be shorter) and partition ``[0, n_frames)``, so
    every frame is kept exactly once. Each window adds ``context_frames`` before its core and, unless
    ``causal``, after it, clipped to the stimulus. Interior windows therefore share one length and
    batch without padding; the first and last are shorter (nothing lies beyond the stimulus).
    """
    if n_frames < 1 or chunk_frames < 1 or context_frames < 0:
        raise ValueError(
            f"need n_frames >= 1, chunk_frames >= 1, context_frames >= 0; got {n_frames}, "
            f"{chunk_frames}, {context_frames}"
        )
    right = 0 if causal else context_frames
    windows = []
    for core_start in range(0, n_frames, chunk_frames):
        core_stop = min(core_start + chunk_frames, n_frames)
        start, stop = max(0, core_start - context_frames), min(n_frames, core_stop + right)
        windows.append(Window(start, stop, core_start, core_stop))
    return windows


def batch_windows(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Group consecutive windows of equal length into batches of at most ``batch_size``."""
    batch: list[Window] = []
    for window in windows:
        if batch and (len(batch) == batch_size or window.length != batch[0].length):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch
