"""Significance of AN x target couplings under autocorrelation: Bartlett's variance, grids, BH, FWER.

Why Bartlett. Under the null of two independent stationary series, the Pearson r of ``n``
samples has variance ``(1 + 2 sum_k rho_x(k) rho_y(k)) / n`` (Bartlett 1935), i.e. that of ``n_eff
= n / (1 + 2 sum_k rho_x(k) rho_y(k))`` independent samples. HRF-smoothed AN responses and BOLD
both have lag autocorrelations near 0.9 at one TR, so ``n_eff`` is often a fifth of ``n`` and a
naive p-value (``n_eff = n``) is badly anti-conservative. The sum for every AN x target pair is one
matrix product of the lag autocorrelation sequences, ``Rx^T Ry`` with ``Rx [K, ANs]`` and ``Ry [K,
targets]``: ``K`` (the lags, a few dozen) against the ``n`` TRs of the coupling product, so it
costs a few per cent on top of it (measured: 1.19x the pass with a constant variance, at
9,216 x 50,000 x 1,000). The sum runs to ``max_lag`` TRs (30 s by default: the haemodynamic
response and AR noise have decayed), every lag kept by default (optionally each series' sequence
cut at its first lag inside the null band, :func:`~wav2brain.anchoring.coupling.truncate`: xDF's
adaptive truncation, Afyouni, Smith and Nichols 2019; see ``CouplingConfig.truncation`` for why
not by default).

Short cleaned runs. Each run's mean, and its drift polynomials when ``prepare`` detrended it,
are projected out of both series. That costs degrees of freedom (``n - P`` instead of ``n - 1``,
``P`` the regressors of all runs) and biases every sample autocorrelation down (about ``-p / L``
per run of ``L`` TRs and ``p`` regressors), which Bartlett's product of two biased sequences
turns into too small a variance: measured on the simulator (runs of 60-160 TRs, quadratic
drift), noise voxels' null ``z`` SD 1.03-1.06 and 4-10 % of the FDR rejections on noise voxels.
A careful reviewer would take the projection into account; we do, exactly to first order: the
variance of ``r`` given the AN's cleaned series ``x`` is ``(1 + 2 sum_k c_x(k) rho_y(k)) / d_y``
with ``c_x`` the AN's own lag sums (facts of the series tested, no estimate), ``rho_y`` the
target's autocorrelations corrected for the projection and ``d_y = tr(M R_y)`` the expected
residual sum of squares (:class:`ResidualAutocorrelation`; ``n - P`` for white noise). It is
symmetric in the two series, and still one product of ``[K + 1]``-row matrices. The statistic is
``z = atanh(r) sqrt(1 / V - 2)`` (Fisher's ``atanh(r) sqrt(n - 3)`` for white series and one
mean; ``V`` clipped to ``[1 / (n - P), 1 / 6]``), N(0, 1) under the null (two-sided tests):
measured null SD 1.000-1.004 on runs of 75 TRs detrended (the uncorrected estimator: 1.03-1.04)
and on 2 x 300 TRs undetrended, 1.0015 on the demo simulator's noise voxels. xDF also corrects
the variance for non-null r; under the null, which is what a test needs, this is the variance.

Grids. Every test is counted, never stored: ``|z|`` falls in a bin of a uniform grid from the
two-sided ``p = grid_max_p`` quantile to ``z_max`` (step ``z_step``), counted per AN (an ``[ANs,
bins]`` table). Benjamini-Hochberg is then exact on the grid: the cutoff is the smallest grid
threshold ``t`` with ``m p(t) / R(t) <= alpha`` (``R(t)``: tests with ``|z| >= t``), a subset of
BH's rejections (BH's cutoff may fall between two grid points, never below the grid one), and
every per-AN count at that cutoff is exact. A q-value is the minimum of ``m p(t) / R(t)`` over grid
thresholds at or below the test's ``|z|``: never smaller than BH's. ``z_step = 0.02`` changes
``p`` by at most 15 % between neighbouring thresholds at ``|z| = 7``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def lag_autocorrelation(values, starts: Sequence[int], max_lag: int):
    """Lag-1..``max_lag`` autocorrelation of standardised columns, pooled over runs [lags, n].

    ``values`` (torch, ``[TRs, columns]``, runs stacked, run ``i`` in rows ``starts[i]:
    starts[i + 1]``) must be centred within each run and of unit norm over all runs, as
    :func:`~wav2brain.anchoring.coupling.standardize` leaves them; lags never cross a run
    boundary. This is the estimator of :func:`wav2brain.metrics.autocorrelation.autocorrelation`
    (per-run centring, lag sums of all runs over their summed variance) applied to the per-run
    z-scored series, the series whose correlations are tested, computed in float32 on the device
    by FFTs of each run's columns (rows of the transposed block: 0.23 s for 12,304 columns of
    1,000 TRs where direct lag sums took 0.64 s and float64 numpy FFTs 2.5 s), zero-padded to the
    first fast length of at least the run's TRs plus ``max_lag`` (the lags asked see no
    wrap-around; half the length of a full linear autocorrelation), in blocks of
    :data:`LAG_BLOCK` columns.
    """
    import torch
    from scipy.fft import next_fast_len

    starts = [int(s) for s in starts]
    out = torch.zeros((values.shape[1], max_lag), dtype=values.dtype, device=values.device)
    for first in range(0, values.shape[1], LAG_BLOCK):
        block = values[:, first : first + LAG_BLOCK].t().contiguous()
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            size = next_fast_len(b - a + max_lag, real=True)  # no wrap-around up to max_lag
            spectrum = torch.fft.rfft(block[:, a:b], n=size, dim=1)
            power = (spectrum * spectrum.conj()).real  # |S|^2, 3x faster than abs().square()
            lags = torch.fft.irfft(power, n=size, dim=1)[:, 1 : max_lag + 1]
            out[first : first + LAG_BLOCK, : lags.shape[1]] += lags  # lags >= run length: 0
    return out.t().contiguous()


STATISTICS_VERSION = 2
"""Version of the null variance and z rule (2: drift-corrected Bartlett variance). It is part of
every cached subject's key (:mod:`wav2brain.anchoring.dataset`), so results computed under another
rule are recomputed, never reused."""

LAG_BLOCK = 4096
"""Columns per block of :func:`lag_autocorrelation` (bounds its FFT temporaries)."""


def two_sided_p(z) -> np.ndarray:
    """Two-sided normal p-value of ``z`` in float64 (``erfc``: no underflow before 1e-300)."""
    z = np.abs(np.asarray(z, dtype=np.float64))
    from scipy.special import erfc

    return erfc(z / math.sqrt(2.0))


def z_of_p(p: float) -> float:
    """The ``|z|`` whose two-sided p-value is ``p``."""
    return NormalDist().inv_cdf(1 - p / 2)


@dataclass(frozen=True)
class ZGrid:
    """Uniform grid of ``|z|`` thresholds ``start + i step``, ``i = 0 .. n_bins - 1``.

    Bin ``i`` holds ``start + i step <= |z| < start + (i + 1) step``; the last bin is open above.
    """

    start: float
    step: float
    n_bins: int

    @classmethod
    def from_config(cls, grid_max_p: float, z_step: float, z_max: float) -> ZGrid:
        start = z_of_p(grid_max_p)
        return cls(start, z_step, int(math.ceil((z_max - start) / z_step)) + 1)

    @property
    def thresholds(self) -> np.ndarray:
        """Lower edge of each bin (float64 [n_bins])."""
        return self.start + self.step * np.arange(self.n_bins)

    def bin_of(self, z) -> np.ndarray:
        """Bin of each ``|z|`` (-1 below the grid)."""
        z = np.abs(np.asarray(z, dtype=np.float64))
        index = np.floor((z - self.start) / self.step + 1e-9).astype(np.int64)
        return np.where(z >= self.start, np.clip(index, 0, self.n_bins - 1), -1)

    def bin_at_or_above(self, z: float) -> int:
        """First bin whose threshold is at least ``z`` (``n_bins`` when none)."""
        return int(min(self.n_bins, max(0, math.ceil((z - self.start) / self.step - 1e-9))))


def bh_cutoff(histogram: np.ndarray, m: int, grid: ZGrid, alpha: float) -> tuple[int, np.ndarray]:
    """Benjamini-Hochberg on the grid: first rejected bin and the q-value of each bin.

    Parameters
    ----------
    histogram : int [n_bins]
        Tests per bin (all ANs).
    m : int
        Number of tests (valid AN x target pairs, including those below the grid).
    Returns
    -------
    cutoff : int
        Bins ``>= cutoff`` are rejected at level ``alpha`` (``n_bins`` when none is).
    q : float64 [n_bins]
        q-value of a test falling in each bin (1 is the cap).
    """
    counts = np.asarray(histogram, dtype=np.float64)
    at_or_above = np.cumsum(counts[::-1])[::-1]
    ratio = np.divide(
        m * two_sided_p(grid.thresholds),
        at_or_above,
        out=np.full(grid.n_bins, np.inf),
        where=at_or_above > 0,
    )
    q = np.minimum(np.minimum.accumulate(ratio), 1.0)
    rejected = np.nonzero(q <= alpha)[0]
    return (int(rejected[0]) if rejected.size else grid.n_bins), q


def fwer_threshold(maxima: np.ndarray, alpha: float) -> float:
    """``|z|`` threshold of the max statistic: the ``ceil((D + 1)(1 - alpha))``-th of ``D`` maxima.

    With the observed data counted as one of ``D + 1`` equally likely arrangements, rejecting
    ``|z|`` above it holds the family-wise error at ``alpha`` (infinite when ``D`` is too small).
    """
    maxima = np.sort(np.asarray(maxima, dtype=np.float64))
    rank = int(math.ceil((len(maxima) + 1) * (1 - alpha)))
    return float(maxima[rank - 1]) if rank <= len(maxima) else math.inf


def max_stat_p(z, maxima: np.ndarray) -> np.ndarray:
    """FWER-adjusted p of each ``|z|``: ``(1 + #{draws whose max >= |z|}) / (1 + D)``."""
    maxima = np.sort(np.asarray(maxima, dtype=np.float64))
    z = np.abs(np.asarray(z, dtype=np.float64))
    above = len(maxima) - np.searchsorted(maxima, z, side="left")
    return (1.0 + above) / (1.0 + len(maxima))


def pooled_null_p(z, histogram: np.ndarray, below: int, grid: ZGrid) -> np.ndarray:
    """p-value of each ``|z|`` against the pooled circular-shift null (counted on the grid).

    ``(1 + null values in bins at or above the test's bin) / (1 + all null values)``; a test
    below the grid gets 1. Conservative by at most one bin.
    """
    counts = np.asarray(histogram, dtype=np.float64)
    at_or_above = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    total = counts.sum() + below
    bins = grid.bin_of(z)
    return np.where(bins >= 0, (1.0 + at_or_above[np.maximum(bins, 0)]) / (1.0 + total), 1.0)


def bh_q(p) -> np.ndarray:
    """Benjamini-Hochberg q-values of a (small) vector of p-values, exact (float64)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.empty(m)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def nuisance_basis(length: int, regressors: np.ndarray | None) -> np.ndarray:
    """Orthonormal basis (float64 ``[length, p]``) of a run's mean and removed ``regressors``.

    ``regressors`` (``[length, q]``, e.g. drift polynomials) may be None (the mean alone);
    columns in the span of the others are dropped, so ``p`` counts independent regressors.
    """
    columns = np.ones((length, 1))
    if regressors is not None:
        columns = np.column_stack([columns, np.asarray(regressors, dtype=np.float64)])
    q, r = np.linalg.qr(columns)
    diagonal = np.abs(np.diag(r))
    return q[:, diagonal > 1e-8 * diagonal.max()]


def projection_moments(basis: np.ndarray, max_lag: int) -> np.ndarray:
    """``A[k, m] = tr(M U_k M T_m)`` (float64 ``[max_lag + 1, max_lag + 1]``) of one run.

    ``M = I - Q Q^T`` is the residual projection of the run's nuisance ``basis`` ``Q``,
    ``U_k`` the lag-``k`` shift (``(U_k v)_t = v_{t+k}``, 0 past the end; ``U_0 = I``) and
    ``T_m = U_m + U_m^T`` (``T_0 = I``). For a stationary series of autocovariance
    ``gamma(m)`` (0 beyond ``max_lag``), the residual's lag-``k`` sum ``e^T U_k e`` has
    expectation ``sum_m gamma(m) A[k, m]``. Computed from shifted copies of ``Q`` (never an
    ``L x L`` matrix): ``tr(U_k T_m) - <U_k^T Q, T_m Q> - <U_k Q, T_m Q>
    + tr(Q^T U_k Q Q^T T_m Q)``.
    """
    length = basis.shape[0]
    lags = np.arange(max_lag + 1)

    def up(k):  # U_k Q
        out = np.zeros_like(basis)
        out[: max(length - k, 0)] = basis[k:]
        return out

    def down(k):  # U_k^T Q
        out = np.zeros_like(basis)
        out[k:] = basis[: max(length - k, 0)]
        return out

    ups = np.stack([up(k) for k in lags])
    downs = np.stack([down(k) for k in lags])
    sym = ups + downs
    sym[0] = basis
    inner_up = np.einsum("tp,ktq->kpq", basis, ups)
    inner_sym = np.einsum("tp,mtq->mpq", basis, sym)
    moments = np.diag(np.maximum(length - lags, 0).astype(np.float64))
    moments -= np.einsum("ktp,mtp->km", downs, sym)
    moments -= np.einsum("ktp,mtp->km", ups, sym)
    moments += np.einsum("kpq,mqp->km", inner_up, inner_sym)
    return moments


@dataclass(frozen=True)
class ResidualAutocorrelation:
    """Moment-matched autocorrelations of series cleaned by projections within runs.

    The pooled sample autocorrelation of a residual series is biased: removing each run's mean
    and ``p`` drift regressors pulls every lag down by about ``p / L`` per run of ``L`` TRs
    (more for a smooth series), which against a long HRF-smoothed autocorrelation makes
    Bartlett's variance too small on short detrended runs (measured: null ``z`` SD 1.03-1.04, 4
    runs of 75 TRs, quadratic drift). For a stationary series of autocorrelation ``rho`` (0
    beyond ``K`` lags), :func:`projection_moments` gives the pooled estimate's expectation
    ``(B rho)_k / (b . rho)`` with ``B = sum_r w_r A_r`` and ``b`` its row 0 (``w_r = L_r / (L_r -
    p_r)``: each run weighs as in the per-run standardisation, its variance taken at its white-noise
    value); :meth:`correct` solves ``(B rho)_k = c_k (b . rho)``, ``k = 1..K``, for ``rho`` given
    the estimate ``c``, a ``K x K`` system whose matrix is a fixed one minus a rank-one term
    (Sherman-Morrison: one ``K x K`` product for all columns), and returns ``d = sum_r tr(M_r
    R_r)``, the residual's expected sum of squares over ``gamma(0)`` (``n - P`` for white noise,
    ``P`` the regressors of all runs).

    Then the null variance of ``r`` given the AN's cleaned series ``x`` is exact to first order:
    ``Var(r | x) = (1 + 2 sum_k c_x(k) rho_y(k)) / d_y`` (``c_x`` the AN's own lag sums, the
    voxel's corrected ``rho_y``), one product of ``[K + 1]``-row matrices as Bartlett's. It is
    symmetric (``w_k A[k, m]`` with ``w = (1, 2, 2, ...)`` is ``tr(M T_k M T_m)``), i.e. equal to
    ``rho_x^T C rho_y / (d_x d_y)``, the variance ``tr(M S_x M S_y) / (tr(M S_x) tr(M S_y))`` of
    two projected stationary series.
    """

    inverse: np.ndarray
    moments: np.ndarray
    expected_norm: np.ndarray
    dof: int

    @classmethod
    def for_runs(
        cls, starts: np.ndarray, removed: Sequence[np.ndarray | None] | None, max_lag: int
    ) -> ResidualAutocorrelation:
        """The correction of runs ``starts`` cleaned of their means and ``removed`` (per run)."""
        lengths = np.diff(starts)
        removed = [None] * len(lengths) if removed is None else removed
        pooled = np.zeros((max_lag + 1, max_lag + 1))
        expected = np.zeros(max_lag + 1)
        dof = 0
        for run, (length, regressors) in enumerate(zip(lengths, removed, strict=True)):
            basis = nuisance_basis(int(length), regressors)
            if length - basis.shape[1] < 4:
                raise ValueError(
                    f"run {run} has {length} TRs and {basis.shape[1]} regressors removed "
                    "(its mean included): fewer than 4 degrees of freedom are left"
                )
            moments = projection_moments(basis, max_lag)
            pooled += length / (length - basis.shape[1]) * moments
            expected += moments[0]
            dof += int(length) - basis.shape[1]
        return cls(np.linalg.inv(pooled[1:, 1:]), pooled, expected, dof)

    def correct(self, estimate):
        """Corrected autocorrelations (torch ``[K, columns]``) and ``d`` (``[columns]``).

        ``estimate``: pooled lag-1..K sample autocorrelations (:func:`lag_autocorrelation`).
        """
        import torch

        c = estimate.double()
        as_torch = {
            name: torch.from_numpy(np.ascontiguousarray(value)).to(c.device)
            for name, value in (
                ("inverse", self.inverse),
                ("lag0", self.moments[1:, 0]),
                ("norm", self.moments[0, 1:]),
                ("expected", self.expected_norm),
            )
        }
        inverse, lag0, norm = as_torch["inverse"], as_torch["lag0"], as_torch["norm"]
        solved = inverse @ c
        base = self.moments[0, 0] * solved - (inverse @ lag0)[:, None]
        # 1 - norm . solved >= 1 - 2 P max|sum c| / n: positive for any estimate when P << n
        rho = base + solved * ((norm @ base) / (1.0 - norm @ solved)).unsqueeze(0)
        expected = as_torch["expected"]
        d = expected[0] + expected[1:] @ rho
        return rho.to(estimate.dtype), d.to(estimate.dtype)
