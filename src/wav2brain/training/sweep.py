"""A sweep of one recipe option (the paper's history-length analysis, its Figure 3a).

A sweep YAML names a recipe, one option and its values, and an output folder::

    recipe: hf_configs/refine_sim.yaml
    option: history_trs
    values: [1, 2, 3, 4, 5, 6]
    output_dir: runs/history_sweep

Each value runs the whole recipe into ``output_dir/<option>-<value>`` (resumable like any run:
a finished value is read back, not retrained); ``sweep.json`` lists the held-out scores of each
value after each stage: the curve of the figure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wav2brain.atomic import write_text_atomic

SWEEP_KEYS = {"recipe", "option", "values", "output_dir"}


def is_sweep(path: str | Path) -> bool:
    """Whether a YAML file is a sweep (it has ``option`` and ``values``) rather than a recipe."""
    from wav2brain.yamlfile import read_yaml

    content = read_yaml(path, "recipe")
    return isinstance(content, dict) and {"option", "values"} <= set(content)


def read_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep YAML, checked: its keys, a recipe option, a non-empty list of values."""
    from wav2brain.training.arguments import recipe_keys
    from wav2brain.yamlfile import read_yaml

    path = Path(path)
    sweep = read_yaml(path, "sweep") or {}
    if not isinstance(sweep, dict) or set(sweep) != SWEEP_KEYS:
        found = sorted(sweep) if isinstance(sweep, dict) else type(sweep).__name__
        raise ValueError(f"{path}: a sweep has exactly the keys {sorted(SWEEP_KEYS)}, got {found}")
    if sweep["option"] not in recipe_keys():
        raise ValueError(f"{path}: option {sweep['option']!r} is not a recipe option")
    if not isinstance(sweep["values"], list) or not sweep["values"]:
        raise ValueError(f"{path}: values must be a non-empty list, got {sweep['values']!r}")
    recipe = Path(sweep["recipe"])
    sweep["recipe"] = (
        recipe if recipe.is_absolute() or recipe.is_file() else path.parent / recipe.name
    )
    return sweep


def run_sweep(path: str | Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run the recipe once per value (``extra`` options apply to every run); return the curve."""
    from wav2brain.training.arguments import parse_recipe_args
    from wav2brain.training.recipe import METRICS_FILE, run_recipe

    sweep = read_sweep(path)
    out = Path(sweep["output_dir"])
    curve = []
    for value in sweep["values"]:
        run_dir = out / f"{sweep['option']}-{value}"
        metrics = run_dir / METRICS_FILE
        if metrics.is_file():
            scores = json.loads(metrics.read_text(encoding="utf-8"))
        else:
            argv = ["--config", str(sweep["recipe"]), *extra, f"--{sweep['option']}", str(value)]
            argv += ["--output_dir", str(run_dir)]
            if run_dir.is_dir():
                argv += ["--resume_from_checkpoint", "true"]
            scores = run_recipe(*parse_recipe_args(argv))
        curve.append(
            {
                sweep["option"]: value,
                **{
                    f"{stage}_{key}": scores[stage][key]
                    for stage in ("stage1", "stage2")
                    if stage in scores
                    for key in ("mean", "median", "top10_mean", "fraction_significant")
                },
            }
        )
    result = {"option": sweep["option"], "curve": curve}
    write_text_atomic(json.dumps(result, indent=2) + "\n", out / "sweep.json")
    return result
