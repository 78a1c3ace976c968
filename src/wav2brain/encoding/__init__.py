"""Voxelwise encoding: ridge with per-voxel alphas chosen over runs, scores and noise ceilings."""

from wav2brain.encoding.estimators import DEFAULT_ALPHAS, RidgeCV
from wav2brain.encoding.ridge import (
    CRITERIA,
    CVResult,
    RidgeFactors,
    cross_validate_ridge,
    ridge_factors,
    select_alphas,
    solve_ridge,
)
from wav2brain.encoding.scores import normalized_score, pearson_r, prediction_scores, r2_score
from wav2brain.encoding.splits import make_splits

__all__ = [
    "CRITERIA",
    "CVResult",
    "DEFAULT_ALPHAS",
    "RidgeCV",
    "RidgeFactors",
    "cross_validate_ridge",
    "make_splits",
    "normalized_score",
    "pearson_r",
    "prediction_scores",
    "r2_score",
    "ridge_factors",
    "select_alphas",
    "solve_ridge",
]
