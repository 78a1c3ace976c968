"""BIDS discovery: wav2brain's own indexing against pybids ``BIDSLayout(validate=False)``.

The three things discovery needs from a BIDS tree, timed for each implementation:

* index: every functional ``*_bold`` image (ours: a glob of ``sub-*/[ses-*/]func``; pybids:
  ``BIDSLayout(root, validate=False)`` then ``get(suffix="bold")``);
* metadata: the inherited ``*_bold.json`` sidecars of every run (ours: :func:`read_sidecar`;
  pybids: ``get_metadata``);
* events: the ``*_events.tsv`` that applies to every run (ours: :func:`find_events`; pybids:
  ``get_nearest(suffix="events", extension=".tsv", strict=False)``).

Both must agree on every run (the merged metadata and the events file); the script reports the
disagreements. Issue 7 keeps pybids as the engine unless it fails a layout or costs more than 10 s
on the real Narratives metadata.

Data: by default the real metadata in ``tests/data`` (Narratives ds002345 subset, LeBel ds003020)
with fabricated binaries (``tests/fabricate.py``). ``--root DIR`` (repeatable) times other trees,
e.g. the full Narratives metadata exported from its git mirror (``git archive`` of
github.com/OpenNeuroDatasets/ds002345: 873 runs; annexed binaries are broken links, which neither
implementation opens). Prints one JSON object and writes ``benchmarks/results/discovery.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = Path(__file__).resolve().parents[1] / "tests"


def bench_root(root: Path) -> dict:
    """Time both implementations on one tree and count their disagreements."""
    import bids

    from wav2brain.data.bids import _bold_files, find_events, read_sidecar

    root = root.resolve()
    start = time.perf_counter()
    ours_files = _bold_files(root)
    t_index = time.perf_counter()
    ours_meta = [read_sidecar(path, root) for path in ours_files]
    t_meta = time.perf_counter()
    ours_events = [find_events(path, root) for path in ours_files]
    t_events = time.perf_counter()
    ours = {
        "index_s": t_index - start,
        "metadata_s": t_meta - t_index,
        "events_s": t_events - t_meta,
    }

    start = time.perf_counter()
    layout = bids.BIDSLayout(str(root), validate=False)
    extensions = [".nii.gz", ".nii", ".func.gii"]
    theirs_files = sorted(
        Path(p)
        for p in layout.get(
            datatype="func", suffix="bold", extension=extensions, return_type="filename"
        )
        if "hemi-R" not in Path(p).name.split("_")
    )
    t_index = time.perf_counter()
    theirs_meta = [layout.get_metadata(str(path)) for path in ours_files]
    t_meta = time.perf_counter()
    theirs_events = [
        layout.get_nearest(str(path), suffix="events", extension=".tsv", strict=False)
        for path in ours_files
    ]
    t_events = time.perf_counter()
    pybids = {
        "index_s": t_index - start,
        "metadata_s": t_meta - t_index,
        "events_s": t_events - t_meta,
    }
    for timing in (ours, pybids):
        timing["total_s"] = sum(timing.values())
        for key in timing:
            timing[key] = round(timing[key], 3)
    return {
        "root": str(root),
        "n_runs": len(ours_files),
        "ours": ours,
        "pybids": pybids,
        "runs_only_one_side": len(set(ours_files) ^ set(theirs_files)),
        "metadata_disagreements": sum(a != b for a, b in zip(ours_meta, theirs_meta, strict=True)),
        "events_disagreements": sum(
            (Path(b) if b else None) != a for a, b in zip(ours_events, theirs_events, strict=True)
        ),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append", help="BIDS tree(s) to time")
    parser.add_argument("--quick", action="store_true", help="same as the default (small trees)")
    args = parser.parse_args(argv)
    import bids

    with tempfile.TemporaryDirectory() as tmp:
        roots = args.root
        if not roots:
            sys.path.insert(0, str(TESTS))
            from fabricate import fabricate_layout

            roots = [
                fabricate_layout(TESTS / "data" / name, Path(tmp) / name)
                for name in ("ds002345", "ds003020")
            ]
        result = {
            "benchmark": "discovery",
            "pybids": bids.__version__,
            "python": platform.python_version(),
            "limit_s": 10.0,
            "trees": [bench_root(Path(root)) for root in roots],
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "discovery.json" if args.root else "discovery-quick.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
