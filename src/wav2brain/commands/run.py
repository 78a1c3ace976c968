"""``wav2brain run --config study.yaml``: a whole study from one file (see :mod:`wav2brain.study`).

Runs the study's steps in order, each as its public subcommand, recorded in ``OUT/study.json``;
a re-run skips every step whose command and inputs are unchanged and reruns a changed one with
the steps that depend on it. ``--steps`` runs some steps only; ``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``run`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "run",
        help="run a whole study (data, models, steps) from a study YAML (hf_configs/study_*.yaml)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", type=Path, required=True, help="study YAML")
    add_step_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps`` and ``--dry-run`` (shared by ``run`` and ``demo``)."""
    parser.add_argument(
        "--steps",
        type=lambda text: [step.strip() for step in text.split(",") if step.strip()],
        help="comma-separated step ids to run (e.g. extract:base,encode:base; default: all)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print each step's command; run nothing"
    )


def run(args: argparse.Namespace) -> int:
    """Read the study file and run it."""
    from wav2brain.study import StudyConfig, run_study

    config = StudyConfig.from_yaml(args.config)
    return exit_status(lambda: run_study(config, only=args.steps, dry_run=args.dry_run), "run")


def exit_status(start, command: str) -> int:
    """Run a study (``start()``); 1 when a step failed (its command line printed) or a required
    SIMULATED ground-truth check failed, else 0."""
    import sys

    try:
        result = start()
    except RuntimeError as error:
        print(f"wav2brain {command}: error: {error}", file=sys.stderr)
        return 1
    return 1 if result.failed_checks else 0
