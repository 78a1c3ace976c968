"""Per-layer encoding (one ridge model per layer, nested CV) and layer profiles per voxel or ROI.

Held-out scores are nested: an outer split holds out whole runs; a :class:`RidgeCV` fitted on the
other runs chooses each voxel's alpha with its own inner folds over those runs, and only then
predicts the held-out runs. This keeps the alpha search from inflating the reported r (with 10
alphas, choosing on the scored folds biases noise voxels upwards).

Scores are pooled over folds: r and R² of each voxel are computed once, over the concatenated
held-out predictions of all outer folds (every TR is held out exactly once), not averaged over
folds. Each held-out TR therefore weighs the same, so a 56-minute story counts 18 times as much
as a 3-minute one, where an unweighted mean of fold scores would count them equally and let the
noisiest, shortest fold move the score most. The pooled r also sees differences of mean and
scale between the folds' predictions; with runs z-scored (``prepare``'s default) and features
cleaned the same way these are small, and they are part of what a model gets wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from wav2brain.encoding.estimators import DEFAULT_ALPHAS, RidgeCV
from wav2brain.encoding.splits import make_splits


@dataclass
class EncodingConfig:
    """Settings of per-layer encoding.

    Parameters
    ----------
    alphas : tuple of float
        Ridge grid (units of the squared standardised features).
    inner_cv : int
        Folds over the training runs that choose alphas; lowered to the number of training runs
        when fewer. With a single training run, contiguous blocks of its TRs are used instead.
    outer_cv : int or "groups"
        Held-out folds over runs; "groups" is leave-one-run-out.
    criterion : {"r2", "r", "neg_mse"}
        Alpha-selection criterion (see :class:`RidgeCV`).
    standardize : bool
        Standardise features: layers differ in scale by orders of magnitude, and one alpha grid
        only fits all of them after standardisation.
    memory_budget_bytes : int
        Upper bound on ridge temporaries (bytes).
    memory_budget_fraction : float
        Bound on ridge temporaries relative to the BOLD being fitted: the budget of
        :func:`encode` is ``min(memory_budget_bytes, max(min_memory_budget_bytes, fraction *
        Y bytes))``. A fixed budget either dwarfs a small subject (512 MB against 23 MB of
        BOLD) or starves a large one; a quarter of the data keeps the peak near one subject's
        BOLD while the target batches stay thousands of voxels wide (full-speed GEMMs).
    min_memory_budget_bytes : int
        Floor of that budget (bytes), so small data is never cut into tiny batches.
    """

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    inner_cv: int = 5
    outer_cv: int | str = "groups"
    criterion: str = "r2"
    standardize: bool = True
    memory_budget_bytes: int = 2**29
    memory_budget_fraction: float = 0.25
    min_memory_budget_bytes: int = 2**22

    def budget_bytes(self, data_bytes: int) -> int:
        """The bound on ridge temporaries for fitting ``data_bytes`` of BOLD (see above)."""
        if not (0 < self.memory_budget_fraction < np.inf):
            raise ValueError(
                f"memory_budget_fraction must be a positive number, got "
                f"{self.memory_budget_fraction!r}"
            )
        if self.memory_budget_bytes < 1 or self.min_memory_budget_bytes < 1:
            raise ValueError(
                f"memory budgets must be >= 1 byte, got memory_budget_bytes="
                f"{self.memory_budget_bytes}, min_memory_budget_bytes="
                f"{self.min_memory_budget_bytes}"
            )
        relative = max(self.min_memory_budget_bytes, int(self.memory_budget_fraction * data_bytes))
        return int(min(self.memory_budget_bytes, relative))


@dataclass
class EncodingScores:
    """Held-out scores of one feature set: arrays [n_voxels] (float32)."""

    r: np.ndarray
    r2: np.ndarray
    alpha: np.ndarray


def encode(X, Y, groups, config: EncodingConfig | None = None) -> EncodingScores:
    """Nested-CV held-out r and R² per voxel for features ``X`` [n_trs, units] and BOLD ``Y``.

    Parameters
    ----------
    X : array [n_trs, n_units]
    Y : array [n_trs, n_voxels]
    groups : array [n_trs]
        Run (or story) of each TR; at least two distinct values.
    config : EncodingConfig

    Returns
    -------
    EncodingScores: r and R² of the pooled held-out predictions of all outer folds (see the
    module docstring); alpha is the geometric mean of the alphas chosen in the outer folds.

    Memory: ``Y`` is never copied whole. Each outer fold fits on its training rows by index
    and its held-out predictions are formed and pooled one batch of voxels at a time
    (:meth:`RidgeCV.fit_predict_batches`: no ``[units, voxels]`` weights); every temporary is
    bounded by :meth:`EncodingConfig.budget_bytes` of ``Y``'s size.
    """
    config = config or EncodingConfig()
    X, Y, groups = (
        np.asarray(X, dtype=np.float32),
        np.asarray(Y, dtype=np.float32),
        np.asarray(groups),
    )
    if len(np.unique(groups)) < 2:
        raise ValueError(
            f"held-out scores need at least 2 runs, got groups {np.unique(groups).tolist()}"
        )
    budget = config.budget_bytes(Y.nbytes)
    pooled = _PooledScores(Y.shape[1])
    log_alphas = []
    for train, test in make_splits(len(X), groups, config.outer_cv):
        n_train_groups = len(np.unique(groups[train]))
        model = RidgeCV(
            alphas=config.alphas,
            cv=min(config.inner_cv, n_train_groups) if n_train_groups >= 2 else config.inner_cv,
            criterion=config.criterion,
            standardize=config.standardize,
            memory_budget_bytes=budget,
        )
        batches = model.fit_predict_batches(
            X, Y, X[test], groups=groups if n_train_groups >= 2 else None, rows=train
        )
        pooled.add_trs(len(test))
        for voxels, predictions in batches:
            pooled.add(Y[np.ix_(test, voxels)], predictions, voxels)
        log_alphas.append(np.log(model.best_alphas_))
    r, r2 = pooled.scores()
    return EncodingScores(
        r=r.astype(np.float32),
        r2=r2.astype(np.float32),
        alpha=np.exp(np.mean(log_alphas, axis=0)).astype(np.float32),
    )


class _PooledScores:
    """Running sums (float64 [n_voxels]) for r and R² over concatenated held-out predictions."""

    def __init__(self, n_voxels: int) -> None:
        self.n = 0
        self.sums = {name: np.zeros(n_voxels) for name in ("p", "y", "pp", "yy", "py")}

    def add(self, y: np.ndarray, p: np.ndarray, columns: np.ndarray) -> None:
        """Add held-out targets ``y`` and predictions ``p`` [TRs, voxels] of one fold.

        ``columns``: the voxels they hold (distinct indices); the fold's TRs are counted by
        :meth:`add_trs`.
        """
        # per-fold sums in the data's float32 (no float64 copy of a fold), accumulated in float64
        for name, a, b in (("pp", p, p), ("yy", y, y), ("py", p, y)):
            self.sums[name][columns] += np.einsum("tv,tv->v", a, b)
        self.sums["p"][columns] += p.sum(0)
        self.sums["y"][columns] += y.sum(0)

    def add_trs(self, n_trs: int) -> None:
        """Count one fold's ``n_trs`` held-out TRs (once, whatever the voxel batches)."""
        self.n += n_trs

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Pooled Pearson r and R² (0 where the held-out targets or predictions are constant)."""
        s, n = self.sums, self.n
        pp = s["pp"] - s["p"] ** 2 / n
        yy = s["yy"] - s["y"] ** 2 / n
        py = s["py"] - s["p"] * s["y"] / n
        sse = s["yy"] - 2 * s["py"] + s["pp"]
        denominator = np.sqrt(np.clip(pp, 0, None) * np.clip(yy, 0, None))
        valid = yy > 1e-12 * np.maximum(s["yy"], 1e-300)
        r = np.divide(py, denominator, out=np.zeros_like(py), where=valid & (denominator > 0))
        r2 = np.divide(sse, yy, out=np.ones_like(yy), where=valid)
        return np.clip(r, -1, 1), np.where(valid, 1 - r2, 0.0)


def encode_layers(
    features: Mapping[str, np.ndarray],
    Y,
    groups,
    config: EncodingConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, EncodingScores]:
    """One nested-CV ridge model per layer: ``{layer: EncodingScores}``.

    ``features`` maps layer names to arrays [n_trs, units] on the TR grid of ``Y``; ``progress``
    is called with each layer's name once it is done.
    """
    n_trs = np.shape(Y)[0]
    for name, value in features.items():
        if np.ndim(value) != 2 or np.shape(value)[0] != n_trs:
            raise ValueError(
                f"layer {name!r}: features must be [{n_trs} TRs, units], "
                f"got shape {np.shape(value)}"
            )
    results = {}
    for name, value in features.items():
        results[name] = encode(value, Y, groups, config)
        if progress is not None:
            progress(name)
    return results


def layer_profile(scores, layer_numbers=None) -> tuple[np.ndarray, np.ndarray]:
    """Preferred layer of each voxel or ROI from scores [n_layers, n].

    Parameters
    ----------
    scores : array [n_layers, n]
        For example held-out r per layer and voxel (or ROI means, :func:`roi_mean_scores`).
    layer_numbers : array [n_layers], optional
        Number of each layer (default ``0 .. n_layers - 1``).

    Returns
    -------
    best_layer : float64 [n], the layer with the highest score (NaN where all scores are NaN).
    preferred_layer : float64 [n], the score-weighted mean layer
        ``sum_l l max(s_l, 0) / sum_l max(s_l, 0)`` (NaN where no layer scores above 0); it
        moves smoothly between layers where argmax jumps.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be [n_layers >= 1, n], got shape {scores.shape}")
    numbers = (
        np.arange(scores.shape[0], dtype=np.float64)
        if layer_numbers is None
        else np.asarray(layer_numbers, dtype=np.float64)
    )
    if numbers.shape != (scores.shape[0],):
        raise ValueError(
            f"layer_numbers must have {scores.shape[0]} entries, got shape {numbers.shape}"
        )
    all_nan = np.isnan(scores).all(0)
    best = np.where(all_nan, np.nan, numbers[np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=0)])
    weights = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, None)
    total = weights.sum(0)
    preferred = np.divide(
        numbers @ weights, total, out=np.full(total.shape, np.nan), where=total > 0
    )
    return best, preferred


def roi_mean_scores(scores, labels, background: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean score per ROI: scores [n_layers, n_voxels], integer labels [n_voxels].

    Returns the ROI labels [n_rois] (``background`` excluded) and means [n_layers, n_rois]
    (NaN-aware).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[1],):
        raise ValueError(f"labels must be [n_voxels={scores.shape[-1]}], got shape {labels.shape}")
    rois = np.unique(labels[labels != background])
    members = (labels[None, :] == rois[:, None]).astype(np.float64)  # [n_rois, n_voxels]
    finite = np.isfinite(scores)
    totals = np.where(finite, scores, 0.0) @ members.T
    counts = finite.astype(np.float64) @ members.T
    means = np.divide(totals, counts, out=np.full(totals.shape, np.nan), where=counts > 0)
    return rois, means


def roi_labels_from_image(label_img, mask_img) -> np.ndarray:
    """Integer ROI label [n_voxels] of each mask voxel, from a label (atlas) image.

    The label image is resampled to the mask's grid with nearest-neighbour interpolation
    (nilearn), then read at the mask's voxels in the order of ``bold`` columns.
    """
    from nilearn.image import load_img, resample_to_img
    from nilearn.masking import apply_mask

    mask = load_img(mask_img)
    labels = resample_to_img(
        load_img(label_img), mask, interpolation="nearest", copy_header=True, force_resample=True
    )
    return np.rint(apply_mask(labels, mask)).astype(np.int64)
