"""Configuration of :class:`~wav2brain.modeling.Wav2Vec2ForBrainEncoding`."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Wav2Vec2Config

HEADS = ("conv", "linear", "mean")
LOSSES = ("mse", "correlation", "mse+correlation")
LAYER_AGGREGATIONS = ("weighted_sum", "last")

# Backbone settings this model needs whatever a plain wav2vec2 checkpoint says: no layer dropping and
# no time masking, so hidden states are a stable function of the audio during brain training.
BRAIN_BACKBONE_OVERRIDES: dict[str, Any] = {"layerdrop": 0.0, "mask_time_prob": 0.0}


@strict
class Wav2Vec2BrainEncodingConfig(Wav2Vec2Config):
    r"""Configuration of a wav2vec 2.0 backbone with a neural-encoding (fMRI) head.

    Every field of :class:`transformers.Wav2Vec2Config` is accepted and configures the backbone;
    the fields below configure the brain-encoding head. Defaults follow Li et al. (2024),
    "Refining self-supervised learnt speech representation using brain activations": n = 6 TRs of
    history at TR = 1.5 s (9 s of audio), an L2-regularised MSE, and a learned softmax-weighted sum of
    all hidden states (as SUPERB does).

    Parameters
    ----------
    num_voxels : int, optional
        Output size (voxels) of a single-subject model. With ``subject_voxels`` it is derived as the
        largest subject's voxel count, and if given it must equal that count.
    subject_voxels : dict[str, int], optional
        Subject id -> voxel count: one shared body and one output head per subject.
    subjects : list[str], optional
        Order of the subjects; ``subject_ids`` passed to ``forward`` index into it. Defaults to the
        insertion order of ``subject_voxels`` (stored explicitly because JSON serialisation sorts keys).
    tr : float
        Repetition time of the scanner (seconds).
    history_trs : int
        Number of TR bins in the input window (TRs); the window is ``history_trs * tr`` seconds of
        audio ending at the predicted TR.
    sampling_rate : int
        Audio sampling rate (Hz) of ``input_values``.
    layer_aggregation : str or int
        ``"weighted_sum"`` (softmax-normalised learned weights over the embedding output and every
        transformer layer), ``"last"`` (last hidden state), or an index into the hidden states
        (0 = embedding output, ``num_hidden_layers`` = last layer; negative indices count from the end).
    head : str
        ``"conv"``: a temporal convolution over the TR bins (``head_hidden_size`` channels,
        ``head_kernel_size`` TRs, no padding), GELU, flatten, then a linear map to voxels.
        ``"linear"``: a per-bin linear projection to ``head_hidden_size`` units, flatten, linear map to
        voxels (the whole head is linear). ``"mean"``: mean over the non-empty bins, linear map to voxels.
    head_hidden_size : int
        Channels of the convolution / units of the projection in the head.
    head_kernel_size : int
        Kernel size (TRs) of the ``"conv"`` head; at most ``history_trs``.
    loss : str
        ``"mse"``, ``"correlation"`` (1 - mean voxelwise Pearson r across the examples of a subject in
        the batch), or ``"mse+correlation"`` (MSE + ``correlation_loss_weight`` * (1 - r)).
    correlation_loss_weight : float
        Weight of the correlation term in ``"mse+correlation"``.
    head_l2 : float
        Coefficient of the L2 penalty ``head_l2 * sum(w ** 2)`` over the head's weight matrices
        (biases and layer weights excluded). The paper uses an L2-regularised MSE without a coefficient in
        the text we follow; 1e-5 keeps the penalty small next to an MSE of z-scored BOLD (about 1).
    backbone_l2_sp : float
        Coefficient of the L2-SP penalty ``backbone_l2_sp * sum((w - w0) ** 2)`` pulling trainable
        backbone weights towards their starting values ``w0``; 0 disables it.
    layerdrop, mask_time_prob : float
        Backbone settings; 0 by default for this model (a plain wav2vec2 checkpoint's values are replaced
        by 0 when it is loaded into this class, unless given explicitly).
    """

    model_type = "wav2vec2-brain-encoding"

    num_voxels: int | None = None
    subject_voxels: dict[str, int] | None = None
    subjects: list[str] | None = None
    tr: float | int = 1.5
    history_trs: int = 6
    sampling_rate: int = 16000
    layer_aggregation: str | int = "weighted_sum"
    head: str = "conv"
    head_hidden_size: int = 256
    head_kernel_size: int = 3
    loss: str = "mse"
    correlation_loss_weight: float | int = 1.0
    head_l2: float | int = 1e-5
    backbone_l2_sp: float | int = 0.0
    layerdrop: float | int = 0.0
    mask_time_prob: float | int = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_voxels()
        self._check_window()
        self._check_head()

    def _check_voxels(self) -> None:
        if self.num_voxels is not None and self.num_voxels < 1:
            raise ValueError(f"num_voxels must be a positive voxel count, got {self.num_voxels}")
        if self.subject_voxels is None:
            if self.subjects is not None:
                raise ValueError(f"subjects={self.subjects} given without subject_voxels")
            return
        if not self.subject_voxels:
            raise ValueError(
                "subject_voxels is empty: expected a mapping subject id -> voxel count"
            )
        bad = {s: v for s, v in self.subject_voxels.items() if v < 1}
        if bad:
            raise ValueError(
                f"subject_voxels must map subjects to positive voxel counts, got {bad}"
            )
        if self.subjects is None:
            self.subjects = list(self.subject_voxels)
        if len(set(self.subjects)) != len(self.subjects) or set(self.subjects) != set(
            self.subject_voxels
        ):
            raise ValueError(
                f"subjects={self.subjects} must list each key of subject_voxels "
                f"({sorted(self.subject_voxels)}) exactly once"
            )
        largest = max(self.subject_voxels.values())
        if self.num_voxels is not None and self.num_voxels != largest:
            raise ValueError(
                f"num_voxels={self.num_voxels} disagrees with subject_voxels, whose largest count is "
                f"{largest}; give one of them (num_voxels is derived from subject_voxels)"
            )
        self.num_voxels = largest

    def _check_window(self) -> None:
        if not (math.isfinite(self.tr) and self.tr > 0):
            raise ValueError(f"tr must be a positive number of seconds, got {self.tr}")
        if self.history_trs < 1:
            raise ValueError(f"history_trs must be at least 1 TR, got {self.history_trs}")
        if self.sampling_rate < 1:
            raise ValueError(
                f"sampling_rate must be a positive rate in Hz, got {self.sampling_rate}"
            )

    def _check_head(self) -> None:
        n_states = self.num_hidden_layers + 1
        aggregation = self.layer_aggregation
        if isinstance(aggregation, str) and aggregation not in LAYER_AGGREGATIONS:
            raise ValueError(
                f"layer_aggregation={aggregation!r}: expected one of {LAYER_AGGREGATIONS} or an int"
            )
        if isinstance(aggregation, int) and not -n_states <= aggregation < n_states:
            raise ValueError(
                f"layer_aggregation={aggregation} is out of range for {n_states} hidden states "
                f"(embedding output + {self.num_hidden_layers} layers)"
            )
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: expected one of {HEADS}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: expected one of {LOSSES}")
        if self.head_hidden_size < 1:
            raise ValueError(f"head_hidden_size must be positive, got {self.head_hidden_size}")
        if not 1 <= self.head_kernel_size <= self.history_trs:
            raise ValueError(
                f"head_kernel_size={self.head_kernel_size} TRs must lie in [1, history_trs="
                f"{self.history_trs}]"
            )
        for name in ("head_l2", "backbone_l2_sp", "correlation_loss_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def subject_voxel_counts(self) -> list[int]:
        """Voxel count of each output head, in ``subjects`` order (one entry without subjects)."""
        if self.subject_voxels is None:
            return [self.num_voxels] if self.num_voxels is not None else []
        return [self.subject_voxels[s] for s in self.subjects]

    @property
    def window_samples(self) -> float:
        """Length of the input window, ``history_trs * tr`` (samples, possibly fractional)."""
        return self.history_trs * self.tr * self.sampling_rate

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """Build the config from a dict, converting a plain ``wav2vec2`` config when needed.

        Keyword arguments that are fields of this config are applied before validation (so
        ``from_pretrained(plain_checkpoint, num_voxels=5085)`` works). A dict of another model type
        (a plain wav2vec2 checkpoint) gets :data:`BRAIN_BACKBONE_OVERRIDES` unless those are given;
        transformers then logs that a ``wav2vec2`` checkpoint instantiates this model type, which is
        expected: the checkpoint holds the backbone, and only the head is initialised.
        """
        config_dict = dict(config_dict)
        if config_dict.get("model_type", cls.model_type) != cls.model_type:
            config_dict.update(BRAIN_BACKBONE_OVERRIDES)
            config_dict.pop("architectures", None)
        config_dict.pop("model_type", None)
        field_names = {f.name for f in fields(cls)}
        for key in [k for k in kwargs if k in field_names]:
            config_dict[key] = kwargs.pop(key)
        return super().from_dict(config_dict, **kwargs)


__all__ = ["Wav2Vec2BrainEncodingConfig"]
