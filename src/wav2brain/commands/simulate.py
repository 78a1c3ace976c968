"""``wav2brain simulate --out DIR``: write a SIMULATED Narratives-layout dataset with ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

_OVERRIDES = {
    "subjects": "n_subjects",
    "stories": "n_stories",
    "runs": "n_runs_per_story",
    "story_duration": "story_duration_s",
    "voxel_size": "voxel_size_mm",
    "tr": "tr_s",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``simulate`` on the console script's subparsers."""
    parser = subparsers.add_parser(
        "simulate",
        help="write a SIMULATED audio-fMRI BIDS dataset (Narratives layout) with known ground truth",
        description=(
            "Synthesise stories with espeak-ng and BOLD on a coarse MNI grid driven by planted "
            "features (wav2vec2 units, envelope, word and phoneme onsets); the ground truth goes "
            "to DIR/derivatives/ground_truth."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create")
    parser.add_argument(
        "--size",
        choices=("test", "demo"),
        default="test",
        help="preset: 'test' (2 subjects, 2 stories of ~20 s, 12-mm grid; seconds) or 'demo' "
        "(4 subjects, 3 stories of 4 min heard twice, 8-mm grid; minutes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="master random seed (default 0)")
    parser.add_argument("--subjects", type=int, help="number of subjects (overrides the preset)")
    parser.add_argument("--stories", type=int, help="number of stories (overrides the preset)")
    parser.add_argument("--runs", type=int, help="scans of each story per subject")
    parser.add_argument("--story-duration", type=float, help="speech per story (s)")
    parser.add_argument("--voxel-size", type=float, help="isotropic voxel size of the grid (mm)")
    parser.add_argument("--tr", type=float, help="repetition time (s)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out once the new one is done",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the configuration from the preset and overrides, then simulate."""
    from wav2brain.simulation import SimulationConfig, simulate_dataset

    overrides = {
        field: getattr(args, option)
        for option, field in _OVERRIDES.items()
        if getattr(args, option) is not None
    }
    config = SimulationConfig.from_size(args.size, seed=args.seed, **overrides)
    out = simulate_dataset(args.out, config, overwrite=args.overwrite)
    print(out)
    return 0
