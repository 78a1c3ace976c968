"""Training costs of the refinement recipe on the wav2vec2-base architecture (random weights).

Three figures, one run, same 9-s windows (16 kHz) and batch:

1. ``e2e_ratio``: end-to-end training steps per second (forward, backward, AdamW step; feature
   encoder frozen, as in stage 2) of ``Wav2Vec2ForBrainEncoding`` over
   ``Wav2Vec2ForSequenceClassification(use_weighted_layer_sum=True)``, the transformers peer with
   the same backbone and layer weights. Target >= 0.9.
2. ``cached_speedup``: stage 1 steps per second from cached pooled states
   (``forward(pooled_hidden_states=...)``) over end-to-end stage 1 (backbone frozen, run every
   step). Target >= 20.
3. ``lora_memory_ratio``: trainable parameters plus AdamW state (bytes, after one optimiser step)
   of full stage 2 over LoRA stage 2 (rank 8 on q/k/v/out projections). Target >= 10.

The two end-to-end models alternate (order swapped every repeat); each figure is a median over
repeats, and the load average is recorded. Prints one JSON object and writes it to
``benchmarks/results/train.json`` (``train-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig:
    """Sizes of one benchmark run."""

    batch: int = 4
    seconds: float = 9.0  # audio per example (s)
    sampling_rate: int = 16000  # Hz
    num_voxels: int = 5085  # voxels (auditory cortex in the refinement paper)
    lora_rank: int = 8
    warmup: int = 1
    repeats: int = 5
    cached_repeats: int = 50


QUICK = BenchConfig(batch=2, repeats=2, cached_repeats=20)


def _step(model, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def _state_bytes(model, optimizer) -> int:
    """Trainable parameters plus optimiser state (bytes), after one step with zero gradients."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    return state + sum(p.numel() * p.element_size() for p in params)


def run(config: BenchConfig) -> dict:
    """Measure the three figures; return the result record."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding
    from wav2brain.training.lora import add_lora

    torch.manual_seed(0)
    base = dict(layerdrop=0.0, mask_time_prob=0.0)
    samples = int(config.seconds * config.sampling_rate)
    audio = torch.randn(config.batch, samples)
    brain = Wav2Vec2ForBrainEncoding(
        Wav2Vec2BrainEncodingConfig(num_voxels=config.num_voxels, **base)
    ).train()
    peer = Wav2Vec2ForSequenceClassification(
        Wav2Vec2Config(use_weighted_layer_sum=True, num_labels=2, **base)
    ).train()
    peer.load_state_dict(brain.wav2vec2.state_dict(), strict=False)
    for model in (brain, peer):
        model.freeze_feature_encoder()
    brain_batch = {"input_values": audio, "labels": torch.randn(config.batch, config.num_voxels)}
    peer_batch = {"input_values": audio, "labels": torch.randint(0, 2, (config.batch,))}
    optimizers = {
        "brain": torch.optim.AdamW([p for p in brain.parameters() if p.requires_grad], lr=1e-5),
        "peer": torch.optim.AdamW([p for p in peer.parameters() if p.requires_grad], lr=1e-5),
    }
    runs = {"brain": (brain, brain_batch), "peer": (peer, peer_batch)}
    times: dict[str, list[float]] = {"brain": [], "peer": []}
    for name, (model, batch) in runs.items():
        for _ in range(config.warmup):
            _step(model, optimizers[name], batch)
    for repeat in range(config.repeats):
        order = ["brain", "peer"] if repeat % 2 == 0 else ["peer", "brain"]
        for name in order:
            model, batch = runs[name]
            times[name].append(_timed(_step, model, optimizers[name], batch))
    e2e = {name: statistics.median(values) for name, values in times.items()}
    del peer, optimizers

    # stage 1: backbone frozen; end-to-end (backbone run each step) vs cached pooled states
    brain.freeze_backbone()
    head_params = [p for p in brain.parameters() if p.requires_grad]
    stage1_optimizer = torch.optim.AdamW(head_params, lr=1e-3)
    with torch.no_grad():
        outputs = brain.wav2vec2(audio, output_hidden_states=True)
        lengths = torch.full((config.batch,), samples)
        pooled, valid = brain.pool_hidden_states(outputs.hidden_states, lengths)
    cached_batch = {
        "pooled_hidden_states": pooled.transpose(0, 1).contiguous(),
        "valid_bins": valid,
        "labels": brain_batch["labels"],
    }
    _step(brain, stage1_optimizer, brain_batch)
    stage1_e2e = statistics.median(
        _timed(_step, brain, stage1_optimizer, brain_batch) for _ in range(config.repeats)
    )
    _step(brain, stage1_optimizer, cached_batch)
    stage1_cached = statistics.median(
        _timed(_step, brain, stage1_optimizer, cached_batch) for _ in range(config.cached_repeats)
    )

    # stage 2 memory: full transformer vs LoRA (head and layer weights trained in both)
    brain.unfreeze_backbone()
    full_bytes = _state_bytes(
        brain, torch.optim.AdamW([p for p in brain.parameters() if p.requires_grad])
    )
    add_lora(
        brain,
        rank=config.lora_rank,
        alpha=2.0 * config.lora_rank,
        dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    )
    lora_bytes = _state_bytes(
        brain, torch.optim.AdamW([p for p in brain.parameters() if p.requires_grad])
    )
    return {
        "config": asdict(config),
        "threads": torch.get_num_threads(),
        "brain_step_s": e2e["brain"],
        "peer_step_s": e2e["peer"],
        "e2e_ratio": e2e["peer"] / e2e["brain"],
        "stage1_e2e_step_s": stage1_e2e,
        "stage1_cached_step_s": stage1_cached,
        "cached_speedup": stage1_e2e / stage1_cached,
        "full_trainable_plus_adam_bytes": full_bytes,
        "lora_trainable_plus_adam_bytes": lora_bytes,
        "lora_memory_ratio": full_bytes / lora_bytes,
        "targets": {"e2e_ratio": 0.9, "cached_speedup": 20.0, "lora_memory_ratio": 10.0},
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    """Run the benchmark and write its JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, fewer repeats")
    args = parser.parse_args()
    result = run(QUICK if args.quick else BenchConfig())
    RESULTS.mkdir(exist_ok=True)
    name = "train-quick.json" if args.quick else "train.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
