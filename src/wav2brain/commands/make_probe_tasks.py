"""``wav2brain make-probe-tasks --out DIR``: write the offline SUPERB-style probing tasks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_TASKS = "ks,ic,sid,pr,asr,asv"
"""Every task, as ``wav2brain.probing.tasks.TASKS`` lists them (kept here so --help stays cheap)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``make-probe-tasks`` on the console script's subparsers."""
    parser = subparsers.add_parser(
        "make-probe-tasks",
        help="write SIMULATED espeak-ng probing tasks (ks, ic, sid, pr, asr, asv) as HF datasets",
        description=(
            "Synthesise keyword spotting, intent classification, speaker identification, "
            "phoneme recognition, word-level ASR and speaker verification tasks with espeak-ng, "
            "each as a Hugging Face dataset folder DIR/<task> (splits train / validation / test "
            "sharing no sentence, speaker or utterance as each task requires; task.json beside "
            "the data) that datasets.load_dataset reads offline. The same seed and size always "
            "give byte-identical files; a folder already made with the same settings is kept."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="parent folder of the tasks")
    parser.add_argument(
        "--tasks",
        default=_TASKS,
        help=f"comma-separated tasks to make (default: all, {_TASKS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="master random seed (default 0)")
    parser.add_argument(
        "--size",
        choices=("small", "default"),
        default="default",
        help="preset: 'small' (a few hundred clips, seconds; tests) or 'default' (about 3,000 "
        "utterances, a few minutes)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace task folders made with other settings (kept otherwise: an error)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Make the tasks and print ``{task: folder}`` as JSON."""
    from wav2brain.probing.tasks import make_probe_tasks

    paths = make_probe_tasks(
        args.out, args.tasks, seed=args.seed, size=args.size, overwrite=args.overwrite
    )
    print(json.dumps({task: str(path) for task, path in paths.items()}, indent=2))
    return 0
