"""``wav2brain demo``: the end-to-end run on a simulated dataset (see :mod:`wav2brain.demo`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on the top-level subparsers."""
    from wav2brain.demo import DemoConfig

    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        help="simulate, prepare, train, save/reload and encode a small SIMULATED dataset",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (resumed if present)"
    )
    parser.add_argument(
        "--size",
        default=defaults.size,
        choices=("test", "demo"),
        help="simulation preset (test: seconds)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of simulation and training"
    )
    parser.add_argument(
        "--train-steps", type=int, default=defaults.train_steps, help="optimiser steps"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary as JSON."""
    from wav2brain.demo import DemoConfig, run_demo

    if args.train_steps < 1:
        raise ValueError(f"--train-steps must be at least 1, got {args.train_steps}")
    config = DemoConfig(size=args.size, seed=args.seed, train_steps=args.train_steps)
    summary = run_demo(args.out, config)
    print(json.dumps(summary, indent=2, default=str))
    return 0
