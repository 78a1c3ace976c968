"""Neuron-level anchoring: every artificial neuron of a speech model against every voxel and brain network."""
