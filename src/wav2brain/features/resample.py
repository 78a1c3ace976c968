"""Frame-rate activations onto a TR grid: the time conventions, kernels and the banded sampler.

Every route from 50 Hz frames to one value per TR is a linear map ``y[k] = sum_i W[k, i] x[i]``
whose weight depends only on the lag between the TR's sample time and the frame, and is zero
outside a finite lag window: 32 s for an HRF, ±3 TRs for a Lanczos filter, one TR for an average.
``W`` is therefore banded, and :class:`BandedSampler` applies it block by block with a matrix
product over the frames of each block, keeping only the rows not yet finished, so it never holds
more than a block of frames. Dense, that is the multiply-adds of a strided full-rate convolution
(``TRs × kernel frames × units``) done as matrix products; when the TR is a whole number of frames
every block has the same weights, and their SVD truncated at float32 rounding
(:func:`factorize`, rank about 8 for a 32-s HRF over 2 TRs) cuts the work about 2.5-fold.

Time conventions (all in seconds, ``P = 1 / frame_rate_hz``):

- Frame ``i`` stands for the stimulus interval ``[i P, (i + 1) P)`` (zero-order hold over its hop).
  Its receptive field, ``[i P, i P + 25 ms)``, is centred 2.5 ms later than that interval: far below
  the resolution of an HRF or a TR. Outside the stimulus the activations count as zero (no sound,
  no input), which is how ``nilearn.glm.first_level.compute_regressor`` treats events.
- TR ``k`` of a run samples the brain at stimulus time ``k tr + reference - onset``: the rule of
  :mod:`wav2brain.data.timing`, which :class:`~wav2brain.data.windows.BrainWindows` follows too
  (nilearn's ``frame_times`` with ``slice_time_ref = reference / tr``). The slice-time reference
  (s) is a property of the run's data, stored in the ``responses`` table, not a feature setting.
- A :class:`TRGrid` holds rows in *stimulus* time: ``first_time_s + k tr_s``. Features are computed
  once per stimulus on the grid of phase ``(reference - onset) mod tr`` (:func:`grid_phase`), over
  every row the kernel can reach (:func:`stimulus_grid`), then aligned to each run by a whole-row
  shift (:func:`align_to_run`): runs with the same TR and the same phase share one computation; a
  run with another TR (1.5 vs 1.52 s) or another sub-TR phase gets its own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from wav2brain.data.timing import first_sample_time

PHASE_DECIMALS = 6
"""Grid phases (s) are rounded to microseconds, so equal timings give equal cache keys."""

NEGLIGIBLE_WEIGHT = 1e-12
"""Weights below this fraction of a block's largest are set to zero: the HRF's gamma tails reach
float32 denormals, whose arithmetic is about 100 times slower on x86 CPUs."""


@dataclass(frozen=True)
class TRGridConfig:
    """How frame-rate activations become one row per TR.

    Parameters
    ----------
    method : {"hrf", "fir"}
        ``"hrf"``: convolve with a canonical HRF and sample at the TR times. ``"fir"``: anti-aliased
        downsampling to the TR times, then stacked copies delayed by ``delays`` TRs.
    hrf_model : {"glover", "spm"}
        nilearn's kernel (``nilearn.glm.first_level.glover_hrf`` / ``spm_hrf``).
    hrf_length_s : float
        HRF kernel length (s), nilearn's ``time_length``.
    oversampling : int
        HRF table samples per frame period (kernel resolution ``1 / (frame_rate * oversampling)``
        s; 16 at 50 Hz is 1.25 ms).
    downsample : {"lanczos", "average"}
        FIR only. ``"lanczos"``: HuthLab's ``lanczosinterp2D`` filter; ``"average"``: exact mean
        of the activations over the TR-long window centred on the sample time.
    lanczos_window : int
        Lobes of the Lanczos kernel on each side (HuthLab: 3).
    lanczos_cutoff_mult : float
        Cutoff as a multiple of the TR rate ``1 / tr``, i.e. of twice the TR Nyquist frequency
        (HuthLab's ``cutoff_mult``, 1.0).
    delays : tuple of int
        FIR only: delays in TRs of the stacked copies (the encoding literature uses 1 to 4).
    rank_tolerance : float
        Relative singular-value cut used to factorise each block of weights
        (:func:`factorize`): outputs change by at most about this fraction of their scale
        (1e-7 is float32 rounding); 0 keeps the exact dense product.
    """

    method: str = "hrf"
    hrf_model: str = "glover"
    hrf_length_s: float = 32.0
    oversampling: int = 16
    downsample: str = "lanczos"
    lanczos_window: int = 3
    lanczos_cutoff_mult: float = 1.0
    delays: tuple[int, ...] = (1, 2, 3, 4)
    rank_tolerance: float = 1e-7

    def __post_init__(self) -> None:
        object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))
        checks = (
            (self.method in ("hrf", "fir"), "method", "'hrf' or 'fir'"),
            (self.hrf_model in ("glover", "spm"), "hrf_model", "'glover' or 'spm'"),
            (self.hrf_length_s > 0, "hrf_length_s", "> 0 s"),
            (int(self.oversampling) == self.oversampling >= 1, "oversampling", "an integer >= 1"),
            (self.downsample in ("lanczos", "average"), "downsample", "'lanczos' or 'average'"),
            (int(self.lanczos_window) == self.lanczos_window >= 1, "lanczos_window", "an int >= 1"),
            (self.lanczos_cutoff_mult > 0, "lanczos_cutoff_mult", "> 0"),
            (len(self.delays) > 0 and min(self.delays) >= 0, "delays", "non-negative TR counts"),
            (len(set(self.delays)) == len(self.delays), "delays", "distinct TR counts"),
            (0.0 <= self.rank_tolerance < 1e-2, "rank_tolerance", "in [0, 0.01)"),
        )
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"TRGridConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict:
        """The settings that change results (for cache keys and metadata)."""
        return asdict(self)


@dataclass(frozen=True)
class TRGrid:
    """Rows at stimulus times ``first_time_s + k * tr_s`` for ``k < n_rows`` (seconds)."""

    tr_s: float
    first_time_s: float
    n_rows: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tr_s) and self.tr_s > 0):
            raise ValueError(f"TR must be a positive number of seconds, got {self.tr_s!r}")
        if not math.isfinite(self.first_time_s):
            raise ValueError(f"first row time must be finite (s), got {self.first_time_s!r}")
        if self.n_rows < 0:
            raise ValueError(f"number of TRs must be >= 0, got {self.n_rows!r}")

    def times(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stimulus times (s) of rows ``start`` to ``stop`` (float64)."""
        stop = self.n_rows if stop is None else stop
        return self.first_time_s + np.arange(start, stop, dtype=np.float64) * self.tr_s


def run_grid(tr_s: float, onset_s: float, n_trs: int, reference_s: float = 0.0) -> TRGrid:
    """The TRs of a run in stimulus time: row ``k`` at ``k tr + reference - onset`` s.

    The times are :func:`wav2brain.data.timing.sample_times` of the run, bit for bit (the same
    float64 operations), so a feature row and a training window of one TR cannot disagree.

    Parameters
    ----------
    tr_s : float
        Repetition time (s).
    onset_s : float
        Scan time (s) at which the stimulus starts, counted from the first stored TR.
    n_trs : int
        TRs in the run.
    reference_s : float
        Slice-time reference (s in ``[0, tr)``): when in each TR its sample is taken (0 =
        acquisition start; fMRIPrep output: its ``StartTime``, about half a TR).
    """
    if not (math.isfinite(tr_s) and tr_s > 0):
        raise ValueError(f"TR must be a positive number of seconds, got {tr_s!r}")
    return TRGrid(float(tr_s), first_sample_time(tr_s, onset_s, reference_s), int(n_trs))


def grid_phase(tr_s: float, onset_s: float, reference_s: float = 0.0) -> float:
    """Stimulus time (s) in ``[0, tr)`` of the first run TR sampled after the stimulus starts.

    Rounded to :data:`PHASE_DECIMALS` so that equal timings give equal cache keys.
    """
    phase = round(first_sample_time(tr_s, onset_s, reference_s) % tr_s, PHASE_DECIMALS)
    return 0.0 if phase >= tr_s else phase


def stimulus_grid(
    tr_s: float, phase_s: float, duration_s: float, support_s: tuple[float, float]
) -> TRGrid:
    """The stimulus-relative grid at ``phase_s + k tr_s`` covering every row that can be non-zero.

    Parameters
    ----------
    tr_s : float
        Repetition time (s).
    phase_s : float
        Grid phase (s) in ``[0, tr)`` (:func:`grid_phase`).
    duration_s : float
        Time (s) covered by the frames (``n_frames / frame_rate``).
    support_s : tuple of float
        The kernel's lags (min, max) in s: rows at times outside
        ``[support[0], duration + support[1]]`` are zero and left out.
    """
    if not 0 <= phase_s < tr_s:
        raise ValueError(f"grid phase must be in [0, TR={tr_s}) s, got {phase_s}")
    lag_min, lag_max = support_s
    first = math.ceil((lag_min - phase_s) / tr_s)
    last = math.floor((duration_s + lag_max - phase_s) / tr_s)
    return TRGrid(float(tr_s), float(phase_s + first * tr_s), max(0, last - first + 1))


def row_offset(stimulus: TRGrid, run: TRGrid) -> int:
    """Index in ``stimulus`` of run row 0 (negative when the run starts before the stimulus).

    Raises ValueError when the grids differ in TR or in sub-TR phase.
    """
    shift = (run.first_time_s - stimulus.first_time_s) / stimulus.tr_s
    offset = round(shift)
    mismatch = abs(shift - offset) * stimulus.tr_s
    if abs(run.tr_s - stimulus.tr_s) > 10**-PHASE_DECIMALS or mismatch > 10 ** -(
        PHASE_DECIMALS - 1
    ):
        raise ValueError(
            f"run grid (TR {run.tr_s} s, first sample at {run.first_time_s} s of the stimulus) "
            f"is not on the stimulus grid (TR {stimulus.tr_s} s, phase {stimulus.first_time_s} s)"
        )
    return int(offset)


def align_to_run(
    rows: np.ndarray, stimulus: TRGrid, run: TRGrid, delays: Sequence[int] | None = None
) -> np.ndarray:
    """Rows of a stimulus grid placed on a run's TRs, zero outside, optionally FIR-delayed.

    Parameters
    ----------
    rows : array [stimulus.n_rows, units]
        Features on ``stimulus`` (may be a memory map; only the needed rows are read).
    stimulus, run : TRGrid
        Grids sharing TR and phase (see :func:`row_offset`).
    delays : sequence of int, optional
        Delays in TRs; the result stacks one copy per delay, delay-major:
        columns ``[d * units, (d + 1) * units)`` hold the features ``delays[d]`` TRs earlier.

    Returns
    -------
    array [run.n_trs, units * len(delays or [0])] float32. When the run lies inside the
    stimulus grid and no delay but 0 is asked for, this is a slice (a view) of ``rows``: a
    story heard by many subjects is then never copied once per run, and a memory-mapped cache
    entry is only read where used. Copy it before writing to it (a memory map is read-only).
    """
    if rows.ndim != 2 or rows.shape[0] != stimulus.n_rows:
        raise ValueError(
            f"features must be [{stimulus.n_rows} rows, units] for this grid, got {rows.shape}"
        )
    offset = row_offset(stimulus, run)
    delays = [0] if delays is None else list(delays)
    inside = offset >= 0 and offset + run.n_rows <= stimulus.n_rows
    if delays == [0] and inside and rows.dtype == np.float32:
        return rows[offset : offset + run.n_rows]
    units = rows.shape[1]
    out = np.zeros((run.n_rows, units * len(delays)), dtype=np.float32)
    for d, delay in enumerate(delays):
        first = offset - delay
        lo, hi = max(0, -first), min(run.n_rows, stimulus.n_rows - first)
        if hi > lo:
            out[lo:hi, d * units : (d + 1) * units] = rows[first + lo : first + hi]
    return out


class FrameKernel(Protocol):
    """A lag kernel: ``weights(row_times, frame_edges)`` and its reach ``support_s``."""

    support_s: tuple[float, float]
    """Lags ``row time - frame time`` (s) outside which every weight is zero: (min, max)."""

    def weights(self, row_times: np.ndarray, frame_edges: np.ndarray) -> np.ndarray:
        """Weights ``[rows, frames]`` of frames ``[edges[i], edges[i+1])`` (s) for each row time."""


def lanczos(t: np.ndarray, cutoff_hz: float, window: int) -> np.ndarray:
    """HuthLab's ``lanczosfun``: ``a sin(pi x) sin(pi x / a) / (pi x)^2`` at ``x = t cutoff``.

    From ``lanczosinterp2D`` in HuthLab's ``interpdata.py`` (Huth et al. 2016): 1 at ``x = 0``,
    0 for ``|x| > a``; ``t`` in seconds, ``cutoff_hz`` the TR rate times ``cutoff_mult``.
    """
    x = np.asarray(t, dtype=np.float64) * cutoff_hz
    safe = np.where(x == 0, 1.0, x)
    value = window * np.sin(np.pi * safe) * np.sin(np.pi * safe / window) / (np.pi * safe) ** 2
    value = np.where(x == 0, 1.0, value)
    return np.where(np.abs(x) > window, 0.0, value)


@dataclass(frozen=True)
class LanczosKernel:
    """HuthLab's Lanczos downsampling, evaluated at frame centres and rescaled to a mean.

    HuthLab's ``lanczosinterp2D(data, oldtime, newtime, window=3, cutoff_mult=1.0)`` multiplies the
    data by ``lanczos(newtime - oldtime)`` with ``cutoff = cutoff_mult / mean(diff(newtime))``. Its
    rows sum to about ``frame_rate / cutoff`` (75 at 50 Hz and TR 1.5 s), so its output scales with
    the input rate. We multiply by ``cutoff / frame_rate`` so that a constant input maps to about
    the same constant; the filter is otherwise HuthLab's.
    """

    tr_s: float
    frame_rate_hz: float
    window: int = 3
    cutoff_mult: float = 1.0

    @property
    def cutoff_hz(self) -> float:
        """Cutoff (Hz): ``cutoff_mult / tr``, the TR Nyquist frequency times 2."""
        return self.cutoff_mult / self.tr_s

    @property
    def support_s(self) -> tuple[float, float]:
        """Reach: ``±window / cutoff`` s around the sample, plus half a frame for the centres."""
        reach = self.window / self.cutoff_hz + 0.5 / self.frame_rate_hz
        return (-reach, reach)

    def weights(self, row_times: np.ndarray, frame_edges: np.ndarray) -> np.ndarray:
        """Lanczos weights of the frame centres, scaled by ``cutoff / frame_rate``."""
        centres = 0.5 * (frame_edges[:-1] + frame_edges[1:])
        lags = row_times[:, None] - centres[None, :]
        return lanczos(lags, self.cutoff_hz, self.window) * (self.cutoff_hz / self.frame_rate_hz)


@dataclass(frozen=True)
class AverageKernel:
    """Exact mean over the TR-long window centred on each sample time.

    Each frame weighs by the fraction of its interval inside the window, divided by the TR, so a
    constant input maps to itself. The window is centred like the Lanczos sample, so both
    downsamplers (and their FIR delays) refer to the same instant; with a slice-time reference of
    half a TR it is exactly the acquisition interval of the TR.
    """

    tr_s: float

    @property
    def support_s(self) -> tuple[float, float]:
        """Reach: half a TR on each side (s)."""
        return (-0.5 * self.tr_s, 0.5 * self.tr_s)

    def weights(self, row_times: np.ndarray, frame_edges: np.ndarray) -> np.ndarray:
        """Overlap (s) of each frame with ``[t - tr / 2, t + tr / 2)``, divided by the TR."""
        lo = np.maximum(frame_edges[None, :-1], row_times[:, None] - 0.5 * self.tr_s)
        hi = np.minimum(frame_edges[None, 1:], row_times[:, None] + 0.5 * self.tr_s)
        return np.clip(hi - lo, 0.0, None) / self.tr_s


@functools.cache
def _blas_controller():
    """A ``threadpoolctl`` controller (threadpoolctl comes with nilearn's scikit-learn).

    The block products are small (a few MFLOP): split across threads they gain little, and on a
    loaded machine OpenBLAS threads waiting for each other made them 200 times slower (measured
    with 2 threads at load 6). :meth:`BandedSampler.push` runs them on one thread.
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _float32(matrix: np.ndarray) -> np.ndarray:
    """float32 copy with entries below ``NEGLIGIBLE_WEIGHT`` of the largest set to zero."""
    matrix = np.array(matrix, dtype=np.float64)
    matrix[np.abs(matrix) < NEGLIGIBLE_WEIGHT * np.abs(matrix).max(initial=0.0)] = 0.0
    return matrix.astype(np.float32)


def factorize(weights: np.ndarray, tolerance: float) -> tuple[np.ndarray | None, np.ndarray]:
    """A block of weights ``[rows, frames]`` as ``left @ right`` of low rank, when it saves work.

    An HRF is smooth, so the weights of a few seconds of frames for the ~25 rows they reach have a
    numerical rank of about 10 (singular values fall below 1e-7 of the largest). Truncating the SVD
    there changes each output by at most ``tolerance * s_max * ||frames of the block||`` and cuts
    the multiply-adds per unit from ``rows * frames`` to ``rank * (rows + frames)``: about 2.5
    times fewer for a 32-s HRF at TR 1.5 s. Where that is not a third cheaper (box or oscillating
    kernels), or ``tolerance`` is 0, the dense block is returned as ``(None, weights)``.
    """
    rows, frames = weights.shape
    if tolerance > 0 and min(rows, frames) > 4:
        u, s, vt = np.linalg.svd(weights, full_matrices=False)
        rank = int(np.count_nonzero(s > tolerance * s[0])) if s[0] > 0 else 0
        if rank * (rows + frames) <= 0.67 * rows * frames:
            return _float32(u[:, :rank] * s[:rank]), _float32(vt[:rank])
    return None, _float32(weights)


class BandedSampler:
    """Apply a lag kernel from consecutive frame blocks to the rows of a grid, streaming.

    Each block's frames contribute to every row they reach through one matrix product per
    sub-block of ``block_frames`` frames; a row is emitted (in order) once every frame that can
    reach it has arrived. Sub-blocks sit on a global grid of ``block_frames`` (a block cut by the end
    of a call waits, copied, for the next one); when that is a whole number of TRs every full
    sub-block has the same weights, which are then computed and factorised (:func:`factorize`)
    once. Otherwise weights are computed per sub-block, dense. Memory: the pending rows (kernel reach / TR of them) and one sub-block.

    Parameters
    ----------
    kernel : FrameKernel
        Weights as a function of the lag between row time and frame time.
    grid : TRGrid
        Output rows, in stimulus time (s).
    frame_rate_hz : float
        Frames per second of the input (50 for wav2vec2).
    block_frames : int
        Frames per matrix product, or None: 2 TRs when a TR is a whole number of frames (the
        weights then repeat), else 256.
    rank_tolerance : float
        See :func:`factorize` (used only for repeating weights); 0 = exact dense products.
    """

    def __init__(
        self,
        kernel: FrameKernel,
        grid: TRGrid,
        frame_rate_hz: float,
        block_frames: int | None = None,
        rank_tolerance: float = 0.0,
    ) -> None:
        if not (math.isfinite(frame_rate_hz) and frame_rate_hz > 0):
            raise ValueError(f"frame rate must be a positive number of Hz, got {frame_rate_hz!r}")
        frames_per_tr = grid.tr_s * frame_rate_hz
        whole = abs(frames_per_tr - round(frames_per_tr)) < 1e-6
        if block_frames is None:
            block_frames = 2 * round(frames_per_tr) if whole else 256
        if block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {block_frames}")
        self.kernel = kernel
        self.grid = grid
        self.frame_period_s = 1.0 / float(frame_rate_hz)
        self.block_frames = int(block_frames)
        trs_per_block = block_frames / frames_per_tr
        self.repeats = abs(trs_per_block - round(trs_per_block)) < 1e-6
        self.rank_tolerance = float(rank_tolerance)
        self._factors: dict[tuple, tuple[np.ndarray | None, np.ndarray]] = {}
        self._scratch = [np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)]
        self._carry: dict[str, np.ndarray] = {}
        self.next_frame = 0
        self.next_row = 0
        self._pending: dict[str, np.ndarray] = {}
        self._units: dict[str, int] | None = None

    @property
    def pending_rows(self) -> int:
        """Rows started but not yet emitted (bounded by the kernel reach in TRs, plus a block)."""
        return max((acc.shape[0] for acc in self._pending.values()), default=0)

    def _row_range(self, t_start: float, t_stop: float) -> tuple[int, int]:
        """Rows whose kernel window can overlap frames in ``[t_start, t_stop)`` (s)."""
        lag_min, lag_max = self.kernel.support_s
        tr, first = self.grid.tr_s, self.grid.first_time_s
        lo = math.floor((t_start + lag_min - first) / tr)
        hi = math.ceil((t_stop + lag_max - first) / tr) + 1
        return max(lo, self.next_row, 0), min(hi, self.grid.n_rows)

    def _rows_done(self, t_stop: float) -> int:
        """Rows that no frame at or after ``t_stop`` (s) can reach."""
        lag_min = self.kernel.support_s[0]
        tr, first = self.grid.tr_s, self.grid.first_time_s
        done = math.floor((t_stop + lag_min - first) / tr)
        return int(min(max(done, 0), self.grid.n_rows))

    def _check_block(self, start_frame: int, blocks: Mapping[str, np.ndarray]) -> int:
        if start_frame != self.next_frame:
            raise ValueError(
                f"frame blocks must be consecutive: expected start frame {self.next_frame}, "
                f"got {start_frame}"
            )
        if not blocks:
            raise ValueError("a frame block must hold at least one layer")
        shapes = {name: np.shape(value) for name, value in blocks.items()}
        units = {name: shape[1] for name, shape in shapes.items() if len(shape) == 2}
        n_frames = {shape[0] for shape in shapes.values()}
        if len(units) != len(shapes) or len(n_frames) != 1:
            raise ValueError(f"each layer must be [frames, units] with equal frames, got {shapes}")
        if self._units is None:
            self._units = units
        elif units != self._units:
            raise ValueError(
                f"layers or unit counts changed between blocks: {self._units} → {units}"
            )
        return n_frames.pop()

    def _extend_pending(self, stop_row: int) -> None:
        """Grow the pending accumulators to cover rows ``next_row`` to ``stop_row``."""
        assert self._units is not None
        for name, units in self._units.items():
            acc = self._pending.get(name)
            have = 0 if acc is None else acc.shape[0]
            need = stop_row - self.next_row
            if need > have:
                extra = np.zeros((need - have, units), dtype=np.float32)
                self._pending[name] = extra if acc is None else np.concatenate([acc, extra])

    def _emit(self, stop_row: int) -> dict[str, np.ndarray]:
        """Pop finished rows ``next_row`` to ``stop_row`` (zeros where no frame reached)."""
        self._extend_pending(stop_row)
        n = max(0, stop_row - self.next_row)
        out = {name: acc[:n].copy() for name, acc in self._pending.items()}
        self._pending = {name: acc[n:] for name, acc in self._pending.items()}
        self.next_row += n
        return out

    def push(self, start_frame: int, blocks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Consume frames ``[start_frame, start_frame + n)`` of every layer; return finished rows.

        Parameters
        ----------
        start_frame : int
            Index of the block's first frame; blocks must be consecutive from frame 0.
        blocks : mapping of str to array [frames, units]
            Activations per layer (numpy or CPU torch; converted to float32).

        Returns
        -------
        dict of str to array [rows, units] float32
            Rows finished by this block, in order (possibly zero rows).
        """
        n_frames = self._check_block(start_frame, blocks)
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in blocks.items()}
        stop_frame = start_frame + n_frames
        size = self.block_frames
        pieces: list[tuple[int, dict[str, np.ndarray]]] = []
        position = start_frame
        if self._carry:  # complete the block begun by the previous call
            carried = next(iter(self._carry.values())).shape[0]
            take = min(size - carried, n_frames)
            head = {k: np.concatenate([self._carry[k], v[:take]]) for k, v in arrays.items()}
            self._carry = {}
            if carried + take < size:
                self._carry = head
            else:
                pieces.append((start_frame - carried, head))
            position += take
        while position + size <= stop_frame:
            offset = position - start_frame
            pieces.append((position, {k: v[offset : offset + size] for k, v in arrays.items()}))
            position += size
        if position < stop_frame:  # a partial block waits for the next call (copied, < size)
            self._carry = {k: v[position - start_frame :].copy() for k, v in arrays.items()}
        with _blas_controller().limit(limits=1, user_api="blas"):
            self._accumulate(pieces)
        self.next_frame = stop_frame
        return self._emit(self._rows_done(self._applied_frame() * self.frame_period_s))

    def _applied_frame(self) -> int:
        """First frame whose contribution is not yet in the pending rows."""
        carried = next(iter(self._carry.values())).shape[0] if self._carry else 0
        return self.next_frame - carried

    def _accumulate(self, pieces: Sequence[tuple[int, Mapping[str, np.ndarray]]]) -> None:
        """Add the contributions of ``(first frame, {layer: [frames, units]})`` to pending rows."""
        for lo, piece in pieces:
            hi = lo + next(iter(piece.values())).shape[0]
            row_lo, row_hi = self._row_range(lo * self.frame_period_s, hi * self.frame_period_s)
            if row_hi <= row_lo:
                continue
            left, right = self._weights(lo, hi, row_lo, row_hi)
            self._extend_pending(row_hi)
            first = row_lo - self.next_row
            for name, block in piece.items():
                acc = self._pending[name][first : first + row_hi - row_lo]
                if left is None:
                    acc += self._product(right, block, 0)
                else:
                    acc += self._product(left, self._product(right, block, 1), 0)

    def _product(self, a: np.ndarray, b: np.ndarray, slot: int) -> np.ndarray:
        """``a @ b`` into a reused scratch buffer (no allocation per block)."""
        shape = (a.shape[0], b.shape[1])
        buffer = self._scratch[slot]
        if buffer.shape[0] < shape[0] or buffer.shape[1] != shape[1]:
            buffer = self._scratch[slot] = np.empty((max(shape[0], 64), shape[1]), np.float32)
        return np.matmul(a, b, out=buffer[: shape[0]])

    def _weights(
        self, lo: int, hi: int, row_lo: int, row_hi: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Weights of frames ``[lo, hi)`` for rows ``[row_lo, row_hi)``, factorised if repeating."""
        times = self.grid.times(row_lo, row_hi)
        edges = np.arange(lo, hi + 1, dtype=np.float64) * self.frame_period_s
        if not (self.repeats and hi - lo == self.block_frames):
            return None, _float32(self.kernel.weights(times, edges))
        key = (row_hi - row_lo, round(float(times[0] - edges[0]), 9))
        if key not in self._factors:
            if len(self._factors) >= 8:
                self._factors.pop(next(iter(self._factors)))
            self._factors[key] = factorize(self.kernel.weights(times, edges), self.rank_tolerance)
        return self._factors[key]

    def finish(self) -> dict[str, np.ndarray]:
        """All remaining rows (frames after the last block count as zero)."""
        if self._units is None:
            raise ValueError("no frames were pushed: cannot infer layers and units")
        if self._carry:
            with _blas_controller().limit(limits=1, user_api="blas"):
                self._accumulate([(self._applied_frame(), self._carry)])
            self._carry = {}
        return self._emit(self.grid.n_rows)
