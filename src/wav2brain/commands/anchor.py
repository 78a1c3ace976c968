"""``wav2brain anchor``: every artificial neuron against every voxel and region, with statistics.

A thin shell over :func:`wav2brain.anchoring.anchor` (see :mod:`wav2brain.anchoring.dataset` for
the outputs in ``--out``: ``units.parquet``, ``voxels.parquet``, ``regions.parquet``,
``group.parquet``, ``profile.parquet`` with ``profile.png``, ``maps/`` and ``summary.json``, and
how interrupted runs resume). ``--compare-with`` compares the result with another anchoring
output folder (another checkpoint on the same subjects): ``compare_*.parquet`` and
``compare.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``anchor``; unset options take :class:`~wav2brain.anchoring.AnchorConfig` defaults."""
    parser = subparsers.add_parser(
        "anchor",
        help="couple every AN with every voxel and region (autocorrelation-aware p, FDR, FWER)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("dataset", type=Path, help="prepared dataset folder (wav2brain prepare)")
    parser.add_argument(
        "--features", type=Path, required=True, help="feature cache (wav2brain extract, HRF grid)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--subjects", nargs="+", help="subjects (default: all)")
    parser.add_argument("--layers", nargs="+", help="layer names or numbers (default: all cached)")
    parser.add_argument("--top-k", type=int, help="voxels kept per AN (default 10)")
    parser.add_argument("--alpha", type=float, help="FDR and FWER level (default 0.05)")
    parser.add_argument("--max-lag-s", type=float, help="Bartlett lags in seconds (default 30)")
    parser.add_argument(
        "--acf-truncation",
        choices=("none", "adaptive"),
        help="cut each series' autocorrelations at the null band (adaptive) or not (none, default)",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        help="circular-shift draws for the max-statistic FWER (default 0)",
    )
    parser.add_argument("--min-shift-s", type=float, help="smallest circular shift, s (default 30)")
    parser.add_argument("--seed", type=int, help="seed of the shifts (default 0)")
    parser.add_argument(
        "--memory-mb", type=float, help="budget of the block temporaries, MB (default 1024)"
    )
    parser.add_argument("--device", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument("--units", nargs="+", help="ANs to map, LAYER:UNIT (default: the top ones)")
    parser.add_argument("--n-map-units", type=int, help="ANs mapped when --units is not given (4)")
    parser.add_argument("--save-matrix", action="store_true", help="full r matrices (float16)")
    parser.add_argument(
        "--no-normalize-features",
        action="store_true",
        help="use cached features as they are (default: cleaned per run as the BOLD)",
    )
    parser.add_argument("--no-maps", action="store_true", help="tables only")
    parser.add_argument(
        "--compare-with", type=Path, help="another anchoring output folder to compare with"
    )
    parser.add_argument(
        "--selectivity",
        type=Path,
        help="output folder of `wav2brain selectivity`: its per-AN columns join the tables",
    )
    regions = parser.add_argument_group(
        "regions and networks (default: nilearn's offline Seitzman 2018 networks for MNI data)"
    )
    regions.add_argument(
        "--atlas", type=Path, help="label image (3-D) or probabilistic atlas (4-D)"
    )
    regions.add_argument("--atlas-labels", type=Path, help="labels table of --atlas (index, name)")
    regions.add_argument(
        "--truth", type=Path, help="simulated dataset: its planted clusters as ROIs (SIMULATED)"
    )
    regions.add_argument(
        "--networks", help="functional networks from the BOLD, e.g. canica:20 or dictlearning:20"
    )
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`~wav2brain.anchoring.AnchorConfig` of the arguments (validated)."""
    from dataclasses import replace

    from wav2brain.anchoring import AnchorConfig, CouplingConfig

    defaults = AnchorConfig()
    options = {
        "top_k": args.top_k,
        "alpha": args.alpha,
        "max_lag_s": args.max_lag_s,
        "truncation": args.acf_truncation,
        "n_permutations": args.permutations,
        "min_shift_s": args.min_shift_s,
        "seed": args.seed,
        "memory_budget_mb": args.memory_mb,
        "device": args.device,
    }
    coupling = CouplingConfig(
        **{
            **vars(defaults.coupling),
            **{k: v for k, v in options.items() if v is not None},
            "keep_matrix": False,
        }
    )
    return replace(
        defaults,
        coupling=coupling,
        layers=tuple(args.layers) if args.layers else None,
        normalize_features=not args.no_normalize_features,
        units=tuple(args.units or ()),
        n_map_units=defaults.n_map_units if args.n_map_units is None else args.n_map_units,
        maps=not args.no_maps,
        save_matrix=args.save_matrix,
    )


def run(args: argparse.Namespace) -> int:
    """Anchor every selected subject; print what was computed, reused and skipped."""
    from wav2brain import distributed
    from wav2brain.anchoring import anchor, write_comparison
    from wav2brain.anchoring.regions import dataset_regions

    for flag, folder in (
        ("--compare-with", args.compare_with),
        ("--selectivity", args.selectivity),
    ):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder")
    config = config_from_args(args)
    # the main process decomposes the networks (--networks) into OUT, the others reuse them
    with distributed.main_first():
        parcellations, timecourses = dataset_regions(
            args.dataset,
            subjects=args.subjects,
            atlas=args.atlas,
            atlas_labels=args.atlas_labels,
            truth_dir=args.truth,
            networks=args.networks,
            out_dir=args.out,
        )
    result = anchor(
        args.dataset, args.features, args.out, config, args.subjects, parcellations, timecourses
    )
    if not distributed.is_main():  # the main process joins, compares and reports
        return 0
    print(
        f"{len(result.analysed)} subjects anchored, {len(result.reused)} reused, "
        f"{len(result.skipped)} skipped: {result.units}"
    )
    for subject, reason in result.skipped.items():
        print(f"  skipped sub-{subject}: {reason}")
    if args.selectivity is not None:
        from wav2brain.anchoring.selectivity import add_selectivity

        joined = add_selectivity(args.out, args.selectivity)
        print(f"selectivity of {args.selectivity} joined into {', '.join(p.name for p in joined)}")
    if args.compare_with is not None:
        paths = write_comparison(args.compare_with, args.out, args.out)
        print(f"compared with {args.compare_with}: {paths['regions']}")
    return 0
