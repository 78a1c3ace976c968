"""``RidgeCV`` against himalaya's ``RidgeCV`` (oracle), its scikit-learn behaviour and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from himalaya.backend import set_backend
from himalaya.ridge import RidgeCV as HimalayaRidgeCV
from himalaya.scoring import correlation_score, l2_neg_loss
from himalaya.scoring import r2_score as himalaya_r2
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from wav2brain.encoding import RidgeCV, make_splits, pearson_r
from wav2brain.encoding.layers import (
    EncodingConfig,
    encode,
    encode_layers,
    layer_profile,
    roi_labels_from_image,
    roi_mean_scores,
)

ALPHAS = np.logspace(-1, 5, 10)


def make_data(n_samples: int, n_features: int, n_targets: int, seed: int = 0):
    """X [n, p], Y [n, V] float32 with a per-target SNR spanning noise-only to well predicted."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features)).astype(np.float32)
    W = rng.standard_normal((n_features, n_targets)) / np.sqrt(n_features)
    snr = np.logspace(-2, 0.5, n_targets)
    Y = (X @ W * snr + rng.standard_normal((n_samples, n_targets)) + 1.0).astype(np.float32)
    groups = np.repeat(np.arange(5), n_samples // 5)
    return X, Y, groups


@pytest.mark.parametrize(
    ("criterion", "score_func"),
    [("r2", himalaya_r2), ("neg_mse", l2_neg_loss), ("r", correlation_score)],
)
@pytest.mark.parametrize(("n_samples", "n_features"), [(300, 40), (200, 260)])
def test_matches_himalaya_on_same_splits(criterion, score_func, n_samples, n_features):
    X, Y, groups = make_data(n_samples, n_features, 400)
    splits = make_splits(n_samples, groups, cv=5)
    ours = RidgeCV(alphas=ALPHAS, cv=splits, criterion=criterion).fit(X, Y)
    set_backend("numpy")
    oracle = HimalayaRidgeCV(
        alphas=ALPHAS,
        cv=splits,
        fit_intercept=True,
        solver_params={"score_func": score_func, "warn": False},
    ).fit(X.astype(np.float64), Y.astype(np.float64))
    same = np.isclose(ours.best_alphas_, oracle.best_alphas_)
    assert same.mean() >= 0.999
    assert len(np.unique(ours.best_alphas_)) >= 3  # the grid is really searched
    scale = 1.0 if criterion != "neg_mse" else np.abs(oracle.cv_scores_).max()
    np.testing.assert_allclose(ours.cv_scores_, oracle.cv_scores_, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.coef_, oracle.coef_, atol=1e-4 * np.abs(oracle.coef_).max())
    np.testing.assert_allclose(ours.intercept_, oracle.intercept_, atol=1e-4)


def test_groups_argument_gives_group_kfold():
    X, Y, groups = make_data(200, 20, 30, seed=1)
    with_groups = RidgeCV(alphas=ALPHAS, cv=5).fit(X, Y, groups=groups)
    explicit = RidgeCV(alphas=ALPHAS, cv=make_splits(200, groups, 5)).fit(X, Y)
    np.testing.assert_array_equal(with_groups.best_alphas_, explicit.best_alphas_)
    np.testing.assert_allclose(with_groups.cv_r_, explicit.cv_r_)


def test_numpy_in_numpy_out_and_tensor_in_tensor_out():
    X, Y, groups = make_data(150, 10, 12, seed=2)
    model = RidgeCV(alphas=ALPHAS).fit(X, Y, groups)
    assert isinstance(model.coef_, np.ndarray) and model.coef_.shape == (10, 12)
    assert isinstance(model.best_alphas_, np.ndarray) and model.best_alphas_.shape == (12,)
    assert isinstance(model.predict(X), np.ndarray)
    scores = model.score(X, Y)
    assert isinstance(scores, np.ndarray) and scores.shape == (12,)
    np.testing.assert_allclose(scores, pearson_r(Y, model.predict(X)), atol=1e-6)
    tensor_model = RidgeCV(alphas=ALPHAS).fit(torch.from_numpy(X), torch.from_numpy(Y), groups)
    assert isinstance(tensor_model.coef_, torch.Tensor)
    assert isinstance(tensor_model.predict(torch.from_numpy(X)), torch.Tensor)
    assert isinstance(tensor_model.score(torch.from_numpy(X), torch.from_numpy(Y)), torch.Tensor)
    np.testing.assert_allclose(tensor_model.coef_.numpy(), model.coef_, atol=1e-6)


def test_held_out_scores_are_high_for_signal_and_near_zero_for_noise():
    X, Y, groups = make_data(500, 10, 50, seed=3)
    Y[:, :10] = np.random.default_rng(9).standard_normal((500, 10))
    model = RidgeCV(alphas=ALPHAS).fit(X, Y, groups)
    assert np.all(model.cv_r_[-5:] > 0.8)
    assert np.abs(model.cv_r_[:10]).max() < 0.2


def test_one_dimensional_target():
    X, Y, groups = make_data(100, 5, 1, seed=4)
    model = RidgeCV(alphas=ALPHAS).fit(X, Y[:, 0], groups)
    assert model.coef_.shape == (5,) and np.ndim(model.best_alphas_) == 0
    assert model.predict(X).shape == (100,)
    assert np.ndim(model.score(X, Y[:, 0])) == 0


def test_standardize_equals_fitting_on_scaled_features():
    X, Y, groups = make_data(150, 8, 10, seed=5)
    X = X * np.logspace(-2, 2, 8).astype(np.float32)
    model = RidgeCV(alphas=ALPHAS, standardize=True).fit(X, Y, groups)
    scaled = (X - X.mean(0)) / X.std(0)
    reference = RidgeCV(alphas=ALPHAS).fit(scaled, Y, groups)
    np.testing.assert_array_equal(model.best_alphas_, reference.best_alphas_)
    np.testing.assert_allclose(model.predict(X), reference.predict(scaled), atol=1e-4)


def test_sklearn_params_clone_and_pipeline():
    X, Y, groups = make_data(150, 8, 6, seed=6)
    model = RidgeCV(alphas=ALPHAS, cv=3, criterion="r")
    assert model.get_params()["criterion"] == "r"
    copy = clone(model).set_params(cv=5)
    assert copy.cv == 5 and model.cv == 3
    pipeline = make_pipeline(StandardScaler(), copy).fit(X, Y, ridgecv__groups=groups)
    assert pipeline.predict(X).shape == (150, 6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda X, Y, g: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), Y, g),
            "X contains 1 NaN",
        ),
        (
            lambda X, Y, g: (X, np.where(np.arange(Y.size).reshape(Y.shape) < 3, np.inf, Y), g),
            "Y contains 3 NaN",
        ),
        (lambda X, Y, g: (X, Y[:-1], g), "X has 60 samples"),
        (lambda X, Y, g: (X[:, :, None], Y, g), "X must be 2-D"),
        (lambda X, Y, g: (X, Y[:, :, None], g), "Y must be 1-D or 2-D"),
        (lambda X, Y, g: (X, Y, np.repeat([0, 1], 30)), "needs at least 5 groups, got 2"),
        (lambda X, Y, g: (X, Y, g[:-1]), "one entry per sample"),
        (lambda X, Y, g: (X.astype(str), Y, g), "X must be numeric"),
    ],
)
def test_bad_fit_input_is_refused(change, message):
    X, Y, groups = make_data(60, 4, 3, seed=7)
    with pytest.raises(ValueError, match=message):
        RidgeCV(alphas=ALPHAS).fit(*change(X, Y, groups))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alphas": [1.0, 0.0]}, "positive"),
        ({"alphas": []}, "non-empty"),
        ({"alphas": [1.0, np.inf]}, "finite"),
        ({"criterion": "accuracy"}, "criterion must be one of"),
    ],
)
def test_bad_hyperparameters_are_refused(params, message):
    X, Y, groups = make_data(60, 4, 3, seed=8)
    with pytest.raises(ValueError, match=message):
        RidgeCV(**{"alphas": ALPHAS, **params}).fit(X, Y, groups)


def test_bad_predict_input_is_refused():
    X, Y, groups = make_data(60, 4, 3, seed=9)
    model = RidgeCV(alphas=ALPHAS).fit(X, Y, groups)
    with pytest.raises(ValueError, match=r"X must be \[n_samples, 4\]"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="X contains"):
        model.predict(np.full_like(X, np.nan))
    with pytest.raises(ValueError, match="Y must have shape"):
        model.score(X, Y[:, :2])


def test_encode_layers_and_layer_profile():
    X, Y, groups = make_data(200, 6, 8, seed=10)
    rng = np.random.default_rng(11)
    features = {"layer_01": rng.standard_normal((200, 6)).astype(np.float32), "layer_02": X}
    done = []
    results = encode_layers(
        features, Y, groups, EncodingConfig(alphas=(1.0, 100.0)), progress=done.append
    )
    assert done == ["layer_01", "layer_02"]
    scores = np.stack([results[name].r for name in features])
    assert scores.shape == (2, 8) and np.all(scores[1, -3:] > scores[0, -3:])
    best, preferred = layer_profile(scores, layer_numbers=[1, 2])
    assert np.all(best[-3:] == 2)
    assert np.all(
        (preferred[np.isfinite(preferred)] >= 1) & (preferred[np.isfinite(preferred)] <= 2)
    )
    with pytest.raises(ValueError, match="must be \\[200 TRs, units\\]"):
        encode_layers({"bad": X[:10]}, Y, groups)
    with pytest.raises(ValueError, match="at least 2 runs"):
        encode(X, Y, np.zeros(200))


def test_layer_profile_weighting_and_rois():
    scores = np.array(
        [[0.1, -0.2, np.nan, 0.0], [0.3, -0.1, np.nan, 0.2], [0.0, -0.3, np.nan, 0.2]]
    )
    best, preferred = layer_profile(scores)
    np.testing.assert_array_equal(best[:2], [1, 1])
    assert np.isnan(best[2])
    np.testing.assert_allclose(preferred[[0, 3]], [0.75, 1.5])
    assert np.isnan(preferred[1]) and np.isnan(preferred[2])
    rois, means = roi_mean_scores(scores, np.array([1, 0, 2, 1]))
    assert rois.tolist() == [1, 2]
    np.testing.assert_allclose(means[:, 0], [0.05, 0.25, 0.1])
    with pytest.raises(ValueError, match="labels must be"):
        roi_mean_scores(scores, np.array([1, 2]))
    with pytest.raises(ValueError, match="layer_numbers must have 3"):
        layer_profile(scores, [1, 2])


def test_roi_labels_from_a_label_image():
    import nibabel as nib

    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[1, :, :] = 5
    labels[2, :, :] = 7
    affine = np.eye(4)
    result = roi_labels_from_image(nib.Nifti1Image(labels, affine), nib.Nifti1Image(mask, affine))
    assert result.tolist() == [5, 5, 5, 5, 7, 7, 7, 7]


def test_float64_tensors_and_mixed_kinds():
    X, Y, groups = make_data(100, 5, 4, seed=12)
    model = RidgeCV(alphas=ALPHAS).fit(torch.from_numpy(X).double(), Y, groups)
    assert model.coef_.dtype == torch.float64 and model.best_alphas_.dtype == torch.float64
    reference = RidgeCV(alphas=ALPHAS).fit(X, Y, groups)
    np.testing.assert_allclose(model.coef_.numpy(), reference.coef_, atol=1e-4)
