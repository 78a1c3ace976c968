"""Upstreams for probing and the on-disk cache of their features, once per upstream and task split.

Two kinds of upstream give every utterance a ``[frames, layers, dim]`` float32 array:

- :class:`TransformersUpstream`: any checkpoint ``transformers`` loads as a wav2vec2-family model
  (``model_type`` in :data:`UPSTREAM_MODEL_TYPES`: a Hub id, a local folder, a ``save_backbone``
  export, a ``Wav2Vec2ForBrainEncoding`` checkpoint), frozen, all hidden states (layer 0, the
  transformer input, to the last layer), streamed with :func:`wav2brain.features.iter_activations`
  (each utterance alone, so no padding changes its group-norm statistics or attention);
- :class:`FbankUpstream`: a log-mel filterbank with deltas, SUPERB's FBANK row (one "layer").

:class:`ProbeFeatureCache` stores one entry per upstream and split, keyed as
:mod:`wav2brain.features.cache` keys its entries (:func:`~wav2brain.features.cache.model_identity`
for the model, SHA-256 of canonical JSON, atomic writes) by the upstream's identity, the split's
audio fingerprint and the extraction settings. Utterance-level tasks keep only each layer's mean
over frames (``[utterances, layers, dim]``): their downstream (projection, mean pooling, linear, as
s3prl's ``UtteranceLevel``) is linear up to the pooling, so the projected mean equals the mean of
the projection exactly and nothing more is needed. CTC tasks keep every frame
(``[total frames, layers, dim]`` plus per-utterance offsets). Entries are raw little-endian arrays
read as ``numpy.memmap``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.atomic import PARTIAL_SUFFIX
from wav2brain.features.cache import model_identity, package_version, sha256_json
from wav2brain.features.extract import MODEL_SAMPLING_RATE, ExtractionConfig, iter_activations

logger = logging.getLogger(__name__)

FBANK = "fbank"
"""Name of the built-in log-mel filterbank upstream (a folder of that name: pass ``./fbank``)."""

UPSTREAM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-brain-encoding")
"""``config.model_type`` values accepted as upstreams (the backbones :mod:`wav2brain.features` reads)."""

KINDS = ("pooled", "frames")
PROBE_CACHE_VERSION = 1
"""Bump when the layout of an entry or the numbers written for a key change."""


@dataclass(frozen=True)
class FbankConfig:
    """Log-mel filterbank settings (Kaldi-like, as s3prl's ``fbank`` upstream).

    Parameters
    ----------
    n_mels
        Mel bands (80, as SUPERB's FBANK).
    window_seconds, hop_seconds
        Analysis window and hop (s): 25 ms and 10 ms (100 frames per second).
    n_fft
        FFT size (samples at 16 kHz); at least the window.
    f_min_hz, f_max_hz
        Band edges of the mel filters (Hz); ``None`` = Nyquist (8 kHz).
    deltas
        Orders of time derivatives appended (2: features, deltas and delta-deltas, 240 dims).

    No per-utterance mean normalisation: it would zero every utterance's mean, which is all an
    utterance-level downstream sees; the downstream standardises each feature with training-split
    statistics instead (:mod:`wav2brain.probing.downstream`).
    """

    n_mels: int = 80
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    n_fft: int = 512
    f_min_hz: float = 20.0
    f_max_hz: float | None = None
    deltas: int = 2

    def __post_init__(self) -> None:
        window = round(self.window_seconds * MODEL_SAMPLING_RATE)
        if self.n_mels < 1 or self.deltas < 0:
            raise ValueError(f"FbankConfig needs n_mels >= 1 and deltas >= 0, got {self}")
        if not 0 < self.hop_seconds <= self.window_seconds or not window <= self.n_fft:
            raise ValueError(
                f"FbankConfig needs 0 < hop_seconds <= window_seconds and a window of at most n_fft "
                f"samples, got hop {self.hop_seconds} s, window {self.window_seconds} s "
                f"({window} samples), n_fft {self.n_fft}"
            )
        top = self.f_max_hz if self.f_max_hz is not None else MODEL_SAMPLING_RATE / 2
        if not 0 <= self.f_min_hz < top <= MODEL_SAMPLING_RATE / 2:
            raise ValueError(
                f"FbankConfig needs 0 <= f_min_hz < f_max_hz <= 8000 Hz, got {self.f_min_hz} and "
                f"{self.f_max_hz}"
            )

    @property
    def window(self) -> int:
        """Window length (samples at 16 kHz)."""
        return round(self.window_seconds * MODEL_SAMPLING_RATE)

    @property
    def hop(self) -> int:
        """Hop (samples at 16 kHz)."""
        return round(self.hop_seconds * MODEL_SAMPLING_RATE)


def mel_filters(config: FbankConfig) -> np.ndarray:
    """Triangular filters on the HTK mel scale, ``[n_mels, n_fft // 2 + 1]`` float32."""

    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    top = config.f_max_hz if config.f_max_hz is not None else MODEL_SAMPLING_RATE / 2
    edges = np.linspace(mel(config.f_min_hz), mel(top), config.n_mels + 2)
    bins = mel(np.fft.rfftfreq(config.n_fft, 1.0 / MODEL_SAMPLING_RATE))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0, None).astype(np.float32)


def _deltas(features: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over ``±width`` frames, edges repeated (HTK / Kaldi formula)."""
    padded = np.pad(features, ((width, width), (0, 0)), mode="edge")
    n = len(features)
    total = sum(
        k * (padded[width + k : width + k + n] - padded[width - k : width - k + n])
        for k in range(1, width + 1)
    )
    return total / (2 * sum(k * k for k in range(1, width + 1)))


class FbankUpstream:
    """SUPERB's FBANK baseline: log-mel filterbank (+ deltas) of each utterance, one layer.

    Parameters
    ----------
    config
        :class:`FbankConfig`.
    """

    name = FBANK
    frame_rate_hz: float

    def __init__(self, config: FbankConfig | None = None) -> None:
        self.config = config or FbankConfig()
        self.filters = mel_filters(self.config)
        self.frame_rate_hz = MODEL_SAMPLING_RATE / self.config.hop
        self.identity = {"name": FBANK, "config_sha256": sha256_json(asdict(self.config))}
        self.extraction: dict = asdict(self.config)

    @property
    def n_layers(self) -> int:
        """Layers offered to the weighted sum (1)."""
        return 1

    @property
    def dim(self) -> int:
        """Features per frame."""
        return self.config.n_mels * (1 + self.config.deltas)

    def n_frames(self, n_samples: int) -> int:
        """Frames of an utterance of ``n_samples`` samples at 16 kHz (0 if shorter than a window)."""
        if n_samples < self.config.window:
            return 0
        return (n_samples - self.config.window) // self.config.hop + 1

    def stream(self, wave: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the utterance's features ``[frames, 1, dim]`` (one block)."""
        n = self.n_frames(len(wave))
        if n < 1:
            raise ValueError(
                f"audio of {len(wave)} samples is shorter than the fbank window "
                f"({self.config.window} samples)"
            )
        index = np.arange(self.config.window)[None] + self.config.hop * np.arange(n)[:, None]
        frames = wave[index].astype(np.float64)
        frames -= frames.mean(axis=1, keepdims=True)
        frames *= np.hamming(self.config.window)
        power = np.abs(np.fft.rfft(frames, n=self.config.n_fft, axis=1)) ** 2
        logmel = np.log(np.maximum(power @ self.filters.T.astype(np.float64), 1e-10))
        parts = [logmel]
        for _ in range(self.config.deltas):
            parts.append(_deltas(parts[-1]))
        yield np.concatenate(parts, axis=1).astype(np.float32)[:, None, :]


def check_upstream(spec: str, revision: str | None = None) -> str:
    """Refuse an upstream that is not of the wav2vec2 family from its config alone (cheap).

    Returns the ``model_type`` (``"fbank"`` for the built-in filterbank).

    Raises
    ------
    FileNotFoundError
        For a local path that does not exist or has no ``config.json``, or a Hub id whose config
        cannot be read (:func:`~wav2brain.features.extract.from_checkpoint`).
    ValueError
        Naming the ``model_type`` when it is not in :data:`UPSTREAM_MODEL_TYPES`, or for a
        ``spec`` that is neither a folder nor a Hub id.
    """
    if spec == FBANK:
        return FBANK
    from transformers import AutoConfig

    from wav2brain.features.extract import from_checkpoint

    model_type = from_checkpoint(AutoConfig.from_pretrained, spec, revision, "upstream").model_type
    if model_type not in UPSTREAM_MODEL_TYPES:
        raise ValueError(
            f"upstream {spec} has model_type {model_type!r}, not a wav2vec2-family model: expected "
            f"one of {', '.join(UPSTREAM_MODEL_TYPES)} (or {FBANK!r})"
        )
    return model_type


class TransformersUpstream:
    """A frozen wav2vec2-family checkpoint offering all its hidden states to the weighted sum.

    Parameters
    ----------
    spec
        Hub id or local folder (checked with :func:`check_upstream` first).
    revision
        Hub revision; pins the cache key without hashing the weights.
    extraction
        Chunking and compute settings (:class:`~wav2brain.features.ExtractionConfig`); its
        ``tensor`` and ``layers`` are overridden (hidden states, every layer from 0). Audio is
        normalised per utterance when ``extraction.normalize`` says so, else as the checkpoint's
        ``preprocessor_config.json`` (or brain-encoding config) says.
    """

    def __init__(
        self, spec: str, revision: str | None = None, extraction: ExtractionConfig | None = None
    ) -> None:
        check_upstream(spec, revision)
        from wav2brain.features.extract import load_model
        from wav2brain.features.taps import resolve_backbone

        self.name = spec
        self.model = load_model(spec, revision, "upstream")
        self.model.requires_grad_(False)
        backbone = resolve_backbone(self.model)
        n_layers = len(backbone.encoder.layers)
        config = replace(
            extraction or ExtractionConfig(),
            tensor="hidden_states",
            layers=tuple(range(n_layers + 1)),
        )
        self.config = config.for_checkpoint(self.model, spec, revision)
        self.backbone = backbone
        self.frame_rate_hz = MODEL_SAMPLING_RATE / np.prod(backbone.config.conv_stride)
        self.identity = model_identity(self.model, spec, revision)
        self.extraction = asdict(self.config)

    @property
    def n_layers(self) -> int:
        """Hidden states offered to the weighted sum (transformer input + every layer)."""
        return len(self.config.layers)

    @property
    def dim(self) -> int:
        """Hidden size."""
        return int(self.backbone.config.hidden_size)

    def n_frames(self, n_samples: int) -> int:
        """Frames of an utterance of ``n_samples`` samples at 16 kHz."""
        from wav2brain.features.frontend import geometry_of

        return geometry_of(self.backbone).n_frames(n_samples)

    def stream(self, wave: np.ndarray) -> Iterator[np.ndarray]:
        """Yield consecutive blocks ``[frames, layers, dim]`` of the utterance's hidden states."""
        for chunk in iter_activations(self.model, wave, self.config):
            layers = chunk.numpy()
            yield np.stack([layers[name] for name in sorted(layers)], axis=1)


Upstream = FbankUpstream | TransformersUpstream


def load_upstream(
    spec: str,
    revision: str | None = None,
    extraction: ExtractionConfig | None = None,
    fbank: FbankConfig | None = None,
) -> Upstream:
    """The upstream named by ``spec``: ``"fbank"`` or a wav2vec2-family checkpoint."""
    if spec == FBANK:
        return FbankUpstream(fbank)
    return TransformersUpstream(spec, revision, extraction)


@dataclass
class SplitFeatures:
    """Cached features of one split: memory-mapped ``data`` and, for frames, per-row offsets.

    Attributes
    ----------
    kind
        ``"pooled"`` (``data`` is ``[rows, layers, dim]``) or ``"frames"`` (``data`` is
        ``[total frames, layers, dim]``; row ``i`` spans ``offsets[i]:offsets[i + 1]``).
    """

    kind: str
    data: np.ndarray
    offsets: np.ndarray | None
    path: Path

    def __len__(self) -> int:
        return len(self.data) if self.offsets is None else len(self.offsets) - 1

    def row(self, index: int) -> np.ndarray:
        """Features of row ``index``: ``[layers, dim]`` pooled or ``[frames, layers, dim]``."""
        if self.offsets is None:
            return self.data[index]
        return self.data[self.offsets[index] : self.offsets[index + 1]]

    def lengths(self) -> np.ndarray:
        """Frames per row (frames entries only)."""
        if self.offsets is None:
            raise ValueError(f"{self.path}: pooled features have no frame lengths")
        return np.diff(self.offsets)


@dataclass(frozen=True)
class SplitKey:
    """Everything that determines a cache entry: upstream, audio, settings, kind, storage dtype."""

    upstream: dict
    fingerprint: str
    extraction: dict
    kind: str
    storage_dtype: str

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the cache format and wav2brain versions."""
        record = json.loads(json.dumps(asdict(self), sort_keys=True, default=str))
        record.update(format_version=PROBE_CACHE_VERSION, wav2brain_version=package_version())
        return record

    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`to_dict` (so another release writes another entry)."""
        return sha256_json(self.to_dict())


class ProbeFeatureCache:
    """A folder of split entries, ``ROOT/<key sha256>/{record.json, data.bin[, offsets.npy]}``.

    Entries are built in a ``*.partial`` sibling folder and renamed into place; an entry whose
    record, files or sizes disagree with its key is logged and rebuilt.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: SplitKey) -> Path:
        """Folder of the entry of ``key``."""
        return self.root / key.digest()

    def get(self, key: SplitKey) -> SplitFeatures | None:
        """The valid entry of ``key`` or None."""
        folder = self.path(key)
        if not folder.is_dir():
            return None
        try:
            record = json.loads((folder / "record.json").read_text(encoding="utf-8"))
            if record["key"] != key.to_dict():
                raise ValueError("holds another key")
            shape = tuple(record["shape"])
            dtype = np.dtype(key.storage_dtype)
            data_path = folder / "data.bin"
            if data_path.stat().st_size != int(np.prod(shape)) * dtype.itemsize:
                raise ValueError(f"data.bin is not {shape} {dtype}")
            data = (
                np.memmap(data_path, dtype=dtype, mode="r", shape=shape)
                if np.prod(shape)
                else np.zeros(shape, dtype)
            )
            offsets = None
            if key.kind == "frames":
                offsets = np.load(folder / "offsets.npy")
                if offsets[0] != 0 or offsets[-1] != shape[0] or np.any(np.diff(offsets) < 1):
                    raise ValueError("offsets disagree with data.bin")
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
            logger.warning("rebuilding probe feature entry %s: %s", folder, error)
            return None
        return SplitFeatures(key.kind, data, offsets, folder)

    def get_or_compute(
        self,
        key: SplitKey,
        upstream: Upstream,
        waves: Callable[[], Iterable[np.ndarray]],
        on_row: Callable[[], None] | None = None,
    ) -> SplitFeatures:
        """The entry of ``key``; on a miss, stream ``upstream`` over ``waves()`` and store it.

        ``waves`` is called only on a miss (so a hit decodes no audio and runs no model).
        """
        if key.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {key.kind!r}")
        entry = self.get(key)
        if entry is not None:
            return entry
        folder = self.path(key)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        dtype = np.dtype(key.storage_dtype)
        try:
            rows, offsets = 0, [0]
            with (tmp / "data.bin").open("wb") as handle:
                for wave in waves():
                    total, count = None, 0
                    for block in upstream.stream(wave):
                        if key.kind == "frames":
                            handle.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
                        sums = block.sum(axis=0, dtype=np.float64)
                        total = sums if total is None else total + sums
                        count += len(block)
                    if key.kind == "pooled":
                        handle.write((total / count).astype(dtype).tobytes())
                    offsets.append(offsets[-1] + count)
                    rows += 1
                    if on_row is not None:
                        on_row()
            first = rows if key.kind == "pooled" else offsets[-1]
            shape = [first, upstream.n_layers, upstream.dim]
            if key.kind == "frames":
                np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
            record = {"key": key.to_dict(), "shape": shape, "rows": rows}
            (tmp / "record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        entry = self.get(key)
        if entry is None:
            raise OSError(f"{folder}: the entry just written does not validate")
        return entry


def split_key(
    upstream: Upstream, fingerprint: str, kind: str, storage_dtype: str = "float32"
) -> SplitKey:
    """The cache key of ``upstream``'s ``kind`` features of a split with audio ``fingerprint``."""
    if storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32 or float16, got {storage_dtype!r}")
    return SplitKey(
        upstream=dict(upstream.identity),
        fingerprint=fingerprint,
        extraction=dict(upstream.extraction),
        kind=kind,
        storage_dtype=storage_dtype,
    )


def fill_task_features(
    pairs: Sequence[tuple[str, Upstream, Any]],
    cache: ProbeFeatureCache,
    storage_dtype: str = "float32",
) -> None:
    """Every split's features of each (label, upstream, task) in the cache, split over processes.

    Under several processes (:mod:`wav2brain.distributed`) each fills the entries of its share
    of the pairs (:func:`~wav2brain.probing.harness.task_features`: one entry per split, each a
    folder of its own, so no two processes write one); all return once every pair is cached.
    The downstream training then runs on the main process alone, from the cache. Under one
    process this is :func:`~wav2brain.probing.harness.task_features` of each pair in turn.

    Raises
    ------
    ValueError
        Naming the pairs no process cached (a lost shard).
    """
    from wav2brain import distributed
    from wav2brain.probing.harness import task_features

    names = [f"{label} on {task.name}" for label, _, task in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"(upstream, task) pairs must be distinct, got {names}")
    done = {}
    for name, (_, upstream, task) in distributed.shard(list(zip(names, pairs, strict=True))):
        logger.info("probe features of %s%s", name, distributed.describe())
        task_features(upstream, task, cache, storage_dtype)
        done[name] = True
    distributed.merge(done, names, "upstream and task")


def upstream_label(spec: str) -> str:
    """A short display name of an upstream spec (folder name or Hub id's last part)."""
    if spec == FBANK:
        return FBANK
    return Path(spec.rstrip("/")).name or spec


__all__ = [
    "FBANK",
    "FbankConfig",
    "FbankUpstream",
    "ProbeFeatureCache",
    "SplitFeatures",
    "SplitKey",
    "TransformersUpstream",
    "UPSTREAM_MODEL_TYPES",
    "Upstream",
    "check_upstream",
    "fill_task_features",
    "load_upstream",
    "split_key",
    "upstream_label",
]
