"""wav2brain: link self-supervised speech models (wav2vec 2.0) to the human brain.

Importing the package registers :class:`Wav2Vec2BrainEncodingConfig` and
:class:`Wav2Vec2ForBrainEncoding` with ``AutoConfig`` / ``AutoModel``, so
``AutoModel.from_pretrained(path)`` loads a saved brain-encoding model without ``trust_remote_code``.

The import itself stays light (no torch, no transformers), so that the ``wav2brain`` command line
starts fast: the model classes are imported on first access (PEP 562 module ``__getattr__``), and
the registration happens when transformers' auto classes are imported
(:mod:`wav2brain.registration`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from wav2brain import registration

__version__ = "0.2.0"

_LAZY = {
    "BrainEncodingOutput": "wav2brain.modeling.outputs",
    "Wav2Vec2BrainEncodingConfig": "wav2brain.modeling.configuration_brain_encoding",
    "Wav2Vec2ForBrainEncoding": "wav2brain.modeling.modeling_brain_encoding",
}

if TYPE_CHECKING:
    from wav2brain.modeling import (
        BrainEncodingOutput,
        Wav2Vec2BrainEncodingConfig,
        Wav2Vec2ForBrainEncoding,
    )


def __getattr__(name: str):
    """Import a model class on first access (the registration follows with transformers)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'wav2brain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


registration.install()

__all__ = [
    "BrainEncodingOutput",
    "Wav2Vec2BrainEncodingConfig",
    "Wav2Vec2ForBrainEncoding",
    "__version__",
]
