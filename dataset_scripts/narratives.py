"""Convert Narratives (OpenNeuro ds002345) into the wav2brain Hugging Face layout.

    python dataset_scripts/narratives.py /data/ds002345 --out narratives-hf --tasks pieman tunnel

A thin wrapper over :func:`wav2brain.data.prepare.prepare_dataset`: the stimulus of each run is the
``events.tsv`` row with ``trial_type == "story"``; the TR comes from each run's ``*_bold.json``
(1.5 s, 1.52 s for milkyway-synonyms). The card text is ``cards/narratives.md``.

The authors' exclusion list (``code/scan_exclude.json`` of the ``snastase/narratives`` repository,
kept as ``data/narratives_scan_exclude.json``, source in ``data/SOURCE.md``) is applied by
default: 27 scans, among them both prettymouth runs whose events disagree about where the story
starts in the WAV. ``--keep-excluded`` keeps them; ``--exclude FILE`` replaces the list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wav2brain.commands.prepare import add_prepare_arguments, prepare_from_args
from wav2brain.data.hf_layout import CardText

CARD = Path(__file__).with_name("cards") / "narratives.md"
SCAN_EXCLUDE = Path(__file__).with_name("data") / "narratives_scan_exclude.json"
"""The authors' published exclusion list (snastase/narratives ``code/scan_exclude.json``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, prepare the folder, print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prepare_arguments(parser, root_help="root of the ds002345 BIDS dataset")
    parser.add_argument(
        "--keep-excluded",
        action="store_true",
        help=f"keep the scans of the authors' exclusion list ({SCAN_EXCLUDE.name})",
    )
    args = parser.parse_args(argv)
    if args.keep_excluded and args.exclude is not None:
        parser.error("--keep-excluded and --exclude contradict each other; give one")
    card = CardText(
        pretty_name="Narratives (ds002345) audio-fMRI",
        license="cc0-1.0",
        source=CARD.read_text(encoding="utf-8"),
    )
    exclude = None if args.keep_excluded else SCAN_EXCLUDE
    print(prepare_from_args(args, card=card, exclude=exclude))
    return 0


if __name__ == "__main__":
    sys.exit(main())
