"""Convert Narratives (OpenNeuro ds002345) into the wav2brain Hugging Face layout.

    python dataset_scripts/narratives.py /data/ds002345 --out narratives-hf --tasks pieman tunnel

A thin wrapper over :func:`wav2brain.data.prepare.prepare_dataset`: the stimulus of each run is the
``events.tsv`` row with ``trial_type == "story"``; the TR comes from each run's ``*_bold.json``
(1.5 s, 1.52 s for milkyway-synonyms). The card text is ``cards/narratives.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wav2brain.commands.prepare import add_prepare_arguments, prepare_from_args
from wav2brain.data.hf_layout import CardText

CARD = Path(__file__).with_name("cards") / "narratives.md"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, prepare the folder, print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prepare_arguments(parser, root_help="root of the ds002345 BIDS dataset")
    args = parser.parse_args(argv)
    card = CardText(
        pretty_name="Narratives (ds002345) audio-fMRI",
        license="cc0-1.0",
        source=CARD.read_text(encoding="utf-8"),
    )
    print(prepare_from_args(args, card=card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
