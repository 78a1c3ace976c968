"""Neurolinguistic selectivity of artificial neurons at frame rate (50 Hz), streamed per story.

For every AN (one unit of one tensor of one layer) and every stimulus with a word and phoneme
alignment, the activations are streamed block by block
(:func:`wav2brain.features.extract.iter_activations`); the frames x units matrix of a whole story
is never held. Each aligned token contributes one response per unit, the mean activation over a
window of frames (a frame's time is the centre of its receptive field, ``(i * stride + field / 2)
/ 16000`` s):

* phoneme token: frames whose centres lie within ``phoneme_window_s`` of the phoneme's midpoint
  and inside the phoneme (the single frame nearest the midpoint when none does). ANs have no
  response delay, so the window is centred on the phoneme itself (Mesgarani et al. 2014 took
  the neural response 0-200 ms after onset because cortex lags the sound);
* word onset / word boundary token: frames within ``word_window_s`` of the word's start / end.

Only sufficient statistics are kept: per layer, per group (each phoneme label, word onsets, word
boundaries) the token count and the per-unit sum and sum of squares, in float64. They add across
blocks and stories, so a run is resumable per stimulus (each stimulus's statistics are saved
atomically under ``OUT/partial``) and memory is O(groups x units). Under several processes
(:mod:`wav2brain.distributed`) each streams its share of the stimuli into ``partial/`` and
the main process merges every stimulus's sums in stimulus order, as one process does.

Statistics. Tokens, not frames, are the replicates (frames within a token are strongly
autocorrelated; tokens of different phonemes are far less so). Pairs of groups are compared with
Welch's t-test computed from the sufficient statistics; Mesgarani et al. used the Wilcoxon
rank-sum test, which needs every response (or a reservoir sample of them) and so breaks the
O(groups x units) memory bound; with tens to thousands of tokens per group, Welch's test is
close to it and exact for its own null.

* PSI (phoneme selectivity index, Mesgarani et al. 2014): for each phoneme with at least
  ``min_tokens`` tokens, the number of other such phonemes whose responses differ at ``alpha``
  (two-sided; Mesgarani used 0.001). Per AN: ``psi_max`` (and its phoneme), ``psi_mean``.
* Phonetic classes (:mod:`wav2brain.anchoring.phonetics`, manner / place / voicing): for each
  class, its tokens against the tokens of every other class of the same feature; the AN's best
  class is the one with the largest positive t among those significant at ``alpha`` divided by
  the number of classes tested (Bonferroni within the AN); none when no class is.
* Word onsets and boundaries: their tokens against all phoneme tokens (t, p).

Per layer: the mean normalised PSI (``psi_mean / (phonemes - 1)``, the share of phoneme pairs an
AN separates), the share of class-selective ANs and the mean |t| of word onsets; the layer where
phoneme-level information peaks is the one with the largest mean normalised PSI, the word-level
peak the one with the largest mean |t| of word onsets. ANs with zero variance get t = 0, p = 1
(counted in the summary as ``constant_units``), never NaN.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain import distributed
from wav2brain.anchoring.phonetics import FEATURES, phonetic_class
from wav2brain.atomic import partial_path, write_text_atomic

logger = logging.getLogger(__name__)

WORD_ONSET = "<word_onset>"
"""Group name of word-onset tokens."""
WORD_BOUNDARY = "<word_boundary>"
"""Group name of word-boundary (word end) tokens."""
PARTIAL_DIR = "partial"
"""Folder of the per-stimulus statistics under the output folder."""


@dataclass(frozen=True)
class SelectivityConfig:
    """Settings of :func:`selectivity` (see the module docstring for what each does).

    Attributes
    ----------
    phoneme_window_s : float
        Half-width (s) of the window around each phoneme's midpoint (0.02: the midpoint frame
        and its neighbours at 50 Hz, clipped to the phoneme).
    word_window_s : float
        Half-width (s) of the window around each word onset and word end.
    alpha : float
        Two-sided level of every test (0.001, Mesgarani et al. 2014).
    min_tokens : int
        Fewest tokens a phoneme or class needs to be tested.
    """

    phoneme_window_s: float = 0.02
    word_window_s: float = 0.04
    alpha: float = 0.001
    min_tokens: int = 10

    def __post_init__(self) -> None:
        for name in ("phoneme_window_s", "word_window_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SelectivityConfig.{name} must be >= 0 s, got {value!r}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"SelectivityConfig.alpha must be in (0, 0.5), got {self.alpha!r}")
        if (
            isinstance(self.min_tokens, bool)
            or not isinstance(self.min_tokens, int)
            or (self.min_tokens < 2)
        ):
            raise ValueError(
                f"SelectivityConfig.min_tokens must be an integer >= 2, got {self.min_tokens!r}"
            )


@dataclass(frozen=True)
class FrameGeometry:
    """Frame times of a model: frame ``i`` is centred at ``(i * stride + field / 2) / rate`` s."""

    stride: int = 320
    receptive_field: int = 400
    sampling_rate: int = 16_000

    def frame(self, seconds: np.ndarray, rounding: Callable) -> np.ndarray:
        """Frame index whose centre is at or next to ``seconds``: ``np.ceil`` the first centre at
        or after it, ``np.floor`` the last at or before it, ``np.rint`` the nearest (a 1e-9-frame
        tolerance keeps a time on a frame centre on that frame)."""
        position = (
            np.asarray(seconds) * self.sampling_rate - self.receptive_field / 2
        ) / self.stride
        tolerance = {np.ceil: -1e-9, np.floor: 1e-9}.get(rounding, 0.0)
        return rounding(position + tolerance).astype(np.int64)


class _Groups:
    """Sufficient statistics (count, sum, sum of squares) of token responses per group and unit."""

    def __init__(self, units: int) -> None:
        self.units = units
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.count = np.zeros(0)
        self.total = np.zeros((0, units))
        self.squares = np.zeros((0, units))

    def ids(self, names: Sequence[str]) -> np.ndarray:
        for name in names:
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
        grow = len(self.names) - len(self.count)
        if grow:
            self.count = np.concatenate([self.count, np.zeros(grow)])
            self.total = np.vstack([self.total, np.zeros((grow, self.units))])
            self.squares = np.vstack([self.squares, np.zeros((grow, self.units))])
        return np.array([self.index[name] for name in names], dtype=np.int64)

    def add(self, groups: np.ndarray, responses: np.ndarray) -> None:
        np.add.at(self.count, groups, 1.0)
        np.add.at(self.total, groups, responses)
        np.add.at(self.squares, groups, responses**2)

    def merge(self, names: Sequence[str], count, total, squares) -> None:
        ids = self.ids(list(names))
        self.count[ids] += count
        self.total[ids] += total
        self.squares[ids] += squares


class _TokenStream:
    """Token windows [start, stop) in frames, filled from consecutive blocks of activations."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray, groups: np.ndarray) -> None:
        self.starts, self.stops, self.groups = starts, stops, groups
        self._open: dict[int, np.ndarray] = {}

    def push(self, start: int, block: np.ndarray, out: _Groups) -> None:
        """Add a block of frames [start, start + len(block)) and finish the tokens it completes."""
        stop = start + block.shape[0]
        touched = np.flatnonzero((self.starts < stop) & (self.stops > start))
        if touched.size == 0:
            return
        cumulative = np.vstack(
            [np.zeros((1, block.shape[1])), np.cumsum(block, axis=0, dtype=np.float64)]
        )
        low = np.clip(self.starts[touched] - start, 0, block.shape[0])
        high = np.clip(self.stops[touched] - start, 0, block.shape[0])
        sums = cumulative[high] - cumulative[low]
        done = self.stops[touched] <= stop
        for position in np.flatnonzero(~done):
            token = int(touched[position])
            self._open[token] = self._open.get(token, 0.0) + sums[position]
        finished = touched[done]
        if finished.size:
            total = sums[done]
            for row, token in enumerate(finished):
                if int(token) in self._open:
                    total[row] += self._open.pop(int(token))
            lengths = (self.stops[finished] - self.starts[finished]).astype(np.float64)
            out.add(self.groups[finished], total / lengths[:, None])


def token_windows(
    phonemes: Sequence[Mapping[str, Any]],
    words: Sequence[Mapping[str, Any]],
    n_frames: int,
    geometry: FrameGeometry,
    config: SelectivityConfig,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Frame windows [start, stop) and group names of every phoneme, word-onset and word-end token.

    Tokens whose window falls outside the ``n_frames`` frames are dropped.
    """
    starts, stops, names = [], [], []
    if phonemes:
        begin = np.array([float(t["start"]) for t in phonemes])
        end = np.array([float(t["end"]) for t in phonemes])
        middle = (begin + end) / 2
        low = geometry.frame(np.maximum(middle - config.phoneme_window_s, begin), np.ceil)
        high = geometry.frame(np.minimum(middle + config.phoneme_window_s, end), np.floor) + 1
        nearest = geometry.frame(middle, np.rint)
        empty = high <= low
        low, high = np.where(empty, nearest, low), np.where(empty, nearest + 1, high)
        starts.append(low), stops.append(high)
        names += [str(t["label"]).strip() for t in phonemes]
    for group, key in ((WORD_ONSET, "start"), (WORD_BOUNDARY, "end")):
        if words:
            times = np.array([float(t[key]) for t in words])
            starts.append(geometry.frame(times - config.word_window_s, np.ceil))
            stops.append(geometry.frame(times + config.word_window_s, np.floor) + 1)
            names += [group] * len(words)
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    start, stop = np.concatenate(starts), np.concatenate(stops)
    start, stop = np.clip(start, 0, n_frames), np.clip(stop, 0, n_frames)
    keep = stop > start
    return start[keep], stop[keep], [name for name, k in zip(names, keep, strict=True) if k]


def accumulate(
    chunks: Iterable[tuple[int, Mapping[str, np.ndarray]]],
    phonemes: Sequence[Mapping[str, Any]],
    words: Sequence[Mapping[str, Any]],
    n_frames: int,
    config: SelectivityConfig | None = None,
    geometry: FrameGeometry | None = None,
) -> dict[str, _Groups]:
    """Sufficient statistics of one stimulus from its streamed activations.

    Parameters
    ----------
    chunks : iterable of (start_frame, {layer name: [frames, units]})
        Consecutive blocks in frame order (``ActivationChunk.start_frame``, ``.numpy()``).
    phonemes, words : sequences of {label, start, end}
        The stimulus's alignment (s from the start of its audio).
    n_frames : int
        Frames of the whole stimulus.
    """
    config = config or SelectivityConfig()
    geometry = geometry or FrameGeometry()
    starts, stops, names = token_windows(phonemes, words, n_frames, geometry, config)
    stats: dict[str, _Groups] = {}
    streams: dict[str, _TokenStream] = {}
    for start, blocks in chunks:
        for layer, block in blocks.items():
            if layer not in stats:
                stats[layer] = _Groups(block.shape[1])
                streams[layer] = _TokenStream(starts, stops, stats[layer].ids(names))
            streams[layer].push(int(start), np.asarray(block, dtype=np.float64), stats[layer])
    return stats


def _welch(n1, m1, v1, n2, m2, v2) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t and two-sided p from counts, means and variances (broadcast); t = 0, p = 1
    where both variances are 0."""
    from scipy.stats import t as student_t

    se2 = v1 / n1 + v2 / n2
    ok = se2 > 1e-30
    safe = np.where(ok, se2, 1.0)
    t = np.where(ok, (m1 - m2) / np.sqrt(safe), 0.0)
    denominator = np.where(ok, (v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1), 1.0)
    df = np.where(ok, safe**2 / np.maximum(denominator, 1e-300), 1.0)
    p = np.where(ok, 2 * student_t.sf(np.abs(t), df), 1.0)
    return t, p


def _moments(count, total, squares):
    mean = total / count[:, None]
    variance = np.maximum(squares - count[:, None] * mean**2, 0.0) / np.maximum(
        count[:, None] - 1, 1
    )
    return mean, variance


@dataclass
class SelectivityResult:
    """Tables of :func:`summarize` (SIMULATED or real, as the input).

    ``units``: one row per AN; ``phonemes``: per AN and phoneme (n, mean, psi);
    ``classes``: per AN and phonetic class (feature, class, n, mean, t, p); ``layers``: per
    layer; ``summary``: the peaks and counts.
    """

    units: Any
    phonemes: Any
    classes: Any
    layers: Any
    summary: dict[str, Any]


def summarize(
    stats: Mapping[str, _Groups], tensor: str, config: SelectivityConfig
) -> SelectivityResult:
    """PSI, class and word statistics of every AN from the merged sufficient statistics."""
    import pandas as pd

    unit_rows, phoneme_rows, class_rows, layer_rows = [], [], [], []
    constant = 0
    for layer_name, groups in stats.items():
        layer = int(layer_name.rsplit("_", 1)[1])
        units = groups.units
        mean, var = _moments(groups.count, groups.total, groups.squares)
        names = groups.names
        phone = [i for i, n in enumerate(names) if n not in (WORD_ONSET, WORD_BOUNDARY)]
        tested = [i for i in phone if groups.count[i] >= config.min_tokens]
        psi = np.zeros((len(tested), units))
        n, m, v = groups.count[tested][:, None], mean[tested], var[tested]
        for row in range(len(tested) if len(tested) > 1 else 0):
            _, p = _welch(n[row], m[row], v[row], n, m, v)  # phoneme `row` against every phoneme
            p[row] = 1.0
            psi[row] = (p < config.alpha).sum(axis=0)
        for row, index in enumerate(tested):
            phoneme_rows.append(
                pd.DataFrame(
                    {"layer": layer, "tensor": tensor, "unit": np.arange(units),
                     "phoneme": names[index], "n": int(groups.count[index]),
                     "mean": mean[index], "psi": psi[row].astype(np.int64)}
                )
            )  # fmt: skip
        pooled = _pool(groups, phone)
        onset = _vs(groups, WORD_ONSET, pooled)
        boundary = _vs(groups, WORD_BOUNDARY, pooled)
        best = _best_classes(groups, phone, tensor, layer, config, class_rows)
        constant_units = pooled[2] <= 1e-30 if pooled is not None else np.ones(units, bool)
        constant += int(constant_units.sum())
        best_index = psi.argmax(axis=0) if len(tested) else np.zeros(units, np.int64)
        frame = pd.DataFrame(
            {
                "layer": layer,
                "tensor": tensor,
                "unit": np.arange(units),
                "psi_max": psi.max(axis=0).astype(np.int64) if len(tested) else 0,
                "psi_mean": psi.mean(axis=0) if len(tested) else 0.0,
                "best_phoneme": [names[tested[i]] for i in best_index] if len(tested) else None,
                "n_phoneme_tokens": int(groups.count[phone].sum()) if phone else 0,
                **best,
                "word_onset_t": onset[0],
                "word_onset_p": onset[1],
                "word_boundary_t": boundary[0],
                "word_boundary_p": boundary[1],
                "constant": constant_units,
            }
        )
        unit_rows.append(frame)
        pairs = max(len(tested) - 1, 1)
        layer_rows.append(
            {
                "layer": layer,
                "tensor": tensor,
                "units": units,
                "phonemes_tested": len(tested),
                "mean_normalized_psi": float(frame["psi_mean"].mean() / pairs),
                "share_class_selective": float(frame["best_class"].notna().mean()),
                "mean_abs_word_onset_t": float(np.abs(onset[0]).mean()),
                "share_word_onset": float((onset[1] < config.alpha).mean()),
                "mean_abs_word_boundary_t": float(np.abs(boundary[0]).mean()),
            }
        )
    if not unit_rows:
        raise ValueError("no activations were accumulated: no stimulus with an alignment")
    layers = pd.DataFrame(layer_rows).sort_values("layer", ignore_index=True)
    summary = {
        "tensor": tensor,
        "phoneme_peak_layer": int(layers.loc[layers["mean_normalized_psi"].idxmax(), "layer"]),
        "word_peak_layer": int(layers.loc[layers["mean_abs_word_onset_t"].idxmax(), "layer"]),
        "constant_units": constant,
        "config": asdict(config),
    }
    return SelectivityResult(
        units=pd.concat(unit_rows, ignore_index=True),
        phonemes=pd.concat(phoneme_rows, ignore_index=True) if phoneme_rows else pd.DataFrame(),
        classes=pd.DataFrame(class_rows) if class_rows else pd.DataFrame(),
        layers=layers,
        summary=summary,
    )


def _pool(groups: _Groups, members: Sequence[int]):
    """(count, mean, variance) of the union of ``members``' tokens, or None without tokens."""
    if not members or groups.count[list(members)].sum() < 2:
        return None
    count = groups.count[list(members)].sum()
    total = groups.total[list(members)].sum(axis=0)
    squares = groups.squares[list(members)].sum(axis=0)
    mean, var = _moments(np.array([count]), total[None], squares[None])
    return count, mean[0], var[0]


def _vs(groups: _Groups, name: str, reference) -> tuple[np.ndarray, np.ndarray]:
    """Welch t, p of group ``name`` against ``reference`` (t = 0, p = 1 when either is absent)."""
    zeros, ones = np.zeros(groups.units), np.ones(groups.units)
    if reference is None or name not in groups.index or groups.count[groups.index[name]] < 2:
        return zeros, ones
    own = _pool(groups, [groups.index[name]])
    return _welch(own[0], own[1], own[2], *reference)


def _best_classes(groups, phone, tensor, layer, config, rows) -> dict[str, Any]:
    """Per AN the most responsive significant phonetic class; class rows appended to ``rows``."""
    units = groups.units
    best_t = np.full(units, -np.inf)
    best = {"best_class": np.full(units, None, object), "best_class_feature": np.full(units, None, object),
            "best_class_t": np.zeros(units), "best_class_p": np.ones(units)}  # fmt: skip
    members: dict[tuple[str, str], list[int]] = {}
    for index in phone:
        classes = phonetic_class(groups.names[index])
        if classes is not None:
            for feature, value in zip(FEATURES, classes, strict=True):
                members.setdefault((feature, value), []).append(index)
    tests = []
    for (feature, value), own in sorted(members.items()):
        others = [i for (f, v), m in members.items() if f == feature and v != value for i in m]
        if (
            groups.count[own].sum() < config.min_tokens
            or groups.count[others].sum() < config.min_tokens
        ):
            continue
        a, b = _pool(groups, own), _pool(groups, others)
        t, p = _welch(a[0], a[1], a[2], *b)
        tests.append((feature, value, a, t, p))
    threshold = config.alpha / max(len(tests), 1)
    for feature, value, a, t, p in tests:
        rows.extend(
            {"layer": layer, "tensor": tensor, "unit": u, "feature": feature, "class": value,
             "n": int(a[0]), "mean": float(a[1][u]), "t": float(t[u]), "p": float(p[u])}
            for u in range(units)
        )  # fmt: skip
        better = (p < threshold) & (t > 0) & (t > best_t)
        best_t = np.where(better, t, best_t)
        best["best_class"][better] = value
        best["best_class_feature"][better] = feature
        best["best_class_t"][better] = t[better]
        best["best_class_p"][better] = p[better]
    return best


def _save_partial(path: Path, stats: Mapping[str, _Groups], key: dict) -> None:
    """One stimulus's statistics as ``.npz`` (through a temporary name, then a rename)."""
    arrays = {"key": np.array(json.dumps(key, sort_keys=True))}
    for layer, groups in stats.items():
        arrays[f"{layer}/names"] = np.array(groups.names, dtype=object).astype(str)
        arrays[f"{layer}/count"] = groups.count
        arrays[f"{layer}/total"] = groups.total
        arrays[f"{layer}/squares"] = groups.squares
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _partial_file(out: Path, stimulus_id: str) -> Path:
    """Where one stimulus's statistics are saved."""
    return out / PARTIAL_DIR / f"{_safe(stimulus_id)}.npz"


def _has_partial(path: Path, key: dict) -> bool:
    """Whether ``path`` holds statistics saved under ``key`` (reads only the key)."""
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as data:
        return str(data["key"]) == json.dumps(key, sort_keys=True)


def _load_partial(path: Path, key: dict, merged: dict[str, _Groups]) -> bool:
    """Merge a saved stimulus into ``merged`` if its key matches; False when absent or stale."""
    if not _has_partial(path, key):
        return False
    with np.load(path, allow_pickle=False) as data:
        layers = sorted({name.split("/")[0] for name in data.files if "/" in name})
        for layer in layers:
            total = data[f"{layer}/total"]
            groups = merged.setdefault(layer, _Groups(total.shape[1]))
            groups.merge(list(data[f"{layer}/names"]), data[f"{layer}/count"], total,
                         data[f"{layer}/squares"])  # fmt: skip
    return True


def _merge(merged: dict[str, _Groups], stats: Mapping[str, _Groups]) -> None:
    for layer, groups in stats.items():
        target = merged.setdefault(layer, _Groups(groups.units))
        target.merge(groups.names, groups.count, groups.total, groups.squares)


def check_alignments(rows: Iterable[Mapping[str, Any]], where: str) -> list[str]:
    """Stimulus ids of ``rows`` (``id``, ``words``, ``phonemes``); ValueError naming every
    stimulus without phonemes or words."""
    ids, missing = [], []
    for row in rows:
        ids.append(str(row["id"]))
        if not row.get("phonemes") or not row.get("words"):
            missing.append(str(row["id"]))
    if missing:
        raise ValueError(
            f"{where}: stimuli {missing} have no word/phoneme alignment; selectivity needs both "
            "(prepare the dataset with their align.json / TextGrid, or select other stimuli)"
        )
    if not ids:
        raise ValueError(f"{where}: no stimuli")
    return ids


def selectivity(
    dataset: str | Path,
    model: Any,
    out: str | Path,
    *,
    model_id: Mapping[str, str] | None = None,
    config: SelectivityConfig | None = None,
    extraction: Any = None,
    stimuli: Sequence[str] | None = None,
    progress: bool = True,
) -> SelectivityResult:
    """Selectivity of every AN of ``model`` over a prepared dataset's aligned stimuli.

    Parameters
    ----------
    dataset : str or Path
        A folder written by ``wav2brain prepare`` (its ``stimuli`` table: audio, words, phonemes).
    model : transformers model
        A wav2vec2-family model (:func:`wav2brain.features.taps.resolve_backbone`).
    out : str or Path
        Output folder: ``units.parquet``, ``phonemes.parquet``, ``classes.parquet``,
        ``layers.parquet``, ``summary.json``, ``figures/*.png``, and ``partial/`` (per-stimulus
        statistics reused by a rerun with the same model, settings and audio).
    model_id : mapping, optional
        :func:`wav2brain.features.cache.model_identity` of ``model`` (part of the resume key);
        default: its class and ``name_or_path``.
    config : SelectivityConfig, optional
    extraction : ExtractionConfig, optional
        Tensor, layers and chunking of the streamed activations.
    stimuli : sequence of str, optional
        Stimulus ids to use (default: all).

    Raises
    ------
    FileNotFoundError, ValueError
        Not a prepared folder; an unknown stimulus id; a stimulus without an alignment (named),
        before any model work.
    """
    from tqdm.auto import tqdm

    from wav2brain.data.hf_layout import decode_audio
    from wav2brain.features.cache import audio_sha256
    from wav2brain.features.extract import ExtractionConfig, iter_activations, prepare_audio
    from wav2brain.features.frontend import geometry_of
    from wav2brain.features.pipeline import extraction_key
    from wav2brain.features.taps import resolve_backbone

    config = config or SelectivityConfig()
    extraction = (extraction or ExtractionConfig()).for_model(model)
    dataset, out = Path(dataset), Path(out)
    rows = stimulus_alignments(dataset, stimuli)
    backbone = resolve_backbone(model)
    shape = geometry_of(backbone)
    geometry = FrameGeometry(stride=shape.stride, receptive_field=shape.receptive_field)
    identity = (
        dict(model_id)
        if model_id
        else {
            "class": type(backbone).__name__,
            "name_or_path": str(getattr(backbone.config, "_name_or_path", "")),
        }
    )
    ids = [str(r["id"]) for r in rows]
    mine = distributed.shard(ids)
    alignments = {str(r["id"]): r for r in rows}
    done: dict[str, dict] = {}
    desc = "selectivity" + distributed.describe()
    bar = tqdm(total=len(mine), desc=desc, unit="stimulus", disable=not progress)
    for row in _stream_audio(dataset, set(mine)):
        align = alignments[str(row["id"])]
        wave = prepare_audio(decode_audio(row["audio"]))
        key = {
            "model": identity,
            "stimulus_id": row["id"],
            "audio_sha256": audio_sha256(wave),
            "extraction": extraction_key(extraction),
            "selectivity": asdict(config),
        }
        path = _partial_file(out, row["id"])
        if not _has_partial(path, key):
            n_frames = shape.n_frames(wave.shape[0])
            chunks = (
                (chunk.start_frame, chunk.numpy())
                for chunk in iter_activations(model, wave, extraction)
            )
            stats = accumulate(
                chunks, align["phonemes"], align["words"], n_frames, config, geometry
            )
            _save_partial(path, stats, key)
        done[str(row["id"])] = key
        bar.update()
    bar.close()
    keys = distributed.merge(done, ids, "stimulus")
    merged: dict[str, _Groups] = {}
    for stimulus_id, key in keys.items():  # stimulus order: the sums one process makes
        path = _partial_file(out, stimulus_id)
        if not _load_partial(path, key, merged):
            raise ValueError(f"{path}: statistics of stimulus {stimulus_id!r} missing or stale")
    result = summarize(merged, extraction.tensor, config)
    if distributed.is_main():
        write_outputs(result, out)
    distributed.wait()
    return result


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def stimulus_alignments(dataset: str | Path, wanted: Sequence[str] | None = None) -> list[dict]:
    """Alignment rows (id, words, phonemes) of a prepared folder's selected stimuli.

    Raises FileNotFoundError for a folder ``prepare`` did not write, ValueError for unknown ids
    or stimuli without an alignment (named; :func:`check_alignments`). Reads no audio.
    """
    from datasets import load_dataset

    dataset = Path(dataset)
    if not (dataset / "README.md").is_file():
        raise FileNotFoundError(
            f"{dataset} is not a prepared dataset folder: no README.md (run `wav2brain prepare`)"
        )
    table = load_dataset(str(dataset), "stimuli", split="train", streaming=True)
    rows = [dict(r) for r in table.select_columns(["id", "words", "phonemes"])]
    ids = [str(r["id"]) for r in rows]
    if wanted:
        if unknown := sorted(set(wanted) - set(ids)):
            raise ValueError(f"stimuli {unknown} not in {dataset / 'stimuli'}: have {ids}")
        rows = [r for r in rows if str(r["id"]) in set(wanted)]
    check_alignments(rows, str(dataset / "stimuli"))
    return rows


def _stream_audio(dataset: Path, wanted: set[str]) -> Iterator[dict]:
    from datasets import load_dataset

    table = load_dataset(str(dataset), "stimuli", split="train", streaming=True)
    for row in table.select_columns(["id", "audio"]):
        if str(row["id"]) in wanted:
            yield row


def write_outputs(result: SelectivityResult, out: Path) -> None:
    """Parquet tables, ``summary.json`` and heat maps into ``out`` (each file atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("units", "phonemes", "classes", "layers"):
        table = getattr(result, name)
        path = out / f"{name}.parquet"
        tmp = partial_path(path)
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    write_text_atomic(json.dumps(result.summary, indent=2, default=str), out / "summary.json")
    _heat_maps(result, out / "figures")


def _heat_maps(result: SelectivityResult, folder: Path) -> None:
    """Per layer: units x phonemes (mean response z-scored over phonemes per unit, units sorted
    by their best phoneme) and units x phonetic classes (t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    kinds = [("phonemes", "phoneme", "mean", "response (z over phonemes)")]
    if len(result.classes):
        kinds.append(("classes", "class", "t", "Welch t vs other classes"))
    for kind, column, value, label in kinds:
        table = getattr(result, kind)
        if not len(table):
            continue
        for layer, rows in table.groupby("layer"):
            grid = rows.pivot_table(index="unit", columns=column, values=value, aggfunc="first")
            values = grid.to_numpy()
            if kind == "phonemes":
                spread = values.std(axis=1, keepdims=True)
                values = np.divide(values - values.mean(axis=1, keepdims=True), spread,
                                   out=np.zeros_like(values), where=spread > 0)  # fmt: skip
                values = values[np.argsort(values.argmax(axis=1), kind="stable")]
            figure, axis = plt.subplots(figsize=(max(6, 0.25 * values.shape[1]), 6))
            image = axis.imshow(values, aspect="auto", cmap="RdBu_r", interpolation="nearest")
            axis.set_xticks(range(values.shape[1]), grid.columns, rotation=90, fontsize=7)
            axis.set_ylabel("unit")
            axis.set_title(f"{result.summary['tensor']} layer {layer}: {kind}")
            figure.colorbar(image, ax=axis, label=label)
            figure.tight_layout()
            path = folder / f"{kind}_layer_{int(layer):02d}.png"
            tmp = path.with_name(f".{path.stem}.partial.png")
            figure.savefig(tmp, dpi=100)
            plt.close(figure)
            os.replace(tmp, path)


SELECTIVITY_PREFIX = "sel_"
"""Prefix of the selectivity columns joined into the anchoring tables (:func:`add_selectivity`)."""

JOINED_TABLES = ("units.parquet", "group.parquet")
"""Anchoring tables that get one row's selectivity per AN."""


def add_selectivity(anchoring_out: str | Path, selectivity_out: str | Path) -> list[Path]:
    """Join each AN's selectivity (``wav2brain selectivity``) into the anchoring tables.

    Every row of ``units.parquet`` and ``group.parquet`` in ``anchoring_out`` gets the columns of
    its AN (layer, tensor, unit) from ``selectivity_out/units.parquet``, prefixed
    :data:`SELECTIVITY_PREFIX` (``sel_psi_max``, ``sel_best_class``, ``sel_word_onset_t``, ...);
    the tables are rewritten atomically, so joining again replaces the earlier columns.

    Raises
    ------
    FileNotFoundError
        A missing table.
    ValueError
        When an anchored AN has no selectivity (the tensor or layers differ: both are named), so
        the tables never hold missing values.
    """
    import pandas as pd

    from wav2brain.encoding.dataset import layer_number, write_frame

    source = Path(selectivity_out) / "units.parquet"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `wav2brain selectivity` first")
    selected = pd.read_parquet(source).drop(columns=["constant"], errors="ignore")
    keys = ["layer", "tensor", "unit"]
    selected = selected.rename(
        columns={c: f"{SELECTIVITY_PREFIX}{c}" for c in selected.columns if c not in keys}
    ).rename(columns={"layer": "layer_number"})
    written = []
    for name in JOINED_TABLES:
        path = Path(anchoring_out) / name
        if not path.is_file():
            if name == "units.parquet":
                raise FileNotFoundError(f"{path} not found: run `wav2brain anchor` first")
            continue
        table = pd.read_parquet(path)
        table = table.drop(columns=[c for c in table.columns if c.startswith(SELECTIVITY_PREFIX)])
        if "tensor" in table.columns:
            tensors = sorted(set(table["tensor"]))
        else:  # group.parquet: the tensor of the units it summarises (one per anchoring run)
            table.insert(table.columns.get_loc("unit") + 1, "tensor", tensors[0])
        table["layer_number"] = [layer_number(str(v)) for v in table["layer"]]
        joined = table.merge(
            selected, on=["layer_number", "tensor", "unit"], how="left", indicator=True
        )
        missing = joined[joined["_merge"] == "left_only"]
        if len(missing):
            have = _tensor_layers(selected)
            want = _tensor_layers(missing)
            raise ValueError(
                f"{source} has no selectivity for the ANs of (tensor, layer) {want[:6]} anchored "
                f"in {path}; it holds {have[:6]}: run `wav2brain selectivity` with that tensor "
                "and those layers"
            )
        joined = joined.drop(columns=["_merge", "layer_number"])
        written.append(write_frame(joined, path))
    return written


def _tensor_layers(table) -> list[tuple[str, int]]:
    """The (tensor, layer number) pairs of a table's rows, sorted."""
    return sorted(
        {(str(t), int(n)) for t, n in zip(table["tensor"], table["layer_number"], strict=True)}
    )
