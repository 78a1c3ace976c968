"""``wav2brain demo``: the whole study of both papers on a dataset the toolkit simulates itself.

The demo is the shipped study file ``hf_configs/study_sim.yaml`` (package data:
:data:`STUDY_FILE`) run by :func:`run_study`, with
the run folder, seed, size and model given on the command line: one place holds the study, the
demo only chooses among presets of it. The ``"demo"`` size is the file as shipped (4 subjects,
3 stories of 4 min heard twice, a few hundred refinement steps, five probing tasks); smaller
sizes (:data:`DEMO_SIZES`) override a few of its values, so that the test suite can run the
whole pipeline in minutes.

Everything it shows is SIMULATED: the figures say that the parts fit together and recover
planted ground truth, nothing about real brains. ``--model`` runs the same steps with another
model (real weights) as the base; the simulated BOLD is still driven by the simulator's planted
model, so the ground-truth checks do not apply and ``check_simulated`` is skipped (logged).

A demo folder is refused when it holds another demo's outputs (other size, seed or model) or
files that are not a demo's, naming the folder and what differs; the same demo run again reuses
every finished step.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wav2brain.study.config import StudyConfig
from wav2brain.study.runner import LOCK_FILE, StudyResult, read_record, run_study
from wav2brain.study.shipped import CONFIG_DIR

logger = logging.getLogger(__name__)

STUDY_FILE = CONFIG_DIR / "study_sim.yaml"
"""The demo's study file; its relative paths (the recipe) are read from the package folder."""

DEMO_SIZES: dict[str, dict[str, Any]] = {
    "demo": {},
    "small": {
        "refine": {"max_steps": 1000, "stage2_max_steps": 10, "save_steps": 500},
        "probe_tasks": ("ks",),
    },
}
"""Presets of the demo: overrides of the shipped study file (``"demo"``: none).

``"small"`` (our choice, measured for the test suite) keeps the demo's simulation: the
encoding recovery check's timing controls need its 4 subjects and 24 min of scans each (3
subjects of 3 stories of 150 s heard twice fail them: t 5.2-6.0 against a critical 6.96 at
2 degrees of freedom; the simulator's ``"test"`` size is shorter still). It halves the head
steps of refinement, keeps 10 end-to-end steps and probes keyword spotting only
(the whole small demo: 56 s on 2 idle cores).
"""


def demo_config(
    out: str | Path,
    *,
    size: str = "demo",
    seed: int = 0,
    model: str | None = None,
) -> StudyConfig:
    """The demo's study: the shipped ``study_sim.yaml`` with these values.

    Parameters
    ----------
    out : str or Path
        Run folder.
    size : str
        A key of :data:`DEMO_SIZES`.
    seed : int
        Seed of the simulation, the refinement and the probing tasks.
    model : str, optional
        Base model (Hub id or folder) instead of the simulator's planted model.
    """
    if size not in DEMO_SIZES:
        raise ValueError(f"--size {size!r}: expected one of {', '.join(DEMO_SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {seed!r}")
    config = StudyConfig.from_yaml(STUDY_FILE, root=CONFIG_DIR.parent)
    preset = DEMO_SIZES[size]
    data = dataclasses.replace(
        config.data, simulate={**config.data.simulate, **preset.get("simulate", {}), "seed": seed}
    )
    refine = dataclasses.replace(
        config.refine, options={**config.refine.options, **preset.get("refine", {}), "seed": seed}
    )
    probe = dataclasses.replace(
        config.probe, tasks=preset.get("probe_tasks", config.probe.tasks), seed=seed
    )
    steps = dict(config.steps) if config.steps is not None else None
    models = config.models
    if model is not None:
        models = dataclasses.replace(models, base=model)
        if steps is not None and steps.pop("check_simulated", None) is not None:
            logger.info(
                "check_simulated skipped: the base model is %s, while the simulated BOLD is "
                "driven by the simulator's planted model, so its ground truth does not apply",
                model,
            )
    return config.replace(
        out=Path(out), data=data, refine=refine, probe=probe, models=models, steps=steps
    )


def demo_identity(size: str, seed: int, model: str | None) -> dict[str, Any]:
    """What makes two demos the same (recorded as ``"demo"`` in study.json)."""
    return {"size": size, "seed": seed, "model": model}


def check_demo_folder(out: str | Path, identity: dict[str, Any]) -> None:
    """Refuse a folder holding another demo's outputs, or files that are not a demo's.

    Raises
    ------
    ValueError
        Naming the folder and each value that differs (or that it holds no study.json).
    """
    out = Path(out)
    record = read_record(out)
    if record is None:
        if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
            raise ValueError(
                f"{out} is not empty and holds no demo (no study.json): give a new --out"
            )
        return
    found = record.get("demo")
    if found == identity:
        return
    if not isinstance(found, dict):
        raise ValueError(
            f"{out} holds the study {record.get('name')!r}, not a demo: give a new --out"
        )
    differs = [
        f"{key} {found.get(key)!r} there, {value!r} asked"
        for key, value in identity.items()
        if found.get(key) != value
    ]
    raise ValueError(
        f"{out} holds another demo's outputs ({'; '.join(differs)}): give a new --out "
        "(or remove the folder) instead of mixing the two"
    )


def run_demo(
    out: str | Path,
    *,
    size: str = "demo",
    seed: int = 0,
    model: str | None = None,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    echo=print,
) -> StudyResult:
    """Run (or resume) the demo into ``out`` (see the module docstring).

    ``only`` runs some of its steps (as ``wav2brain run --steps``).
    """
    config = demo_config(out, size=size, seed=seed, model=model)
    identity = demo_identity(size, seed, model)
    check_demo_folder(out, identity)
    return run_study(config, only=only, dry_run=dry_run, echo=echo, extra={"demo": identity})
