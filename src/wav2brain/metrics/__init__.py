"""Metrics of brain prediction, also shipped as ``evaluate`` metric modules."""

from wav2brain.metrics.voxelwise import voxelwise_scores as voxelwise_scores
