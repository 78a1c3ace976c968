"""``wav2brain train RECIPE.yaml [--option value ...]``: the brain-refinement recipe (or a sweep).

A thin shell over :mod:`wav2brain.training` (the same as ``python train.py`` / ``accelerate launch
train.py``); every recipe key is an option (``python train.py --help`` lists them).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "train",
        help="two-stage brain refinement of wav2vec 2.0 (recipe YAML + options; see train.py --help)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "recipe", type=Path, help="recipe YAML (hf_configs/refine_*.yaml) or sweep YAML"
    )
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="recipe options")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the recipe (or a sweep with ``--sweep``) with the given options."""
    from wav2brain.training.cli import main
    from wav2brain.training.sweep import is_sweep

    flag = "--sweep" if is_sweep(args.recipe) else "--config"
    return main([flag, str(args.recipe), *args.recipe_args], prog="wav2brain train")
