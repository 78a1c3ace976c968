"""Compare two checkpoints as the refinement paper does (Li et al., 2024, Figures 2-4).

- :func:`parameter_change` (Figure 2): for every backbone tensor, the share of its elements that
  changed between checkpoint A (e.g. the base model) and B (the refined one), grouped by parameter
  type and layer. An element changed when ``|b - a| > threshold * |a| + ABSOLUTE_FLOOR``; the
  default threshold (:data:`DEFAULT_CHANGE_THRESHOLD`, a 0.1 % relative change) is our choice
  (the paper does not state one): it lies far above float32 rounding (about 1e-7 relative, so a
  save/load round trip or a LoRA merge of a zero adapter changes nothing) and far below the
  changes a few hundred optimiser steps make at fine-tuning learning rates. A bfloat16 copy of a
  float32 model (about 4e-3 relative rounding) counts as changed almost everywhere: compare
  checkpoints of one precision. The table also gives the relative Frobenius change
  ``||B - A|| / ||A||`` of each tensor.
- :func:`layer_weights` (Figure 4): the learned softmax layer weights of each brain-encoding model.
- :func:`brain_accuracy` (Figure 3b): per-voxel Pearson r of both models' predictions on the
  held-out stories of a prepared dataset, per subject and per ROI of an atlas, with brain maps.
- :func:`history_sweep` (Figure 3a): the held-out score of each run of a history-length sweep.

:func:`compare_models` runs what its inputs allow and writes Parquet tables, PNG figures and
``compare.json`` into a temporary sibling folder that replaces the output folder once complete, so
the folder never mixes two comparisons and an interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.atomic import replace_directory

DEFAULT_CHANGE_THRESHOLD = 1e-3
"""Relative change above which an element counts as changed (see the module docstring)."""
ABSOLUTE_FLOOR = 1e-8
"""Absolute change always ignored, so exact zeros that stay (nearly) zero never count."""

BACKBONE_PREFIX = "wav2vec2."
BACKBONE_ROOTS = ("feature_extractor.", "feature_projection.", "encoder.", "masked_spec_embed")
LAYER_TYPES = {
    "attention.q_proj": "q_proj",
    "attention.k_proj": "k_proj",
    "attention.v_proj": "v_proj",
    "attention.out_proj": "out_proj",
    "layer_norm": "attention_layer_norm",
    "feed_forward.intermediate_dense": "feed_forward_in",
    "feed_forward.output_dense": "feed_forward_out",
    "final_layer_norm": "final_layer_norm",
}
"""Transformer-block submodule -> parameter type (the paper's Figure 2 groups)."""
LEGACY_NAMES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}
"""Old weight-norm tensor names of the positional convolution -> the current ones."""
METRIC_FILES = ("metrics.json", "test_results.json", "eval_results.json", "all_results.json")
"""Metric files searched in a sweep run, in this order: the recipe's (``train.py``, per stage:
read as ``stage1_mean``, ``stage2_mean``, ...), then the Trainer's ``save_metrics`` files."""
DEFAULT_SWEEP_METRICS = ("stage2_mean", "stage1_mean", "test_mean", "eval_mean")
CONFIG_PLACES = (
    "config.json",
    "final/config.json",
    "model/config.json",
    "export/model/config.json",
)
"""Where a sweep run's model config (``history_trs``) is looked for, in this order."""


# ----------------------------------------------------------------------------- checkpoints


HUB_FILES = ("*.json", "*.safetensors", "*.safetensors.index.json")
"""What :func:`resolve_checkpoint` fetches of a Hub model: configs and weights, no other files."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The model folder of ``path``: itself, an export's ``model/`` (else ``backbone/``), or the
    Hub's local snapshot of a Hub id that is not a folder here (configs and safetensors weights,
    :data:`HUB_FILES`; from the Hugging Face cache when offline).

    Raises
    ------
    FileNotFoundError
        When the folder (or its weights) does not exist, or a Hub id cannot be fetched (one line:
        :func:`wav2brain.features.extract.from_checkpoint`).
    """
    from wav2brain.publishing.hub import is_repo_id

    if not Path(path).exists() and is_repo_id(str(path)):
        from huggingface_hub import snapshot_download

        from wav2brain.features.extract import from_checkpoint

        def download(repo_id: str, revision: str | None = None) -> str:
            return snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES))

        path = from_checkpoint(download, str(path), None, "checkpoint")
    path = Path(path)
    if (path / "export.json").is_file():
        path = path / "model" if (path / "model").is_dir() else path / "backbone"
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is not a folder")
    if not (_weight_files(path)):
        raise FileNotFoundError(
            f"checkpoint {path} holds no model.safetensors (or sharded index); "
            "a peft adapter folder must be merged first (wav2brain export)"
        )
    return path


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / shard for shard in shards]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _normalise(name: str) -> str:
    if name.startswith(BACKBONE_PREFIX):
        name = name[len(BACKBONE_PREFIX) :]
    for old, new in LEGACY_NAMES.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name


def load_state(checkpoint) -> dict[str, Any]:
    """Tensors of a checkpoint (folder, ``nn.Module`` or state dict), names normalised.

    The backbone prefix ``wav2vec2.`` is removed, so a brain-encoding model, a
    ``Wav2Vec2ForPreTraining`` and a plain ``Wav2Vec2Model`` name their backbone tensors alike.
    Tensors come back as float32 CPU tensors.
    """
    if hasattr(checkpoint, "state_dict"):
        state = checkpoint.state_dict()
    elif isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        from safetensors.torch import load_file

        state = {}
        for file in _weight_files(resolve_checkpoint(checkpoint)):
            state.update(load_file(str(file)))
    return {_normalise(k): v.detach().float().cpu() for k, v in state.items()}


def _is_backbone(name: str) -> bool:
    return name.startswith(BACKBONE_ROOTS)


def parameter_group(name: str) -> tuple[str, int, str]:
    """``(component, layer, parameter_type)`` of a normalised backbone tensor name.

    ``layer`` is the ``hidden_states`` index of the block's output (1 = first transformer layer);
    the front end (feature encoder, feature projection, positional convolution, the encoder's
    layer norm, the masking vector) is layer 0.
    """
    match = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
    if match:
        submodule = match.group(2)
        return "transformer", int(match.group(1)) + 1, LAYER_TYPES.get(submodule, submodule)
    match = re.match(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.", name)
    if match:
        kind = "conv" if match.group(2) == "conv" else "conv_norm"
        return "feature_encoder", 0, f"{kind}{match.group(1)}"
    if name.startswith("feature_projection."):
        return "feature_projection", 0, "feature_projection"
    if name.startswith("encoder.pos_conv_embed."):
        return "positional_conv", 0, "positional_conv"
    if name.startswith("encoder.layer_norm."):
        return "encoder_norm", 0, "encoder_layer_norm"
    return "other", 0, name.split(".")[0]


def parameter_change(a, b, *, threshold: float = DEFAULT_CHANGE_THRESHOLD):
    """Share of changed elements of every backbone tensor between checkpoints ``a`` and ``b``.

    Parameters
    ----------
    a, b : folder, nn.Module or state dict
        The two checkpoints (a brain-encoding model, a plain ``Wav2Vec2Model``, an export).
    threshold : float
        Relative change counted as a change (see the module docstring).

    Returns
    -------
    pandas.DataFrame
        One row per tensor present in both: ``tensor``, ``component``, ``layer``,
        ``parameter_type``, ``n_params``, ``n_changed``, ``share_changed`` (0-1),
        ``relative_change`` (``||b - a|| / ||a||``).

    Raises
    ------
    ValueError
        For a non-positive threshold, checkpoints without a common backbone tensor, or a tensor
        whose shape differs (named).
    """
    import pandas as pd
    import torch

    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive relative change, got {threshold}")
    state_a, state_b = load_state(a), load_state(b)
    common = sorted(k for k in state_a.keys() & state_b.keys() if _is_backbone(k))
    if not common:
        raise ValueError(
            "the two checkpoints share no wav2vec2 backbone tensor: expected two wav2vec2 models "
            f"(first names: {sorted(state_a)[:3]} and {sorted(state_b)[:3]})"
        )
    rows = []
    for name in common:
        before, after = state_a[name], state_b[name]
        if before.shape != after.shape:
            raise ValueError(
                f"tensor {name} has shape {tuple(before.shape)} in the first checkpoint and "
                f"{tuple(after.shape)} in the second: not the same architecture"
            )
        delta = (after - before).abs()
        changed = int((delta > threshold * before.abs() + ABSOLUTE_FLOOR).sum())
        norm = float(torch.linalg.vector_norm(before))
        component, layer, kind = parameter_group(name)
        rows.append(
            {
                "tensor": name,
                "component": component,
                "layer": layer,
                "parameter_type": kind,
                "n_params": before.numel(),
                "n_changed": changed,
                "share_changed": changed / max(before.numel(), 1),
                "relative_change": float(torch.linalg.vector_norm(after - before)) / norm
                if norm > 0
                else float(torch.linalg.vector_norm(after)),
            }
        )
    return pd.DataFrame(rows)


def change_by_type(table):
    """Figure 2's table: share of changed parameters per ``(layer, parameter_type)``."""
    grouped = table.groupby(["component", "layer", "parameter_type"], as_index=False, sort=False)
    summary = grouped[["n_params", "n_changed"]].sum()
    summary["share_changed"] = summary["n_changed"] / summary["n_params"].clip(lower=1)
    return summary.sort_values(["layer", "component", "parameter_type"], ignore_index=True)


def change_summary(table) -> dict[str, float]:
    """Share of changed parameters per parameter type over all layers (for the model card)."""
    grouped = table.groupby("parameter_type", sort=False)[["n_params", "n_changed"]].sum()
    total = table[["n_params", "n_changed"]].sum()
    summary = {k: float(v.n_changed / max(v.n_params, 1)) for k, v in grouped.iterrows()}
    summary["all"] = float(total.n_changed / max(total.n_params, 1))
    return summary


def layer_weights(checkpoints: Mapping[str, Any]):
    """Learned layer weights (softmax of ``layer_weight_logits``) of each brain-encoding model.

    Parameters
    ----------
    checkpoints : mapping name -> checkpoint
        Models without learned weights (plain backbones, ``layer_aggregation`` other than
        ``"weighted_sum"``) are left out.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``state`` (hidden-states index: 0 = feature projection, L = last layer),
        ``weight`` (sums to 1 per model); empty when no model has learned weights.
    """
    import pandas as pd
    import torch

    rows = []
    for name, checkpoint in checkpoints.items():
        logits = load_state(checkpoint).get("layer_weight_logits")
        if logits is None:
            continue
        for state, weight in enumerate(torch.softmax(logits, dim=0).tolist()):
            rows.append({"model": name, "state": state, "weight": weight})
    return pd.DataFrame(rows, columns=["model", "state", "weight"])


# ----------------------------------------------------------------------------- sweep


def _run_history(run: Path, metrics: Mapping[str, Any]) -> int:
    if "history_trs" in metrics:
        return int(metrics["history_trs"])
    for place in CONFIG_PLACES:
        path = run / place
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("history_trs")
            if value is not None:
                return int(value)
    raise FileNotFoundError(
        f"sweep run {run}: no history_trs in its metrics nor in any of {list(CONFIG_PLACES)}"
    )


def history_sweep(folder: str | os.PathLike, metric: str | None = None):
    """Held-out score against the history length, one row per run of a sweep (Figure 3a).

    Parameters
    ----------
    folder : path
        A folder of sweep runs: each subfolder holding a Trainer metrics file
        (:data:`METRIC_FILES`) is a run; its ``history_trs`` comes from the metrics, else from
        its saved model config (:data:`CONFIG_PLACES`).
    metric : str, optional
        Metric key to plot; default the first of :data:`DEFAULT_SWEEP_METRICS` the runs have.

    Returns
    -------
    pandas.DataFrame
        ``run``, ``history_trs``, ``metric``, ``value``, sorted by history.

    Raises
    ------
    FileNotFoundError
        No run in the folder, or a run without a history length.
    ValueError
        A run without the metric (its keys listed), or two runs of the same history.
    """
    import pandas as pd

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sweep folder {folder} does not exist")
    runs = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        for name in METRIC_FILES:
            if (run / name).is_file():
                runs.append((run, run / name))
                break
    if not runs:
        raise FileNotFoundError(
            f"sweep folder {folder} holds no run: expected subfolders with one of {METRIC_FILES}"
        )
    rows = []
    for run, path in runs:
        metrics = _flat_metrics(json.loads(path.read_text(encoding="utf-8")))
        key = metric or next((k for k in DEFAULT_SWEEP_METRICS if k in metrics), None)
        if key is None or key not in metrics:
            wanted = metric or " or ".join(DEFAULT_SWEEP_METRICS)
            raise ValueError(f"{path}: no metric {wanted}; it has {sorted(metrics)}")
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: {key}={value!r} is not a number")
        rows.append(
            {
                "run": run.name,
                "history_trs": _run_history(run, metrics),
                "metric": key,
                "value": float(value),
            }
        )
    table = pd.DataFrame(rows).sort_values("history_trs", ignore_index=True)
    repeated = table[table["history_trs"].duplicated(keep=False)]
    if len(repeated):
        raise ValueError(
            f"{folder}: runs {sorted(repeated['run'])} share a history length "
            f"({sorted(set(repeated['history_trs']))} TRs); keep one run per length"
        )
    return table


def _flat_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with the recipe's per-stage scores flattened (``{"stage1": {"mean": r}}`` gives
    ``stage1_mean``); other nested values (per-subject scores, splits) are left out."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}_{k}": v for k, v in value.items() if isinstance(v, int | float)})
        else:
            flat[key] = value
    return flat


# ----------------------------------------------------------------------------- brain accuracy


def _held_out_windows(windows, stories: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Indices of the windows of the held-out ``stories`` and the subject of each (no BOLD read)."""
    meta = windows.responses.select_columns(["stimulus_id", "subject"]).to_dict()
    known = set(meta["stimulus_id"])
    missing = sorted(set(stories) - known)
    if missing:
        raise ValueError(
            f"held-out stories {missing} are not in the dataset (its stories: {sorted(known)})"
        )
    wanted = set(stories)
    rows = [windows.locate(i)[0] for i in range(len(windows))]
    indices = np.array([i for i, row in enumerate(rows) if meta["stimulus_id"][row] in wanted])
    return indices, [str(meta["subject"][rows[i]]) for i in indices]


def _equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Positions into ``lengths`` batched so that each batch holds windows of one length.

    No batch is padded, so every prediction equals the window's prediction alone (a group-norm
    front end, wav2vec2-base's, would otherwise normalise over the padding). Windows keep their
    order within a length.
    """
    lengths = np.asarray(lengths)
    batches = []
    for length in np.unique(lengths):
        positions = np.flatnonzero(lengths == length)
        batches += [positions[k : k + batch_size] for k in range(0, len(positions), batch_size)]
    return batches


def predict_windows(
    model,
    windows,
    indices,
    subjects: Sequence[str],
    batch_size: int = 8,
    columns: Mapping[str, np.ndarray] | None = None,
):
    """Predictions and labels of the windows ``indices`` grouped by subject (float32 [n, V]).

    The backbone runs once per distinct audio window (every subject who heard a story shares
    its windows), in unpadded batches of one length; each window's TR-pooled states then go
    through the head of each subject who heard it (``forward(pooled_hidden_states=...)``, the
    path stage 1 trains on). Rows of a subject follow the order of ``indices``; with
    ``columns`` (subject -> the selected columns its head predicts) the labels are those columns.
    """
    import torch

    keys = [windows.window_key(int(index)) for index in indices]
    first = {key: position for position, key in reversed(list(enumerate(keys)))}
    distinct = list(first)
    pooled: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    model.eval()
    with torch.no_grad():
        for batch in _equal_length_batches([end - start for _, start, end in distinct], batch_size):
            chosen = [distinct[k] for k in batch]
            audio = np.stack([windows[int(indices[first[key]])]["input_values"] for key in chosen])
            audio = torch.as_tensor(audio).to(model.device, model.dtype)
            hidden = model.wav2vec2(audio, output_hidden_states=True, return_dict=True)
            lengths = torch.full((len(chosen),), audio.shape[1], device=model.device)
            states, bins = model.pool_hidden_states(hidden.hidden_states, lengths)
            for k, key in enumerate(chosen):
                pooled[key] = (states[:, k], bins[k])
        ids = windows.subject_to_id
        predictions: dict[str, list] = {}
        labels: dict[str, list] = {}
        for begin in range(0, len(keys), batch_size):
            positions = range(begin, min(begin + batch_size, len(keys)))
            subject_ids = None
            if ids is not None:
                subject_ids = torch.tensor(
                    [ids[subjects[p]] for p in positions], device=model.device
                )
            output = (
                model(
                    pooled_hidden_states=torch.stack([pooled[keys[p]][0] for p in positions]),
                    valid_bins=torch.stack([pooled[keys[p]][1] for p in positions]),
                    subject_ids=subject_ids,
                )
                .predictions.float()
                .cpu()
                .numpy()
            )
            for row, position in enumerate(positions):
                subject = subjects[position]
                bold_row, t = windows.locate(int(indices[position]))
                label = np.asarray(windows.bold(bold_row)[t], dtype=np.float32)
                if columns is not None:
                    label = label[columns[subject]]
                predictions.setdefault(subject, []).append(output[row, : len(label)])
                labels.setdefault(subject, []).append(label)
    return (
        {s: np.stack(v) for s, v in predictions.items()},
        {s: np.stack(v) for s, v in labels.items()},
    )


def brain_accuracy(
    models: Mapping[str, Any],
    dataset: str | os.PathLike,
    test_stories: Sequence[str],
    *,
    roi_labels: Mapping[str, np.ndarray] | None = None,
    roi_names: Mapping[int, str] | None = None,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    voxel_selection: str | os.PathLike | None = None,
):
    """Per-voxel held-out Pearson r of each model, per subject, and ROI means (Figure 3b).

    Parameters
    ----------
    models : mapping name -> Wav2Vec2ForBrainEncoding
        Brain-encoding models with the same subjects and voxel counts (checked by
        ``BrainWindows.for_model``).
    dataset : path
        A prepared dataset folder.
    test_stories : sequence of str
        Held-out stimulus ids (never trained on).
    roi_labels : mapping subject -> int array [n_voxels], optional
        ROI label of each voxel (0 = none), e.g. from
        :func:`wav2brain.encoding.layers.roi_labels_from_image`.
    roi_names : mapping int -> str, optional
        Names of the ROI labels.
    batch_size : int
        Windows per forward pass.
    cache_dir : path, optional
        ``datasets`` cache for the prepared tables (default: the datasets cache).
    voxel_selection : path, optional
        The voxels the models' heads predict, as the recipe's ``voxel_selection`` (one file or a
        folder of ``sub-<label>`` files: :func:`wav2brain.training.data.selected_columns`);
        default every voxel.

    Returns
    -------
    voxels : pandas.DataFrame
        ``subject``, ``voxel`` (the column of the subject's BOLD), ``roi``, then ``r_<name>`` per
        model (r over the held-out TRs).
    rois : pandas.DataFrame
        ``subject``, ``roi``, ``roi_name``, ``n_voxels``, then ``r_<name>`` (mean over the ROI).
    """
    import pandas as pd

    from wav2brain.data.windows import BrainWindows
    from wav2brain.encoding.layers import roi_mean_scores
    from wav2brain.encoding.scores import pearson_r

    if not test_stories:
        raise ValueError("test_stories is empty: name the held-out stories to score on")
    names = list(models)
    frames = []
    load_kwargs = {"cache_dir": str(cache_dir)} if cache_dir else None
    columns = None
    if voxel_selection is not None:
        from wav2brain.training.data import selected_columns

        counts = BrainWindows.from_folder(dataset, **(load_kwargs or {})).subject_voxels
        columns = selected_columns(voxel_selection, dataset, counts)
    for name, model in models.items():
        selected = None if columns is None else {s: len(c) for s, c in columns.items()}
        windows = BrainWindows.for_model(dataset, model, load_kwargs=load_kwargs, selected=selected)
        indices, subjects = _held_out_windows(windows, test_stories)
        predictions, labels = predict_windows(
            model, windows, indices, subjects, batch_size, columns
        )
        for subject, prediction in predictions.items():
            if len(prediction) < 3:
                raise ValueError(
                    f"subject {subject!r} has {len(prediction)} windows in the held-out stories "
                    f"{list(test_stories)}: need at least 3 TRs to correlate"
                )
            r = pearson_r(labels[subject].astype(np.float64), prediction.astype(np.float64))
            voxel = np.arange(r.size) if columns is None else columns[subject]
            frames.append(pd.DataFrame({"subject": subject, "voxel": voxel, "model": name, "r": r}))
    long = pd.concat(frames, ignore_index=True)
    voxels = long.pivot_table(index=["subject", "voxel"], columns="model", values="r").reset_index()
    voxels.columns.name = None
    voxels = voxels.rename(columns={n: f"r_{n}" for n in names})
    voxels["roi"] = 0
    roi_rows = []
    for subject, part in voxels.groupby("subject", sort=True):
        if roi_labels is None or subject not in roi_labels:
            continue
        labels_ = np.asarray(roi_labels[subject])
        n_data = len(part) if columns is None else counts[subject]
        if labels_.shape != (n_data,):
            raise ValueError(
                f"roi labels of subject {subject!r} have shape {labels_.shape}; its data has "
                f"{n_data} voxels"
            )
        scored = labels_[part["voxel"].to_numpy()]
        voxels.loc[part.index, "roi"] = scored
        scores = part[[f"r_{n}" for n in names]].to_numpy().T
        rois, means = roi_mean_scores(scores, scored)
        for j, roi in enumerate(rois):
            row = {
                "subject": subject,
                "roi": int(roi),
                "roi_name": (roi_names or {}).get(int(roi), str(int(roi))),
                "n_voxels": int((scored == roi).sum()),
            }
            row.update({f"r_{n}": float(means[i, j]) for i, n in enumerate(names)})
            roi_rows.append(row)
    columns = ["subject", "roi", "roi_name", "n_voxels", *(f"r_{n}" for n in names)]
    return voxels, pd.DataFrame(roi_rows, columns=columns)


# ----------------------------------------------------------------------------- figures


def _figure_path(out: Path, name: str) -> Path:
    return out / f"{name}.png"


def plot_parameter_change(summary, path: Path, labels: tuple[str, str]) -> Path:
    """Heatmap of the share of changed parameters, parameter type x layer (Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wav2brain.reports.brain_maps import _save_figure

    pivot = summary.pivot_table(
        index="parameter_type", columns="layer", values="share_changed", aggfunc="mean"
    )
    figure, axis = plt.subplots(figsize=(1.2 + 0.5 * pivot.shape[1], 1.0 + 0.35 * pivot.shape[0]))
    image = axis.imshow(100 * pivot.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=100)
    axis.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns])
    axis.set_yticks(range(pivot.shape[0]), list(pivot.index))
    axis.set_xlabel("layer (0 = front end)")
    axis.set_title(f"parameters changed, {labels[0]} -> {labels[1]} (%)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return _save_figure(figure, path)


def plot_layer_weights(table, path: Path) -> Path:
    """Grouped bars of the learned layer weights of each model (Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wav2brain.reports.brain_maps import _save_figure

    models = list(dict.fromkeys(table["model"]))
    figure, axis = plt.subplots(figsize=(6, 3))
    width = 0.8 / len(models)
    for i, name in enumerate(models):
        part = table[table["model"] == name]
        axis.bar(
            part["state"] + (i - (len(models) - 1) / 2) * width, part["weight"], width, label=name
        )
    axis.set_xlabel("hidden state (0 = feature projection)")
    axis.set_ylabel("learned weight")
    axis.legend()
    figure.tight_layout()
    return _save_figure(figure, path)


def plot_brain_accuracy(voxels, names: Sequence[str], path: Path) -> Path:
    """Per-voxel held-out r of model B against model A, per subject (Figure 3b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wav2brain.reports.brain_maps import _save_figure

    a, b = (f"r_{n}" for n in names)
    figure, axis = plt.subplots(figsize=(4, 4))
    for subject, part in voxels.groupby("subject"):
        axis.scatter(part[a], part[b], s=4, alpha=0.6, label=str(subject))
    low = float(np.nanmin(voxels[[a, b]].to_numpy()))
    high = float(np.nanmax(voxels[[a, b]].to_numpy()))
    axis.plot([low, high], [low, high], color="grey", linewidth=1)
    axis.set_xlabel(f"held-out r, {names[0]}")
    axis.set_ylabel(f"held-out r, {names[1]}")
    axis.legend(markerscale=3, fontsize="small")
    figure.tight_layout()
    return _save_figure(figure, path)


def plot_history_sweep(table, path: Path) -> Path:
    """Held-out score against the history length (Figure 3a)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wav2brain.reports.brain_maps import _save_figure

    figure, axis = plt.subplots(figsize=(4, 3))
    axis.plot(table["history_trs"], table["value"], marker="o")
    axis.set_xlabel("history (TRs)")
    axis.set_ylabel(str(table["metric"].iloc[0]))
    figure.tight_layout()
    return _save_figure(figure, path)


# ----------------------------------------------------------------------------- driver


@dataclass
class CompareConfig:
    """What :func:`compare_models` computes besides the parameter change and layer weights.

    Parameters
    ----------
    labels : tuple of str
        Names of checkpoints A and B in tables and figures.
    threshold : float
        Relative change counted as a change (:data:`DEFAULT_CHANGE_THRESHOLD`).
    dataset : path, optional
        Prepared dataset folder; with ``test_stories``, brain accuracy is computed (both
        checkpoints must then be brain-encoding models).
    test_stories : tuple of str
        Held-out stimulus ids.
    atlas : path, optional
        Label image (NIfTI) for ROI means, resampled to each subject's mask.
    atlas_names : mapping int -> str, optional
        Names of the atlas labels.
    sweep : path, optional
        Folder of history-sweep runs (:func:`history_sweep`).
    sweep_metric : str, optional
        Metric of the sweep curve.
    batch_size : int
        Windows per forward pass in brain accuracy.
    cache_dir : path, optional
        ``datasets`` cache for the dataset's tables.
    voxel_selection : path, optional
        The voxels the heads predict when the models were trained on a selection (the recipe's
        ``voxel_selection``); needs ``dataset``.
    maps : bool
        Write brain maps (r of each model and their difference) where the dataset has masks.
    """

    labels: tuple[str, str] = ("A", "B")
    threshold: float = DEFAULT_CHANGE_THRESHOLD
    dataset: Path | None = None
    test_stories: tuple[str, ...] = ()
    atlas: Path | None = None
    atlas_names: dict[int, str] | None = None
    sweep: Path | None = None
    sweep_metric: str | None = None
    batch_size: int = 8
    cache_dir: Path | None = None
    voxel_selection: Path | None = None
    maps: bool = True

    def __post_init__(self) -> None:
        if len(self.labels) != 2 or self.labels[0] == self.labels[1] or not all(self.labels):
            raise ValueError(f"labels must be two different names, got {self.labels}")
        bad = [label for label in self.labels if not re.fullmatch(r"[\w.-]+", label)]
        if bad:
            raise ValueError(f"labels {bad} must be letters, digits, '_', '-' or '.'")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive relative change, got {self.threshold}")
        if bool(self.dataset) != bool(self.test_stories):
            raise ValueError(
                "brain accuracy needs both a prepared dataset and its held-out test stories "
                f"(got dataset={self.dataset}, test_stories={list(self.test_stories)})"
            )
        if self.atlas is not None and self.dataset is None:
            raise ValueError("atlas is used only with a dataset and test stories")
        if self.voxel_selection is not None and self.dataset is None:
            raise ValueError("voxel_selection is used only with a dataset and test stories")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def recipe_run_scoring(folder: str | os.PathLike) -> dict[str, Any]:
    """What a ``wav2brain train`` output folder scored on: ``dataset``, ``test_stories`` (its
    ``splits.json``) and ``voxel_selection`` (None: every voxel), as :class:`CompareConfig`
    fields. Relative paths in ``run.json`` are read from the current folder, as the run did.

    Raises
    ------
    FileNotFoundError
        No ``run.json`` or ``splits.json`` in ``folder``.
    ValueError
        A run split by run rather than by story, or without a dataset or test split.
    """
    from wav2brain.training.splits import SPLITS_FILE

    folder = Path(folder)
    paths = {name: folder / name for name in ("run.json", SPLITS_FILE)}
    if missing := [name for name, path in paths.items() if not path.is_file()]:
        raise FileNotFoundError(f"{folder} lacks {missing}: not a `wav2brain train` output folder")
    data = json.loads(paths["run.json"].read_text(encoding="utf-8")).get("data") or {}
    splits = json.loads(paths[SPLITS_FILE].read_text(encoding="utf-8"))
    if splits.get("split_by", "stimulus") != "stimulus":
        raise ValueError(
            f"{paths[SPLITS_FILE]}: split by {splits.get('split_by')!r}; brain accuracy holds out "
            "whole stories (give --dataset and --test-stories yourself)"
        )
    if not data.get("dataset") or not splits.get("test"):
        raise ValueError(f"{folder}: run.json names no dataset or splits.json no test stories")
    selection = data.get("voxel_selection")
    return {
        "dataset": Path(data["dataset"]),
        "test_stories": tuple(splits["test"]),
        "voxel_selection": None if selection is None else Path(selection),
    }


def _subject_masks(dataset: Path) -> dict[str, tuple[str, Path | None, int]]:
    """Subject -> (space, mask path or None, voxel count) of its first run (no BOLD is read)."""
    from wav2brain.encoding.runs import read_responses

    masks: dict[str, tuple[str, Path | None, int]] = {}
    for record in read_responses(dataset):
        mask = dataset / record.mask if record.mask else None
        masks.setdefault(record.subject, (record.space, mask, record.n_voxels))
    return masks


def _write_table(frame, path: Path) -> Path:
    import pyarrow as pa

    from wav2brain.data.hf_layout import write_shard

    return write_shard(pa.Table.from_pandas(frame, preserve_index=False), path)


def _load_brain_model(path: Path):
    from wav2brain.modeling import Wav2Vec2ForBrainEncoding

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "wav2vec2-brain-encoding":
        raise ValueError(
            f"{path} is a {config.get('model_type')!r} checkpoint: brain accuracy needs two "
            "brain-encoding models (export's model/ folder or a training checkpoint)"
        )
    return Wav2Vec2ForBrainEncoding.from_pretrained(path).eval()


def compare_models(
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike,
    config: CompareConfig | None = None,
) -> dict[str, Path]:
    """Compare checkpoints ``a`` and ``b``; write tables, figures and ``compare.json`` to ``out``.

    Always: ``parameter_change.parquet`` (per tensor), ``change_by_type.parquet`` and
    ``parameter_change.png`` (Figure 2); ``layer_weights.parquet`` / ``.png`` (Figure 4) when a
    checkpoint has learned layer weights. With a dataset and test stories:
    ``voxel_scores.parquet``, ``roi_scores.parquet`` (with an atlas), ``brain_accuracy.png`` and
    ``maps/sub-<s>_r-<label>`` / ``maps/sub-<s>_delta`` maps (Figure 3b). With a sweep folder:
    ``history_sweep.parquet`` / ``.png`` (Figure 3a).

    Returns
    -------
    dict of str to Path
        Every file written, by name; ``"summary"`` is ``compare.json``.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing checkpoint, dataset, atlas or sweep folder, or incompatible checkpoints,
        before any figure is drawn.
    """
    config = config or CompareConfig()
    paths = {label: resolve_checkpoint(p) for label, p in zip(config.labels, (a, b), strict=True)}
    for what, path in (
        ("dataset", config.dataset),
        ("atlas", config.atlas),
        ("sweep", config.sweep),
        ("voxel selection", config.voxel_selection),
    ):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{what} {path} does not exist")
    sweep = history_sweep(config.sweep, config.sweep_metric) if config.sweep else None
    brain_models = (
        {label: _load_brain_model(path) for label, path in paths.items()}
        if config.dataset
        else None
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        names = _write_outputs(paths, config, stage, sweep, brain_models)
        replace_directory(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {key: out / name for key, name in names.items()}


def _write_outputs(paths, config: CompareConfig, out: Path, sweep, brain_models) -> dict[str, str]:
    """Write every table and figure into ``out``, ``compare.json`` last; key -> relative name."""
    from wav2brain.atomic import write_text_atomic

    written: dict[str, Path] = {}
    table = parameter_change(*paths.values(), threshold=config.threshold)
    summary = change_by_type(table)
    written["parameter_change"] = _write_table(table, out / "parameter_change.parquet")
    written["change_by_type"] = _write_table(summary, out / "change_by_type.parquet")
    written["parameter_change_png"] = plot_parameter_change(
        summary, _figure_path(out, "parameter_change"), config.labels
    )
    weights = layer_weights(paths)
    if len(weights):
        written["layer_weights"] = _write_table(weights, out / "layer_weights.parquet")
        written["layer_weights_png"] = plot_layer_weights(
            weights, _figure_path(out, "layer_weights")
        )
    headline: dict[str, Any] = {"parameters_changed": change_summary(table)}
    if brain_models is not None:
        written.update(_brain_outputs(brain_models, config, out, headline))
    if sweep is not None:
        written["history_sweep"] = _write_table(sweep, out / "history_sweep.parquet")
        written["history_sweep_png"] = plot_history_sweep(sweep, _figure_path(out, "history_sweep"))
        best = sweep.loc[sweep["value"].idxmax()]
        headline["best_history_trs"] = int(best["history_trs"])
    names = {k: str(p.relative_to(out)) for k, p in written.items()}
    record = {
        "checkpoints": {label: str(path) for label, path in paths.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "headline": headline,
        "files": names,
    }
    write_text_atomic(
        json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", out / "compare.json"
    )
    return {**names, "summary": "compare.json"}


def _brain_outputs(models, config: CompareConfig, out: Path, headline: dict) -> dict[str, Path]:
    from wav2brain.encoding.layers import roi_labels_from_image
    from wav2brain.reports.brain_maps import map_target, write_map

    dataset = Path(config.dataset)
    masks = _subject_masks(dataset)
    roi_labels = None
    if config.atlas is not None:
        roi_labels = {}
        for subject, (_, mask, _) in masks.items():
            if mask is None:
                raise ValueError(
                    f"subject {subject!r} has no mask in {dataset}: atlas ROIs need volume data"
                )
            roi_labels[subject] = roi_labels_from_image(config.atlas, mask)
    voxels, rois = brain_accuracy(
        models,
        dataset,
        config.test_stories,
        roi_labels=roi_labels,
        roi_names=config.atlas_names,
        batch_size=config.batch_size,
        cache_dir=config.cache_dir,
        voxel_selection=config.voxel_selection,
    )
    names = list(models)
    written = {"voxel_scores": _write_table(voxels, out / "voxel_scores.parquet")}
    if len(rois):
        written["roi_scores"] = _write_table(rois, out / "roi_scores.parquet")
    written["brain_accuracy_png"] = plot_brain_accuracy(
        voxels, names, _figure_path(out, "brain_accuracy")
    )
    headline["mean_r"] = {n: float(voxels[f"r_{n}"].mean()) for n in names}
    if config.maps:
        (out / "maps").mkdir(exist_ok=True)
        for subject, part in voxels.groupby("subject", sort=True):
            space, mask, n_voxels = masks[subject]
            if map_target(space, mask, n_voxels) is not None:
                continue
            values = {}
            for n in names:  # voxels outside a voxel selection show 0
                values[f"r-{n}"] = np.zeros(n_voxels)
                values[f"r-{n}"][part["voxel"].to_numpy()] = part[f"r_{n}"].to_numpy()
            values["delta"] = values[f"r-{names[1]}"] - values[f"r-{names[0]}"]
            for key, array in values.items():
                stem = out / "maps" / f"sub-{subject}_{key}"
                for path in write_map(
                    array, stem, space, mask_img=mask, title=f"sub-{subject} {key}"
                ):
                    written[path.name] = path
    return written
