"""Noise ceilings per voxel: from repeated presentations, and across subjects (leave one out).

A noise ceiling is the correlation a perfect model of the stimulus-driven signal would reach with
the measured response; dividing a model's r by it
(:func:`~wav2brain.encoding.scores.normalized_score`) gives the fraction of the explainable
correlation that the model reaches.

- :func:`repeat_ceiling` follows the signal-power method of Sahani & Linden (2003, "How linear are
  auditory cortical responses?", NIPS 15) in the CCmax form of Schoppe, Harper, Willmore, King &
  Schnupp (2016, "Measuring the performance of neural models", Front. Comput. Neurosci. 10:10).
  With ``N`` repeats ``y_r`` and their mean ``ȳ``::

      SP = (N Var(ȳ) - mean_r Var(y_r)) / (N - 1)       (signal power, unbiased)
      CCmax(mean)   = sqrt(SP / Var(ȳ))                  (ceiling for r against the repeat mean)
      CCmax(single) = sqrt(SP / mean_r Var(y_r))         (ceiling for r against one presentation)

  It uses every repeat at once (no arbitrary split-half), and SP is unbiased in ``N``; negative SP
  (no detectable signal) gives a ceiling of 0. CCmax itself is biased upwards where there is
  little signal: at zero signal the SP estimate is zero-mean noise, clipping it at 0 and taking
  the square root turns that noise into a positive ceiling (about 0.1 for 2 repeats of 200 TRs,
  shrinking only like ``n_trs ** -0.25``). Do not read such a ceiling as a signal: test it
  (:func:`ceiling_test`) and divide by it only where the test passes (what
  :func:`wav2brain.encoding.dataset.encode_dataset` does).
- :func:`loso_ceiling` is the leave-one-subject-out intersubject correlation used for Narratives
  (Nastase et al. 2021, Sci. Data 8:250): each subject's response correlated with the mean of the
  others who heard the same story. It is a conservative ceiling for one subject (the mean of the
  others is itself noisy, more so with few subjects) and, unlike CCmax, also counts as noise the
  idiosyncratic but stimulus-locked part of a subject's response.

Is a ceiling above zero? :func:`ceiling_test` tests the correlation a ceiling rests on (the
split-half correlation of the repeats, :func:`split_half`, or the LOSO correlation) with Fisher's
z, ``atanh(r) sqrt(n_eff - 3)`` ~ N(0, 1) under no shared signal, where ``n_eff``
(:func:`effective_samples`) is the number of TRs corrected for the autocorrelation of both series
(Bartlett 1935; Pyper & Peterman 1998): BOLD is smooth over several TRs, and the plain TR count
would make a noise voxel "significant" several times more often than the nominal level.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from wav2brain.encoding.scores import pearson_r
from wav2brain.metrics.autocorrelation import autocorrelation

CEILING_ALPHA = 0.05
"""Default one-sided level of :func:`ceiling_test` (per voxel)."""

COLUMN_BLOCK = 1024
"""Columns per block in :func:`effective_samples` (its FFT temporaries are a few MB per block)."""


def _check_stack(axis: str, responses) -> np.ndarray:
    """Validate a [n_repeats or n_subjects (``axis``), n_trs, n_voxels] stack; return float64."""
    stack = np.asarray(responses, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"responses must be [{axis}, TRs, voxels], got shape {stack.shape}")
    if stack.shape[0] < 2:
        raise ValueError(f"responses need at least 2 {axis}, got {stack.shape[0]}")
    if stack.shape[1] < 3:
        raise ValueError(f"responses need at least 3 TRs, got {stack.shape[1]}")
    if not np.isfinite(stack).all():
        raise ValueError("responses contain NaN or infinite values")
    return stack


def signal_power(responses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sahani & Linden's signal power of repeats [n_repeats, n_trs, n_voxels].

    Returns
    -------
    signal_power : [n_voxels], in the squared units of the responses (may be negative).
    mean_variance : [n_voxels], variance of the repeat-averaged response.
    single_variance : [n_voxels], mean over repeats of each repeat's variance.
    """
    stack = _check_stack("repeats", responses)
    n_repeats = stack.shape[0]
    mean_variance = stack.mean(0).var(0)
    single_variance = stack.var(1).mean(0)
    power = (n_repeats * mean_variance - single_variance) / (n_repeats - 1)
    return power, mean_variance, single_variance


def repeat_ceiling(responses, target: str = "mean") -> np.ndarray:
    """CCmax per voxel from repeated presentations [n_repeats, n_trs, n_voxels].

    Parameters
    ----------
    responses : array [n_repeats, n_trs, n_voxels]
        The same stimulus presented ``n_repeats`` times (e.g. LeBel's wheretheressmoke).
    target : {"mean", "single"}
        Ceiling for a correlation with the repeat-averaged response or with one presentation.

    Returns
    -------
    float64 [n_voxels] in [0, 1]; 0 where no signal power is detected or a voxel is constant.
    """
    if target not in ("mean", "single"):
        raise ValueError(f"target must be 'mean' or 'single', got {target!r}")
    power, mean_variance, single_variance = signal_power(responses)
    denominator = mean_variance if target == "mean" else single_variance
    ratio = np.divide(power, denominator, out=np.zeros_like(power), where=denominator > 0)
    return np.sqrt(np.clip(ratio, 0.0, 1.0))


def loso_ceiling(responses) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-subject-out correlation per voxel, subjects [n_subjects, n_trs, n_voxels].

    Parameters
    ----------
    responses : array [n_subjects, n_trs, n_voxels]
        Responses of subjects to the same story on the same TR grid and voxels (a common space).

    Returns
    -------
    per_subject : float64 [n_subjects, n_voxels], r of each subject with the mean of the others.
    mean : float64 [n_voxels], its mean over subjects (constant voxels give 0).
    """
    stack = _check_stack("subjects", responses)
    total = stack.sum(0)
    n_subjects = stack.shape[0]
    per_subject = np.stack(
        [pearson_r(stack[s], (total - stack[s]) / (n_subjects - 1)) for s in range(n_subjects)]
    ).astype(np.float64)
    return per_subject, per_subject.mean(0)


def default_max_lag(n_trs: int) -> int:
    """Lags (TRs) summed by :func:`effective_samples`: ``n_trs // 4`` (at least 1).

    A quarter of the series is the usual limit for Bartlett-type sums (beyond it each lag's
    estimate rests on too few products); HRF-driven autocorrelation has died out well before
    it in runs of more than a minute.
    """
    return max(1, n_trs // 4)


def paired_correlation(x, y, max_lag: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of ``x`` and ``y`` [TRs, n] per column and its effective number of samples.

    Bartlett's large-sample variance of r under independence, ``(1 + 2 sum_k rho_x(k)
    rho_y(k)) / n``, gives ``n_eff = n / (1 + 2 sum_{k=1}^{K} rho_x(k) rho_y(k))`` with ``K``
    = ``max_lag`` (default :func:`default_max_lag`), clipped to ``[4, n]`` (``n_eff - 3`` is
    Fisher's variance denominator). Computed in float64, in blocks of columns (numpy only: no
    thread start-up per small block). Constant columns give r = 0.

    Returns
    -------
    r, n_eff : float64 [n] each, inputs for :func:`ceiling_test`.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must share one [TRs, n] shape, got {x.shape} and {y.shape}")
    n = x.shape[0]
    if n < 5:
        raise ValueError(f"need at least 5 TRs for an effective sample size, got {n}")
    lag = default_max_lag(n) if max_lag is None else max_lag
    if not 1 <= lag < n:
        raise ValueError(f"max_lag must be in [1, {n}) TRs, got {lag}")
    r, inflation = np.empty(x.shape[1]), np.empty(x.shape[1])
    for first in range(0, x.shape[1], COLUMN_BLOCK):  # bounds the FFT temporaries
        block = slice(first, first + COLUMN_BLOCK)
        a = x[:, block] - x[:, block].mean(0, dtype=np.float64)
        b = y[:, block] - y[:, block].mean(0, dtype=np.float64)
        scale = np.sqrt((a * a).sum(0) * (b * b).sum(0))
        r[block] = np.divide((a * b).sum(0), scale, out=np.zeros(scale.shape), where=scale > 0)
        products = autocorrelation([a], lag)[1:] * autocorrelation([b], lag)[1:]
        inflation[block] = 1 + 2 * products.sum(0)
    return r, np.clip(n / np.maximum(inflation, 1e-12), 4.0, float(n))


def effective_samples(x, y, max_lag: int | None = None) -> np.ndarray:
    """Effective number of samples of the correlation of ``x`` and ``y`` [TRs, n] per column.

    The ``n_eff`` of :func:`paired_correlation`.
    """
    return paired_correlation(x, y, max_lag)[1]


def ceiling_test(r, n_eff) -> np.ndarray:
    """Fisher's z statistic ``atanh(r) sqrt(n_eff - 3)`` of correlations [n] (N(0, 1) under H0)."""
    r = np.clip(np.asarray(r, dtype=np.float64), -0.999999, 0.999999)
    n_eff = np.asarray(n_eff, dtype=np.float64)
    if r.shape != n_eff.shape:
        raise ValueError(f"r and n_eff must share one shape, got {r.shape} and {n_eff.shape}")
    return np.arctanh(r) * np.sqrt(np.maximum(n_eff - 3, 0.0))


def combine_tests(r: Sequence[np.ndarray], n_eff: Sequence[np.ndarray]) -> np.ndarray:
    """One z statistic from correlations of independent samples (e.g. stories), per voxel.

    The inverse-variance weighted mean of the Fisher z, divided by its standard error:
    ``sum_s (n_s - 3) atanh(r_s) / sqrt(sum_s (n_s - 3))``; NaN entries are left out.
    """
    if len(r) != len(n_eff) or not len(r):
        raise ValueError(f"need one n_eff per r and at least one, got {len(r)} and {len(n_eff)}")
    z = np.stack([np.arctanh(np.clip(np.asarray(v, np.float64), -0.999999, 0.999999)) for v in r])
    weights = np.stack([np.maximum(np.asarray(n, np.float64) - 3, 0.0) for n in n_eff])
    valid = np.isfinite(z) & np.isfinite(weights)
    weights = np.where(valid, weights, 0.0)
    total = weights.sum(0)
    return np.divide(
        (weights * np.where(valid, z, 0.0)).sum(0),
        np.sqrt(total),
        out=np.full(total.shape, np.nan),
        where=total > 0,
    )


def significant(z, alpha: float = CEILING_ALPHA) -> np.ndarray:
    """Boolean [n]: ``z`` above the one-sided normal critical value of level ``alpha``."""
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    return np.nan_to_num(np.asarray(z, dtype=np.float64), nan=-np.inf) > NormalDist().inv_cdf(
        1 - alpha
    )


def split_half(responses, max_lag: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split-half correlation of repeats [n_repeats, TRs, voxels] and its effective samples.

    The mean of the even-numbered repeats against the mean of the odd-numbered ones (with two
    repeats: one against the other). Returns ``(r, n_eff)``, float64 [n_voxels] each, for
    :func:`ceiling_test`: a repeat ceiling is above zero exactly when this correlation is.
    """
    stack = _check_stack("repeats", responses)
    return paired_correlation(stack[0::2].mean(0), stack[1::2].mean(0), max_lag)


def select_voxels(ceiling, threshold: float) -> np.ndarray:
    """Boolean mask [n_voxels] of voxels whose ceiling exceeds ``threshold`` (NaN excluded)."""
    ceiling = np.asarray(ceiling, dtype=np.float64)
    if ceiling.ndim != 1:
        raise ValueError(f"ceiling must be 1-D [n_voxels], got shape {ceiling.shape}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    return np.nan_to_num(ceiling, nan=-np.inf) > threshold


def ceiling_agreement(
    r, ceiling, driven, n_trs: int, tolerance: float = 0.05, z: float = 3.0
) -> dict[str, float]:
    """Compare held-out r with a known ceiling (simulated data): the issue's correctness check.

    Parameters
    ----------
    r : array [n_voxels]
        Held-out Pearson r of an encoding model.
    ceiling : array [n_voxels]
        True ceiling of each voxel (e.g. the simulation's realised signal-to-data correlation).
    driven : bool array [n_voxels]
        Voxels driven by planted features; the others are noise only.
    n_trs : int
        Held-out TRs behind each r (sets the chance spread, about ``1 / sqrt(n_trs)``).
    tolerance : float
        Allowed ``|r - ceiling|`` for driven voxels.
    z : float
        Noise-only voxels count as "above chance" when ``r > z / sqrt(n_trs)``.

    Returns
    -------
    dict with ``driven_max_gap`` (max ``|r - ceiling|``), ``driven_within`` (fraction within
    ``tolerance``), ``noise_mean_r``, ``noise_above_chance`` (fraction) and ``passed``: every
    driven voxel within tolerance, and noise-only voxels with ``|mean r| < 1 / sqrt(n_trs)`` and at
    most 1 % above chance.
    """
    r, ceiling = np.asarray(r, dtype=np.float64), np.asarray(ceiling, dtype=np.float64)
    driven = np.asarray(driven, dtype=bool)
    if not r.shape == ceiling.shape == driven.shape or r.ndim != 1:
        raise ValueError(
            "r, ceiling and driven must share one 1-D shape, "
            f"got {r.shape}, {ceiling.shape}, {driven.shape}"
        )
    if n_trs < 3:
        raise ValueError(f"n_trs must be at least 3, got {n_trs}")
    gap = np.abs(r[driven] - ceiling[driven])
    noise = r[~driven]
    chance = 1.0 / np.sqrt(n_trs)
    result = {
        "driven_max_gap": float(gap.max()) if gap.size else 0.0,
        "driven_within": float((gap <= tolerance).mean()) if gap.size else 1.0,
        "noise_mean_r": float(noise.mean()) if noise.size else 0.0,
        "noise_above_chance": float((noise > z * chance).mean()) if noise.size else 0.0,
    }
    result["passed"] = bool(
        result["driven_within"] == 1.0
        and abs(result["noise_mean_r"]) < chance
        and result["noise_above_chance"] <= 0.01
    )
    return result
