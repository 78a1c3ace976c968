"""Ridge regression solvers: plain functions over torch tensors, batched over targets (voxels).

Every solver works on the device and in the float dtype of its inputs (float32 on a GPU runs
unchanged). The model of each target ``v`` is ``y_v = (x - x_mean) @ w_v + y_mean_v``: X and Y are
centred with the means of the training rows, which is the intercept (the intercept itself is never
penalised), exactly as ``himalaya`` with ``fit_intercept=True`` and scikit-learn's ``Ridge`` do.

Decomposition
-------------
The centred training features ``X = U diag(s) V^T`` enter ridge only through ``U``, ``s**2`` and
``V``, and every alpha shares them. Instead of a float32 ``torch.linalg.svd`` (19 s for a
2400 x 3072 split on a 2-core CPU), the solver diagonalises the smaller Gram matrix (``X X^T``
when there are fewer samples than features, else ``X^T X``), formed in float64. That *is* the
SVD's ``U`` (or ``V``) and ``s**2``; ``V`` (or ``U``) is never formed, so no division by small
singular values occurs. Components whose eigenvalue is below ``1e-12`` times the largest are
dropped: they are the null space of the centred features (centring removes one dimension) and
contribute nothing. With ``w_alpha = 1 / (s**2 + alpha)`` the weights for any alpha are::

    W_alpha = left @ diag(w_alpha) @ right @ Y

with ``left = X^T U`` and ``right = U^T`` (dual side) or ``left = V`` and ``right = V^T X^T``
(primal side). Predictions on held-out rows use ``X_test @ left`` in place of ``left``.

Each product ``left' @ diag(w) @ right @ Y`` is evaluated in the cheaper of two exact orders
(see :func:`_cheaper_plan`): form the operator ``left' diag(w) right`` once and multiply ``Y`` by
it, or project ``Y`` first (``right @ Y``) and multiply by ``left' diag(w)``.

Precision of the decomposition
------------------------------
A backward-stable ``eigh`` in precision ``eps`` returns the exact decomposition of ``K + E``
with ``||E||`` about ``eps ||K||``, so every ridge solution it gives is that of a Gram matrix
perturbed by ``eps lambda_max``: its relative error is at most about ``eps * kappa`` with
``kappa = (lambda_max + alpha_min) / alpha_min``, the condition number of ``K + alpha_min I``
at worst. For float32 ``X`` the Gram matrix is therefore diagonalised in float32 first (2 threads:
0.56 s for 2400 x 2400, against 2.3 s for float64 on its best single thread) and the result is
kept when ``eps32 * kappa <= FLOAT32_EIGH_TOLERANCE`` (1e-3), else the float64 decomposition is
computed (the float32 attempt then costs a fifth more). Measured: at ``eps32 * kappa`` up to
5e-3 (Gaussian features, ``alpha_min`` 0.1 to 10) float32 and float64 fits chose the same alpha
for every target, with coefficients within 3e-6 of each other relative to their scale; on
features whose scales span 2.5 decades at ``alpha_min`` 0.1 (``eps32 * kappa`` 18 to 35) float32
was off by 2e-3 to 3e-2, so those get float64 (tested against scikit-learn). The smallest alpha
is what matters because it is the least regularised system any target may be given.

Cross-validation
----------------
Per split, the held-out predictions of every alpha are ``Q diag(w_alpha) right (Y_train - mean)``
with ``Q`` [n_val, rank] the centred held-out features in the eigenbasis. With fewer training
rows than features (dual side) the Gram matrix of all rows, about the global feature mean, is
formed once in float64 and each split's centred training Gram and held-out cross-Gram are cut
from it by exact double centring (``K - row means - column means + grand mean``; centring on the
global mean first only keeps large feature means out of the float64 sums); ``X^T U`` is never
formed during CV. The Gram matrices, ``Q`` and the QR below are float64, the eigendecompositions
float32 or float64 (see above); the products with Y, which carry nearly all the multiply-adds, run in the dtype of X. The scores of
all alphas then come from one of two exact evaluations, whichever needs fewer multiply-adds
(:func:`cv_multiply_adds` counts them):

- *predictions*: one GEMM ``[n_alphas * (n_val + 1), .] @ [., batch]`` gives every alpha's
  held-out prediction already centred over the held-out rows (the operator's rows are centred)
  plus one row of its mean, then reduced to moments (best when the rank exceeds ``n_val``);
- *moments*: the sufficient statistics are formed without any prediction. With
  ``Z = right @ Y_train`` and ``Q~`` the held-out features centred over the held-out rows, the
  prediction's centred sum of squares is ``||R diag(w) z||**2`` where ``R^T R = Q~^T Q~`` (``R``
  from a float64 QR of ``Q~``, [min(n_val, rank), rank]), its product with the centred target is
  ``w . (z * Q~^T y~)`` and its mean ``mean(Q) diag(w) z``. Only ``min(n_val, rank)`` rows per
  alpha are computed instead of ``n_val``: with fewer features than held-out TRs this is the
  cheaper side, and no moment is a difference of large sums (each is about its own mean).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from wav2brain.encoding.scores import PredictionScores, scores_from_moments

#: Components with an eigenvalue below this fraction of the largest are treated as exact zeros.
NULL_SPACE_TOLERANCE = 1e-12

#: Threads of the CPU eigendecomposition per dtype (None: torch's setting). MKL's float64
#: tridiagonal reduction synchronises its threads once per column; on a loaded 2-core machine a
#: 2400 x 2400 float64 ``eigh`` took 20-58 s on 2 threads against 6 s on one (idle: 13.4 s
#: against 2.3 s). Its float32 reduction scales: 0.56 s on 2 idle threads, 0.98 s on one.
#: Matrix products keep every thread.
EIGH_THREADS: dict[torch.dtype, int | None] = {torch.float64: 1, torch.float32: 1}

#: Largest ``eps32 * (lambda_max + alpha_min) / alpha_min`` at which the Gram matrix is
#: diagonalised in float32 (see "Precision of the decomposition" in the module docstring).
FLOAT32_EIGH_TOLERANCE = 1e-3

#: Names of the criteria that can select alphas, all "higher is better".
CRITERIA = ("r2", "r", "neg_mse")

#: Multiply-adds counted for the eigendecomposition (with vectors) of a d x d matrix, per d**3:
#: the Householder work of LAPACK ``syevd``, reduction to tridiagonal form (2/3) and
#: back-transformation of the eigenvectors (1); its tridiagonal divide and conquer is not counted.
EIGH_MULTIPLY_ADDS_PER_CUBE = 5 / 3


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
def _eigh_threads(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Run a CPU eigendecomposition on :data:`EIGH_THREADS` threads, then restore the count."""
    threads = torch.get_num_threads()
    wanted = EIGH_THREADS.get(dtype)
    if device.type == "cpu" and wanted is not None:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def centred_gram(X: torch.Tensor) -> torch.Tensor:
    """Return the float64 Gram matrix of the smaller side of ``X`` centred on its column means.

    ``(X - mean) (X - mean)^T`` [n_samples, n_samples] when ``n_samples <= n_features`` (dual
    side), else ``(X - mean)^T (X - mean)`` [n_features, n_features]. Computed once, it serves both
    :func:`cross_validate_ridge` (dual side) and :func:`ridge_factors` of the same ``X``.
    """
    wide = (X - X.mean(0)).to(torch.float64)
    return wide @ wide.T if X.shape[0] <= X.shape[1] else wide.T @ wide


def ridge_factors(
    X: torch.Tensor, gram: torch.Tensor | None = None, alpha_min: float | None = None
) -> RidgeFactors:
    """Centre ``X`` [n_samples, n_features] and return its :class:`RidgeFactors`.

    The Gram matrix of the smaller side is built in float64 and diagonalised in float64, or in
    float32 when ``X`` is float32, ``alpha_min`` (the smallest alpha the factors will serve) is
    given and the regularised system is well enough conditioned (see the module docstring); the
    eigenvalues are float64, the factors (plain projections, no cancellation) are formed in the
    dtype of ``X``. ``gram``, if given, is :func:`centred_gram` of ``X``.
    """
    x_mean = X.mean(0)
    Xc = X - x_mean
    n_samples, n_features = Xc.shape
    dual = n_samples <= n_features
    side = min(n_samples, n_features)
    if gram is None:
        gram = centred_gram(X)
    elif tuple(gram.shape) != (side, side) or gram.dtype != torch.float64:
        raise ValueError(
            f"gram must be the float64 centred_gram of X, [{side}, {side}], "
            f"got {gram.dtype} {tuple(gram.shape)}"
        )
    eigenvalues, vectors = _decompose(gram, alpha_min if X.dtype == torch.float32 else None)
    vectors = vectors.to(X.dtype)
    if dual:
        left, right = Xc.T @ vectors, vectors.T
    else:
        left, right = vectors, vectors.T @ Xc.T
    return RidgeFactors(left=left, eigenvalues=eigenvalues, right=right, x_mean=x_mean)


def _eigh(gram: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of ``gram`` in ``dtype`` on :data:`EIGH_THREADS` threads."""
    with _eigh_threads(gram.device, dtype):
        return torch.linalg.eigh(gram.to(dtype))


def float32_suffices(lambda_max: float, alpha_min: float) -> bool:
    """Whether a float32 eigendecomposition serves ridge down to ``alpha_min`` (docstring)."""
    condition = (max(lambda_max, 0.0) + alpha_min) / alpha_min
    return float(torch.finfo(torch.float32).eps) * condition <= FLOAT32_EIGH_TOLERANCE


def _decompose(
    gram: torch.Tensor, alpha_min: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecompose a float64 Gram matrix; drop its null space (see the module docstring).

    With ``alpha_min`` the decomposition is first computed in float32 and kept when
    :func:`float32_suffices` for its largest eigenvalue; otherwise (or without ``alpha_min``) in
    float64. Returns float64 eigenvalues and float64 eigenvectors.
    """
    eigenvalues = None
    if alpha_min is not None:
        eigenvalues, vectors = _eigh(gram, torch.float32)
        if float32_suffices(float(eigenvalues[-1]), float(alpha_min)):
            eigenvalues, vectors = eigenvalues.double(), vectors.double()
        else:
            eigenvalues = None
    if eigenvalues is None:
        eigenvalues, vectors = _eigh(gram, torch.float64)
    keep = eigenvalues > NULL_SPACE_TOLERANCE * eigenvalues[-1].clamp_min(0)
    return eigenvalues[keep], vectors[:, keep]


def _plan_costs(m: int, k: int, n: int, n_targets: int) -> tuple[int, int]:
    """Multiply-adds of ``[m, k] @ [k, n] @ Y [n, n_targets]``: (operator formed, Y projected)."""
    return m * k * n + m * n * n_targets, k * n * n_targets + m * k * n_targets


def _cheaper_plan(
    left: torch.Tensor, right: torch.Tensor, n_targets: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose the cheaper exact order for ``left @ right @ Y`` with ``n_targets`` columns in Y.

    Returns ``(operator, projection)``: multiply ``operator @ (projection @ Y)`` when
    ``projection`` is not None, else ``operator @ Y``. Counts are multiply-adds
    (:func:`_plan_costs`): forming costs ``m k n + m n V``; projecting costs ``k n V + m k V``.
    """
    formed_cost, projected_cost = _plan_costs(*left.shape, right.shape[1], n_targets)
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


def target_rows(Y: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """A copy of ``Y[rows][:, columns]`` made in one gather (``rows`` None: every row).

    ``columns`` is a LongTensor of target indices. The result is a fresh copy, so the caller may
    modify it in place.
    """
    return Y[:, columns] if rows is None else Y[rows[:, None], columns[None, :]]


def solve_ridge(
    X: torch.Tensor,
    Y: torch.Tensor,
    alphas: torch.Tensor | float,
    memory_budget_bytes: int = 2**29,
    factors: RidgeFactors | None = None,
    rows: torch.Tensor | None = None,
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
    rows : LongTensor [n_samples], optional
        The rows of ``Y`` that match the rows of ``X`` (default: all, in order). ``Y`` is then read
        one batch of targets at a time (:func:`target_rows`), never copied whole.

    Returns
    -------
    coef : Tensor [n_features, n_targets]
        Weights on the centred features, in the dtype and on the device of ``X``.
    intercept : Tensor [n_targets]
        ``y_mean - x_mean @ coef``, so that predictions are ``X @ coef + intercept``.
    """
    factors = ridge_factors(X, alpha_min=_smallest(alphas)) if factors is None else factors
    n_targets = Y.shape[1]
    y_mean = torch.empty(n_targets, dtype=Y.dtype, device=Y.device)
    coef = torch.empty(X.shape[1], n_targets, dtype=X.dtype, device=X.device)
    for chunk, product, mean in _alpha_batches(
        factors.left, factors, Y, alphas, memory_budget_bytes, rows
    ):
        y_mean[chunk] = mean
        coef[:, chunk] = product
    intercept = y_mean - factors.x_mean @ coef
    return coef, intercept


def predict_ridge(
    X: torch.Tensor,
    Y: torch.Tensor,
    alphas: torch.Tensor | float,
    X_new: torch.Tensor,
    memory_budget_bytes: int = 2**29,
    factors: RidgeFactors | None = None,
    rows: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Predictions for ``X_new`` of the ridge :func:`solve_ridge` fits, without its weights.

    ``(X_new - x_mean) @ left diag(w) right (Y - y_mean) + y_mean`` per alpha, in the cheaper
    order (:func:`_cheaper_plan`), so neither the weights ``[n_features, n_targets]`` nor all
    predictions at once are held. Parameters as :func:`solve_ridge`; ``X_new`` is
    ``[n_new, n_features]``.

    Yields
    ------
    (targets, predictions) : LongTensor [batch] and Tensor [n_new, batch], each target once,
    grouped by alpha; each batch is bounded by ``memory_budget_bytes``.
    """
    factors = ridge_factors(X, alpha_min=_smallest(alphas)) if factors is None else factors
    held_out = (X_new - factors.x_mean) @ factors.left
    for chunk, product, mean in _alpha_batches(
        held_out, factors, Y, alphas, memory_budget_bytes, rows
    ):
        yield chunk, product.add_(mean)


def _smallest(alphas: torch.Tensor | float) -> float:
    """The smallest alpha (the one the decomposition's precision is chosen for)."""
    return float(torch.as_tensor(alphas).min())


def _alpha_batches(
    left: torch.Tensor,
    factors: RidgeFactors,
    Y: torch.Tensor,
    alphas: torch.Tensor | float,
    memory_budget_bytes: int,
    rows: torch.Tensor | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``left diag(w_alpha) right (Y - mean)`` for batches of targets sharing an alpha.

    Yields ``(targets, product [len(left), batch], target means [batch])``; ``Y`` is gathered
    one batch at a time (:func:`target_rows`), sized to ``memory_budget_bytes``.
    """
    n_samples, n_targets = factors.right.shape[1], Y.shape[1]
    per_target = torch.as_tensor(alphas, dtype=torch.float64, device=left.device)
    per_target = per_target.expand(n_targets) if per_target.ndim == 0 else per_target
    unique_alphas, inverse = torch.unique(per_target, return_inverse=True)
    batch = target_batch_size(4 * (2 * n_samples + 2 * len(left)), memory_budget_bytes, n_targets)
    for index, alpha in enumerate(unique_alphas):
        columns = torch.nonzero(inverse == index).flatten()
        scaled_left = left * factors.weights(alpha[None])[0].to(left.dtype)
        plan = _cheaper_plan(scaled_left, factors.right, len(columns))
        for start in range(0, len(columns), batch):
            chunk = columns[start : start + batch]
            targets = target_rows(Y, rows, chunk)
            mean = targets.mean(0)
            yield chunk, _apply(plan, targets.sub_(mean)), mean


@dataclass
class _HeldOut:
    """One split's factors: held-out predictions are ``q diag(w) right (Y_train - y_mean)``.

    Attributes
    ----------
    q : Tensor [n_val, rank] float64, the held-out features (centred with the training mean) in
        the eigenbasis of the training features.
    eigenvalues : Tensor [rank] float64.
    right : Tensor [rank, n_train], dtype of X.
    """

    q: torch.Tensor
    eigenvalues: torch.Tensor
    right: torch.Tensor


def _held_out_factors(
    X: torch.Tensor,
    train: torch.Tensor,
    val: torch.Tensor,
    dual_gram: torch.Tensor | None,
    alpha_min: float | None = None,
) -> _HeldOut:
    """Decompose the training rows of ``X``; ``dual_gram`` (all rows, float64) selects the dual side.

    ``alpha_min`` is the smallest alpha scored (it sets the decomposition's precision; None:
    float64).

    On the dual side the centred training Gram and the held-out cross-Gram are cut from
    ``dual_gram`` (the Gram of ``X`` about its overall mean) by double centring with the training
    mean, which is exact: ``(a - m)(b - m)^T = a b^T - a m^T - m b^T + m m^T`` with every term a mean
    of Gram entries. Otherwise :func:`ridge_factors` decomposes the training rows.
    """
    if dual_gram is None:
        factors = ridge_factors(X[train], alpha_min=alpha_min)
        q = (X[val] - factors.x_mean).to(torch.float64) @ factors.left.to(torch.float64)
        return _HeldOut(q=q, eigenvalues=factors.eigenvalues, right=factors.right)
    train_gram = dual_gram[train[:, None], train]
    row_mean = train_gram.mean(1)
    grand_mean = row_mean.mean()
    eigenvalues, vectors = _decompose(
        train_gram.sub_(row_mean[:, None]).sub_(row_mean - grand_mean),
        alpha_min if X.dtype == torch.float32 else None,
    )
    del train_gram
    cross_gram = dual_gram[val[:, None], train]
    cross_gram.sub_(cross_gram.mean(1, keepdim=True)).sub_(row_mean - grand_mean)
    return _HeldOut(q=cross_gram @ vectors, eigenvalues=eigenvalues, right=vectors.T.to(X.dtype))


def _moment_rows(n_val: int, rank: int) -> int:
    """Rows of the factor ``R`` (``R^T R = Q~^T Q~``) of the moments evaluation."""
    return min(n_val, rank)


def _evaluation_costs(
    n_train: int, n_val: int, rank: int, n_alphas: int, n_targets: int
) -> tuple[int, int]:
    """Multiply-adds of one split's held-out evaluation: (predictions, moments).

    Predictions: the cheaper order of ``[n_alphas * (n_val + 1), rank] @ [rank, n_train] @ Y``
    (each alpha's centred held-out rows and their mean).
    Moments: a QR of ``Q~`` when it has more rows than columns (``rank**2 (n_val - rank / 3)``),
    then per target ``Z`` (``rank n_train``), ``Q~^T y~`` (``rank n_val``), ``R diag(w) z`` for
    every alpha (``n_alphas rows rank``) and the cross and mean terms (``2 n_alphas rank``).
    """
    predictions = min(_plan_costs(n_alphas * (n_val + 1), rank, n_train, n_targets))
    rows = _moment_rows(n_val, rank)
    qr = rank * rank * (n_val - rank // 3) if rows < n_val else 0
    per_target = rank * n_train + rank * n_val + n_alphas * rows * rank + 2 * n_alphas * rank
    return predictions, qr + per_target * n_targets


class _PredictionScorer:
    """Scores every alpha from its held-out predictions, one GEMM for all alphas.

    The operator's rows are those of the held-out features centred over the held-out rows (one
    block per alpha), followed by one row per alpha of their mean, so the product gives each
    prediction already centred, and its mean, without another pass over the predictions.
    """

    def __init__(self, held_out: _HeldOut, weights: torch.Tensor, n_targets: int) -> None:
        n_val, rank = held_out.q.shape
        q_mean = held_out.q.mean(0)
        centred = (held_out.q - q_mean)[None] * weights[:, None, :]
        stacked = torch.cat([centred.reshape(-1, rank), weights * q_mean])
        self.n_alphas, self.n_val = len(weights), n_val
        self.plan = _cheaper_plan(stacked.to(held_out.right.dtype), held_out.right, n_targets)

    def bytes_per_target(self, n_train: int, element_size: int) -> int:
        """Temporaries per target column: predictions, the projection and the target copies."""
        projection = 0 if self.plan[1] is None else self.plan[1].shape[0]
        rows = self.n_alphas * (self.n_val + 1)
        return element_size * (rows + projection + 2 * n_train + 3 * self.n_val)

    def __call__(self, y_train: torch.Tensor, y_val: torch.Tensor) -> PredictionScores:
        """Score the alphas on ``y_val``; both targets are centred with the training mean."""
        products = _apply(self.plan, y_train)
        split = self.n_alphas * self.n_val
        centred = products[:split].reshape(self.n_alphas, self.n_val, -1)
        target_mean = y_val.mean(0)
        y_centred = y_val.sub_(target_mean)
        prediction_ss = torch.linalg.vector_norm(centred, dim=1).square()
        cross = centred.mul_(y_centred).sum(1)
        return scores_from_moments(
            self.n_val,
            products[split:],
            prediction_ss,
            cross,
            target_mean,
            y_centred.square().sum(0),
        )


class _MomentScorer:
    """Scores every alpha from sufficient statistics, never forming a prediction."""

    def __init__(self, held_out: _HeldOut, weights: torch.Tensor) -> None:
        dtype = held_out.right.dtype
        n_val, rank = held_out.q.shape
        q_mean = held_out.q.mean(0)
        q_centred = held_out.q - q_mean
        rows = _moment_rows(n_val, rank)
        factor = torch.linalg.qr(q_centred, mode="r")[1] if rows < n_val else q_centred
        self.n_alphas, self.n_val, self.rows = len(weights), n_val, rows
        self.right = held_out.right
        self.q_centred = q_centred.to(dtype)
        self.weights = weights.to(dtype)
        self.mean_weights = (weights * q_mean).to(dtype)
        self.stacked = (factor[None] * weights[:, None, :]).reshape(-1, rank).to(dtype)

    def bytes_per_target(self, n_train: int, element_size: int) -> int:
        """Temporaries per target column: the target copies, projections and factor products."""
        rank = self.right.shape[0]
        return element_size * (2 * n_train + 3 * self.n_val + 3 * rank + self.n_alphas * self.rows)

    def __call__(self, y_train: torch.Tensor, y_val: torch.Tensor) -> PredictionScores:
        """Score the alphas on ``y_val``; both targets are centred with the training mean."""
        z = self.right @ y_train
        target_mean = y_val.mean(0)
        y_centred = y_val - target_mean
        target_ss = y_centred.square().sum(0)
        cross = self.weights @ (z * (self.q_centred.T @ y_centred))
        factor_products = (self.stacked @ z).reshape(self.n_alphas, self.rows, -1)
        prediction_ss = torch.linalg.vector_norm(factor_products, dim=1).square()
        return scores_from_moments(
            self.n_val, self.mean_weights @ z, prediction_ss, cross, target_mean, target_ss
        )


def cross_validate_ridge(
    X: torch.Tensor,
    Y: torch.Tensor,
    alphas: torch.Tensor,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    memory_budget_bytes: int = 2**29,
    gram: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> CVResult:
    """Score every alpha on every split, per target, reusing one decomposition per split.

    For each split the training rows are decomposed once (see "Cross-validation" in the module
    docstring); the scores of all alphas for a batch of targets then come from a few large matrix
    products, by predictions or by moments, whichever needs fewer multiply-adds.

    Parameters
    ----------
    X : Tensor [n_samples, n_features]
    Y : Tensor [n_samples, n_targets]
    alphas : Tensor [n_alphas], each > 0
    splits : sequence of (train indices, validation indices)
        Row indices (TRs); see :mod:`wav2brain.encoding.splits`.
    memory_budget_bytes : int
        Bound on the temporaries of one target batch.
    gram : Tensor [n_samples, n_samples] float64, optional
        :func:`centred_gram` of ``X`` when ``n_samples <= n_features``, to share it with the refit
        (:func:`ridge_factors`); computed here when a split needs it and it is not given.
    rows : LongTensor [n_samples], optional
        The rows of ``Y`` that match the rows of ``X`` (default: all, in order); ``splits`` index
        the rows of ``X``. Each batch of targets is gathered from ``Y`` (one copy per batch), so
        a caller holding a subject's whole BOLD never copies a fold's training rows.

    Returns
    -------
    CVResult with tensors [n_splits, n_alphas, n_targets].
    """
    n_features = X.shape[1]
    n_targets = Y.shape[1]
    n_alphas = len(alphas)
    shape = (len(splits), n_alphas, n_targets)
    result = CVResult(*(torch.empty(shape, dtype=Y.dtype, device=Y.device) for _ in range(3)))
    n_samples = X.shape[0]
    if gram is not None and (tuple(gram.shape) != (n_samples, n_samples) or n_samples > n_features):
        raise ValueError(
            f"gram must be the [{n_samples}, {n_samples}] centred_gram of X with n_samples <= "
            f"n_features ({n_features}), got {tuple(gram.shape)}"
        )
    dual_gram = gram
    for split_index, (train, val) in enumerate(splits):
        train_t = torch.as_tensor(train, device=X.device)
        val_t = torch.as_tensor(val, device=X.device)
        train_rows, val_rows = (train_t, val_t) if rows is None else (rows[train_t], rows[val_t])
        dual = len(train) <= n_features
        if dual and dual_gram is None:
            centred = (X - X.mean(0)).to(torch.float64)
            dual_gram = centred @ centred.T
            del centred
        held_out = _held_out_factors(
            X, train_t, val_t, dual_gram if dual else None, _smallest(alphas)
        )
        weights = 1.0 / (held_out.eigenvalues + alphas.to(torch.float64)[:, None])
        costs = _evaluation_costs(len(train), len(val), len(weights[0]), n_alphas, n_targets)
        scorer = (
            _PredictionScorer(held_out, weights, n_targets)
            if costs[0] <= costs[1]
            else _MomentScorer(held_out, weights)
        )
        batch = target_batch_size(
            scorer.bytes_per_target(len(train), Y.element_size()), memory_budget_bytes, n_targets
        )
        for start in range(0, n_targets, batch):
            columns = slice(start, start + batch)
            y_train = Y[train_rows, columns]
            y_train_mean = y_train.mean(0)
            scores = scorer(y_train.sub_(y_train_mean), Y[val_rows, columns].sub_(y_train_mean))
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


def _gram_cost(n_rows: int, n_columns: int) -> int:
    """Multiply-adds of the symmetric Gram matrix of ``n_columns`` columns over ``n_rows`` rows."""
    return n_columns * (n_columns + 1) // 2 * n_rows


def _eigh_cost(size: int) -> int:
    """Multiply-adds counted for one eigendecomposition (:data:`EIGH_MULTIPLY_ADDS_PER_CUBE`)."""
    return int(EIGH_MULTIPLY_ADDS_PER_CUBE * size**3)


def cv_multiply_adds(
    n_samples: int,
    n_features: int,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    n_alphas: int,
    n_targets: int,
) -> int:
    """Multiply-adds of :func:`cross_validate_ridge` on full-rank data of this shape.

    Counted: every matrix product the algorithm performs (a Gram matrix as its symmetric half,
    float32 and float64 alike), each eigendecomposition as :data:`EIGH_MULTIPLY_ADDS_PER_CUBE`
    ``* d**3`` and the QR of the moments evaluation as ``rank**2 (n_val - rank / 3)``. Not
    counted: element-wise work (centring, scaling, the reductions that turn products into
    scores) and copies. The rank is ``min(n_train - 1, n_features)`` (centring removes one
    dimension), as for generic data; each split's evaluation is the one the solver chooses.
    """
    total = 0
    if any(len(train) <= n_features for train, _ in splits):
        total += _gram_cost(n_features, n_samples)
    for train, val in splits:
        n_train, n_val = len(train), len(val)
        rank = min(n_train - 1, n_features)
        if n_train <= n_features:
            total += _eigh_cost(n_train) + n_val * n_train * rank
        else:
            total += _gram_cost(n_train, n_features) + _eigh_cost(n_features)
            total += rank * n_features * n_train + n_val * n_features * rank
        total += min(_evaluation_costs(n_train, n_val, rank, n_alphas, n_targets))
    return total


def solve_multiply_adds(
    n_samples: int, n_features: int, targets_per_alpha: Sequence[int], gram: bool = True
) -> int:
    """Multiply-adds of :func:`solve_ridge` with ``targets_per_alpha[i]`` targets on alpha ``i``.

    Counted as in :func:`cv_multiply_adds`: the Gram matrix (unless ``gram`` is False: given, as
    ``RidgeCV`` shares the cross-validation's on the dual side), its eigendecomposition, the factor
    ``X^T U`` (or ``V^T X^T``), each alpha's cheaper order and the intercepts.
    """
    rank = min(n_samples - 1, n_features)
    total = _gram_cost(max(n_samples, n_features), min(n_samples, n_features)) if gram else 0
    total += _eigh_cost(min(n_samples, n_features)) + n_features * n_samples * rank
    for n_targets in targets_per_alpha:
        total += min(_plan_costs(n_features, rank, n_samples, n_targets))
    return total + n_features * sum(targets_per_alpha)
