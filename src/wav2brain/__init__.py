"""wav2brain: link self-supervised speech models (wav2vec 2.0) to the human brain.

Importing the package registers :class:`Wav2Vec2BrainEncodingConfig` and
:class:`Wav2Vec2ForBrainEncoding` with ``AutoConfig`` / ``AutoModel``, so
``AutoModel.from_pretrained(path)`` loads a saved brain-encoding model without ``trust_remote_code``.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .modeling import BrainEncodingOutput, Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

__version__ = "0.1.0"

AutoConfig.register(
    Wav2Vec2BrainEncodingConfig.model_type, Wav2Vec2BrainEncodingConfig, exist_ok=True
)
AutoModel.register(Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding, exist_ok=True)

__all__ = [
    "BrainEncodingOutput",
    "Wav2Vec2BrainEncodingConfig",
    "Wav2Vec2ForBrainEncoding",
    "__version__",
]
