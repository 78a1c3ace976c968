"""``wav2brain encode``: voxelwise ridge encoding per subject and layer, scored on held-out runs.

Reads the ``responses`` table of a prepared dataset (``datasets.load_dataset(DIR, "responses")``)
and the feature cache written by ``wav2brain extract`` (its ``runs.parquet`` says which entry
serves each run), fits one nested-CV :class:`~wav2brain.encoding.RidgeCV` per subject and layer
with folds over whole stories (or runs, when a subject heard a single story), and writes to
``--out``:

- ``scores.parquet``: subject, layer, voxel, r, r2, alpha, ceiling, ceiling_method,
  r_normalized;
- ``profile.parquet``: subject, voxel, best_layer, preferred_layer (from held-out r);
- ``maps/sub-<s>_<layer>_r.nii.gz`` (or ``.gii`` on fsaverage) for every layer, and
  ``maps/sub-<s>_best_r`` and ``maps/sub-<s>_preferred_layer`` with PNGs.

Layers are numbered as in the model (``layer_07`` is 7, whatever ``--layers`` picked): the
preferred layer of a voxel is the r-weighted mean of these numbers.

Noise ceiling (Pearson r units), one estimator per subject, named in ``ceiling_method``:
``"repeat"`` when the subject heard a story more than once (CCmax for one presentation,
:func:`~wav2brain.encoding.noise_ceiling.repeat_ceiling`, averaged over its repeated stories);
else ``"loso"``, the leave-one-subject-out correlation with every other subject of the dataset
(selected or not) who heard the same story on the same TRs and voxels, averaged over stories;
else ``"none"`` (NaN). The two estimators measure different things (LOSO also counts the
idiosyncratic stimulus-locked response as noise), so they are never averaged into one number.
Each subject's results are written to ``parts/`` first, named by a digest of everything they
depend on (settings, dataset, subject and run selection, the feature cache rows and entries), so
an interrupted run resumes with the subjects not yet done and nothing else is ever reused.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

RUN_KEYS = ("subject", "session", "task", "run", "stimulus_id")
LAYER_NAME = re.compile(r"layer_(\d+)")


@dataclass
class RunData:
    """One run of one subject: BOLD [n_trs, n_voxels] and features ``{layer: [n_trs, units]}``.

    ``source`` is the feature-cache provenance of the run (its ``runs.parquet`` row and its
    entry's stored record), hashed into the resume key of the subject's results.
    """

    subject: str
    run_key: str
    stimulus_id: str
    bold: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    source: dict = field(default_factory=dict)


def default_min_ceiling() -> float:
    """The ceiling (r) at or below which normalised scores are NaN, as ``normalized_score``."""
    from wav2brain.encoding.scores import normalized_score

    return inspect.signature(normalized_score).parameters["min_ceiling"].default


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``encode`` on the top-level subparsers (imports nothing heavy)."""
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
        "--inner-cv",
        type=int,
        help="folds over training runs for alphas (default: EncodingConfig.inner_cv)",
    )
    parser.add_argument(
        "--criterion", choices=("r2", "r", "neg_mse"), help="default: EncodingConfig.criterion"
    )
    parser.add_argument("--no-standardize", action="store_true", help="keep raw feature scales")
    parser.add_argument(
        "--min-ceiling",
        type=float,
        help="ceilings (r) at or below this give NaN normalised scores (default: "
        "normalized_score's min_ceiling)",
    )
    parser.set_defaults(func=run)
    return parser


def _config(args: argparse.Namespace):
    """The encoding config from the arguments (validated before any work)."""
    from wav2brain.encoding.layers import EncodingConfig

    given = {"inner_cv": args.inner_cv, "criterion": args.criterion}
    config = EncodingConfig(
        standardize=not args.no_standardize, **{k: v for k, v in given.items() if v is not None}
    )
    if args.alphas:
        if min(args.alphas) <= 0:
            raise ValueError(f"--alphas must be positive, got {args.alphas}")
        config.alphas = tuple(args.alphas)
    if config.inner_cv < 2:
        raise ValueError(f"--inner-cv must be at least 2, got {config.inner_cv}")
    if args.min_ceiling is None:
        args.min_ceiling = default_min_ceiling()
    if not 0 <= args.min_ceiling < 1:
        raise ValueError(f"--min-ceiling must be in [0, 1) (r), got {args.min_ceiling}")
    return config


def layer_number(name: str) -> int:
    """The model layer of a cached layer name (``layer_07`` is 7)."""
    match = LAYER_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"cached layer {name!r} has no number: expected a name like 'layer_07'")
    return int(match.group(1))


def select_layers(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Cached layer names matching ``wanted`` (names or model layer numbers; default all)."""
    numbers = {name: layer_number(name) for name in available}
    if not wanted:
        return list(available)
    chosen = []
    for item in wanted:
        matches = [
            name
            for name, number in numbers.items()
            if name == item or (item.isdigit() and number == int(item))
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
        bold = _bold_array(row["bold"])
        timing = RunTiming(float(row["tr"]), float(row["onset"]))
        chosen = select_layers(list(entry.layers), layers)
        features = run_features(entry, timing, bold.shape[0], grid_config, chosen)
        source = {"row": info, "entry": entry.metadata}
        runs.append(
            RunData(meta["subject"], _run_key(meta), meta["stimulus_id"], bold, features, source)
        )
    return runs, spaces.pop()


def _bold_array(value) -> np.ndarray:
    """float32 [n_trs, n_voxels] from a ``bold`` cell of the numpy-formatted responses."""
    return np.asarray(np.stack(value) if value.dtype == object else value, dtype=np.float32)


def subject_groups(runs: Sequence[RunData]) -> np.ndarray:
    """CV group of each TR: its story, or its run when the subject heard a single story."""
    by_story = len({r.stimulus_id for r in runs}) >= 2
    if not by_story:
        logger.warning("subject %s heard one story: folds over runs of it", runs[0].subject)
    return np.concatenate(
        [np.full(len(r.bold), r.stimulus_id if by_story else r.run_key) for r in runs]
    )


def repeated_stories(subject: str, runs: Sequence[RunData]) -> dict[str, list[np.ndarray]]:
    """BOLD of each story ``subject`` heard at least twice on one TR grid and voxel set."""
    stories: dict[str, list[np.ndarray]] = {}
    for r in runs:
        if r.subject == subject:
            stories.setdefault(r.stimulus_id, []).append(r.bold)
    return {
        story: bolds
        for story, bolds in stories.items()
        if len(bolds) >= 2 and len({b.shape for b in bolds}) == 1
    }


def loso_ceilings(
    dataset: Path, space: str, wanted: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[tuple[str, str], np.ndarray]:
    """Leave-one-subject-out ceiling (r) per voxel of each (subject, story) in ``wanted``.

    ``wanted`` maps a story to ``{subject: BOLD of its first presentation}``. The others are
    every subject of the dataset (selected or not) with a run of the story in ``space`` on the
    same TRs and voxels, each by its first presentation, so a subject's ceiling does not depend
    on ``--subjects``. Stories are streamed one at a time and one run at a time: one float64 sum
    [TRs, voxels] per TR grid is held, never all subjects' responses. Pairs with no other
    subject are left out.
    """
    from datasets import load_dataset
    from tqdm.auto import tqdm

    from wav2brain.encoding.noise_ceiling import loso_ceiling

    responses = load_dataset(str(dataset), "responses", split="train")
    table = responses.select_columns(["subject", "stimulus_id", "space"]).to_pandas()
    first = table[table["stimulus_id"].isin(list(wanted)) & (table["space"] == space)]
    first = first.drop_duplicates(["stimulus_id", "subject"])
    bolds = responses.select_columns(["bold"]).with_format("numpy")
    ceilings = {}
    with tqdm(total=len(first), desc="noise ceilings", unit="run") as bar:
        for story, own in wanted.items():
            totals: dict[tuple[int, ...], list] = {}
            for index in first.index[first["stimulus_id"] == story]:
                bold = _bold_array(bolds[int(index)]["bold"])
                total = totals.setdefault(bold.shape, [np.zeros(bold.shape), 0])
                total[0] += bold
                total[1] += 1
                bar.update()
            for subject, bold in own.items():
                total, count = totals.get(bold.shape, (None, 0))
                if count >= 2:
                    others = (total - bold) / (count - 1)
                    ceilings[(subject, story)] = loso_ceiling(np.stack([bold, others]))[0][0]
    return ceilings


def subject_ceilings(
    subjects: Sequence[str], runs: Sequence[RunData], dataset: Path, space: str
) -> dict[str, tuple[np.ndarray, str]]:
    """Noise ceiling (r) per voxel and its estimator of each of ``subjects``.

    ``"repeat"``: CCmax of one presentation averaged (weighted by TRs) over the subject's
    repeated stories; else ``"loso"``: :func:`loso_ceilings` averaged over its stories; else
    ``"none"``: NaN. One estimator per subject, never a blend of the two.
    """
    from wav2brain.encoding.noise_ceiling import repeat_ceiling

    result, wanted = {}, {}
    for subject in subjects:
        repeats = repeated_stories(subject, runs)
        if repeats:
            estimates = [repeat_ceiling(np.stack(b), target="single") for b in repeats.values()]
            weights = [b[0].shape[0] for b in repeats.values()]
            result[subject] = (np.average(np.stack(estimates), axis=0, weights=weights), "repeat")
            continue
        for r in runs:
            if r.subject == subject:
                wanted.setdefault(r.stimulus_id, {}).setdefault(subject, r.bold)
    loso = loso_ceilings(dataset, space, wanted) if wanted else {}
    for subject in subjects:
        if subject in result:
            continue
        stories = [(story, own[subject]) for story, own in wanted.items() if subject in own]
        found = [
            (loso[(subject, story)], len(bold))
            for story, bold in stories
            if (subject, story) in loso
        ]
        if found:
            estimates, weights = zip(*found, strict=True)
            result[subject] = (np.average(np.stack(estimates), axis=0, weights=weights), "loso")
        else:
            n_voxels = stories[0][1].shape[1]
            result[subject] = (np.full(n_voxels, np.nan), "none")
    return result


def encode_subject(
    subject: str,
    runs: Sequence[RunData],
    config,
    ceiling: tuple[np.ndarray, str],
    min_ceiling: float,
):
    """Scores table (pandas) of one subject: one row per layer and voxel.

    ``ceiling`` is the subject's noise ceiling (r) per voxel and its estimator
    (:func:`subject_ceilings`).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from wav2brain.encoding.layers import encode_layers
    from wav2brain.encoding.scores import normalized_score

    own = [r for r in runs if r.subject == subject]
    layers = list(own[0].features)
    features = {name: np.concatenate([r.features[name] for r in own]) for name in layers}
    bold = np.concatenate([r.bold for r in own])
    values, method = ceiling
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
                    "ceiling": values.astype(np.float32),
                    "ceiling_method": method,
                    "r_normalized": normalized_score(scores.r, values, min_ceiling).astype(
                        np.float32
                    ),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _layer_scores(table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Layer names, their model numbers and held-out r [n_layers, n_voxels] of one subject."""
    layers = list(dict.fromkeys(table["layer"]))
    scores = np.stack([table.loc[table["layer"] == name, "r"].to_numpy() for name in layers])
    return layers, np.array([layer_number(name) for name in layers]), scores


def write_subject_maps(table, out: Path, space: str, mask_img) -> list[Path]:
    """NIfTI/GIfTI of r per layer, plus best-r and preferred-layer maps with PNGs (one subject)."""
    from wav2brain.encoding.layers import layer_profile
    from wav2brain.reports.brain_maps import save_gifti, save_nifti, write_map

    subject = table["subject"].iloc[0]
    layers, numbers, scores = _layer_scores(table)
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
    _, preferred = layer_profile(scores, numbers)
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
        title=f"sub-{subject} preferred layer ({numbers.min()}-{numbers.max()})",
    )
    return written


def profile_table(table):
    """Per-voxel layer profile (from r, model layer numbers) of every subject in a scores table."""
    import pandas as pd

    from wav2brain.encoding.layers import layer_profile

    frames = []
    for subject, part in table.groupby("subject", sort=False):
        layers, numbers, scores = _layer_scores(part)
        best, preferred = layer_profile(scores, numbers)
        names = dict(zip(numbers.tolist(), layers, strict=True))
        frames.append(
            pd.DataFrame(
                {
                    "subject": subject,
                    "voxel": np.arange(scores.shape[1]),
                    "best_layer": [names[int(i)] if np.isfinite(i) else None for i in best],
                    "preferred_layer": preferred.astype(np.float32),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def settings_digest(
    config,
    layers: Sequence[str] | None,
    dataset: Path,
    features: Path,
    min_ceiling: float,
    runs: Sequence[RunData],
) -> str:
    """Short hash of everything that changes results (names the resumable parts).

    The encoding settings, the dataset (resolved path and the SHA-256 of its card, which
    records its runs and cleaning), the selected subjects and run keys, and the feature cache
    (resolved path, and the ``runs.parquet`` row and entry record serving each selected run).
    """
    from wav2brain.features.cache import sha256_json

    record = {
        "config": asdict(config),
        "layers": list(layers or []),
        "dataset": str(dataset.resolve()),
        "card_sha256": hashlib.sha256((dataset / "README.md").read_bytes()).hexdigest(),
        "features": str(features.resolve()),
        "min_ceiling": min_ceiling,
        "subjects": sorted({r.subject for r in runs}),
        "runs": sorted(r.run_key for r in runs),
        "sources": {r.run_key: r.source for r in runs},
    }
    return sha256_json(record)[:12]


def encode_runs(
    runs: Sequence[RunData],
    out: Path,
    config,
    space: str,
    dataset: Path,
    mask_img=None,
    min_ceiling: float | None = None,
    digest: str = "default",
):
    """Fit every subject of ``runs``; write tables and maps under ``out``; return the scores.

    ``dataset`` is the prepared folder the runs come from (for leave-one-subject-out ceilings);
    ``min_ceiling`` (r) defaults to :func:`default_min_ceiling`.
    """
    import pandas as pd

    from wav2brain.data.hf_layout import write_shard

    if mask_img is None and not space.startswith("fsaverage"):
        raise FileNotFoundError(f"space {space!r} needs the dataset's mask.nii.gz for brain maps")
    min_ceiling = default_min_ceiling() if min_ceiling is None else min_ceiling
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    subjects = {
        s: parts / f"sub-{s}_{digest}.parquet" for s in dict.fromkeys(r.subject for r in runs)
    }
    todo = [s for s, part in subjects.items() if not part.is_file()]
    ceilings = subject_ceilings(todo, runs, dataset, space) if todo else {}
    tables = []
    for subject, part in subjects.items():
        if subject in ceilings:
            table = encode_subject(subject, runs, config, ceilings[subject], min_ceiling)
            write_shard(_arrow(table), part)
        else:
            logger.info("sub-%s: reusing %s", subject, part)
            table = pd.read_parquet(part)
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
    digest = settings_digest(
        config, args.layers, args.dataset, args.features, args.min_ceiling, runs
    )
    scores = encode_runs(
        runs,
        args.out,
        config,
        space,
        args.dataset,
        mask if mask.is_file() else None,
        args.min_ceiling,
        digest,
    )
    logger.info(
        "%d subjects x %d layers encoded into %s",
        scores["subject"].nunique(),
        scores["layer"].nunique(),
        args.out,
    )
    return 0
