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

Block sizes come from ``memory_budget_mb`` (the block temporaries: about 28 bytes per AN x target
element, plus the block's slices of both inputs) and are logged. Constant columns (constant in
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
    max_stat_p,
    pooled_null_p,
    run_autocorrelation,
    two_sided_p,
    z_of_p,
)

logger = logging.getLogger(__name__)

R_MAX = 1 - 1e-6
"""Correlations are clipped to ``+-R_MAX`` before ``atanh`` (float32)."""

BYTES_PER_ELEMENT = 28
"""Bytes of block temporaries per AN x target element (r, the variance factor, z, |z|, masks,
and the permutation products), used to size blocks from the memory budget."""

VARIANCES = ("bartlett", "naive")


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
    variance : str
        ``"bartlett"`` (autocorrelation-aware) or ``"naive"`` (``n_eff = n``: anti-conservative
        for smoothed series; kept as the negative control of the calibration tests).
    n_permutations : int
        Circular-shift draws (0: analytic p-values only).
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
            (self.n_permutations >= 0, "n_permutations", ">= 0"),
            (self.min_shift_s >= 0, "min_shift_s", ">= 0 s"),
            (self.memory_budget_mb > 0, "memory_budget_mb", "> 0 MB"),
            (self.ann_block >= 1, "ann_block", ">= 1"),
            (0 < self.z_step <= 1, "z_step", "in (0, 1]"),
            (self.z_max > z_of_p(self.grid_max_p), "z_max", "above the grid's start"),
            (self.max_matrix_mb > 0, "max_matrix_mb", "> 0 MB"),
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


def standardize(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns z-scored within each run, then scaled to unit norm over all runs: float32.

    A column constant within a run is 0 there; one constant in every run is 0 everywhere and
    reported invalid (second value, bool [columns]).
    """
    out = np.empty(values.shape, dtype=np.float32)
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        for first in range(0, values.shape[1], 4096):
            block = slice(first, first + 4096)
            run = np.asarray(values[a:b, block], dtype=np.float64)
            centred = run - run.mean(0)
            scale = np.sqrt((centred * centred).mean(0))
            constant = scale <= 1e-6 * np.maximum(np.abs(run).max(0), 1e-30)
            out[a:b, block] = np.where(constant, 0.0, centred / np.where(constant, 1.0, scale))
    norm = np.sqrt(np.einsum("ij,ij->j", out, out, dtype=np.float64))
    valid = norm > 0
    out /= np.where(valid, norm, 1.0).astype(np.float32)
    return out, valid


def max_lag_trs(config: CouplingConfig, tr: float, starts: np.ndarray) -> int:
    """Lags (TRs) of Bartlett's sum: ``max_lag_s`` in TRs, at most a quarter of the shortest run."""
    shortest = int(np.diff(starts).min())
    return max(1, min(int(round(config.max_lag_s / tr)), shortest // 4))


def truncate(rho: np.ndarray, n: int) -> np.ndarray:
    """Autocorrelations [lags, columns] set to 0 from each column's first lag inside the null band.

    The band is ``+-1.96 / sqrt(n)``: beyond the first lag whose estimate is indistinguishable
    from 0, estimates are mostly noise and the downward bias of the sample autocorrelation of a
    demeaned series (about ``-(1 + 2 sum rho) / n`` at every lag); summed over many lags, their
    products make Bartlett's variance too small (measured: the null z's standard deviation 1.010
    with 15 untruncated lags, 1.00x with this truncation, HRF-smoothed ANs against AR(1)
    voxels, 600 TRs). This is the adaptive truncation of Afyouni, Smith and Nichols (2019).
    """
    inside = np.abs(rho) < 1.96 / np.sqrt(n)
    inside[-1] = True
    first = inside.argmax(axis=0)
    keep = np.arange(len(rho))[:, None] < first[None, :]
    return np.where(keep, rho, 0.0).astype(np.float32)


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
        width = int((budget - inputs) // (ann * BYTES_PER_ELEMENT + n_rows * 4))
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
    grid = config.grid
    lag = max_lag_trs(config, tr, starts)
    x, valid_x = standardize(features, starts)
    y, valid_y = standardize(targets, starts)
    device = torch.device(config.device)
    X = torch.from_numpy(x).to(device)
    Y = torch.from_numpy(y).to(device)
    bartlett = config.variance == "bartlett"
    if bartlett:
        Rx = torch.from_numpy(truncate(run_autocorrelation(x, starts, lag), n)).to(device)
        Ry = torch.from_numpy(truncate(run_autocorrelation(y, starts, lag), n)).to(device)
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
    k = min(config.top_k, n_targets)
    top_abs = torch.full((n_features, k), -1.0, device=device)
    top_index = torch.full((n_features, k), -1, dtype=torch.int64, device=device)
    top_r = torch.zeros((n_features, k), device=device)
    top_z = torch.zeros((n_features, k), device=device)
    counts = torch.zeros((n_features, grid.n_bins), dtype=torch.int64, device=device)
    best_abs = torch.full((n_targets,), -1.0, device=device)
    best_feature = torch.full((n_targets,), -1, dtype=torch.int64, device=device)
    best_r = torch.zeros(n_targets, device=device)
    best_z = torch.zeros(n_targets, device=device)
    maxima = torch.zeros(config.n_permutations, dtype=torch.float64, device=device)
    null_counts = torch.zeros(grid.n_bins, dtype=torch.int64, device=device)
    null_total = 0
    keep = config.keep_matrix
    full_r = np.zeros((n_features, n_targets), np.float32) if keep else None
    full_z = np.zeros((n_features, n_targets), np.float32) if keep else None
    exceed = np.zeros((n_features, n_targets), np.int32) if keep and shifts is not None else None
    naive_factor = math.sqrt(max(n - 3, 1))

    def binned(absz):
        return ((absz - grid.start) / grid.step).floor_().clamp_(max=grid.n_bins - 1).long()

    for v0 in range(0, n_targets, target_block):
        v1 = min(v0 + target_block, n_targets)
        Yv = Y[:, v0:v1]
        for a0 in range(0, n_features, ann_block):
            a1 = min(a0 + ann_block, n_features)
            Xa = X[:, a0:a1]
            r = torch.mm(Xa.t(), Yv)
            if bartlett:
                factor = torch.mm(Rx[:, a0:a1].t(), Ry[:, v0:v1])
                factor.mul_(2).add_(1).reciprocal_().mul_(n).clamp_(4, n).sub_(3).sqrt_()
            else:
                factor = naive_factor
            z = r.clamp(-R_MAX, R_MAX).atanh_().mul_(factor)
            absz = z.abs()
            # top-k per AN, merged with the running best
            kk = min(k, v1 - v0)
            values, index = absz.topk(kk, dim=1)
            merged_abs = torch.cat([top_abs[a0:a1], values], dim=1)
            merged_index = torch.cat([top_index[a0:a1], index + v0], dim=1)
            merged_r = torch.cat([top_r[a0:a1], r.gather(1, index)], dim=1)
            merged_z = torch.cat([top_z[a0:a1], z.gather(1, index)], dim=1)
            keep_abs, order = merged_abs.topk(k, dim=1)
            top_abs[a0:a1] = keep_abs
            top_index[a0:a1] = merged_index.gather(1, order)
            top_r[a0:a1] = merged_r.gather(1, order)
            top_z[a0:a1] = merged_z.gather(1, order)
            # best AN per target
            column_abs, column_index = absz.max(dim=0)
            better = column_abs > best_abs[v0:v1]
            best_abs[v0:v1] = torch.where(better, column_abs, best_abs[v0:v1])
            best_feature[v0:v1] = torch.where(better, column_index + a0, best_feature[v0:v1])
            rows = torch.arange(v1 - v0, device=device)
            best_r[v0:v1] = torch.where(better, r[column_index, rows], best_r[v0:v1])
            best_z[v0:v1] = torch.where(better, z[column_index, rows], best_z[v0:v1])
            # grid counts per AN
            rows, columns = torch.nonzero(absz >= grid.start, as_tuple=True)
            flat = rows * grid.n_bins + binned(absz[rows, columns])
            counts[a0:a1] += torch.bincount(flat, minlength=(a1 - a0) * grid.n_bins).view(
                a1 - a0, grid.n_bins
            )
            if keep:
                full_r[a0:a1, v0:v1] = r.cpu().numpy()
                full_z[a0:a1, v0:v1] = z.cpu().numpy()
            del r, z, values, index, rows, columns, flat
            if shifts is not None:
                for d in range(len(shifts)):
                    null = torch.mm(Xa[shifts[d]].t(), Yv)
                    null.clamp_(-R_MAX, R_MAX).atanh_().mul_(factor).abs_()
                    maxima[d] = torch.maximum(maxima[d], null.max().double())
                    above = null[null >= grid.start]
                    null_counts += torch.bincount(binned(above), minlength=grid.n_bins)
                    null_total += null.numel()
                    if exceed is not None:
                        exceed[a0:a1, v0:v1] += (null >= absz).cpu().numpy()
                    del null, above
            del absz, factor
        if progress is not None:
            progress(v1 - v0)
    top_index = top_index.cpu().numpy()
    hit = (top_index >= 0) & valid_x[:, None]
    hit[hit] = valid_y[top_index[hit]]
    top_index[~hit] = -1
    best = best_feature.cpu().numpy()
    best[~valid_y] = -1
    null_array = null_counts.cpu().numpy() if shifts is not None else None
    return Coupling(
        n_trs=n,
        grid=grid,
        alpha=config.alpha,
        valid_features=valid_x,
        valid_targets=valid_y,
        top_index=top_index,
        top_r=np.where(top_index >= 0, top_r.cpu().numpy(), 0.0).astype(np.float32),
        top_z=np.where(top_index >= 0, top_z.cpu().numpy(), 0.0).astype(np.float32),
        counts=counts.cpu().numpy().astype(np.int32),
        best_feature=best,
        best_r=np.where(best >= 0, best_r.cpu().numpy(), 0.0).astype(np.float32),
        best_z=np.where(best >= 0, best_z.cpu().numpy(), 0.0).astype(np.float32),
        maxima=maxima.cpu().numpy(),
        null_counts=null_array,
        null_below=0 if null_array is None else null_total - int(null_array.sum()),
        r=full_r,
        z=full_z,
        exceed=exceed,
    )
