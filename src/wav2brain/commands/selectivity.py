"""``wav2brain selectivity --dataset DIR --model M --out OUT``: phoneme, phonetic-class and word
selectivity of every artificial neuron, streamed at frame rate over the aligned stimuli.

A thin shell over :func:`wav2brain.anchoring.selectivity.selectivity`: writes ``units.parquet``
(one row per AN: layer, unit, tensor, PSI, best phoneme and phonetic class, word-onset and
word-boundary t), ``phonemes.parquet``, ``classes.parquet``, ``layers.parquet``, ``summary.json``
(where phoneme- and word-level information peak) and heat maps under ``OUT/figures``. A rerun
reuses every stimulus already done (``OUT/partial``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``selectivity`` on the top-level subparsers (imports nothing heavy)."""
    parser = subparsers.add_parser(
        "selectivity",
        help="phoneme / phonetic-class / word selectivity of every unit (frame rate, streamed)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset folder")
    parser.add_argument("--model", required=True, help="local path or Hub id of the model")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--revision", help="model revision")
    parser.add_argument(
        "--tensor",
        default="hidden_states",
        choices=("hidden_states", "attention_output", "ffn_intermediate"),
        help="tensor of each layer (default hidden_states)",
    )
    parser.add_argument("--layers", type=int, nargs="+", help="layers (default: all)")
    parser.add_argument("--stimuli", nargs="+", help="stimulus ids (default: all)")
    parser.add_argument("--alpha", type=float, help="two-sided level (default 0.001)")
    parser.add_argument("--min-tokens", type=int, help="fewest tokens per phoneme/class tested")
    parser.add_argument("--phoneme-window", type=float, help="half-width (s) around a phoneme")
    parser.add_argument("--word-window", type=float, help="half-width (s) around a word edge")
    parser.add_argument("--chunk-seconds", type=float, help="kept core per window (s)")
    parser.add_argument("--context-seconds", type=float, help="context each side of a core (s)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass")
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero-mean, unit-variance audio per stimulus (default: the checkpoint's)",
    )
    parser.add_argument("--device", help="compute device (cpu, cuda, ...)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Validate the settings and the alignments, load the model, run, print the summary."""
    from wav2brain import distributed
    from wav2brain.anchoring.selectivity import (
        SelectivityConfig,
        selectivity,
        stimulus_alignments,
    )
    from wav2brain.features.cache import model_identity
    from wav2brain.features.extract import ExtractionConfig, load_model

    options = {
        "alpha": args.alpha,
        "min_tokens": args.min_tokens,
        "phoneme_window_s": args.phoneme_window,
        "word_window_s": args.word_window,
    }
    config = SelectivityConfig(**{k: v for k, v in options.items() if v is not None})
    chunking = {
        "chunk_seconds": args.chunk_seconds,
        "context_seconds": args.context_seconds,
        "batch_size": args.batch_size,
    }
    extraction = ExtractionConfig(
        tensor=args.tensor,
        layers=tuple(args.layers) if args.layers else None,
        device=args.device,
        normalize=args.normalize,
        **{k: v for k, v in chunking.items() if v is not None},
    )
    stimulus_alignments(args.dataset, args.stimuli)  # refuse missing alignments before the model
    model = load_model(args.model, args.revision)
    extraction = extraction.for_checkpoint(model, args.model, args.revision)
    result = selectivity(
        args.dataset,
        model,
        args.out,
        model_id=model_identity(model, args.model, args.revision),
        config=config,
        extraction=extraction,
        stimuli=args.stimuli,
    )
    if distributed.is_main():
        print(json.dumps({k: v for k, v in result.summary.items() if k != "config"}))
    return 0
