"""SUPERB-style downstream probing of speech models, offline tasks included.

The public names are imported on first use (``from wav2brain.probing import compare_upstreams``),
so that importing a light submodule of this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "compare_upstreams": "compare",
    "parse_upstreams": "compare",
    "UpstreamSpec": "compare",
    "Comparison": "compare",
    "check_disjoint_splits": "checks",
    "check_labels_seen": "checks",
    "check_trials": "checks",
    "CTCConfig": "downstream",
    "DownstreamConfig": "downstream",
    "UtteranceConfig": "downstream",
    "VerificationConfig": "downstream",
    "TASK_DEFAULTS": "downstream",
    "FBANK": "features",
    "FbankConfig": "features",
    "FbankUpstream": "features",
    "ProbeFeatureCache": "features",
    "TransformersUpstream": "features",
    "check_upstream": "features",
    "load_upstream": "features",
    "ProbeConfig": "harness",
    "ProbeTask": "harness",
    "TaskResult": "harness",
    "load_task": "harness",
    "probe_task": "harness",
    "task_from_splits": "harness",
    "accuracy": "metrics",
    "confidence_interval": "metrics",
    "equal_error_rate": "metrics",
    "error_rate": "metrics",
    "paired_difference": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wav2brain.probing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wav2brain.probing.{_EXPORTS[name]}"), name)
