"""Voxelwise encoding: ridge with per-voxel alphas chosen over runs, scores and noise ceilings.

:func:`encode_dataset` runs it over a prepared dataset one subject at a time (what
``wav2brain encode`` calls); :mod:`wav2brain.encoding.runs` is the shared reader of a subject's
BOLD and cached features.
"""

from wav2brain.encoding.dataset import EncodeConfig, EncodeResult, encode_dataset
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
    "EncodeConfig",
    "EncodeResult",
    "RidgeCV",
    "RidgeFactors",
    "cross_validate_ridge",
    "encode_dataset",
    "make_splits",
    "normalized_score",
    "pearson_r",
    "prediction_scores",
    "r2_score",
    "ridge_factors",
    "select_alphas",
    "solve_ridge",
]
