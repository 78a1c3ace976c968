"""Output dataclass of :class:`~wav2brain.modeling.Wav2Vec2ForBrainEncoding`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class BrainEncodingOutput(ModelOutput):
    """Output of a brain-encoding forward pass.

    Every field is a float tensor (or a tuple of them), so the tuple and dict forms compare
    element-wise as transformers' output-equivalence checks do. Which TR bins of each window held
    audio is internal to the head (the ``valid_bins`` that
    :meth:`~wav2brain.modeling.Wav2Vec2ForBrainEncoding.pool_trs` returns): it is a boolean mask,
    and the Trainer would gather it into ``EvalPrediction.predictions``.

    Parameters
    ----------
    loss : torch.FloatTensor, optional
        Scalar objective (data loss + L2 penalties), returned when ``labels`` are given.
    predictions : torch.FloatTensor
        ``[B, V]`` predicted BOLD; ``V`` is the largest voxel count among the batch's subjects and
        entries beyond a subject's own count are zero.
    hidden_states : tuple of torch.FloatTensor, optional
        Backbone hidden states ``[B, frames, hidden_size]`` (embedding output, then each layer),
        returned with ``output_hidden_states=True``.
    attentions : tuple of torch.FloatTensor, optional
        Backbone attention weights, returned with ``output_attentions=True`` (needs
        ``attn_implementation="eager"``).
    """

    loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
