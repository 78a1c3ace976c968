"""Cost of the selectivity statistics on top of the streamed extraction they ride on.

Ours: :func:`wav2brain.anchoring.selectivity.accumulate` fed by
:func:`wav2brain.features.extract.iter_activations` (phoneme, word-onset and word-end token
windows, per-layer sufficient statistics). Peer: the same ``iter_activations`` pass with nothing
done to its blocks, the least any frame-rate analysis must spend.

Model: the wav2vec2-base architecture (random weights), all 12 layers of ``ffn_intermediate``
(36,864 units); audio: espeak-ng speech of the simulator (SIMULATED), ``--seconds`` long.
Prints one JSON object and writes ``benchmarks/results/selectivity[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from wav2brain.anchoring.selectivity import accumulate
    from wav2brain.features.extract import ExtractionConfig, iter_activations, prepare_audio
    from wav2brain.simulation import SimulationConfig, tiny_model_kwargs
    from wav2brain.simulation.stimuli import make_stimulus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="speech (s)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 20 s (seconds)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds = 20.0 if args.quick else args.seconds
    story = make_stimulus(replace(SimulationConfig(), story_duration_s=seconds), 0, 1)
    torch.manual_seed(0)
    kwargs = tiny_model_kwargs() if args.quick else dict(layerdrop=0.0, mask_time_prob=0.0)
    model = Wav2Vec2Model(Wav2Vec2Config(**kwargs)).eval()
    wave = prepare_audio(story.waveform, story.sampling_rate)
    extraction = ExtractionConfig(tensor="ffn_intermediate")
    phonemes = [vars(t) for t in story.phonemes]
    words = [vars(t) for t in story.words]
    n_frames = (len(wave) - 400) // 320 + 1

    def peer() -> None:
        for chunk in iter_activations(model, wave, extraction):
            chunk.numpy()

    def ours() -> None:
        chunks = ((c.start_frame, c.numpy()) for c in iter_activations(model, wave, extraction))
        accumulate(chunks, phonemes, words, n_frames)

    times = {"peer": [], "ours": []}
    for _ in range(2):
        for name, run in (("peer", peer), ("ours", ours)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    result = {
        "model": "tiny" if args.quick else "wav2vec2-base architecture",
        "audio_s": len(wave) / 16000,
        "phoneme_tokens": len(phonemes),
        "seconds": best,
        "overhead": best["ours"] / best["peer"],
        "threads": args.threads,
        "machine": platform.machine(),
        "simulated": True,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "selectivity-quick.json" if args.quick else "selectivity.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
