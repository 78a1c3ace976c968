"""The probing harness: tasks as Hugging Face datasets, checked, featurised once, probed over seeds.

A task is a dataset with ``train``, ``validation`` and ``test`` splits, an ``audio`` column
(``datasets.Audio``, any rate: resampled to 16 kHz mono) and the target column of its type:

====================  ===========  ==============  =========================================
type                  tasks        target column   metric
====================  ===========  ==============  =========================================
``"utterance"``       ks, ic,      ``label``       accuracy (higher is better)
                      sid, er
``"ctc"``             pr           ``phonemes``    phone error rate (space-separated tokens)
``"ctc"``             asr          ``text``        word error rate (characters as CTC units)
``"verification"``    asv          ``speaker``     equal error rate of the test trials
====================  ===========  ==============  =========================================

:func:`load_task` reads a folder ``DIR/<task>`` (what ``wav2brain make-probe-tasks`` writes, or any
folder ``datasets.load_dataset`` reads, with an optional ``task.json`` giving ``type`` and
``target_column``); :func:`task_from_splits` takes datasets already in memory (SUPERB's corpora
renamed to these columns). Verification needs trial pairs for the test split (``trials.parquet``:
``enrol``, ``test`` row indices, ``target`` bool); its validation trials are all pairs of the
validation split (at most ``VerificationConfig.max_validation_trials``, a fixed subset).

Everything that can be wrong with a task is checked when it is built, before any feature
extraction: splits, columns, empty targets, labels or CTC units at evaluation that training never
saw, trial tables (the rules of :mod:`wav2brain.probing.checks`, which ``make-probe-tasks`` applies
to what it writes); :func:`check_frames` then checks, per upstream, that every CTC utterance has at
least as many frames as its target needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.features.extract import ExtractionConfig, prepare_audio
from wav2brain.probing.checks import (
    SPLITS,
    TRIAL_COLUMNS,
    WORD_DELIMITER,
    check_labels_seen,
    check_splits_present,
    check_trials,
    ctc_units,
    label_strings,
    where,
)
from wav2brain.probing.downstream import DownstreamConfig, VerificationConfig
from wav2brain.probing.features import (
    FbankConfig,
    ProbeFeatureCache,
    SplitFeatures,
    Upstream,
    split_key,
)
from wav2brain.probing.metrics import Interval, confidence_interval

logger = logging.getLogger(__name__)

TASK_TYPES = ("utterance", "ctc", "verification")
KNOWN_TASKS: dict[str, tuple[str, str]] = {
    "ks": ("utterance", "label"),
    "ic": ("utterance", "label"),
    "sid": ("utterance", "label"),
    "er": ("utterance", "label"),
    "pr": ("ctc", "phonemes"),
    "asr": ("ctc", "text"),
    "asv": ("verification", "speaker"),
}
"""Type and target column of the SUPERB task names (used when a folder has no ``task.json``)."""
TASK_FILE = "task.json"
TRIALS_FILE = "trials.parquet"


def _metric(task_type: str, target_column: str) -> str:
    if task_type == "utterance":
        return "accuracy"
    if task_type == "verification":
        return "eer"
    return "per" if target_column == "phonemes" else "wer"


@dataclass
class ProbeTask:
    """A checked probing task.

    Attributes
    ----------
    name, type, target_column, metric
        See the module table.
    splits
        ``{"train", "validation", "test"}`` datasets with ``audio`` as ``Audio(decode=False)``.
    targets
        Per split, the targets as strings (labels, speakers, phoneme strings or lower-case text).
    classes
        Utterance: training labels; verification: training speakers; CTC: the token vocabulary
        (``|`` = word boundary for ASR). Sorted.
    trials
        Verification only: ``{"test": (enrol, test, target), "validation": (...)}`` arrays.
    source
        Folder or description.
    """

    name: str
    type: str
    target_column: str
    metric: str
    splits: dict[str, Any]
    targets: dict[str, list[str]]
    classes: tuple[str, ...]
    trials: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None
    source: str
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    def tokens(self, text: str) -> list[str]:
        """CTC units of a target string (:func:`~wav2brain.probing.checks.ctc_units`)."""
        return ctc_units(text, self.target_column)

    def detokenize(self, units: Sequence[str]) -> str:
        """The string of decoded CTC units (phonemes space-separated, or words)."""
        if self.target_column == "phonemes":
            return " ".join(units)
        return " ".join("".join(units).replace(WORD_DELIMITER, " ").split())

    def fingerprint(self, split: str) -> str:
        """SHA-256 of the split's audio (encoded bytes of every row, in order)."""
        if split not in self._fingerprints:
            digest = hashlib.sha256(f"{self.splits[split].num_rows}".encode())
            for cell in _audio_cells(self.splits[split]):
                digest.update(hashlib.sha256(_audio_bytes(cell)).digest())
            self._fingerprints[split] = digest.hexdigest()
        return self._fingerprints[split]

    def waves(self, split: str) -> Callable[[], Any]:
        """A callable yielding the split's 16 kHz mono waveforms in row order."""

        def generate():
            for cell in _audio_cells(self.splits[split]):
                yield decode(cell)

        return generate


def _audio_cells(dataset) -> Any:
    for batch in dataset.select_columns(["audio"]).iter(batch_size=64):
        yield from batch["audio"]


def _audio_bytes(cell: Mapping[str, Any]) -> bytes:
    data = cell.get("bytes") if isinstance(cell, Mapping) else None
    if data is not None:
        return data
    path = cell.get("path") if isinstance(cell, Mapping) else None
    if not path:
        raise ValueError(f"audio cell holds neither bytes nor a path: {cell!r}")
    return Path(path).read_bytes()


def decode(cell: Mapping[str, Any]) -> np.ndarray:
    """A float32 16 kHz mono waveform from an ``Audio(decode=False)`` cell (soundfile)."""
    import soundfile as sf

    wave, rate = sf.read(io.BytesIO(_audio_bytes(cell)), dtype="float32", always_2d=False)
    return prepare_audio(wave, rate)


def audio_samples(cell: Mapping[str, Any]) -> int:
    """Samples of a cell's audio at 16 kHz, from its header (no decoding)."""
    import soundfile as sf

    info = sf.info(io.BytesIO(_audio_bytes(cell)))
    return int(info.frames * 16_000 // info.samplerate)


def _check_targets(name: str, split: str, column: str, values: list[str | None]) -> None:
    bad = [i for i, v in enumerate(values) if v is None or not str(v).strip()]
    if bad:
        raise ValueError(
            f"{where(name, split)}: column {column!r} is empty in rows {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}"
        )


def _pairs(speakers: Sequence[str], limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of a split as trials (a fixed, seeded subset beyond ``limit``)."""
    first, second = np.triu_indices(len(speakers), k=1)
    if len(first) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(first), limit, replace=False))
        first, second = first[keep], second[keep]
    labels = np.asarray(speakers)
    return first, second, labels[first] == labels[second]


def task_from_splits(
    name: str,
    splits: Mapping[str, Any],
    *,
    task_type: str | None = None,
    target_column: str | None = None,
    trials: Any = None,
    source: str | None = None,
    max_validation_trials: int = VerificationConfig.max_validation_trials,
) -> ProbeTask:
    """Check datasets and build a :class:`ProbeTask` (no audio is decoded).

    Parameters
    ----------
    name
        Task name (``ks``, ``ic``, ``sid``, ``er``, ``pr``, ``asr``, ``asv`` fix ``task_type``
        and ``target_column`` unless given).
    task_type, target_column
        See the module table (``task.json``'s ``type`` and ``target_column``).
    splits
        ``train``, ``validation`` and ``test`` ``datasets.Dataset`` objects (a ``DatasetDict``).
    trials
        Verification: a DataFrame or Parquet path of test trials.
    source
        Folder or description of where the task came from (default "in memory").
    max_validation_trials
        Verification: at most this many validation trials, a fixed subset (default
        ``VerificationConfig.max_validation_trials``).

    Raises
    ------
    ValueError
        Naming the task, split, column, row or label: unknown type, missing split or column, audio
        that is not a ``datasets.Audio`` column, empty targets, evaluation labels or CTC units that
        the training split lacks, bad trials.
    """
    from datasets import Audio

    default_type, default_column = KNOWN_TASKS.get(name, (None, None))
    task_type = task_type or default_type
    column = target_column or default_column
    if task_type not in TASK_TYPES:
        raise ValueError(
            f"{where(name)}: unknown type {task_type!r}; give one of {TASK_TYPES} (in task.json) "
            f"or use a known task name ({', '.join(KNOWN_TASKS)})"
        )
    if not column:
        raise ValueError(f"{where(name)}: no target column given")
    check_splits_present(splits, task=name)
    checked, targets = {}, {}
    for split in SPLITS:
        dataset = splits[split]
        needed = [c for c in ("audio", column) if c not in dataset.column_names]
        if needed:
            raise ValueError(
                f"{where(name, split)}: columns {needed} missing; have {dataset.column_names}"
            )
        if dataset.num_rows == 0:
            raise ValueError(f"{where(name, split)} has no rows")
        if not isinstance(dataset.features["audio"], Audio):
            raise ValueError(
                f"{where(name, split)}: column 'audio' is "
                f"{type(dataset.features['audio']).__name__}, expected datasets.Audio"
            )
        checked[split] = dataset.cast_column("audio", Audio(decode=False))
        targets[split] = label_strings(dataset, column)
        _check_targets(name, split, column, targets[split])
    if task_type == "ctc":
        normalise = str.split if column == "phonemes" else lambda v: v.lower().split()
        targets = {s: [" ".join(normalise(v)) for v in values] for s, values in targets.items()}
    if task_type == "verification":  # evaluation speakers are new by design
        classes = tuple(sorted(set(targets["train"])))
    else:
        classes = check_labels_seen(
            {s: {column: values} for s, values in targets.items()},
            column,
            task=name,
            tokens=(lambda text: ctc_units(text, column)) if task_type == "ctc" else None,
        )
    task = ProbeTask(
        name=name,
        type=task_type,
        target_column=column,
        metric=_metric(task_type, column),
        splits=checked,
        targets=targets,
        classes=classes,
        trials=None,
        source=source or "in memory",
    )
    if task_type == "ctc":
        return task
    if len(classes) < 2:
        raise ValueError(
            f"{where(name)}: the training split's column {column!r} has {len(classes)} distinct "
            "value(s); at least 2 are needed"
        )
    if task_type == "utterance":
        return task
    validation = _pairs(targets["validation"], max_validation_trials)
    if validation[2].all() or not validation[2].any():
        raise ValueError(
            f"{where(name, 'validation')}: needs two speakers, one with two utterances "
            "(its pairs are the validation trials)"
        )
    if trials is None:
        raise FileNotFoundError(
            f"{where(name)} (verification) needs test trials: a {TRIALS_FILE} with columns "
            f"{', '.join(TRIAL_COLUMNS)}"
        )
    if not isinstance(trials, Mapping):
        import pandas as pd

        trials = trials if isinstance(trials, pd.DataFrame) else pd.read_parquet(trials)
    task.trials = {
        "test": check_trials(trials, targets["test"], task=name),
        "validation": validation,
    }
    return task


def load_task(task: str | Path, tasks_dir: str | Path | None = None, **kwargs: Any) -> ProbeTask:
    """Load and check the task folder ``tasks_dir / task`` (or the folder ``task``).

    Reads ``task.json`` when present (``type``, ``target_column``; ``task`` gives the name), the
    splits with ``datasets.load_dataset(folder)`` and, for verification, ``trials.parquet``.
    Keyword arguments go to :func:`task_from_splits`.
    """
    from datasets import load_dataset

    folder = Path(tasks_dir) / str(task) if tasks_dir is not None else Path(task)
    if not folder.is_dir():
        raise FileNotFoundError(f"task folder {folder} does not exist")
    meta: dict[str, Any] = {}
    if (folder / TASK_FILE).is_file():
        try:
            meta = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / TASK_FILE}: not JSON ({error})") from error
    name = str(meta.get("task") or folder.name)
    splits = load_dataset(str(folder))
    trials = folder / TRIALS_FILE
    return task_from_splits(
        name,
        splits,
        task_type=meta.get("type"),
        target_column=meta.get("target_column"),
        trials=trials if trials.is_file() else None,
        source=str(folder),
        **kwargs,
    )


def check_frames(task: ProbeTask, upstream: Upstream) -> None:
    """Refuse CTC utterances with fewer upstream frames than their target needs (from headers).

    CTC needs one frame per unit plus one between repeated units.
    """
    if task.type != "ctc":
        return
    for split in SPLITS:
        for row, (cell, text) in enumerate(
            zip(_audio_cells(task.splits[split]), task.targets[split], strict=True)
        ):
            units = task.tokens(text)
            needed = len(units) + sum(a == b for a, b in zip(units, units[1:], strict=False))
            frames = upstream.n_frames(audio_samples(cell))
            if frames < needed:
                raise ValueError(
                    f"task {task.name!r}, split {split!r}, row {row}: {frames} frames of upstream "
                    f"{upstream.name} for {needed} CTC steps of column {task.target_column!r}; "
                    "the audio is too short for its target"
                )


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probing run depends on besides the upstream and the task.

    Parameters
    ----------
    seeds
        Seeds of the downstream training (initialisation and batch order); the result's interval
        is over them. Three by default: the least that gives an interval.
    confidence
        Level of the intervals (0.95).
    downstream
        :class:`~wav2brain.probing.downstream.DownstreamConfig`.
    extraction
        Chunking and compute settings of transformers upstreams (``None``: the defaults of
        :class:`~wav2brain.features.ExtractionConfig`; utterances shorter than a core run in one
        pass).
    fbank
        :class:`~wav2brain.probing.features.FbankConfig` of the ``fbank`` upstream.
    storage_dtype
        ``"float32"`` or ``"float16"`` (halves the frame cache of large upstreams).
    threads
        Torch intra-op threads for feature extraction and downstream training (restored
        afterwards); ``None`` keeps torch's setting (one per core). The downstreams are small
        models whose operations gain little from threads: on the loaded 2-core development
        machine the BiLSTM trained about 20 times slower on 2 threads than on 1, so pass 1 on a
        shared machine. Not part of result keys (it changes speed, not results beyond float
        rounding).
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    confidence: float = 0.95
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    extraction: ExtractionConfig | None = None
    fbank: FbankConfig = field(default_factory=FbankConfig)
    storage_dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ProbeConfig.seeds must be distinct and non-empty, got {self.seeds}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"ProbeConfig.confidence must be in (0, 1), got {self.confidence}")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(
                f"ProbeConfig.storage_dtype must be float32 or float16, got {self.storage_dtype!r}"
            )
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(
                f"ProbeConfig.threads must be a positive integer or None, got {self.threads!r}"
            )

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))

    def task_key(self, task: ProbeTask) -> dict:
        """What a result on ``task`` depends on, JSON-ready: every field but ``threads``, and of
        the downstream only ``task``'s own configuration (changing ASR's does not redo PR)."""
        record = self.to_dict()
        record.pop("threads")
        downstream = self.downstream
        record["downstream"] = json.loads(
            json.dumps(
                {
                    "task": asdict(downstream.for_task(task.name, task.type)),
                    "standardize": downstream.standardize,
                    "device": downstream.device,
                },
                sort_keys=True,
            )
        )
        return record


@dataclass
class SeedResult:
    """One seed's downstream: test score, learned layer weights, validation score per epoch."""

    seed: int
    score: float
    layer_weights: list[float]
    validation: list[float]
    train_seconds: float


@dataclass
class TaskResult:
    """An upstream on a task: per-seed results, the mean with its interval, timings (s)."""

    task: str
    metric: str
    upstream: str
    seeds: list[SeedResult]
    extraction_seconds: float
    interval: Interval

    @property
    def scores(self) -> list[float]:
        """Test scores, one per seed."""
        return [s.score for s in self.seeds]

    @property
    def train_seconds(self) -> float:
        """Downstream training time over all seeds (s)."""
        return sum(s.train_seconds for s in self.seeds)

    @property
    def layer_weights(self) -> np.ndarray:
        """Mean over seeds of the softmaxed layer weights ``[layers]``."""
        return np.mean([s.layer_weights for s in self.seeds], axis=0)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        record = asdict(self)
        record["interval"] = asdict(self.interval)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TaskResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            task=record["task"],
            metric=record["metric"],
            upstream=record["upstream"],
            seeds=[SeedResult(**s) for s in record["seeds"]],
            extraction_seconds=float(record["extraction_seconds"]),
            interval=Interval(**record["interval"]),
        )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` torch intra-op threads, then restore the count (None: as is)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def task_features(
    upstream: Upstream,
    task: ProbeTask,
    cache: ProbeFeatureCache,
    storage_dtype: str = "float32",
) -> dict[str, SplitFeatures]:
    """The upstream's features of each split of ``task`` (from the cache, computed on a miss)."""
    kind = "frames" if task.type == "ctc" else "pooled"
    features = {}
    for split in SPLITS:
        key = split_key(upstream, task.fingerprint(split), kind, storage_dtype)
        features[split] = cache.get_or_compute(key, upstream, task.waves(split))
    return features


def _train_seed(
    task: ProbeTask, features: dict[str, SplitFeatures], config: DownstreamConfig, seed: int
) -> SeedResult:
    from wav2brain.probing import downstream

    part = config.for_task(task.name, task.type)
    shared = {"standardize": config.standardize, "device": config.device}
    start = time.perf_counter()
    if task.type == "utterance":
        score, weights, history = downstream.train_utterance(
            {s: f.data for s, f in features.items()},
            task.targets,
            task.classes,
            part,
            seed,
            **shared,
        )
    elif task.type == "verification":
        score, weights, history = downstream.train_verification(
            {s: f.data for s, f in features.items()},
            task.targets["train"],
            task.classes,
            task.trials,
            part,
            seed,
            **shared,
        )
    else:
        from wav2brain.probing.metrics import error_rate

        def score_split(split: str, decoded: list[list[str]]) -> float:
            return error_rate(task.targets[split], [task.detokenize(units) for units in decoded])

        score, weights, history = downstream.train_ctc(
            {s: f.data for s, f in features.items()},
            {s: f.offsets for s, f in features.items()},
            {s: [task.tokens(t) for t in task.targets[s]] for s in SPLITS},
            task.classes,
            score_split,
            part,
            seed,
            **shared,
        )
    return SeedResult(
        seed=int(seed),
        score=float(score),
        layer_weights=[float(w) for w in weights],
        validation=[float(h) for h in history],
        train_seconds=time.perf_counter() - start,
    )


def probe_task(
    upstream: Upstream,
    task: ProbeTask,
    cache: ProbeFeatureCache | str | Path,
    config: ProbeConfig | None = None,
    label: str | None = None,
) -> TaskResult:
    """Features of ``upstream`` on ``task`` (cached), then the downstream once per seed.

    Parameters
    ----------
    upstream
        From :func:`~wav2brain.probing.features.load_upstream`.
    task
        From :func:`load_task` or :func:`task_from_splits`.
    cache
        Probe feature cache (or its folder).
    label
        Name of the upstream in the result (default: its spec).

    The downstream is ``config.downstream.for_task(task.name, task.type)``; torch runs on
    ``config.threads`` threads throughout.
    """
    config = config or ProbeConfig()
    if not isinstance(cache, ProbeFeatureCache):
        cache = ProbeFeatureCache(cache)
    config.downstream.for_task(task.name, task.type)  # a bad entry fails before extraction
    check_frames(task, upstream)
    with torch_threads(config.threads):
        start = time.perf_counter()
        features = task_features(upstream, task, cache, config.storage_dtype)
        extraction_seconds = time.perf_counter() - start
        seeds = [_train_seed(task, features, config.downstream, seed) for seed in config.seeds]
    scores = [s.score for s in seeds]
    return TaskResult(
        task=task.name,
        metric=task.metric,
        upstream=label or upstream.name,
        seeds=seeds,
        extraction_seconds=extraction_seconds,
        interval=confidence_interval(scores, config.confidence),
    )
