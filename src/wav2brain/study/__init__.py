"""Whole studies: a study file (:class:`StudyConfig`), its steps and their runner, and the demo.

``wav2brain run --config study.yaml`` and ``wav2brain demo`` are thin shells over
:func:`run_study` and :func:`~wav2brain.study.demo.run_demo`.
"""

from wav2brain.study.config import DataConfig, ModelsConfig, ProbeConfig, RefineConfig, StudyConfig
from wav2brain.study.runner import StudyResult, read_record, run_study
from wav2brain.study.steps import STEP_ORDER, Step, plan_study

__all__ = [
    "STEP_ORDER",
    "DataConfig",
    "ModelsConfig",
    "ProbeConfig",
    "RefineConfig",
    "Step",
    "StudyConfig",
    "StudyResult",
    "plan_study",
    "read_record",
    "run_study",
]
