"""HRF convolution and TR sampling of frame-rate activations, streamed block by block.

The kernel is nilearn's (``glover_hrf`` / ``spm_hrf`` of ``nilearn.glm.first_level``), sampled
finely, and integrated exactly over each frame's 20 ms interval: for a TR sampled at stimulus
time ``t`` the weight of frame ``i`` is ``H(t - i P) - H(t - (i + 1) P)``, with ``H`` the running
sum of the kernel. Sampling the convolution at the TR times is then a banded matrix
``[TRs, frames]`` applied with :class:`~wav2brain.features.resample.BandedSampler`; the 50 Hz
convolution is never formed. nilearn's ``compute_regressor`` is the oracle in the tests (run with
400 samples per TR: at its default of 50, its own onset snapping and one-step kernel offset differ
from the exact convolution by about 1 % of the peak).

The kernel sums to one (nilearn's normalisation), so a constant activation ``c`` held for longer
than the HRF maps to ``c``: the TR values stay in the units of the activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from wav2brain.features.resample import (
    AverageKernel,
    BandedSampler,
    FrameKernel,
    LanczosKernel,
    TRGrid,
    TRGridConfig,
    align_to_run,
    run_grid,
)


def hrf_kernel(hrf_model: str, dt_s: float, time_length_s: float = 32.0) -> np.ndarray:
    """nilearn's HRF sampled every ``dt_s`` seconds from lag 0, summing to one.

    Parameters
    ----------
    hrf_model : {"glover", "spm"}
        ``nilearn.glm.first_level.glover_hrf`` or ``spm_hrf``.
    dt_s : float
        Sampling step (s).
    time_length_s : float
        Kernel length (s).

    Returns
    -------
    array [time_length_s / dt_s] float64
        Sample ``j`` is the kernel at lag ``j dt_s`` (as ``np.convolve`` in nilearn uses it).
    """
    from nilearn.glm.first_level import glover_hrf, spm_hrf

    models = {"glover": glover_hrf, "spm": spm_hrf}
    if hrf_model not in models:
        raise ValueError(f"hrf_model must be one of {sorted(models)}, got {hrf_model!r}")
    if not dt_s > 0:
        raise ValueError(f"HRF sampling step must be > 0 s, got {dt_s}")
    return models[hrf_model](t_r=dt_s, oversampling=1, time_length=time_length_s)


@dataclass(frozen=True)
class HRFKernel:
    """The frame weights of an HRF: its integral over each frame interval (a ``FrameKernel``).

    Parameters
    ----------
    hrf_model : {"glover", "spm"}
        nilearn kernel.
    dt_s : float
        Resolution (s) of the kernel table.
    time_length_s : float
        Kernel length (s).
    """

    hrf_model: str
    dt_s: float
    time_length_s: float = 32.0
    _nodes: np.ndarray = field(init=False, repr=False, compare=False)
    _cumulative: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kernel = hrf_kernel(self.hrf_model, self.dt_s, self.time_length_s)
        # Sample j carries the mass of lags [(j - 1/2) dt, (j + 1/2) dt).
        nodes = (np.arange(kernel.size + 1) - 0.5) * self.dt_s
        object.__setattr__(self, "_nodes", nodes)
        object.__setattr__(self, "_cumulative", np.concatenate([[0.0], np.cumsum(kernel)]))

    @property
    def support_s(self) -> tuple[float, float]:
        """Lags (s) where the kernel has mass: from half a step before 0 to the kernel's end."""
        return (float(self._nodes[0]), float(self._nodes[-1]))

    def cumulative(self, lag_s: np.ndarray) -> np.ndarray:
        """``H(lag)``: kernel mass at lags below ``lag_s`` (s); 0 before the HRF, 1 after."""
        return np.interp(lag_s, self._nodes, self._cumulative)

    def weights(self, row_times: np.ndarray, frame_edges: np.ndarray) -> np.ndarray:
        """Kernel mass over each frame interval ``[edges[i], edges[i+1])`` for each row time (s)."""
        mass = self.cumulative(row_times[:, None] - frame_edges[None, :])
        return mass[:, :-1] - mass[:, 1:]


def grid_kernel(config: TRGridConfig, tr_s: float, frame_rate_hz: float) -> FrameKernel:
    """The lag kernel that ``config`` asks for at this TR (s) and frame rate (Hz)."""
    if config.method == "hrf":
        dt = 1.0 / (frame_rate_hz * config.oversampling)
        return HRFKernel(config.hrf_model, dt, config.hrf_length_s)
    if config.downsample == "lanczos":
        return LanczosKernel(tr_s, frame_rate_hz, config.lanczos_window, config.lanczos_cutoff_mult)
    return AverageKernel(tr_s)


class FrameToTRResampler:
    """Streaming frames (50 Hz) → TR grid, for every layer at once.

    Feed consecutive blocks (``start_frame``, ``{layer: [frames, units]}``), e.g. the
    :class:`~wav2brain.features.extract.ActivationChunk` s of ``iter_activations``; each call returns
    the rows it finished, and :meth:`finish` the rest. Only the rows still open (about
    ``kernel length / TR``, 22 for a 32-s HRF at TR 1.5 s) and the current block are in memory.
    With ``method="fir"`` the rows are the downsampled activations *before* delays; apply the
    delays with :func:`~wav2brain.features.resample.align_to_run`.

    Parameters
    ----------
    config : TRGridConfig
        Method and kernel settings.
    grid : TRGrid
        Rows to produce, in stimulus time (s).
    frame_rate_hz : float
        Frame rate (Hz) of the activations.
    block_frames : int, optional
        Frames per matrix product (default: 2 TRs when a TR is a whole number of frames).
    """

    def __init__(
        self,
        config: TRGridConfig,
        grid: TRGrid,
        frame_rate_hz: float = 50.0,
        block_frames: int | None = None,
    ) -> None:
        if not (np.isfinite(frame_rate_hz) and frame_rate_hz > 0):
            raise ValueError(f"frame rate must be a positive number of Hz, got {frame_rate_hz!r}")
        self.config = config
        self.grid = grid
        kernel = grid_kernel(config, grid.tr_s, frame_rate_hz)
        self._sampler = BandedSampler(
            kernel, grid, frame_rate_hz, block_frames, config.rank_tolerance
        )

    @property
    def support_s(self) -> tuple[float, float]:
        """Lags (s) between a row time and a frame time that carry weight: (min, max)."""
        return self._sampler.kernel.support_s

    @property
    def pending_rows(self) -> int:
        """Rows held in memory, started but not finished."""
        return self._sampler.pending_rows

    def push(self, start_frame: int, blocks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Consume one block of frames; return the rows it finished (``{layer: [rows, units]}``)."""
        return self._sampler.push(start_frame, blocks)

    def finish(self) -> dict[str, np.ndarray]:
        """The remaining rows, once the last block has been pushed."""
        return self._sampler.finish()

    def run(self, chunks: Iterable[tuple[int, Mapping[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """Consume all ``(start_frame, blocks)`` and return every row ``{layer: [n_rows, units]}``."""
        parts: dict[str, list[np.ndarray]] = {}
        for start_frame, blocks in chunks:
            for name, rows in self.push(start_frame, blocks).items():
                parts.setdefault(name, []).append(rows)
        for name, rows in self.finish().items():
            parts.setdefault(name, []).append(rows)
        return {name: np.concatenate(rows) for name, rows in parts.items()}


def resample_frames(
    frames: np.ndarray,
    frame_rate_hz: float,
    tr_s: float,
    n_trs: int,
    onset_s: float,
    config: TRGridConfig,
    reference_s: float = 0.0,
) -> np.ndarray:
    """Frames of one short stimulus onto a run's TRs with any :class:`TRGridConfig`.

    Parameters
    ----------
    frames : array [frames, units]
        Activations at ``frame_rate_hz`` from the stimulus start.
    frame_rate_hz : float
        Frame rate (Hz).
    tr_s : float
        Repetition time (s).
    n_trs : int
        TRs of the run.
    onset_s : float
        Scan time (s) at which the stimulus starts.
    config : TRGridConfig
        Method; with ``"fir"`` the output stacks the delayed copies (delay-major columns).
    reference_s : float
        Slice-time reference (s in ``[0, tr)``; :mod:`wav2brain.data.timing`).

    Returns
    -------
    array [n_trs, units] (``units * len(delays)`` for FIR) float32
    """
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"frames must be [frames, units], got shape {frames.shape}")
    run = run_grid(tr_s, onset_s, n_trs, reference_s)
    delays = config.delays if config.method == "fir" else None
    lead = max(delays or [0])  # delayed copies of the first TRs reach back before the scan
    grid = TRGrid(run.tr_s, run.first_time_s - lead * run.tr_s, run.n_rows + lead)
    rows = FrameToTRResampler(config, grid, frame_rate_hz).run([(0, {"x": frames})])["x"]
    return align_to_run(rows, grid, run, delays)


def frames_to_trs(
    frames: np.ndarray,
    frame_rate_hz: float,
    tr_s: float,
    n_trs: int,
    onset_s: float,
    hrf_model: str = "glover",
    oversampling: int = 16,
) -> np.ndarray:
    """HRF-convolved frames sampled at a run's TR times (TR ``k`` at scan time ``k tr``).

    Parameters
    ----------
    frames : array [frames, units]
        Activations at ``frame_rate_hz`` from the stimulus start (frame ``i`` covers
        ``[i, i + 1) / frame_rate_hz`` s of the stimulus).
    frame_rate_hz : float
        Frame rate (Hz), 50 for wav2vec2.
    tr_s : float
        Repetition time (s).
    n_trs : int
        TRs of the run.
    onset_s : float
        Scan time (s) at which the stimulus starts (may be negative or past the run).
    hrf_model : {"glover", "spm"}
        nilearn kernel.
    oversampling : int
        HRF table samples per frame.

    Returns
    -------
    array [n_trs, units] float32
    """
    config = TRGridConfig(method="hrf", hrf_model=hrf_model, oversampling=oversampling)
    return resample_frames(frames, frame_rate_hz, tr_s, n_trs, onset_s, config)
