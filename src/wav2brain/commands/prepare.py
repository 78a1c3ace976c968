"""``wav2brain prepare BIDS_ROOT --out DIR``: write a BIDS dataset as a Hugging Face dataset folder.

The argument helpers (:func:`add_prepare_arguments`, :func:`cleaning_from_args`,
:func:`prepare_from_args`) are shared with the converters in ``dataset_scripts/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_prepare_arguments(parser: argparse.ArgumentParser, root_help: str) -> None:
    """Add the BIDS root, output, filters, mask and cleaning options to ``parser``."""
    parser.add_argument("bids_root", type=Path, metavar="BIDS_ROOT", help=root_help)
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--mask", type=Path, help="brain/ROI mask (NIfTI; .npy vector for arrays)")
    parser.add_argument("--subjects", nargs="+", help="subject labels to keep (e.g. 001 sub-002)")
    parser.add_argument("--tasks", nargs="+", help="task labels to keep")
    parser.add_argument("--runs", nargs="+", help="run labels to keep")
    parser.add_argument(
        "--mapping", type=Path, help="mapping table (TSV/CSV) for runs without events"
    )
    parser.add_argument("--trial-type", default="story", help="events trial_type of the stimulus")
    parser.add_argument(
        "--word-tier",
        metavar="NAME",
        help="TextGrid tier holding the words, when not named 'word'/'words' (a mapping "
        "table's word_tier column overrides it per row)",
    )
    parser.add_argument(
        "--phone-tier",
        metavar="NAME",
        help="TextGrid tier holding the phonemes, when not named 'phone(s)'/'phoneme(s)' "
        "(mapping-table column phone_tier); without a phone tier no phonemes are stored",
    )
    parser.add_argument("--no-detrend", action="store_true", help="do not remove slow drift")
    parser.add_argument(
        "--drift-order",
        type=int,
        metavar="K",
        help="highest Legendre order of the drift removed per run (1 = linear; default: AFNI's "
        "1 + floor(run duration / 150 s))",
    )
    parser.add_argument("--no-standardize", action="store_true", help="do not z-score each run")
    parser.add_argument("--high-pass", type=float, metavar="HZ", help="Butterworth high-pass (Hz)")
    parser.add_argument("--low-pass", type=float, metavar="HZ", help="Butterworth low-pass (Hz)")
    parser.add_argument("--smoothing-fwhm", type=float, metavar="MM", help="spatial smoothing (mm)")
    parser.add_argument("--trim-start", type=int, default=0, metavar="TRS", help="TRs cut at start")
    parser.add_argument("--trim-end", type=int, default=0, metavar="TRS", help="TRs cut at end")
    parser.add_argument(
        "--confounds",
        nargs="+",
        metavar="COL",
        help="confound columns to regress out, exact names or shell patterns (e.g. 'trans_*' "
        "'rot_*' 'a_comp_cor_0[0-5]'), from each run's fMRIPrep *_desc-confounds_timeseries.tsv "
        "or a mapping table's 'confounds' file; leading n/a are filled with the column mean",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cleaning_from_args(args: argparse.Namespace):
    """The ``CleaningConfig`` described by the parsed options."""
    from wav2brain.data.fmri import CleaningConfig

    return CleaningConfig(
        detrend=not args.no_detrend,
        drift_order=args.drift_order,
        standardize=not args.no_standardize,
        high_pass=args.high_pass,
        low_pass=args.low_pass,
        smoothing_fwhm=args.smoothing_fwhm,
        trim_start_trs=args.trim_start,
        trim_end_trs=args.trim_end,
        confound_columns=tuple(args.confounds) if args.confounds else None,
    )


def prepare_from_args(args: argparse.Namespace, card: Any = None, mapping: Any = None) -> Path:
    """Run :func:`wav2brain.data.prepare.prepare_dataset` with the parsed options."""
    from wav2brain.data.prepare import prepare_dataset

    return prepare_dataset(
        args.bids_root,
        args.out,
        mask=args.mask,
        subjects=args.subjects,
        tasks=args.tasks,
        runs=args.runs,
        mapping=mapping if mapping is not None else args.mapping,
        cleaning=cleaning_from_args(args),
        card=card,
        trial_type=args.trial_type,
        word_tier=args.word_tier,
        phone_tier=args.phone_tier,
        progress=not args.quiet,
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``wav2brain prepare``."""
    parser = subparsers.add_parser(
        "prepare",
        help="write a BIDS audio-fMRI dataset as a Hugging Face dataset folder",
        description="Discover runs, clean BOLD, resample audio to 16 kHz and write Parquet "
        "shards, a mask and a dataset card that datasets.load_dataset reads. Resumable: run the "
        "same command again to finish an interrupted preparation.",
    )
    add_prepare_arguments(parser, root_help="BIDS dataset root")
    parser.add_argument("--card", type=Path, help="markdown file: source, licence, citation")
    parser.add_argument("--name", help="pretty name of the dataset card")
    parser.add_argument("--license", default="other", help="Hub licence id (e.g. cc0-1.0)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Prepare the folder and print its path."""
    from wav2brain.data.hf_layout import CardText

    card = CardText(license=args.license)
    if args.name:
        card.pretty_name = args.name
    if args.card is not None:
        if not args.card.is_file():
            raise FileNotFoundError(f"--card file not found: {args.card}")
        card.source = args.card.read_text(encoding="utf-8")
    print(prepare_from_args(args, card=card))
    return 0
