"""wav2vec 2.0 with a neural-encoding head that predicts fMRI responses from the last TRs of audio."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor
from transformers import initialization as init
from transformers.backbone_utils import filter_output_hidden_states
from transformers.modeling_outputs import Wav2Vec2BaseModelOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Model, Wav2Vec2PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_brain_encoding import (
    HUB_KWARGS,
    PLAIN_CHECKPOINT_WARNING,
    Wav2Vec2BrainEncodingConfig,
    dropped_messages,
)
from .heads import BrainEncodingHead
from .losses import encoding_loss, voxel_mask
from .outputs import BrainEncodingOutput
from .tr_pooling import receptive_field, tr_bin_weights

logger = logging.getLogger(__name__)

NEW_PARAMETERS = ("head.", "layer_weight_logits", "l2_sp_reference.")
"""Parameters a plain wav2vec2 checkpoint cannot hold: the brain-encoding head, the layer
weights and the L2-SP reference (prefixes of their names)."""


def _buffer_name(parameter_name: str) -> str:
    """Buffer name of a backbone parameter in the L2-SP reference (buffer names have no dots)."""
    return parameter_name.replace(".", "__")


class Wav2Vec2ForBrainEncoding(Wav2Vec2PreTrainedModel):
    """wav2vec 2.0 backbone, layer aggregation, TR pooling and a per-subject voxel head.

    Audio ``[B, samples]`` (16 kHz) -> backbone hidden states -> layer aggregation (softmax-weighted sum
    of all hidden states by default) -> frames averaged into ``history_trs`` TR bins ending at each
    example's last valid sample (see :mod:`wav2brain.modeling.tr_pooling`) -> head -> predictions
    ``[B, voxels]``. The backbone lives in ``self.wav2vec2`` (``base_model_prefix``), so a plain wav2vec2
    checkpoint loads into it and only the head is initialised (the pretraining-only quantiser,
    projections and, with ``mask_time_prob=0``, ``masked_spec_embed`` are left out).

    Padded batches: TR pooling follows each example's own length, and ``attention_mask`` is passed to
    the backbone. With a layer-norm front end a padded example gives the same predictions as alone;
    with wav2vec2-base's group-norm front end the first convolution normalises over the padded length,
    so a padded example differs slightly from the same example alone (batch examples of equal
    length, e.g. ``WindowConfig(full_windows_only=True)``, to avoid any difference).

    Mixed subjects in a batch are allowed: predictions are ``[B, V]`` with ``V`` the largest voxel
    count among the batch's subjects; labels are that wide or padded further, up to
    ``config.num_voxels``. Each example's loss uses only its subject's own first voxels, so labels
    may hold any value (NaN included) beyond them.

    transformers conformance: ``output_hidden_states``, ``output_attentions`` and ``return_dict``
    follow the keyword, else the config, as in ``Wav2Vec2ForSequenceClassification`` (the same
    ``can_return_tuple`` and ``filter_output_hidden_states`` decorators); the Trainer's
    ``predict`` returns the predictions alone (``config.keys_to_ignore_at_inference``).

    The L2-SP reference (``backbone_l2_sp > 0``) is a copy of the backbone weights taken at the first
    training forward with labels (or by :meth:`set_l2_sp_reference`); it is kept in non-persistent
    buffers, so checkpoints hold only the current weights.
    """

    config_class = Wav2Vec2BrainEncodingConfig
    config: Wav2Vec2BrainEncodingConfig
    # The loss is a mean over each subject's own voxels, never a sum to be divided by the Trainer's
    # num_items_in_batch (a token count): the Trainer must scale it for gradient accumulation itself
    # and pass no num_items_in_batch, which it infers from ``**kwargs`` in forward without this.
    accepts_loss_kwargs = False

    def __init__(self, config: Wav2Vec2BrainEncodingConfig) -> None:
        super().__init__(config)
        if not config.subject_voxel_counts:
            raise ValueError(
                "Wav2Vec2ForBrainEncoding needs an output size: pass num_voxels=<int> or "
                "subject_voxels={subject: count} (e.g. from_pretrained(path, num_voxels=5085))"
            )
        if config.add_adapter:
            raise ValueError("Brain encoding does not support wav2vec2 adapters (add_adapter=True)")
        self.wav2vec2 = Wav2Vec2Model(config)
        if config.layer_aggregation == "weighted_sum":
            self.layer_weight_logits = nn.Parameter(torch.zeros(config.num_hidden_layers + 1))
        self.head = BrainEncodingHead(config)
        self.l2_sp_reference: nn.Module | None = None
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' ``from_pretrained``; from a plain wav2vec2 checkpoint, one info line.

        A plain checkpoint holds the backbone only, so the head and layer weights are new by
        design: instead of transformers' warnings (another model type, a load report of missing
        and unused keys) one info line names what was initialised and how many checkpoint
        tensors went unused (a pretraining quantizer, a CTC head); a missing *backbone* weight
        stays a warning, naming the tensors. A brain-encoding checkpoint loads unchanged.
        """
        from transformers import PretrainedConfig

        hub_kwargs = {key: kwargs[key] for key in (*HUB_KWARGS, "subfolder") if key in kwargs}
        try:
            source, _ = PretrainedConfig.get_config_dict(
                pretrained_model_name_or_path, **hub_kwargs
            )
        except (OSError, ValueError):  # transformers' own error follows
            source = {}
        if source.get("model_type", cls.config_class.model_type) == cls.config_class.model_type:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        wanted = kwargs.pop("output_loading_info", False)
        with (
            dropped_messages("transformers.configuration_utils", PLAIN_CHECKPOINT_WARNING),
            dropped_messages("transformers.modeling_utils", "LOAD REPORT"),
        ):
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        missing = sorted(info["missing_keys"])
        backbone = [key for key in missing if not key.startswith(NEW_PARAMETERS)]
        if backbone:
            logger.warning(
                "%s: %d backbone weights are not in the checkpoint and were initialised at "
                "random: %s",
                pretrained_model_name_or_path,
                len(backbone),
                backbone[:8],
            )
        logger.info(
            "%s is a plain %s checkpoint: the brain-encoding head and layer weights are new "
            "(%d tensors); %d checkpoint tensors are not used",
            pretrained_model_name_or_path,
            source.get("model_type"),
            len(missing) - len(backbone),
            len(info["unexpected_keys"]),
        )
        return (model, info) if wanted else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise as wav2vec2 does; layer weights start uniform (zero logits)."""
        super()._init_weights(module)
        if isinstance(module, Wav2Vec2ForBrainEncoding) and hasattr(module, "layer_weight_logits"):
            init.zeros_(module.layer_weight_logits)

    @property
    def layer_weights(self) -> torch.Tensor:
        """Normalised weight of each hidden state (embedding output first), detached, ``[L + 1]``.

        Softmax of the learned logits for ``"weighted_sum"``; one-hot for ``"last"`` or an index.
        """
        n_states = self.config.num_hidden_layers + 1
        if self.config.layer_aggregation == "weighted_sum":
            return torch.softmax(self.layer_weight_logits.detach(), dim=-1)
        index = -1 if self.config.layer_aggregation == "last" else self.config.layer_aggregation
        weights = torch.zeros(n_states, device=self.device)
        weights[index] = 1.0
        return weights

    def voxel_counts(self, device: torch.device | None = None) -> torch.Tensor:
        """Voxel count of each head ``[S]`` (long), in ``config.subjects`` order."""
        return torch.tensor(self.config.subject_voxel_counts, device=device)

    def freeze_feature_encoder(self) -> None:
        """Stop gradients to the convolutional feature encoder."""
        self.wav2vec2.feature_extractor._freeze_parameters()

    def freeze_backbone(self) -> None:
        """Stop gradients to the whole backbone; only layer weights and head train (stage 1)."""
        for param in self.wav2vec2.parameters():
            param.requires_grad = False
        self.wav2vec2.feature_extractor._requires_grad = False

    def unfreeze_backbone(self, feature_encoder: bool = False) -> None:
        """Let gradients reach the backbone (stage 2).

        Parameters
        ----------
        feature_encoder : bool
            Also unfreeze the convolutional feature encoder; by default its state is left unchanged,
            as wav2vec2 fine-tuning usually keeps it frozen.
        """
        for name, param in self.wav2vec2.named_parameters():
            if feature_encoder or not name.startswith("feature_extractor."):
                param.requires_grad = True
        if feature_encoder:
            self.wav2vec2.feature_extractor._requires_grad = True

    @torch.no_grad()
    def set_l2_sp_reference(self) -> None:
        """Take the current backbone weights as the L2-SP reference (non-persistent buffers).

        Call it right after loading the starting checkpoint to fix the reference explicitly; parameters
        added later (e.g. LoRA adapters) have no reference and are not penalised.
        """
        reference = nn.Module()
        for name, param in self.wav2vec2.named_parameters():
            reference.register_buffer(_buffer_name(name), param.detach().clone(), persistent=False)
        self.l2_sp_reference = reference

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        subject_ids: torch.Tensor | None = None,
        pooled_hidden_states: torch.Tensor | None = None,
        valid_bins: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BrainEncodingOutput | tuple:
        r"""Predict BOLD at the TR that ends each audio window.

        Parameters
        ----------
        input_values : torch.FloatTensor
            ``[B, samples]`` audio at ``config.sampling_rate`` (Hz), right-padded.
        attention_mask : torch.Tensor, optional
            ``[B, samples]``, 1 on the valid samples (a prefix of each row), 0 on padding.
        labels : torch.FloatTensor, optional
            ``[B, W]`` measured BOLD, with ``W`` from the largest voxel count among the batch's
            subjects up to ``config.num_voxels``: a collator may pad every batch to the widest
            subject of the model. Each example's loss uses only its subject's own first voxels, so
            the columns beyond them are padding (any value, NaN included) and are never scored.
        subject_ids : torch.LongTensor, optional
            ``[B]`` indices into ``config.subjects``; may be omitted with a single head.
        pooled_hidden_states : torch.FloatTensor, optional
            ``[B, num_hidden_layers + 1, history_trs, hidden_size]``: every hidden state already
            TR-pooled (:meth:`pool_hidden_states`, e.g. read from a cache of a frozen backbone),
            given instead of ``input_values``; the backbone is skipped, and the layer aggregation
            and head run on them. With the backbone in eval mode this is exactly the audio path
            (the cached stage 1 of :mod:`wav2brain.training`).
        valid_bins : torch.BoolTensor, optional
            ``[B, history_trs]`` which bins held audio; required with ``pooled_hidden_states``.
        output_hidden_states, output_attentions, return_dict : bool, optional
            As in every transformers model: a keyword wins, otherwise ``config.output_hidden_states``,
            ``config.output_attentions`` and ``config.return_dict`` (``use_return_dict``) apply
            (attention weights need ``attn_implementation="eager"``). As with
            ``Wav2Vec2ForSequenceClassification``'s ``filter_output_hidden_states``, the backbone
            is always asked for every hidden state (the layer aggregation reads them) and they are
            returned only when asked for; an index selection (``output_hidden_states=[-1]``)
            returns only those.

        Returns
        -------
        BrainEncodingOutput or tuple
            ``loss`` (with ``labels``), ``predictions`` ``[B, V]`` (``V``: the largest voxel count
            among the batch's subjects), ``hidden_states`` and ``attentions`` when asked for; as a
            tuple of the fields that are not None with ``return_dict=False``.
        """
        if kwargs.pop("num_items_in_batch", None) is not None:
            raise ValueError(
                "num_items_in_batch is not supported: the loss is a mean over each subject's own "
                "voxels (accepts_loss_kwargs=False tells the Trainer so)"
            )
        hidden_states = attentions = None
        if pooled_hidden_states is not None:
            if input_values is not None or attention_mask is not None:
                raise ValueError(
                    "give either input_values (audio) or pooled_hidden_states (pooled layers), "
                    "not both"
                )
            subject_ids = self._check_pooled(pooled_hidden_states, valid_bins, subject_ids)
        else:
            if input_values is None:
                raise ValueError(
                    "forward needs input_values [batch, samples] (or pooled_hidden_states)"
                )
            subject_ids, lengths = self._check_inputs(input_values, attention_mask, subject_ids)
        counts = self.voxel_counts(subject_ids.device)
        width = int(counts[torch.unique(subject_ids)].max())
        if labels is not None:
            labels = self._check_labels(labels, subject_ids, counts, width)
        if pooled_hidden_states is None:
            # return_dict=True: the backbone shares this config, whose return_dict=False is for callers
            outputs = self.wav2vec2(
                input_values, attention_mask=attention_mask, return_dict=True, **kwargs
            )
            hidden_states, attentions = outputs.hidden_states, outputs.attentions
            pooled, valid_bins = self.pool_trs(outputs, lengths)
        else:
            pooled = self.aggregate_layers(pooled_hidden_states.transpose(0, 1))
        predictions = self.head(pooled, valid_bins, subject_ids)

        loss = None
        if labels is not None:
            mask = voxel_mask(subject_ids, counts, width)
            labels = torch.where(mask, labels, torch.zeros_like(labels)).to(predictions.dtype)
            loss = (
                encoding_loss(
                    self.config.loss,
                    predictions,
                    labels,
                    mask,
                    subject_ids,
                    self.config.correlation_loss_weight,
                )
                + self._penalty()
            )

        return BrainEncodingOutput(
            loss=loss,
            predictions=predictions,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    def pool_trs(
        self, outputs: Wav2Vec2BaseModelOutput, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregate the layers and average the frames of each TR bin.

        Parameters
        ----------
        outputs : Wav2Vec2BaseModelOutput
            Backbone output with ``hidden_states`` (``forward`` always asks the backbone for them).
        lengths : torch.Tensor
            ``[B]`` valid audio length of each example (samples).

        Returns
        -------
        pooled : torch.Tensor
            ``[B, history_trs, hidden_size]``, zeros in empty bins.
        valid_bins : torch.Tensor
            ``[B, history_trs]`` bool, False for empty bins.
        """
        aggregation = self.config.layer_aggregation
        if aggregation == "weighted_sum":
            # pooling and the layer sum are both linear: pool each layer first (small tensors)
            pooled_layers, valid_bins = self.pool_hidden_states(outputs.hidden_states, lengths)
            return self.aggregate_layers(pooled_layers), valid_bins
        states = (
            outputs.last_hidden_state
            if aggregation == "last"
            else outputs.hidden_states[aggregation]
        )
        pooled, valid_bins = self.pool_hidden_states((states,), lengths)
        return pooled[0], valid_bins

    def pool_hidden_states(
        self, hidden_states: tuple[torch.Tensor, ...], lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average the frames of each TR bin in every given hidden state.

        Parameters
        ----------
        hidden_states : tuple of torch.Tensor
            ``[B, frames, hidden_size]`` each (all the backbone's hidden states, or a selection).
        lengths : torch.Tensor
            ``[B]`` valid audio length of each example (samples).

        Returns
        -------
        pooled_layers : torch.Tensor
            ``[len(hidden_states), B, history_trs, hidden_size]``, zeros in empty bins.
        valid_bins : torch.Tensor
            ``[B, history_trs]`` bool, False for empty bins.
        """
        stride, field = receptive_field(self.config.conv_kernel, self.config.conv_stride)
        frames = hidden_states[0]
        bin_weights, valid_bins = tr_bin_weights(
            lengths,
            frames.shape[1],
            tr=self.config.tr,
            history_trs=self.config.history_trs,
            sampling_rate=self.config.sampling_rate,
            frame_stride=stride,
            frame_field=field,
        )
        bin_weights = bin_weights.to(frames.dtype)
        return torch.stack([torch.bmm(bin_weights, h) for h in hidden_states]), valid_bins

    def aggregate_layers(self, pooled_layers: torch.Tensor) -> torch.Tensor:
        """The layer aggregation of TR-pooled hidden states ``[L + 1, B, H, D]`` -> ``[B, H, D]``."""
        aggregation = self.config.layer_aggregation
        if aggregation == "weighted_sum":
            weights = torch.softmax(self.layer_weight_logits, dim=-1).to(pooled_layers.dtype)
            return torch.einsum("l,lbhd->bhd", weights, pooled_layers)
        return pooled_layers[-1 if aggregation == "last" else aggregation]

    def _check_pooled(
        self,
        pooled_hidden_states: torch.Tensor,
        valid_bins: torch.Tensor | None,
        subject_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Validate pooled inputs; return ``subject_ids`` [B]."""
        config = self.config
        expected = (config.num_hidden_layers + 1, config.history_trs, config.hidden_size)
        if (
            pooled_hidden_states.ndim != 4
            or tuple(pooled_hidden_states.shape[1:]) != expected
            or not pooled_hidden_states.is_floating_point()
        ):
            raise ValueError(
                "pooled_hidden_states must be a float tensor [batch, layers + 1, history_trs, "
                f"hidden_size] = [batch, {', '.join(map(str, expected))}], got "
                f"{pooled_hidden_states.dtype} of shape {tuple(pooled_hidden_states.shape)}"
            )
        batch = pooled_hidden_states.shape[0]
        if valid_bins is None or tuple(valid_bins.shape) != (batch, config.history_trs):
            shape = None if valid_bins is None else tuple(valid_bins.shape)
            raise ValueError(
                f"valid_bins [batch, history_trs] = [{batch}, {config.history_trs}] is required "
                f"with pooled_hidden_states, got {shape}"
            )
        return self._check_subjects(subject_ids, batch, pooled_hidden_states.device)

    def _penalty(self) -> torch.Tensor:
        """``head_l2 * sum(head weights ** 2)`` plus, in training, the backbone L2-SP term."""
        penalty = self.config.head_l2 * sum(w.pow(2).sum() for w in self.head.weight_matrices())
        if self.config.backbone_l2_sp > 0 and self.training:
            if self.l2_sp_reference is None:
                self.set_l2_sp_reference()
            references = dict(self.l2_sp_reference.named_buffers())
            distance = sum(
                (param - references[_buffer_name(name)]).pow(2).sum()
                for name, param in self.wav2vec2.named_parameters()
                if param.requires_grad and _buffer_name(name) in references
            )
            penalty = penalty + self.config.backbone_l2_sp * distance
        return penalty

    def _check_inputs(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        subject_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate audio, mask and subjects; return ``subject_ids`` [B] and lengths [B] (samples)."""
        if input_values.ndim != 2 or not input_values.is_floating_point():
            raise ValueError(
                "input_values must be a float tensor [batch, samples], got "
                f"{input_values.dtype} of shape {tuple(input_values.shape)}"
            )
        batch, n_samples = input_values.shape
        if attention_mask is None:
            lengths = torch.full((batch,), n_samples, device=input_values.device)
        else:
            if attention_mask.shape != input_values.shape:
                raise ValueError(
                    f"attention_mask of shape {tuple(attention_mask.shape)} must match input_values "
                    f"{tuple(input_values.shape)}"
                )
            lengths = attention_mask.sum(dim=-1).long()
            positions = torch.arange(n_samples, device=attention_mask.device)
            if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
                raise ValueError(
                    "attention_mask must be 1 on a prefix of each row and 0 after it (right padding)"
                )
        rate = self.config.sampling_rate
        _, field = receptive_field(self.config.conv_kernel, self.config.conv_stride)
        minimum = max(math.ceil(self.config.tr * rate), field)
        shortest = int(lengths.min())
        if shortest < minimum:
            example = int(lengths.argmin())
            raise ValueError(
                f"audio of example {example} is {shortest} samples ({shortest / rate:.4f} s) long; "
                f"expected at least one TR: {minimum} samples ({self.config.tr} s at {rate} Hz)"
            )
        return self._check_subjects(subject_ids, batch, input_values.device), lengths

    def _check_subjects(
        self, subject_ids: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        """Return valid head indices ``[B]``; default to head 0 for a single-head model."""
        n_heads = len(self.head.readouts)
        if subject_ids is None:
            if n_heads > 1:
                raise ValueError(
                    f"subject_ids [batch] is required: the model has {n_heads} subject heads "
                    f"({self.config.subjects})"
                )
            return torch.zeros(batch, dtype=torch.long, device=device)
        if subject_ids.shape != (batch,) or subject_ids.is_floating_point():
            raise ValueError(
                f"subject_ids must be an integer tensor of shape ({batch},), got {subject_ids.dtype} "
                f"of shape {tuple(subject_ids.shape)}"
            )
        unknown = subject_ids[(subject_ids < 0) | (subject_ids >= n_heads)]
        if unknown.numel():
            known = self.config.subjects or ["<single head>"]
            raise ValueError(
                f"unknown subject_ids {sorted(set(unknown.tolist()))}: expected indices 0..{n_heads - 1} "
                f"into config.subjects {known}"
            )
        return subject_ids.to(device=device, dtype=torch.long)

    def _check_labels(
        self, labels: torch.Tensor, subject_ids: torch.Tensor, counts: torch.Tensor, width: int
    ) -> torch.Tensor:
        """Validate labels ``[B, W]`` (``width <= W <= num_voxels``); return their first ``width`` columns.

        Checks the shape and the finiteness of each subject's own voxels; columns beyond ``width``
        are padding to a wider subject that is not in the batch.
        """
        batch = subject_ids.shape[0]
        widest = self.config.num_voxels
        if labels.ndim != 2 or labels.shape[0] != batch or not width <= labels.shape[1] <= widest:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match the predictions: expected "
                f"({batch}, {width}) (batch, voxels of the largest head among the batch's subjects), "
                f"or padded up to ({batch}, {widest}) (the model's widest head)"
            )
        labels = labels[:, :width]
        mask = voxel_mask(subject_ids, counts, width)
        bad = ~torch.isfinite(labels) & mask
        if bad.any():
            rows, cols = bad.nonzero(as_tuple=True)
            raise ValueError(
                f"labels contain {int(bad.sum())} NaN/inf values, first at example {int(rows[0])}, "
                f"voxel {int(cols[0])}: expected finite BOLD values"
            )
        if "correlation" in self.config.loss and int(torch.bincount(subject_ids).max()) < 2:
            raise ValueError(
                f"loss={self.config.loss!r} needs at least 2 examples of one subject in the batch "
                f"(correlation across examples), got subject_ids {subject_ids.tolist()}"
            )
        return labels

    def backbone_config(self) -> Wav2Vec2Config:
        """A plain :class:`~transformers.Wav2Vec2Config` with this model's backbone settings."""
        plain_fields = {f.name for f in fields(Wav2Vec2Config)}
        brain_only = {f.name for f in fields(type(self.config))} - plain_fields
        values = {k: v for k, v in self.config.to_dict().items() if k not in brain_only}
        values.update(model_type=Wav2Vec2Config.model_type, architectures=["Wav2Vec2Model"])
        return Wav2Vec2Config.from_dict(values)

    def save_backbone(
        self,
        save_directory: str | os.PathLike,
        feature_extractor: Wav2Vec2FeatureExtractor | None = None,
    ) -> Path:
        """Write the backbone as a plain ``Wav2Vec2Model`` (safetensors) plus its feature extractor.

        ``Wav2Vec2Model.from_pretrained(save_directory)`` then gives the same hidden states, which is
        what transformers' downstream heads and s3prl's Hugging Face upstream load. Each file is
        written under a temporary name and renamed into place.

        Parameters
        ----------
        save_directory : str or os.PathLike
            Output folder (created if missing; files of the same name are replaced).
        feature_extractor : Wav2Vec2FeatureExtractor, optional
            Defaults to mono audio at ``config.sampling_rate``, ``do_normalize=config.do_normalize``
            (the audio the model was trained and features extracted on: ``BrainWindows`` and
            :mod:`wav2brain.features` normalise exactly when it is True, as the checkpoint it
            started from did), and an attention mask only for layer-norm front ends (as
            transformers' checkpoints do). One given must agree with the config on
            ``do_normalize`` and ``sampling_rate``.

        Raises
        ------
        ValueError
            When ``feature_extractor`` disagrees with the config, before anything is written.
        """
        if feature_extractor is None:
            feature_extractor = Wav2Vec2FeatureExtractor(
                feature_size=1,
                sampling_rate=self.config.sampling_rate,
                padding_value=0.0,
                do_normalize=self.config.do_normalize,
                return_attention_mask=self.config.feat_extract_norm == "layer",
            )
        for name in ("do_normalize", "sampling_rate"):
            given, own = getattr(feature_extractor, name), getattr(self.config, name)
            if given != own:
                raise ValueError(
                    f"feature_extractor.{name}={given!r} disagrees with the model's config "
                    f"({name}={own!r}): the exported backbone would be fed other audio than it "
                    "was trained on; set the config's value or pass a matching extractor"
                )
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            own_config = self.wav2vec2.config
            self.wav2vec2.config = self.backbone_config()
            try:
                self.wav2vec2.save_pretrained(staging)
            finally:
                self.wav2vec2.config = own_config
            feature_extractor.save_pretrained(staging)
            for item in staging.iterdir():
                os.replace(item, target / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


__all__ = ["Wav2Vec2ForBrainEncoding"]
