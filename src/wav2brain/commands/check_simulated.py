"""``wav2brain check-simulated``: score a simulated study's outputs against its ground truth.

A thin shell over :func:`wav2brain.reports.ground_truth.check_simulated`: the parts whose inputs
are given are checked (encoding: ``--features``; anchoring: ``--anchoring``; training:
``--refine`` and ``--refine-control``), each against the threshold its issue sets, and
``--out`` receives ``truth.json`` and ``checks.parquet`` (SIMULATED). The exit status is 1 when
a required check fails (0 with ``--exit-zero``), 2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``check-simulated``; unset recovery options take ``RecoveryConfig`` defaults."""
    parser = subparsers.add_parser(
        "check-simulated",
        help="score a SIMULATED study's outputs against the simulator's ground truth",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="the simulation's ground truth folder (BIDS/derivatives/ground_truth)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="its prepared folder (wav2brain prepare --mask TRUTH/brain_mask.nii.gz)",
    )
    parser.add_argument(
        "--features",
        type=Path,
        help="encoding: feature cache of wav2brain extract --model TRUTH/model",
    )
    parser.add_argument(
        "--anchoring",
        type=Path,
        help="anchoring: a wav2brain anchor folder (anchored with --top-k >= the voxel count)",
    )
    parser.add_argument(
        "--refine",
        type=Path,
        help="training: output folder of the recipe (--voxel_selection TRUTH/clusters.nii.gz)",
    )
    parser.add_argument(
        "--refine-control",
        type=Path,
        help="training: the same recipe with --shuffle_train_stories true",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--alphas", type=float, nargs="+", help="encoding: ridge penalties (default 1e-1..1e4)"
    )
    parser.add_argument("--level", type=float, help="encoding: voxelwise level (default 0.05)")
    parser.add_argument(
        "--decision-level", type=float, help="encoding: level of the check's tests (default 0.01)"
    )
    parser.add_argument(
        "--max-noise-voxels", type=int, help="encoding: noise voxels per subject (default 1000)"
    )
    parser.add_argument("--seed", type=int, help="encoding: seed of the null (default 0)")
    parser.add_argument(
        "--exit-zero", action="store_true", help="exit 0 even when a required check fails"
    )
    parser.set_defaults(func=run)
    return parser


def recovery_config(args: argparse.Namespace):
    """The encoding part's :class:`~wav2brain.simulation.recovery.RecoveryConfig`."""
    from wav2brain.simulation.recovery import RecoveryConfig

    options = {
        "alphas": tuple(args.alphas) if args.alphas else None,
        "level": args.level,
        "decision_level": args.decision_level,
        "max_noise_voxels": args.max_noise_voxels,
        "seed": args.seed,
    }
    return RecoveryConfig(**{k: v for k, v in options.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """Check, write, print one line per check; 1 when a required check failed."""
    from wav2brain.reports.ground_truth import SIMULATED, TRUTH_FILE, check_simulated

    report = check_simulated(
        args.truth,
        args.dataset,
        features=args.features,
        anchoring=args.anchoring,
        refine=args.refine,
        refine_control=args.refine_control,
        out=args.out,
        recovery=recovery_config(args),
    )
    for check in report.checks:
        if check.required:
            verdict = "pass" if check.passed else "FAIL"
        else:
            verdict = ("met" if check.passed else "unmet") + " (target, not required)"
        print(
            f"{verdict:>4}  {check.name}: {check.value:.4g} {check.op} {check.threshold:.4g}"
            f"  [issue {check.issue}] {check.description}"
        )
    verdict = "passed" if report.passed else "FAILED"
    print(f"{SIMULATED} ground-truth checks {verdict}: {args.out / TRUTH_FILE}")
    return 0 if report.passed or args.exit_zero else 1
