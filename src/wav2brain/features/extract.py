"""Streamed activations of every unit of a wav2vec2-family model over a whole stimulus.

A whole story (5 to 60 minutes) does not fit one forward pass: attention is quadratic in length and
the 50 Hz matrix of all units of an hour is several GB. :func:`iter_activations` therefore cuts the
stimulus into *cores* of ``chunk_seconds`` and runs the transformer on each core with
``context_seconds`` of extra frames on both sides (on the left only when ``causal``), keeping the
core's frames only. Each frame is kept exactly once and the blocks come out in order, so the
stitched result has exactly the frames of a single pass, ``(samples - 400) // 320 + 1``.

What is exact and what is not:

- Windows start on frame boundaries (multiples of the 320-sample stride), so a window's frames are
  the global frames, not shifted copies of them.
- The conv front end is local (400 samples per frame) and is computed once per frame, not once per
  window. The group norm of ``feat_extract_norm="group"`` models (wav2vec2-base, HuBERT-base,
  WavLM-base), which normalises over the whole input, uses statistics of the whole stimulus, as a
  single pass would (:mod:`wav2brain.features.frontend`); in causal mode, those of each window.
- Only the transformer sees a window. Its positional convolution reaches 64 frames (1.28 s) each
  side in wav2vec2-base (kernel 128); attention reaches the whole window. With context covering the
  whole stimulus the result equals a single pass to float precision (tested to < 1e-4). With less,
  it is an approximation whose sources are attention to frames beyond the context and, below
  1.28 s of context, the positional convolution.

Default ``chunk_seconds=10``, ``context_seconds=0.5`` (11-s windows), chosen with
``benchmarks/bench_extract.py`` against the usual windowed practice, ``Wav2Vec2Model`` over
consecutive 9-s windows in batches of 4. Per second of audio, wav2vec2-base spends about a third of
its work in the conv front end, which is computed once per frame here as there; the transformer's
work grows with the context, by ``(chunk + 2 * context) / chunk``, and its attention cost per frame
with the window length (quadratic: a 25-s window pays 2.8 times a 9-s one per frame). With 2.5 s of
context no core length reaches 0.9 of the peer's throughput (the best, near 22-s cores, about 0.77
by multiply-adds; 20-s cores measured 0.73 to 0.76). On random weights (a 1-minute clip, all 13
hidden states, mean absolute error over the single pass's mean absolute value) the peer is off by
8.2 %, 50 % overlapping 9-s windows keeping their centres by 5.6 % at twice the cost, and this
extractor by 6.2 % (9-s cores, no context: the peer's own computation, the difference being the
exact group-norm statistics), 4.3 % (10 s, 0.5 s: the default), 2.7 % (12 s, 0.75 s), 2.1 % (15 s, 1
s), 1.85 % (20 s, 1 s) and 1.8 % (20 s, 2.5 s). The default keeps 0.97 of the peer's throughput
(measured on one thread; 0.93 by multiply-adds) at half its error, with a margin above the 0.9
target (12-s cores with 0.75 s, 0.92 at 2.7 %, are a closer call). Its 0.5 s of context is less than
the positional convolution's reach (64 frames, 1.28 s, in wav2vec2-base), so frames within 0.78 s of
a core's edge see a truncated positional convolution, as every frame within 1.28 s of a peer
window's edge does. Random-weight attention is close to uniform, the worst case for chunking, and we
could not measure a trained checkpoint offline: where a study needs a tighter bound,
``context_seconds=1`` with ``chunk_seconds=15`` (2.1 %, 0.88 of the peer) or 20-s cores with 2.5 s
(every frame sees twice the positional reach; the previous default) cost 10 to 30 % more time;
compare two settings on your own checkpoint.

The model runs in eval mode inside ``torch.inference_mode``: in transformers 5 this turns off
dropout, LayerDrop (each encoder checks ``self.training and layerdrop > 0``) and SpecAugment masking
(``mask_time_prob > 0 and self.training``; we also never call ``_mask_hidden_states``). While an
iterator is alive the backbone stays in eval mode with inactive hooks; its training flag is
restored and the hooks removed when the iterator is exhausted or closed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from wav2brain.data.audio import normalize_audio, resample_audio
from wav2brain.features.chunking import Window, batch_windows, plan_windows
from wav2brain.features.frontend import TransformerInputs, geometry_of
from wav2brain.features.taps import TENSORS, Taps, layer_units, resolve_backbone

if TYPE_CHECKING:
    import torch
    from torch import nn

MODEL_SAMPLING_RATE = 16_000
"""Sampling rate (Hz) every wav2vec2-family checkpoint expects."""


@dataclass(frozen=True)
class ExtractionConfig:
    """What to extract and how to chunk it.

    Parameters
    ----------
    tensor
        ``"hidden_states"`` (layer outputs, default), ``"attention_output"`` (self-attention output
        before the feed-forward block) or ``"ffn_intermediate"`` (feed-forward intermediate after
        its activation); see :mod:`wav2brain.features.taps`.
    layers
        1-based transformer layers (0 = transformer input, hidden states only); ``None`` = all.
    chunk_seconds
        Length of each kept core (s); rounded to whole frames (20 ms). Default 10 s; the choice
        and its measured cost and error are in :mod:`wav2brain.features.extract`'s docstring.
    context_seconds
        Extra audio (s) the transformer sees on each side of a core (left side only if ``causal``).
        Default 0.5 s: 0.9 of the windowed peer's throughput at half its error on random weights;
        1 s (with 15-s cores) or more where a study needs a tighter bound (module docstring).
    causal
        Left context only: no frame sees audio after the end of its core. Frames inside a core
        still see the rest of the core; choose a short ``chunk_seconds`` for tighter causality.
    batch_size
        Windows per transformer forward pass.
    front_end_seconds
        Audio (s) per call of the conv front end. Bounds its memory (wav2vec2-base's first layers
        hold 512 channels at 3.2 kHz, about 6.5 MB per second of audio per copy) at no cost in
        exactness or speed (each call recomputes only 80 samples of overlap).
    dtype
        Compute dtype (``"float32"``, ``"bfloat16"``, ``"float16"``); ``None`` keeps the model's.
        Activations are always returned as float32.
    device
        Compute device (``"cpu"``, ``"cuda"``, ...); ``None`` keeps the model's. The backbone is
        moved in place when this or ``dtype`` differs from the model's.
    normalize
        Zero-mean, unit-variance audio before the model (``wav2brain.data.audio.normalize_audio``),
        as the checkpoint's feature extractor does with ``do_normalize``. The statistics are those of
        the whole stimulus, not of each window: a window of a story is a slice of one normalised
        recording, as a single pass over it would see. ``None`` (default) takes the model's
        ``config.do_normalize`` (:class:`~wav2brain.Wav2Vec2BrainEncodingConfig` carries it), or
        False for a model config without one: a plain ``Wav2Vec2Model`` keeps the setting in its
        checkpoint's ``preprocessor_config.json``, which ``wav2brain extract`` reads
        (:func:`wav2brain.modeling.checkpoint_do_normalize`); pass ``True`` for lv60-family models
        loaded by hand. Part of the cache key (see :meth:`for_model`).
    """

    tensor: str = "hidden_states"
    layers: tuple[int, ...] | None = None
    chunk_seconds: float = 10.0
    context_seconds: float = 0.5
    causal: bool = False
    batch_size: int = 4
    front_end_seconds: float = 5.0
    dtype: str | None = None
    device: str | None = None
    normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.tensor not in TENSORS:
            raise ValueError(
                f"ExtractionConfig.tensor must be one of {TENSORS}, got {self.tensor!r}"
            )
        if not self.chunk_seconds >= 0.02:
            raise ValueError(
                f"ExtractionConfig.chunk_seconds must be at least one frame (0.02 s), got "
                f"{self.chunk_seconds}"
            )
        if not self.context_seconds >= 0:
            raise ValueError(
                f"ExtractionConfig.context_seconds must be >= 0 s, got {self.context_seconds}"
            )
        if not self.front_end_seconds >= 0.02:
            raise ValueError(
                f"ExtractionConfig.front_end_seconds must be at least one frame (0.02 s), got "
                f"{self.front_end_seconds}"
            )
        if self.batch_size < 1:
            raise ValueError(f"ExtractionConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(
                f"ExtractionConfig.dtype must be float32, bfloat16, float16 or None, got {self.dtype!r}"
            )
        if self.normalize not in (None, True, False):
            raise ValueError(
                f"ExtractionConfig.normalize must be True, False or None, got {self.normalize!r}"
            )

    def for_model(self, model: Any) -> ExtractionConfig:
        """This config with ``normalize`` decided: as given, else the model's ``do_normalize``.

        Cache keys are built from the decided config, so features of raw and of normalised audio
        never share an entry.
        """
        if self.normalize is not None:
            return self
        config = getattr(resolve_backbone(model), "config", None)
        return replace(self, normalize=bool(getattr(config, "do_normalize", False)))

    def for_checkpoint(
        self, model: Any, name: str, revision: str | None = None
    ) -> ExtractionConfig:
        """:meth:`for_model` for a model loaded from checkpoint ``name``.

        A brain-encoding checkpoint carries ``do_normalize`` in its config; a plain wav2vec2 one
        in its ``preprocessor_config.json`` (False when it has none), read when ``normalize`` is
        not given. ``name`` is read as :func:`checkpoint_path` reads it (``~`` expanded).
        """
        from wav2brain.modeling import checkpoint_do_normalize

        if self.normalize is None and not hasattr(model.config, "do_normalize"):
            normalize = bool(checkpoint_do_normalize(checkpoint_path(name), revision=revision))
            return replace(self, normalize=normalize).for_model(model)
        return self.for_model(model)


@dataclass
class ActivationChunk:
    """Activations of consecutive frames ``[start_frame, stop_frame)``.

    ``activations`` maps layer names (``"layer_01"`` ...) to float32 tensors ``[frames, units]`` on
    the compute device; frame ``i`` is centred near ``(i * 320 + 200) / 16000`` s.
    """

    start_frame: int
    activations: dict[str, torch.Tensor]

    @property
    def n_frames(self) -> int:
        """Frames in this block."""
        return next(iter(self.activations.values())).shape[0]

    @property
    def stop_frame(self) -> int:
        """One past the last frame of this block."""
        return self.start_frame + self.n_frames

    def numpy(self) -> dict[str, np.ndarray]:
        """The activations as float32 numpy arrays on the CPU."""
        return {name: value.cpu().numpy() for name, value in self.activations.items()}


def checkpoint_path(spec: str, what: str = "--model") -> str:
    """A Hub id unchanged, or a local checkpoint folder with ``~`` expanded.

    ``spec`` is a folder when it exists or starts with ``.``, ``/`` or ``~``; such a folder must
    exist and hold ``config.json``. Anything else must have the form of a Hub id, ``name`` or
    ``owner/name`` (:func:`~wav2brain.publishing.hub.is_repo_id`). ``what`` names the option in
    the error.

    Raises
    ------
    FileNotFoundError
        A local path that does not exist, or is not a folder with ``config.json``.
    ValueError
        Neither an existing folder nor of the form of a Hub id (``nope/model/dir``).
    """
    from pathlib import Path

    from wav2brain.publishing.hub import is_repo_id

    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # ~user of no user here
        raise FileNotFoundError(f"{what} {spec} does not exist (no home folder for it)") from None
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what} {spec} is not a checkpoint folder: no config.json")
        return str(path)
    here = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{what} {spec} does not exist{here}")
    if not is_repo_id(spec):
        raise ValueError(f"{what} {spec}: not a folder here{here} and not a Hub id owner/name")
    return spec


def from_checkpoint(
    load: Callable[..., Any], spec: str, revision: str | None = None, what: str = "--model"
) -> Any:
    """``load(checkpoint, revision=revision)`` (a ``from_pretrained``) of :func:`checkpoint_path`.

    Raises
    ------
    FileNotFoundError
        ``load`` failed (``OSError``), in one line naming ``spec``: for a Hub id, that the Hub
        could not be reached (offline, no network) or has no such model (or revision).
    """
    from pathlib import Path

    from wav2brain.publishing.hub import error_line

    checkpoint = checkpoint_path(spec, what)
    try:
        return load(checkpoint, revision=revision)
    except OSError as error:
        reason = error_line(error)
        if Path(checkpoint).is_dir():
            raise FileNotFoundError(f"{what} {spec}: cannot load it ({reason})") from error
        at = f" at revision {revision}" if revision else ""
        raise FileNotFoundError(
            f"{what} {spec} is not a folder here, and the Hub could not be reached or has no "
            f"such model{at} ({reason})"
        ) from error


def load_model(spec: str, revision: str | None = None, what: str = "--model") -> Any:
    """The transformers model at a Hub id or folder (:func:`from_checkpoint`), by ``AutoModel``;
    whether it is a wav2vec2-family model is checked by its users."""
    from transformers import AutoModel

    return from_checkpoint(AutoModel.from_pretrained, spec, revision, what)


def prepare_audio(audio: np.ndarray, sampling_rate: int = MODEL_SAMPLING_RATE) -> np.ndarray:
    """A float32 16 kHz mono waveform ``[samples]`` from any rate and channel count.

    Parameters
    ----------
    audio
        ``[samples]`` or ``[samples, channels]`` (soundfile's layout); channels are averaged.
    sampling_rate
        Rate of ``audio`` (Hz); other rates are resampled with a polyphase filter
        (``wav2brain.data.audio.resample_audio``).
    """
    wave = np.asarray(audio)
    if wave.ndim == 2:
        if wave.shape[1] > wave.shape[0]:
            raise ValueError(
                f"audio of shape {wave.shape} looks like [channels, samples]; expected [samples] or "
                "[samples, channels] (soundfile's layout): pass audio.T"
            )
        wave = wave.mean(axis=1)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.number):
        raise ValueError(
            f"audio must be a numeric array [samples] or [samples, channels], got shape "
            f"{wave.shape} and dtype {wave.dtype}"
        )
    if sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be positive (Hz), got {sampling_rate}")
    wave = np.ascontiguousarray(wave, dtype=np.float32)  # no copy of float32 mono input
    if sampling_rate != MODEL_SAMPLING_RATE:
        wave = resample_audio(wave, sampling_rate, MODEL_SAMPLING_RATE)
    if not (np.isfinite(wave.min()) and np.isfinite(wave.max())):  # no [samples] temporary
        raise ValueError("audio contains NaN or infinite samples")
    return wave


def activation_units(model: Any, config: ExtractionConfig | None = None) -> dict[str, int]:
    """Layer names and unit counts :func:`iter_activations` yields for ``model`` and ``config``."""
    config = config or ExtractionConfig()
    return layer_units(resolve_backbone(model), config.tensor, config.layers)


def _to_device(backbone: nn.Module, config: ExtractionConfig) -> tuple[torch.device, torch.dtype]:
    import torch

    param = next(backbone.parameters())
    device = torch.device(config.device) if config.device else param.device
    dtype = getattr(torch, config.dtype) if config.dtype else param.dtype
    if param.device != device or param.dtype != dtype:
        backbone.to(device=device, dtype=dtype)
    return device, dtype


def iter_activations(
    model: Any,
    audio: np.ndarray,
    config: ExtractionConfig | None = None,
    sampling_rate: int = MODEL_SAMPLING_RATE,
) -> Iterator[ActivationChunk]:
    """Yield the activations of every unit of ``model`` over ``audio``, block by block, in order.

    Parameters
    ----------
    model
        A wav2vec2-family model (see :func:`wav2brain.features.taps.resolve_backbone`).
    audio
        Waveform ``[samples]`` or ``[samples, channels]`` at ``sampling_rate`` Hz.
    config
        Tensor, layers, chunking and audio normalisation (:class:`ExtractionConfig`).
    sampling_rate
        Rate of ``audio`` (Hz); converted to 16 kHz mono first, then normalised over the whole
        stimulus when ``config.normalize`` (or the model's ``do_normalize``) says so.

    Yields
    ------
    ActivationChunk
        Consecutive, non-overlapping blocks of at most ``chunk_seconds`` covering all
        ``n_frames = (samples - 400) // 320 + 1`` frames of a single pass.

    Raises
    ------
    ValueError
        For a model outside the wav2vec2 family (naming its class), bad layers, or audio shorter
        than the front end's receptive field (25 ms), before any model work.
    """
    config = (config or ExtractionConfig()).for_model(model)
    backbone = resolve_backbone(model)
    taps = Taps(backbone, config.tensor, config.layers)
    wave = prepare_audio(audio, sampling_rate)
    if config.normalize:
        wave = normalize_audio(wave)
    geometry = geometry_of(backbone)
    n_frames = geometry.n_frames(wave.shape[0])
    if n_frames < 1:
        raise ValueError(
            f"audio is {wave.shape[0] / MODEL_SAMPLING_RATE * 1000:.2f} ms long "
            f"({wave.shape[0]} samples at 16 kHz), shorter than the model's receptive field of "
            f"{geometry.receptive_field} samples "
            f"({geometry.receptive_field / MODEL_SAMPLING_RATE * 1000:.0f} ms)"
        )
    frame_rate = MODEL_SAMPLING_RATE / geometry.stride
    chunk = max(1, round(config.chunk_seconds * frame_rate))
    context = round(config.context_seconds * frame_rate)
    windows = plan_windows(n_frames, chunk, context, config.causal)
    piece = max(1, round(config.front_end_seconds * frame_rate))
    return _stream(backbone, taps, wave, windows, piece, config)


def _stream(
    backbone: nn.Module,
    taps: Taps,
    wave: np.ndarray,
    windows: Sequence[Window],
    piece: int,
    config: ExtractionConfig,
) -> Iterator[ActivationChunk]:
    """The generator behind :func:`iter_activations` (validation has already happened)."""
    import torch

    was_training = backbone.training
    backbone.eval()
    try:
        with taps:
            device, dtype = _to_device(backbone, config)
            with torch.inference_mode():
                audio = torch.from_numpy(wave).to(device=device, dtype=dtype)
                inputs = TransformerInputs(backbone, audio, piece, config.causal)
            for batch in batch_windows(windows, config.batch_size):
                with taps.recording([w.crop for w in batch], device), torch.inference_mode():
                    backbone.encoder(inputs(batch))
                for row, window in enumerate(batch):
                    yield ActivationChunk(
                        window.core_start, {name: taps.collected[name][row] for name in taps.names}
                    )
    finally:
        backbone.train(was_training)


def extract_activations(
    model: Any,
    audio: np.ndarray,
    config: ExtractionConfig | None = None,
    sampling_rate: int = MODEL_SAMPLING_RATE,
) -> dict[str, np.ndarray]:
    """All activations of a short stimulus at once: ``{layer name: float32 [frames, units]}``.

    Holds the whole 50 Hz matrix in memory, so use it for short audio (the simulator's stimuli,
    tests); stream long stories with :func:`iter_activations`.
    """
    blocks: dict[str, list[np.ndarray]] = {}
    for chunk in iter_activations(model, audio, config, sampling_rate):
        for name, value in chunk.numpy().items():
            blocks.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in blocks.items()}
