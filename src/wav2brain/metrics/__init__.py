"""Metrics of brain prediction, also shipped as ``evaluate`` metric modules."""
