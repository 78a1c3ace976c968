"""TR-pooled hidden states of a frozen backbone, computed once and memory-mapped from disk.

In stage 1 the backbone is frozen, so the TR-pooled hidden states of every layer
(``[num_hidden_layers + 1, history_trs, hidden_size]`` per window) do not change: they are computed
once, in eval mode, and stage 1 trains the layer weights and head on them
(``Wav2Vec2ForBrainEncoding.forward(pooled_hidden_states=..., valid_bins=...)``). Windows with the
same audio (every subject who heard a story, at the same TR) share one cache row.

Windows are run through the backbone in batches of equal length, so no window is padded: with
wav2vec2-base's group-norm front end padding changes the first layer's normalisation, and the
cache would then differ from the model run on the window alone.

Files (under ``cache_dir``, each written under a temporary name and renamed): ``states.npy``
(``[rows, L + 1, H, D]``, ``cache_dtype``), ``valid_bins.npy`` (``[rows, H]`` bool),
``keys.json`` (the (stimulus, start, end) of each row and the fingerprint of model and windows).
A cache with another fingerprint is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wav2brain.atomic import partial_path, write_text_atomic

CACHE_DTYPES = ("float16", "float32")
KEYS_FILE = "keys.json"


def backbone_fingerprint(model: Any, extra: dict[str, Any]) -> str:
    """sha256 of the backbone's weights, its config and ``extra`` (window settings, dtype)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.wav2vec2.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = {
        key: getattr(model.config, key)
        for key in (
            "tr",
            "history_trs",
            "sampling_rate",
            "conv_kernel",
            "conv_stride",
            "do_normalize",
        )
    }
    digest.update(json.dumps({**settings, **extra}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class PooledStateCache:
    """Memory-mapped pooled states; :meth:`lookup` gives the row of a window item."""

    def __init__(self, folder: Path) -> None:
        record = json.loads((folder / KEYS_FILE).read_text(encoding="utf-8"))
        self.folder = folder
        self.fingerprint = record["fingerprint"]
        self.row_of = {tuple(key): i for i, key in enumerate(record["keys"])}
        self.states = np.load(folder / "states.npy", mmap_mode="r")
        self.valid_bins = np.load(folder / "valid_bins.npy", mmap_mode="r")

    def lookup(self, item: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(states [L + 1, H, D], valid_bins [H])`` of an item with ``stimulus/start/end``."""
        row = self.row_of[(item.stimulus, item.start, item.end)]
        return self.states[row], self.valid_bins[row]

    @property
    def nbytes(self) -> int:
        """Size of the states on disk (bytes)."""
        return int(self.states.nbytes)


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def build_pooled_cache(
    model: Any,
    data: Any,
    items: Iterable[Any],
    folder: str | Path,
    *,
    dtype: str = "float16",
    batch_size: int = 8,
) -> PooledStateCache:
    """Compute (or reuse) the pooled states of every distinct window of ``items``.

    Parameters
    ----------
    model : Wav2Vec2ForBrainEncoding
        Its backbone runs in eval mode (restored after); only ``wav2vec2`` and the pooling are used.
    data : RecipeData
        Gives each item's audio (:meth:`RecipeData.audio`).
    items : iterable of WindowItem
        Every item stage 1 trains or evaluates on.
    folder : str or Path
        Cache folder.
    dtype : str
        ``"float16"`` or ``"float32"`` storage.
    batch_size : int
        Windows per backbone call.

    Raises
    ------
    ValueError
        An unknown ``dtype``.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype={dtype!r}: expected one of {CACHE_DTYPES}")
    folder = Path(folder)
    unique: dict[tuple[str, int, int], Any] = {}
    for item in items:
        unique.setdefault((item.stimulus, item.start, item.end), item)
    keys = sorted(unique)
    fingerprint = backbone_fingerprint(
        model, {"dtype": dtype, "keys": hashlib.sha256(json.dumps(keys).encode()).hexdigest()}
    )
    if (folder / KEYS_FILE).is_file():
        cache = PooledStateCache(folder)
        if cache.fingerprint == fingerprint:
            return cache
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    states = np.zeros(
        (len(keys), config.num_hidden_layers + 1, config.history_trs, config.hidden_size),
        dtype=np.dtype(dtype),
    )
    valid = np.zeros((len(keys), config.history_trs), dtype=bool)
    by_length: dict[int, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        by_length[key[2] - key[1]].append(row)
    was_training = model.training
    model.eval()
    device = model.device
    try:
        for length, rows in sorted(by_length.items()):
            for begin in range(0, len(rows), batch_size):
                chunk = rows[begin : begin + batch_size]
                audio = torch.as_tensor(
                    np.stack([data.audio(unique[keys[r]]) for r in chunk]), device=device
                )
                outputs = model.wav2vec2(audio, output_hidden_states=True, return_dict=True)
                lengths = torch.full((len(chunk),), length, device=device)
                pooled, bins = model.pool_hidden_states(outputs.hidden_states, lengths)
                states[chunk] = pooled.transpose(0, 1).float().cpu().numpy().astype(dtype)
                valid[chunk] = bins.cpu().numpy()
    finally:
        model.train(was_training)
    _save_npy(states, folder / "states.npy")
    _save_npy(valid, folder / "valid_bins.npy")
    write_text_atomic(
        json.dumps({"fingerprint": fingerprint, "keys": [list(k) for k in keys]}),
        folder / KEYS_FILE,
    )
    return PooledStateCache(folder)
