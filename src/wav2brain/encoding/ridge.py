"""Ridge regression solvers: plain functions over torch tensors, batched over targets (voxels).

Every solver works on the device and in the float dtype of its inputs (float32 on a GPU runs
unchanged). The model of each target ``v`` is ``y_v = (x - x_mean) @ w_v + y_mean_v``: X and Y are
centred with the means of the training rows, which is the intercept (the intercept itself is never
penalised), exactly as ``himalaya`` with ``fit_intercept=True`` and scikit-learn's ``Ridge`` do.

Decomposition
-------------
The centred training features ``X = U diag(s) V^T`` enter ridge only through ``U``, ``s**2`` and
``V``, and every alpha shares them. Instead of a float32 ``torch.linalg.svd`` (19 s for a
2400 x 3072 split on a 2-core CPU), the solver diagonalises the smaller Gram matrix in float64
(``X X^T`` when there are fewer samples than features, else ``X^T X``; 1.5 to 6 s for the same
split, see :data:`EIGH_THREADS`). That *is* the SVD's ``U`` (or ``V``) and ``s**2``: in double
precision the eigenvalues carry an error of about ``1e-16 s_max**2``, i.e. ``1e-8 s_max`` on the
singular values, below a float32 SVD's ``1e-7 s_max``. ``V`` (or ``U``) is never formed, so no
division by small singular values occurs. Components whose eigenvalue is below ``1e-12`` times
the largest are dropped: they are the null space of the centred features (centring removes one
dimension) and contribute nothing. With ``w_alpha = 1 / (s**2 + alpha)`` the weights for any
alpha are::

    W_alpha = left @ diag(w_alpha) @ right @ Y

with ``left = X^T U`` and ``right = U^T`` (dual side) or ``left = V`` and ``right = V^T X^T``
(primal side). Predictions on held-out rows use ``X_test @ left`` in place of ``left``.

Each product ``left' @ diag(w) @ right @ Y`` is evaluated in the cheaper of two exact orders
(see :func:`_cheaper_plan`): form the operator ``left' diag(w) right`` once and multiply ``Y`` by
it, or project ``Y`` first (``right @ Y``) and multiply by ``left' diag(w)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from wav2brain.encoding.scores import prediction_scores

#: Components with an eigenvalue below this fraction of the largest are treated as exact zeros.
NULL_SPACE_TOLERANCE = 1e-12

#: Threads of the CPU eigendecomposition (None: torch's setting). MKL's tridiagonal reduction
#: synchronises its threads once per column; on a loaded 2-core machine a 2400 x 2400 float64
#: ``eigh`` took 20-58 s on 2 threads against 6 s on one (1.5 s on 2 idle threads). Matrix
#: products keep every thread.
EIGH_THREADS: int | None = 1

#: Names of the criteria that can select alphas, all "higher is better".
CRITERIA = ("r2", "r", "neg_mse")


@dataclass
class RidgeFactors:
    """The alpha-independent factors of ridge on one (centred) training set.

    ``W_alpha = left @ diag(1 / (eigenvalues + alpha)) @ right @ Y``.

    Attributes
    ----------
    left : Tensor [n_features, rank], dtype of X
    eigenvalues : Tensor [rank] float64, the squared singular values of the centred features.
    right : Tensor [rank, n_samples], dtype of X
    x_mean : Tensor [n_features] of the input dtype, the training mean of X (intercept).
    """

    left: torch.Tensor
    eigenvalues: torch.Tensor
    right: torch.Tensor
    x_mean: torch.Tensor

    def weights(self, alphas: torch.Tensor) -> torch.Tensor:
        """Return ``1 / (eigenvalues + alpha)`` as a float64 tensor [n_alphas, rank]."""
        return 1.0 / (self.eigenvalues[None, :] + alphas.to(self.eigenvalues)[:, None])


@dataclass
class CVResult:
    """Cross-validation scores of every alpha on every split, per target.

    Attributes
    ----------
    r2, r, neg_mse : Tensor [n_splits, n_alphas, n_targets] float32
        Held-out R², Pearson r and negative mean squared error (units of Y squared).
    """

    r2: torch.Tensor
    r: torch.Tensor
    neg_mse: torch.Tensor

    def criterion(self, name: str) -> torch.Tensor:
        """Return the scores named by ``name`` (one of :data:`CRITERIA`)."""
        if name not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {name!r}")
        return getattr(self, name)


@contextmanager
def _eigh_threads(device: torch.device) -> Iterator[None]:
    """Run a CPU eigendecomposition on :data:`EIGH_THREADS` threads, then restore the count."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and EIGH_THREADS is not None:
        torch.set_num_threads(EIGH_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ridge_factors(X: torch.Tensor) -> RidgeFactors:
    """Centre ``X`` [n_samples, n_features] and return its :class:`RidgeFactors`.

    The Gram matrix of the smaller side is built and diagonalised in float64 (see the module
    docstring); the eigenvalues stay float64, the factors (plain projections, no cancellation)
    are formed in the dtype of ``X``.
    """
    x_mean = X.mean(0)
    Xc = X - x_mean
    wide = Xc.to(torch.float64)
    n_samples, n_features = Xc.shape
    dual = n_samples <= n_features
    gram = wide @ wide.T if dual else wide.T @ wide
    del wide
    with _eigh_threads(gram.device):
        eigenvalues, vectors = torch.linalg.eigh(gram)
    keep = eigenvalues > NULL_SPACE_TOLERANCE * eigenvalues[-1].clamp_min(0)
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep].to(X.dtype)
    if dual:
        left, right = Xc.T @ vectors, vectors.T
    else:
        left, right = vectors, vectors.T @ Xc.T
    return RidgeFactors(left=left, eigenvalues=eigenvalues, right=right, x_mean=x_mean)


def _cheaper_plan(
    left: torch.Tensor, right: torch.Tensor, n_targets: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose the cheaper exact order for ``left @ right @ Y`` with ``n_targets`` columns in Y.

    Returns ``(operator, projection)``: multiply ``operator @ (projection @ Y)`` when
    ``projection`` is not None, else ``operator @ Y``. Counts are multiply-adds:
    forming costs ``m k n + m n V``; projecting costs ``k n V + m k V``.
    """
    m, k = left.shape
    n = right.shape[1]
    formed_cost = m * k * n + m * n * n_targets
    projected_cost = k * n * n_targets + m * k * n_targets
    if formed_cost <= projected_cost:
        return left @ right, None
    return left, right


def _apply(plan: tuple[torch.Tensor, torch.Tensor | None], Y: torch.Tensor) -> torch.Tensor:
    """Apply a plan from :func:`_cheaper_plan` to the columns of ``Y``."""
    operator, projection = plan
    return operator @ (Y if projection is None else projection @ Y)


def target_batch_size(bytes_per_target: int, memory_budget_bytes: int, n_targets: int) -> int:
    """Return how many targets fit into ``memory_budget_bytes`` (at least 1, at most all)."""
    return int(min(n_targets, max(1, memory_budget_bytes // max(bytes_per_target, 1))))


def solve_ridge(
    X: torch.Tensor,
    Y: torch.Tensor,
    alphas: torch.Tensor | float,
    memory_budget_bytes: int = 2**29,
    factors: RidgeFactors | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ridge with one alpha per target; targets sharing an alpha are solved together.

    Parameters
    ----------
    X : Tensor [n_samples, n_features]
    Y : Tensor [n_samples, n_targets]
    alphas : float or Tensor [n_targets]
        Regularisation of each target (> 0).
    memory_budget_bytes : int
        Bound on the temporaries of one batch of targets.
    factors : RidgeFactors, optional
        Precomputed :func:`ridge_factors` of ``X``.

    Returns
    -------
    coef : Tensor [n_features, n_targets]
        Weights on the centred features, in the dtype and on the device of ``X``.
    intercept : Tensor [n_targets]
        ``y_mean - x_mean @ coef``, so that predictions are ``X @ coef + intercept``.
    """
    factors = ridge_factors(X) if factors is None else factors
    n_samples, n_targets = Y.shape
    per_target = torch.as_tensor(alphas, dtype=torch.float64, device=X.device)
    per_target = per_target.expand(n_targets) if per_target.ndim == 0 else per_target
    y_mean = Y.mean(0)
    coef = torch.empty(X.shape[1], n_targets, dtype=X.dtype, device=X.device)
    unique_alphas, inverse = torch.unique(per_target, return_inverse=True)
    batch = target_batch_size(4 * (2 * n_samples + 2 * X.shape[1]), memory_budget_bytes, n_targets)
    for index, alpha in enumerate(unique_alphas):
        columns = torch.nonzero(inverse == index).flatten()
        scaled_left = factors.left * factors.weights(alpha[None])[0].to(X.dtype)
        plan = _cheaper_plan(scaled_left, factors.right, len(columns))
        for start in range(0, len(columns), batch):
            chunk = columns[start : start + batch]
            coef[:, chunk] = _apply(plan, Y[:, chunk] - y_mean[chunk])
    intercept = y_mean - factors.x_mean @ coef
    return coef, intercept


def cross_validate_ridge(
    X: torch.Tensor,
    Y: torch.Tensor,
    alphas: torch.Tensor,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    memory_budget_bytes: int = 2**29,
) -> CVResult:
    """Score every alpha on every split, per target, reusing one decomposition per split.

    For each split the training rows are decomposed once (:func:`ridge_factors`); the held-out
    predictions of all alphas for a batch of targets come from one matrix product
    ``[n_alphas * n_val, n_train or rank] @ [.., batch]``, and are reduced to scores at once, so
    ``n_alphas x n_val x batch`` (bounded by ``memory_budget_bytes``) is the largest temporary.

    Parameters
    ----------
    X : Tensor [n_samples, n_features]
    Y : Tensor [n_samples, n_targets]
    alphas : Tensor [n_alphas], each > 0
    splits : sequence of (train indices, validation indices)
        Row indices (TRs); see :mod:`wav2brain.encoding.splits`.
    memory_budget_bytes : int
        Bound on the prediction temporaries of one target batch.

    Returns
    -------
    CVResult with tensors [n_splits, n_alphas, n_targets].
    """
    n_targets = Y.shape[1]
    n_alphas = len(alphas)
    shape = (len(splits), n_alphas, n_targets)
    result = CVResult(*(torch.empty(shape, dtype=Y.dtype, device=Y.device) for _ in range(3)))
    for split_index, (train, val) in enumerate(splits):
        train_t = torch.as_tensor(train, device=X.device)
        val_t = torch.as_tensor(val, device=X.device)
        factors = ridge_factors(X[train_t])
        val_features = (X[val_t] - factors.x_mean) @ factors.left
        weights = factors.weights(alphas).to(X.dtype)
        stacked = (val_features[None] * weights[:, None, :]).reshape(n_alphas * len(val), -1)
        plan = _cheaper_plan(stacked, factors.right, n_targets)
        batch = target_batch_size(
            4 * (3 * n_alphas * len(val) + len(train) + len(val)), memory_budget_bytes, n_targets
        )
        for start in range(0, n_targets, batch):
            columns = slice(start, start + batch)
            y_train = Y[train_t, columns]
            y_train_mean = y_train.mean(0)
            predictions = _apply(plan, y_train - y_train_mean).reshape(n_alphas, len(val), -1)
            scores = prediction_scores(predictions, Y[val_t, columns] - y_train_mean)
            result.r2[split_index, :, columns] = scores.r2
            result.r[split_index, :, columns] = scores.r
            result.neg_mse[split_index, :, columns] = scores.neg_mse
    return result


def select_alphas(scores: torch.Tensor, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each target's alpha from CV scores [n_splits, n_alphas, n_targets] (higher is better).

    Scores are averaged over splits in float64; ties (within ``1e-10 * log(alpha)``) go to the
    larger alpha. This is himalaya's rule, so both select the same alpha on the same scores.

    Returns
    -------
    index : LongTensor [n_targets], the position of the chosen alpha in ``alphas``.
    mean_score : Tensor [n_targets], the mean score of the chosen alpha.
    """
    mean = scores.to(torch.float64).mean(0)
    tie_break = torch.log(alphas.to(mean))[:, None] * 1e-10
    index = torch.argmax(mean + tie_break, dim=0)
    best = torch.gather(mean, 0, index[None])[0]
    return index, best.to(scores.dtype)
