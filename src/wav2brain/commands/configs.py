"""``wav2brain configs``: the shipped study files, recipes and accelerate configs, and where they
are; ``--copy DIR`` copies them to ``DIR/hf_configs/`` to edit and run (see
:mod:`wav2brain.study.shipped`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``configs`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "configs",
        help="list the shipped study files and recipes (hf_configs/), or copy them to edit",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--copy",
        type=Path,
        metavar="DIR",
        help="copy every shipped file to DIR/hf_configs/ (then run from DIR)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """List the shipped files, or copy them."""
    from wav2brain.study.shipped import CONFIG_DIR, copy_configs, describe, shipped_configs

    if args.copy is not None:
        written = copy_configs(args.copy)
        print(f"{len(written)} files copied to {args.copy / CONFIG_DIR.name}; from {args.copy}:")
        print("  wav2brain run --config hf_configs/study_sim.yaml")
        return 0
    print(f"shipped in {CONFIG_DIR}:")
    for name in shipped_configs():
        print(f"  hf_configs/{name.as_posix():<32} {describe(name)}")
    print("copy them to edit and run: wav2brain configs --copy DIR")
    return 0
