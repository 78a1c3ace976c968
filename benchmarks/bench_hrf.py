"""HRF + TR sampling of frame-rate activations: banded streaming sampler vs ``torch`` ``conv1d``.

Ours: :class:`wav2brain.features.hrf.FrameToTRResampler` fed consecutive blocks of frames (as
``iter_activations`` yields them), so the 50 Hz matrix of the story is never held. Peer:
``torch.nn.functional.conv1d`` over the whole story with the full-rate kernel (1,600 taps of 20 ms
for a 32-s HRF), one group per unit (depthwise), stride of one TR. Both compute the same
convolution: the peer's kernel is the same per-frame HRF (nilearn's Glover kernel integrated over
each 20-ms frame), flipped because ``conv1d`` computes a cross-correlation, with the story padded
on the left by the kernel length. TRs are sampled at ``k * TR`` with the stimulus at onset 0.

Data: a pool of random blocks (larger than the last-level cache) cycled over the story, so neither
side reads from cache more than the other. The peer may run on a slice of the units
(``--peer-units``) and is then scaled linearly to all units; the JSON says so. Both timings are the
best of ``--repeats`` runs, wall-clock and CPU time (``ratio_cpu_time``: on a shared machine the
wall clock also counts time the process waited for a core). Ours runs its block products on one
BLAS thread (see ``wav2brain.features.resample``); ``--threads`` (default 1, so both sides use one
core) sets the peer's torch threads.

``read_input_once_s`` is the time to read the input once (a column sum per block): the input
(3.3 GB at full size) must stream from memory, which bounds any method from below.

Full size (the issue): 90,000 frames (30 min at 50 Hz) × 9,216 units (12 × 768), TR 1.5 s.
``--quick``: 15,000 frames × 1,024 units.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from wav2brain.features.hrf import FrameToTRResampler, HRFKernel
from wav2brain.features.resample import NEGLIGIBLE_WEIGHT, TRGridConfig, run_grid

FRAME_RATE_HZ = 50.0
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    parser.add_argument("--frames", type=int, help="frames (50 Hz) in the story")
    parser.add_argument("--units", type=int, help="units (all layers together)")
    parser.add_argument("--peer-units", type=int, help="units the peer runs on (default: all)")
    parser.add_argument("--tr", type=float, default=1.5, help="repetition time (s)")
    parser.add_argument("--block-frames", type=int, default=1000, help="frames per pushed block")
    parser.add_argument("--pool-blocks", type=int, default=8, help="distinct random blocks")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each side (best kept)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the peer (ours: one)"
    )
    args = parser.parse_args()
    args.frames = args.frames or (15_000 if args.quick else 90_000)
    args.units = args.units or (1_024 if args.quick else 9_216)
    args.peer_units = min(args.peer_units or args.units, args.units)
    return args


def conv_weight(config: TRGridConfig) -> np.ndarray:
    """conv1d taps: entry ``m`` weighs the frame ``K - m`` frames before the TR (K taps).

    These are the frame weights of a TR sampled at 0 for the frames covering ``[-K, 0)`` frame
    periods, i.e. the full-rate HRF kernel already flipped for conv1d's cross-correlation.
    """
    kernel = HRFKernel(config.hrf_model, 1.0 / (FRAME_RATE_HZ * config.oversampling))
    n_taps = math.ceil(kernel.support_s[1] * FRAME_RATE_HZ)
    edges = np.arange(-n_taps, 1, dtype=np.float64) / FRAME_RATE_HZ
    taps = kernel.weights(np.zeros(1), edges)[0]
    taps[np.abs(taps) < NEGLIGIBLE_WEIGHT * np.abs(taps).max()] = 0.0  # no denormals, as ours
    return taps


def run_ours(args, pool, n_trs, config) -> tuple[float, float, np.ndarray]:
    """Time the streaming sampler over the cycled pool; return wall and CPU seconds and rows [n_trs, units]."""
    grid = run_grid(args.tr, 0.0, n_trs)
    resampler = FrameToTRResampler(config, grid, FRAME_RATE_HZ)
    rows = []
    start, cpu = time.perf_counter(), time.process_time()
    for index, first in enumerate(range(0, args.frames, args.block_frames)):
        block = pool[index % len(pool)][: args.frames - first]
        rows.append(resampler.push(first, {"x": block})["x"])
    rows.append(resampler.finish()["x"])
    return time.perf_counter() - start, time.process_time() - cpu, np.concatenate(rows)


def read_floor(args, pool) -> float:
    """Seconds to read the input once (a column sum of every block): a bound for any method."""
    start = time.perf_counter()
    for index, first in enumerate(range(0, args.frames, args.block_frames)):
        pool[index % len(pool)][: args.frames - first].sum(axis=0)
    return time.perf_counter() - start


def run_peer(args, pool, n_trs, taps) -> tuple[float, float, np.ndarray]:
    """Time depthwise conv1d on ``peer_units`` units; return wall, CPU seconds and rows."""
    n_taps, stride = taps.size, round(args.tr * FRAME_RATE_HZ)
    signal = torch.zeros(1, args.peer_units, n_taps + args.frames)
    for index, first in enumerate(range(0, args.frames, args.block_frames)):
        block = pool[index % len(pool)][: args.frames - first, : args.peer_units]
        signal[0, :, n_taps + first : n_taps + first + block.shape[0]] = torch.from_numpy(block.T)
    weight = torch.from_numpy(taps.astype(np.float32))
    weight = weight.expand(args.peer_units, 1, n_taps).contiguous()
    start, cpu = time.perf_counter(), time.process_time()
    out = torch.nn.functional.conv1d(signal, weight, stride=stride, groups=args.peer_units)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu_seconds, out[0, :, :n_trs].T.numpy()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if abs(args.tr * FRAME_RATE_HZ - round(args.tr * FRAME_RATE_HZ)) > 1e-9:
        raise SystemExit(
            f"the conv1d peer needs a TR that is a whole number of frames, got {args.tr}"
        )
    config = TRGridConfig(method="hrf", hrf_model="glover")
    rng = np.random.default_rng(0)
    pool = [
        rng.standard_normal((args.block_frames, args.units), dtype=np.float32)
        for _ in range(args.pool_blocks)
    ]
    n_trs = math.ceil(args.frames / FRAME_RATE_HZ / args.tr)
    taps = conv_weight(config)
    floor_s = min(read_floor(args, pool) for _ in range(args.repeats))
    ours = [run_ours(args, pool, n_trs, config) for _ in range(args.repeats)]
    peer = [run_peer(args, pool, n_trs, taps) for _ in range(args.repeats)]
    ours_s, ours_cpu, rows = min(ours, key=lambda r: r[0])
    peer_s, peer_cpu, reference = min(peer, key=lambda r: r[0])
    units_factor = args.units / args.peer_units
    scale = float(np.abs(reference).max())
    error = float(np.abs(rows[:, : args.peer_units] - reference).max()) / scale
    result = {
        "benchmark": "hrf",
        "quick": args.quick,
        "frames": args.frames,
        "units": args.units,
        "tr_s": args.tr,
        "n_trs": n_trs,
        "kernel_taps": int(taps.size),
        "block_frames": args.block_frames,
        "threads": args.threads,
        "ours": "FrameToTRResampler (banded matmul, streamed blocks)",
        "peer": "torch.nn.functional.conv1d depthwise, full-rate kernel, stride one TR",
        "ours_s": round(ours_s, 4),
        "ours_cpu_s": round(ours_cpu, 4),
        "peer_s": round(peer_s, 4),
        "peer_cpu_s": round(peer_cpu, 4),
        "peer_units": args.peer_units,
        "peer_scaled_linearly": args.peer_units != args.units,
        "peer_all_units_s": round(peer_s * units_factor, 4),
        "ratio": round(peer_s * units_factor / ours_s, 2),
        "ratio_cpu_time": round(peer_cpu * units_factor / ours_cpu, 2),
        "read_input_once_s": round(floor_s, 4),
        "max_error_rel_scale": error,
        "scale": scale,
        "all_ours_s": [round(r[0], 4) for r in ours],
        "all_peer_s": [round(r[0], 4) for r in peer],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "hrf-quick.json" if args.quick else "hrf.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
