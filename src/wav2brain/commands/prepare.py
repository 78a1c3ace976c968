"""``wav2brain prepare BIDS_ROOT --out DIR``: write a BIDS dataset as a Hugging Face dataset folder.

The argument helpers (:func:`add_prepare_arguments`, :func:`cleaning_from_args`,
:func:`prepare_from_args`) are shared with the converters in ``dataset_scripts/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MAPPING_EPILOG = """\
mapping tables (--mapping runs.tsv; TSV, or CSV by extension), one row per run:
  required  subject, task, run (may be empty), bold (image or .hf5/.npy array),
            stimulus (WAV; relative to ROOT/stimuli, ROOT, or absolute),
            onset (s): time from the first stored volume (row 0 of the image or array)
            to the WAV's first sample; negative when the responses start after the sound
  optional  session; tr (s; checked against the run's sidecars, 1 % tolerance, 0.2-20 s;
            arrays need it); duration (s of the WAV the run must cover, at most its length;
            default its length; arrays without it must overlap the WAV for half the scan);
            space; alignment (TextGrid / Gentle align.json; default: searched by the WAV's
            name in any spelling); confounds (TSV, one row per volume); echo and acquisition
            (BIDS labels; default from the file name); repeat (0-based index into a
            [repeats, TRs, voxels] array); word_tier, phone_tier (TextGrid tier names,
            overriding --word-tier/--phone-tier for the row)
  paths are relative to ROOT. Errors name the table and the row (row 1 = first line after
  the header). Labels compare as BIDS labels: --runs 7 matches run-07, and two rows for
  run 7 and run 07 (or one BOLD file twice for one stimulus) are refused. A column that looks
  like a misspelt known one (duraton, TR) is an error; other extra columns are warned about.
"""


def add_prepare_arguments(parser: argparse.ArgumentParser, root_help: str) -> None:
    """Add the BIDS root, output, filters, mask and cleaning options to ``parser``."""
    parser.add_argument("bids_root", type=Path, metavar="BIDS_ROOT", help=root_help)
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--mask", type=Path, help="brain/ROI mask (NIfTI; .npy vector for arrays)")
    parser.add_argument("--subjects", nargs="+", help="subject labels to keep (e.g. 001 sub-002)")
    parser.add_argument("--tasks", nargs="+", help="task labels to keep")
    parser.add_argument("--sessions", nargs="+", help="session labels to keep")
    parser.add_argument("--runs", nargs="+", help="run labels to keep (7 matches run-07)")
    parser.add_argument(
        "--mapping", type=Path, help="mapping table (TSV/CSV) for runs without events"
    )
    parser.add_argument(
        "--exclude",
        type=Path,
        metavar="FILE",
        help="runs to leave out: JSON (every string in it, e.g. Narratives' scan_exclude.json) "
        "or text (one entry a line, # comments); an entry is a BIDS name prefix such as "
        "sub-038_task-prettymouth or sub-001_task-pieman_run-1 (every file of that run), or a "
        "shell pattern on the BOLD file name; entries that match no file of the dataset are "
        "named in a warning (a list written for the whole dataset may be applied to a partial "
        "copy), a missing file or an entry that is neither form is an error",
    )
    parser.add_argument(
        "--echo", metavar="N", help="the echo to keep of multi-echo data (echo-N entity)"
    )
    parser.add_argument(
        "--align-on",
        nargs="+",
        metavar="[STIMULUS=]ROW",
        help="when runs of one stimulus disagree about where the story starts in the WAV: "
        "'first' (align on the first events row naming the WAV, as each run's events say) or "
        "'story' (align on the story row, at the position most runs agree on), for every "
        "stimulus or per stimulus id (prettymouth=first); without it such runs are refused",
    )
    parser.add_argument("--trial-type", default="story", help="events trial_type of the stimulus")
    parser.add_argument(
        "--word-tier",
        nargs="+",
        metavar="NAME",
        help="TextGrid tier holding the words, when not named 'word'/'words'; several names "
        "take each grid's one tier with any of them (--word-tier Mot words) (a mapping "
        "table's word_tier column overrides it per row)",
    )
    parser.add_argument(
        "--phone-tier",
        nargs="+",
        metavar="NAME",
        help="TextGrid tier holding the phonemes, when not named 'phone(s)'/'phoneme(s)'; "
        "several names as for --word-tier "
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
        "or a mapping table's 'confounds' file; leading n/a take the column's first value; "
        "with --confounds-strategy, these columns are added to the strategy's",
    )
    parser.add_argument(
        "--confounds-strategy",
        nargs="+",
        metavar="COMPONENT",
        help="fMRIPrep noise components chosen with nilearn's load_confounds: motion high_pass "
        "wm_csf global_signal compcor scrub non_steady_state ica_aroma (nilearn's defaults: "
        "24 motion parameters, WM and CSF means; compcor needs high_pass); volumes it would "
        "censor become spike regressors",
    )
    parser.add_argument(
        "--derivatives",
        type=Path,
        metavar="DIR",
        help="derivatives tree (e.g. BIDS_ROOT/derivatives/fmriprep): each run's image is "
        "replaced by its *_space-SPACE_desc-preproc_bold.nii.gz (or fsaverage*/fsnative "
        "hemi-L/R .func.gii), with its brain mask, sidecar and confounds table",
    )
    parser.add_argument(
        "--space",
        default="MNI152NLin2009cAsym",
        help="output space of --derivatives (default: %(default)s; e.g. T1w, fsaverage6)",
    )
    parser.add_argument(
        "--derivatives-desc",
        default="preproc",
        metavar="DESC",
        help="desc- label of the derivative images (default: %(default)s)",
    )
    parser.add_argument(
        "--derivatives-res",
        metavar="RES",
        help="res-/den- label, when a space has several resolutions",
    )
    parser.add_argument(
        "--derivatives-masks",
        type=Path,
        metavar="DIR",
        help="derivatives tree holding the desc-brain_mask files, when not --derivatives "
        "(e.g. fMRIPrep's, for AFNI-cleaned images)",
    )
    parser.add_argument(
        "--slice-time-reference",
        type=float,
        metavar="SECONDS",
        help="seconds into each TR at which its signal is sampled, for every run, in [0, TR) "
        "(default: the sidecar's StartTime for slice-time corrected data such as fMRIPrep "
        "output, else 0 = acquisition start; required for derivatives whose sidecar does "
        "not say whether they were corrected while the raw data have SliceTiming); stored per "
        "run and in the card",
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
        confounds_strategy=tuple(args.confounds_strategy) if args.confounds_strategy else None,
    )


def align_on_from_args(values: list[str] | None) -> Any:
    """``--align-on`` as :func:`~wav2brain.data.bids.discover_runs` takes it (str, dict or None).

    Raises
    ------
    ValueError
        A bare choice mixed with per-stimulus ones, or a stimulus given twice.
    """
    if not values:
        return None
    bare = [v for v in values if "=" not in v]
    if bare:
        if len(values) > 1:
            raise ValueError(
                f"--align-on {' '.join(values)}: give one choice for every stimulus (first or "
                "story) or STIMULUS=CHOICE pairs, not both"
            )
        return bare[0]
    choices: dict[str, str] = {}
    for value in values:
        sid, _, choice = value.partition("=")
        if sid in choices:
            raise ValueError(f"--align-on names stimulus {sid!r} twice")
        choices[sid] = choice
    return choices


def prepare_from_args(
    args: argparse.Namespace,
    card: Any = None,
    mapping: Any = None,
    exclude: Any = None,
    **extra: Any,
) -> Path:
    """Run :func:`wav2brain.data.prepare.prepare_dataset` with the parsed options.

    ``exclude`` (a converter's default exclusion list) is used when ``--exclude`` is not given;
    ``extra`` keyword arguments go to ``prepare_dataset`` as they are (converters use them).
    """
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
        slice_time_reference=args.slice_time_reference,
        word_tier=args.word_tier,
        phone_tier=args.phone_tier,
        progress=not args.quiet,
        exclude=args.exclude if args.exclude is not None else exclude,
        sessions=args.sessions,
        echo=args.echo,
        align_on=align_on_from_args(args.align_on),
        derivatives=args.derivatives,
        space=args.space,
        derivatives_desc=args.derivatives_desc,
        derivatives_res=args.derivatives_res,
        **{"derivatives_masks": args.derivatives_masks, **extra},
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``wav2brain prepare``."""
    parser = subparsers.add_parser(
        "prepare",
        help="write a BIDS audio-fMRI dataset as a Hugging Face dataset folder",
        description="Discover runs, clean BOLD, resample audio to 16 kHz and write Parquet "
        "shards, a mask and a dataset card that datasets.load_dataset reads. Resumable: run the "
        "same command again to finish an interrupted preparation.",
        epilog=MAPPING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
