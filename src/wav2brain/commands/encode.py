"""``wav2brain encode``: voxelwise ridge encoding per subject and layer, scored on held-out stories.

A thin shell over :func:`wav2brain.encoding.dataset.encode_dataset` (see it for the outputs in
``--out``: ``scores.parquet``, ``profile.parquet``, ``skipped.parquet`` and ``maps/``, the folds,
the noise ceilings and how interrupted or extended runs resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``encode`` on the top-level subparsers.

    Unset options take their defaults from :class:`~wav2brain.encoding.dataset.EncodeConfig`
    (read after parsing: importing it imports torch, which ``--help`` must not wait for).
    """
    parser = subparsers.add_parser(
        "encode",
        help="ridge encoding per subject and layer (nested CV over stories); tables and maps",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("dataset", type=Path, help="prepared dataset folder (wav2brain prepare)")
    parser.add_argument(
        "--features", type=Path, required=True, help="feature cache (wav2brain extract)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--subjects", nargs="+", help="subjects to fit (default: all)")
    parser.add_argument("--layers", nargs="+", help="layer names or numbers (default: all cached)")
    parser.add_argument(
        "--alphas", type=float, nargs="+", help="ridge grid (default: 1 to 1e6, 10 values)"
    )
    parser.add_argument(
        "--inner-cv", type=int, help="folds over training runs for alphas (default 5)"
    )
    parser.add_argument("--criterion", choices=("r2", "r", "neg_mse"), help="default r2")
    parser.add_argument("--no-standardize", action="store_true", help="keep raw feature scales")
    parser.add_argument(
        "--no-normalize-features",
        action="store_true",
        help="use cached features as they are (default: per-run drift removal and z-scoring, "
        "as the BOLD)",
    )
    parser.add_argument(
        "--allow-run-folds",
        action="store_true",
        help="fit one-story subjects with folds over their runs (cv_kind='runs') "
        "instead of skipping them",
    )
    parser.add_argument(
        "--ceiling-alpha",
        type=float,
        help="one-sided level of the test that a voxel's ceiling is above zero; "
        "r_normalized only where it passes (default 0.05)",
    )
    parser.add_argument("--no-maps", action="store_true", help="tables only")
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`~wav2brain.encoding.dataset.EncodeConfig` of the arguments (validated)."""
    from dataclasses import replace

    from wav2brain.encoding.dataset import EncodeConfig

    defaults = EncodeConfig()
    encoding = replace(
        defaults.encoding,
        inner_cv=defaults.encoding.inner_cv if args.inner_cv is None else args.inner_cv,
        criterion=args.criterion or defaults.encoding.criterion,
        standardize=not args.no_standardize,
    )
    if args.alphas:
        if min(args.alphas) <= 0:
            raise ValueError(f"--alphas must be positive, got {args.alphas}")
        encoding.alphas = tuple(args.alphas)
    if encoding.inner_cv < 2:
        raise ValueError(f"--inner-cv must be at least 2, got {encoding.inner_cv}")
    alpha = defaults.ceiling_alpha if args.ceiling_alpha is None else args.ceiling_alpha
    if not 0 < alpha < 0.5:
        raise ValueError(f"--ceiling-alpha must be in (0, 0.5), got {alpha}")
    return replace(
        defaults,
        encoding=encoding,
        layers=tuple(args.layers) if args.layers else None,
        normalize_features=not args.no_normalize_features,
        allow_run_folds=args.allow_run_folds,
        ceiling_alpha=alpha,
        maps=not args.no_maps,
    )


def run(args: argparse.Namespace) -> int:
    """Encode every selected subject; print what was fitted, reused and skipped."""
    from wav2brain import distributed
    from wav2brain.encoding.dataset import encode_dataset

    config = config_from_args(args)
    result = encode_dataset(args.dataset, args.features, args.out, config, args.subjects)
    if not distributed.is_main():
        return 0
    print(
        f"{len(result.fitted)} subjects fitted, {len(result.reused)} reused, "
        f"{len(result.skipped_subjects)} skipped: {result.scores}"
    )
    for subject, reason in result.skipped_subjects.items():
        print(f"  skipped sub-{subject}: {reason}")
    return 0
