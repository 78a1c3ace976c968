"""Model + stimulus audio + run timings → cached TR-grid features, one model pass per stimulus.

For each stimulus the runs' timings reduce to distinct (TR, phase) grids
(:func:`~wav2brain.features.resample.grid_phase`); grids already in the cache cost nothing, and
all missing ones are filled from a single streamed pass of ``iter_activations``, each block pushed
to one :class:`~wav2brain.features.hrf.FrameToTRResampler` per grid. :func:`run_features` then
places an entry on a run's TRs (and stacks the FIR delays).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wav2brain.data.timing import REFERENCE_COLUMN, check_reference
from wav2brain.features.cache import CachedFeatures, FeatureCache, FeatureKey, audio_sha256
from wav2brain.features.extract import (
    MODEL_SAMPLING_RATE,
    ExtractionConfig,
    activation_units,
    iter_activations,
    prepare_audio,
)
from wav2brain.features.hrf import FrameToTRResampler, grid_kernel
from wav2brain.features.resample import (
    TRGrid,
    TRGridConfig,
    align_to_run,
    grid_phase,
    run_grid,
    stimulus_grid,
)

RESULT_NEUTRAL_SETTINGS = ("batch_size", "device", "front_end_seconds")
"""Extraction settings that do not change the activations, left out of cache keys."""


@dataclass(frozen=True)
class RunTiming:
    """When a run samples a stimulus (the rule of :mod:`wav2brain.data.timing`).

    Parameters
    ----------
    tr_s : float
        Repetition time (s).
    onset_s : float
        Scan time (s) at which the stimulus starts, from the first stored TR.
    reference_s : float
        Slice-time reference (s in ``[0, tr)``) of the run's data: TR ``k`` samples the brain at
        stimulus time ``k tr + reference - onset``. Take it from the ``responses`` table
        (:meth:`from_row`); 0 is the acquisition start.
    """

    tr_s: float
    onset_s: float
    reference_s: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.tr_s) and self.tr_s > 0):
            raise ValueError(f"TR must be a positive number of seconds, got {self.tr_s!r}")
        if not np.isfinite(self.onset_s):
            raise ValueError(f"run onset must be a finite number of seconds, got {self.onset_s!r}")
        check_reference(self.reference_s, self.tr_s, "RunTiming")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RunTiming:
        """The timing of a ``responses`` row (``tr``, ``onset``, ``slice_time_reference``).

        A row without the reference column (a folder prepared by an older wav2brain) reads as
        0 s; :func:`wav2brain.data.timing.stored_references` logs that once per table.
        """
        reference = row.get(REFERENCE_COLUMN)
        return cls(float(row["tr"]), float(row["onset"]), float(reference or 0.0))

    @property
    def phase_s(self) -> float:
        """Sub-TR phase (s) of the run's samples on the stimulus (:func:`grid_phase`)."""
        return grid_phase(self.tr_s, self.onset_s, self.reference_s)

    def grid(self, n_trs: int) -> TRGrid:
        """The run's ``n_trs`` TRs in stimulus time (:func:`run_grid`)."""
        return run_grid(self.tr_s, self.onset_s, n_trs, self.reference_s)


def frame_geometry(model: Any, n_samples: int) -> tuple[float, int]:
    """Frame rate (Hz) and frame count of ``n_samples`` of 16 kHz audio for ``model``."""
    from wav2brain.features.frontend import geometry_of
    from wav2brain.features.taps import resolve_backbone

    geometry = geometry_of(resolve_backbone(model))
    return MODEL_SAMPLING_RATE / geometry.stride, geometry.n_frames(n_samples)


def extraction_key(config: ExtractionConfig) -> dict:
    """The extraction settings that determine the activations (for cache keys)."""
    settings = asdict(config)
    for name in RESULT_NEUTRAL_SETTINGS:
        settings.pop(name, None)
    return settings


def stimulus_features(
    model: Any,
    audio: np.ndarray,
    *,
    stimulus_id: str,
    model_id: Mapping[str, str],
    cache: FeatureCache,
    timings: Sequence[RunTiming],
    extraction: ExtractionConfig | None = None,
    grid_config: TRGridConfig | None = None,
    sampling_rate: int = MODEL_SAMPLING_RATE,
    on_frames: Callable[[int], None] | None = None,
) -> dict[RunTiming, CachedFeatures]:
    """Cached TR-grid features of one stimulus for every run timing; one model pass at most.

    Parameters
    ----------
    model : transformers model
        A wav2vec2-family model (``Wav2Vec2Model``, HuBERT, WavLM, ...).
    audio : array [samples] or [samples, channels]
        The stimulus at ``sampling_rate`` Hz (converted to 16 kHz mono).
    stimulus_id : str
        Dataset id of the stimulus.
    model_id : mapping
        :func:`~wav2brain.features.cache.model_identity` of ``model``.
    cache : FeatureCache
        Where entries are read and written.
    timings : sequence of RunTiming
        The runs' TR (s), onset (s) and slice-time reference (s); equal (TR, phase) pairs share
        an entry.
    extraction : ExtractionConfig, optional
        Tensor, layers and chunking.
    grid_config : TRGridConfig, optional
        HRF or FIR settings.
    sampling_rate : int
        Rate (Hz) of ``audio``.
    on_frames : callable, optional
        Called with the number of frames of each processed block (progress bars).

    Returns
    -------
    dict of RunTiming to CachedFeatures
        The entry serving each timing (stimulus-relative grid; see :func:`run_features`).
    """
    extraction = (extraction or ExtractionConfig()).for_model(model)  # normalize decided, keyed
    grid_config = grid_config or TRGridConfig()
    if not timings:
        raise ValueError(f"stimulus {stimulus_id!r}: no run timings (TR, onset) to sample at")
    activation_units(model, extraction)  # the model's family, tensor and layers, before any work
    wave = prepare_audio(audio, sampling_rate)
    frame_rate, n_frames = frame_geometry(model, wave.shape[0])
    wave_hash = audio_sha256(wave)
    keys: dict[RunTiming, FeatureKey] = {}
    grids: dict[str, tuple[FeatureKey, TRGrid]] = {}
    for timing in timings:
        phase = timing.phase_s
        key = FeatureKey(
            model=dict(model_id),
            stimulus_id=stimulus_id,
            audio_sha256=wave_hash,
            extraction=extraction_key(extraction),
            grid_config=grid_config.to_dict(),
            tr_s=float(timing.tr_s),
            phase_s=phase,
            frame_rate_hz=frame_rate,
        )
        keys[timing] = key
        grids[key.digest()] = (key, entry_grid(timing, n_frames, frame_rate, grid_config))
    entries = {digest: cache.get(key) for digest, (key, _) in grids.items()}
    missing = [digest for digest, entry in entries.items() if entry is None]
    if missing:
        computed = _compute(
            model,
            wave,
            extraction,
            grid_config,
            [grids[digest][1] for digest in missing],
            frame_rate,
            on_frames,
        )
        for digest, features in zip(missing, computed, strict=True):
            entries[digest] = cache.put(*grids[digest], features)
    return {timing: entries[key.digest()] for timing, key in keys.items()}


def entry_grid(
    timing: RunTiming, n_frames: int, frame_rate: float, grid_config: TRGridConfig
) -> TRGrid:
    """The stimulus-relative grid of the cache entry serving ``timing``.

    Rows at the run's phase (:attr:`RunTiming.phase_s`) over every time the kernel lets a
    stimulus of ``n_frames`` frames at ``frame_rate`` Hz reach (:func:`stimulus_grid`); run row
    ``k`` is entry row ``row_offset(entry_grid, timing.grid(n)) + k``.
    """
    support = grid_kernel(grid_config, timing.tr_s, frame_rate).support_s
    return stimulus_grid(timing.tr_s, timing.phase_s, n_frames / frame_rate, support)


def _compute(
    model: Any,
    wave: np.ndarray,
    extraction: ExtractionConfig,
    grid_config: TRGridConfig,
    grids: Sequence[TRGrid],
    frame_rate: float,
    on_frames: Callable[[int], None] | None,
) -> list[dict[str, np.ndarray]]:
    """One streamed pass of the model feeding one resampler per grid."""
    resamplers = [FrameToTRResampler(grid_config, grid, frame_rate) for grid in grids]
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in grids]

    def collect(index: int, rows: Mapping[str, np.ndarray]) -> None:
        for name, value in rows.items():
            parts[index].setdefault(name, []).append(value)

    for chunk in iter_activations(model, wave, extraction):
        blocks = chunk.numpy()
        for index, resampler in enumerate(resamplers):
            collect(index, resampler.push(chunk.start_frame, blocks))
        if on_frames is not None:
            on_frames(chunk.n_frames)
    for index, resampler in enumerate(resamplers):
        collect(index, resampler.finish())
    return [{name: np.concatenate(rows) for name, rows in part.items()} for part in parts]


def run_features(
    entry: CachedFeatures,
    timing: RunTiming,
    n_trs: int,
    grid_config: TRGridConfig,
    layers: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """An entry's features on a run's TRs: ``{layer: float32 [n_trs, units]}``.

    With ``method="fir"`` each layer stacks its delayed copies (``units * len(delays)`` columns,
    delay-major). TRs before the stimulus (or after its response) are zero.
    """
    grid = timing.grid(n_trs)
    delays = grid_config.delays if grid_config.method == "fir" else None
    names = list(entry.layers) if layers is None else list(layers)
    return {name: align_to_run(entry[name], entry.grid, grid, delays) for name in names}
