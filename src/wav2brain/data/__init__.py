"""Audio-fMRI data: BIDS discovery, scan timing, BOLD loading, audio, alignments, the HF layout,
training windows.

The windows import torch, so they load on first access (PEP 562 ``__getattr__``): the converters'
and ``wav2brain prepare``'s command lines start without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from wav2brain.data.alignments import AlignedToken as AlignedToken
from wav2brain.data.alignments import Alignment as Alignment
from wav2brain.data.alignments import read_alignment as read_alignment
from wav2brain.data.alignments import read_gentle_json as read_gentle_json
from wav2brain.data.alignments import read_textgrid as read_textgrid
from wav2brain.data.alignments import write_gentle_json as write_gentle_json
from wav2brain.data.audio import audio_info as audio_info
from wav2brain.data.audio import load_audio as load_audio
from wav2brain.data.audio import resample_audio as resample_audio
from wav2brain.data.bids import RunSpec as RunSpec
from wav2brain.data.bids import discover_runs as discover_runs
from wav2brain.data.bids import find_alignment as find_alignment
from wav2brain.data.bids import read_mapping_table as read_mapping_table
from wav2brain.data.fmri import BoldData as BoldData
from wav2brain.data.fmri import CleaningConfig as CleaningConfig
from wav2brain.data.fmri import check_coverage as check_coverage
from wav2brain.data.fmri import load_bold as load_bold
from wav2brain.data.masks import MaskConfig as MaskConfig
from wav2brain.data.masks import compute_mask as compute_mask
from wav2brain.data.masks import feature_mask as feature_mask
from wav2brain.data.masks import iter_volumes as iter_volumes
from wav2brain.data.masks import load_mask as load_mask
from wav2brain.data.masks import mean_image as mean_image
from wav2brain.data.prepare import prepare_dataset as prepare_dataset

_LAZY = ("BrainWindowCollator", "BrainWindows", "WindowConfig")

if TYPE_CHECKING:
    from wav2brain.data.windows import BrainWindowCollator as BrainWindowCollator
    from wav2brain.data.windows import BrainWindows as BrainWindows
    from wav2brain.data.windows import WindowConfig as WindowConfig


def __getattr__(name: str):
    """Import the training windows (and torch) on first access."""
    if name not in _LAZY:
        raise AttributeError(f"module 'wav2brain.data' has no attribute {name!r}")
    value = getattr(importlib.import_module("wav2brain.data.windows"), name)
    globals()[name] = value
    return value
