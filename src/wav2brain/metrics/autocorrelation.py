"""Lag autocorrelation of series recorded in runs, and Bartlett's effective sample size of a
correlation between two of them.

One estimator for the package's correlation tests: the noise ceilings
(:mod:`wav2brain.encoding.noise_ceiling`), the recipe's held-out scores
(:mod:`wav2brain.training.metrics`) and the SIMULATED recovery check
(:mod:`wav2brain.simulation.recovery`). Anchoring computes the same estimator on the device for
millions of columns (:func:`wav2brain.anchoring.significance.lag_autocorrelation`, tested against
this one) and corrects it for the drift basis (``ResidualAutocorrelation``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONSTANT_TOLERANCE = 1e-12
"""A column whose summed squared deviation is at most this × its rows counts as constant (its
autocorrelation is 0): float rounding leaves such residues in constant columns."""


def autocorrelation(runs: Sequence[np.ndarray], max_lag: int) -> np.ndarray:
    """Lag autocorrelation of each column, pooled over runs: float64 [max_lag + 1, n_columns].

    Each run is centred on its own mean and lags never cross a run boundary; the lag-k sums of
    products of all runs are divided by their summed variances (the biased estimator, as in
    Bartlett's formula, so that long lags with few pairs weigh less). Row 0 is 1 (0 for a
    constant column, see :data:`CONSTANT_TOLERANCE`). Computed by FFTs zero-padded to a power of
    two of at least twice each run's length (no wrap-around).

    Raises
    ------
    ValueError
        No runs, a run that is not [TRs, columns], runs of different widths, a negative lag.
    """
    if not runs:
        raise ValueError("autocorrelation needs at least one run")
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0 TRs, got {max_lag}")
    shapes = [np.shape(run) for run in runs]
    if any(len(shape) != 2 or shape[1] != shapes[0][1] for shape in shapes):
        raise ValueError(f"runs must be [TRs, columns] of one width, got shapes {shapes}")
    total = np.zeros((max_lag + 1, shapes[0][1]))
    for run in runs:
        x = np.asarray(run, dtype=np.float64)
        x = x - x.mean(0)
        n = len(x)
        size = 1 << int(2 * n - 1).bit_length()
        spectrum = np.fft.rfft(x, size, axis=0)
        lags = np.fft.irfft(spectrum * np.conj(spectrum), size, axis=0)[: max_lag + 1]
        lags[n:] = 0.0  # lags beyond the run have no pairs
        total += lags
    variance = total[0]
    rows = sum(shape[0] for shape in shapes)
    return np.divide(
        total, variance, out=np.zeros_like(total), where=variance > CONSTANT_TOLERANCE * rows
    )


def effective_sample_size(
    x_runs: Sequence[np.ndarray], y_runs: Sequence[np.ndarray], max_lag: int
) -> np.ndarray:
    """Bartlett's effective number of samples behind ``corr(x, y)`` per column [n_columns].

    ``n_eff = n / (1 + 2 sum_{k=1..max_lag} rho_x(k) rho_y(k))``, with ``n`` the total rows and
    ``rho`` the pooled within-run autocorrelations (:func:`autocorrelation`): the variance of a
    correlation between two autocorrelated series is about ``1 / n_eff`` (Bartlett 1935; Pyper and
    Peterman 1998). Clipped to ``[4, n]``, so ``1 / sqrt(n_eff - 3)`` stays defined.

    Parameters
    ----------
    x_runs, y_runs : sequence of arrays [n_trs_of_run, n_columns]
        The two series, run by run (same shapes).
    max_lag : int
        Longest lag (TRs) in the sum.
    """
    if len(x_runs) != len(y_runs) or any(
        np.shape(x) != np.shape(y) for x, y in zip(x_runs, y_runs, strict=True)
    ):
        raise ValueError("x and y must hold the same runs with the same shapes")
    n = sum(len(x) for x in x_runs)
    if max_lag < 1:
        return np.full(np.shape(x_runs[0])[1], float(n))
    products = autocorrelation(x_runs, max_lag)[1:] * autocorrelation(y_runs, max_lag)[1:]
    n_eff = n / (1.0 + 2.0 * products.sum(0))
    return np.clip(n_eff, 4.0, float(n))
