"""The brain-encoding model: configuration, model class and output dataclass."""

from __future__ import annotations

from .configuration_brain_encoding import Wav2Vec2BrainEncodingConfig, checkpoint_do_normalize
from .modeling_brain_encoding import Wav2Vec2ForBrainEncoding
from .outputs import BrainEncodingOutput

__all__ = [
    "BrainEncodingOutput",
    "Wav2Vec2BrainEncodingConfig",
    "Wav2Vec2ForBrainEncoding",
    "checkpoint_do_normalize",
]
