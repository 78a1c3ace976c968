"""``wav2brain report RUN``: the study report, one self-contained HTML page, figures and tables.

A thin shell over :func:`wav2brain.reports.study_report.build_report` (see it for what the page
holds and for ``RUN/report/``: the PNGs, the Parquet tables shown and ``headline.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``report`` on the top-level subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="the study report of a run folder: report.html (self-contained) and report/",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("run", type=Path, help="run folder holding study.json (wav2brain run)")
    parser.add_argument(
        "--out",
        type=Path,
        help="the page (default RUN/report.html); figures and tables go to the folder of the "
        "same name without .html",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the report and print where it is."""
    from wav2brain.reports.study_report import build_report

    page = build_report(args.run, args.out)
    print(f"report: {page} (figures and tables in {page.with_suffix('')})")
    return 0
