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
not by default), and the statistic is Fisher's z with its variance inflated by Bartlett's
factor ``D = 1 + 2 sum_k rho_x(k) rho_y(k)`` (clipped to ``[1, n / 4]``): ``z = atanh(r)
sqrt((n - 3) / D)``, N(0, 1) under the null (two-sided tests). xDF also corrects the variance for
non-null r; under the null, which is what a test needs, Bartlett's is the variance.

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
    boundary. This is the estimator of :func:`wav2brain.simulation.recovery.autocorrelation`
    (per-run centring, lag sums of all runs over their summed variance) applied to the per-run
    z-scored series, the series whose correlations are tested, computed in float32 on the device
    by FFTs of each run's columns (rows of the transposed block: 0.23 s for 12,304 columns of
    1,000 TRs where direct lag sums took 0.64 s and float64 numpy FFTs 2.5 s), in blocks of
    :data:`LAG_BLOCK` columns.
    """
    import torch

    starts = [int(s) for s in starts]
    out = torch.zeros((values.shape[1], max_lag), dtype=values.dtype, device=values.device)
    for first in range(0, values.shape[1], LAG_BLOCK):
        block = values[:, first : first + LAG_BLOCK].t().contiguous()
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            size = 1 << int(2 * (b - a) - 1).bit_length()
            spectrum = torch.fft.rfft(block[:, a:b], n=size, dim=1)
            lags = torch.fft.irfft(spectrum.abs().square_(), n=size, dim=1)[:, 1 : max_lag + 1]
            out[first : first + LAG_BLOCK, : lags.shape[1]] += lags  # lags >= run length: 0
    return out.t().contiguous()


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
