"""`encode_dataset` on 4 and on 32 subjects: peak memory stays that of about one subject.

Ours: :func:`wav2brain.encoding.dataset.encode_dataset` (what ``wav2brain encode`` runs), one
subject at a time, cache entries memory-mapped and sliced. Peer: the naive sum, what the encode
before issue 8 held at once: every selected subject's BOLD plus every layer's features of every
run (one copy per run), computed from the sizes (not run: at 32 subjects it would not be
measuring encoding).

Data (SIMULATED, fabricated directly in the prepared layout): ``--stories`` stories of
``--trs`` TRs each heard once by every subject, ``--voxels`` voxels (BOLD: planted features of
``layer_01`` in the first voxels plus noise), a feature cache with ``--layers`` layers of
``--units`` units per story. The 4-subject dataset is the first 4 subjects of the 32-subject one
(its shards linked), so both have the same stories. LOSO noise ceilings over all subjects are
part of the run.

Sizes: by default 3 stories of 300 TRs (real runs are 300-1000+ TRs), 20,000 voxels (the issue's
minimum), 1 layer of 768 units (wav2vec 2.0 base; ridge weights ``[768, voxels]`` would be the size
of 768 TRs of BOLD, and encode must not form them). The first version used 100 TRs and 32 units
(``--trs 100 --units 32 --layers 2 --label small``): there, fixed costs (the ridge budget's
floor, one run's buffer, the LOSO sum of one story) weigh more against the 23 MB of one
subject's BOLD than they do at real sizes, so both are reported. Runs are read page by page
into the subject's array (:func:`wav2brain.data.hf_layout.read_bold`; pyarrow's decoding of a
run's nested cell held about 4x the run) and the LOSO ceiling sums one story in float32 (two
runs' worth with its reused read buffer). One layer, so that 32 subjects
take a few minutes on 2 cores (each layer is fitted and released in turn; the small sizes fit 2).

Each size runs in a fresh subprocess (glibc told to map every block of 1 MB or more on its own
and pyarrow to use it, :data:`MALLOC_ENV`, so that freed arrays leave the RSS): a warm-up encode of 2 subjects (another dataset and output)
loads every lazy import, the peak RSS (``VmHWM``) is reset, then the timed encode runs. Reported:
peak RSS above the RSS before the call, and the absolute peak. Targets: 32-subject peak within
1.25x of the 4-subject peak, and within 2x of one subject's BOLD plus one layer's features.
Prints one JSON object and writes ``benchmarks/results/encode_scale[-LABEL].json`` (``--label``;
``quick`` with ``--quick``), with the load average before and after each size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_prepare import current_rss_kb, peak_rss_kb, reset_peak_rss

RESULTS = Path(__file__).resolve().parent / "results"
TR = 1.5
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "ARROW_DEFAULT_MEMORY_POOL": "system"}
"""glibc: every block of 1 MB or more is its own mapping, returned to the system when freed, and
pyarrow allocates through it too (not mimalloc, which keeps freed pages): RSS then follows the
live arrays instead of what allocators keep after earlier subjects."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    parser.add_argument("--voxels", type=int, help="voxels per run (default 20,000)")
    parser.add_argument("--trs", type=int, help="TRs per story (default 300)")
    parser.add_argument("--stories", type=int, default=3)
    parser.add_argument("--layers", type=int, help="layers (default 1; 2 with --quick)")
    parser.add_argument("--units", type=int, help="units per layer (default 768)")
    parser.add_argument("--label", help="results file suffix (default: none; 'quick' with --quick)")
    parser.add_argument("--sizes", type=int, nargs=2, default=(4, 32))
    parser.add_argument(
        "--ridge-budget-mb",
        type=float,
        help="EncodingConfig.memory_budget_bytes in MB (bound on ridge temporaries; "
        "default: the config's)",
    )
    parser.add_argument("--workdir", type=Path, help="keep data here (default: a temp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.voxels = args.voxels or (4000 if args.quick else 20000)
    args.trs = args.trs or (60 if args.quick else 300)
    args.units = args.units or (32 if args.quick else 768)
    args.layers = args.layers or (2 if args.quick else 1)
    args.label = args.label or ("quick" if args.quick else None)
    return args


def fabricate(root: Path, args: argparse.Namespace) -> Path:
    """The prepared folder (``root/dataset``) and its cache (``root/cache``) of the largest size."""
    import pandas as pd

    from wav2brain.data.hf_layout import response_table, write_shard
    from wav2brain.features.cache import FeatureCache, FeatureKey
    from wav2brain.features.resample import TRGrid, TRGridConfig

    rng = np.random.default_rng(0)
    dataset, cache_dir = root / "dataset", root / "cache"
    (dataset / "responses").mkdir(parents=True)
    (dataset / "README.md").write_text("# bench_encode_scale fixture (SIMULATED)\n")
    cache, rows = FeatureCache(cache_dir), []
    n_driven = min(500, args.voxels // 4)
    weights = rng.standard_normal((args.units, n_driven)).astype(np.float32) / np.sqrt(args.units)
    for s in range(args.stories):
        story = f"story{s:02d}"
        layers = {
            f"layer_{k + 1:02d}": rng.standard_normal((args.trs, args.units)).astype(np.float32)
            for k in range(args.layers)
        }
        key = FeatureKey(
            model={"name": "bench"},
            stimulus_id=story,
            audio_sha256=story,
            extraction={},
            grid_config=TRGridConfig().to_dict(),
            tr_s=TR,
            phase_s=0.0,
            frame_rate_hz=50.0,
        )
        entry = cache.put(key, TRGrid(TR, 0.0, args.trs), layers)
        signal = layers["layer_01"] @ weights
        for subject in range(max(args.sizes)):
            sub = f"{subject + 1:03d}"
            bold = rng.standard_normal((args.trs, args.voxels), dtype=np.float32)
            bold[:, :n_driven] += signal
            meta = dict(subject=sub, session=None, task=story, run=None, stimulus_id=story)
            meta.update(onset=0.0, tr=TR, space="native", mask=None)
            shard = f"sub-{sub}_task-{story}.parquet"
            write_shard(
                response_table(meta, bold, np.array([], int)), dataset / "responses" / shard
            )
            rows.append(
                dict(
                    subject=sub,
                    session=None,
                    task=story,
                    run=None,
                    stimulus_id=story,
                    onset=0.0,
                    tr=TR,
                    n_trs=args.trs,
                    path=str(entry.path.relative_to(cache_dir)),
                    row_offset=0,
                )
            )
    pd.DataFrame(rows).to_parquet(cache_dir / "runs.parquet")
    return root


def subset(root: Path, n_subjects: int, name: str) -> Path:
    """A prepared folder holding the first ``n_subjects`` of ``root/dataset`` (shards linked)."""
    folder = root / name
    (folder / "responses").mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("# subset (SIMULATED)\n")
    wanted = {f"{s + 1:03d}" for s in range(n_subjects)}
    for shard in sorted((root / "dataset" / "responses").iterdir()):
        if shard.name.split("_")[0][4:] in wanted:
            link = folder / "responses" / shard.name
            if not link.exists():
                link.symlink_to(shard)
    return folder


def child(spec: dict) -> dict:
    """Encode one size in this fresh process; measure time and peak RSS above the baseline."""
    import nilearn.signal  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch

    from wav2brain.encoding.dataset import EncodeConfig, encode_dataset
    from wav2brain.encoding.layers import EncodingConfig

    torch.set_num_threads(spec["threads"])
    encoding = EncodingConfig(alphas=(1.0, 100.0, 10000.0), inner_cv=2)
    if spec["budget_bytes"]:
        encoding.memory_budget_bytes = spec["budget_bytes"]
    config = EncodeConfig(encoding=encoding, maps=False)
    root = Path(spec["root"])
    encode_dataset(root / "warmup", root / "cache", root / "out-warmup", config, progress=False)
    reset = reset_peak_rss()
    baseline_kb = current_rss_kb()
    start = time.perf_counter()
    result = encode_dataset(
        root / spec["dataset"], root / "cache", root / spec["out"], config, progress=False
    )
    seconds = time.perf_counter() - start
    peak_kb = peak_rss_kb()
    return {
        "subjects": len(result.fitted) + len(result.reused),
        "fitted": len(result.fitted),
        "seconds": round(seconds, 2),
        "peak_rss_above_baseline_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "peak_rss_reset_after_warmup": reset,
    }


def run_child(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), **MALLOC_ENV}
    output = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    small, large = args.sizes
    with tempfile.TemporaryDirectory() as temporary:
        root = args.workdir or Path(temporary)
        if not (root / "cache" / "runs.parquet").is_file():
            fabricate(root, args)
        subset(root, 2, "warmup")
        names = {small: subset(root, small, f"subjects-{small}").name, large: "dataset"}
        measured = {}
        for size in (small, large):
            for out in (f"out-{size}", "out-warmup"):
                shutil.rmtree(root / out, ignore_errors=True)
            spec = {
                "root": str(root),
                "dataset": names[size],
                "out": f"out-{size}",
                "threads": 2,
                "budget_bytes": int(args.ridge_budget_mb * 2**20) if args.ridge_budget_mb else 0,
            }
            load_before = round(os.getloadavg()[0], 2)
            measured[size] = run_child(spec)
            measured[size]["load_average"] = {
                "before": load_before,
                "after": round(os.getloadavg()[0], 2),
            }
    one_bold_mb = args.stories * args.trs * args.voxels * 4 / 2**20
    one_layer_mb = args.stories * args.trs * args.units * 4 / 2**20
    reference_mb = one_bold_mb + one_layer_mb
    naive = {
        size: round(size * (one_bold_mb + args.layers * one_layer_mb), 1) for size in (small, large)
    }
    above = {size: measured[size]["peak_rss_above_baseline_mb"] for size in (small, large)}
    result = {
        "simulated": True,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": {
            "voxels": args.voxels,
            "stories": args.stories,
            "trs_per_story": args.trs,
            "layers": args.layers,
            "units": args.units,
        },
        "ridge_memory_budget_mb": args.ridge_budget_mb
        or "EncodingConfig default: min(512, max(4, 0.25 x one subject's BOLD))",
        "malloc_env": MALLOC_ENV,
        "one_subject_bold_mb": round(one_bold_mb, 1),
        "one_layer_features_mb": round(one_layer_mb, 2),
        "one_subject_bold_plus_one_layer_mb": round(reference_mb, 1),
        "naive_sum_mb": {str(k): v for k, v in naive.items()},
        "runs": {str(k): v for k, v in measured.items()},
        "ratio_peak_above_baseline_large_to_small": round(
            above[large] / max(above[small], 1e-9), 3
        ),
        "ratio_peak_large_to_small": round(
            measured[large]["peak_rss_mb"] / measured[small]["peak_rss_mb"], 3
        ),
        "ratio_peak_above_baseline_to_one_subject": round(above[large] / reference_mb, 3),
    }
    result["passed"] = bool(
        result["ratio_peak_above_baseline_large_to_small"] <= 1.25
        and result["ratio_peak_above_baseline_to_one_subject"] <= 2.0
    )
    RESULTS.mkdir(exist_ok=True)
    name = f"encode_scale-{args.label}.json" if args.label else "encode_scale.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
