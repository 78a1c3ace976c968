"""The two-stage brain refinement of Li et al. (2024) as one resumable run.

Stage 1 trains the head and layer weights with the backbone frozen (by default on cached TR-pooled
hidden states, :mod:`wav2brain.training.cache`); stage 2 also trains the transformer (the
convolutional feature encoder stays frozen), in full or through LoRA, with a lower learning rate
for the backbone than for the head and a schedule of its own. Held-out stories give the brain
scores after each stage.

Output folder (``output_dir``)::

    splits.json                 the stories (or runs) of each split
    l2_sp_reference.safetensors the backbone weights L2-SP pulls towards, fixed at load
    pooled_cache/               stage 1's cached pooled states (unless cache_dir is given)
    stage1/checkpoint-*/        stage 1 checkpoints; stage1/final: the model after stage 1
    stage2/checkpoint-*/        stage 2 checkpoints
    final/                      the refined model (LoRA merged), save_pretrained
    export/                     backbone/ (plain Wav2Vec2Model) and model/ (full, remote code),
                                each with its model card (:func:`wav2brain.publishing.export_run`)
    metrics.json                held-out scores after each stage, per subject
    run.json                    every option of the run

With ``push_to_hub`` and ``hub_model_id`` the export is pushed last, after every local output is
written (the Trainer itself never pushes checkpoints); a Hub that cannot be reached raises one
:class:`~wav2brain.publishing.hub.HubPushError`.

A run killed in either stage continues with ``--resume_from_checkpoint true`` (the latest
complete checkpoint of the stage it was in) or a checkpoint path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wav2brain.atomic import save_safetensors_atomic, share_as_umask, write_text_atomic
from wav2brain.training.arguments import BrainTrainingArguments, DataArguments, ModelArguments

logger = logging.getLogger(__name__)

L2_SP_FILE = "l2_sp_reference.safetensors"
METRICS_FILE = "metrics.json"
STAGE_DIRS = ("stage1", "stage2")
RESUME_LATEST = ("true", "last", "latest")


def load_config(model_args: ModelArguments, tr: float, subject_voxels: dict[str, int] | None):
    """The model's config: a saved brain model's own, checked against the data, or a new head.

    Raises
    ------
    ValueError
        A saved brain model of another TR than the data's, or whose subjects or voxel counts
        differ from the data's (each named).
    """
    from wav2brain.modeling import Wav2Vec2BrainEncodingConfig

    path = model_args.model_name_or_path
    config = Wav2Vec2BrainEncodingConfig.from_pretrained(path)
    is_brain_model = config.subject_voxels is not None or config.num_voxels is not None
    if is_brain_model:
        if abs(config.tr - tr) > 1e-3:
            raise ValueError(
                f"{path} is a brain-encoding model of TR {config.tr} s, but the dataset's runs "
                f"have TR {tr} s: train a new head from a plain checkpoint or use data of its TR"
            )
        if subject_voxels is not None:
            heads = config.subject_voxels or {}
            wrong = {
                s: (subject_voxels.get(s), heads.get(s))
                for s in set(heads) | set(subject_voxels)
                if subject_voxels.get(s) != heads.get(s)
            }
            if wrong:
                shown = ", ".join(
                    f"subject {s!r}: {d} voxels in the data, {h} in the model"
                    for s, (d, h) in sorted(wrong.items())
                )
                raise ValueError(f"{path}: the data do not match the model's heads: {shown}")
        return config
    head = dict(
        tr=tr,
        history_trs=model_args.history_trs,
        head=model_args.head,
        head_hidden_size=model_args.head_hidden_size,
        head_kernel_size=model_args.head_kernel_size,
        readout_rank=model_args.readout_rank,
        layer_aggregation=_aggregation(model_args.layer_aggregation),
        loss=model_args.loss,
        head_l2=model_args.head_l2,
        backbone_l2_sp=model_args.backbone_l2_sp,
    )
    if subject_voxels is not None:
        head.update(subject_voxels=subject_voxels, subjects=list(subject_voxels))
    return Wav2Vec2BrainEncodingConfig.from_pretrained(path, **head)


def recipe_data(data_args: DataArguments, config: Any):
    """The run's :class:`~wav2brain.training.data.RecipeData`: windows of ``config``'s TR,
    history and normalisation, split and selected as ``data_args`` say."""
    from wav2brain.data.windows import WindowConfig
    from wav2brain.training.data import RecipeData

    window_config = WindowConfig(
        tr=float(config.tr),
        history_trs=int(config.history_trs),
        do_normalize=bool(config.do_normalize),
        lag_trs=data_args.lag_trs,
        full_windows_only=data_args.full_windows_only,
    )
    return RecipeData(
        data_args.dataset,
        window_config,
        dict(
            split_by=data_args.split_by,
            train=data_args.train_units,
            validation=data_args.validation_units,
            test=data_args.test_units,
            n_validation=data_args.n_validation,
            n_test=data_args.n_test,
            seed=data_args.split_seed,
        ),
        subjects=data_args.subjects,
        voxel_selection=data_args.voxel_selection,
        shuffle_train_stories=data_args.shuffle_train_stories,
    )


def _aggregation(value: str) -> str | int:
    """``layer_aggregation`` from the command line: a hidden-state index arrives as a string."""
    return int(value) if value.lstrip("-").isdigit() else value


def _l2_sp_reference(model: Any, output_dir: Path, should_save: bool) -> None:
    """Fix the L2-SP reference: read the run's file, or take the loaded weights and save them."""
    from safetensors.torch import load_file

    path = output_dir / L2_SP_FILE
    model.set_l2_sp_reference()
    if path.is_file():
        saved = load_file(str(path))
        buffers = dict(model.l2_sp_reference.named_buffers())
        if set(saved) != set(buffers):
            raise ValueError(f"{path} holds the reference of another backbone")
        for name, value in saved.items():
            buffers[name].copy_(value)
        return
    if should_save:
        buffers = model.l2_sp_reference.named_buffers()  # non-persistent: not in state_dict()
        save_safetensors_atomic({k: v.contiguous() for k, v in buffers}, path)


def _stage_arguments(args: BrainTrainingArguments, stage: int, output_dir: Path):
    """TrainingArguments of one stage (stage 2 takes the ``stage2_*`` schedule)."""
    from transformers import TrainingArguments

    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init
    }
    values.update(output_dir=str(output_dir / STAGE_DIRS[stage - 1]), resume_from_checkpoint=None)
    values["remove_unused_columns"] = False
    values["push_to_hub"] = False  # the recipe pushes its export once, at the end
    if stage == 2:
        values.update(
            max_steps=args.stage2_max_steps if args.stage2_max_steps > 0 else -1,
            num_train_epochs=args.stage2_num_train_epochs,
            learning_rate=args.stage2_learning_rate,
            lr_scheduler_type=args.stage2_lr_scheduler_type,
            warmup_steps=args.stage2_warmup_steps,
        )
        if args.stage2_save_steps > 0:
            values["save_steps"] = args.stage2_save_steps
    return TrainingArguments(**values)


def _resume_point(resume: str | None, output_dir: Path, stage: int) -> str | None:
    """The checkpoint a stage resumes from (None: start the stage afresh)."""
    from wav2brain.training.trainer import last_complete_checkpoint

    if resume is None:
        return None
    stage_dir = output_dir / STAGE_DIRS[stage - 1]
    if str(resume).lower() in RESUME_LATEST:
        found = last_complete_checkpoint(stage_dir)
        return None if found is None else str(found)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {path} is not a checkpoint folder")
    return str(path) if path.parent.resolve() == stage_dir.resolve() else None


def run_recipe(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: BrainTrainingArguments,
    *,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run (or resume) both stages; return the held-out scores (also in ``metrics.json``).

    Parameters
    ----------
    model_args, data_args, training_args :
        The parsed options (:func:`~wav2brain.training.arguments.parse_recipe_args`).
    callbacks : sequence of TrainerCallback
        Extra callbacks for both stages' ``Trainer``.

    Raises
    ------
    ValueError
        Before any training: a dataset of several TRs, a model of another TR, subjects or voxel
        counts the model's heads do not have, bad split or cache options, an output folder of
        another run (``splits.json``), or one holding checkpoints without a resume asked for.
    """
    from wav2brain.training.data import dataset_tr

    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is None and any((output_dir / d).is_dir() for d in STAGE_DIRS):
        raise ValueError(
            f"{output_dir} holds checkpoints of an earlier run: pass --resume_from_checkpoint "
            "true to continue it, or give a new output_dir"
        )
    if data_args.cache_dtype not in ("float16", "float32"):
        raise ValueError(f"cache_dtype={data_args.cache_dtype!r}: expected float16 or float32")
    dataset = Path(data_args.dataset)
    if not all((dataset / table).is_dir() for table in ("stimuli", "responses")):
        raise FileNotFoundError(
            f"dataset {dataset} is not a prepared dataset folder (expected its stimuli/ and "
            "responses/ tables, as `wav2brain prepare` writes them)"
        )
    tr = dataset_tr(dataset)
    data = recipe_data(data_args, load_config(model_args, tr, None))
    config = load_config(model_args, tr, data.subject_voxels)
    if training_args.should_save:
        from wav2brain.training.splits import record_splits

        output_dir.mkdir(parents=True, exist_ok=True)
        record_splits(data.splits, output_dir)
        write_text_atomic(
            json.dumps(
                {
                    "model": dataclasses.asdict(model_args),
                    "data": dataclasses.asdict(data_args),
                    "training": training_args.to_dict(),
                },
                indent=2,
                default=str,
            ),
            output_dir / "run.json",
        )
    try:
        return _RecipeRun(model_args, data_args, training_args, data, config, callbacks).run(resume)
    finally:  # also when stopped: the Trainer's safetensors files are owner-only (atomic.py)
        if training_args.should_save and output_dir.is_dir():
            share_as_umask(output_dir)


class _RecipeRun:
    """The state of one run between its steps (internal to :func:`run_recipe`)."""

    def __init__(self, model_args, data_args, training_args, data, config, callbacks) -> None:
        self.model_args = model_args
        self.data_args = data_args
        self.args = training_args
        self.data = data
        self.config = config
        self.callbacks = list(callbacks)
        self.output_dir = Path(training_args.output_dir)
        self.subjects = list(config.subjects or data.subjects)

    def _load_model(self):
        """The starting model; the head is initialised from ``seed`` (runs are reproducible)."""
        from transformers import set_seed

        from wav2brain.modeling import Wav2Vec2ForBrainEncoding

        set_seed(self.args.seed)

        model = Wav2Vec2ForBrainEncoding.from_pretrained(
            self.model_args.model_name_or_path, config=self.config
        )
        model.freeze_feature_encoder()
        return model

    def _metrics_function(self, split: str):
        from wav2brain.training.metrics import metrics_function

        items = self.data.items[split]
        return metrics_function(
            [self.data.subject_of(i) for i in items],
            [i.row for i in items],
            self.data.subject_voxels,
        )

    def _datasets(self, cache) -> dict[str, Any]:
        from wav2brain.training.data import AudioItems, PooledItems

        result = {}
        for split in ("train", "validation", "test"):
            if not self.data.items[split]:
                continue
            if cache is None:
                result[split] = AudioItems(self.data, split, self.subjects)
            else:
                result[split] = PooledItems(self.data, split, self.subjects, cache)
        return result

    def _trainer(self, model, stage: int, datasets, backbone_lr=None, scored: bool = True):
        from wav2brain.training.data import RecipeCollator
        from wav2brain.training.trainer import BrainTrainer

        return BrainTrainer(
            model=model,
            args=_stage_arguments(self.args, stage, self.output_dir),
            train_dataset=datasets["train"],
            eval_dataset=datasets.get("validation"),
            data_collator=RecipeCollator(label_width=model.config.num_voxels),
            compute_metrics=self._metrics_function("validation")
            if scored and "validation" in datasets
            else None,
            callbacks=self.callbacks,
            backbone_learning_rate=backbone_lr,
        )

    def _test_scores(self, model, stage: int, cache) -> dict[str, Any]:
        """Scores of the test stories (through the cache when one is given)."""
        from wav2brain.training.metrics import brain_scores

        datasets = self._datasets(cache)
        output = self._trainer(model, stage, datasets, scored=False).predict(datasets["test"])
        predictions = output.predictions
        items = self.data.items["test"]
        return brain_scores(
            predictions[0] if isinstance(predictions, tuple) else predictions,
            output.label_ids,
            [self.data.subject_of(i) for i in items],
            [i.row for i in items],
            self.data.subject_voxels,
        )

    def _cache(self, model):
        from wav2brain.training.cache import build_pooled_cache

        folder = Path(self.data_args.cache_dir or self.output_dir / "pooled_cache")
        items = [i for split in self.data.items.values() for i in split]
        with self.args.main_process_first(desc="pooled hidden-state cache"):
            return build_pooled_cache(
                model,
                self.data,
                items,
                folder,
                dtype=self.data_args.cache_dtype,
                batch_size=self.args.per_device_eval_batch_size,
            )

    def run(self, resume: str | None) -> dict[str, Any]:
        model = self._load_model()
        _l2_sp_reference(model, self.output_dir, self.args.should_save)
        scores: dict[str, Any] = {}
        stage1_final = self.output_dir / STAGE_DIRS[0] / "final"
        model.freeze_backbone()
        cache = None
        if (stage1_final / "config.json").is_file() and resume is not None:
            model.load_state_dict(_read_weights(stage1_final))
            logger.info("stage 1 is complete (%s): skipping it", stage1_final)
        else:
            cache = self._cache(model) if self.data_args.cache_pooled_states else None
            trainer = self._trainer(model, 1, self._datasets(cache))
            trainer.train(resume_from_checkpoint=_resume_point(resume, self.output_dir, 1))
            if self.args.should_save:
                trainer.save_model(str(stage1_final))
        scores["stage1"] = self._test_scores(model, 1, cache)
        if self.args.has_stage2:
            model = self._stage2(model, resume)
            scores["stage2"] = self._test_scores(model, 2, None)
        if self.model_args.lora:
            from wav2brain.training.lora import merge_lora

            merge_lora(model)
        if self.args.should_save:
            model.save_pretrained(self.output_dir / "final")
            scores["splits"] = self.data.splits.to_dict()
            write_text_atomic(
                json.dumps(scores, indent=2, default=float), self.output_dir / METRICS_FILE
            )
            if self.args.export:
                self._export(model, scores)
        return scores

    def card(self, model, scores: dict[str, Any]) -> dict[str, Any]:
        """The run record for the model cards (keys of :mod:`wav2brain.publishing.card`)."""
        from wav2brain.reports.compare import change_summary, parameter_change
        from wav2brain.simulation.truth import is_simulated

        final = "stage2" if "stage2" in scores else "stage1"
        stages = {"stage 1": _stage_record(_stage_arguments(self.args, 1, self.output_dir))}
        if self.args.has_stage2:
            stage2 = _stage_record(_stage_arguments(self.args, 2, self.output_dir))
            stage2["backbone_learning_rate"] = self.args.stage2_backbone_learning_rate
            stages["stage 2"] = stage2
        lora = None
        if self.model_args.lora:
            lora = {
                "r": self.model_args.lora_rank,
                "lora_alpha": self.model_args.lora_alpha,
                "lora_dropout": self.model_args.lora_dropout,
                "target_modules": list(self.model_args.lora_target_modules),
            }
        base = _read_weights(self.output_dir / STAGE_DIRS[0] / "final")
        return {
            "base_model": str(self.model_args.model_name_or_path),
            "dataset": {
                "name": _dataset_name(self.data_args.dataset),
                "id": self.data_args.dataset,
            },
            "subjects": list(self.subjects),
            "voxels": {s: int(self.data.subject_voxels[s]) for s in self.subjects},
            "voxel_selection": self.data_args.voxel_selection or "all voxels of the masks",
            "tr": float(self.config.tr),
            "history_trs": int(self.config.history_trs),
            "splits": {
                k: list(getattr(self.data.splits, k)) for k in ("train", "validation", "test")
            },
            "stages": stages,
            "lora": lora,
            "scores": {k: v for k, v in scores[final].items()},
            "parameter_change": change_summary(parameter_change(base, model)),
            "simulated": is_simulated(self.data_args.dataset),
            **({"hub_model_id": self.args.hub_model_id} if self.args.hub_model_id else {}),
        }

    def _export(self, model, scores: dict[str, Any]) -> None:
        """``export/`` with its cards; then the push, when asked, as the very last step."""
        from wav2brain.publishing.export import export_run
        from wav2brain.publishing.hub import push_export

        paths = export_run(
            model,
            self.output_dir / "export",
            feature_extractor=None,  # from the config: its do_normalize, 16 kHz
            card=self.card(model, scores),
        )
        if self.args.push_to_hub:
            push_export(
                paths,
                self.args.hub_model_id,
                token=self.args.hub_token,
                private=bool(self.args.hub_private_repo),
                include_full=self.args.push_full_model,
            )

    def _stage2(self, model, resume: str | None):
        model.unfreeze_backbone(feature_encoder=False)
        if self.model_args.lora:
            from wav2brain.training.lora import add_lora

            add_lora(
                model,
                rank=self.model_args.lora_rank,
                alpha=self.model_args.lora_alpha,
                dropout=self.model_args.lora_dropout,
                target_modules=self.model_args.lora_target_modules,
            )
        datasets = self._datasets(None)
        trainer = self._trainer(
            model, 2, datasets, backbone_lr=self.args.stage2_backbone_learning_rate
        )
        trainer.train(resume_from_checkpoint=_resume_point(resume, self.output_dir, 2))
        return model


def _dataset_name(folder: str | Path) -> str:
    """A prepared folder's name for the card: its BIDS dataset's folder (``ds002345``), else its own."""
    from wav2brain.data.prepare import prepared_bids_root

    root = prepared_bids_root(folder)
    return root.name if root is not None else Path(folder).name


STAGE_RECORD_KEYS = (
    "learning_rate",
    "max_steps",
    "num_train_epochs",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "seed",
)
"""Hyperparameters of a stage written into the model card."""


def _stage_record(args) -> dict[str, Any]:
    """One stage's hyperparameters for the card (the :data:`STAGE_RECORD_KEYS` of its arguments)."""
    return {key: getattr(args, key) for key in STAGE_RECORD_KEYS}


def _read_weights(folder: Path) -> dict[str, Any]:
    """The state dict of a saved model folder (safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))
