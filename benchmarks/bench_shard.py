"""Wall time of ``wav2brain extract`` on one process against two (torchrun, gloo, CPU).

Data: the SIMULATED demo-size study (``wav2brain simulate --size demo``: 4 subjects, 3 stories
of 4 min heard twice), prepared inside its brain mask; or ``--dataset`` (a prepared folder) and
``--model``. Model: ``--arch base`` (default) saves the wav2vec2-base architecture with random
weights (``layerdrop=0``, ``mask_time_prob=0``), so that extraction, not start-up, dominates;
``--arch truth`` uses the simulator's tiny planted model. Each side writes a fresh feature cache
with the same command line: ``python -m wav2brain extract ...`` against
:func:`wav2brain.distributed.launch_command` with 2 processes (one thread each, as torchrun
sets them; the one-process side gets one thread too, so the ratio measures the split, not
threading). Sides alternate ``--repeats`` times; the 1-minute load average is sampled before
each. The two caches' tables must be equal (checked).

Speed-up = one-process wall / two-process wall (ideal 2 on two idle cores; each process pays
its own start-up, imports and model load, about 10 s here, which the split does not divide).
Prints one JSON object and writes ``benchmarks/results/shard[-quick].json``. ``--quick``: the
``test`` size and the tiny model (about a minute of work).
Usage: ``python benchmarks/bench_shard.py [--quick] [--repeats N] [--dataset D --model M]``.
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

RESULTS = Path(__file__).resolve().parent / "results"


def _prepare(root: Path, size: str) -> tuple[Path, Path]:
    from wav2brain.cli import main
    from wav2brain.simulation import GROUND_TRUTH_DIR, SimulationConfig, simulate_dataset

    bids = simulate_dataset(root / "bids", SimulationConfig.from_size(size))
    truth = bids / GROUND_TRUTH_DIR
    mask = str(truth / "brain_mask.nii.gz")
    if main(["prepare", str(bids), "--out", str(root / "ds"), "--mask", mask, "--quiet"]):
        raise SystemExit("prepare failed")
    return root / "ds", truth / "model"


def _base_model(root: Path) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    path = root / "base"
    Wav2Vec2Model(Wav2Vec2Config(layerdrop=0.0, mask_time_prob=0.0)).save_pretrained(path)
    return path


def _timed(command: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{command} failed:\n{done.stderr[-4000:]}")
    return seconds


def main(argv=None) -> dict:
    import pandas as pd

    from wav2brain.distributed import launch_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="test size, tiny model")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side")
    parser.add_argument("--arch", choices=("base", "truth"), default="base")
    parser.add_argument("--dataset", type=Path, help="a prepared folder (default: simulate)")
    parser.add_argument("--model", type=Path, help="model folder (with --dataset)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_shard_") as tmp:
        root = Path(tmp)
        if args.dataset is not None:
            if args.model is None:
                parser.error("--dataset needs --model")
            dataset, model = args.dataset, args.model
        else:
            dataset, model = _prepare(root, "test" if args.quick else "demo")
        arch = "given" if args.model else ("truth" if args.quick else args.arch)
        if arch == "base":
            model = _base_model(root)
        outs = {1: root / "f1", 2: root / "f2"}
        argv_of = {n: ["extract", str(dataset), "--model", str(model), "--out", str(out)]
                   for n, out in outs.items()}  # fmt: skip
        walls: dict[int, list[float]] = {1: [], 2: []}
        loads: list[float] = []
        for _ in range(args.repeats):
            for processes in (1, 2):
                loads.append(os.getloadavg()[0])
                command = launch_command(argv_of[processes], processes)
                walls[processes].append(_timed(command, outs[processes]))
        for name in ("index.parquet", "runs.parquet"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(outs[1] / name), pd.read_parquet(outs[2] / name)
            )
        stimuli = pd.read_parquet(outs[1] / "index.parquet")["stimulus_id"].nunique()
    best = {n: min(values) for n, values in walls.items()}
    result = {
        "benchmark": "shard",
        "step": "extract",
        "data": "given" if args.dataset else f"SIMULATED {'test' if args.quick else 'demo'} size",
        "model": arch,
        "stimuli": int(stimuli),
        "wall_s": {str(n): values for n, values in walls.items()},
        "best_wall_s": {str(n): value for n, value in best.items()},
        "speedup_2_processes": best[1] / best[2],
        "tables_equal": True,
        "load_average_1min": loads,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "shard-quick.json" if args.quick else "shard.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
