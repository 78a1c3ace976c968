"""On-disk cache of TR-grid features: one safetensors file per stimulus and setting.

An entry holds one float32 tensor ``[rows, units]`` per layer (the ANs' temporal responses on a
stimulus-relative TR grid) and, in the safetensors header, a JSON record of everything that made
it: the :class:`FeatureKey` (model identity, stimulus id and audio hash, extraction settings,
TR-grid settings, TR and grid phase), the grid, the layers and units, the cache format version
and the wav2brain version.

- **Key.** The file name is a SHA-256 of the key; the stored key is compared on every read, so a
  collision or a hand-copied file cannot be served for another key. Run onsets are not part of the
  key, only the TR and the onset's phase within a TR (see :mod:`wav2brain.features.resample`):
  runs that differ by whole TRs share an entry, runs at TR 1.5 and 1.52 s do not.
- **Versions.** :data:`CACHE_FORMAT_VERSION` and ``wav2brain.__version__`` are stored, not
  hashed: an entry written by another format or another release of wav2brain sits at the same
  path, is detected and is recomputed in place (a release may change the numbers for a key
  without anyone bumping the format).
- **Atomic writes.** Entries are written to a temporary name in the same folder and renamed; a
  crash leaves at most a ``*.partial`` file (never read), never a half entry under the real name.
  A file that is truncated, has a garbage header, lacks the wav2brain record, holds another key
  or either version, or whose tensors disagree with the record fails validation and is recomputed in
  place. (Bytes flipped inside the tensor data with an intact header are not detected: hashing
  the data on every read would defeat the memory maps.)
- **Reads** are memory maps (``numpy.memmap`` at the offsets of the safetensors header, after
  ``safetensors.safe_open`` has validated the file): a cache hit reads only the rows it touches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.atomic import PARTIAL_SUFFIX, save_safetensors_atomic
from wav2brain.features.resample import TRGrid

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
"""Bump when the layout of an entry or the numbers written for a key change."""

METADATA_FIELD = "wav2brain"


def package_version() -> str:
    """The installed ``wav2brain.__version__`` (stored in every entry)."""
    from wav2brain import __version__

    return __version__


def sha256_json(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def audio_sha256(audio: np.ndarray) -> str:
    """SHA-256 (hex) of a waveform's float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def model_identity(model: Any, name_or_path: str, revision: str | None = None) -> dict[str, str]:
    """What identifies a model's activations: its name, config and weights (or a revision).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The loaded model.
    name_or_path : str
        Hub id or local path it was loaded from.
    revision : str, optional
        A user-supplied revision (commit hash, tag) that pins the weights; when given, the weights
        are not hashed (hashing wav2vec2-base reads its 380 MB of parameters, about a second).

    Returns
    -------
    dict
        ``name``, ``config_sha256`` and ``revision`` or ``weights_sha256``.
    """
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config = {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}
    identity = {"name": str(name_or_path), "config_sha256": sha256_json(config)}
    if revision is not None:
        identity["revision"] = str(revision)
        return identity
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    identity["weights_sha256"] = digest.hexdigest()
    return identity


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines a cached entry.

    Parameters
    ----------
    model : dict
        :func:`model_identity`.
    stimulus_id : str
        Dataset id of the stimulus.
    audio_sha256 : str
        :func:`audio_sha256` of its 16 kHz audio.
    extraction : dict
        Extraction settings (``dataclasses.asdict`` of ``ExtractionConfig``; tensor, layers, ...).
    grid_config : dict
        ``TRGridConfig.to_dict()``.
    tr_s : float
        Repetition time (s).
    phase_s : float
        Stimulus time (s) of the grid's first row, in ``[0, tr)``: ``(reference - onset) mod tr``
        of the runs it serves (:func:`~wav2brain.features.resample.grid_phase`), so the runs'
        slice-time references enter the key through it; runs whose reference and onset differ
        by the same amount share an entry.
    frame_rate_hz : float
        Frame rate (Hz) of the activations.
    """

    model: dict
    stimulus_id: str
    audio_sha256: str
    extraction: dict
    grid_config: dict
    tr_s: float
    phase_s: float
    frame_rate_hz: float

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))

    def digest(self) -> str:
        """SHA-256 (hex) of the key."""
        return sha256_json(self.to_dict())


@dataclass
class CachedFeatures:
    """A validated cache entry: per-layer memory maps ``[n_rows, units]`` on a stimulus grid.

    Attributes
    ----------
    path : Path
        The safetensors file.
    grid : TRGrid
        Rows in stimulus time (s).
    layers : dict of str to np.memmap
        Read-only float32 ``[n_rows, units]`` per layer name.
    metadata : dict
        The stored record (key, grid, layers, units, format and wav2brain versions).
    """

    path: Path
    grid: TRGrid
    layers: dict[str, np.ndarray]
    metadata: dict

    def __getitem__(self, layer: str) -> np.ndarray:
        if layer not in self.layers:
            raise KeyError(f"layer {layer!r} not in {self.path.name}: {sorted(self.layers)}")
        return self.layers[layer]

    @property
    def units(self) -> dict[str, int]:
        """Units per layer."""
        return {name: value.shape[1] for name, value in self.layers.items()}


class InvalidEntry(ValueError):
    """A cache file that cannot be trusted (truncated, garbage, other version, other key)."""


def _safe_name(text: str) -> str:
    """A file-system-safe folder name for a stimulus id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "stimulus"


def _read_header(path: Path) -> tuple[int, dict]:
    """Header length and JSON of a safetensors file (its first 8 bytes give the length)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise InvalidEntry(f"{path} is too short to be a safetensors file")
        length = int.from_bytes(raw, "little")
        if length > size - 8:
            raise InvalidEntry(f"{path}: header of {length} bytes exceeds the file ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidEntry(f"{path}: unreadable safetensors header ({error})") from error
    return length, header


def open_entry(path: Path, key: FeatureKey | None = None) -> CachedFeatures:
    """Validate a cache file and memory-map its layers.

    Raises
    ------
    InvalidEntry
        If the file is not a complete safetensors file, lacks wav2brain metadata, was written by
        another cache format version or wav2brain version, holds another key, or its tensors
        disagree with the record.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = set(handle.keys())
            stored = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidEntry(f"{path}: not a valid safetensors file ({error})") from error
    if METADATA_FIELD not in stored:
        raise InvalidEntry(f"{path}: no {METADATA_FIELD!r} metadata in the header")
    try:
        record = json.loads(stored[METADATA_FIELD])
        version = record["format_version"]
        written_by = record["wav2brain_version"]
        grid = TRGrid(**record["grid"])
        units = {str(k): int(v) for k, v in record["units"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InvalidEntry(f"{path}: malformed {METADATA_FIELD!r} metadata ({error})") from error
    if version != CACHE_FORMAT_VERSION:
        raise InvalidEntry(
            f"{path}: cache format {version}, this version reads {CACHE_FORMAT_VERSION}"
        )
    if written_by != package_version():
        raise InvalidEntry(
            f"{path}: written by wav2brain {written_by}, this is {package_version()}"
        )
    if key is not None and record.get("key") != key.to_dict():
        raise InvalidEntry(f"{path}: holds another key than the one requested")
    if names != set(units):
        raise InvalidEntry(f"{path}: tensors {sorted(names)} differ from layers {sorted(units)}")
    length, header = _read_header(path)
    size = path.stat().st_size
    layers = {}
    for name, n_units in units.items():
        info = header[name]
        begin, end = info["data_offsets"]
        shape = (grid.n_rows, n_units)
        if (
            info["dtype"] != "F32"
            or tuple(info["shape"]) != shape
            or end - begin != 4 * np.prod(shape)
        ):
            raise InvalidEntry(f"{path}: tensor {name!r} is {info}, expected F32 {shape}")
        if 8 + length + end > size:
            raise InvalidEntry(f"{path}: truncated inside tensor {name!r}")
        offset = 8 + length + begin
        layers[name] = (
            np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=shape)
            if grid.n_rows and n_units
            else np.zeros(shape, dtype=np.float32)
        )
    return CachedFeatures(path=path, grid=grid, layers=layers, metadata=record)


class FeatureCache:
    """A folder of feature entries, ``ROOT/<stimulus id>/<key sha256>.safetensors``.

    Parameters
    ----------
    root : path
        Cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: FeatureKey) -> Path:
        """Where the entry of ``key`` lives."""
        return self.root / _safe_name(key.stimulus_id) / f"{key.digest()}.safetensors"

    def get(self, key: FeatureKey) -> CachedFeatures | None:
        """The valid entry of ``key``, or None (missing, or invalid: logged and to be recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return open_entry(path, key)
        except InvalidEntry as error:
            logger.warning("recomputing cache entry: %s", error)
            return None

    def put(
        self, key: FeatureKey, grid: TRGrid, features: Mapping[str, np.ndarray]
    ) -> CachedFeatures:
        """Write ``features`` (``{layer: [grid.n_rows, units]}``) atomically and open the entry."""

        tensors = {}
        for name, value in features.items():
            array = np.ascontiguousarray(value, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != grid.n_rows:
                raise ValueError(
                    f"layer {name!r}: expected [{grid.n_rows} rows, units], got {array.shape}"
                )
            tensors[name] = array
        if not tensors:
            raise ValueError("no layers to cache")
        record = {
            "format_version": CACHE_FORMAT_VERSION,
            "wav2brain_version": package_version(),
            "key": key.to_dict(),
            "grid": asdict(grid),
            "units": {name: int(value.shape[1]) for name, value in tensors.items()},
        }
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        save_safetensors_atomic(tensors, path, {METADATA_FIELD: json.dumps(record)}, tmp)
        return open_entry(path, key)

    def get_or_compute(
        self,
        key: FeatureKey,
        compute: Callable[[], tuple[TRGrid, Mapping[str, np.ndarray]]],
    ) -> CachedFeatures:
        """The entry of ``key``, computing and storing it with ``compute()`` on a miss."""
        entry = self.get(key)
        if entry is not None:
            return entry
        grid, features = compute()
        return self.put(key, grid, features)
