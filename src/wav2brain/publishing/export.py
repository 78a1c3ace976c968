"""Export a trained brain-encoding model: the full model, the refined backbone alone, their cards.

:func:`export_run` writes, under ``out_dir``:

``backbone/``
    The refined speech model as a plain ``Wav2Vec2Model`` (safetensors) with its
    ``preprocessor_config.json`` (``do_normalize`` as trained), written by
    :meth:`~wav2brain.modeling.Wav2Vec2ForBrainEncoding.save_backbone`, and a ``README.md`` card.
    This is what downstream heads and s3prl's Hugging Face upstream load.
``model/``
    The whole ``Wav2Vec2ForBrainEncoding`` (``save_pretrained``) with its feature-extractor
    config, its modeling code and ``auto_map`` (:mod:`wav2brain.publishing.remote_code`), and a
    card.
``adapter/``
    With ``merge_lora=False`` and a LoRA model only: the peft adapter, to load onto ``model/``
    (which then holds the weights without the LoRA deltas).
``export.json``
    What was written, the largest reload differences measured, and the Hub id of the cards.

LoRA (a peft ``PeftModel``) is merged into a copy of the weights; the caller's model is left as it
was. Both folders are written under temporary names and checked; only then is the previous export
replaced (its ``export.json`` removed, each folder renamed into place, the new ``export.json``
written last). An export that fails or is interrupted before that leaves the previous one intact;
``export.json`` exists only beside a complete export (:func:`read_export` and the push need it),
and a rerun removes the leftover temporary folders and starts afresh.

The check (cheap: one TR of seeded random audio, ``max(1, ceil(tr * sampling_rate))`` samples, one
row per checked subject head) reloads each folder with transformers and compares it with the model
in memory: hidden states of every layer of the backbone, and the predictions of the full model; the
merged weights are also compared with the unmerged LoRA model. Reloaded weights are the same
numbers, so the tolerance (:data:`RELOAD_TOLERANCE`) only absorbs kernel rounding; a merge adds
float rounding of ``W + B A`` (:data:`MERGE_TOLERANCE`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wav2brain.atomic import replace_directory, write_text_atomic

BACKBONE_DIR = "backbone"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
MANIFEST = "export.json"
RELOAD_TOLERANCE = 1e-5
"""Largest allowed difference after a reload, relative to the largest magnitude compared."""
MERGE_TOLERANCE = 1e-3
"""Largest allowed difference, relative, between the merged and the unmerged LoRA model."""


class ExportVerificationError(RuntimeError):
    """An exported folder does not reload to the model that was exported."""


def _unwrap(model, keep_adapter: bool):
    """``(brain model, LoRA model or None)``; for a LoRA model the brain model is a merged copy
    (checked against the LoRA model by :func:`verify_merge`).

    LoRA comes as a peft ``PeftModel`` or as adapters injected into a brain model's backbone
    (:func:`wav2brain.training.lora.add_lora`); only the former can be kept apart
    (``keep_adapter``), since only it saves a peft adapter folder.
    """
    from peft import PeftModel

    from wav2brain.modeling import Wav2Vec2ForBrainEncoding
    from wav2brain.training.lora import has_lora, merge_lora

    peft_model = None
    if isinstance(model, Wav2Vec2ForBrainEncoding) and has_lora(model):
        if keep_adapter:
            raise ValueError(
                "merge_lora=False keeps the adapters apart as a peft adapter folder, which only a "
                "peft PeftModel saves; this model has adapters injected by add_lora: export it "
                "merged (merge_lora=True)"
            )
        return merge_lora(copy.deepcopy(model)), model
    if isinstance(model, PeftModel):
        peft_model = model
        base = model.get_base_model()
        if not isinstance(base, Wav2Vec2ForBrainEncoding):
            raise ValueError(
                f"the PeftModel wraps a {type(base).__name__}; expected a Wav2Vec2ForBrainEncoding"
            )
        model = copy.deepcopy(model).merge_and_unload()
    elif not isinstance(model, Wav2Vec2ForBrainEncoding):
        raise ValueError(
            f"export_run takes a Wav2Vec2ForBrainEncoding or a peft PeftModel of one, got "
            f"{type(model).__name__}"
        )
    return model, peft_model


def _probe_inputs(model):
    """One TR of seeded random audio per checked head (first and last), with their subject ids."""
    import torch

    config = model.config
    samples = max(1, math.ceil(config.tr * config.sampling_rate))
    heads = sorted({0, len(config.subject_voxel_counts) - 1})
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(len(heads), samples, generator=generator)
    return values.to(device=model.device, dtype=model.dtype), torch.tensor(
        heads, device=model.device
    )


def _max_difference(ours, theirs, what: str, folder: Path, tolerance: float) -> float:
    """Largest absolute difference; raise when it exceeds ``tolerance`` relative to the scale."""
    import torch

    ours, theirs = ours.detach().float(), theirs.detach().float().to(ours.device)
    if ours.shape != theirs.shape:
        raise ExportVerificationError(
            f"{folder}: {what} has shape {tuple(theirs.shape)} after reloading, "
            f"{tuple(ours.shape)} before"
        )
    difference = float((ours - theirs).abs().max()) if ours.numel() else 0.0
    scale = max(float(ours.abs().max()) if ours.numel() else 0.0, 1e-12)
    if (
        not math.isfinite(difference)
        or difference > tolerance * scale
        or not torch.isfinite(theirs).all()
    ):
        raise ExportVerificationError(
            f"{folder}: {what} differs by {difference:.3g} (scale {scale:.3g}, allowed "
            f"{tolerance:g} relative): the export does not reproduce the model"
        )
    return difference


def _forward(model, values, subject_ids):
    """``(predictions, hidden states)`` of a brain-encoding model (or a PeftModel of one)."""
    import torch

    with torch.no_grad():
        output = model(values, subject_ids=subject_ids, output_hidden_states=True)
    return output.predictions, output.hidden_states


def probe(model) -> dict[str, Any]:
    """The check's input (one TR of seeded audio per checked head) and the model's output on it.

    One forward pass, shared by :func:`verify_backbone` and :func:`verify_full_model`.
    """
    values, heads = _probe_inputs(model)
    predictions, hidden_states = _forward(model, values, heads)
    return {
        "values": values,
        "subject_ids": heads,
        "predictions": predictions,
        "hidden_states": hidden_states,
    }


def _compare_states(ours, theirs, folder: Path, tolerance: float) -> float:
    if len(ours) != len(theirs):
        raise ExportVerificationError(
            f"{folder}: {len(theirs)} hidden states after reloading, {len(ours)} before"
        )
    return max(
        _max_difference(a, b, f"hidden state {i}", folder, tolerance)
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
    )


def verify_backbone(model, folder: str | os.PathLike, reference: dict | None = None) -> float:
    """Reload ``folder`` as a plain ``Wav2Vec2Model``; return the largest hidden-state difference.

    ``reference`` is :func:`probe` of ``model`` (computed when not given).

    Raises
    ------
    ExportVerificationError
        When a hidden state differs beyond :data:`RELOAD_TOLERANCE`.
    """
    import torch
    from transformers import Wav2Vec2Model

    folder = Path(folder)
    reference = reference or probe(model)
    reloaded = Wav2Vec2Model.from_pretrained(folder, dtype=model.dtype).to(model.device).eval()
    with torch.no_grad():
        states = reloaded(reference["values"], output_hidden_states=True).hidden_states
    return _compare_states(reference["hidden_states"], states, folder, RELOAD_TOLERANCE)


def verify_full_model(model, folder: str | os.PathLike, reference: dict | None = None) -> float:
    """Reload ``folder`` as a ``Wav2Vec2ForBrainEncoding``; return the largest difference.

    Compares the predictions of the first and last subject heads and every hidden state with
    ``reference`` (:func:`probe` of ``model``, computed when not given).
    """
    from wav2brain.modeling import Wav2Vec2ForBrainEncoding

    folder = Path(folder)
    reference = reference or probe(model)
    reloaded = (
        Wav2Vec2ForBrainEncoding.from_pretrained(folder, dtype=model.dtype).to(model.device).eval()
    )
    predictions, states = _forward(reloaded, reference["values"], reference["subject_ids"])
    difference = _max_difference(
        reference["predictions"], predictions, "predictions", folder, RELOAD_TOLERANCE
    )
    return max(
        difference, _compare_states(reference["hidden_states"], states, folder, RELOAD_TOLERANCE)
    )


def verify_merge(merged, peft_model, reference: dict | None = None) -> float:
    """Largest difference between the merged model's predictions and the LoRA model's.

    ``reference`` is :func:`probe` of ``merged`` (computed when not given).
    """
    reference = reference or probe(merged)
    predictions, _ = _forward(peft_model, reference["values"], reference["subject_ids"])
    return _max_difference(
        predictions,
        reference["predictions"],
        "predictions of the merged LoRA weights",
        Path("<merged model>"),
        MERGE_TOLERANCE,
    )


def verify_adapter(peft_model, model_folder: str | os.PathLike, adapter_folder) -> float:
    """Load ``adapter_folder`` onto the model saved in ``model_folder``; largest difference.

    The pair must reproduce ``peft_model``'s predictions: what a user does with an unmerged
    export (``PeftModel.from_pretrained(Wav2Vec2ForBrainEncoding.from_pretrained(model),
    adapter)``).
    """
    from peft import PeftModel

    from wav2brain.modeling import Wav2Vec2ForBrainEncoding

    dtype = peft_model.get_base_model().dtype
    base = Wav2Vec2ForBrainEncoding.from_pretrained(model_folder, dtype=dtype)
    reloaded = PeftModel.from_pretrained(base.to(peft_model.device), adapter_folder).eval()
    values, heads = _probe_inputs(base)
    ours, _ = _forward(peft_model, values, heads)
    theirs, _ = _forward(reloaded, values, heads)
    return _max_difference(ours, theirs, "predictions", Path(adapter_folder), RELOAD_TOLERANCE)


def _staging(out_dir: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out_dir))


def _remove_stale(out_dir: Path) -> None:
    """Remove staging folders an interrupted export left behind."""
    for name in (BACKBONE_DIR, MODEL_DIR, ADAPTER_DIR):
        for stale in out_dir.glob(f".{name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)


def export_run(
    model,
    out_dir: str | os.PathLike,
    *,
    feature_extractor,
    card: Mapping[str, Any] | None = None,
    merge_lora: bool = True,
) -> dict[str, Path]:
    """Write the backbone and full-model exports of a trained model, checked by reloading them.

    Parameters
    ----------
    model : Wav2Vec2ForBrainEncoding or peft.PeftModel
        The trained model (a LoRA model, a ``PeftModel`` or adapters injected by
        :func:`~wav2brain.training.lora.add_lora`, is merged on a copy; the argument is not
        modified, except that it is put in eval mode during the checks and then back). Under DDP or FSDP pass
        ``accelerator.unwrap_model(model)`` (with full weights gathered) and call this on the main
        process only.
    out_dir : str or os.PathLike
        Export folder (created); see the module docstring for its contents.
    feature_extractor : Wav2Vec2FeatureExtractor or None
        The extractor the model was trained with; it must agree with ``config.do_normalize`` and
        ``config.sampling_rate``. None: built from the config (``save_backbone``'s default).
    card : mapping, optional
        The run record for the model cards (keys: :mod:`wav2brain.publishing.card`).
    merge_lora : bool
        For a LoRA model: True merges the adapters into ``model/``. False keeps them apart:
        ``model/`` holds the weights without the LoRA deltas (the trained head and layer weights
        included) and ``adapter/`` the peft adapter, and
        ``PeftModel.from_pretrained(Wav2Vec2ForBrainEncoding.from_pretrained(model), adapter)``
        reproduces the trained model (checked). ``backbone/`` is always merged: a plain
        ``Wav2Vec2Model`` holds no adapters.

    Returns
    -------
    dict of str to Path
        ``"backbone"``, ``"model"``, ``"adapter"`` (unmerged LoRA only) and ``"manifest"``.

    Raises
    ------
    ValueError
        For a model of another class, an extractor that disagrees with the config, a bad card,
        or ``merge_lora=False`` for adapters injected by ``add_lora``, before anything is
        written.
    ExportVerificationError
        When a reloaded folder does not reproduce the model (nothing is renamed into place then).
    """
    from .card import build_model_card, check_card, write_model_card

    merged, peft_model = _unwrap(model, keep_adapter=not merge_lora)
    check_card(card, merged.config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    hub_id = (card or {}).get("hub_model_id")
    models = [m for m in (merged, peft_model) if m is not None]
    training = [m.training for m in models]
    for m in models:
        m.eval()
    unmerged = None if merge_lora or peft_model is None else copy.deepcopy(peft_model).unload()
    names = (BACKBONE_DIR, MODEL_DIR) + ((ADAPTER_DIR,) if unmerged is not None else ())
    stages = {name: _staging(out_dir, name) for name in names}
    try:
        report: dict[str, Any] = {"hub_model_id": hub_id}
        reference = probe(merged)
        if peft_model is not None:
            report["merge_max_abs_difference"] = verify_merge(merged, peft_model, reference)
        backbone, full = stages[BACKBONE_DIR], stages[MODEL_DIR]
        merged.save_backbone(backbone, feature_extractor)  # checks the extractor first
        write_model_card(build_model_card(card, merged, kind="backbone"), backbone)
        report["backbone_max_abs_difference"] = verify_backbone(merged, backbone, reference)
        full_model = merged if unmerged is None else unmerged.eval()
        _save_full_model(full_model, full, backbone)
        report["model_max_abs_difference"] = verify_full_model(
            full_model, full, reference if unmerged is None else None
        )
        full_card = build_model_card(
            card, full_model, kind="brain_encoding", adapter=unmerged is not None
        )
        write_model_card(full_card, full)
        if unmerged is not None:
            adapter = stages[ADAPTER_DIR]
            peft_model.save_pretrained(adapter)
            write_model_card(full_card, adapter)
            report["adapter_max_abs_difference"] = verify_adapter(peft_model, full, adapter)
        # every folder is complete and checked: only now is the previous export replaced
        (out_dir / MANIFEST).unlink(missing_ok=True)
        for name, staging in stages.items():
            replace_directory(staging, out_dir / name)
    finally:
        for m, was_training in zip(models, training, strict=True):
            m.train(was_training)
        for staging in stages.values():
            shutil.rmtree(staging, ignore_errors=True)
    if ADAPTER_DIR not in stages:  # an earlier unmerged export's adapter would contradict this one
        shutil.rmtree(out_dir / ADAPTER_DIR, ignore_errors=True)
    report.update({name: name for name in stages})
    manifest = write_text_atomic(
        json.dumps(report, indent=2, sort_keys=True) + "\n", out_dir / MANIFEST
    )
    return {**{name: out_dir / name for name in stages}, "manifest": manifest}


def _save_full_model(model, folder: Path, backbone: Path) -> None:
    """``save_pretrained``, the backbone's extractor config, modeling code and ``auto_map``."""
    from transformers import Wav2Vec2FeatureExtractor

    from .remote_code import write_remote_code

    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor.from_pretrained(backbone).save_pretrained(folder)
    write_remote_code(folder)


def read_export(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The paths of a finished export (what :func:`export_run` returned), from its manifest.

    Raises
    ------
    FileNotFoundError
        When ``out_dir`` holds no ``export.json`` or a folder it names is missing.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist: {out_dir} is not a finished export")
    report = json.loads(manifest.read_text(encoding="utf-8"))
    paths = {"manifest": manifest}
    for key in (BACKBONE_DIR, MODEL_DIR, ADAPTER_DIR):
        if key in report:
            path = out_dir / report[key]
            if not path.is_dir():
                raise FileNotFoundError(f"{manifest} names {path}, which does not exist")
            paths[key] = path
    return paths
