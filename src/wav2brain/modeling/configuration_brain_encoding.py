"""Configuration of :class:`~wav2brain.modeling.Wav2Vec2ForBrainEncoding`."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Wav2Vec2Config

HEADS = ("conv", "linear", "mean")
LOSSES = ("mse", "correlation", "mse+correlation")
LAYER_AGGREGATIONS = ("weighted_sum", "last")

# Backbone settings this model needs whatever a plain wav2vec2 checkpoint says: no layer dropping and
# no time masking, so hidden states are a stable function of the audio during brain training.
BRAIN_BACKBONE_OVERRIDES: dict[str, Any] = {"layerdrop": 0.0, "mask_time_prob": 0.0}

DEFAULT_HEAD_KERNEL_SIZE = 3
"""Kernel (TRs) of the ``"conv"`` head when ``head_kernel_size`` is not given, clamped to the history."""

FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
"""Where a checkpoint keeps its feature-extractor settings (``do_normalize`` among them)."""

HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")
"""``from_pretrained`` keywords that locate a checkpoint's files (passed on to read its extractor)."""

PLAIN_CHECKPOINT_WARNING = "You are using a model of type `"
"""Start of transformers' warning that a config of another model type (a plain wav2vec2
checkpoint, which this model is built from by design) instantiates this one."""


class _DropMessages(logging.Filter):
    """Drops the records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextmanager
def dropped_messages(logger_name: str, *fragments: str) -> Iterator[None]:
    """Within the block, records of ``logger_name`` containing a fragment are not emitted."""
    target = logging.getLogger(logger_name)
    dropper = _DropMessages(fragments)
    target.addFilter(dropper)
    try:
        yield
    finally:
        target.removeFilter(dropper)


def checkpoint_do_normalize(
    pretrained_model_name_or_path: str | os.PathLike, subfolder: str = "", **hub_kwargs: Any
) -> bool | None:
    """``do_normalize`` of a checkpoint's feature extractor, or None when it has no extractor file.

    Reads ``preprocessor_config.json`` next to the checkpoint's ``config.json`` (a local folder, or
    a Hub repository through transformers' cache, with the ``from_pretrained`` keywords
    ``cache_dir``, ``revision``, ``token``, ``local_files_only``, ...). Checkpoints pretrained on
    zero-mean, unit-variance audio (the lv60 family) say ``true`` there; fairseq's wav2vec2-base
    says ``false``.

    Raises
    ------
    ValueError
        When the file is not JSON or its ``do_normalize`` is not a boolean.
    """
    from transformers.utils import cached_file

    if os.path.isfile(pretrained_model_name_or_path):
        return None  # a config.json given as a file: no folder to look in
    path = cached_file(
        str(pretrained_model_name_or_path),
        FEATURE_EXTRACTOR_FILE,
        subfolder=subfolder,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )
    if path is None:
        return None
    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable feature-extractor config ({error})") from error
    value = settings.get("do_normalize") if isinstance(settings, dict) else None
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"{path}: do_normalize must be true or false, got {value!r}")
    return value


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
    head_kernel_size : int, optional
        Kernel size (TRs) of the ``"conv"`` head, at most ``history_trs``. Not given, it is
        ``min(3, history_trs)``: 3 TRs (4.5 s at TR 1.5 s, about the rise of the haemodynamic
        response) clamped to the history, so every ``history_trs`` from 1 TR up builds with the
        default head (the refinement paper sweeps the history down to one TR). The resolved value is
        stored, so ``config.head_kernel_size`` is always an int.
    readout_rank : int, optional
        Low-rank readout: a shared ``Linear(head_features, readout_rank)`` (no bias) followed by one
        ``Linear(readout_rank, V)`` per subject, instead of one ``Linear(head_features, V)`` per
        subject. At whole-brain size (100,000 voxels) the full readout of the default conv head is
        about 100 M parameters per subject, more than the backbone; rank 256 cuts it about 4-fold and
        shares the projection between subjects. Must lie below :attr:`head_features` (otherwise the
        factorisation saves nothing); ``None`` (default) keeps the full readout.
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
    do_normalize : bool
        The backbone expects zero-mean, unit-variance audio (as ``Wav2Vec2FeatureExtractor``'s
        ``do_normalize``). Converting a plain wav2vec2 checkpoint reads it from the checkpoint's
        ``preprocessor_config.json`` when there is one (``True`` for the lv60 family); a keyword
        (``from_pretrained(path, do_normalize=False)``) wins. ``BrainWindows`` normalises each
        window, feature extraction each whole stimulus, and :meth:`save_backbone` writes it into
        the exported feature-extractor config. The model's ``forward`` never normalises
        (preprocessing belongs to the data pipeline, as in transformers).
    layerdrop, mask_time_prob : float
        Backbone settings; 0 by default for this model (a plain wav2vec2 checkpoint's values are replaced
        by 0 when it is loaded into this class, unless given explicitly).
    """

    model_type = "wav2vec2-brain-encoding"
    # What the Trainer leaves out of EvalPrediction.predictions / predict(): with
    # output_hidden_states or output_attentions on, those tuples (every frame of every layer) would
    # otherwise be gathered over the whole evaluation set; predictions alone come back.
    keys_to_ignore_at_inference = ["hidden_states", "attentions"]

    num_voxels: int | None = None
    subject_voxels: dict[str, int] | None = None
    subjects: list[str] | None = None
    tr: float | int = 1.5
    history_trs: int = 6
    sampling_rate: int = 16000
    layer_aggregation: str | int = "weighted_sum"
    head: str = "conv"
    head_hidden_size: int = 256
    head_kernel_size: int | None = None
    readout_rank: int | None = None
    loss: str = "mse"
    correlation_loss_weight: float | int = 1.0
    head_l2: float | int = 1e-5
    backbone_l2_sp: float | int = 0.0
    do_normalize: bool = False
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
        if self.head_kernel_size is None:
            self.head_kernel_size = min(DEFAULT_HEAD_KERNEL_SIZE, self.history_trs)
        if not 1 <= self.head_kernel_size <= self.history_trs:
            raise ValueError(
                f"head_kernel_size={self.head_kernel_size} TRs must lie in [1, history_trs="
                f"{self.history_trs}]"
            )
        if self.readout_rank is not None and not 1 <= self.readout_rank < self.head_features:
            raise ValueError(
                f"readout_rank={self.readout_rank} must lie in [1, {self.head_features}): the "
                f"{self.head!r} head gives {self.head_features} features, and a rank that is not "
                "below them saves nothing over the full readout (readout_rank=None)"
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
    def head_features(self) -> int:
        """Features the head's shared body gives its readout (per example).

        ``"conv"``: ``head_hidden_size * (history_trs - head_kernel_size + 1)``; ``"linear"``:
        ``head_hidden_size * history_trs``; ``"mean"``: ``hidden_size``.
        """
        if self.head == "conv":
            return self.head_hidden_size * (self.history_trs - self.head_kernel_size + 1)
        if self.head == "linear":
            return self.head_hidden_size * self.history_trs
        return self.hidden_size

    @property
    def window_samples(self) -> float:
        """Length of the input window, ``history_trs * tr`` (samples, possibly fractional)."""
        return self.history_trs * self.tr * self.sampling_rate

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """transformers' ``from_pretrained``, without its warning for a plain wav2vec2 config:
        building this config from one is what :meth:`from_dict` is for."""
        with dropped_messages("transformers.configuration_utils", PLAIN_CHECKPOINT_WARNING):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """Build the config from a dict, converting a plain ``wav2vec2`` config when needed.

        Keyword arguments that are fields of this config are applied before validation (so
        ``from_pretrained(plain_checkpoint, num_voxels=5085)`` works). A dict of another model type
        (a plain wav2vec2 checkpoint) gets :data:`BRAIN_BACKBONE_OVERRIDES` unless those are given
        (and, through :meth:`get_config_dict`, the checkpoint's ``do_normalize``): the checkpoint
        holds the backbone, and only the head is initialised.
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

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The checkpoint's config dict; a plain wav2vec2 one also gets its extractor's ``do_normalize``.

        A plain checkpoint keeps ``do_normalize`` in ``preprocessor_config.json``, not in its model
        config (:func:`checkpoint_do_normalize`); it is copied into the dict unless the dict already
        has it. A ``do_normalize=`` keyword still wins (:meth:`from_dict`).
        """
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        subfolder = kwargs.get("subfolder", "")
        config_dict, unused = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        plain = config_dict.get("model_type", cls.model_type) != cls.model_type
        if config_dict and plain and "do_normalize" not in config_dict:
            normalize = checkpoint_do_normalize(
                pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs
            )
            if normalize is not None:
                config_dict["do_normalize"] = normalize
        return config_dict, unused


__all__ = ["Wav2Vec2BrainEncodingConfig", "checkpoint_do_normalize"]
