"""Model cards of exported models, from the template in ``wav2brain/model_cards``.

:func:`build_model_card` fills ``model_cards/brain_refined.md`` (a Jinja template) and a
:class:`huggingface_hub.ModelCardData` (YAML metadata: base model, datasets, tags, and the held-out
brain scores as ``model-index`` results, one :class:`huggingface_hub.EvalResult` per pooled score)
from the model's config and a ``card`` mapping, the run record of the training recipe. Its keys,
all optional (:data:`CARD_KEYS`); an unknown key is an error, so a misspelt one is not silently lost:

``base_model`` (str)
    The checkpoint training started from (Hub id or path); default the model's ``name_or_path``.
``model_name`` (str)
    Title of the card and name of the ``model-index`` entry; default from the repository id.
``dataset`` (str or mapping)
    The brain dataset: a name, or ``{"name": str, "id": str}`` (``id``: a Hub dataset id or a
    folder; a Hub id also goes into the ``datasets`` metadata).
``subjects`` (list of str)
    Default ``config.subjects`` (or one unnamed subject).
``voxels`` (mapping subject -> int, or int)
    Voxels per subject; default ``config.subject_voxels`` / ``config.num_voxels``; must agree.
``voxel_selection`` (str)
    How the voxels were chosen (e.g. "auditory and language ROIs of the Glasser atlas").
``tr`` (float, seconds), ``history_trs`` (int, TRs)
    Checked against the config, which they must equal (the config is the truth).
``splits`` (mapping split -> list of str)
    Stories of each split (``train``, ``validation``, ``test``).
``stages`` (mapping stage -> mapping)
    Hyperparameters of each stage, e.g. ``{"stage 1": {"learning_rate": 1e-3, ...}, ...}``.
``lora`` (mapping or None)
    LoRA settings of stage 2 (``r``, ``lora_alpha``, ``target_modules``, ...); None: full fine-tuning.
``scores`` (mapping)
    Held-out brain scores: pooled ``{"mean": r, "median": r, "top10_mean": r,
    "fraction_significant": share}`` (any metric names; finite numbers), optionally with
    ``"per_subject": {subject: {metric: value}}``.
``score_split`` (str)
    Split the scores were computed on; default ``"test"``.
``parameter_change`` (mapping parameter type -> share in [0, 1])
    From :func:`wav2brain.reports.compare.change_summary`.
``parameter_change_threshold`` (float)
    Relative change above which a parameter counted as changed; default
    :data:`wav2brain.reports.compare.DEFAULT_CHANGE_THRESHOLD`.
``simulated`` (bool)
    Trained on simulated data: the card says SIMULATED at the top and in the tags.
``license`` (str, default ``"apache-2.0"``), ``language`` (str, default ``"en"``), ``tags`` (list of str)
    Card metadata.
``hub_model_id`` (str)
    Repository id of the backbone; the full model is ``<hub_model_id>-brain-encoding``
    (:func:`wav2brain.publishing.hub.full_model_repo_id`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

CARD_KEYS = (
    "base_model",
    "model_name",
    "dataset",
    "subjects",
    "voxels",
    "voxel_selection",
    "tr",
    "history_trs",
    "splits",
    "stages",
    "lora",
    "scores",
    "score_split",
    "parameter_change",
    "parameter_change_threshold",
    "simulated",
    "license",
    "language",
    "tags",
    "hub_model_id",
)
"""Keys a ``card`` mapping may hold (see the module docstring)."""

KINDS = ("backbone", "brain_encoding")
PLACEHOLDER_REPO = "path/to/this/folder"
"""Shown in the usage example when the card names no ``hub_model_id``."""
DEFAULT_TITLES = {"backbone": "wav2vec2-brain-refined", "brain_encoding": "wav2vec2-brain-encoding"}
TEMPLATE = "brain_refined.md"
CITATIONS = "citations.bib"
SCORE_LABELS = {
    "mean": "mean r",
    "median": "median r",
    "top10_mean": "top-10 % mean r",
    "fraction_significant": "fraction significant",
    "n_voxels": "voxels scored",
}
"""Readable names of the pooled scores of :func:`wav2brain.metrics.voxelwise_scores`."""
COUNT_SCORES = ("n_voxels",)
"""Scores that are counts: in the card's table, not in ``model-index``."""
SHARE_SCORES = ("fraction_significant",)
"""Scores that are shares of voxels, not correlations: ``model-index`` type ``fraction``."""


def template_path(name: str = TEMPLATE) -> Path:
    """Path of a file shipped in ``wav2brain/model_cards`` (package data)."""
    return Path(str(resources.files("wav2brain").joinpath("model_cards", name)))


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"card {where} must be a finite number, got {value!r}")
    return float(value)


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"card {where} must be a list of strings, got {value!r}")
    return list(value)


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"card {where} must be a mapping, got {type(value).__name__}: {value!r}")
    return value


def check_card(card: Mapping[str, Any] | None, config) -> dict[str, Any]:
    """Validate a ``card`` mapping against the model's config; return it with defaults filled.

    Raises
    ------
    ValueError
        For an unknown key, a value of the wrong type, a non-finite score, or a ``tr``,
        ``history_trs``, ``subjects`` or ``voxels`` that disagrees with the config (naming both).
    """
    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown card keys {unknown}: expected some of {list(CARD_KEYS)}")
    for key in ("tr", "history_trs"):
        if key in card and card[key] != getattr(config, key):
            raise ValueError(
                f"card {key}={card[key]!r} disagrees with the model's config ({key}="
                f"{getattr(config, key)!r}); the card describes the model, so fix the run record"
            )
    own_subjects = list(config.subjects or [])
    own_voxels = dict(config.subject_voxels) if config.subject_voxels else config.num_voxels
    if "subjects" in card:
        subjects = _string_list(card["subjects"], "subjects")
        if own_subjects and subjects != own_subjects:
            raise ValueError(
                f"card subjects {subjects} disagree with the model's heads {own_subjects}"
            )
    if "voxels" in card and card["voxels"] != own_voxels:
        raise ValueError(f"card voxels {card['voxels']!r} disagree with the model's {own_voxels!r}")
    card.setdefault("subjects", own_subjects)
    card.setdefault("voxels", own_voxels)
    dataset = card.get("dataset", {})
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    dataset = _mapping(dataset, "dataset")
    if set(dataset) - {"name", "id"}:
        raise ValueError(f"card dataset keys {sorted(dataset)}: expected 'name' and 'id'")
    card["dataset"] = dict(dataset)
    card["splits"] = {
        split: _string_list(stories, f"splits[{split!r}]")
        for split, stories in _mapping(card.get("splits", {}), "splits").items()
    }
    card["stages"] = {
        stage: dict(_mapping(values, f"stages[{stage!r}]"))
        for stage, values in _mapping(card.get("stages", {}), "stages").items()
    }
    if card.get("lora") is not None:
        card["lora"] = dict(_mapping(card["lora"], "lora"))
    scores = dict(_mapping(card.get("scores", {}), "scores"))
    per_subject = dict(_mapping(scores.pop("per_subject", {}), "scores['per_subject']"))
    card["scores"] = {name: _number(v, f"scores[{name!r}]") for name, v in scores.items()}
    card["per_subject_scores"] = {
        subject: {
            name: _number(v, f"scores['per_subject'][{subject!r}][{name!r}]")
            for name, v in _mapping(values, f"scores['per_subject'][{subject!r}]").items()
        }
        for subject, values in per_subject.items()
    }
    change = _mapping(card.get("parameter_change", {}), "parameter_change")
    card["parameter_change"] = {}
    for name, share in change.items():
        share = _number(share, f"parameter_change[{name!r}]")
        if not 0 <= share <= 1:
            raise ValueError(f"card parameter_change[{name!r}]={share} must be a share in [0, 1]")
        card["parameter_change"][name] = share
    if "parameter_change_threshold" in card:
        threshold = _number(card["parameter_change_threshold"], "parameter_change_threshold")
        if threshold <= 0:
            raise ValueError(f"card parameter_change_threshold={threshold} must be positive")
    card["tags"] = _string_list(card.get("tags", []), "tags")
    for key in (
        "base_model",
        "model_name",
        "voxel_selection",
        "license",
        "language",
        "hub_model_id",
    ):
        if card.get(key) is not None and not isinstance(card[key], str):
            raise ValueError(f"card {key} must be a string, got {card[key]!r}")
    if not isinstance(card.get("simulated", False), bool):
        raise ValueError(f"card simulated must be true or false, got {card['simulated']!r}")
    return card


def _format(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_format(v) for v in value)
    return str(value)


def _score_rows(card: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(card["scores"])
    for values in card["per_subject_scores"].values():
        names += [n for n in values if n not in names]
    rows = []
    if card["scores"]:
        rows.append(["all subjects", *(_format(card["scores"].get(n, "")) for n in names)])
    for subject, values in card["per_subject_scores"].items():
        rows.append([subject, *(_format(values.get(n, "")) for n in names)])
    return [SCORE_LABELS.get(n, n) for n in names], rows


def build_model_card(
    card: Mapping[str, Any] | None,
    model,
    *,
    kind: str,
    repo_id: str | None = None,
    adapter: bool = False,
):
    """The :class:`huggingface_hub.ModelCard` of an exported folder.

    Parameters
    ----------
    card : mapping or None
        The run record (keys in the module docstring); None gives a card from the config alone.
    model : Wav2Vec2ForBrainEncoding
        The exported model (its config, name and learned layer weights are read).
    kind : {"backbone", "brain_encoding"}
        Which folder the card describes.
    repo_id : str, optional
        Where the folder will live on the Hub (shown in the usage example); default
        ``card["hub_model_id"]`` (and its ``-brain-encoding`` twin for the full model), else a
        placeholder.
    adapter : bool
        The full model's LoRA adapters are kept apart (``adapter/``), not merged.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from wav2brain import __version__
    from wav2brain.reports.compare import DEFAULT_CHANGE_THRESHOLD

    from .hub import full_model_repo_id

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    config = model.config
    card = check_card(card, config)
    hub_id = card.get("hub_model_id")
    full_id = full_model_repo_id(hub_id) if hub_id else None
    if repo_id is None:
        repo_id = (full_id if kind == "brain_encoding" else hub_id) or PLACEHOLDER_REPO
    base_model = card.get("base_model") or (model.name_or_path or None)
    dataset = card["dataset"]
    dataset_name = dataset.get("name") or dataset.get("id") or "not recorded"
    title = card.get("model_name") or (
        repo_id.rsplit("/", 1)[-1] if repo_id != PLACEHOLDER_REPO else DEFAULT_TITLES[kind]
    )
    dataset_id = dataset.get("id")
    hub_dataset = dataset_id if dataset_id and _looks_like_hub_id(dataset_id) else None
    eval_results = [
        EvalResult(
            task_type="brain-encoding",
            task_name="fMRI encoding of natural speech",
            dataset_type=hub_dataset or dataset_name,  # a local folder's path is not an id
            dataset_name=dataset_name,
            dataset_split=card.get("score_split") or "test",
            metric_type="fraction" if name in SHARE_SCORES else "pearsonr",
            metric_name=f"{SCORE_LABELS.get(name, name)} (held-out stories)",
            metric_value=value,
        )
        for name, value in card["scores"].items()
        if name not in COUNT_SCORES
    ]
    tags = ["wav2vec2", "fmri", "brain-encoding", "wav2brain", *card["tags"]]
    if card.get("simulated"):
        tags.append("simulated")
    card_data = ModelCardData(
        base_model=base_model if base_model and _looks_like_hub_id(base_model) else None,
        datasets=[hub_dataset] if hub_dataset else None,
        eval_results=eval_results or None,
        model_name=title,
        language=card.get("language") or "en",
        license=card.get("license") or "apache-2.0",
        library_name="transformers",
        pipeline_tag="feature-extraction" if kind == "backbone" else None,
        metrics=["pearsonr"] if eval_results else None,
        tags=list(dict.fromkeys(tags)),
    )
    voxels = card["voxels"]
    subjects = card["subjects"]
    score_names, score_rows = _score_rows(card)
    weights = None
    if config.layer_aggregation == "weighted_sum":
        weights = ", ".join(f"{w:.3f}" for w in model.layer_weights.float().cpu().tolist())
    lora = card.get("lora")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        kind=kind,
        title=title,
        repo_id=repo_id,
        full_model_id=full_id if kind == "backbone" else None,
        simulated=bool(card.get("simulated")),
        base_model=base_model,
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        do_normalize=str(config.do_normalize).lower(),
        head=config.head,
        layer_aggregation=config.layer_aggregation,
        learned_layer_weights=weights,
        history_trs=config.history_trs,
        tr=config.tr,
        window_seconds=_format(float(config.history_trs * config.tr)),
        dataset_name=dataset_name,
        dataset_id=dataset_id,
        subjects_text=(
            f"{len(subjects)} subjects ({', '.join(subjects)})"
            if subjects
            else "one subject (single-subject head)"
        ),
        voxels_text=(
            ", ".join(f"{s}: {n}" for s, n in voxels.items())
            if isinstance(voxels, Mapping)
            else str(voxels)
        ),
        voxel_selection=card.get("voxel_selection"),
        splits=card["splits"],
        stages={
            s: {k: _format(v) for k, v in values.items()} for s, values in card["stages"].items()
        },
        lora=lora,
        adapter=adapter,
        lora_text=", ".join(f"{k}={_format(v)}" for k, v in (lora or {}).items()),
        score_names=score_names,
        score_rows=score_rows,
        score_split=card.get("score_split") or "test",
        parameter_change={k: f"{100 * v:.1f} %" for k, v in card["parameter_change"].items()},
        change_threshold=_format(card.get("parameter_change_threshold", DEFAULT_CHANGE_THRESHOLD)),
        citations=template_path(CITATIONS).read_text(encoding="utf-8").strip(),
        wav2brain_version=__version__,
    )


def _looks_like_hub_id(name: str) -> bool:
    """A Hub repository id (``name`` or ``owner/name``), not a local path."""
    if Path(name).exists() or Path(name).is_absolute() or name.startswith("."):
        return False
    return name.count("/") <= 1


def write_model_card(model_card, folder: str | Path) -> Path:
    """Write ``model_card`` as ``folder/README.md`` (temporary name, then rename)."""
    from wav2brain.atomic import write_text_atomic

    return write_text_atomic(str(model_card), Path(folder) / "README.md")
