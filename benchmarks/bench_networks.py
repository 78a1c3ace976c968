"""Functional networks (CanICA) over several subjects: peak memory and time next to plain nilearn.

Ours: :func:`wav2brain.anchoring.networks.functional_networks`, which hands nilearn the subjects
lazily (one subject's 4-D volume allocated at a time) and then computes every run's network time
courses. Peer: what a nilearn user writes, ``CanICA(...).fit([4-D image of each subject])`` with
all subjects' images in memory (the same z-scored data, the same settings), then
``transform``. Both read the runs from disk-backed arrays (``numpy.memmap``, as the prepared
dataset's Parquet runs are), so neither holds the input BOLD beforehand.

Data (SIMULATED): nilearn's MNI152 brain mask resampled to ``--voxel-mm`` (default 6 mm: about
8,600 brain voxels), ``--subjects`` subjects of ``--runs`` runs of ``--trs`` TRs: three planted
networks (spheres at Heschl's gyri, the posterior cingulate and the occipital pole) with random
time courses plus Gaussian noise. Each mode runs in a fresh subprocess; peak memory is the peak
RSS (``VmHWM``, reset just before the call) above the RSS before it. Also printed: the estimate of
:func:`~wav2brain.anchoring.networks.estimate_memory`, the naive size (all subjects' 4-D images)
and the largest difference between the two decompositions' maps (the same data and seeds: 0 up to
float rounding). Prints one JSON object and writes ``benchmarks/results/networks[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _mask(voxel_mm: float):
    from nilearn import datasets
    from nilearn.image import resample_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resample_img(
            datasets.load_mni152_brain_mask(resolution=2),
            target_affine=np.diag([voxel_mm] * 3),
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )


def _write_runs(folder: Path, args) -> None:
    mask = _mask(args.voxel_mm)
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    xyz = ijk @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    centres = [(-46, -20, 8), (48, -20, 8), (0, -52, 26), (0, -90, 0)]
    spheres = [np.linalg.norm(xyz - c, axis=1) <= 12 for c in centres]
    planted = np.stack([spheres[0] | spheres[1], spheres[2], spheres[3]]).astype(np.float32)
    rng = np.random.default_rng(0)
    for s in range(args.subjects):
        for r in range(args.runs):
            out = np.lib.format.open_memmap(
                folder / f"sub{s}_run{r}.npy", "w+", np.float32, (args.trs, len(xyz))
            )
            courses = rng.standard_normal((args.trs, 3)).astype(np.float32)
            out[:] = 2 * courses @ planted + rng.standard_normal(out.shape, dtype=np.float32)
            out.flush()
            del out


def _runs(folder: Path, args) -> dict:
    return {
        f"{s:02d}": [
            np.load(folder / f"sub{s}_run{r}.npy", mmap_mode="r") for r in range(args.runs)
        ]
        for s in range(args.subjects)
    }


def _child(args) -> None:
    import nibabel as nib
    import nilearn.decomposition  # noqa: F401 (imported before the measurement)

    from wav2brain.anchoring import networks as nets

    folder = Path(args.data)
    mask = _mask(args.voxel_mm)
    runs = _runs(folder, args)
    config = nets.NetworkConfig(n_components=args.components, n_init=args.n_init)
    warnings.simplefilter("ignore")
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    if args.mode == "ours":
        networks, courses = nets.functional_networks(runs, mask, config, space="native")
        maps = networks.maps()
    else:
        inside = np.asarray(mask.dataobj) > 0
        images = []
        for own in runs.values():
            bold = np.concatenate([nets._zscore(run) for run in own])
            volume = np.zeros((*inside.shape, bold.shape[0]), dtype=np.float32)
            volume[inside] = bold.T
            images.append(nib.Nifti1Image(volume, mask.affine))
        estimator = config.estimator(mask).fit(images)
        courses = estimator.transform(images)
        maps = nets._spatial_z(estimator.components_).astype(np.float32)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    np.save(folder / f"maps_{args.mode}.npy", maps)
    print(json.dumps({"seconds": seconds, "peak_mb": peak / 1e6, "n_courses": len(courses)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 subjects, 50 TRs, 8 mm, 5 networks")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--trs", type=int, default=100)
    parser.add_argument("--voxel-mm", type=float, default=6.0)
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--mode", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.subjects, args.trs, args.voxel_mm, args.components, args.n_init = 2, 50, 8.0, 5, 2
    if args.mode:
        _child(args)
        return
    from wav2brain.anchoring.networks import NetworkConfig, estimate_memory

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_runs(folder, args)
        results = {}
        for mode in ("ours", "peer"):
            command = [sys.executable, __file__, *sys.argv[1:], "--mode", mode, "--data", tmp]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
        ours, peer = (np.load(folder / f"maps_{m}.npy") for m in ("ours", "peer"))
        mask = _mask(args.voxel_mm)
        runs = _runs(folder, args)
        n_grid, n_voxels = int(np.prod(mask.shape)), int(np.asarray(mask.dataobj).sum())
        config = NetworkConfig(n_components=args.components, n_init=args.n_init)
        report = {
            "size": {k: v for k, v in vars(args).items() if k not in ("mode", "data", "quick")}
            | {"grid_voxels": n_grid, "brain_voxels": n_voxels},
            "ours": results["ours"],
            "peer_nilearn_list_of_images": results["peer"],
            "memory_ratio": results["ours"]["peak_mb"] / results["peer"]["peak_mb"],
            "time_ratio": results["ours"]["seconds"] / results["peer"]["seconds"],
            "estimate_mb": estimate_memory(runs, n_grid, n_voxels, config) / 1e6,
            "one_subject_4d_mb": 4 * n_grid * args.runs * args.trs / 1e6,
            "all_subjects_4d_mb": 4 * n_grid * args.runs * args.trs * args.subjects / 1e6,
            "max_map_difference": float(np.abs(ours - peer).max()),
            "load_average": os.getloadavg()[0],
        }
    RESULTS.mkdir(exist_ok=True)
    name = "networks-quick.json" if args.quick else "networks.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
