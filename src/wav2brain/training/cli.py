"""Entry of ``train.py`` and ``wav2brain train``: parse the recipe options, run, print the scores.

``--sweep sweep.yaml`` runs a sweep (:mod:`wav2brain.training.sweep`) instead of one recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None, prog: str = "train") -> int:
    """Parse ``[--config recipe.yaml | --sweep sweep.yaml] [--option value ...]`` and run.

    Bad options and bad data (``ValueError`` / ``FileNotFoundError``) and a push that cannot reach
    the Hub (``ConnectionError``) print one line ``<prog>: error: ...`` and return 2; Ctrl-C prints
    ``<prog>: interrupted`` and returns 130 (:data:`wav2brain.cli.INTERRUPTED`).
    """
    from wav2brain.cli import INTERRUPTED
    from wav2brain.training.arguments import parse_recipe_args
    from wav2brain.training.recipe import run_recipe
    from wav2brain.training.sweep import run_sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--sweep", type=Path)
    known, rest = pre.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if known.sweep is not None:
            print(json.dumps(run_sweep(known.sweep, rest), indent=2))
            return 0
        model_args, data_args, training_args = parse_recipe_args(rest)
        scores = run_recipe(model_args, data_args, training_args)
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    if training_args.should_save:
        summary = {
            stage: {key: value for key, value in result.items() if key != "per_subject"}
            for stage, result in scores.items()
            if stage.startswith("stage")
        }
        print(json.dumps(summary, indent=2))
    return 0
