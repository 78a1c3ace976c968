"""``RidgeCV``: a thin scikit-learn style estimator over :mod:`wav2brain.encoding.ridge`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from wav2brain.encoding.ridge import (
    CRITERIA,
    centred_gram,
    cross_validate_ridge,
    predict_ridge,
    ridge_factors,
    select_alphas,
    solve_ridge,
)
from wav2brain.encoding.scores import pearson_r
from wav2brain.encoding.splits import make_splits

#: Default alpha grid: 10 values from 1 to 1e6 (log-spaced), in units of the squared features.
DEFAULT_ALPHAS = tuple(np.logspace(0, 6, 10).tolist())


def _as_tensor(name: str, values, device=None) -> torch.Tensor:
    """Convert ``values`` to a float32 tensor on ``device`` (no copy when already so)."""
    if isinstance(values, torch.Tensor):
        tensor = values.to(device=device if device is not None else values.device)
        return tensor if tensor.is_floating_point() else tensor.float()
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return torch.as_tensor(array, dtype=torch.float32, device=device)


#: Elements checked at a time by :func:`_check_finite` (bounds its boolean temporary, bytes).
FINITE_CHECK_BLOCK = 2**20


def _check_finite(name: str, tensor: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Raise a ValueError naming ``name`` if ``tensor`` (its ``rows`` only) has NaN or inf values.

    Checked in blocks of columns of about :data:`FINITE_CHECK_BLOCK` elements, so a subject's
    whole BOLD is never mirrored by a boolean mask or copied.
    """
    width = tensor.shape[1] if tensor.ndim == 2 else 1
    step = max(1, FINITE_CHECK_BLOCK // max(len(tensor), 1))
    bad = 0
    for start in range(0, width, step):
        finite = torch.isfinite(tensor[..., start : start + step] if tensor.ndim == 2 else tensor)
        bad += int((~(finite if rows is None else finite[rows])).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean or mask them first")


class RidgeCV(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Ridge regression with one alpha per target, chosen by cross-validation over runs.

    The hyperparameters below are this estimator's configuration (scikit-learn convention:
    ``get_params``/``set_params`` and pipelines work).

    Parameters
    ----------
    alphas : sequence of float, each > 0
        Candidate regularisations (units of the squared, possibly standardised, features).
    cv : int, "groups", a scikit-learn splitter or (train, validation) pairs
        Folds; with ``groups`` in :meth:`fit` an int gives ``GroupKFold`` over whole runs,
        without them contiguous blocks of TRs (see :mod:`wav2brain.encoding.splits`).
    criterion : {"r2", "r", "neg_mse"}
        Held-out score, averaged over folds, that chooses each target's alpha. "r2" by default: it
        rewards both the shape and the scale of the prediction, unlike r, and unlike the summed
        squared error of "neg_mse" (himalaya's default) it weighs every fold equally whatever its
        variance. Pass himalaya ``score_func=r2_score`` to compare like with like.
    standardize : bool
        Scale each feature to unit variance (statistics of the data given to :meth:`fit`) before
        the ridge; ``coef_`` is returned in the units of the raw features either way.
    memory_budget_bytes : int
        Bound on the per-batch temporaries; targets are processed in batches that fit it.

    Attributes
    ----------
    best_alphas_ : [n_targets] chosen alpha per target.
    coef_ : [n_features, n_targets] (himalaya's layout; scikit-learn's ``Ridge.coef_`` is its
        transpose), weights on the raw features, refit on all data with each target's alpha.
    intercept_ : [n_targets].
    cv_scores_ : [n_targets] mean held-out ``criterion`` of the chosen alpha.
    cv_r_, cv_r2_ : [n_targets] mean held-out Pearson r and R² of the chosen alpha. The alpha was
        chosen on the same folds, so these are slightly optimistic; score on untouched runs (or
        nest, as :func:`wav2brain.encoding.layers.encode_layers` does) for unbiased numbers.
    n_features_in_ : int.

    Attributes are numpy arrays when ``X`` was a numpy array, else tensors on ``X``'s device.
    numpy inputs are computed in float32; tensors keep their floating dtype, and ``Y`` follows
    ``X``'s dtype and device (so a CUDA ``X`` runs everything on that GPU).
    """

    def __init__(
        self,
        alphas=DEFAULT_ALPHAS,
        cv=5,
        criterion: str = "r2",
        standardize: bool = False,
        memory_budget_bytes: int = 2**29,
    ) -> None:
        self.alphas = alphas
        self.cv = cv
        self.criterion = criterion
        self.standardize = standardize
        self.memory_budget_bytes = memory_budget_bytes

    def fit(self, X, Y, groups=None, rows=None) -> RidgeCV:
        """Choose per-target alphas by CV over ``groups`` and refit on all (selected) rows.

        Parameters
        ----------
        X : array or Tensor [n_samples (TRs), n_features]
        Y : array or Tensor [n_samples] or [n_samples, n_targets (voxels)]
        groups : array-like [n_samples], optional
            Run or story of each TR; folds never split a group.
        rows : array-like of int, optional
            Fit on these rows of ``X``, ``Y`` and ``groups`` only (default all), as if
            ``fit(X[rows], Y[rows], groups[rows])`` were called, but without copying ``Y``:
            its rows are gathered one batch of targets at a time. For a cross-validation over a
            subject's whole BOLD, where a copy of each fold's training rows would cost most of
            the BOLD again.
        """
        X_t, Y_t, rows_t, factors = self._select(X, Y, groups, rows)
        coef, intercept = solve_ridge(
            X_t, Y_t, self._best_alphas, self.memory_budget_bytes, factors=factors, rows=rows_t
        )
        self.coef_ = self._output(self._ravel(coef.div_(self.x_scale_[:, None])))
        self.intercept_ = self._output(self._ravel(intercept))
        self._finish()
        return self

    def fit_predict_batches(
        self, X, Y, X_new, groups=None, rows=None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Fit as :meth:`fit` does, without ``coef_``; return predictions for ``X_new`` in batches.

        The cross-validation runs (and ``best_alphas_``, ``cv_scores_``, ``cv_r_``, ``cv_r2_``
        are set) before this returns; the returned iterator then yields ``(targets, predictions
        [n_new, len(targets)])``, numpy int64 and float32 for numpy input, each target once.
        The weights ``[n_features, n_targets]`` are never formed
        (:func:`~wav2brain.encoding.ridge.predict_ridge`): with 768 features they alone are
        the size of 768 TRs of BOLD. Each batch is bounded by ``memory_budget_bytes``.
        """
        n_features = np.shape(X)[1] if np.ndim(X) == 2 else None
        X_new_t = _as_tensor(
            "X_new", X_new, device=X.device if isinstance(X, torch.Tensor) else None
        )
        if X_new_t.ndim != 2 or X_new_t.shape[1] != n_features:
            raise ValueError(
                f"X_new must be [n_samples, {n_features}] like the training features, "
                f"got {tuple(X_new_t.shape)}"
            )
        _check_finite("X_new", X_new_t)
        X_t, Y_t, rows_t, factors = self._select(X, Y, groups, rows)
        X_new_t = X_new_t.to(X_t.dtype)
        X_new_t = X_new_t / self.x_scale_ if self.standardize else X_new_t
        best_alphas = self._best_alphas
        self._finish()
        for stale in ("coef_", "intercept_"):  # of an earlier fit
            self.__dict__.pop(stale, None)
        batches = predict_ridge(
            X_t, Y_t, best_alphas, X_new_t, self.memory_budget_bytes, factors=factors, rows=rows_t
        )
        return ((self._output(t), self._output(p)) for t, p in batches)

    def _select(self, X, Y, groups, rows):
        """Validate, cross-validate and choose alphas; set the CV attributes.

        Returns the (standardised) training features, ``Y``, the row indices (or None) and the
        training features' :class:`RidgeFactors`.
        """
        rows_t = None
        if rows is not None:
            device = X.device if isinstance(X, torch.Tensor) else None
            rows_t = torch.as_tensor(rows, device=device)
            n_samples = len(X)
            if rows_t.ndim != 1 or rows_t.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"rows must be a 1-D array of row indices, got {rows!r}")
            if len(rows_t) and (int(rows_t.min()) < 0 or int(rows_t.max()) >= n_samples):
                raise ValueError(
                    f"rows must index the {n_samples} samples (0 .. {n_samples - 1}), got "
                    f"values from {int(rows_t.min())} to {int(rows_t.max())}"
                )
            rows_t = rows_t.long()
            if groups is not None:
                groups = np.asarray(groups)[rows_t.cpu().numpy()]
        X_t, Y_t, self._ravel_output = self._validate_xy(X, Y, rows_t)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        alphas = _as_tensor("alphas", np.atleast_1d(np.asarray(self.alphas, dtype=float)))
        if alphas.ndim != 1 or len(alphas) == 0 or not bool((alphas > 0).all()):
            raise ValueError(
                f"alphas must be a non-empty 1-D list of positive values, got {self.alphas!r}"
            )
        if not bool(torch.isfinite(alphas).all()):
            raise ValueError(f"alphas must be finite, got {self.alphas!r}")
        alphas = alphas.to(device=X_t.device, dtype=X_t.dtype)
        splits = make_splits(len(X_t), groups=groups, cv=self.cv)

        self.numpy_io_ = not isinstance(X, torch.Tensor)
        self.n_features_in_ = X_t.shape[1]
        self.x_scale_ = self._feature_scale(X_t)
        if self.standardize:
            X_t = X_t / self.x_scale_
        gram = centred_gram(X_t)
        dual_gram = gram if X_t.shape[0] <= X_t.shape[1] else None
        cv_result = cross_validate_ridge(
            X_t, Y_t, alphas, splits, self.memory_budget_bytes, gram=dual_gram, rows=rows_t
        )
        index, best = select_alphas(cv_result.criterion(self.criterion), alphas)
        self._best_alphas = alphas[index]
        factors = ridge_factors(X_t, gram=gram, alpha_min=float(self._best_alphas.min()))
        del gram, dual_gram
        chosen = index[None, None, :].expand(len(splits), 1, -1)
        attributes = {
            "best_alphas_": self._best_alphas,
            "cv_scores_": best,
            "cv_r_": torch.gather(cv_result.r, 1, chosen)[:, 0].mean(0),
            "cv_r2_": torch.gather(cv_result.r2, 1, chosen)[:, 0].mean(0),
        }
        for name, value in attributes.items():
            setattr(self, name, self._output(self._ravel(value)))
        return X_t, Y_t, rows_t, factors

    def _ravel(self, value: torch.Tensor) -> torch.Tensor:
        """A per-target attribute as the caller's Y was: 1-D Y gives scalars per attribute."""
        return value[..., 0] if self._ravel_output else value

    def _finish(self) -> None:
        """Convert ``x_scale_`` to the caller's kind and drop the fit's working state."""
        self.x_scale_ = self._output(self.x_scale_)
        del self._best_alphas, self._ravel_output

    def predict(self, X):
        """Predict [n_samples, n_targets] (or [n_samples] after a 1-D fit) for ``X``."""
        check_is_fitted(self, "coef_")
        coef = torch.as_tensor(self.coef_)
        X_t = _as_tensor("X", X, device=coef.device)
        if X_t.ndim != 2 or X_t.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must be [n_samples, {self.n_features_in_}] like the training features, "
                f"got {tuple(X_t.shape)}"
            )
        _check_finite("X", X_t)
        predictions = X_t @ coef + torch.as_tensor(self.intercept_)
        return predictions.cpu().numpy() if not isinstance(X, torch.Tensor) else predictions

    def score(self, X, Y):
        """Per-target Pearson r between ``predict(X)`` and ``Y`` (not scikit-learn's scalar R²)."""
        predictions = self.predict(X)
        if isinstance(predictions, torch.Tensor):
            Y = _as_tensor("Y", Y, device=predictions.device)
        if tuple(np.shape(Y)) != tuple(predictions.shape):
            raise ValueError(
                f"Y must have shape {tuple(predictions.shape)}, got {tuple(np.shape(Y))}"
            )
        return pearson_r(Y, predictions)

    def _validate_xy(
        self, X, Y, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Convert and check ``X`` and ``Y`` before any work; return tensors and a 1-D flag.

        With ``rows``, the returned ``X`` holds those rows only and ``Y`` all of them (its
        ``rows`` are checked).
        """
        X_t = _as_tensor("X", X)
        Y_t = _as_tensor("Y", Y, device=X_t.device).to(X_t.dtype)
        if X_t.ndim != 2:
            raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {tuple(X_t.shape)}")
        ravel = Y_t.ndim == 1
        Y_t = Y_t[:, None] if ravel else Y_t
        if Y_t.ndim != 2:
            raise ValueError(
                f"Y must be 1-D or 2-D [n_samples, n_targets], got shape {tuple(Y_t.shape)}"
            )
        if X_t.shape[0] != Y_t.shape[0]:
            raise ValueError(f"X has {X_t.shape[0]} samples (TRs) but Y has {Y_t.shape[0]}")
        if rows is not None:
            X_t = X_t[rows]
        if X_t.shape[0] < 3 or X_t.shape[1] == 0 or Y_t.shape[1] == 0:
            raise ValueError(
                f"need >= 3 samples, >= 1 feature and >= 1 target, "
                f"got X {tuple(X_t.shape)}, Y {tuple(Y_t.shape)}"
                + ("" if rows is None else f" ({len(rows)} rows selected)")
            )
        _check_finite("X", X_t)
        _check_finite("Y", Y_t, rows)
        return X_t, Y_t, ravel

    def _feature_scale(self, X: torch.Tensor) -> torch.Tensor:
        """Per-feature divisor: the standard deviation (1 where constant) or ones."""
        if not self.standardize:
            return torch.ones(X.shape[1], dtype=X.dtype, device=X.device)
        std = X.std(0, correction=0)
        return torch.where(std > 0, std, torch.ones_like(std))

    def _output(self, value: torch.Tensor):
        """Return a fitted attribute in the caller's kind (numpy array or tensor)."""
        return value.cpu().numpy() if self.numpy_io_ else value
