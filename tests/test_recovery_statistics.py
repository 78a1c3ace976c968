"""The statistics behind the SIMULATED recovery check: autocorrelation, Bartlett's effective n,
feature normalisation and the configuration (no simulation needed, milliseconds each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm

from wav2brain.metrics.autocorrelation import autocorrelation, effective_sample_size
from wav2brain.simulation.recovery import RecoveryConfig, normalize_like_bold


def _ar1(rng: np.random.Generator, n: int, width: int, phi: float) -> np.ndarray:
    """AR(1) columns of unit stationary variance."""
    noise = rng.standard_normal((n, width)) * np.sqrt(1 - phi**2)
    out = np.empty((n, width))
    out[0] = rng.standard_normal(width)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + noise[t]
    return out


def test_autocorrelation_of_ar1_and_lags_never_cross_runs():
    rng = np.random.default_rng(0)
    runs = [_ar1(rng, 4000, 3, 0.6), _ar1(rng, 3000, 3, 0.6)]
    rho = autocorrelation(runs, 3)
    np.testing.assert_allclose(rho[0], 1.0)
    expected = np.broadcast_to(0.6 ** np.arange(1, 4)[:, None], rho[1:].shape)
    np.testing.assert_allclose(rho[1:], expected, atol=0.04)
    # two runs, each a linear ramp: within a run neighbours agree; across the boundary the ramp
    # would jump from high to low, which a concatenated estimate would count
    ramp = np.linspace(-1, 1, 50)[:, None]
    split = autocorrelation([ramp, ramp], 1)[1, 0]
    whole = autocorrelation([np.concatenate([ramp, ramp])], 1)[1, 0]
    assert split == pytest.approx(autocorrelation([ramp], 1)[1, 0])
    assert whole < split
    assert autocorrelation([np.ones((10, 1))], 2)[:, 0].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("runs", "lag", "message"),
    [
        ([], 2, "at least one run"),
        ([np.zeros(10)], 2, "\\[TRs, columns\\] of one width"),
        ([np.zeros((10, 2)), np.zeros((10, 3))], 2, "\\[TRs, columns\\] of one width"),
        ([np.zeros((10, 2))], -1, "max_lag must be >= 0"),
    ],
)
def test_autocorrelation_refuses_bad_runs(runs, lag, message):
    with pytest.raises(ValueError, match=message):
        autocorrelation(runs, lag)


def test_a_constant_column_has_no_autocorrelation_despite_rounding():
    column = np.full((200, 1), 0.1) + np.tile([0.0, 1e-17], 100)[:, None]  # rounding residue
    assert np.ptp(column) > 0
    assert autocorrelation([column], 3)[:, 0].tolist() == [0.0] * 4


def test_bartlett_effective_n_of_two_ar1_series():
    """Independent AR(1) series of coefficients a and b: n_eff = n (1 - ab) / (1 + ab)."""
    rng = np.random.default_rng(1)
    n, a, b = 20000, 0.7, 0.5
    x, y = _ar1(rng, n, 4, a), _ar1(rng, n, 4, b)
    n_eff = effective_sample_size([x], [y], max_lag=30)
    np.testing.assert_allclose(n_eff, n * (1 - a * b) / (1 + a * b), rtol=0.05)
    white = effective_sample_size([rng.standard_normal((n, 2))], [y[:, :2]], max_lag=30)
    np.testing.assert_allclose(white, n, rtol=0.05)
    assert effective_sample_size([x], [y], max_lag=0).tolist() == [n] * 4
    with pytest.raises(ValueError, match="same runs"):
        effective_sample_size([x], [y[:-1]], max_lag=3)


def test_threshold_holds_its_level_only_with_the_effective_n():
    """Negative control of the correction: with the raw n, autocorrelated null pairs exceed a 5 %
    threshold far more often than 5 %; with Bartlett's n_eff they do not."""
    rng = np.random.default_rng(2)
    n, width, phi = 300, 2000, 0.8
    x, y = _ar1(rng, n, width, phi), _ar1(rng, n, width, phi)
    xc, yc = x - x.mean(0), y - y.mean(0)
    r = (xc * yc).sum(0) / np.sqrt((xc**2).sum(0) * (yc**2).sum(0))
    z = norm.ppf(0.95)
    naive = np.mean(np.arctanh(r) > z / np.sqrt(n - 3))
    n_eff = effective_sample_size([x], [y], max_lag=30)
    corrected = np.mean(np.arctanh(r) > z / np.sqrt(n_eff - 3))
    assert naive > 0.2
    assert 0.03 < corrected < 0.075


def test_normalize_like_bold_projects_out_the_basis_and_z_scores():
    rng = np.random.default_rng(3)
    n = 120
    grid = np.linspace(-1, 1, n)
    basis = np.stack([grid, 1.5 * grid**2 - 0.5], axis=1)
    values = rng.standard_normal((n, 3)) + 5 + 3 * basis[:, :1] - 2 * basis[:, 1:]
    values[:, 2] = 7.0
    out = normalize_like_bold(values, basis)
    np.testing.assert_allclose(out[:, :2].mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(out[:, :2].std(0), 1, atol=1e-10)
    np.testing.assert_allclose(basis.T @ out[:, :2], 0, atol=1e-8)
    assert not out[:, 2].any()
    np.testing.assert_allclose(normalize_like_bold(values[:, :1], None).std(0), 1, atol=1e-10)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("level", 0.0),
        ("level", 0.6),
        ("decision_level", 0.0),
        ("shifts_trs", ()),
        ("shifts_trs", (0.5, -1.0)),
        ("alphas", (0.0, 1.0)),
        ("inner_cv", 1),
        ("max_lag_s", 0.0),
        ("n_permutations", 0),
        ("null_tolerance", 1.0),
        ("max_noise_voxels", 0),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"RecoveryConfig.{field}"):
        RecoveryConfig(**{field: value})


def test_config_serialises():
    config = RecoveryConfig(shifts_trs=(0.5,), alphas=(1, 10))
    assert config.shifts_trs == (0.5,) and config.alphas == (1.0, 10.0)
    assert json.loads(json.dumps(config.__dict__))["alphas"] == [1.0, 10.0]
