"""``wav2brain encode``: voxelwise ridge encoding per subject and layer, scored on held-out runs.

Reads the ``responses`` table of a prepared dataset (``datasets.load_dataset(DIR, "responses")``)
and the feature cache written by ``wav2brain extract`` (its ``runs.parquet`` says which entry
serves each run), fits one nested-CV :class:`~wav2brain.encoding.RidgeCV` per subject and layer
with folds over whole stories (or runs, when a subject heard a single story), and writes to
``--out``:

- ``scores.parquet``: subject, layer, voxel, r, r2, alpha, ceiling, r_normalized;
- ``profile.parquet``: subject, voxel, best_layer, preferred_layer (from held-out r);
- ``maps/sub-<s>_<layer>_r.nii.gz`` (or ``.gii`` on fsaverage) for every layer, and
  ``maps/sub-<s>_best_r`` and ``maps/sub-<s>_preferred_layer`` with PNGs.

Noise ceiling (Pearson r units): repeated presentations of a story to a subject give CCmax for one
presentation (:func:`~wav2brain.encoding.noise_ceiling.repeat_ceiling`); otherwise subjects who
heard the same story on the same voxels give the leave-one-subject-out correlation; otherwise it
is NaN. Each subject's results are written to ``parts/`` first (keyed by the settings), so an
interrupted run resumes with the subjects not yet done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RUN_KEYS = ("subject", "session", "task", "run", "stimulus_id")
SCORE_COLUMNS = ("subject", "layer", "voxel", "r", "r2", "alpha", "ceiling", "r_normalized")


@dataclass
class RunData:
    """One run of one subject: BOLD [n_trs, n_voxels] and features ``{layer: [n_trs, units]}``."""

    subject: str
    run_key: str
    stimulus_id: str
    bold: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``encode`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "encode",
        help="ridge encoding per subject and layer (nested CV over runs); tables and brain maps",
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
        "--inner-cv", type=int, default=5, help="folds over training runs for alphas"
    )
    parser.add_argument("--criterion", default="r2", choices=("r2", "r", "neg_mse"))
    parser.add_argument("--no-standardize", action="store_true", help="keep raw feature scales")
    parser.add_argument(
        "--min-ceiling",
        type=float,
        default=0.1,
        help="ceilings (r) below this give NaN normalised scores",
    )
    parser.set_defaults(func=run)
    return parser


def _config(args: argparse.Namespace):
    """The encoding config from the arguments (validated before any work)."""
    from wav2brain.encoding.layers import EncodingConfig

    config = EncodingConfig(
        inner_cv=args.inner_cv, criterion=args.criterion, standardize=not args.no_standardize
    )
    if args.alphas:
        if min(args.alphas) <= 0:
            raise ValueError(f"--alphas must be positive, got {args.alphas}")
        config.alphas = tuple(args.alphas)
    if args.inner_cv < 2:
        raise ValueError(f"--inner-cv must be at least 2, got {args.inner_cv}")
    return config


def select_layers(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Cached layer names matching ``wanted`` (names, or numbers of ``layer_NN`` names)."""
    if not wanted:
        return list(available)
    chosen = []
    for item in wanted:
        matches = [
            name
            for name in available
            if name == item or (item.isdigit() and name == f"layer_{int(item):02d}")
        ]
        if not matches:
            raise ValueError(f"--layers {item!r} not in the feature cache: have {list(available)}")
        chosen.extend(matches)
    return chosen


def _run_key(row: Mapping) -> str:
    """A printable identifier of a run from its table columns (None and NaN read as empty)."""
    values = (row.get(k) for k in RUN_KEYS)
    return "|".join(
        "" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values
    )


def load_runs(
    dataset: Path, cache_dir: Path, subjects: Sequence[str] | None, layers: Sequence[str] | None
) -> tuple[list[RunData], str]:
    """Read every selected run's BOLD and cached features; return the runs and the space."""
    import pandas as pd
    from datasets import load_dataset
    from tqdm.auto import tqdm

    from wav2brain.features.cache import open_entry
    from wav2brain.features.pipeline import RunTiming, run_features
    from wav2brain.features.resample import TRGridConfig

    if not (dataset / "README.md").is_file():
        raise FileNotFoundError(
            f"{dataset} is not a prepared dataset folder: no README.md (run `wav2brain prepare`)"
        )
    index_path = cache_dir / "runs.parquet"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path} not found: run `wav2brain extract {dataset} --out {cache_dir}` first"
        )
    cached = {_run_key(row): row for row in pd.read_parquet(index_path).to_dict("records")}
    responses = load_dataset(str(dataset), "responses", split="train")
    present = list(responses["subject"])
    if subjects:
        unknown = sorted(set(subjects) - set(present))
        if unknown:
            raise ValueError(f"--subjects {unknown} not in {dataset}: have {sorted(set(present))}")
        responses = responses.select([i for i, s in enumerate(present) if s in set(subjects)])
    missing = [
        _run_key(row)
        for row in responses.select_columns(list(RUN_KEYS))
        if _run_key(row) not in cached
    ]
    if missing:
        raise ValueError(
            f"runs without cached features in {index_path}: {missing[:5]} (re-run extract)"
        )
    spaces = set(responses["space"])
    if len(spaces) != 1:
        raise ValueError(
            f"responses mix spaces {sorted(spaces)}: encode one space at a time (--subjects)"
        )
    entries, runs = {}, []
    for row in tqdm(responses.with_format("numpy"), total=responses.num_rows, desc="load runs"):
        meta = {k: (None if row[k] is None else str(row[k])) for k in RUN_KEYS}
        info = cached[_run_key(meta)]
        if info["path"] not in entries:
            entries[info["path"]] = open_entry(cache_dir / info["path"])
        entry = entries[info["path"]]
        grid_config = TRGridConfig(**entry.metadata["key"]["grid_config"])
        bold = np.asarray(
            np.stack(row["bold"]) if row["bold"].dtype == object else row["bold"], dtype=np.float32
        )
        timing = RunTiming(float(row["tr"]), float(row["onset"]))
        chosen = select_layers(list(entry.layers), layers)
        features = run_features(entry, timing, bold.shape[0], grid_config, chosen)
        runs.append(RunData(meta["subject"], _run_key(meta), meta["stimulus_id"], bold, features))
    return runs, spaces.pop()


def subject_groups(runs: Sequence[RunData]) -> np.ndarray:
    """CV group of each TR: its story, or its run when the subject heard a single story."""
    by_story = len({r.stimulus_id for r in runs}) >= 2
    if not by_story:
        logger.warning("subject %s heard one story: folds over runs of it", runs[0].subject)
    return np.concatenate(
        [np.full(len(r.bold), r.stimulus_id if by_story else r.run_key) for r in runs]
    )


def subject_ceiling(subject: str, runs: Sequence[RunData]) -> np.ndarray:
    """Noise ceiling (r) per voxel of ``subject``: repeats if any, else leave-one-subject-out."""
    from wav2brain.encoding.noise_ceiling import loso_ceiling, repeat_ceiling

    own = [r for r in runs if r.subject == subject]
    n_voxels = own[0].bold.shape[1]
    estimates, weights = [], []
    for story in sorted({r.stimulus_id for r in own}):
        repeats = [r.bold for r in own if r.stimulus_id == story]
        if len(repeats) >= 2 and len({b.shape for b in repeats}) == 1:
            estimates.append(repeat_ceiling(np.stack(repeats), target="single"))
            weights.append(repeats[0].shape[0])
            continue
        others = {
            r.subject: r.bold for r in runs if r.stimulus_id == story and r.subject != subject
        }
        same = [b for b in others.values() if b.shape == repeats[0].shape]
        if same:
            per_subject, _ = loso_ceiling(np.stack([repeats[0], *same]))
            estimates.append(per_subject[0])
            weights.append(repeats[0].shape[0])
    if not estimates:
        return np.full(n_voxels, np.nan)
    return np.average(np.stack(estimates), axis=0, weights=weights)


def encode_subject(subject: str, runs: Sequence[RunData], config, min_ceiling: float):
    """Scores table (pandas) of one subject: one row per layer and voxel."""
    import pandas as pd
    from tqdm.auto import tqdm

    from wav2brain.encoding.layers import encode_layers
    from wav2brain.encoding.scores import normalized_score

    own = [r for r in runs if r.subject == subject]
    layers = list(own[0].features)
    features = {name: np.concatenate([r.features[name] for r in own]) for name in layers}
    bold = np.concatenate([r.bold for r in own])
    ceiling = subject_ceiling(subject, runs)
    with tqdm(total=len(layers), desc=f"sub-{subject}", unit="layer") as bar:
        results = encode_layers(
            features, bold, subject_groups(own), config, progress=lambda _: bar.update()
        )
    frames = []
    for name, scores in results.items():
        frames.append(
            pd.DataFrame(
                {
                    "subject": subject,
                    "layer": name,
                    "voxel": np.arange(bold.shape[1]),
                    "r": scores.r,
                    "r2": scores.r2,
                    "alpha": scores.alpha,
                    "ceiling": ceiling.astype(np.float32),
                    "r_normalized": normalized_score(scores.r, ceiling, min_ceiling).astype(
                        np.float32
                    ),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_subject_maps(table, out: Path, space: str, mask_img) -> list[Path]:
    """NIfTI/GIfTI of r per layer, plus best-r and preferred-layer maps with PNGs (one subject)."""
    from wav2brain.encoding.layers import layer_profile
    from wav2brain.reports.brain_maps import save_gifti, save_nifti, write_map

    subject = table["subject"].iloc[0]
    layers = list(dict.fromkeys(table["layer"]))
    scores = np.stack([table.loc[table["layer"] == name, "r"].to_numpy() for name in layers])
    maps = out / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    written = []
    for name, values in zip(layers, scores, strict=True):
        stem = maps / f"sub-{subject}_{name}_r"
        written.append(
            save_nifti(values, mask_img, stem.with_name(stem.name + ".nii.gz"))
            if mask_img is not None
            else save_gifti(values, stem.with_name(stem.name + ".gii"))
        )
    _, preferred = layer_profile(scores, np.arange(1, len(layers) + 1))
    written += write_map(
        np.nanmax(scores, axis=0),
        maps / f"sub-{subject}_best_r",
        space,
        mask_img,
        title=f"sub-{subject} best held-out r",
    )
    written += write_map(
        preferred,
        maps / f"sub-{subject}_preferred_layer",
        space,
        mask_img,
        title=f"sub-{subject} preferred layer (1-{len(layers)})",
    )
    return written


def profile_table(table):
    """Per-voxel layer profile (from r) of every subject in a scores table."""
    import pandas as pd

    from wav2brain.encoding.layers import layer_profile

    frames = []
    for subject, part in table.groupby("subject", sort=False):
        layers = list(dict.fromkeys(part["layer"]))
        scores = np.stack([part.loc[part["layer"] == name, "r"].to_numpy() for name in layers])
        best, preferred = layer_profile(scores)
        frames.append(
            pd.DataFrame(
                {
                    "subject": subject,
                    "voxel": np.arange(scores.shape[1]),
                    "best_layer": [layers[int(i)] if np.isfinite(i) else None for i in best],
                    "preferred_layer": preferred.astype(np.float32),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def settings_digest(
    config, layers: Sequence[str] | None, features: Path, min_ceiling: float
) -> str:
    """Short hash of the settings that change results (names the resumable parts)."""
    record = {
        "config": asdict(config),
        "layers": list(layers or []),
        "features": str(features.resolve()),
        "min_ceiling": min_ceiling,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:12]


def encode_runs(
    runs: Sequence[RunData],
    out: Path,
    config,
    space: str,
    mask_img=None,
    min_ceiling: float = 0.1,
    digest: str = "default",
):
    """Fit every subject of ``runs``; write tables and maps under ``out``; return the scores."""
    import pandas as pd

    from wav2brain.data.hf_layout import write_shard

    if mask_img is None and not space.startswith("fsaverage"):
        raise FileNotFoundError(f"space {space!r} needs the dataset's mask.nii.gz for brain maps")
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    tables = []
    for subject in dict.fromkeys(r.subject for r in runs):
        part = parts / f"sub-{subject}_{digest}.parquet"
        if part.is_file():
            logger.info("sub-%s: reusing %s", subject, part)
            table = pd.read_parquet(part)
        else:
            table = encode_subject(subject, runs, config, min_ceiling)
            write_shard(_arrow(table), part)
        write_subject_maps(table, out, space, mask_img)
        tables.append(table)
    scores = pd.concat(tables, ignore_index=True)
    write_shard(_arrow(scores), out / "scores.parquet")
    write_shard(_arrow(profile_table(scores)), out / "profile.parquet")
    return scores


def _arrow(frame):
    """A pandas frame as an Arrow table without its index."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def run(args: argparse.Namespace) -> int:
    """Load the runs and their features, encode every subject, write tables and maps."""
    config = _config(args)
    if not args.features.is_dir():
        raise FileNotFoundError(f"--features {args.features}: no such feature cache folder")
    runs, space = load_runs(args.dataset, args.features, args.subjects, args.layers)
    mask = args.dataset / "mask.nii.gz"
    args.out.mkdir(parents=True, exist_ok=True)
    digest = settings_digest(config, args.layers, args.features, args.min_ceiling)
    scores = encode_runs(
        runs, args.out, config, space, mask if mask.is_file() else None, args.min_ceiling, digest
    )
    logger.info(
        "%d subjects x %d layers encoded into %s",
        scores["subject"].nunique(),
        scores["layer"].nunique(),
        args.out,
    )
    return 0
