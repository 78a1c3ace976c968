"""Cost of the brain-encoding head on top of the wav2vec2-base backbone (forward, inference).

Peer: a plain ``Wav2Vec2Model`` forward with ``output_hidden_states=True`` on the same batch
(4 x 9 s at 16 kHz), same weights, in the same run. Both architectures use ``Wav2Vec2Config()``
defaults (base size, random weights) with ``layerdrop=0`` and ``mask_time_prob=0``. The two forwards
alternate (order swapped every repeat) so drifts of the machine hit both; each figure is the median
over the repeats (seconds).
Wall-clock time is the headline. On a shared machine the whole-forward difference drowns in noise,
so the run also times what the brain model adds, in isolation: ``pool_trs`` + ``head`` on the
backbone output of the same batch (median of many repeats), and reports
``head_ratio = 1 + head_s / backbone_s``; the load average at the end of the run is recorded.
Prints one JSON object and writes it to ``benchmarks/results/model.json`` (``model-quick.json`` with
``--quick``). Target: ``brain_model_s / backbone_s < 1.05``.
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
    num_voxels: int = 5085  # voxels predicted (auditory cortex in the refinement paper)
    warmup: int = 1
    repeats: int = 7
    head_repeats: int = 50


QUICK = BenchConfig(batch=2, repeats=3, head_repeats=20)


def timed(function, *args) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def run(config: BenchConfig) -> dict:
    """Time both forwards and return the result record."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    torch.manual_seed(0)
    # Wav2Vec2Config() defaults (base size) apart from these two
    backbone_kwargs = {"layerdrop": 0.0, "mask_time_prob": 0.0}
    backbone = Wav2Vec2Model(Wav2Vec2Config(**backbone_kwargs)).eval()
    brain = Wav2Vec2ForBrainEncoding(
        Wav2Vec2BrainEncodingConfig(**backbone_kwargs, num_voxels=config.num_voxels)
    ).eval()
    brain.wav2vec2.load_state_dict(backbone.state_dict())
    samples = int(config.seconds * config.sampling_rate)
    values = torch.randn(config.batch, samples, generator=torch.Generator().manual_seed(1))

    def backbone_forward(x):
        return backbone(x, output_hidden_states=True)

    def brain_forward(x):
        return brain(x)

    forwards = {"backbone": backbone_forward, "brain": brain_forward}
    lengths = torch.full((config.batch,), samples)
    subject_ids = torch.zeros(config.batch, dtype=torch.long)

    def head_forward(outputs):
        return brain.head(*brain.pool_trs(outputs, lengths), subject_ids)

    times: dict[str, list[float]] = {"backbone": [], "brain": [], "head": []}
    with torch.inference_mode():
        for _ in range(config.warmup):
            outputs = backbone_forward(values)
            brain_forward(values)
        for repeat in range(config.repeats):
            order = ("backbone", "brain") if repeat % 2 == 0 else ("brain", "backbone")
            for name in order:
                times[name].append(timed(forwards[name], values))
        for _ in range(config.head_repeats):
            times["head"].append(timed(head_forward, outputs))
    backbone_s, brain_s, head_s = (
        statistics.median(times[k]) for k in ("backbone", "brain", "head")
    )
    return {
        "benchmark": "model",
        "backbone_s": round(backbone_s, 4),
        "brain_model_s": round(brain_s, 4),
        "overhead_ratio": round(brain_s / backbone_s, 4),
        "target": "< 1.05",
        "head_s": round(head_s, 5),
        "head_ratio": round(1.0 + head_s / backbone_s, 4),
        "audio_s_per_s": round(config.batch * config.seconds / brain_s, 2),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": asdict(config),
    }


def write_result(record: dict, name: str) -> Path:
    """Write ``record`` as JSON under ``benchmarks/results`` (temporary name, then rename)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    temporary = path.with_suffix(f".json.tmp{os.getpid()}")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, 3 repeats (< 60 s)")
    args = parser.parse_args()
    record = run(QUICK if args.quick else BenchConfig())
    record["mode"] = "quick" if args.quick else "full"
    write_result(record, "model-quick" if args.quick else "model")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
