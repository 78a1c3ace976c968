"""``wav2brain extract``: every AN's temporal response to every stimulus, on each run's TR grid.

Reads a prepared dataset folder (``stimuli`` and ``responses`` tables, see
:mod:`wav2brain.data.hf_layout`), runs the model over each stimulus once in streamed chunks,
resamples to the TR grids of the runs that played it, and writes the feature cache
(:mod:`wav2brain.features.cache`) plus two Parquet tables in ``--out``:

- ``index.parquet``: one row per cache entry and layer (stimulus_id, tr, phase_s, first_time_s,
  layer, units, n_trs, path, key);
- ``runs.parquet``: one row per run (subject, session, task, run, stimulus_id, onset, tr,
  slice_time_reference, n_trs, path, row_offset), ``row_offset`` being the entry row of the run's
  first TR (negative when the scan starts before the stimulus; see
  :func:`wav2brain.features.pipeline.run_features`).

Each run is sampled where its TRs sample the brain: ``k tr + slice_time_reference - onset`` s of
the stimulus, with the reference stored per run by ``prepare`` (:mod:`wav2brain.data.timing`), the
same times at which ``BrainWindows`` ends its training windows.

Running it again reuses every entry whose key matches (no model work) and recomputes the rest.
The tables are merged, not overwritten: the rows of the stimuli extracted now replace their old
rows, and the rows of other stimuli (an earlier ``--stimuli`` selection) are kept.

``torchrun --nproc_per_node N -m wav2brain extract ...`` (or ``accelerate launch``) splits the
stimuli over N processes (:mod:`wav2brain.distributed`); the main process writes the tables.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

RESPONSE_COLUMNS = ("subject", "session", "task", "run", "stimulus_id", "onset", "tr", "n_trs")
EXTRACTION_OPTIONS = ("tensor", "chunk_seconds", "context_seconds", "batch_size")
"""Options left unset (None) unless given: ``ExtractionConfig`` holds their defaults, and
importing it here would cost the command line torch (see :mod:`wav2brain.registration`)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``extract`` on the top-level subparsers (imports nothing heavy)."""
    parser = subparsers.add_parser(
        "extract",
        help="stream model activations over each stimulus onto the runs' TR grids (feature cache)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("dataset", type=Path, help="prepared dataset folder (wav2brain prepare)")
    parser.add_argument("--model", required=True, help="local path or Hub id of the model")
    parser.add_argument("--out", type=Path, required=True, help="feature cache folder")
    parser.add_argument(
        "--revision", help="model revision; pins the cache key without hashing weights"
    )
    parser.add_argument(
        "--tensor",
        help="tensor of each layer: hidden_states (default), attention_output or ffn_intermediate",
    )
    parser.add_argument("--layers", type=int, nargs="+", help="1-based layers (default: all)")
    parser.add_argument("--method", default="hrf", choices=("hrf", "fir"), help="TR-grid method")
    parser.add_argument("--hrf-model", default="glover", choices=("glover", "spm"))
    parser.add_argument(
        "--downsample", default="lanczos", choices=("lanczos", "average"), help="FIR downsampling"
    )
    parser.add_argument(
        "--delays", type=int, nargs="+", default=[1, 2, 3, 4], help="FIR delays (TRs)"
    )
    parser.add_argument("--stimuli", nargs="+", help="stimulus ids to extract (default: all)")
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        help="kept core per window (s; default: ExtractionConfig.chunk_seconds)",
    )
    parser.add_argument(
        "--context-seconds",
        type=float,
        help="context each side of a core (s; default: ExtractionConfig.context_seconds)",
    )
    parser.add_argument("--causal", action="store_true", help="left context only")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="windows per forward pass (default: ExtractionConfig.batch_size)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero-mean, unit-variance audio per stimulus (default: the checkpoint's do_normalize)",
    )
    parser.add_argument("--device", help="compute device (cpu, cuda, ...)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="compute dtype")
    parser.set_defaults(func=run)
    return parser


def _configs(args: argparse.Namespace):
    """Extraction and TR-grid configs from the arguments (validated before any work)."""
    from wav2brain.features.extract import ExtractionConfig
    from wav2brain.features.resample import TRGridConfig

    given = {name: getattr(args, name) for name in EXTRACTION_OPTIONS}
    extraction = ExtractionConfig(
        layers=tuple(args.layers) if args.layers else None,
        causal=args.causal,
        dtype=args.dtype,
        device=args.device,
        normalize=args.normalize,
        **{name: value for name, value in given.items() if value is not None},
    )
    grid = TRGridConfig(
        method=args.method,
        hrf_model=args.hrf_model,
        downsample=args.downsample,
        delays=tuple(args.delays),
    )
    return extraction, grid


def _load_tables(dataset: Path, wanted: list[str] | None):
    """The stimuli to extract and the runs' timing columns (BOLD is not read)."""
    import numpy as np
    from datasets import load_dataset, load_dataset_builder

    from wav2brain.data.timing import REFERENCE_COLUMN, stored_references

    if not (dataset / "README.md").is_file():
        raise FileNotFoundError(
            f"{dataset} is not a prepared dataset folder: no README.md (run `wav2brain prepare`)"
        )
    stimuli = load_dataset(str(dataset), "stimuli", split="train")
    columns = list(RESPONSE_COLUMNS)
    if REFERENCE_COLUMN in (load_dataset_builder(str(dataset), "responses").info.features or {}):
        columns.append(REFERENCE_COLUMN)
    responses = load_dataset(str(dataset), "responses", split="train", columns=columns)
    ids = list(stimuli["id"])
    if wanted:
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(f"--stimuli {unknown} not in {dataset / 'stimuli'}: have {ids}")
        stimuli = stimuli.select([i for i, sid in enumerate(ids) if sid in set(wanted)])
    runs = responses.to_pandas()
    bad = runs[~((runs["tr"] > 0) & np.isfinite(runs["tr"]) & np.isfinite(runs["onset"]))]
    if len(bad):
        first = bad.iloc[0]
        raise ValueError(
            f"{dataset / 'responses'}: run sub-{first.subject} task-{first.task} run-{first.run} has "
            f"TR {first.tr} s and onset {first.onset} s; expected TR > 0 and a finite onset"
        )
    runs[REFERENCE_COLUMN] = stored_references(runs, str(dataset / "responses"))
    played = set(runs["stimulus_id"])
    missing = [sid for sid in stimuli["id"] if sid not in played]
    if missing:
        logger.warning("no runs play %s: nothing to sample them at, skipped", missing)
        stimuli = stimuli.filter(lambda row: row["id"] in played)
    if stimuli.num_rows == 0:
        raise ValueError(f"no stimulus of {dataset} to extract (selection: {wanted or 'all'})")
    return stimuli, runs


def _index_rows(stimulus_id: str, entries, out: Path) -> list[dict]:
    """One ``index.parquet`` row per distinct cache entry and layer."""
    rows = []
    for entry in {str(e.path): e for e in entries.values()}.values():
        for layer, units in entry.units.items():
            rows.append(
                dict(
                    stimulus_id=stimulus_id,
                    tr=entry.grid.tr_s,
                    phase_s=entry.metadata["key"]["phase_s"],
                    first_time_s=entry.grid.first_time_s,
                    layer=layer,
                    units=units,
                    n_trs=entry.grid.n_rows,
                    path=str(entry.path.resolve().relative_to(out)),
                    key=entry.path.stem,
                )
            )
    return rows


def _run_rows(played, entries, out: Path) -> list[dict]:
    """One ``runs.parquet`` row per run: its entry and the entry row of its first TR."""
    from wav2brain.features.pipeline import RunTiming
    from wav2brain.features.resample import row_offset

    rows = []
    for r in played.to_dict("records"):
        timing = RunTiming.from_row(r)
        entry = entries[timing]
        rows.append(
            dict(
                subject=r["subject"],
                session=r["session"],
                task=r["task"],
                run=r["run"],
                stimulus_id=r["stimulus_id"],
                onset=timing.onset_s,
                tr=timing.tr_s,
                slice_time_reference=timing.reference_s,
                n_trs=int(r["n_trs"]),
                path=str(entry.path.resolve().relative_to(out)),
                row_offset=row_offset(entry.grid, timing.grid(int(r["n_trs"]))),
            )
        )
    return rows


def _previous_table(path: Path):
    """The table an earlier extract wrote at ``path`` (pandas), or None; read before any work."""
    import pandas as pd

    if not path.is_file():
        return None
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path}: unreadable table ({error}); delete it to rebuild it") from error
    if "stimulus_id" not in table.columns:
        raise ValueError(f"{path}: no stimulus_id column; expected a table of wav2brain extract")
    return table


def _merged(previous, rows: list[dict], extracted: set[str]):
    """``rows`` plus the ``previous`` rows of stimuli not in ``extracted`` (pandas)."""
    import pandas as pd

    current = pd.DataFrame(rows)
    if previous is None:
        return current
    kept = previous[~previous["stimulus_id"].isin(extracted)]
    return pd.concat([kept, current], ignore_index=True) if len(kept) else current


def run(args: argparse.Namespace) -> int:
    """Extract, resample and cache every selected stimulus; write the index tables.

    Under several processes (:mod:`wav2brain.distributed`) each extracts its shard of the
    stimuli into the shared cache and the main process writes the tables, rows in stimulus
    order: the files one process writes.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    from wav2brain import distributed
    from wav2brain.data.hf_layout import decode_audio, write_shard
    from wav2brain.features.cache import FeatureCache, model_identity
    from wav2brain.features.extract import activation_units, load_model
    from wav2brain.features.pipeline import RunTiming, frame_geometry, stimulus_features

    extraction, grid_config = _configs(args)
    stimuli, runs = _load_tables(args.dataset, args.stimuli)
    tables = ("index", "runs")
    previous = {name: _previous_table(args.out / f"{name}.parquet") for name in tables}
    model = load_model(args.model, args.revision)
    activation_units(model, extraction)  # model family, tensor and layers, before any work
    extraction = extraction.for_checkpoint(model, args.model, args.revision)
    logger.info(
        "audio normalisation (zero mean, unit variance per stimulus): %s", extraction.normalize
    )
    model_id = model_identity(model, args.model, args.revision)
    cache = FeatureCache(args.out)
    out = args.out.resolve()
    ids = list(stimuli["id"])
    mine = stimuli.select(distributed.shard(range(len(ids))))
    rows: dict[str, tuple[list[dict], list[dict]]] = {}
    n_frames = [frame_geometry(model, int(n))[1] for n in mine["n_samples"]]
    desc = "extract" + distributed.describe()
    with tqdm(total=sum(n_frames), unit="frame", desc=desc) as bar:
        for row, frames in zip(mine, n_frames, strict=True):
            played = runs[runs["stimulus_id"] == row["id"]]
            done = bar.n
            entries = stimulus_features(
                model,
                decode_audio(row["audio"]),
                stimulus_id=row["id"],
                model_id=model_id,
                cache=cache,
                timings=[RunTiming.from_row(r) for r in played.to_dict("records")],
                extraction=extraction,
                grid_config=grid_config,
                on_frames=bar.update,
            )
            bar.update(frames - (bar.n - done))  # cache hits: no blocks were streamed
            rows[row["id"]] = (
                _index_rows(row["id"], entries, out),
                _run_rows(played, entries, out),
            )
    merged = distributed.merge(rows, ids, "stimulus")
    if distributed.is_main():
        for position, name in enumerate(tables):
            current = [r for parts in merged.values() for r in parts[position]]
            table = _merged(previous[name], current, set(ids))
            write_shard(pa.Table.from_pandas(table, preserve_index=False), out / f"{name}.parquet")
        n_runs = sum(len(parts[1]) for parts in merged.values())
        logger.info("%d stimuli, %d runs: features in %s", len(ids), n_runs, out)
    distributed.wait()
    return 0
