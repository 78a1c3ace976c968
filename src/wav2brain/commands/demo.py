"""``wav2brain demo --out DIR``: the whole study of both papers on SIMULATED data (see
:mod:`wav2brain.study.demo`).

simulate → prepare → extract → encode → selectivity → anchor → refine (and its shuffled control)
→ extract and anchor the refined model → compare → probing tasks → probe → ground-truth checks →
report, each a public subcommand; a re-run reuses every finished step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wav2brain.commands.run import add_step_arguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on the top-level subparsers."""
    from wav2brain.study.demo import DEMO_SIZES

    parser = subparsers.add_parser(
        "demo",
        help="the whole study (anchoring, refinement, probing, report) on a SIMULATED dataset",
        description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1],
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (resumed if it holds this demo)"
    )
    parser.add_argument(
        "--size",
        default="demo",
        choices=tuple(DEMO_SIZES),
        help="preset: 'demo' (the shipped hf_configs/study_sim.yaml) or 'small' (the test suite's)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the simulation, refinement and tasks"
    )
    parser.add_argument(
        "--model",
        help="base model (Hub id or folder) instead of the simulator's; no ground-truth checks",
    )
    add_step_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from wav2brain.commands.run import exit_status
    from wav2brain.study.demo import run_demo

    return exit_status(
        lambda: run_demo(
            args.out,
            size=args.size,
            seed=args.seed,
            model=args.model,
            only=args.steps,
            dry_run=args.dry_run,
        ),
        "demo",
    )
