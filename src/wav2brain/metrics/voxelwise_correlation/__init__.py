"""The ``evaluate`` metric module folder ``voxelwise_correlation`` shipped with wav2brain.

``evaluate.load(str(METRIC_PATH))`` loads it offline (a local path is never looked up on the Hub);
:func:`load` does the same. The folder holds ``voxelwise_correlation.py``, which ``evaluate`` copies
into its module cache and imports; importing this package does not import ``evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRIC_PATH = Path(__file__).resolve().parent
"""Folder of the metric module (pass ``str(METRIC_PATH)`` to ``evaluate.load``)."""


def load(**kwargs: Any):
    """``evaluate.load`` of the shipped metric (keywords passed on, e.g. ``experiment_id``)."""
    import evaluate

    return evaluate.load(str(METRIC_PATH), **kwargs)
