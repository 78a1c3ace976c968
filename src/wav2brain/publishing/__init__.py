"""Exporting refined models, their model cards, and pushing them to the Hugging Face Hub.

- :func:`export_run`: the refined backbone (plain ``Wav2Vec2Model``) and the full brain-encoding
  model (with generated modeling code and ``auto_map``), LoRA merged, each checked by reloading;
- :func:`build_model_card` / :data:`CARD_KEYS`: the cards, from the run record;
- :func:`push_export`: both folders to the Hub (``HF_ENDPOINT`` honoured).

Importing this package imports neither torch nor transformers.
"""

from __future__ import annotations

from .card import CARD_KEYS, build_model_card, check_card
from .export import ExportVerificationError, export_run, read_export
from .hub import HubPushError, full_model_repo_id, push_export

__all__ = [
    "CARD_KEYS",
    "ExportVerificationError",
    "HubPushError",
    "build_model_card",
    "check_card",
    "export_run",
    "full_model_repo_id",
    "push_export",
    "read_export",
]
