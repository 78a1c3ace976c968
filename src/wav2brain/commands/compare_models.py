"""``wav2brain compare-models A B``: the refinement paper's analyses of two checkpoints.

A thin shell over :func:`wav2brain.reports.compare.compare_models` (see it for the tables and
figures written to ``--out``): parameters changed per type and layer (Figure 2), learned layer
weights (Figure 4), held-out brain accuracy per voxel and ROI with maps (Figure 3b, with
``--dataset`` and held-out stories), and the history sweep's curve (Figure 3a, with ``--sweep``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``compare-models`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "compare-models",
        help="compare two checkpoints: parameter change, layer weights, brain accuracy, sweep",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "a", type=Path, help="first checkpoint (e.g. the base model): folder or export"
    )
    parser.add_argument("b", type=Path, help="second checkpoint (e.g. the refined model)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--labels", nargs=2, default=("A", "B"), metavar=("A", "B"), help="names in tables/figures"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="relative change counted as a change (default 1e-3, i.e. 0.1 %%)",
    )
    parser.add_argument("--dataset", type=Path, help="prepared dataset for brain accuracy")
    parser.add_argument(
        "--voxel-selection",
        type=Path,
        help="the voxels the heads predict (the recipe's voxel_selection: ROI image, index file "
        "or folder of sub-<label> files)",
    )
    parser.add_argument(
        "--recipe-run",
        type=Path,
        help="a `wav2brain train` output folder: score on its dataset, held-out stories and "
        "voxel selection (--dataset, --test-stories / --split, --voxel-selection given here win)",
    )
    stories = parser.add_mutually_exclusive_group()
    stories.add_argument("--test-stories", nargs="+", help="held-out stimulus ids")
    stories.add_argument(
        "--split", type=Path, help='JSON file with the held-out stories under "test"'
    )
    parser.add_argument("--atlas", type=Path, help="label image (NIfTI) for ROI means")
    parser.add_argument(
        "--atlas-labels", type=Path, help='JSON {"<label>": "<name>"} naming the atlas labels'
    )
    parser.add_argument("--sweep", type=Path, help="folder of history-sweep runs (Figure 3a)")
    parser.add_argument("--sweep-metric", help="metric of the sweep curve (default test_mean)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default 8)")
    parser.add_argument("--no-maps", action="store_true", help="no brain maps, tables only")
    parser.set_defaults(func=run)
    return parser


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not JSON: {error}") from error


def held_out_stories(args: argparse.Namespace) -> tuple[str, ...]:
    """The held-out stories: ``--test-stories``, or the ``"test"`` list of ``--split``."""
    if args.split is None:
        return tuple(args.test_stories or ())
    split = _read_json(args.split, "split file")
    stories = split.get("test") if isinstance(split, dict) else None
    if not isinstance(stories, list) or not all(isinstance(s, str) for s in stories):
        keys = sorted(split) if isinstance(split, dict) else type(split).__name__
        raise ValueError(
            f"split file {args.split}: expected a list of story ids under 'test', got {keys}"
        )
    return tuple(stories)


def atlas_names_from_args(args: argparse.Namespace) -> dict[int, str] | None:
    """``--atlas-labels`` as label -> name."""
    if args.atlas_labels is None:
        return None
    names = _read_json(args.atlas_labels, "atlas labels")
    if not isinstance(names, dict):
        raise ValueError(f"atlas labels {args.atlas_labels}: expected a JSON object label -> name")
    try:
        return {int(label): str(name) for label, name in names.items()}
    except ValueError as error:
        raise ValueError(
            f"atlas labels {args.atlas_labels}: labels must be integers ({error})"
        ) from error


def config_from_args(args: argparse.Namespace):
    """The :class:`~wav2brain.reports.compare.CompareConfig` of the arguments (validated)."""
    from wav2brain.reports.compare import CompareConfig, recipe_run_scoring

    defaults = CompareConfig()
    scoring = {
        "dataset": args.dataset,
        "test_stories": held_out_stories(args),
        "voxel_selection": args.voxel_selection,
    }
    if args.recipe_run is not None:  # the run's values, unless given here (a moved dataset)
        recorded = recipe_run_scoring(args.recipe_run)
        for key, value in recorded.items():
            if scoring[key] or value is None:
                continue
            if isinstance(value, Path) and not value.exists():
                raise FileNotFoundError(
                    f"--recipe-run {args.recipe_run}: its {key} {value} does not exist (moved?): "
                    f"give --{key.replace('_', '-')} with its new place"
                )
            scoring[key] = value
    return CompareConfig(
        labels=tuple(args.labels),
        threshold=defaults.threshold if args.threshold is None else args.threshold,
        **scoring,
        atlas=args.atlas,
        atlas_names=atlas_names_from_args(args),
        sweep=args.sweep,
        sweep_metric=args.sweep_metric,
        batch_size=defaults.batch_size if args.batch_size is None else args.batch_size,
        maps=not args.no_maps,
    )


def run(args: argparse.Namespace) -> int:
    """Compare the two checkpoints; print the headline figures and where the files are."""
    from wav2brain.reports.compare import compare_models

    config = config_from_args(args)
    written = compare_models(args.a, args.b, args.out, config)
    headline = json.loads(written["summary"].read_text(encoding="utf-8"))["headline"]
    changed = headline["parameters_changed"]["all"]
    print(f"{100 * changed:.1f} % of backbone parameters changed ({args.a} -> {args.b})")
    for label, value in headline.get("mean_r", {}).items():
        print(f"  held-out mean r, {label}: {value:.4f}")
    if "best_history_trs" in headline:
        print(f"  best history: {headline['best_history_trs']} TRs")
    print(f"{len(written)} files in {args.out} (summary: {written['summary']})")
    return 0
