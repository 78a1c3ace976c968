"""Size of the voxel readout at whole-brain scale: full per-subject readout against ``readout_rank``.

The default conv head (wav2vec2-base width, 256 channels, 6 TRs of history, kernel 3) gives 1,024
features per example; the full readout maps them to every voxel of every subject
(``Linear(1024, V)`` per subject), the low-rank readout through a shared
``Linear(1024, rank)`` then ``Linear(rank, V)`` per subject. Counts at 100,000 voxels come from
the real head module built on PyTorch's ``meta`` device (exact shapes, no memory); Adam's state is
``exp_avg`` + ``exp_avg_sq`` (the parameter's dtype and shape each) plus one ``step`` scalar per
parameter tensor; ``training_mb`` adds the weights and their gradients (float32). The count is
validated against a real allocation: at ``validate_voxels`` a head is built, one Adam step taken,
and the bytes of ``optimizer.state`` summed; the run fails if they differ from the count. No
timings: this measures memory, exactly (a shared machine's step times say little). Prints one JSON object and writes ``benchmarks/results/readout.json``
(``readout-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from bench_model import write_result


@dataclass
class BenchConfig:
    """Sizes of one benchmark run."""

    voxels: int = 100_000  # whole-brain voxel count the counts are given at
    subjects: tuple[int, ...] = (1, 8)  # subjects sharing the body (one readout each)
    ranks: tuple[int, ...] = (64, 256, 512)  # readout_rank values compared with the full readout
    validate_voxels: int = 20_000  # real allocation at this size
    batch: int = 8  # examples in the step that allocates the optimiser state


QUICK = BenchConfig(validate_voxels=5_000)


def head_config(voxels: int, subjects: int, rank: int | None):
    """Default brain-encoding config (base width) with ``subjects`` heads of ``voxels`` each."""
    from wav2brain import Wav2Vec2BrainEncodingConfig

    sizes = {f"sub-{i:02d}": voxels for i in range(subjects)}
    return Wav2Vec2BrainEncodingConfig(subject_voxels=sizes, readout_rank=rank)


def readout_parameters(head) -> list:
    """The readout's parameters: everything in the head but its shared body."""
    return [p for name, p in head.named_parameters() if not name.startswith("body.")]


def adam_state_bytes(parameters) -> int:
    """Bytes of ``torch.optim.Adam`` state for ``parameters`` (two moments and a step each)."""
    return sum(2 * p.numel() * p.element_size() + 4 for p in parameters)


def counted(voxels: int, subjects: int, rank: int | None) -> dict:
    """Exact parameter and optimiser-state sizes of the readout, from a head on the meta device."""
    import torch

    from wav2brain.modeling.heads import BrainEncodingHead

    with torch.device("meta"):
        head = BrainEncodingHead(head_config(voxels, subjects, rank))
    readout = readout_parameters(head)
    params = sum(p.numel() for p in readout)
    return {
        "readout_rank": rank,
        "subjects": subjects,
        "readout_params": params,
        "readout_weights_mb": round(sum(p.numel() * p.element_size() for p in readout) / 1e6, 1),
        "adam_state_mb": round(adam_state_bytes(readout) / 1e6, 1),
        "training_mb": round((2 * params * 4 + adam_state_bytes(readout)) / 1e6, 1),
    }


def measured(voxels: int, rank: int | None, batch: int) -> dict:
    """Real Adam state bytes of a one-subject readout of ``voxels`` after one training step."""
    import torch

    from wav2brain.modeling.heads import BrainEncodingHead

    torch.manual_seed(0)
    config = head_config(voxels, 1, rank)
    head = BrainEncodingHead(config)
    readout = readout_parameters(head)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
    pooled = torch.randn(batch, config.history_trs, config.hidden_size)
    valid = torch.ones(batch, config.history_trs, dtype=torch.bool)
    subjects = torch.zeros(batch, dtype=torch.long)
    target = torch.randn(batch, voxels)

    loss = ((head(pooled, valid, subjects) - target) ** 2).mean()
    loss.backward()
    optimizer.step()  # allocates the state
    state = sum(
        value.numel() * value.element_size()
        for p in readout
        for value in optimizer.state[p].values()
        if isinstance(value, torch.Tensor)
    )
    expected = adam_state_bytes(readout)
    if state != expected:
        raise AssertionError(f"Adam state is {state} bytes, counted {expected} (rank {rank})")
    return {
        "readout_rank": rank,
        "voxels": voxels,
        "adam_state_bytes_measured": state,
        "adam_state_bytes_counted": expected,
    }


def run(config: BenchConfig) -> dict:
    """Count every variant at ``voxels``; validate the counts at ``validate_voxels``."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    with torch.device("meta"):
        backbone = Wav2Vec2Model(Wav2Vec2Config())
    variants = (None, *config.ranks)
    counts = [counted(config.voxels, s, rank) for s in config.subjects for rank in variants]
    checks = [measured(config.validate_voxels, r, config.batch) for r in variants]
    full = {c["subjects"]: c for c in counts if c["readout_rank"] is None}
    for entry in counts:
        entry["params_vs_full"] = round(
            entry["readout_params"] / full[entry["subjects"]]["readout_params"], 4
        )
    return {
        "benchmark": "readout",
        "voxels": config.voxels,
        "head_features": head_config(1, 1, None).head_features,
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "counts": counts,
        "validation": checks,
        "torch_threads": torch.get_num_threads(),
        "config": asdict(config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="validate at 5,000 voxels (< 20 s)")
    args = parser.parse_args()
    record = run(QUICK if args.quick else BenchConfig())
    record["mode"] = "quick" if args.quick else "full"
    write_result(record, "readout-quick" if args.quick else "readout")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
