"""Cost of the dataset card's fingerprint (SHA-256 of every shard) next to writing the shards.

Ours: :func:`wav2brain.data.hf_layout.table_files`, run by ``write_card`` at the end of
``prepare``: every byte of every shard is hashed once, streamed in blocks.
Peer: :func:`wav2brain.data.hf_layout.write_shard` writing the same shards (what ``prepare``
spends at least, before reading and cleaning any BOLD), and reading every Parquet footer
(``pyarrow.parquet.read_metadata``), the cheap alternative that was rejected because footers do
not change with every value (a changed sample that compresses to the same size keeps them).

Data: SIMULATED AR(1) float32 BOLD, one shard per run, Narratives-like by default (600 TRs ×
40,000 voxels, 4 runs: about 96 MB raw per run); ``--quick``: 200 TRs × 10,000 voxels, 2 runs.
Prints one JSON object and writes ``benchmarks/results/fingerprint[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def ar1(rng: np.random.Generator, n_trs: int, n_voxels: int, rho: float = 0.5) -> np.ndarray:
    """float32 [n_trs, n_voxels] AR(1) noise (unit variance)."""
    noise = rng.standard_normal((n_trs, n_voxels)).astype(np.float32)
    for t in range(1, n_trs):
        noise[t] = rho * noise[t - 1] + np.sqrt(1 - rho**2) * noise[t]
    return noise


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args(argv)
    n_trs, n_voxels, n_runs = (200, 10_000, 2) if args.quick else (600, 40_000, 4)

    import pyarrow.parquet as pq

    from wav2brain.data.hf_layout import (
        RESPONSES,
        DatasetSummary,
        response_table,
        table_files,
        write_shard,
    )

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_s = 0.0
        for index in range(n_runs):
            bold = ar1(rng, n_trs, n_voxels)
            meta = dict(
                subject=f"{index:03d}",
                session=None,
                task="story",
                run="1",
                stimulus_id="story",
                onset=0.0,
                tr=1.5,
                space="MNI152NLin2009cAsym",
            )
            table = response_table(meta, bold, np.zeros(0, np.int64))
            start = time.perf_counter()
            write_shard(table, out / RESPONSES / f"sub-{index:03d}.parquet")
            write_s += time.perf_counter() - start
        shards = sorted((out / RESPONSES).glob("*.parquet"))
        total = sum(p.stat().st_size for p in shards)
        table_files(out, DatasetSummary())  # warm the page cache, as after prepare's writes
        start = time.perf_counter()
        table_files(out, DatasetSummary())
        fingerprint_s = time.perf_counter() - start
        start = time.perf_counter()
        for path in shards:
            pq.read_metadata(path)
        footers_s = time.perf_counter() - start
    result = {
        "benchmark": "fingerprint",
        "quick": args.quick,
        "data": "SIMULATED AR(1) BOLD",
        "runs": n_runs,
        "n_trs": n_trs,
        "n_voxels": n_voxels,
        "shard_bytes": total,
        "write_shards_s": round(write_s, 4),
        "fingerprint_s": round(fingerprint_s, 4),
        "fingerprint_mb_per_s": round(total / 1e6 / fingerprint_s, 1),
        "fingerprint_over_write": round(fingerprint_s / write_s, 4),
        "read_footers_s": round(footers_s, 4),
        "machine": platform.platform(),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "fingerprint-quick.json" if args.quick else "fingerprint.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
