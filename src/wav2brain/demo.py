"""The end-to-end demo: simulate → prepare → train a few steps → save and reload → encode → check.

Everything runs on the CPU in a few minutes and on SIMULATED data: its figures show that the parts
fit together and recover planted ground truth, not anything about real brains. The last step is
:func:`wav2brain.simulation.recovery.simulated_recovery`, a check that can fail: planted voxels
against their ceilings, every onset shifted by ±0.5 and ±1 TR (must fit worse), noise voxels
against a permutation null. ``summary.json`` holds its figures under ``"simulated_recovery"``
and its verdict in ``"passed"``; at the ``"demo"`` size it passes, at the ``"test"`` size (two
stories of 20 s) there are too few TRs for it to.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wav2brain.atomic import write_text_atomic

logger = logging.getLogger(__name__)

ROUND_TRIP_TOLERANCE = 1e-5
"""Largest change (float32 rounding) allowed in predictions and hidden states by save/reload."""


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of the demo.

    Attributes
    ----------
    size : str
        Simulation preset (``"demo"``: 4 subjects, 12 min of story each, twice; ``"test"``: seconds).
    seed : int
        Seed of the simulation and of training.
    train_steps : int
        Optimiser steps of the brain-encoding model (Trainer ``max_steps``).
    batch_size : int
        Windows per step.
    learning_rate : float
        AdamW learning rate.
    head : str
        Head of :class:`~wav2brain.Wav2Vec2ForBrainEncoding` (``"conv"``, ``"linear"``, ``"mean"``).
    head_hidden_size : int
        Channels of the head.
    alphas : tuple of float
        Ridge penalties searched by the encoding step and by the recovery check.
    """

    size: str = "demo"
    seed: int = 0
    train_steps: int = 20
    batch_size: int = 4
    learning_rate: float = 1e-3
    head: str = "conv"
    head_hidden_size: int = 32
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def run_demo(out: str | Path, config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` and return its summary (also written to ``out/summary.json``).

    Each step reuses the output of a previous, complete run of that step, so an interrupted demo
    resumes where it stopped.
    """
    config = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bids = _simulate(out / "bids", config)
    dataset = _prepare(bids, out / "dataset")
    summary: dict[str, Any] = {"simulated": True, "config": asdict(config)}
    summary["training"] = _train(dataset, bids, out / "model", config)
    summary["encoding"] = _encode(dataset, bids, out, config)
    recovery = _recover(bids, dataset, out, config)
    summary["simulated_recovery"] = recovery
    summary["passed"] = recovery["passed"]
    write_text_atomic(json.dumps(summary, indent=2, default=str), out / "summary.json")
    return summary


def _simulate(path: Path, config: DemoConfig) -> Path:
    """Simulate into ``path``, or reuse a complete earlier simulation of the same configuration."""
    from wav2brain.simulation import SimulationConfig, simulate_dataset
    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    wanted = SimulationConfig.from_size(config.size, seed=config.seed)
    if path.is_dir():
        record = path / GROUND_TRUTH_DIR / "simulation.json"
        found = json.loads(record.read_text())["config"] if record.is_file() else None
        if found != wanted.to_dict():
            raise ValueError(
                f"{path} holds a simulation of another size or seed than --size {config.size} "
                f"--seed {config.seed} (see {record}); give a new --out"
            )
        logger.info("reusing the simulated BIDS dataset in %s", path)
        return path
    logger.info("simulating a %s-size BIDS dataset into %s", config.size, path)
    return simulate_dataset(path, wanted)


def _prepare(bids: Path, path: Path) -> Path:
    """Prepare inside the simulator's brain mask, so that columns map exactly to its voxels."""
    from wav2brain.data.prepare import prepare_dataset
    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    logger.info("preparing the Hugging Face dataset folder %s", path)
    return prepare_dataset(bids, path, mask=bids / GROUND_TRUTH_DIR / "brain_mask.nii.gz")


def _train(dataset: Path, bids: Path, path: Path, config: DemoConfig) -> dict[str, Any]:
    """Train a per-subject brain-encoding model from the simulator's backbone; round-trip it.

    A few steps check that windows, collator, model and ``Trainer`` work together; they are not a
    fit: whole-brain MSE is dominated by the noise-only voxels (over 99 % of them in the simulation),
    so the reported losses stay near 1 (z-scored BOLD). The training recipe is a separate step.
    """
    import numpy as np
    import torch
    from transformers import AutoModel, Trainer, TrainingArguments, Wav2Vec2Model

    from wav2brain import Wav2Vec2ForBrainEncoding
    from wav2brain.data.windows import BrainWindowCollator, BrainWindows, WindowConfig
    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    backbone = bids / GROUND_TRUTH_DIR / "model"
    probe = BrainWindows.from_folder(dataset)
    subjects = sorted(probe.subject_voxels)
    model = Wav2Vec2ForBrainEncoding.from_pretrained(
        backbone,
        subject_voxels={s: probe.subject_voxels[s] for s in subjects},
        tr=float(probe.responses[0]["tr"]),
        head=config.head,
        head_hidden_size=config.head_hidden_size,
    )
    windows = BrainWindows(
        probe.stimuli,
        probe.responses,
        WindowConfig(history_trs=model.config.history_trs, tr=model.config.tr),
        subjects=model.config.subjects,
    )
    collator = BrainWindowCollator(label_width=model.config.num_voxels)
    args = TrainingArguments(
        output_dir=str(path.parent / "trainer"),
        max_steps=config.train_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        logging_steps=max(config.train_steps // 5, 1),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=config.seed,
        dataloader_num_workers=0,
    )
    model.freeze_feature_encoder()
    trainer = Trainer(model=model, args=args, train_dataset=windows, data_collator=collator)
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    model.save_pretrained(path)
    model.save_backbone(path / "backbone")
    batch = collator([windows[i] for i in range(min(len(windows), config.batch_size))])
    model.eval()
    reloaded = AutoModel.from_pretrained(path).eval()
    plain = Wav2Vec2Model.from_pretrained(path / "backbone").eval()
    with torch.inference_mode():
        before = model(**batch).predictions
        after = reloaded(**batch).predictions
        states = model.wav2vec2(batch["input_values"], output_hidden_states=True).hidden_states
        plain_states = plain(batch["input_values"], output_hidden_states=True).hidden_states
    reload_diff = float((before - after).abs().max())
    backbone_diff = float(
        max((a - b).abs().max() for a, b in zip(states, plain_states, strict=True))
    )
    if reload_diff > ROUND_TRIP_TOLERANCE or backbone_diff > ROUND_TRIP_TOLERANCE:
        raise RuntimeError(
            f"round trip changed the model: predictions after save/reload differ by {reload_diff}, "
            f"exported backbone hidden states by {backbone_diff} (tolerance {ROUND_TRIP_TOLERANCE})"
        )
    return {
        "windows": len(windows),
        "subjects": subjects,
        "steps": int(result.global_step),
        "losses": losses,
        "reload_max_abs_diff": reload_diff,
        "backbone_max_abs_diff": backbone_diff,
        "layer_weights": np.asarray(reloaded.layer_weights.detach()).round(4).tolist(),
    }


def _encode(dataset: Path, bids: Path, out: Path, config: DemoConfig) -> dict[str, Any]:
    """Extract TR-grid features of the simulator's model and fit ridge encoding per layer."""
    import pandas as pd

    from wav2brain.cli import main as cli_main
    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    truth = bids / GROUND_TRUTH_DIR
    features = out / "features"
    encoding = out / "encoding"
    steps = (
        ["extract", str(dataset), "--model", str(truth / "model"), "--out", str(features)],
        [
            "encode",
            str(dataset),
            "--features",
            str(features),
            "--out",
            str(encoding),
            "--alphas",
            *map(str, config.alphas),
        ],
    )
    for argv in steps:
        status = cli_main(argv)
        if status:
            raise RuntimeError(f"wav2brain {argv[0]} failed with exit status {status}")
    scores = pd.read_parquet(encoding / "scores.parquet")
    best = scores.groupby(["subject", "voxel"], as_index=False)["r"].max()
    return {"n_scores": len(scores), "median_best_r": float(best["r"].median())}


def _recover(bids: Path, dataset: Path, out: Path, config: DemoConfig) -> dict[str, Any]:
    """The recovery check (SIMULATED ground truth) on the extracted features; its result as JSON.

    Sub-TR-shifted features of the timing controls are cached in ``out/recovery``, so a resumed
    demo does not run the model again.
    """
    from wav2brain.simulation.recovery import RecoveryConfig, simulated_recovery

    result = simulated_recovery(
        bids,
        dataset,
        out / "features",
        RecoveryConfig(alphas=config.alphas, seed=config.seed),
        work_dir=out / "recovery",
    )
    if not result.passed:
        logger.warning("SIMULATED recovery check failed: %s", "; ".join(result.failures))
    return result.to_dict()
