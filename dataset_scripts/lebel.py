"""Convert LeBel et al. 2023 (OpenNeuro ds003020) into the wav2brain Hugging Face layout.

    python dataset_scripts/lebel.py /data/ds003020 --out lebel-hf --subjects UTS01 --tasks souls

The story runs have no events, so this script writes the mapping table itself, one row per
``derivative/preprocessed_data/<subject>/<story>.hf5`` (the authors' preprocessed responses;
the held-out story, stored as [repeats, TRs, voxels], gives one row per repeat: run label
``repeat + 1`` as BIDS runs count from 1, ``repeat`` column the 0-based index, so each repeat is
its own run of the same stimulus and ``encode`` can compute the repeat noise ceiling on them):
stimulus ``stimuli/<story>.wav``, TR from ``task-<story>_bold.json``, alignment
``derivative/TextGrids/<story>.TextGrid``, and the onset of the sound relative to row 0 of the
array (``--onset``, default -10 s; see ``cards/lebel.md`` for why). It then calls
:func:`wav2brain.data.prepare.prepare_dataset` with that table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from wav2brain.commands.prepare import add_prepare_arguments, prepare_from_args
from wav2brain.data.hf_layout import CardText

CARD = Path(__file__).with_name("cards") / "lebel.md"
RESPONSES_DIR = Path("derivative") / "preprocessed_data"
DEFAULT_ONSET_S = -10.0
"""Sound onset (s) relative to row 0 of the ``.hf5``: sound at scan 10 s, row 0 = scan TR 10 (20 s)."""


def mapping_rows(root: Path, onset: float) -> list[dict[str, str]]:
    """One mapping-table row per preprocessed response file of ``root``.

    Raises
    ------
    FileNotFoundError
        No ``derivative/preprocessed_data`` folder or no ``.hf5`` in it.
    ValueError
        A story without ``task-<story>_bold.json`` or without ``RepetitionTime`` in it.
    """
    folder = root / RESPONSES_DIR
    files = sorted(p for p in folder.glob("*/*.hf5") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no <subject>/<story>.hf5 responses under {folder}")
    rows = []
    for path in files:
        story = path.stem
        sidecar = root / f"task-{story}_bold.json"
        if not sidecar.is_file():
            raise ValueError(f"{path}: no sidecar {sidecar} to give the TR of story {story!r}")
        tr = json.loads(sidecar.read_text(encoding="utf-8")).get("RepetitionTime")
        if tr is None:
            raise ValueError(f"{sidecar}: no RepetitionTime (s)")
        textgrid = root / "derivative" / "TextGrids" / f"{story}.TextGrid"
        row = {
            "subject": path.parent.name,
            "task": story,
            "run": "",
            "bold": str(path.relative_to(root)),
            "stimulus": f"stimuli/{story}.wav",
            "onset": f"{onset}",
            "tr": f"{float(tr)}",
            "alignment": str(textgrid.relative_to(root)) if textgrid.is_file() else "",
            "repeat": "",
        }
        repeats = _repeats(path)
        if repeats is None:
            rows.append(row)
        else:
            rows.extend(
                {**row, "run": str(repeat + 1), "repeat": str(repeat)} for repeat in range(repeats)
            )
    return rows


def _repeats(path: Path) -> int | None:
    """Repeats of a [repeats, TRs, voxels] response file (the held-out story); None for [TRs, voxels].

    Raises
    ------
    ValueError
        The file cannot be read or its ``data`` is neither 2-D nor 3-D.
    """
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            shape = handle["data"].shape if "data" in handle else None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the HDF5 file ({error})") from None
    if shape is None or len(shape) not in (2, 3):
        raise ValueError(f"{path}: expected a 'data' array [TRs, voxels] or [repeats, TRs, voxels]")
    return shape[0] if len(shape) == 3 else None


def write_mapping(rows: list[dict[str, str]], path: Path) -> Path:
    """Write the rows as a TSV mapping table."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, build the mapping table, prepare the folder, print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prepare_arguments(parser, root_help="root of the ds003020 BIDS dataset")
    parser.add_argument(
        "--onset",
        type=float,
        default=DEFAULT_ONSET_S,
        help="sound onset (s) relative to row 0 of each .hf5",
    )
    args = parser.parse_args(argv)
    if args.mapping is not None:
        parser.error("lebel.py writes its own mapping table; use wav2brain prepare for --mapping")
    card = CardText(
        pretty_name="LeBel et al. 2023 (ds003020) audio-fMRI",
        license="cc0-1.0",
        source=CARD.read_text(encoding="utf-8"),
    )
    rows = mapping_rows(args.bids_root, args.onset)
    with tempfile.TemporaryDirectory() as tmp:
        from wav2brain.data.bids import read_mapping_table

        table = write_mapping(rows, Path(tmp) / "lebel_mapping.tsv")
        specs = read_mapping_table(table, root=args.bids_root)
        print(prepare_from_args(args, card=card, mapping=specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
