"""``wav2brain probe``: SUPERB-style probing of frozen upstreams, compared on the same downstreams.

Each ``--upstream`` (``fbank``, a local folder such as a ``save_backbone`` export, or a Hub id;
``LABEL=SPEC`` names it) is probed on each task of ``--tasks`` (folders of ``--tasks-dir``, as
``wav2brain make-probe-tasks`` writes them), with the same downstream and seeds. ``--out`` gets
``comparison.parquet`` / ``comparison.md`` (task, metric, A, B, difference, confidence interval,
significant), ``comparison.png``, ``layer_weights.parquet`` / ``layer_weights.png``,
``results.parquet`` and the resumable per-run records (see :mod:`wav2brain.probing.compare`).
Features are cached in ``--cache-dir`` (default ``OUT/features``): a rerun does no model work.

Each task trains its own SUPERB downstream (:data:`wav2brain.probing.downstream.TASK_DEFAULTS`: a
linear CTC head for PR, a BiLSTM for ASR, ...). ``--epochs`` and ``--ctc-head`` override every task
of their kind; ``--downstream TARGET.FIELD=VALUE`` (repeatable, applied last, in order) any field of
a task type or of one task, e.g. ``--downstream asr.hidden_size=256 --downstream pr.epochs=80``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``probe`` on the top-level subparsers (imports nothing heavy)."""
    parser = subparsers.add_parser(
        "probe",
        help="SUPERB-style probing: compare frozen upstreams on the same light downstreams",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--upstream",
        action="append",
        required=True,
        metavar="[LABEL=]SPEC",
        help="fbank, a model folder or a Hub id (repeat; the first is the reference A)",
    )
    parser.add_argument(
        "--tasks", required=True, help="comma-separated task names, e.g. ks,ic,sid,pr,asr"
    )
    parser.add_argument("--tasks-dir", type=Path, required=True, help="folder of task folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cache-dir", type=Path, help="probe feature cache (default OUT/features)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="downstream seeds (default: ProbeConfig.seeds)"
    )
    parser.add_argument("--epochs", type=int, help="epochs of every downstream (default per task)")
    parser.add_argument(
        "--ctc-head",
        choices=("bilstm", "linear"),
        help="CTC head of every CTC task (default per task: linear for pr, bilstm for asr)",
    )
    parser.add_argument(
        "--downstream",
        action="append",
        default=[],
        metavar="TARGET.FIELD=VALUE",
        help="set a downstream field of a task type (utterance, ctc, verification) or of one task "
        "(ks, pr, asr, ...), e.g. asr.hidden_size=256; repeat for more",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for extraction and training (default: torch's; 1 on a shared machine)",
    )
    parser.add_argument("--device", help="device of extraction and downstream training (cpu, cuda)")
    parser.add_argument(
        "--storage-dtype", choices=("float32", "float16"), help="dtype of cached features"
    )
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`~wav2brain.probing.ProbeConfig` the arguments ask for."""
    from dataclasses import replace

    from wav2brain.features.extract import ExtractionConfig
    from wav2brain.probing.downstream import PART_TYPES
    from wav2brain.probing.harness import ProbeConfig

    config = ProbeConfig()
    downstream = config.downstream
    if args.epochs is not None:
        for task_type in PART_TYPES:
            downstream = downstream.with_changes(task_type, epochs=args.epochs)
    if args.ctc_head:
        downstream = downstream.with_changes("ctc", head=args.ctc_head)
    downstream = downstream.with_options(args.downstream)
    changes = {}
    if args.device:
        downstream = replace(downstream, device=args.device)
        changes["extraction"] = ExtractionConfig(device=args.device)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.storage_dtype:
        changes["storage_dtype"] = args.storage_dtype
    if args.threads is not None:
        changes["threads"] = args.threads
    return replace(config, downstream=downstream, **changes)


def run(args: argparse.Namespace) -> int:
    """Probe, compare, write the tables and figures; print the markdown table."""
    from wav2brain.probing.compare import compare_upstreams

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks!r}: no task name")
    comparison = compare_upstreams(
        args.upstream,
        tasks,
        args.out,
        tasks_dir=args.tasks_dir,
        config=config_from_args(args),
        cache_dir=args.cache_dir,
    )
    if comparison is None:  # a process other than the main one: features only
        return 0
    print(comparison.paths["markdown"].read_text(encoding="utf-8"))
    logger.info("probing results in %s", args.out)
    return 0
