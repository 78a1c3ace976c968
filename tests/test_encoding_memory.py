"""Memory-bounded paths of encoding: ``RidgeCV.fit(rows=...)``, voxel-batched folds, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2brain.encoding import RidgeCV, estimators
from wav2brain.encoding.layers import EncodingConfig, encode
from wav2brain.encoding.ridge import solve_ridge

ALPHAS = (0.1, 10.0, 1000.0)


def make_data(n_samples: int = 120, n_features: int = 6, n_targets: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features)).astype(np.float32)
    W = rng.standard_normal((n_features, n_targets)) / np.sqrt(n_features)
    snr = np.logspace(-2, 0.5, n_targets)
    Y = (X @ W * snr + rng.standard_normal((n_samples, n_targets)) + 1.0).astype(np.float32)
    groups = np.repeat(np.arange(4), n_samples // 4)
    return X, Y, groups


@pytest.mark.parametrize("n_features", [6, 200])  # primal and dual side
def test_fit_on_rows_equals_fit_on_a_copy_of_those_rows(n_features):
    X, Y, groups = make_data(n_features=n_features)
    rows = np.flatnonzero(groups != 1)
    params = dict(alphas=ALPHAS, cv=3, standardize=True, memory_budget_bytes=2000)
    indexed = RidgeCV(**params).fit(X, Y, groups=groups, rows=rows)
    copied = RidgeCV(**params).fit(X[rows], Y[rows], groups=groups[rows])
    np.testing.assert_array_equal(indexed.best_alphas_, copied.best_alphas_)
    for name in ("coef_", "intercept_", "cv_scores_", "cv_r2_"):
        np.testing.assert_allclose(getattr(indexed, name), getattr(copied, name), atol=1e-6)
    # negative control: other rows give other weights
    other = RidgeCV(**params).fit(X, Y, groups=groups, rows=np.flatnonzero(groups != 2))
    assert not np.allclose(other.coef_, copied.coef_, atol=1e-4)


def test_solve_ridge_rows_equals_the_selected_rows():
    X, Y, _ = make_data()
    rows = torch.arange(10, 100)
    X_t, Y_t = torch.as_tensor(X), torch.as_tensor(Y)
    alphas = torch.full((Y.shape[1],), 10.0)
    coef, intercept = solve_ridge(X_t[rows], Y_t, alphas, memory_budget_bytes=1, rows=rows)
    expected, expected_intercept = solve_ridge(X_t[rows], Y_t[rows], alphas)
    torch.testing.assert_close(coef, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(intercept, expected_intercept, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "rows, message",
    [
        (np.array([0, 1, 2, 500]), "rows must index the 120 samples"),
        (np.array([-1, 1, 2, 3]), "rows must index"),
        (np.array([0.0, 1.0, 2.0]), "rows must be a 1-D array of row indices"),
        (np.array([[0, 1, 2]]), "rows must be a 1-D array"),
        (np.array([0, 1]), "need >= 3 samples"),
    ],
)
def test_bad_rows_are_refused(rows, message):
    X, Y, groups = make_data()
    with pytest.raises(ValueError, match=message):
        RidgeCV(alphas=ALPHAS, cv=3).fit(X, Y, rows=rows)


def test_finite_check_covers_the_selected_rows_only(monkeypatch):
    monkeypatch.setattr(estimators, "FINITE_CHECK_BLOCK", 7)  # many column blocks
    X, Y, groups = make_data()
    Y[5, 33] = np.nan
    with pytest.raises(ValueError, match="Y contains 1 NaN"):
        RidgeCV(alphas=ALPHAS, cv=3).fit(X, Y, groups=groups, rows=np.arange(120))
    # a bad value in a row that is not fitted is not the fit's business
    RidgeCV(alphas=ALPHAS, cv=3).fit(X, Y, groups=groups, rows=np.arange(30, 120))
    with pytest.raises(ValueError, match="Y contains 1 NaN"):
        RidgeCV(alphas=ALPHAS, cv=3).fit(X, Y, groups=groups)


def test_encode_in_small_voxel_batches_equals_one_batch():
    X, Y, groups = make_data(n_targets=50)
    one = EncodingConfig(alphas=ALPHAS, inner_cv=2)
    tiny = EncodingConfig(
        alphas=ALPHAS, inner_cv=2, memory_budget_bytes=3000, min_memory_budget_bytes=1
    )
    assert tiny.budget_bytes(Y.nbytes) == 3000  # batches of a few voxels
    expected, batched = encode(X, Y, groups, one), encode(X, Y, groups, tiny)
    for name in ("r", "r2", "alpha"):
        np.testing.assert_allclose(getattr(batched, name), getattr(expected, name), atol=5e-6)
    # negative control: scores of other data differ
    shuffled = encode(X, Y[::-1].copy(), groups, tiny)
    assert not np.allclose(shuffled.r, expected.r, atol=1e-3)


def test_budget_is_relative_to_the_data_and_bounded():
    config = EncodingConfig(memory_budget_fraction=0.25)
    assert config.budget_bytes(400 * 2**20) == 100 * 2**20
    assert config.budget_bytes(1000) == config.min_memory_budget_bytes
    assert config.budget_bytes(2**40) == config.memory_budget_bytes


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(memory_budget_fraction=0.0), "memory_budget_fraction must be a positive"),
        (dict(memory_budget_fraction=float("nan")), "memory_budget_fraction"),
        (dict(memory_budget_fraction=float("inf")), "memory_budget_fraction"),
        (dict(memory_budget_bytes=0), "memory budgets must be >= 1 byte"),
        (dict(min_memory_budget_bytes=0), "memory budgets must be >= 1 byte"),
    ],
)
def test_bad_budgets_are_refused_before_fitting(change, message):
    X, Y, groups = make_data()
    with pytest.raises(ValueError, match=message):
        encode(X, Y, groups, EncodingConfig(alphas=ALPHAS, **change))


@pytest.mark.parametrize("n_features", [6, 200])  # primal and dual side
def test_fit_predict_batches_equals_fit_then_predict(n_features):
    X, Y, groups = make_data(n_features=n_features)
    train, test = np.flatnonzero(groups != 0), np.flatnonzero(groups == 0)
    params = dict(alphas=ALPHAS, cv=3, standardize=True, memory_budget_bytes=5000)
    fitted = RidgeCV(**params).fit(X, Y, groups=groups, rows=train)
    expected = fitted.predict(X[test])
    model = RidgeCV(**params).fit(X, Y, groups=groups)  # its coef_ must not survive
    batches = list(model.fit_predict_batches(X, Y, X[test], groups=groups, rows=train))
    assert not hasattr(model, "coef_")
    np.testing.assert_array_equal(model.best_alphas_, fitted.best_alphas_)
    assert len(batches) > 1
    voxels = np.concatenate([v for v, _ in batches])
    np.testing.assert_array_equal(np.sort(voxels), np.arange(Y.shape[1]))  # each target once
    predictions = np.empty_like(expected)
    for v, p in batches:
        predictions[:, v] = p
    np.testing.assert_allclose(predictions, expected, atol=2e-5, rtol=1e-4)
    # negative control: predictions for other rows differ
    assert not np.allclose(fitted.predict(X[train[: len(test)]]), expected, atol=1e-3)


def test_fit_predict_batches_refuses_bad_new_features():
    X, Y, groups = make_data()
    with pytest.raises(ValueError, match=r"X_new must be \[n_samples, 6\]"):
        RidgeCV(alphas=ALPHAS, cv=3).fit_predict_batches(X, Y, X[:, :3], groups=groups)
    bad = X[:5].copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="X_new contains 1 NaN or infinite"):
        RidgeCV(alphas=ALPHAS, cv=3).fit_predict_batches(X, Y, bad, groups=groups)
