"""Scientific checks of the anchoring statistics (SIMULATED series): r, calibration, FDR, FWER."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from anchoring_fixtures import TR, ar1, hrf_smoothed, planted
from wav2brain.anchoring.coupling import R_MAX, CouplingConfig, couple, standardize
from wav2brain.anchoring.significance import (
    ZGrid,
    bh_cutoff,
    bh_q,
    fwer_threshold,
    max_stat_p,
    two_sided_p,
    z_of_p,
)

STARTS = [0, 300, 600]


def _zscored(values, starts):
    return np.concatenate(
        [
            (values[a:b] - values[a:b].mean(0)) / values[a:b].std(0)
            for a, b in zip(starts[:-1], starts[1:], strict=True)
        ]
    )


def test_blocked_r_equals_numpy_corrcoef_and_summaries_match_the_full_matrix(caplog):
    rng = np.random.default_rng(0)
    starts = [0, 70, 130]
    x = rng.standard_normal((130, 37)) + rng.standard_normal(37) * 5
    y = rng.standard_normal((130, 53)) * 3
    y[70:] += 10.0  # a run-mean shift: per-run z-scoring removes it
    config = CouplingConfig(keep_matrix=True, memory_budget_mb=0.2, ann_block=8, top_k=4)
    with caplog.at_level(logging.INFO, logger="wav2brain.anchoring.coupling"):
        result = couple(x, y, starts, TR, config)
    assert "in blocks of 8 x" in caplog.text  # blocked, and the block size is logged
    reference = np.corrcoef(_zscored(x, starts).T, _zscored(y, starts).T)[:37, 37:]
    np.testing.assert_allclose(result.r, reference, atol=1e-5)
    # the streamed summaries equal those of the full matrix
    order = np.argsort(-np.abs(result.z), axis=1)[:, :4]
    np.testing.assert_array_equal(np.sort(result.top_index, 1), np.sort(order, 1))
    np.testing.assert_array_equal(result.best_feature, np.argmax(np.abs(result.z), axis=0))
    bins = result.grid.bin_of(result.z)
    expected = np.stack([np.bincount(row[row >= 0], minlength=result.grid.n_bins) for row in bins])
    np.testing.assert_array_equal(result.counts, expected)


def test_negative_control_corrcoef_of_the_raw_stack_differs():
    """The check can fail: without per-run z-scoring the run-mean shift changes r."""
    rng = np.random.default_rng(0)
    starts = [0, 70, 130]
    x, y = rng.standard_normal((130, 5)), rng.standard_normal((130, 6))
    y[70:] += 10.0
    result = couple(x, y, starts, TR, CouplingConfig(keep_matrix=True))
    raw = np.corrcoef(x.T, y.T)[:5, 5:]
    assert np.abs(result.r - raw).max() > 1e-2


def test_constant_columns_are_skipped_and_counted_never_nan():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((120, 6)), rng.standard_normal((120, 8))
    x[:, 2] = 3.0
    y[:, [0, 5]] = 0.0
    result = couple(x, y, [0, 60, 120], TR, CouplingConfig(keep_matrix=True, top_k=3))
    assert result.valid_features.tolist() == [True, True, False, True, True, True]
    assert (~result.valid_targets).sum() == 2 and result.m == 5 * 6
    assert not np.isnan(result.r).any() and not np.isnan(result.z).any()
    assert (result.top_index[2] == -1).all() and result.best_feature[[0, 5]].tolist() == [-1, -1]
    assert not np.isin(result.top_index, [0, 5]).any()
    # a column constant in one run only is z-scored in the other
    mixed = np.r_[np.ones((60, 1)), rng.standard_normal((60, 1))]
    values, valid = standardize(mixed, np.array([0, 60, 120]), "cpu")
    assert valid.tolist() == [True] and (values[:60] == 0).all()


def test_lag_autocorrelation_is_the_pooled_estimator_of_the_recovery_check():
    from wav2brain.anchoring.significance import lag_autocorrelation
    from wav2brain.metrics.autocorrelation import autocorrelation

    rng = np.random.default_rng(2)
    values = hrf_smoothed(rng, 300, 7) + 3.0
    starts = np.array([0, 100, 300])
    standardized, _ = standardize(values, starts, "cpu")
    fast = lag_autocorrelation(standardized, starts, 12).numpy()
    scored = _zscored(values, starts)  # the series whose correlations are tested
    runs = [scored[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    np.testing.assert_allclose(fast, autocorrelation(runs, 12)[1:], atol=2e-6)
    # negative control: lags across the run boundary change the estimate
    across = lag_autocorrelation(standardized, np.array([0, 300]), 12).numpy()
    assert np.abs(across - fast).max() > 1e-3


def test_bad_input_is_refused_before_any_product():
    x, y = np.zeros((100, 3)), np.zeros((90, 4))
    with pytest.raises(ValueError, match="100 TRs but the targets have 90"):
        couple(x, y, [0, 100], TR)
    with pytest.raises(ValueError, match="starts end at 80"):
        couple(x, x, [0, 80], TR)
    with pytest.raises(ValueError, match="max_matrix_mb"):
        couple(x, x, [0, 100], TR, CouplingConfig(keep_matrix=True, max_matrix_mb=1e-9))
    with pytest.raises(ValueError, match="circular shift of at least 15 TRs"):
        couple(x, x, [0, 20, 100], TR, CouplingConfig(n_permutations=19, min_shift_s=30))
    with pytest.raises(ValueError, match="CouplingConfig.variance"):
        CouplingConfig(variance="exact")
    with pytest.raises(ValueError, match="needs 19 draws"):
        CouplingConfig(n_permutations=9)
    with pytest.raises(ValueError, match="CouplingConfig.alpha"):
        CouplingConfig(alpha=0.2)


def _null_pairs(seed: int, width: int = 1500):
    rng = np.random.default_rng(seed)
    return hrf_smoothed(rng, 600, width), ar1(rng, 600, width)


def test_analytic_p_is_calibrated_under_autocorrelation_and_naive_p_is_not():
    """HRF-smoothed ANs vs independent AR(1) voxels: KS and the false-positive rate at 0.05.

    The diagonal pairs (AN i with voxel i) are independent tests; the naive p (``n_eff = n``)
    is the negative control and fails both checks.
    """
    x, y = _null_pairs(100)
    for variance, calibrated in (("bartlett", True), ("naive", False)):
        result = couple(x, y, STARTS, TR, CouplingConfig(keep_matrix=True, variance=variance))
        p = two_sided_p(np.diag(result.z))
        low, high = stats.binom.interval(0.99, len(p), 0.05)
        inside = bool(low <= (p < 0.05).sum() <= high)
        uniform = bool(stats.kstest(p, "uniform").pvalue > 0.01)
        assert inside is calibrated and uniform is calibrated, (variance, (p < 0.05).mean())


def test_analytic_p_agrees_with_the_circular_shift_null():
    x, y = _null_pairs(101, width=120)
    config = CouplingConfig(keep_matrix=True, n_permutations=99, min_shift_s=40)
    result = couple(x, y, STARTS, TR, config)
    analytic = two_sided_p(result.z).ravel()
    permutation = ((1 + result.exceed) / 100).ravel()
    assert stats.spearmanr(analytic, permutation).statistic > 0.95
    assert abs((permutation <= 0.05).mean() - 0.05) < 0.01
    assert abs((analytic <= 0.05).mean() - (permutation <= 0.05).mean()) < 0.01
    pooled = result.null_p(result.z.ravel())
    assert np.abs(pooled - analytic)[analytic < 0.09].max() < 0.02
    # negative control: the naive p-values disagree with the same null
    naive = couple(x, y, STARTS, TR, CouplingConfig(keep_matrix=True, variance="naive"))
    assert (two_sided_p(naive.z) <= 0.05).mean() > 3 * (permutation <= 0.05).mean()


def test_planted_pairs_are_recovered_at_fdr_005():
    """Recall >= 0.9 on every seed; false discoveries, pooled over seeds, not above 5 %.

    BH bounds the expected FDP by ``alpha m0 / m`` (here about alpha), so the realised FDP of one
    seed scatters around 5 %; the pooled proportion is tested one-sided (binomial, 0.01).
    """
    false, reported = 0, 0
    for seed in range(3):
        x, y, truth = planted(np.random.default_rng(seed), 600, 64, 1500, 110)
        result = couple(x, y, STARTS, TR, CouplingConfig(keep_matrix=True))
        rejected = result.q_of(result.z) <= 0.05
        assert truth.sum() >= 100
        assert (rejected & truth).sum() / truth.sum() >= 0.9
        false += int((rejected & ~truth).sum())
        reported += int(rejected.sum())
        # the streamed per-AN FDR counts are those of the full matrix
        np.testing.assert_array_equal(result.significant_counts()["n_fdr"], rejected.sum(1))
    assert stats.binomtest(false, reported, 0.05, alternative="greater").pvalue > 0.01, (
        false,
        reported,
    )


def test_grid_bh_is_a_subset_of_exact_bh_and_its_q_never_smaller():
    rng = np.random.default_rng(3)
    z = np.r_[rng.standard_normal(20000), rng.normal(4.5, 1.0, 400)]
    grid = ZGrid.from_config(0.1, 0.02, 38.0)
    bins = grid.bin_of(z)
    histogram = np.bincount(bins[bins >= 0], minlength=grid.n_bins)
    cutoff, q = bh_cutoff(histogram, len(z), grid, 0.05)
    exact = bh_q(two_sided_p(z))
    grid_rejected = bins >= cutoff
    assert not (grid_rejected & (exact > 0.05)).any()
    assert grid_rejected.sum() >= 0.97 * (exact <= 0.05).sum()
    grid_q = np.where(bins >= 0, q[np.maximum(bins, 0)], 1.0)
    assert (grid_q >= exact - 1e-12).all()
    # negative control: an m that leaves out the tests below the grid rejects too much
    loose, _ = bh_cutoff(histogram, int(histogram.sum()) // 10, grid, 0.05)
    assert (bins >= loose).sum() > (exact <= 0.05).sum()


def test_max_statistic_helpers():
    maxima = np.arange(1, 20, dtype=float)  # 19 draws
    assert fwer_threshold(maxima, 0.05) == 19.0
    assert fwer_threshold(maxima[:10], 0.05) == np.inf
    np.testing.assert_allclose(max_stat_p([19.5, 10.0, 0.5], maxima), [1 / 20, 11 / 20, 1.0])
    assert abs(z_of_p(0.05) - 1.959964) < 1e-5


def _shuffled_story_trials(n_trials: int, seed: int, n_permutations: int = 39):
    """FWER over trials pairing each subject's BOLD with the features of another story.

    Every subject's BOLD carries its own story's planted signal (so the BOLD is not pure noise),
    paired here with the AN responses of a story it did not hear. Returns the family-wise
    error counts of the max statistic and of Bonferroni on naive p-values (negative control).
    """
    rng = np.random.default_rng(seed)
    errors = {"max_stat": 0, "naive_bonferroni": 0}
    for _ in range(n_trials):
        heard, other = hrf_smoothed(rng, 400, 12), hrf_smoothed(rng, 400, 12)
        bold = ar1(rng, 400, 60)
        bold[:, :20] += heard[:, :4] @ rng.standard_normal((4, 20))
        starts = [0, 200, 400]
        config = CouplingConfig(
            n_permutations=n_permutations, min_shift_s=40, seed=int(rng.integers(1 << 30))
        )
        result = couple(other, bold, starts, TR, config)
        errors["max_stat"] += int(np.abs(result.top_z[:, 0]).max() > result.fwer_z())
        naive = couple(other, bold, starts, TR, CouplingConfig(variance="naive"))
        errors["naive_bonferroni"] += int(np.abs(naive.top_z[:, 0]).max() > naive.fwer_z())
    return errors


def test_max_statistic_fwer_with_stories_shuffled_across_subjects_small():
    errors = _shuffled_story_trials(12, seed=7)
    assert errors["max_stat"] <= 3  # P(X >= 4 | 12, 0.05) = 0.002
    assert errors["naive_bonferroni"] >= 6  # negative control


@pytest.mark.slow
def test_max_statistic_fwer_with_stories_shuffled_across_subjects_repeated():
    n = 150
    errors = _shuffled_story_trials(n, seed=8)
    low, high = stats.binom.interval(0.99, n, 0.05)
    assert errors["max_stat"] <= high, errors
    assert errors["naive_bonferroni"] > high


def _detrended(values: np.ndarray, starts: np.ndarray, order: int = 2) -> np.ndarray:
    out = values.copy()
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        basis = np.polynomial.legendre.legvander(np.linspace(-1, 1, b - a), order)
        out[a:b] -= basis @ np.linalg.lstsq(basis, values[a:b], rcond=None)[0]
    return out


def test_every_lag_kept_beats_adaptive_truncation_on_detrended_short_runs():
    """Four runs of 75 TRs detrended (order 2) as prepare does, the drift basis not given: the
    cut drops the detrending's small negative autocorrelations of the nearly white series, and
    its null z is too wide (measured SD 1.08, 7.1-7.4 % at 0.05; every lag kept: 1.02-1.03,
    5.8-6.0 %; with the basis given, next test: 1.00)."""
    starts = np.array([0, 75, 150, 225, 300])
    rng = np.random.default_rng(0)
    x = _detrended(hrf_smoothed(rng, 300, 2000), starts)
    y = _detrended(ar1(rng, 300, 2000, 0.3), starts)
    z = {
        cut: np.diag(couple(x, y, starts, TR, CouplingConfig(keep_matrix=True, truncation=cut)).z)
        for cut in ("none", "adaptive")
    }
    assert z["none"].std() < z["adaptive"].std() - 0.03
    _, high = stats.binom.interval(0.99, 2000, 0.05)
    assert (np.abs(z["adaptive"]) > 1.96).sum() > high  # the cut is anti-conservative here
    with pytest.raises(ValueError, match="CouplingConfig.truncation must be one of"):
        CouplingConfig(truncation="xdf")


def _drift(starts: np.ndarray, order: int = 2) -> list[np.ndarray]:
    from wav2brain.data.fmri import drift_confounds

    return [drift_confounds(b - a, order) for a, b in zip(starts[:-1], starts[1:], strict=True)]


def test_removed_drift_basis_calibrates_detrended_short_runs():
    """Null z SD on four detrended runs of 75 TRs (HRF-smoothed ANs against AR(1) voxels, and
    HRF-smoothed against HRF-smoothed): with the drift basis given (its degrees of freedom and
    the moment correction of the autocorrelations) 1.00; negative control: the uncorrected
    estimator (Bartlett's product of the raw sample autocorrelations over ``n - 3``), 1.03-1.04
    (measured before the correction: the issue's 1.03-1.04)."""
    from wav2brain.anchoring.significance import lag_autocorrelation

    starts = np.array([0, 75, 150, 225, 300])
    rng = np.random.default_rng(5)
    for y in (ar1(rng, 300, 1500, 0.3), hrf_smoothed(rng, 300, 1500)):
        x = _detrended(hrf_smoothed(rng, 300, 1500), starts)
        y = _detrended(y, starts)
        result = couple(x, y, starts, TR, CouplingConfig(keep_matrix=True), removed=_drift(starts))
        assert abs(result.z.std() - 1) < 0.012, result.z.std()
        p = two_sided_p(np.diag(result.z))
        low, high = stats.binom.interval(0.99, len(p), 0.05)
        assert low <= (p < 0.05).sum() <= high
        X, _ = standardize(x, starts, "cpu")
        Y, _ = standardize(y, starts, "cpu")
        rx = lag_autocorrelation(X, starts, 15).double().numpy()
        ry = lag_autocorrelation(Y, starts, 15).double().numpy()
        D = np.clip(1 + 2 * rx.T @ ry, 1, 75)
        uncorrected = np.arctanh(np.clip(result.r, -R_MAX, R_MAX)) * np.sqrt((300 - 3) / D)
        assert uncorrected.std() > 1.02, uncorrected.std()


def test_residual_autocorrelation_correction_removes_the_detrending_bias():
    """White noise detrended (order 2) in runs of 60 TRs: the pooled sample autocorrelation is
    biased down (by about 3 / 57 at lag 1, measured -0.049 to -0.027 over lags 1-10: negative
    control); the corrected one is unbiased and the expected sum of squares is ``n - P``."""
    import torch

    from wav2brain.anchoring.significance import ResidualAutocorrelation, lag_autocorrelation

    starts = np.array([0, 60, 120, 180])
    rng = np.random.default_rng(6)
    y = _detrended(rng.standard_normal((180, 20000)), starts)
    Y, _ = standardize(y, starts, "cpu")
    raw = lag_autocorrelation(Y, starts, 10)
    residual = ResidualAutocorrelation.for_runs(starts, _drift(starts), 10)
    corrected, norm = residual.correct(raw)
    assert residual.dof == 180 - 9
    assert raw[0].mean() < -0.045 and (raw.mean(1) < -0.02).all()
    assert torch.abs(corrected.mean(1)).max() < 0.004
    assert abs(float(norm.mean()) - residual.dof) < 0.5
    # AR(1) 0.5: the corrected lag-1 estimate is nearer the coefficient (what is left, about
    # -0.02, is the O(1 / L) bias of a ratio of sums of one run of 60 TRs)
    phi = ar1(rng, 180, 20000, 0.5)
    raw = lag_autocorrelation(standardize(_detrended(phi, starts), starts, "cpu")[0], starts, 10)
    rho, _ = residual.correct(raw)
    assert abs(float(rho[0].mean()) - 0.5) < 0.03 < 0.5 - float(raw[0].mean()) - 0.03


def test_removed_regressors_are_checked():
    x = np.random.default_rng(7).standard_normal((100, 3))
    starts = [0, 50, 100]
    with pytest.raises(ValueError, match="removed has 1 entries but there are 2 runs"):
        couple(x, x, starts, TR, removed=[None])
    with pytest.raises(ValueError, match=r"removed\[1\] has shape \(40, 2\): expected \[50 TRs"):
        couple(x, x, starts, TR, removed=[None, np.zeros((40, 2))])
    bad = np.ones((50, 1))
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"removed\[0\] holds NaN"):
        couple(x, x, starts, TR, removed=[bad, None])
    with pytest.raises(ValueError, match="run 1 has 50 TRs and 48 regressors"):
        couple(x, x, starts, TR, removed=[None, np.random.default_rng(8).random((50, 47))])


def test_wide_blocks_summaries_equal_the_full_matrix(caplog):
    """Rows wide enough for the grouped top-k (with a tail of columns), several AN and target
    blocks: top-k, best AN per target and grid counts equal those of the full matrix; the
    grouped top-k equals ``topk``."""
    import torch

    from wav2brain.anchoring.coupling import row_topk

    rng = np.random.default_rng(9)
    x, y = hrf_smoothed(rng, 200, 70), rng.standard_normal((200, 3001))
    y[:, :300] += 0.3 * x[:, :1]  # some large |z|, several per AN row
    config = CouplingConfig(keep_matrix=True, top_k=5, ann_block=16, memory_budget_mb=0.9)
    with caplog.at_level(logging.INFO, logger="wav2brain.anchoring.coupling"):
        result = couple(x, y, [0, 100, 200], TR, config)
    assert "in blocks of 16 x 975 " in caplog.text  # 5 AN blocks x 4 target blocks (3 + 1)
    absz = np.abs(result.z)
    np.testing.assert_array_equal(
        np.sort(result.top_index, 1), np.sort(np.argsort(-absz, 1)[:, :5], 1)
    )
    np.testing.assert_array_equal(result.best_feature, np.argmax(absz, axis=0))
    np.testing.assert_allclose(result.best_z, result.z[result.best_feature, np.arange(3001)])
    np.testing.assert_allclose(
        result.best_r, result.r[result.best_feature, np.arange(3001)], atol=1e-6
    )
    bins = result.grid.bin_of(result.z)
    expected = np.stack([np.bincount(row[row >= 0], minlength=result.grid.n_bins) for row in bins])
    np.testing.assert_array_equal(result.counts, expected)
    values = torch.from_numpy(absz.astype(np.float32))
    for width in (3001, 2048, 100):
        got, where = row_topk(values[:, :width], 7)
        want, _ = values[:, :width].topk(7, dim=1)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(values[:, :width].gather(1, where), want)
