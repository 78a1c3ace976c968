"""Streamed extraction of all hidden states against a plain windowed ``Wav2Vec2Model`` forward.

Model: the wav2vec2-base architecture (``Wav2Vec2Config()`` defaults, so ``feat_extract_norm="group"``,
with ``layerdrop=0`` and ``mask_time_prob=0``), **random weights** (no checkpoint is available
offline), float32, CPU. Stimulus: noise with a slow loudness modulation (timing does not depend on
content). All 13 hidden states (layer 0 = the transformer input, then 12 layers) on every side.

Sides, all timed in one interleaved run:

- the **peer**, ``Wav2Vec2Model(..., output_hidden_states=True)`` over 9-s windows in batches of 4,
  at its usual strides: ``peer_9s_hop_9s`` (consecutive windows, no overlap: the peer's default)
  and ``peer_9s_hop_4.5s`` (50 % overlap, each window keeping its centre 4.5 s, the first and last
  also their outer edge: twice the work, less error);
- the **extractor**, ``iter_activations`` at several ``(chunk_seconds, context_seconds)`` settings
  (``extractor_<chunk>s_<context>s``), the library default among them.

Throughput (audio seconds per second) on one 3-minute stimulus: the sides advance one batch at a time,
whichever is behind in the audio next, so load from other processes on a shared machine hits all
alike; wall and process-CPU seconds are summed per side, and the 1-minute load average
(``os.getloadavg``) is sampled at every step (its mean per side is reported). Every side consumes
its kept rows the same way (a float64 sum per layer, nothing kept). ``ratio`` = time of the peer's
default / time of the side (the target for the extractor's default: >= 0.9 at no more error than
the peer's default, or > 1 at less error).

Approximation (``error``): distance from one pass over the whole of a shorter clip, as
``mean_abs_over_mean_abs`` (mean absolute difference over all 13 layers divided by the single pass's
mean absolute value) and ``max_abs``. Random-weight attention is close to uniform, the worst case
for any chunking, so these compare chunkings with each other; they do not predict a trained
checkpoint's error. (The peer's 9-s windows yield 449 frames for 450 frames of hop, so it misses
one frame in 450; the error is over the frames it has.)

Peak memory of the extractor at its default for 2, 5 and 10 minutes, each in a fresh subprocess:
``ru_maxrss`` after extraction minus the resident size just before it (model and audio loaded),
i.e. the extractor's working memory, which should not grow with length. The allocator's heap
settles over the first few batches, so the shortest run reads lower; ``working_mb_growth_last_step``
compares the two longest.

``--quick`` (about 2 minutes) uses 45 s for throughput, 30 s for the error, and 0.5/1/1.5 minutes
for memory with 5-s cores, 1.25-s context and batches of 2 (so that those lengths already exceed
one batch). Prints one JSON object and writes ``benchmarks/results/extract.json``
(``extract-quick.json`` with ``--quick``). ``--threads 1`` gives steadier ratios on a shared machine
(two threads contending with other jobs spin in their barriers). Usage:
``python benchmarks/bench_extract.py [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16_000  # Hz
STRIDE = 320  # samples per frame of the conv front end


@dataclass
class BenchConfig:
    """Sizes of one benchmark run (durations in minutes of audio, windows in seconds)."""

    throughput_minutes: float = 3.0
    approximation_minutes: float = 1.0
    memory_minutes: tuple[float, ...] = (2.0, 5.0, 10.0)
    memory_extraction: dict = field(default_factory=dict)
    peer_window_seconds: float = 9.0
    peer_hops_seconds: tuple[float, ...] = (9.0, 4.5)
    peer_batch: int = 4
    extractor_settings: tuple[tuple[float, float], ...] = (
        (20.0, 2.5),
        (20.0, 1.0),
        (15.0, 1.0),
        (12.0, 0.75),
        (10.0, 0.5),
        (9.0, 0.0),
    )


QUICK = BenchConfig(
    throughput_minutes=0.75,
    approximation_minutes=0.5,
    memory_minutes=(0.5, 1.0),
    memory_extraction={"chunk_seconds": 5.0, "context_seconds": 1.25, "batch_size": 2},
    extractor_settings=((20.0, 2.5), (20.0, 1.0), (10.0, 0.5)),
)


def make_model():
    """wav2vec2-base architecture, random weights, eval mode."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config(layerdrop=0.0, mask_time_prob=0.0)).eval()


def make_audio(minutes: float):
    """Float32 16 kHz noise with a 0.25 Hz loudness modulation."""
    import numpy as np

    n = int(minutes * 60 * SR)
    rng = np.random.default_rng(0)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 0.25 * np.arange(n) / SR)
    return (0.1 * rng.standard_normal(n) * envelope).astype(np.float32)


def extraction_config(**overrides):
    """All 13 hidden states, default chunking unless overridden."""
    from wav2brain.features import ExtractionConfig

    return ExtractionConfig(layers=tuple(range(13)), **overrides)


def consume(activations) -> float:
    """What every side does with each block: a float64 sum per layer (nothing is kept)."""
    return sum(float(value.double().sum()) for value in activations)


def peer_name(config: BenchConfig, hop: float) -> str:
    return f"peer_{config.peer_window_seconds:g}s_hop_{hop:g}s"


def extractor_name(chunk: float, context: float) -> str:
    return f"extractor_{chunk:g}s_{context:g}s"


def peer_blocks(model, audio, config: BenchConfig, hop_seconds: float) -> Iterator[tuple]:
    """Plain forward over 9-s windows every ``hop_seconds``, 4 per batch.

    Yields ``(first_frame, hidden_states, samples_done)`` per window, ``hidden_states`` being the
    13 layers' kept rows ``[frames, 768]``: with overlap, each window keeps its centre ``hop``
    (the first window also its start, the last its end), so every frame comes from the window in
    which it is most central.
    """
    import torch

    window = int(config.peer_window_seconds * SR)
    hop = int(hop_seconds * SR)
    hop_frames = hop // STRIDE
    window_frames = (window - 400) // STRIDE + 1
    margin = max(0, (window_frames - hop_frames) // 2)
    n_frames = (len(audio) - 400) // STRIDE + 1
    starts = [0]
    while (
        starts[-1] + window < len(audio) and starts[-1] + hop + margin * STRIDE < n_frames * STRIDE
    ):
        starts.append(starts[-1] + hop)
    wave = torch.from_numpy(audio)
    for i in range(0, len(starts), config.peer_batch):
        group = starts[i : i + config.peer_batch]
        for length in sorted({len(wave[s : s + window]) for s in group}, reverse=True):
            same = [s for s in group if len(wave[s : s + window]) == length]
            with torch.inference_mode():
                batch = torch.stack([wave[s : s + length] for s in same])
                hidden = model(batch, output_hidden_states=True).hidden_states
            for row, s in enumerate(same):
                local = (length - 400) // STRIDE + 1
                lo = 0 if s == 0 else margin
                hi = local if s == starts[-1] else min(margin + hop_frames, local)
                kept = [h[row, lo:hi] for h in hidden]
                yield s // STRIDE + lo, kept, min(len(audio), s + window)


def peer_steps(model, audio, config: BenchConfig, hop_seconds: float) -> Iterator[float]:
    """Peer throughput steps: consumes each window's kept rows; yields audio seconds done."""
    for _, kept, done in peer_blocks(model, audio, config, hop_seconds):
        consume(kept)
        yield done / SR


def extractor_steps(model, audio, extraction) -> Iterator[float]:
    """Streamed extraction, one block at a time; yields audio seconds done."""
    from wav2brain.features import iter_activations

    for chunk in iter_activations(model, audio, extraction):
        consume(chunk.activations.values())
        yield chunk.stop_frame * STRIDE / SR


def sides(model, audio, config: BenchConfig) -> dict[str, Iterator[float]]:
    """Every side's step generator, the peer's default first."""
    out = {
        peer_name(config, hop): peer_steps(model, audio, config, hop)
        for hop in config.peer_hops_seconds
    }
    for chunk, context in config.extractor_settings:
        extraction = extraction_config(chunk_seconds=chunk, context_seconds=context)
        out[extractor_name(chunk, context)] = extractor_steps(model, audio, extraction)
    return out


def throughput(config: BenchConfig) -> dict:
    """Time every side on the same audio, advancing whichever is behind (see the module doc)."""
    model = make_model()
    audio = make_audio(config.throughput_minutes)
    running = sides(model, audio, config)
    names = list(running)
    done = dict.fromkeys(names, 0.0)
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    loads: dict[str, list[float]] = {name: [] for name in names}
    load_start = os.getloadavg()
    while running:
        name = min(running, key=lambda side: done[side])
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            done[name] = next(running[name])
        except StopIteration:
            del running[name]
        wall[name] += time.perf_counter() - start
        cpu[name] += time.process_time() - start_cpu
        loads[name].append(os.getloadavg()[0])
    seconds = len(audio) / SR
    reference = names[0]
    return {
        "audio_seconds": seconds,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "sides": {
            name: {
                "seconds": wall[name],
                "audio_s_per_s": seconds / wall[name],
                "ratio": wall[reference] / wall[name],
                "cpu_ratio": cpu[reference] / cpu[name],
                "mean_loadavg_1min": sum(loads[name]) / len(loads[name]),
            }
            for name in names
        },
    }


def approximation(config: BenchConfig) -> dict:
    """Distance of every side's stitched output from one pass over a short clip (random weights)."""
    import numpy as np
    import torch

    from wav2brain.features import extract_activations

    model = make_model()
    audio = make_audio(config.approximation_minutes)
    load_start = os.getloadavg()
    with torch.inference_mode():
        whole = model(torch.from_numpy(audio)[None], output_hidden_states=True).hidden_states
    whole = np.concatenate([h[0].numpy() for h in whole], axis=1)
    scale = float(np.abs(whole).mean())

    def error(stitched: np.ndarray, rows: np.ndarray) -> dict:
        diff = np.abs(stitched - whole[rows])
        return {"max_abs": float(diff.max()), "mean_abs_over_mean_abs": float(diff.mean() / scale)}

    record = {}
    for hop in config.peer_hops_seconds:
        blocks, rows = [], []
        for first, kept, _ in peer_blocks(model, audio, config, hop):
            blocks.append(np.concatenate([h.numpy() for h in kept], axis=1))
            rows.append(first + np.arange(len(blocks[-1])))
        rows = np.concatenate(rows)
        assert len(np.unique(rows)) == len(rows)
        record[peer_name(config, hop)] = {
            **error(np.concatenate(blocks), rows),
            "frames_covered": len(rows) / len(whole),
        }
    for chunk, context in config.extractor_settings:
        extraction = extraction_config(chunk_seconds=chunk, context_seconds=context)
        stitched = extract_activations(model, audio, extraction)
        record[extractor_name(chunk, context)] = {
            **error(np.concatenate(list(stitched.values()), 1), np.arange(len(whole))),
            "frames_covered": 1.0,
        }
    return {
        "minutes": config.approximation_minutes,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "sides": record,
    }


def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(minutes: float, overrides: dict) -> dict:
    """Run in a subprocess: extract ``minutes`` of audio, report memory (MB)."""
    model = make_model()
    audio = make_audio(minutes)
    before = rss_mb()
    start = time.perf_counter()
    for _ in extractor_steps(model, audio, extraction_config(**overrides)):
        pass
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "minutes": minutes,
        "audio_mb": audio.nbytes / 2**20,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "working_mb": peak - before,
        "seconds": elapsed,
    }


def memory(config: BenchConfig) -> list[dict]:
    """Memory records, one fresh subprocess per stimulus length."""
    import torch

    records = []
    for minutes in config.memory_minutes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                f"--threads={torch.get_num_threads()}",
                "--memory-child",
                json.dumps({"minutes": minutes, "overrides": config.memory_extraction}),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        records.append(json.loads(out.stdout))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is steadier when shared"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(**json.loads(args.memory_child))))
        return

    config = QUICK if args.quick else BenchConfig()
    default = extraction_config()
    records = memory(config)  # first: a child's ru_maxrss includes the parent's size at the fork
    speed = throughput(config)
    errors = approximation(config)
    working = [r["working_mb"] for r in records]
    summary = {
        name: {
            "ratio": speed["sides"][name]["ratio"],
            "error": errors["sides"][name]["mean_abs_over_mean_abs"],
            "mean_loadavg_1min": speed["sides"][name]["mean_loadavg_1min"],
        }
        for name in speed["sides"]
    }
    peer = summary[peer_name(config, config.peer_hops_seconds[0])]
    ours = summary.get(extractor_name(default.chunk_seconds, default.context_seconds))
    result = {
        "benchmark": "extract",
        "quick": args.quick,
        "weights": "random (simulated: errors compare chunkings, not a trained checkpoint)",
        "config": asdict(config),
        "extraction_default": asdict(default),
        "threads": torch.get_num_threads(),
        "summary": summary,
        "default_meets_target": None
        if ours is None
        else (ours["ratio"] > 1 and ours["error"] < peer["error"])
        or (ours["ratio"] >= 0.9 and ours["error"] <= peer["error"]),
        "throughput": speed,
        "approximation_random_weights": errors,
        "memory_extraction": asdict(extraction_config(**config.memory_extraction)),
        "memory": records,
        "working_mb_growth_first_to_last": working[-1] / working[0],
        "working_mb_growth_last_step": working[-1] / working[-2],
        "target_ratio": 0.9,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("extract-quick.json" if args.quick else "extract.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
