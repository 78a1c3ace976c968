"""``Trainer`` of the recipe: a lower backbone learning rate, a NaN stop, complete-only checkpoints.

- Stage 2's optimiser has two learning rates: ``learning_rate`` for the head and layer weights,
  ``backbone_learning_rate`` for the backbone's trainable weights (transformer or LoRA adapters).
- A non-finite training loss stops training at once, naming the step and the last complete
  checkpoint (:class:`NonFiniteLossError`).
- Evaluation runs windows of equal length together (:meth:`BrainTrainer.prediction_step`): with
  wav2vec2-base's group-norm front end a padded window gives other hidden states than alone, so
  held-out scores would depend on the eval batch size.
- Evaluation and prediction never drop a last partial batch, whatever ``dataloader_drop_last``
  says (it is for training batches): scores are per voxel over every held-out TR, in order.
- A checkpoint counts only once every file is written: a marker file is added last, a failed write
  removes the half-written folder (the previous checkpoint stays intact: transformers deletes old
  checkpoints only after a successful save), and :func:`last_complete_checkpoint` ignores folders
  without the marker (a process killed while writing).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

COMPLETE_MARKER = "wav2brain_checkpoint_complete"
"""File written into a checkpoint folder after every other file of it."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint of ``folder`` with the highest step, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if match and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


class BrainTrainer(Trainer):
    """``Trainer`` with the recipe's optimiser groups, NaN stop and complete-only checkpoints.

    Parameters
    ----------
    backbone_learning_rate : float, optional
        Learning rate of trainable ``wav2vec2.*`` parameters; None: one learning rate for all.
    **kwargs
        ``Trainer`` arguments.
    """

    def __init__(self, *args, backbone_learning_rate: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backbone_learning_rate = backbone_learning_rate

    @contextmanager
    def _every_held_out_item(self) -> Iterator[None]:
        """``dataloader_drop_last`` off while a held-out dataloader is built."""
        drop_last = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = False
        try:
            yield
        finally:
            self.args.dataloader_drop_last = drop_last

    def get_eval_dataloader(self, eval_dataset=None):
        """The evaluation batches, the last partial one included."""
        with self._every_held_out_item():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        """The prediction batches, the last partial one included."""
        with self._every_held_out_item():
            return super().get_test_dataloader(test_dataset)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW (or ``args.optim``) with the backbone in groups of its own learning rate."""
        if self.backbone_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups = []
        for backbone, rate in (
            (False, self.args.learning_rate),
            (True, self.backbone_learning_rate),
        ):
            for decayed in (True, False):
                params = [
                    p
                    for n, p in model.named_parameters()
                    if p.requires_grad
                    and n.startswith("wav2vec2.") == backbone
                    and (n in decay) == decayed
                ]
                if params:
                    weight_decay = self.args.weight_decay if decayed else 0.0
                    groups.append({"params": params, "lr": rate, "weight_decay": weight_decay})
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """One step; raises :class:`NonFiniteLossError` on a NaN or infinite loss."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = last_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1} "
                f"(of {self.args.output_dir}); last good checkpoint: "
                f"{last if last is not None else 'none yet'}. Lower the learning rate or check "
                "the data; resume with --resume_from_checkpoint"
            )
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Predict each group of equal-length windows of the batch unpadded, in batch order.

        The loss is the mean of the groups' losses weighted by their sizes.
        """
        mask = inputs.get("attention_mask")
        lengths = None if mask is None else mask.sum(dim=-1)
        if lengths is None or bool((lengths == lengths[0]).all()):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        labels = inputs["labels"]
        predictions = labels.new_zeros(labels.shape)
        loss = labels.new_zeros(())
        for length in torch.unique(lengths).tolist():
            rows = (lengths == length).nonzero(as_tuple=True)[0]
            group = {key: value[rows] for key, value in inputs.items()}
            group["input_values"] = group["input_values"][:, :length]
            group["attention_mask"] = group["attention_mask"][:, :length]
            part_loss, part, _ = super().prediction_step(model, group, False, ignore_keys)
            loss = loss + part_loss * len(rows) / len(lengths)
            predictions[rows, : part.shape[1]] = part
        return loss, (None if prediction_loss_only else predictions), labels

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / (
            f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        if self.args.should_save:
            (folder / COMPLETE_MARKER).write_text(f"{self.state.global_step}\n", encoding="utf-8")
