"""Which tensor of which layer is an artificial neuron, and the forward hooks that read it.

Three tensors are offered, all per transformer layer ``k`` (1-based, as in the literature and as
``output_hidden_states`` indexes them):

``"hidden_states"``
    The layer's output, ``hidden_states[k]`` of transformers (the default; the units of
    Zhou et al. 2023). Layer 0, the first layer's input (``hidden_states[0]``: projected features
    plus positional convolution, layer-normed in post-norm models), is also addressable. For stable-layer-norm models (``do_stable_layer_norm``) the last layer's output is
    taken before the encoder's final layer norm, as transformers' ``hidden_states[-1]`` is.
``"attention_output"``
    The multi-head self-attention output of the layer (after ``out_proj``, before the residual sum
    and the feed-forward block): what the heads write into the residual stream.
``"ffn_intermediate"``
    The feed-forward intermediate after its activation (``intermediate_size`` units, 3,072 in
    wav2vec2-base).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

TENSORS = ("hidden_states", "attention_output", "ffn_intermediate")

BACKBONE_CLASSES = ("Wav2Vec2Model", "HubertModel", "WavLMModel", "Data2VecAudioModel")


def _is_backbone(module: Any) -> bool:
    """Whether ``module`` is (a subclass of) one of the supported transformers backbones.

    Checked on the class hierarchy by name and module, so that the modeling files need not be
    imported to answer.
    """
    return any(
        cls.__name__ in BACKBONE_CLASSES and cls.__module__.startswith("transformers.models.")
        for cls in type(module).__mro__
    )


def resolve_backbone(model: Any) -> nn.Module:
    """The wav2vec2-family backbone inside ``model``.

    Accepts the backbones themselves (:data:`BACKBONE_CLASSES`), transformers heads around them
    (``*ForCTC``, ``*ForSequenceClassification``, ... through ``base_model``), and any module whose
    ``wav2vec2`` attribute is one (e.g. ``Wav2Vec2ForBrainEncoding``).

    Raises
    ------
    ValueError
        Naming the class of ``model`` when no such backbone is found.
    """
    for candidate in (model, getattr(model, "base_model", None), getattr(model, "wav2vec2", None)):
        if candidate is not None and _is_backbone(candidate):
            return candidate
    raise ValueError(
        f"{type(model).__name__} is not a wav2vec2-family model: expected one of "
        f"{', '.join(BACKBONE_CLASSES)}, a transformers head around one, or a module with a "
        "`.wav2vec2` backbone"
    )


def layer_name(index: int) -> str:
    """Name of transformer layer ``index`` (1-based; 0 is the transformer input)."""
    return f"layer_{index:02d}"


def check_layers(backbone: nn.Module, tensor: str, layers: Sequence[int] | None) -> list[int]:
    """Validated layer indices (default: every transformer layer, 1 to ``num_hidden_layers``)."""
    if tensor not in TENSORS:
        raise ValueError(f"tensor must be one of {TENSORS}, got {tensor!r}")
    n_layers = len(backbone.encoder.layers)
    lowest = 0 if tensor == "hidden_states" else 1
    if layers is None:
        return list(range(1, n_layers + 1))
    chosen = list(layers)
    bad = [k for k in chosen if not lowest <= k <= n_layers]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"layers must be distinct indices in [{lowest}, {n_layers}] for tensor {tensor!r} "
            f"(1-based transformer layers), got {chosen}"
        )
    return sorted(chosen)


def layer_units(backbone: nn.Module, tensor: str, layers: Sequence[int] | None) -> dict[str, int]:
    """Units per layer name, in layer order: ``hidden_size`` or ``intermediate_size``."""
    config = backbone.config
    units = config.intermediate_size if tensor == "ffn_intermediate" else config.hidden_size
    return {layer_name(k): units for k in check_layers(backbone, tensor, layers)}


def _first_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class Taps:
    """Forward hooks reading one tensor of several layers into per-window float32 blocks.

    Register the hooks with ``with Taps(...) as taps:``; they record only inside
    ``with taps.recording(crops, device):``, which allocates one ``[frames, units]`` float32 block
    per layer and batch row (outside any ``inference_mode``, so the blocks are ordinary tensors the
    caller may modify) and fills :attr:`collected` with the rows ``crops[row]`` of each batch row.
    """

    def __init__(self, backbone: nn.Module, tensor: str, layers: Sequence[int] | None) -> None:
        self.units = layer_units(backbone, tensor, layers)
        self.names = list(self.units)
        self._targets = [
            (layer_name(k), *self._target(backbone, tensor, k))
            for k in check_layers(backbone, tensor, layers)
        ]
        self.collected: dict[str, list[torch.Tensor]] = {}
        self._crops: list[slice] = []
        self._recording = False
        self._handles: list[Any] = []

    @staticmethod
    def _target(backbone: nn.Module, tensor: str, k: int) -> tuple[nn.Module, bool]:
        """The module to hook for layer ``k`` and whether to read its input (pre-hook)."""
        layers = backbone.encoder.layers
        if tensor == "hidden_states":
            return (layers[0], True) if k == 0 else (layers[k - 1], False)
        if tensor == "attention_output":
            return layers[k - 1].attention, False
        activation = layers[k - 1].feed_forward.intermediate_act_fn
        from torch import nn

        if not isinstance(activation, nn.Module):
            raise ValueError(
                f"ffn_intermediate needs the feed-forward activation to be a module, got "
                f"{type(activation).__name__} in layer {k}"
            )
        return activation, False

    def _store(self, name: str) -> Callable[[torch.Tensor], None]:
        def store(value: torch.Tensor) -> None:
            if self._recording:
                for row, (crop, block) in enumerate(
                    zip(self._crops, self.collected[name], strict=True)
                ):
                    block.copy_(value[row, crop])

        return store

    @contextmanager
    def recording(self, crops: Sequence[slice], device: torch.device) -> Iterator[None]:
        """Record the next forward pass, keeping rows ``crops[row]`` of batch row ``row``."""
        import torch

        self._crops = list(crops)
        self.collected = {
            name: [
                torch.empty(crop.stop - crop.start, units, dtype=torch.float32, device=device)
                for crop in self._crops
            ]
            for name, units in self.units.items()
        }
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def __enter__(self) -> Taps:
        for name, module, read_input in self._targets:
            store = self._store(name)
            if read_input:
                handle = module.register_forward_pre_hook(
                    lambda _m, args, kwargs, store=store: store(
                        args[0] if args else kwargs["hidden_states"]
                    ),
                    with_kwargs=True,
                )
            else:
                handle = module.register_forward_hook(
                    lambda _m, _args, output, store=store: store(_first_output(output))
                )
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
