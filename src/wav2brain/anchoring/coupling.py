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
        cut drops (measured on the simulator, 4 detrended runs of about 73 TRs, noise voxels: null
        ``z`` SD 1.107 with the cut, 1.041 without; HRF-smoothed ANs against AR(1) voxels, 600
        undetrended TRs: 1.010 without, 0.995 with it).
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


def standardize(values: np.ndarray, starts: np.ndarray, device) -> tuple[object, np.ndarray]:
    """Columns z-scored within each run, then scaled to unit norm over all runs: float32 torch.

    A column constant within a run is 0 there; one constant in every run is 0 everywhere and
    reported invalid (second value, bool [columns]). Computed on ``device`` in float32, two
    passes per run (mean, then the centred sum of squares): accurate to about 1e-7.
    """
    import torch

    out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)
    if out.data_ptr() == np.asarray(values).__array_interface__["data"][0]:
        out = out.clone()  # never write into the caller's array
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        run = out[a:b]
        run -= run.mean(0)
        scale = run.square().mean(0).sqrt_()
        largest = torch.from_numpy(np.abs(np.asarray(values[a:b])).max(0).astype(np.float32))
        constant = scale <= 1e-6 * largest.to(device).clamp_(min=1e-30)
        run /= torch.where(constant, 1.0, scale)
        run[:, constant] = 0.0
    norm = out.square().sum(0).sqrt_()
    valid = norm > 0
    out /= torch.where(valid, norm, 1.0)
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
    bartlett = config.variance == "bartlett"
    step = config.z_step
    if bartlett:
        # one product gives D step^2 / (n - 3), D = 1 + 2 sum_k rho_x(k) rho_y(k): its inverse
        # square root is the factor turning atanh(r) into z in grid steps
        scale = step * step / (n - 3)
        rx = lag_autocorrelation(X, starts, lag)
        ry = lag_autocorrelation(Y, starts, lag)
        if config.truncation == "adaptive":
            rx, ry = truncate(rx, n), truncate(ry, n)
        Rx = torch.cat([2 * rx, torch.ones_like(rx[:1])]).mul_(scale)
        Ry = torch.cat([ry, torch.ones_like(ry[:1])])
        low, high = scale, scale * n / 4
    naive_factor = math.sqrt(n - 3) / step
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
    for v0 in range(0, n_targets, target_block):
        v1 = min(v0 + target_block, n_targets)
        Yv = Y[:, v0:v1]
        for a0 in range(0, n_features, ann_block):
            a1 = min(a0 + ann_block, n_features)
            Xa = X[:, a0:a1]
            r = torch.mm(Xa.t(), Yv)
            factor = torch.empty_like(r) if shifts is not None or state.keep else None
            rows = max(1, CHUNK_ELEMENTS // (v1 - v0))
            for i0 in range(0, a1 - a0, rows):
                i1 = min(i0 + rows, a1 - a0)
                if bartlett:
                    f = torch.mm(Rx[:, a0 + i0 : a0 + i1].t(), Ry[:, v0:v1])
                    f.clamp_(low, high).rsqrt_()
                    if shifts is not None:
                        factor[i0:i1] = f
                else:
                    f = naive_factor
                state.observe(r[i0:i1], f, a0 + i0, v0)
            del r
            if shifts is not None:
                for d in range(len(shifts)):
                    null = torch.mm(Xa[shifts[d]].t(), Yv)
                    for i0 in range(0, a1 - a0, rows):
                        i1 = min(i0 + rows, a1 - a0)
                        part = factor[i0:i1] if bartlett else naive_factor
                        state.null(null[i0:i1], part, d, a0 + i0, v0)
                    del null
            del factor
        if progress is not None:
            progress(v1 - v0)
    return state.result(valid_x, valid_y)


CHUNK_ELEMENTS = 1 << 18
"""AN x target elements per chunk of the element-wise statistics (1 MB of float32): the chain
of operations after each block's product runs on chunks that stay in the CPU caches instead of
streaming whole blocks through memory once per operation."""


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
        self.counts = torch.zeros((n_features, bins), dtype=torch.int64, device=device)
        self.best_abs = torch.full((n_targets,), -1.0, device=device)
        self.best_feature = torch.full((n_targets,), -1, dtype=torch.int64, device=device)
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

    def bins(self, absz):
        """Bin + 1 of each ``|z|`` in grid steps (0: below the grid), int32."""
        offset = 1.0 - self.grid.start / self.grid.step
        return absz.add(offset).clamp_(0, self.grid.n_bins).int()

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
        absz = z.abs()
        a1 = a0 + rows
        kk = min(self.k, width)
        values, index = absz.topk(kk, dim=1)
        merged_abs = torch.cat([self.top_abs[a0:a1], values], dim=1)
        merged_index = torch.cat([self.top_index[a0:a1], index + v0], dim=1)
        merged_z = torch.cat([self.top_z[a0:a1], z.gather(1, index)], dim=1)
        chosen = factor.gather(1, index) if torch.is_tensor(factor) else factor
        merged_r = torch.cat([self.top_r[a0:a1], torch.tanh(z.gather(1, index) / chosen)], dim=1)
        kept, order = merged_abs.topk(self.k, dim=1)
        self.top_abs[a0:a1] = kept
        self.top_index[a0:a1] = merged_index.gather(1, order)
        self.top_r[a0:a1] = merged_r.gather(1, order)
        self.top_z[a0:a1] = merged_z.gather(1, order)
        column_abs = absz.amax(dim=0)
        better = torch.nonzero(column_abs > self.best_abs[v0 : v0 + width]).squeeze(1)
        if better.numel():  # argmax only where the chunk holds a new best (few columns)
            row = absz[:, better].argmax(dim=0)
            best_z = z[row, better]
            best_f = factor[row, better] if torch.is_tensor(factor) else factor
            where = better + v0
            self.best_abs[where] = column_abs[better]
            self.best_feature[where] = row + a0
            self.best_r[where] = torch.tanh(best_z / best_f)
            self.best_z[where] = best_z
        size = self.grid.n_bins + 1
        flat = self.bins(absz).add_(
            torch.arange(rows, device=self.device, dtype=torch.int32)[:, None] * size
        )
        chunk = torch.bincount(flat.view(-1), minlength=rows * size).view(rows, size)
        self.counts[a0:a1] += chunk[:, 1:]
        if self.keep:
            self.full_z[a0:a1, v0 : v0 + width] = z.cpu().numpy() * self.grid.step

    def null(self, r, factor, draw: int, a0: int, v0: int) -> None:
        """Fold one circular-shift draw's block rows into the max statistic and the pooled null."""
        absz = r.clamp_(-R_MAX, R_MAX).atanh_().mul_(factor).abs_()
        self.maxima[draw] = self.torch.maximum(self.maxima[draw], absz.max().double())
        self.null_counts += self.torch.bincount(
            self.bins(absz).view(-1), minlength=self.grid.n_bins + 1
        )
        if self.exceed is not None:
            rows, width = r.shape
            observed = np.abs(self.full_z[a0 : a0 + rows, v0 : v0 + width]) / self.grid.step
            self.exceed[a0 : a0 + rows, v0 : v0 + width] += absz.cpu().numpy() >= observed

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
            counts=self.counts.cpu().numpy().astype(np.int32),
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
