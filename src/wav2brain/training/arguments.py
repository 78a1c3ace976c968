"""Options of the refinement recipe: model, data and training dataclasses, from YAML and the CLI.

``parse_recipe_args(argv)`` reads ``--config recipe.yaml`` (optional), then the command line, into
:class:`ModelArguments`, :class:`DataArguments` and :class:`BrainTrainingArguments` (which extends
``transformers.TrainingArguments``) with ``HfArgumentParser``: every YAML key is also an option
(``--key value``), the command line wins over the YAML, and a key or option that no dataclass has
fails at start naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
"""wav2vec2's attention projections: peft has no default LoRA targets for wav2vec2."""


@dataclass
class ModelArguments:
    """The model to refine and its head.

    Parameters
    ----------
    model_name_or_path : str
        A plain wav2vec2 checkpoint (folder or Hub id; only its backbone is loaded) or a saved
        ``Wav2Vec2ForBrainEncoding`` (whose subjects and voxel counts must match the data).
    head, head_hidden_size, head_kernel_size, readout_rank, layer_aggregation, loss, head_l2,
    backbone_l2_sp :
        Fields of :class:`~wav2brain.Wav2Vec2BrainEncodingConfig` (see there).
    history_trs : int
        Audio history per window (TRs); 6 TRs at TR 1.5 s = 9 s, as in Li et al. (2024).
    lora : bool
        Stage 2 trains LoRA adapters on the transformer's attention projections instead of every
        transformer weight; head and layer weights train in full in both cases.
    lora_rank, lora_alpha, lora_dropout, lora_target_modules :
        peft ``LoraConfig`` ``r``, ``lora_alpha`` (scaling ``alpha / r``), ``lora_dropout`` and
        ``target_modules``.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "starting checkpoint"})
    head: str = field(default="conv", metadata={"help": "conv | linear | mean"})
    head_hidden_size: int = 256
    head_kernel_size: int | None = None
    readout_rank: int | None = None
    layer_aggregation: str = field(
        default="weighted_sum", metadata={"help": "weighted_sum | last | a hidden-state index"}
    )
    loss: str = field(default="mse", metadata={"help": "mse | correlation | mse+correlation"})
    head_l2: float = 1e-5
    backbone_l2_sp: float = 0.0
    history_trs: int = 6
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class DataArguments:
    """The prepared dataset, the splits and the windows.

    Parameters
    ----------
    dataset : str
        A folder written by ``wav2brain prepare`` (tables ``stimuli`` and ``responses``).
    split_by : str
        ``"stimulus"`` (held-out stories) or ``"run"`` (held-out scans of a story, keyed by
        stimulus and run number for every subject). Never by window: neighbouring windows share
        5/6 of their audio.
    train_units, validation_units, test_units : list of str, optional
        Names of the stories (or ``stimulus:run-N`` runs) of each split; a split left out takes
        the units not named, drawn with ``split_seed`` (``n_validation`` / ``n_test`` of them).
    n_validation, n_test : int
        Units drawn for validation and test when not named.
    split_seed : int
        Seed of the drawn splits (written with the splits into ``splits.json``).
    subjects : list of str, optional
        Subjects to train on (default: all of the dataset).
    voxel_selection : str, optional
        Voxels to predict: a NIfTI ROI on the dataset's mask grid (nonzero = selected) or a text /
        ``.npy`` file of column indices into the BOLD rows, the same for every subject; or a
        folder of one such file per subject, ``sub-<id>.txt`` / ``.npy`` / ``.nii.gz`` (data in
        each subject's own space). Default: every voxel.
    lag_trs, full_windows_only :
        :class:`~wav2brain.data.windows.WindowConfig` fields.
    cache_pooled_states : bool
        Stage 1 trains on cached TR-pooled hidden states (computed once with the frozen backbone)
        instead of running the backbone every step.
    cache_dtype : str
        ``"float16"`` (half the disk) or ``"float32"`` (exact) storage of the cache.
    cache_dir : str, optional
        Where the cache lives (default ``output_dir/pooled_cache``).
    shuffle_train_stories : bool
        Control: pair each training run's BOLD with another training story's audio (a cyclic
        shift of the training stories), for a chance-level baseline.
    """

    dataset: str | None = field(default=None, metadata={"help": "prepared dataset folder"})
    split_by: str = field(default="stimulus", metadata={"help": "stimulus | run"})
    train_units: list[str] | None = None
    validation_units: list[str] | None = None
    test_units: list[str] | None = None
    n_validation: int = 1
    n_test: int = 1
    split_seed: int = 0
    subjects: list[str] | None = None
    voxel_selection: str | None = None
    lag_trs: float = 0.0
    full_windows_only: bool = False
    cache_pooled_states: bool = True
    cache_dtype: str = field(default="float16", metadata={"help": "float16 | float32"})
    cache_dir: str | None = None
    shuffle_train_stories: bool = False


@dataclass
class BrainTrainingArguments(TrainingArguments):
    """``TrainingArguments`` for stage 1, plus stage 2's own schedule.

    Stage 1 (head and layer weights, backbone frozen) uses the inherited ``max_steps`` /
    ``num_train_epochs``, ``learning_rate``, ``lr_scheduler_type`` and ``warmup_steps``. Stage 2
    (also the transformer, feature encoder frozen) uses the ``stage2_*`` fields; it is skipped
    when both ``stage2_max_steps`` and ``stage2_num_train_epochs`` are 0.

    Parameters
    ----------
    stage2_max_steps : int
        Optimiser steps of stage 2 (> 0 overrides ``stage2_num_train_epochs``).
    stage2_num_train_epochs : float
        Epochs of stage 2 when ``stage2_max_steps`` is 0.
    stage2_learning_rate : float
        Learning rate of head and layer weights in stage 2.
    stage2_backbone_learning_rate : float
        Learning rate of the transformer (or its LoRA adapters) in stage 2; below the head's.
    stage2_lr_scheduler_type : str
        Scheduler of stage 2 (a ``transformers.SchedulerType``).
    stage2_warmup_steps : int
        Warm-up steps of stage 2.
    stage2_save_steps : int
        Checkpoint interval (steps) of stage 2; 0 takes ``save_steps``. End-to-end steps cost far
        more than stage 1's cached ones, so stage 2 usually saves more often.
    """

    stage2_max_steps: int = 0
    stage2_num_train_epochs: float = 0.0
    stage2_learning_rate: float = 1e-4
    stage2_backbone_learning_rate: float = 1e-5
    stage2_lr_scheduler_type: str = "linear"
    stage2_warmup_steps: int = 0
    stage2_save_steps: int = 0
    export: bool = field(
        default=True, metadata={"help": "write export/ (backbone + full model, cards) at the end"}
    )
    push_full_model: bool = field(
        default=False,
        metadata={"help": "with --push_to_hub, also push the full brain-encoding model"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (owner/name of the backbone repo)")
        if self.push_to_hub and not self.export:
            raise ValueError("push_to_hub pushes the export: it needs export true")

    @property
    def has_stage2(self) -> bool:
        """Whether stage 2 runs."""
        return self.stage2_max_steps > 0 or self.stage2_num_train_epochs > 0


ARGUMENT_CLASSES = (ModelArguments, DataArguments, BrainTrainingArguments)


EXPECTED_OPTIONS = (
    "options of ModelArguments, DataArguments or BrainTrainingArguments, by their full names "
    "(see `python train.py --help`)"
)
"""What an unknown recipe key or option is told to be instead."""


def recipe_keys() -> set[str]:
    """Every option name a recipe may set."""
    return {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The options of a recipe YAML (a flat mapping), refusing keys no dataclass has.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a YAML file (:func:`~wav2brain.yamlfile.read_yaml`), not a mapping, or a key that is
        not an option (named, with the file).
    """
    from wav2brain.yamlfile import read_yaml

    path = Path(path)
    options = read_yaml(path, "recipe") or {}
    if not isinstance(options, dict):
        raise ValueError(
            f"{path}: a recipe is a mapping of option: value, got {type(options).__name__}"
        )
    unknown = sorted(set(options) - recipe_keys())
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s) {unknown}: expected {EXPECTED_OPTIONS}")
    return options


def parse_recipe_args(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, BrainTrainingArguments]:
    """Parse ``[--config recipe.yaml] [--option value ...]`` into the three dataclasses.

    The YAML's values become the parser's defaults, so the command line wins; an option no
    dataclass has fails naming it, as does a YAML key (:func:`read_recipe`). Options are taken
    by their full names only (``--max_step`` is refused, not read as ``--max_steps``).

    Raises
    ------
    ValueError
        Unknown keys or options, or a required option (``model_name_or_path``, ``dataset``,
        ``output_dir``) given nowhere.
    """
    import argparse
    import sys

    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=Path)
    known, rest = pre.parse_known_args(argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)
    parser.add_argument("--config", type=Path, help="recipe YAML (hf_configs/*.yaml)")
    if known.config is not None:
        parser.set_defaults(**read_recipe(known.config))
    *outputs, unknown = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if unknown:
        raise ValueError(
            f"unrecognized arguments: {' '.join(unknown)}: expected {EXPECTED_OPTIONS}"
        )
    model_args, data_args, training_args = outputs[:3]  # then the namespace of --config
    missing = [
        name
        for name, value in (
            ("model_name_or_path", model_args.model_name_or_path),
            ("dataset", data_args.dataset),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"missing required option(s) {missing}: give them in the recipe or as --{missing[0]}"
        )
    return model_args, data_args, training_args
