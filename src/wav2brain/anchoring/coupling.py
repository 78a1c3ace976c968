"""Blocked coupling of every artificial neuron (AN) with every target (voxel, ROI, network).

:func:`couple` takes one subject's AN responses ``[TRs, ANs]`` and targets ``[TRs, targets]`` on
the same TRs (runs stacked, ``starts`` giving each run's first row), z-scores every column within
each run, scales it to unit norm over all runs (so a product is Pearson r over the subject's TRs),
and walks the AN x target matrix in blocks on torch (CPU or CUDA, float32), never holding it:

- per AN its ``top_k`` targets by ``|z|`` (signed r and z kept), and a count of its tests per bin
  of the ``|z|`` grid (:class:`~wav2brain.anchoring.significance.ZGrid`), from which BH-FDR,
  Bonferroni and max-statistic counts follow exactly without a second pass;
- per target its best AN (largest ``|z|``);
- on request (``n_permutations``) a circular-shift null on the same blocked products: each draw
  rolls every run of the AN responses by one random offset (the same for all ANs, at least
  ``min_shift_s`` from zero either way, so that the shifted series no longer overlaps the
  haemodynamic response), which keeps both series' autocorrelation and breaks their alignment.
  Each draw's maximum ``|z|`` over all tests gives the max-statistic FWER; all draws' ``|z|`` are
  counted on the grid as a pooled null (the oracle calibrating the analytic p-values);
- for small problems (``keep_matrix``) the full r and z matrices, and each test's count of null
  draws at least as extreme (exact permutation p-values).

Block sizes come from ``memory_budget_mb`` (the block temporaries, :func:`bytes_per_element`,
plus the block's slices of both inputs) and are logged; the element-wise statistics then run on
chunks of each block small enough to stay in the CPU caches (:data:`CHUNK_ELEMENTS`). Constant columns (constant in
every run) are skipped: they enter no test (``m`` counts valid pairs only), get r = z = 0, and are
reported by ``valid_features`` / ``valid_targets``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from wav2brain.anchoring.significance import (
    ResidualAutocorrelation,
    ZGrid,
    bh_cutoff,
    fwer_threshold,
    lag_autocorrelation,
    max_stat_p,
    pooled_null_p,
    two_sided_p,
    z_of_p,
)

logger = logging.getLogger(__name__)

R_MAX = 1 - 1e-6
"""Correlations are clipped to ``+-R_MAX`` before ``atanh`` (float32)."""

MIN_EFFECTIVE_SAMPLES = 6
"""Fewest effective samples a test is credited with (``1 / V``, ``V`` the null variance of r):
``z = atanh(r) sqrt(1 / V - 2)`` then scales ``atanh(r)`` by at least 2, as the earlier clip of
Bartlett's factor at ``n / 4`` did."""


def bytes_per_element(config: CouplingConfig) -> int:
    """Bytes of block temporaries per AN x target element, sizing blocks from the budget.

    The block's r (float32); with circular shifts (or ``keep_matrix``) also the variance factor
    kept for the draws, and with shifts the draw's product.
    """
    return 4 * (1 + bool(config.n_permutations or config.keep_matrix) + bool(config.n_permutations))


VARIANCES = ("bartlett", "naive")
TRUNCATIONS = ("none", "adaptive")


@dataclass
class CouplingConfig:
    """Settings of :func:`couple`.

    Parameters
    ----------
    top_k : int
        Targets kept per AN (largest ``|z|``).
    alpha : float
        Level of BH-FDR and of the FWER (max statistic, or Bonferroni without permutations).
    max_lag_s : float
        Longest lag (s) of Bartlett's sum (capped at a quarter of the shortest run).
    truncation : str
        ``"none"`` (default: every lag up to ``max_lag_s``) or ``"adaptive"`` (each series'
        autocorrelations cut at its first lag inside the null band, :func:`truncate`). The
        default because detrending each run (as ``prepare`` does) gives a nearly white series
        small negative autocorrelations at every lag; they are real for the cleaned series and,
        against the long negative lobe of an HRF-smoothed AN, add to Bartlett's sum, which the
        cut drops (measured, 4 runs of 75 TRs detrended with their drift basis given: null ``z``
        SD 1.013-1.035 with the cut, 1.002-1.004 without; 2 runs of 300 undetrended TRs: 0.983
        with it, 1.001 without).
    variance : str
        ``"bartlett"`` (autocorrelation-aware) or ``"naive"`` (``n_eff = n``: anti-conservative
        for smoothed series; kept as the negative control of the calibration tests).
    n_permutations : int
        Circular-shift draws (0: analytic p-values only; else at least ``1 / alpha - 1``, the
        fewest with which the max statistic can reject at ``alpha``).
    min_shift_s : float
        Smallest circular shift (s) either way; runs must be longer than twice it.
    seed : int
        Seed of the shifts.
    memory_budget_mb : float
        Budget (MB) of the block temporaries; blocks are sized from it and logged.
    ann_block : int
        Most ANs per block.
    device : str
        Torch device of the products ("cpu", "cuda").
    grid_max_p : float
        Two-sided p of the lowest ``|z|`` grid threshold (the largest level ever asked).
    z_step : float
        Grid step in ``|z|``.
    z_max : float
        Top of the grid (``|z|`` above it share the last bin).
    keep_matrix : bool
        Return the full r and z matrices (and exceedance counts with permutations).
    max_matrix_mb : float
        Largest full matrix (MB, float32) ``keep_matrix`` accepts.
    """

    top_k: int = 10
    alpha: float = 0.05
    max_lag_s: float = 30.0
    truncation: str = "none"
    variance: str = "bartlett"
    n_permutations: int = 0
    min_shift_s: float = 30.0
    seed: int = 0
    memory_budget_mb: float = 1024.0
    ann_block: int = 2048
    device: str = "cpu"
    grid_max_p: float = 0.1
    z_step: float = 0.02
    z_max: float = 38.0
    keep_matrix: bool = False
    max_matrix_mb: float = 512.0

    def __post_init__(self) -> None:
        checks = (
            (self.top_k >= 1, "top_k", ">= 1"),
            (0 < self.alpha < self.grid_max_p, "alpha", f"in (0, grid_max_p={self.grid_max_p})"),
            (0 < self.grid_max_p < 1, "grid_max_p", "in (0, 1)"),
            (self.max_lag_s > 0, "max_lag_s", "> 0 s"),
            (self.variance in VARIANCES, "variance", f"one of {VARIANCES}"),
            (self.truncation in TRUNCATIONS, "truncation", f"one of {TRUNCATIONS}"),
            (self.n_permutations >= 0, "n_permutations", ">= 0"),
            (self.min_shift_s >= 0, "min_shift_s", ">= 0 s"),
            (self.memory_budget_mb > 0, "memory_budget_mb", "> 0 MB"),
            (self.ann_block >= 1, "ann_block", ">= 1"),
            (0 < self.z_step <= 1, "z_step", "in (0, 1]"),
            (self.z_max > z_of_p(self.grid_max_p), "z_max", "above the grid's start"),
            (self.max_matrix_mb > 0, "max_matrix_mb", "> 0 MB"),
        )
        fewest = math.ceil(1 / self.alpha) - 1
        checks += (
            (
                self.n_permutations == 0 or self.n_permutations >= fewest,
                "n_permutations",
                f"0 or at least {fewest} (a max-statistic test at alpha={self.alpha:g} "
                f"needs {fewest} draws)",
            ),
        )
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"CouplingConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )

    @property
    def grid(self) -> ZGrid:
        return ZGrid.from_config(self.grid_max_p, self.z_step, self.z_max)


@dataclass
class Coupling:
    """What :func:`couple` found for one family of tests (ANs x targets of one subject).

    Attributes
    ----------
    n_trs : int
    valid_features, valid_targets : bool [ANs], bool [targets]
        Columns that vary in at least one run (the others are skipped).
    top_index : int64 [ANs, k]
        Best targets per AN by ``|z|`` (-1: none).
    top_r, top_z : float32 [ANs, k]
    counts : int32 [ANs, bins]
        Tests per AN in each bin of ``grid``.
    best_feature : int64 [targets]
        Best AN per target (-1 for skipped targets).
    best_r, best_z : float32 [targets]
    maxima : float64 [draws]
        Largest ``|z|`` of each circular-shift draw (empty without permutations).
    null_counts : int64 [bins]; null_below : int
        Pooled null ``|z|`` per bin and below the grid.
    r, z : float32 [ANs, targets] or None
        Full matrices (``keep_matrix``).
    exceed : int32 [ANs, targets] or None
        Draws with ``|z|`` at least the observed one (``keep_matrix`` with permutations).
    """

    n_trs: int
    grid: ZGrid
    alpha: float
    valid_features: np.ndarray
    valid_targets: np.ndarray
    top_index: np.ndarray
    top_r: np.ndarray
    top_z: np.ndarray
    counts: np.ndarray
    best_feature: np.ndarray
    best_r: np.ndarray
    best_z: np.ndarray
    maxima: np.ndarray = field(default_factory=lambda: np.zeros(0))
    null_counts: np.ndarray | None = None
    null_below: int = 0
    r: np.ndarray | None = None
    z: np.ndarray | None = None
    exceed: np.ndarray | None = None

    @property
    def m(self) -> int:
        """Number of tests: valid ANs x valid targets."""
        return int(self.valid_features.sum()) * int(self.valid_targets.sum())

    @property
    def histogram(self) -> np.ndarray:
        return self.counts.sum(0, dtype=np.int64)

    def fdr(self) -> tuple[int, np.ndarray]:
        """BH cutoff bin and per-bin q (:func:`~wav2brain.anchoring.significance.bh_cutoff`)."""
        return bh_cutoff(self.histogram, max(self.m, 1), self.grid, self.alpha)

    def q_of(self, z) -> np.ndarray:
        """BH q-value of statistics ``z`` of this family (1 below the grid)."""
        _, q = self.fdr()
        bins = self.grid.bin_of(z)
        return np.where(bins >= 0, q[np.maximum(bins, 0)], 1.0)

    def fwer_z(self) -> float:
        """``|z|`` threshold of the FWER: max statistic with permutations, else Bonferroni."""
        if len(self.maxima):
            return fwer_threshold(self.maxima, self.alpha)
        return z_of_p(self.alpha / max(self.m, 1))

    def fwer_p(self, z) -> np.ndarray:
        """FWER-adjusted p: max statistic with permutations, else Bonferroni (capped at 1)."""
        if len(self.maxima):
            return max_stat_p(z, self.maxima)
        return np.minimum(two_sided_p(z) * max(self.m, 1), 1.0)

    def null_p(self, z) -> np.ndarray | None:
        """p of ``z`` against the pooled circular-shift null (None without permutations)."""
        if self.null_counts is None:
            return None
        return pooled_null_p(z, self.null_counts, self.null_below, self.grid)

    def significant_counts(self) -> dict[str, np.ndarray]:
        """Per AN: targets significant uncorrected (``alpha``), at FDR ``alpha`` and at FWER."""
        cumulative = np.concatenate(
            [np.cumsum(self.counts[:, ::-1], axis=1)[:, ::-1], np.zeros((len(self.counts), 1))],
            axis=1,
        ).astype(np.int64)
        cutoff, _ = self.fdr()
        fwer = self.fwer_z()
        fwer_bin = self.grid.n_bins if math.isinf(fwer) else self.grid.bin_at_or_above(fwer)
        return {
            "n_significant": cumulative[:, self.grid.bin_at_or_above(z_of_p(self.alpha))],
            "n_fdr": cumulative[:, cutoff],
            "n_fwer": cumulative[:, fwer_bin],
        }

    @classmethod
    def concat(cls, parts: Sequence[Coupling]) -> Coupling:
        """One family from several AN sets (e.g. layers) on the same targets and null draws.

        ANs are stacked in order; each target's best AN is the best over all parts (indices
        into the stacked ANs); each draw's maximum is the maximum over the parts (the parts
        used the same seed, so draw ``d`` is the same shift everywhere).
        """
        first = parts[0]
        offsets = np.cumsum([0] + [len(p.valid_features) for p in parts])
        best_abs = np.full(len(first.valid_targets), -1.0)
        best_feature = np.full(len(first.valid_targets), -1, dtype=np.int64)
        best_r = np.zeros(len(first.valid_targets), np.float32)
        best_z = np.zeros(len(first.valid_targets), np.float32)
        for part, offset in zip(parts, offsets[:-1], strict=False):
            better = (part.best_feature >= 0) & (np.abs(part.best_z) > best_abs)
            best_abs[better] = np.abs(part.best_z[better])
            best_feature[better] = part.best_feature[better] + offset
            best_r[better] = part.best_r[better]
            best_z[better] = part.best_z[better]

        def stacked(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        maxima = (
            np.max(np.stack([p.maxima for p in parts]), axis=0)
            if len(first.maxima)
            else first.maxima
        )
        return cls(
            n_trs=first.n_trs,
            grid=first.grid,
            alpha=first.alpha,
            valid_features=np.concatenate([p.valid_features for p in parts]),
            valid_targets=first.valid_targets,
            top_index=np.concatenate([p.top_index for p in parts]),
            top_r=np.concatenate([p.top_r for p in parts]),
            top_z=np.concatenate([p.top_z for p in parts]),
            counts=np.concatenate([p.counts for p in parts]),
            best_feature=best_feature,
            best_r=best_r,
            best_z=best_z,
            maxima=maxima,
            null_counts=(
                None
                if first.null_counts is None
                else np.sum([p.null_counts for p in parts], axis=0)
            ),
            null_below=sum(p.null_below for p in parts),
            r=stacked("r"),
            z=stacked("z"),
            exceed=stacked("exceed"),
        )


def check_runs(starts: Sequence[int], n_rows: int, what: str) -> np.ndarray:
    """Run boundaries as int64 [n_runs + 1], checked against the rows of ``what``."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.ndim != 1 or len(starts) < 2 or starts[0] != 0 or np.any(np.diff(starts) <= 0):
        raise ValueError(f"starts must rise from 0 in at least two values, got {starts.tolist()}")
    if starts[-1] != n_rows:
        raise ValueError(f"starts end at {starts[-1]} TRs but {what} has {n_rows} rows")
    return starts


def check_removed(removed, starts: np.ndarray) -> None:
    """Refuse ``removed`` regressors that do not match the runs (naming the run and shape)."""
    if removed is None:
        return
    lengths = np.diff(starts)
    if len(removed) != len(lengths):
        raise ValueError(
            f"removed has {len(removed)} entries but there are {len(lengths)} runs (one per run)"
        )
    for run, (regressors, length) in enumerate(zip(removed, lengths, strict=True)):
        if regressors is None:
            continue
        shape = np.shape(regressors)
        if len(shape) != 2 or shape[0] != length:
            raise ValueError(
                f"removed[{run}] has shape {shape}: expected [{length} TRs, regressors]"
            )
        if not np.isfinite(regressors).all():
            raise ValueError(f"removed[{run}] holds NaN or infinite values")


def drift_regressors(runs: Sequence[tuple[int, float]], cleaning) -> list[np.ndarray | None] | None:
    """The drift polynomials ``cleaning`` removed from each run (``(TRs, TR in s)`` per run).

    What :func:`couple` takes as ``removed`` for runs cleaned by ``prepare`` (BOLD) and
    :func:`~wav2brain.encoding.runs.clean_features` (ANs) alike: the same Legendre basis
    (:func:`~wav2brain.data.fmri.drift_confounds`); None when ``cleaning`` is None (features left
    uncleaned: only the run means are common to both series). Confounds such as motion are not
    counted: the BOLD alone loses them, and against an AN series that keeps them the share of
    the AN's variance they hold leaves the numerator of ``r``'s variance as their lost degrees
    of freedom leave its denominator (``q`` confounds, white target: ``(1 - q / n) / (n - q) = 1
    / n``). Butterworth filters are no projection; their effect on the autocorrelations is in
    the estimates.
    """
    if cleaning is None:
        return None
    from wav2brain.data.fmri import drift_confounds, drift_order

    return [drift_confounds(n_trs, drift_order(n_trs, tr, cleaning)) for n_trs, tr in runs]


def standardize(values: np.ndarray, starts: np.ndarray, device) -> tuple[object, np.ndarray]:
    """Columns z-scored within each run, then scaled to unit norm over all runs: float32 torch.

    A column constant within a run (its SD at most 1e-6 of its mean's magnitude plus the SD: a
    constant's rounding) is 0 there; one constant in every run is 0 everywhere and reported
    invalid (second value, bool [columns]). Computed on ``device`` in float32, two
    passes per run (mean, then the centred sum of squares): accurate to about 1e-7. A run
    z-scored has a sum of squares equal to its TRs, so the norm over all runs is known without
    a pass (``sqrt`` of the summed lengths of the runs where the column varies): each run is
    centred into the output (the caller's array is never written) and divided once.
    """
    import torch

    source = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)
    out = torch.empty_like(source)
    scales, squares = [], torch.zeros(source.shape[1], device=device)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        mean = source[a:b].mean(0)
        run = torch.sub(source[a:b], mean, out=out[a:b])
        scale = torch.linalg.vector_norm(run, dim=0).div_(math.sqrt(b - a))
        constant = scale <= 1e-6 * (mean.abs() + scale)
        scales.append(scale.masked_fill_(constant, math.inf))  # a constant column: 0
        squares += (~constant).float() * (b - a)
    valid = squares > 0
    norm = squares.sqrt_().masked_fill_(~valid, 1.0)
    for (a, b), scale in zip(zip(starts[:-1], starts[1:], strict=True), scales, strict=True):
        out[a:b] /= scale.mul_(norm)
    return out, valid.cpu().numpy()


def max_lag_trs(config: CouplingConfig, tr: float, starts: np.ndarray) -> int:
    """Lags (TRs) of Bartlett's sum: ``max_lag_s`` in TRs, at most a quarter of the shortest run."""
    shortest = int(np.diff(starts).min())
    return max(1, min(int(round(config.max_lag_s / tr)), shortest // 4))


def truncate(rho, n: int):
    """Autocorrelations [lags, columns] set to 0 from each column's first lag inside the null band.

    The band is ``+-1.96 / sqrt(n)``: beyond the first lag whose estimate is indistinguishable
    from 0, estimates are mostly noise and the downward bias of the sample autocorrelation of a
    demeaned series (about ``-(1 + 2 sum rho) / n`` at every lag); summed over many lags, their
    products make Bartlett's variance too small (measured: the null z's standard deviation 1.010
    with 15 untruncated lags, 0.995 with this truncation, HRF-smoothed ANs against AR(1)
    voxels, 600 TRs; 1.005 for HRF-smoothed against HRF-smoothed). This is the adaptive
    truncation of Afyouni, Smith and Nichols (2019).
    """
    import torch

    inside = rho.abs() < 1.96 / math.sqrt(n)
    inside[-1] = True
    first = inside.int().argmax(dim=0)
    lags = torch.arange(len(rho), device=rho.device)[:, None]
    return torch.where(lags < first[None, :], rho, 0.0)


def circular_shifts(starts: np.ndarray, n_draws: int, min_shift: int, seed: int) -> np.ndarray:
    """Row indices of ``n_draws`` circular shifts within runs: int64 [draws, TRs].

    Each run of each draw is rolled by an offset drawn uniformly from ``[min_shift, length -
    min_shift]`` TRs.
    """
    lengths = np.diff(starts)
    short = np.nonzero(lengths <= 2 * min_shift)[0]
    if short.size:
        raise ValueError(
            f"run(s) {short.tolist()} have {lengths[short].tolist()} TRs: a circular shift of at "
            f"least {min_shift} TRs either way needs more than {2 * min_shift} (lower min_shift_s)"
        )
    rng = np.random.default_rng(seed)
    index = np.empty((n_draws, int(starts[-1])), dtype=np.int64)
    for d in range(n_draws):
        for a, length in zip(starts[:-1], lengths, strict=True):
            offset = int(rng.integers(min_shift, length - min_shift + 1))
            index[d, a : a + length] = a + (np.arange(length) + offset) % length
    return index


def block_sizes(
    n_features: int, n_targets: int, n_rows: int, config: CouplingConfig
) -> tuple[int, int]:
    """ANs and targets per block within ``memory_budget_mb``."""
    budget = config.memory_budget_mb * 2**20
    ann = min(n_features, config.ann_block)
    while True:
        inputs = 3 * ann * n_rows * 4
        width = int((budget - inputs) // (ann * bytes_per_element(config) + n_rows * 4))
        if width >= min(n_targets, 256) or ann == 1:
            return ann, max(1, min(n_targets, width))
        ann = max(1, ann // 2)


def couple(
    features: np.ndarray,
    targets: np.ndarray,
    starts: Sequence[int],
    tr: float,
    config: CouplingConfig | None = None,
    progress: Callable[[int], None] | None = None,
    removed: Sequence[np.ndarray | None] | None = None,
) -> Coupling:
    """Couple every AN (column of ``features``) with every target (column of ``targets``).

    Parameters
    ----------
    features : float [TRs, ANs]
        AN responses on the targets' TRs (runs stacked).
    targets : float [TRs, targets]
        BOLD of voxels, or region / network time courses.
    starts : sequence of int
        First row of each run, and the total (``[0, ..., TRs]``).
    tr : float
        Repetition time (s): converts ``max_lag_s`` and ``min_shift_s`` to TRs.
    config : CouplingConfig
    progress : callable, optional
        Called with the number of targets finished after each block of targets.
    removed : sequence of (float [run TRs, q] or None), optional
        Per run, the regressors the cleaning projected out of both series besides the run
        mean (drift polynomials: :func:`drift_regressors`); None: the run means alone. They
        enter the degrees of freedom (``n - P``, ``P`` the independent regressors of all runs,
        means included) and the correction of the autocorrelation estimates
        (:class:`~wav2brain.anchoring.significance.ResidualAutocorrelation`).

    Raises
    ------
    ValueError
        Features and targets on different TR counts (both named), bad runs, a full matrix over
        ``max_matrix_mb``.
    """
    import torch

    config = config or CouplingConfig()
    features, targets = np.asarray(features), np.asarray(targets)
    if features.ndim != 2 or targets.ndim != 2:
        raise ValueError(
            f"features and targets must be [TRs, columns], got {features.shape} and {targets.shape}"
        )
    if features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"AN responses have {features.shape[0]} TRs but the targets have "
            f"{targets.shape[0]}: they must be on the same TR grid"
        )
    starts = check_runs(starts, features.shape[0], "the features")
    check_removed(removed, starts)
    n_features, n_targets = features.shape[1], targets.shape[1]
    if config.keep_matrix and n_features * n_targets * 4 / 2**20 > config.max_matrix_mb:
        raise ValueError(
            f"a full {n_features} x {n_targets} matrix needs "
            f"{n_features * n_targets * 4 / 2**20:.0f} MB, over max_matrix_mb="
            f"{config.max_matrix_mb:g}: keep_matrix is for small problems"
        )
    n = int(starts[-1])
    lag = max_lag_trs(config, tr, starts)
    device = torch.device(config.device)
    X, valid_x = standardize(features, starts, device)
    Y, valid_y = standardize(targets, starts, device)
    residual = ResidualAutocorrelation.for_runs(starts, removed, lag)
    if config.variance == "bartlett":
        rx = lag_autocorrelation(X, starts, lag)
        ry, norm_y = residual.correct(lag_autocorrelation(Y, starts, lag))
        if config.truncation == "adaptive":
            rx, ry = truncate(rx, n), truncate(ry, n)
        factor = _Factor(rx, ry, norm_y, residual.dof, config.z_step, CHUNK_ELEMENTS + n_targets)
    else:
        factor = _Factor(None, None, None, residual.dof, config.z_step)
    shifts = None
    if config.n_permutations:
        min_shift = int(math.ceil(config.min_shift_s / tr))
        shifts = torch.from_numpy(
            circular_shifts(starts, config.n_permutations, min_shift, config.seed)
        ).to(device)
    ann_block, target_block = block_sizes(n_features, n_targets, n, config)
    logger.info(
        "coupling %d ANs x %d targets over %d TRs in blocks of %d x %d (budget %g MB), "
        "%d lags, %d circular shifts",
        n_features,
        n_targets,
        n,
        ann_block,
        target_block,
        config.memory_budget_mb,
        lag,
        config.n_permutations,
    )
    state = _Pass(n_features, n_targets, n, config, device)
    # one block buffer for every product (and one for the draws): no page faults per block
    products = torch.empty(ann_block * target_block, device=device)
    draws = torch.empty(ann_block * target_block if shifts is not None else 0, device=device)
    for v0 in range(0, n_targets, target_block):
        v1 = min(v0 + target_block, n_targets)
        Yv = Y[:, v0:v1]
        for a0 in range(0, n_features, ann_block):
            a1 = min(a0 + ann_block, n_features)
            Xa = X[:, a0:a1]
            r = torch.mm(Xa.t(), Yv, out=products[: (a1 - a0) * (v1 - v0)].view(a1 - a0, -1))
            kept = torch.empty_like(r) if shifts is not None or state.keep else None
            rows = state.chunk_rows(v1 - v0)
            for i0 in range(0, a1 - a0, rows):
                i1 = min(i0 + rows, a1 - a0)
                f = factor.block(a0 + i0, a0 + i1, v0, v1)
                if kept is not None and torch.is_tensor(f):
                    kept[i0:i1] = f
                state.observe(r[i0:i1], f, a0 + i0, v0)
            state.resolve_best(r, a0, v0, rows, factor)
            if shifts is not None:
                for d in range(len(shifts)):
                    null = torch.mm(
                        Xa[shifts[d]].t(), Yv, out=draws[: (a1 - a0) * (v1 - v0)].view(a1 - a0, -1)
                    )
                    for i0 in range(0, a1 - a0, rows):
                        i1 = min(i0 + rows, a1 - a0)
                        part = kept[i0:i1] if factor.bartlett else factor.naive
                        state.null(null[i0:i1], part, d, a0 + i0, v0)
            del kept
        if progress is not None:
            progress(v1 - v0)
    return state.result(valid_x, valid_y)


class _Factor:
    """The factor turning ``atanh(r)`` into ``z`` in grid steps, per AN x target pair.

    Bartlett (``rx`` given): one product gives ``V step^2``, ``V = (1 + 2 sum_k c_x(k)
    rho_y(k)) / d_y`` the null variance of r (the AN's lag sums, the target's corrected
    autocorrelations, :class:`~wav2brain.anchoring.significance.ResidualAutocorrelation`),
    clipped to ``[1 / (n - P), 1 / MIN_EFFECTIVE_SAMPLES]``; the factor is ``sqrt(1 / V - 2) /
    step`` (Fisher's ``atanh(r) sqrt(n - 3)`` when ``V = 1 / (n - 1)``). Naive: ``V = 1 / (n -
    P)``, a constant.
    """

    def __init__(self, rx, ry, norm_y, dof: int, step: float, elements: int = 0) -> None:
        import torch

        self.bartlett = rx is not None
        self.naive = math.sqrt(dof - 2) / step
        if self.bartlett:
            # ANs' rows contiguous ([ANs, K + 1]) and one output buffer of ``elements``: the
            # skinny product runs 1.7x faster than on a transposed view into a new tensor
            rows = torch.cat([2 * rx, torch.ones_like(rx[:1])]).mul_(step * step)
            self.rx = rows.t().contiguous()
            self.ry = torch.cat([ry, torch.ones_like(ry[:1])]).div_(norm_y.clamp(min=1.0))
            self.low, self.high = step * step / dof, step * step / MIN_EFFECTIVE_SAMPLES
            self.shift = 2.0 / (step * step)
            self.buffer = torch.empty(elements, device=rx.device)

    def _finish(self, v):
        return v.clamp_(self.low, self.high).reciprocal_().sub_(self.shift).sqrt_()

    def block(self, a0: int, a1: int, v0: int, v1: int):
        """Factors of ANs ``a0:a1`` x targets ``v0:v1`` (a float for the naive variance); the
        tensor is overwritten by the next call."""
        import torch

        if not self.bartlett:
            return self.naive
        out = self.buffer[: (a1 - a0) * (v1 - v0)].view(a1 - a0, v1 - v0)
        return self._finish(torch.mm(self.rx[a0:a1], self.ry[:, v0:v1], out=out))

    def pairs(self, features, targets):
        """Factors of the pairs (``features[i]``, ``targets[i]``), computed as :meth:`block`."""
        if not self.bartlett:
            return self.naive
        return self._finish((self.rx[features].t() * self.ry[:, targets]).sum(0))


CHUNK_ELEMENTS = 1 << 19
"""AN x target elements per chunk of the element-wise statistics (2 MB of float32): the chain
of operations after each block's product runs on chunks that stay in the CPU caches instead of
streaming whole blocks through memory once per operation (2^19 against 2^18: the same cache
traffic, half the per-operation dispatch; measured 0.745 against 0.70 of the mm rate, CPU
time, one thread)."""


TOPK_GROUP = 32
"""Columns per group of :func:`row_topk`."""


def row_topk(values, k: int):
    """Largest ``k`` of each row of ``values`` [rows, width] and their columns (as ``topk``).

    The row is cut into ``TOPK_GROUP`` strided groups' worth of columns (group ``j``: columns
    ``j, j + g, j + 2 g, ...``, ``g = width // TOPK_GROUP``); a row's ``k`` largest lie in the
    ``k`` groups with the largest maxima (a group holding one of them has a maximum at least
    the ``k``-th largest; ties aside, no other group does), so ``topk`` runs on the group maxima
    (one vectorised pass over the row) and on those groups' columns (plus the ``width %
    TOPK_GROUP`` last ones) instead of the whole row (measured: 0.24 against 0.74 ns an
    element, rows of 50,000). Narrow rows go to ``topk`` directly.
    """
    import torch

    rows, width = values.shape
    groups = width // TOPK_GROUP
    if groups <= 4 * k:
        return values.topk(k, dim=1)
    head = values[:, : groups * TOPK_GROUP].unflatten(1, (TOPK_GROUP, groups))
    _, chosen = head.amax(dim=1).topk(k, dim=1)
    spread = torch.arange(TOPK_GROUP, device=values.device) * groups
    columns = (chosen[:, :, None] + spread).view(rows, k * TOPK_GROUP)
    if width > groups * TOPK_GROUP:
        tail = torch.arange(groups * TOPK_GROUP, width, device=values.device)
        columns = torch.cat([columns, tail.expand(rows, -1)], dim=1)
    best, position = values.gather(1, columns).topk(k, dim=1)
    return best, columns.gather(1, position)


class _Pass:
    """Running summaries of one :func:`couple` call, updated chunk by chunk."""

    def __init__(self, n_features, n_targets, n, config: CouplingConfig, device) -> None:
        import torch

        self.torch = torch
        self.grid = config.grid
        self.config = config
        self.n = n
        self.k = k = min(config.top_k, n_targets)
        bins = self.grid.n_bins
        self.top_abs = torch.full((n_features, k), -1.0, device=device)
        self.top_index = torch.full((n_features, k), -1, dtype=torch.int64, device=device)
        self.top_r = torch.zeros((n_features, k), device=device)
        self.top_z = torch.zeros((n_features, k), device=device)
        self.counts = torch.zeros((n_features, bins), dtype=torch.int32, device=device)
        self.best_abs = torch.full((n_targets,), -1.0, device=device)
        self.best_feature = torch.full((n_targets,), -1, dtype=torch.int64, device=device)
        self.best_chunk = torch.full((n_targets,), -1, dtype=torch.int64, device=device)
        self.best_r = torch.zeros(n_targets, device=device)
        self.best_z = torch.zeros(n_targets, device=device)
        self.maxima = torch.zeros(config.n_permutations, dtype=torch.float64, device=device)
        self.null_counts = torch.zeros(bins + 1, dtype=torch.int64, device=device)
        self.keep = config.keep_matrix
        shape = (n_features, n_targets)
        self.full_r = np.zeros(shape, np.float32) if self.keep else None
        self.full_z = np.zeros(shape, np.float32) if self.keep else None
        self.exceed = np.zeros(shape, np.int32) if self.keep and config.n_permutations else None
        self.device = device
        self.offset = 1.0 - self.grid.start / self.grid.step
        self.below = max(0, math.ceil(-self.offset))
        size = self.below + 1 + self.grid.n_bins
        rows = self.chunk_rows(1)
        self.row_offsets = torch.arange(rows, dtype=torch.int32, device=device)[:, None] * size
        self.buffer = torch.empty(CHUNK_ELEMENTS + n_targets, device=device)

    def chunk_rows(self, width: int) -> int:
        """Rows of a chunk ``width`` targets wide: ``CHUNK_ELEMENTS`` elements, and as many
        histogram counters (:meth:`_histogram`)."""
        size = self.below + 1 + self.grid.n_bins
        return max(1, min(CHUNK_ELEMENTS // width, CHUNK_ELEMENTS // size))

    def _histogram(self, absz, rows: int = 1):
        """Tests per grid bin of each of ``rows`` rows of ``|z|`` (grid steps; overwritten).

        Bin ``i`` holds ``start + i step <= |z| < start + (i + 1) step`` (the last one open above),
        ``|z|`` in grid steps shifted by ``below = ceil(start / step - 1)``: ``int(min(|z| + 1 -
        start / step + below, below + n_bins))``, so that the tests below the grid (most of
        them) fall in the ``below + 1`` bins under it, spread by their ``|z|`` instead of piling
        into one counter (one counter takes every increment in turn: ``bincount`` ran 3.8x
        slower, 1.7 against 0.45 ns a test). Returns int64 ``[rows, n_bins]``, and the tests below
        the grid (int64 ``[rows]``) as second value.
        """
        torch = self.torch
        size = self.below + 1 + self.grid.n_bins
        bins = absz.add_(self.offset + self.below).clamp_(max=size - 1).int()
        if rows > 1:
            bins.add_(self.row_offsets[:rows])
        counts = torch.bincount(bins.view(-1), minlength=rows * size).view(rows, size)
        return counts[:, self.below + 1 :], counts[:, : self.below + 1].sum(1)

    def observe(self, r, factor, a0: int, v0: int) -> None:
        """Fold the block rows ``r`` [rows, targets] at (``a0``, ``v0``) into the summaries.

        ``factor`` turns ``atanh(r)`` into ``z`` in grid steps; ``r`` is overwritten with it
        (the few r reported are recovered as ``tanh(z / factor)``).
        """
        torch = self.torch
        rows, width = r.shape
        if self.keep:
            self.full_r[a0 : a0 + rows, v0 : v0 + width] = r.cpu().numpy()
        z = r.clamp_(-R_MAX, R_MAX).atanh_().mul_(factor)
        absz = torch.abs(z, out=self.buffer[: rows * width].view(rows, width))
        a1 = a0 + rows
        values, index = row_topk(absz, min(self.k, width))
        top_z = z.gather(1, index)
        chosen = factor.gather(1, index) if torch.is_tensor(factor) else factor
        top_r = torch.tanh(top_z / chosen)
        index += v0
        if v0 > 0 or values.shape[1] < self.k:  # merge with the earlier targets' best
            merged_abs = torch.cat([self.top_abs[a0:a1], values], dim=1)
            values, order = merged_abs.topk(self.k, dim=1)
            index = torch.cat([self.top_index[a0:a1], index], dim=1).gather(1, order)
            top_r = torch.cat([self.top_r[a0:a1], top_r], dim=1).gather(1, order)
            top_z = torch.cat([self.top_z[a0:a1], top_z], dim=1).gather(1, order)
        self.top_abs[a0:a1] = values
        self.top_index[a0:a1] = index
        self.top_r[a0:a1] = top_r
        self.top_z[a0:a1] = top_z
        column_abs = absz.amax(dim=0)
        best = self.best_abs[v0 : v0 + width]
        self.best_chunk[v0 : v0 + width].masked_fill_(column_abs > best, a0)
        torch.maximum(best, column_abs, out=best)
        self.counts[a0:a1] += self._histogram(absz, rows)[0]
        if self.keep:
            self.full_z[a0:a1, v0 : v0 + width] = z.cpu().numpy() * self.grid.step

    def resolve_best(self, z, a0: int, v0: int, rows: int, factor: _Factor) -> None:
        """Per target, its best AN in the finished block ``z`` [ANs, targets] (grid steps).

        :meth:`observe` kept, per target, the largest ``|z|`` and the first row of the chunk
        holding it (a strictly larger ``|z|`` replaces it: earlier ANs win ties); here the
        chunk's ``rows`` rows of the targets whose best is in this block are read back, the
        first maximal row taken, and its r is ``tanh(z / f)`` with the factor recomputed for
        that pair alone.
        """
        torch = self.torch
        width = z.shape[1]
        first = self.best_chunk[v0 : v0 + width]
        columns = torch.nonzero(first >= a0).squeeze(1)
        if not columns.numel():
            return
        offsets = torch.arange(rows, device=self.device)[:, None]
        candidates = (first[columns] - a0 + offsets).clamp_(max=z.shape[0] - 1)
        values = z[candidates, columns]
        pick = values.abs().argmax(dim=0)
        row = candidates.gather(0, pick[None])[0] + a0
        best_z = values.gather(0, pick[None])[0]
        where = columns + v0
        self.best_feature[where] = row
        self.best_r[where] = torch.tanh(best_z / factor.pairs(row, where))
        self.best_z[where] = best_z

    def null(self, r, factor, draw: int, a0: int, v0: int) -> None:
        """Fold one circular-shift draw's block rows into the max statistic and the pooled null."""
        absz = r.clamp_(-R_MAX, R_MAX).atanh_().mul_(factor).abs_()
        self.maxima[draw] = self.torch.maximum(self.maxima[draw], absz.max().double())
        if self.exceed is not None:
            rows, width = r.shape
            observed = np.abs(self.full_z[a0 : a0 + rows, v0 : v0 + width]) / self.grid.step
            self.exceed[a0 : a0 + rows, v0 : v0 + width] += absz.cpu().numpy() >= observed
        on_grid, below = self._histogram(absz)
        self.null_counts[1:] += on_grid[0]
        self.null_counts[0] += below[0]

    def result(self, valid_x: np.ndarray, valid_y: np.ndarray) -> Coupling:
        top_index = self.top_index.cpu().numpy()
        hit = (top_index >= 0) & valid_x[:, None]
        hit[hit] = valid_y[top_index[hit]]
        top_index[~hit] = -1
        best = self.best_feature.cpu().numpy()
        best[~valid_y] = -1
        permuted = bool(self.config.n_permutations)
        null = self.null_counts.cpu().numpy()
        step = self.grid.step
        return Coupling(
            n_trs=self.n,
            grid=self.grid,
            alpha=self.config.alpha,
            valid_features=valid_x,
            valid_targets=valid_y,
            top_index=top_index,
            top_r=np.where(hit, self.top_r.cpu().numpy(), 0.0).astype(np.float32),
            top_z=np.where(hit, self.top_z.cpu().numpy() * step, 0.0).astype(np.float32),
            counts=self.counts.cpu().numpy(),
            best_feature=best,
            best_r=np.where(best >= 0, self.best_r.cpu().numpy(), 0.0).astype(np.float32),
            best_z=np.where(best >= 0, self.best_z.cpu().numpy() * step, 0.0).astype(np.float32),
            maxima=self.maxima.cpu().numpy() * step,
            null_counts=null[1:] if permuted else None,
            null_below=int(null[0]) if permuted else 0,
            r=self.full_r,
            z=self.full_z,
            exceed=self.exceed,
        )
