"""Seconds per probing task, and the share spent in feature extraction versus downstream training.

For each architecture (``tiny``: the test suite's hidden-32, 2-layer config; ``base``: the
wav2vec2-base architecture, ``Wav2Vec2Config()`` with ``layerdrop=0`` and ``mask_time_prob=0``;
**random weights**, as no checkpoint is available offline) and each task, one
:func:`wav2brain.probing.probe_task` with the default :class:`~wav2brain.probing.ProbeConfig`
(three seeds, default epochs) on an empty feature cache: ``extraction_s`` (model over every
utterance of the three splits, cache written), ``training_s`` (all seeds), ``total_s``,
``extraction_share`` and ``cpu_s`` (CPU seconds of the process over the same span: with one
thread, about what the task takes on an idle core, whatever the load). The features of a freshly
loaded task are then fetched again from the warm cache (``rerun_extraction_s``: no model work,
only the audio fingerprint and the cache lookup).

Tasks: the offline tasks of ``wav2brain.probing.tasks.make_probe_tasks`` at their default size
(``small`` with ``--quick``) when that module is importable; otherwise tasks fabricated with numpy
(``tests/probe_fixtures.py``: tones, noise tilts) with the same number of rows per split, which the
JSON says (``tasks_source``); their utterances are shorter than spoken ones (0.4–1 s), so
``audio_s`` per task is reported for a per-second reading. Torch runs on ``--threads`` threads
(``ProbeConfig.threads``; default 1: the shared 2-core machine stalls multithreaded LSTMs).

Each task trains its own downstream (:data:`wav2brain.probing.downstream.TASK_DEFAULTS`: PR a
linear CTC head, ASR a BiLSTM, ...); every row records it (``downstream``) and when it was
measured (``measured``).

Usage: ``python benchmarks/bench_probe.py [--quick] [--archs tiny,base] [--tasks ks,pr]
[--threads N]``; writes ``benchmarks/results/probe.json`` (``probe-quick.json`` with ``--quick``;
``-fabricated`` appended for the stand-in tasks), keeping the rows of other architectures and
tasks of an earlier run on the same tasks and threads (a run of ``--tasks pr`` replaces PR's rows
only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = Path(__file__).resolve().parents[1] / "tests"

FABRICATED_ROWS = {
    "default": {
        "ks": {"per_class": {"train": 120, "validation": 30, "test": 60}},
        "sid": {"n_speakers": 40, "sizes": {"train": 6, "validation": 2, "test": 2}},
        "pr": {"sizes": {"train": 200, "validation": 40, "test": 80}},
        "asr": {"sizes": {"train": 200, "validation": 40, "test": 80}},
        "asv": {"speakers": (40, 10, 20), "per_speaker": 6},
    },
    "small": {
        "ks": {"per_class": {"train": 12, "validation": 3, "test": 6}},
        "sid": {"n_speakers": 8, "sizes": {"train": 4, "validation": 2, "test": 2}},
        "pr": {"sizes": {"train": 40, "validation": 10, "test": 20}},
        "asr": {"sizes": {"train": 40, "validation": 10, "test": 20}},
        "asv": {"speakers": (8, 3, 4), "per_speaker": 4},
    },
}
"""Rows of the fabricated stand-ins: the offline tasks' counts (4 tone classes for KS's 12)."""


def make_tasks(root: Path, tasks: list[str], size: str) -> str:
    """Write the tasks under ``root``; return where they came from."""
    if importlib.util.find_spec("wav2brain.probing.tasks") is not None:
        from wav2brain.probing.tasks import make_probe_tasks

        make_probe_tasks(root, tasks, size=size)
        return f"offline espeak-ng tasks (wav2brain.probing.tasks, size {size})"
    sys.path.insert(0, str(TESTS))
    import probe_fixtures

    rows = FABRICATED_ROWS[size]
    for name in tasks:
        if name not in rows:
            raise SystemExit(f"no fabricated stand-in for task {name!r} (have {sorted(rows)})")
        kwargs = dict(rows[name])
        if name == "ks":
            kwargs = {"sizes": kwargs["per_class"]}
        probe_fixtures.MAKERS[name](root, 0, **kwargs)
    return (
        "fabricated numpy tasks (tests/probe_fixtures.py; wav2brain.probing.tasks not importable), "
        f"rows of size {size}"
    )


def save_model(arch: str, folder: Path) -> Path:
    """A random-weight model of ``arch`` saved in ``folder``."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from wav2brain.simulation import tiny_model_kwargs

    torch.manual_seed(0)
    kwargs = tiny_model_kwargs() if arch == "tiny" else {"layerdrop": 0.0, "mask_time_prob": 0.0}
    Wav2Vec2Model(Wav2Vec2Config(**kwargs)).save_pretrained(folder)
    return folder


def audio_seconds(task) -> float:
    """Seconds of audio over the task's three splits."""
    from wav2brain.probing.harness import SPLITS, audio_samples

    return sum(
        audio_samples(cell) / 16_000 for split in SPLITS for cell in task.splits[split]["audio"]
    )


def describe(part) -> str:
    """A one-line description of a downstream configuration, e.g. ``CTC linear, 40 epochs, ...``."""
    from dataclasses import asdict

    fields = asdict(part)
    head = f"CTC {fields.pop('head')}" if "head" in fields else type(part).__name__
    return head + ": " + ", ".join(f"{k} {v}" for k, v in fields.items())


def write(report: dict, args: argparse.Namespace) -> Path:
    """Write ``report``, merged with an earlier run's other architectures on the same tasks."""
    RESULTS.mkdir(exist_ok=True)
    fabricated = "fabricated" in report["tasks_source"]
    name = "probe" + ("-quick" if args.quick else "") + ("-fabricated" if fabricated else "")
    path = RESULTS / f"{name}.json"
    merged = dict(report)
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        same = all(previous.get(k) == report[k] for k in ("tasks_source", "threads"))
        if same:
            merged["architectures"] = {
                arch: {
                    **previous["architectures"].get(arch, {}),
                    **report["architectures"].get(arch, {}),
                }
                for arch in {**previous["architectures"], **report["architectures"]}
            }
    path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small task size")
    parser.add_argument("--archs", default="tiny,base")
    parser.add_argument("--tasks", default="ks,ic,sid,pr,asr,asv")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from wav2brain.probing import ProbeConfig, ProbeFeatureCache, load_task, load_upstream
    from wav2brain.probing.harness import probe_task, task_features

    size = "small" if args.quick else "default"
    work = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    wanted = [t for t in args.tasks.split(",") if t]
    if importlib.util.find_spec("wav2brain.probing.tasks") is None:
        wanted = [t for t in wanted if t in FABRICATED_ROWS[size]]
    source = make_tasks(work / "tasks", wanted, size)
    config = ProbeConfig(threads=args.threads)
    report = {
        "tasks_source": source,
        "size": size,
        "threads": args.threads,
        "seeds": list(config.seeds),
        "weights": "random (no checkpoint offline)",
        "architectures": {},
    }
    for arch in args.archs.split(","):
        upstream = load_upstream(str(save_model(arch, work / arch)))
        cache = ProbeFeatureCache(work / f"cache_{arch}")
        rows = {}
        for name in wanted:
            task = load_task(name, work / "tasks")
            load = os.getloadavg()[0]
            start, cpu = time.perf_counter(), time.process_time()
            result = probe_task(upstream, task, cache, config)
            total, cpu = time.perf_counter() - start, time.process_time() - cpu
            start = time.perf_counter()
            task_features(upstream, load_task(name, work / "tasks"), cache)  # warm: no model work
            rerun = time.perf_counter() - start
            rows[name] = {
                "metric": result.metric,
                "score_mean": result.interval.mean,
                "rows": {s: task.splits[s].num_rows for s in task.splits},
                "audio_s": round(audio_seconds(task), 1),
                "extraction_s": round(result.extraction_seconds, 2),
                "training_s": round(result.train_seconds, 2),
                "total_s": round(total, 2),
                "cpu_s": round(cpu, 2),
                "extraction_share": round(result.extraction_seconds / total, 3),
                "rerun_extraction_s": round(rerun, 2),
                "load_average": round(load, 1),
                "downstream": describe(config.downstream.for_task(task.name, task.type)),
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            print(arch, name, json.dumps(rows[name]), flush=True)
            report["architectures"][arch] = rows
            write(report, args)  # after every task: an interrupted run keeps what it measured
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
