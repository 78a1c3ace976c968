"""Convert any BIDS audio-fMRI dataset into the wav2brain Hugging Face layout.

    python dataset_scripts/generic_bids.py /data/my_bids --out my-hf [--mapping runs.tsv]

A thin wrapper over :func:`wav2brain.data.prepare.prepare_dataset` whose card text
(``cards/generic_bids.md``) is filled from the dataset's ``dataset_description.json``: name,
licence, authors, citation (``HowToAcknowledge``), DOI and links.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from wav2brain.commands.prepare import add_prepare_arguments, prepare_from_args
from wav2brain.data.hf_layout import CardText

CARD = Path(__file__).with_name("cards") / "generic_bids.md"
LICENSES = {"cc0": "cc0-1.0", "pddl": "pddl", "cc-by-4.0": "cc-by-4.0", "cc-by": "cc-by-4.0"}
"""BIDS ``License`` values -> Hub licence ids; anything else is ``other``."""


def card_from_description(root: Path, trial_type: str) -> CardText:
    """Fill the generic card from ``root/dataset_description.json`` ("not stated" where absent).

    Raises
    ------
    FileNotFoundError
        No ``dataset_description.json`` (every BIDS dataset has one).
    ValueError
        The file is not valid JSON.
    """
    path = root / "dataset_description.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a BIDS dataset root?")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    missing = "not stated in dataset_description.json"
    licence = str(description.get("License", "")).strip()
    links = [description.get("DatasetDOI", "")] + list(description.get("ReferencesAndLinks", []))
    fields = {
        "name": description.get("Name", root.name),
        "license": licence or missing,
        "authors": ", ".join(description.get("Authors", [])) or missing,
        "citation": description.get("HowToAcknowledge", "") or missing,
        "links": ", ".join(str(link) for link in links if link) or missing,
        "trial_type": trial_type,
    }
    return CardText(
        pretty_name=str(fields["name"]),
        license=LICENSES.get(licence.lower(), "other"),
        source=CARD.read_text(encoding="utf-8").format_map(fields),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, prepare the folder, print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prepare_arguments(parser, root_help="BIDS dataset root")
    args = parser.parse_args(argv)
    print(prepare_from_args(args, card=card_from_description(args.bids_root, args.trial_type)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
