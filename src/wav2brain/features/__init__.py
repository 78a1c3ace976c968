"""Streamed activations, their resampling onto the TR grid, and the feature cache."""

from wav2brain.features.cache import CachedFeatures, FeatureCache, FeatureKey, model_identity
from wav2brain.features.extract import (
    ActivationChunk,
    ExtractionConfig,
    activation_units,
    extract_activations,
    iter_activations,
    prepare_audio,
)
from wav2brain.features.hrf import FrameToTRResampler, HRFKernel, frames_to_trs, resample_frames
from wav2brain.features.pipeline import RunTiming, run_features, stimulus_features
from wav2brain.features.resample import TRGrid, TRGridConfig, align_to_run, run_grid

__all__ = [
    "ActivationChunk",
    "ExtractionConfig",
    "activation_units",
    "extract_activations",
    "iter_activations",
    "prepare_audio",
    "CachedFeatures",
    "FeatureCache",
    "FeatureKey",
    "model_identity",
    "FrameToTRResampler",
    "HRFKernel",
    "frames_to_trs",
    "resample_frames",
    "RunTiming",
    "run_features",
    "stimulus_features",
    "TRGrid",
    "TRGridConfig",
    "align_to_run",
    "run_grid",
]
