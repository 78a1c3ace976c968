"""LoRA adapters on the transformer of a brain-encoding model (peft), and their merge.

The adapters are injected into ``model.wav2vec2`` in place (``peft.inject_adapter_in_model``), so
the model stays a ``Wav2Vec2ForBrainEncoding``: the ``Trainer`` saves and resumes it like any
model, and the head and layer weights, outside the adapted backbone, train and are saved in full
(what peft's ``modules_to_save`` does for a wrapped model). peft marks only the adapters of the
backbone trainable. wav2vec2 has no default LoRA targets in peft: the attention projections
``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` are named.

L2-SP and LoRA: the backbone's own weights stay frozen at their starting values, so the L2-SP
penalty (over trainable backbone weights with a reference) is inactive; the change of each
adapted weight is limited by the rank instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def add_lora(
    model: Any,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
) -> Any:
    """Inject LoRA adapters into ``model.wav2vec2``; return ``model``.

    Raises
    ------
    ValueError
        A rank below 1, or target modules that match nothing in the backbone.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"lora_rank must be at least 1, got {rank}")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.wav2vec2.named_modules()}
    missing = sorted(set(target_modules) - names)
    if missing:
        raise ValueError(
            f"lora_target_modules {missing} match no module of the backbone (wav2vec2 attention "
            "projections are q_proj, k_proj, v_proj, out_proj)"
        )
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
    )
    inject_adapter_in_model(config, model.wav2vec2)
    return model


def has_lora(model: Any) -> bool:
    """Whether ``model`` holds LoRA layers."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(module, LoraLayer) for module in model.modules())


def merge_lora(model: Any) -> Any:
    """Merge every LoRA layer into its base weight and put the plain layer back; return ``model``.

    The result has exactly the parameter names of a model without adapters, so it saves and
    reloads as a plain ``Wav2Vec2ForBrainEncoding``.
    """
    from peft.tuners.lora import LoraLayer

    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    return model
