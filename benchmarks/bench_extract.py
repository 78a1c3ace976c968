"""Streamed extraction of all hidden states against a plain windowed ``Wav2Vec2Model`` forward.

Model: the wav2vec2-base architecture (``Wav2Vec2Config()`` defaults, so ``feat_extract_norm="group"``,
with ``layerdrop=0`` and ``mask_time_prob=0``), random weights, float32, CPU. Stimulus: noise with a
slow loudness modulation (timing does not depend on content). All 13 hidden states (layer 0 = the
transformer input, then 12 layers) on both sides.

- Throughput (audio seconds per second) on a 10-minute stimulus: ``iter_activations`` with its
  default chunking (20-s cores, 2.5 s of context each side) against the peer,
  ``Wav2Vec2Model(..., output_hidden_states=True)`` over consecutive 9-s windows in batches of 4
  (no context). Both consume each block the same way (a float64 sum per layer, nothing kept). The
  two are interleaved, whichever is behind in the audio advancing next, so load from other
  processes on a shared machine hits both alike; wall and process-CPU seconds are summed per side.
  ``ratio`` = peer time / extractor time (target >= 0.9). ``no_context`` repeats this with 9-s
  cores and no context, the peer's own computation, to isolate the cost of the streaming machinery
  from the cost of context.
- ``approximation_random_weights``: distance from one pass over a 1-minute clip, for the peer's 9-s
  windows and the extractor at 2.5 and 5 s of context (simulated: random weights).
- Peak memory of the extractor for 2, 10 and 30 minutes, each in a fresh subprocess:
  ``ru_maxrss`` after extraction minus the resident size just before it (model and audio loaded),
  i.e. the extractor's working memory, which should not grow with length. The allocator's heap
  settles over the first few batches, so the shortest run reads lower; ``working_mb_growth_last_step``
  compares the two longest.

``--quick`` uses 45 s for throughput, 30 s for the rest, and 0.5/1/1.5 minutes for memory with
5-s cores, 1.25-s context and batches of 2 (so that those lengths already exceed one batch).
Prints one JSON object and writes ``benchmarks/results/extract.json`` (``extract-quick.json`` with
``--quick``). Usage: ``python benchmarks/bench_extract.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SR = 16_000  # Hz


@dataclass
class BenchConfig:
    """Sizes of one benchmark run (durations in minutes of audio)."""

    throughput_minutes: float = 10.0
    no_context_minutes: float = 2.0
    approximation_minutes: float = 1.0
    memory_minutes: tuple[float, ...] = (2.0, 10.0, 30.0)
    memory_extraction: dict = field(default_factory=dict)
    peer_window_seconds: float = 9.0
    peer_batch: int = 4


QUICK = BenchConfig(
    throughput_minutes=0.75,
    no_context_minutes=0.5,
    approximation_minutes=0.5,
    memory_minutes=(0.5, 1.0, 1.5),
    memory_extraction={"chunk_seconds": 5.0, "context_seconds": 1.25, "batch_size": 2},
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
    """What both sides do with each block: a float64 sum per layer (nothing is kept)."""
    return sum(float(value.double().sum()) for value in activations)


def peer_batches(model, audio, config: BenchConfig):
    """Plain forward over consecutive 9-s windows, 4 per batch; yields audio seconds done."""
    import torch

    window = int(config.peer_window_seconds * SR)
    wave = torch.from_numpy(audio)
    starts = list(range(0, len(audio) - 400 + 1, window))
    for i in range(0, len(starts), config.peer_batch):
        group = [wave[s : s + window] for s in starts[i : i + config.peer_batch]]
        with torch.inference_mode():
            for length in sorted({len(g) for g in group}):
                batch = torch.stack([g for g in group if len(g) == length])
                consume(model(batch, output_hidden_states=True).hidden_states)
        yield min(len(audio), starts[i] + config.peer_batch * window) / SR


def extractor_batches(model, audio, extraction):
    """Streamed extraction, one block at a time; yields audio seconds done."""
    from wav2brain.features import iter_activations

    for chunk in iter_activations(model, audio, extraction):
        consume(chunk.activations.values())
        yield chunk.stop_frame * 320 / SR


def interleaved(model, audio, config: BenchConfig, extraction) -> dict:
    """Time both sides on the same audio, advancing whichever is behind.

    The two alternate every few tens of seconds of audio, so load from other processes on a
    shared machine hits both alike. Wall and process CPU seconds are summed per side.
    """
    sides = {
        "extractor": extractor_batches(model, audio, extraction),
        "peer": peer_batches(model, audio, config),
    }
    done = dict.fromkeys(sides, 0.0)
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)
    while sides:
        name = min(sides, key=lambda side: done[side])
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            done[name] = next(sides[name])
        except StopIteration:
            del sides[name]
        wall[name] += time.perf_counter() - start
        cpu[name] += time.process_time() - start_cpu
    seconds = len(audio) / SR
    return {
        "audio_seconds": seconds,
        "extractor_s": wall["extractor"],
        "peer_s": wall["peer"],
        "extractor_audio_s_per_s": seconds / wall["extractor"],
        "peer_audio_s_per_s": seconds / wall["peer"],
        "ratio": wall["peer"] / wall["extractor"],
        "cpu_ratio": cpu["peer"] / cpu["extractor"],
    }


def throughput(config: BenchConfig) -> dict:
    """Default chunking, and 9-s cores without context (the streaming machinery alone)."""
    model = make_model()
    no_context = extraction_config(chunk_seconds=config.peer_window_seconds, context_seconds=0.0)
    return {
        **interleaved(model, make_audio(config.throughput_minutes), config, extraction_config()),
        "no_context": {
            "extraction": asdict(no_context),
            **interleaved(model, make_audio(config.no_context_minutes), config, no_context),
        },
    }


def approximation(config: BenchConfig) -> dict:
    """Distance of chunked outputs from one pass over a short clip (random weights: simulated).

    Random-weight attention is close to uniform, the worst case for any chunking, so the numbers
    compare chunkings with each other; they do not predict a trained model's error.
    """
    import numpy as np
    import torch

    from wav2brain.features import extract_activations

    model = make_model()
    audio = make_audio(config.approximation_minutes)
    with torch.inference_mode():
        whole = model(torch.from_numpy(audio)[None], output_hidden_states=True).hidden_states
    whole = np.concatenate([h[0].numpy() for h in whole], axis=1)
    scale = float(np.abs(whole).mean())

    def error(stitched: np.ndarray, rows: np.ndarray) -> dict:
        diff = np.abs(stitched - whole[rows])
        return {"max_abs": float(diff.max()), "mean_abs_over_mean_abs": float(diff.mean() / scale)}

    window = int(config.peer_window_seconds * SR)  # a multiple of the 320-sample stride
    peer, rows = [], []
    with torch.inference_mode():
        for start in range(0, len(audio) - 400 + 1, window):
            out = model(
                torch.from_numpy(audio[start : start + window])[None], output_hidden_states=True
            )
            peer.append(np.concatenate([h[0].numpy() for h in out.hidden_states], axis=1))
            rows.append(start // 320 + np.arange(len(peer[-1])))
    every = np.arange(len(whole))
    record = {
        "minutes": config.approximation_minutes,
        "peer_9s_windows": error(np.concatenate(peer), np.concatenate(rows)),
    }
    for context in (2.5, 5.0):
        stitched = extract_activations(model, audio, extraction_config(context_seconds=context))
        record[f"extractor_context_{context}s"] = error(
            np.concatenate(list(stitched.values()), 1), every
        )
    return record


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
    for _ in extractor_batches(model, audio, extraction_config(**overrides)):
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
    records = []
    for minutes in config.memory_minutes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
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
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        print(json.dumps(memory_child(**json.loads(args.memory_child))))
        return
    import torch

    config = QUICK if args.quick else BenchConfig()
    records = memory(config)
    working = [r["working_mb"] for r in records]
    result = {
        "benchmark": "extract",
        "quick": args.quick,
        "config": asdict(config),
        "extraction": asdict(extraction_config()),
        "threads": torch.get_num_threads(),
        **throughput(config),
        "approximation_random_weights": approximation(config),
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
