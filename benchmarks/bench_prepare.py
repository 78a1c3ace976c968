"""`prepare_dataset` on a SIMULATED dataset: speed, peak memory, and size next to the naive layout.

Ours: :func:`wav2brain.data.prepare.prepare_dataset` (audio once per story, BOLD once per run).
Peer: the naive layout that stores one training example per row, i.e. the 9-s audio window
(6 TRs at TR 1.5 s) and the BOLD of one TR for every (subject, run, TR) that ``BrainWindows``
serves; it is written IN FULL in the same run with the same encodings (FLAC audio, float32 BOLD,
the same Parquet options), so the size ratio is exact, not extrapolated.

Data: :func:`wav2brain.simulation.simulate_dataset` (Narratives layout, simulated BOLD on an MNI
grid), 4 subjects × 2 stories = 8 runs. Sizes are reported for two masks: an auditory ROI of the
``--roi-voxels`` brain voxels nearest the two superior temporal gyri (±58, -22, 8 mm; the ~5,000
auditory voxels of Li et al. 2024), and the whole brain mask of the simulation.

Speed and memory: each setting runs in a fresh subprocess (whole brain mask): 2 runs (1 subject)
and 8 runs (4 subjects). Peak memory is the peak RSS (``VmHWM``, reset after a one-run warm-up that
loads lazy imports and caches) above the RSS just before the timed call, so interpreter and
libraries are excluded; and the peak of pyarrow's memory pool (cumulative, warm-up included). TR-rows per second = stored TRs (over all runs) / wall seconds of ``prepare_dataset``.

Full size: 120-s stories on a 4-mm grid, 5,000-voxel ROI. ``--quick``: 20-s stories on a 6-mm
grid, 2,000-voxel ROI.
Prints one JSON object and writes ``benchmarks/results/prepare[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
AUDITORY_CENTRES_MM = np.array([[-58.0, -22.0, 8.0], [58.0, -22.0, 8.0]])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    parser.add_argument("--story-s", type=float, help="speech per story (s)")
    parser.add_argument("--voxel-mm", type=float, help="voxel size of the simulated grid (mm)")
    parser.add_argument("--roi-voxels", type=int, help="voxels of the auditory ROI")
    parser.add_argument("--workdir", type=Path, help="keep data here (default: a temp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.story_s = args.story_s or (20.0 if args.quick else 120.0)
    args.roi_voxels = args.roi_voxels or (2000 if args.quick else 5000)
    args.voxel_mm = args.voxel_mm or (6.0 if args.quick else 4.0)
    return args


def folder_bytes(folder: Path, pattern: str = "**/*.parquet") -> int:
    """Total size (bytes) of the files matching ``pattern`` under ``folder``."""
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def dataset_bytes(folder: Path) -> int:
    """Size of what a prepared folder ships: shards, mask(s) and card (not the manifest)."""
    return (
        folder_bytes(folder)
        + folder_bytes(folder, "**/*.nii.gz")
        + folder_bytes(folder, "README.md")
    )


def roi_mask(brain_mask: Path, n_voxels: int, out: Path) -> int:
    """Write the ``n_voxels`` brain voxels nearest the auditory centres as a mask; return its size."""
    import nibabel as nib

    img = nib.load(str(brain_mask))
    inside = np.argwhere(np.asarray(img.dataobj) > 0)
    world = nib.affines.apply_affine(img.affine, inside)
    distance = np.min(
        np.linalg.norm(world[:, None, :] - AUDITORY_CENTRES_MM[None], axis=-1), axis=1
    )
    chosen = inside[np.argsort(distance, kind="stable")[:n_voxels]]
    data = np.zeros(img.shape[:3], np.uint8)
    data[tuple(chosen.T)] = 1
    nib.Nifti1Image(data, img.affine).to_filename(str(out))
    return int(data.sum())


def write_naive(prepared: Path, out: Path) -> dict:
    """Write the one-row-per-training-example layout of ``prepared`` (exact, same encodings)."""
    import pyarrow as pa
    from datasets import load_dataset

    from wav2brain.data.hf_layout import encode_audio, write_shard
    from wav2brain.data.windows import BrainWindows

    cache = str(out.parent / "hf-cache")
    stimuli = load_dataset(str(prepared), "stimuli", split="train", cache_dir=cache)
    responses = load_dataset(str(prepared), "responses", split="train", cache_dir=cache)
    windows = BrainWindows(stimuli, responses, subjects=sorted(set(responses["subject"])))
    rows_by_run: dict[int, list[int]] = {}
    for index in range(len(windows)):
        rows_by_run.setdefault(windows.locate(index)[0], []).append(index)
    for row, indices in rows_by_run.items():
        items = [windows[i] for i in indices]
        width = len(items[0]["labels"])
        bold = np.stack([item["labels"] for item in items])
        table = pa.table(
            {
                "subject": [responses[row]["subject"]] * len(items),
                "tr_index": [windows.locate(i)[1] for i in indices],
                "audio": [
                    encode_audio(item["input_values"], f"w{i}")
                    for i, item in zip(indices, items, strict=True)
                ],
                "bold": pa.FixedSizeListArray.from_arrays(pa.array(bold.reshape(-1)), width),
            }
        )
        write_shard(table, out / f"run-{row}.parquet")
    return {"examples": len(windows), "bytes": folder_bytes(out)}


def current_rss_kb() -> int:
    """Resident memory of this process now (kB), from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_kb() -> int:
    """Peak resident memory of this process (kB): ``VmHWM`` of ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` value 5); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child(spec: dict) -> dict:
    """Run one prepare setting in this (fresh) process and measure it.

    A warm-up preparation of one run (another folder) loads every lazy import and cache; the peak
    RSS is then reset, so the peak above the RSS just before the timed call is the memory the
    preparation itself needed.
    """
    import datasets  # noqa: F401
    import h5py  # noqa: F401
    import nibabel  # noqa: F401
    import nilearn.masking  # noqa: F401
    import nilearn.signal  # noqa: F401
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401
    import soundfile  # noqa: F401

    from wav2brain.data import alignments, audio, fmri, masks  # noqa: F401
    from wav2brain.data.prepare import prepare_dataset

    warm = Path(spec["out"] + "-warmup")
    prepare_dataset(
        spec["root"], warm, mask=spec["mask"], subjects=["001"], tasks=["story01"], progress=False
    )
    shutil.rmtree(warm)
    reset = reset_peak_rss()
    baseline_kb = current_rss_kb()
    pool = pa.default_memory_pool()
    pool_warm = pool.max_memory()
    start = time.perf_counter()
    out = prepare_dataset(
        spec["root"], spec["out"], mask=spec["mask"], subjects=spec["subjects"], progress=False
    )
    seconds = time.perf_counter() - start
    peak_kb = peak_rss_kb()
    manifest = json.loads((Path(out) / "wav2brain_prepare.json").read_text())
    runs = list(manifest["runs"].values())
    tr_rows = sum(r["n_trs"] for r in runs)
    run_mb = max(r["n_trs"] * r["n_voxels"] * 4 for r in runs) / 2**20
    return {
        "runs": len(runs),
        "tr_rows": tr_rows,
        "voxels": runs[0]["n_voxels"],
        "seconds": round(seconds, 3),
        "tr_rows_per_s": round(tr_rows / seconds, 1),
        "peak_rss_above_baseline_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "peak_rss_reset_after_warmup": reset,
        "arrow_pool_peak_mb": round(pool.max_memory() / 2**20, 1),
        "arrow_pool_peak_in_warmup_mb": round(pool_warm / 2**20, 1),
        "largest_run_bold_mb": round(run_mb, 1),
    }


def run_child(spec: dict) -> dict:
    """Measure one setting in a fresh interpreter."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    import warnings

    from wav2brain.data.prepare import prepare_dataset
    from wav2brain.simulation import SimulationConfig, simulate_dataset

    warnings.simplefilter("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig(
        n_subjects=4, n_stories=2, story_duration_s=args.story_s, voxel_size_mm=args.voxel_mm
    )
    root = work / "bids"
    if not (root / "dataset_description.json").is_file():
        start = time.perf_counter()
        simulate_dataset(root, config)
        simulate_s = time.perf_counter() - start
    else:
        simulate_s = None
    brain = root / "derivatives" / "ground_truth" / "brain_mask.nii.gz"
    roi = work / "roi_mask.nii.gz"
    roi_voxels = roi_mask(brain, args.roi_voxels, roi)

    memory = {}
    for label, subjects in (("2_runs", ["001"]), ("8_runs", None)):
        out = work / f"speed-{label}"
        shutil.rmtree(out, ignore_errors=True)
        spec = {"root": str(root), "out": str(out), "mask": str(brain), "subjects": subjects}
        memory[label] = run_child(spec)
    sizes = {}
    for label, mask in (("auditory_roi", roi), ("whole_brain", brain)):
        ours = work / f"ours-{label}"
        naive = work / f"naive-{label}"
        for folder in (ours, naive):
            shutil.rmtree(folder, ignore_errors=True)
        prepare_dataset(root, ours, mask=mask, progress=False)
        peer = write_naive(ours, naive)
        manifest = json.loads((ours / "wav2brain_prepare.json").read_text())
        sizes[label] = {
            "voxels": next(iter(manifest["runs"].values()))["n_voxels"],
            "ours_bytes": dataset_bytes(ours),
            "ours_audio_bytes": folder_bytes(ours / "stimuli"),
            "ours_bold_bytes": folder_bytes(ours / "responses"),
            "naive_bytes": peer["bytes"],
            "naive_examples": peer["examples"],
            "size_ratio_naive_over_ours": round(peer["bytes"] / dataset_bytes(ours), 2),
        }
    peak2 = memory["2_runs"]["peak_rss_above_baseline_mb"]
    peak8 = memory["8_runs"]["peak_rss_above_baseline_mb"]
    result = {
        "benchmark": "prepare",
        "data": "SIMULATED (wav2brain.simulation)",
        "quick": args.quick,
        "story_s": args.story_s,
        "voxel_mm": args.voxel_mm,
        "subjects": 4,
        "stories": 2,
        "tr_s": config.tr_s,
        "window_s": 6 * config.tr_s,
        "roi_voxels": roi_voxels,
        "simulate_s": None if simulate_s is None else round(simulate_s, 1),
        "speed_memory_whole_brain": memory,
        "peak_rss_ratio_8_over_2_runs": round(peak8 / peak2, 2) if peak2 else None,
        "sizes": sizes,
        "size_ratio_naive_over_ours": sizes["auditory_roi"]["size_ratio_naive_over_ours"],
        "target": ">= 5x smaller than the naive layout; peak memory independent of run count",
        "naive_layout": "written in full (exact size), FLAC window audio + float32 BOLD per TR",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "prepare-quick.json" if args.quick else "prepare.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
