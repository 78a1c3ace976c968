"""Signals of the simulated dataset: MNI grid, clusters, planted feature regressors, noise.

Internal helpers of :mod:`wav2brain.simulation` (whose docstring states the generative model).
The ground-truth regressors use nilearn's ``compute_regressor`` and HRFs, deliberately independent
of :mod:`wav2brain.features.hrf`, so that analyses built on the latter are tested against them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wav2brain.simulation.configuration import ClusterSpec, PlantedUnit, SimulationConfig
    from wav2brain.simulation.stimuli import Stimulus

MODEL_RATE_HZ = 16000
"""Sample rate (Hz) of the model input and of the envelope frames."""
FRAME_HOP_16K = 320
"""Envelope frame step (samples at 16 kHz, 20 ms), wav2vec2's frame rate."""
FRAME_WINDOW_16K = 400
"""Envelope window (samples at 16 kHz, 25 ms), wav2vec2's receptive field."""


@dataclass(frozen=True)
class Grid:
    """The coarse MNI grid: brain mask, baseline intensity and the in-brain voxels."""

    mask: np.ndarray  # bool [X, Y, Z]
    baseline: np.ndarray  # float32 [V], in-brain intensities
    affine: np.ndarray  # [4, 4], voxel -> MNI mm
    ijk: np.ndarray  # int [V, 3]
    xyz_mm: np.ndarray  # float [V, 3]


def make_grid(voxel_size_mm: float, baseline: float) -> Grid:
    """Resample nilearn's 2-mm MNI152 template and brain mask (shipped, no download) to the grid.

    The grid keeps the template's field of view and origin; a voxel is in the brain when the
    linearly resampled mask is above 0.5.
    """
    import nibabel as nib
    from nilearn import datasets, image

    mask_2mm = datasets.load_mni152_brain_mask(resolution=2)
    template_2mm = datasets.load_mni152_template(resolution=2)
    extent = np.array(mask_2mm.shape) * np.abs(np.diag(mask_2mm.affine)[:3])
    shape = tuple(int(n) for n in np.ceil(extent / voxel_size_mm))
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = mask_2mm.affine[:3, 3]

    def resample(img):
        as_float = nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Resampling binary images")
            return image.resample_img(
                as_float,
                target_affine=affine,
                target_shape=shape,
                interpolation="continuous",
                force_resample=True,
                copy_header=True,
            ).get_fdata()

    mask = resample(mask_2mm) > 0.5
    if not mask.any():
        raise ValueError(f"voxel_size_mm={voxel_size_mm} leaves no brain voxel on the MNI grid")
    intensity = resample(template_2mm)[mask]
    intensity = np.maximum(intensity, 0.1 * intensity.mean())
    ijk = np.argwhere(mask)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    scaled = (intensity * baseline / intensity.mean()).astype(np.float32)
    return Grid(mask, scaled, affine, ijk, xyz)


def assign_clusters(xyz_mm: np.ndarray, clusters: tuple[ClusterSpec, ...]) -> np.ndarray:
    """Cluster label of each voxel (0 = noise only, k = ``clusters[k - 1]``); nearest centre wins."""
    centers = np.array([c.center_mm for c in clusters], dtype=float)
    radii = np.array([c.radius_mm for c in clusters], dtype=float)
    distance = np.linalg.norm(xyz_mm[:, None, :] - centers[None], axis=-1)
    distance[distance > radii] = np.inf
    nearest = distance.argmin(axis=1)
    labels = np.where(np.isfinite(distance.min(axis=1)), nearest + 1, 0)
    if missing := [c.name for k, c in enumerate(clusters) if not (labels == k + 1).any()]:
        raise ValueError(
            f"clusters {missing} hold no brain voxel on the grid: move their center_mm into the "
            "brain or increase radius_mm"
        )
    return labels


def build_model(config: SimulationConfig, seed: int):
    """The fixed tiny wav2vec2 model whose units are planted, initialised from ``seed``.

    The weights of the transformer layers' linear maps are redrawn from
    N(0, ``transformer_init_std``^2) (biases stay 0): see
    :attr:`SimulationConfig.transformer_init_std` for why the default init would make the
    layers indistinguishable.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**config.model_kwargs))
    if config.transformer_init_std is not None:
        with torch.no_grad():
            for layer in model.encoder.layers:
                attention, feed_forward = layer.attention, layer.feed_forward
                for linear in (
                    attention.q_proj,
                    attention.k_proj,
                    attention.v_proj,
                    attention.out_proj,
                    feed_forward.intermediate_dense,
                    feed_forward.output_dense,
                ):
                    linear.weight.normal_(0.0, config.transformer_init_std)
    return model.eval()


def _frame_geometry(model) -> tuple[int, int]:
    """Hop and receptive field (16-kHz samples) of the model's convolutional front end."""
    hop, field = 1, 1
    for kernel, stride in zip(model.config.conv_kernel, model.config.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


def planted_units(config: SimulationConfig) -> list[PlantedUnit]:
    """Every unit that drives a cluster, once, sorted by (tensor, layer, unit)."""
    units = {unit for cluster in config.clusters for unit in cluster.units}
    return sorted(units, key=lambda u: (u.tensor, u.layer, u.unit))


def design_units(config: SimulationConfig) -> list[PlantedUnit]:
    """The planted units plus every unit of each layer that holds a planted ``hidden_states``
    unit: the exact layer designs the recovery check's oracle fits (:mod:`.recovery`)."""
    from wav2brain.simulation.configuration import PlantedUnit

    planted = planted_units(config)
    layers = sorted({u.layer for u in planted if u.tensor == "hidden_states"})
    hidden = config.model_kwargs.get("hidden_size", 768)
    every = {PlantedUnit(layer, unit) for layer in layers for unit in range(hidden)}
    return sorted(every | set(planted), key=lambda u: (u.tensor, u.layer, u.unit))


def _unit_activations(
    model, stimulus: Stimulus, units: list[PlantedUnit], config: SimulationConfig
) -> np.ndarray:
    """Activations of ``units`` at every frame, float64 [frames, units].

    Streams the WAV through :func:`wav2brain.features.extract.iter_activations` (the extractor
    analyses use, on the raw waveform resampled to 16 kHz) ``chunk_s`` at a time with
    ``context_s`` of context on each side, one pass per tensor, keeping only the planted columns,
    so memory stays bounded for long stories and large models.
    """
    from wav2brain.features.extract import ExtractionConfig, iter_activations
    from wav2brain.features.taps import layer_name

    columns: list[np.ndarray] = [np.empty(0) for _ in units]
    for tensor in sorted({unit.tensor for unit in units}):
        wanted = [(index, unit) for index, unit in enumerate(units) if unit.tensor == tensor]
        extraction = ExtractionConfig(
            tensor=tensor,
            layers=tuple(sorted({unit.layer for _, unit in wanted})),
            chunk_seconds=config.chunk_s,
            context_seconds=config.context_s,
        )
        blocks = []
        for chunk in iter_activations(model, stimulus.waveform, extraction, stimulus.sampling_rate):
            block = chunk.numpy()
            blocks.append(np.stack([block[layer_name(u.layer)][:, u.unit] for _, u in wanted], 1))
        values = np.concatenate(blocks).astype(np.float64)
        for position, (index, _) in enumerate(wanted):
            columns[index] = values[:, position]
    return np.stack(columns, axis=1)


def feature_key(cluster: ClusterSpec) -> str:
    """Name of a cluster's regressor: ``"envelope"``, ``"hidden_states_layer2_unit5"``, two
    units joined by ``+``, ``"phoneme_onset_s_z"``."""
    if cluster.feature == "unit":
        return "+".join(unit.key for unit in cluster.units)
    if cluster.labels is not None:
        return f"{cluster.feature}_{'_'.join(cluster.labels)}"
    return cluster.feature


def _frame_events(n_frames: int, hop: int, field: int) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and durations (s) of 20-ms boxcars centred on each frame's window (16 kHz)."""
    step = hop / MODEL_RATE_HZ
    onsets = (np.arange(n_frames) * hop + field / 2) / MODEL_RATE_HZ - step / 2
    return onsets, np.full(n_frames, step)


def stimulus_regressors(
    stimulus: Stimulus, model, config: SimulationConfig
) -> dict[str, np.ndarray]:
    """HRF-convolved planted features of one story sampled at the volume times, [n_trs] each.

    Units: those of :func:`design_units` (every unit of a layer with a planted hidden state).

    Frame features (units; the envelope, RMS of 25-ms windows every 20 ms of the WAV resampled to
    16 kHz with ``scipy.signal.resample_poly``) enter nilearn's ``compute_regressor`` as boxcars
    one frame step long centred on each frame's window, word and phoneme onsets as unit impulses;
    the regressor grid is oversampled to at most 10 ms. Volume m is sampled at t = m * TR
    (slice_time_ref 0), and audio time 0 is scan time ``audio_onset_s``.
    """
    from nilearn.glm.first_level import compute_regressor
    from scipy.signal import resample_poly

    frame_times = np.arange(stimulus.n_trs) * config.tr_s
    oversampling = int(math.ceil(config.tr_s / 0.01))

    def regress(onsets, durations, amplitudes) -> np.ndarray:
        condition = np.vstack([onsets + stimulus.audio_onset_s, durations, amplitudes])
        regressor, _ = compute_regressor(
            condition, config.hrf_model, frame_times, oversampling=oversampling
        )
        return regressor[:, 0]

    regressors: dict[str, np.ndarray] = {}
    units = design_units(config)
    if units:
        activations = _unit_activations(model, stimulus, units, config)
        onsets, durations = _frame_events(activations.shape[0], *_frame_geometry(model))
        for column, unit in enumerate(units):
            regressors[unit.key] = regress(onsets, durations, activations[:, column])
    audio_16k = resample_poly(
        stimulus.waveform.astype(np.float64), MODEL_RATE_HZ, stimulus.sampling_rate
    )
    windows = np.lib.stride_tricks.sliding_window_view(audio_16k, FRAME_WINDOW_16K)[::FRAME_HOP_16K]
    onsets, durations = _frame_events(windows.shape[0], FRAME_HOP_16K, FRAME_WINDOW_16K)
    regressors["envelope"] = regress(onsets, durations, np.sqrt(np.mean(windows**2, axis=1)))
    tokens = {"word_onset": stimulus.words, "phoneme_onset": stimulus.phonemes}
    onset_features = [(kind, None) for kind in tokens]
    onset_features += [(c.feature, c.labels) for c in config.clusters if c.labels is not None]
    for kind, labels in onset_features:
        wanted = None if labels is None else {label.lower() for label in labels}
        onsets = np.array(
            [t.start for t in tokens[kind] if wanted is None or t.label.lower() in wanted],
            dtype=float,
        )
        key = kind if labels is None else f"{kind}_{'_'.join(labels)}"
        regressors[key] = regress(onsets, np.zeros_like(onsets), np.ones_like(onsets))
    return regressors


def normalise(per_story: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Divide each feature by its SD over all stories, then demean it within each story."""
    keys = per_story[0].keys()
    scale = {key: float(np.concatenate([story[key] for story in per_story]).std()) for key in keys}
    if flat := [key for key, value in scale.items() if value == 0.0]:
        raise ValueError(
            f"planted features {flat} are constant over every story; cannot scale them"
        )
    return [
        {key: (story[key] - story[key].mean()) / scale[key] for key in keys} for story in per_story
    ]


def with_mixtures(
    per_story: list[dict[str, np.ndarray]], clusters: tuple[ClusterSpec, ...]
) -> list[dict[str, np.ndarray]]:
    """Normalised features plus the regressor of each cluster driven by several units.

    The mixture is the sum of the units' normalised regressors, normalised again
    (:func:`normalise`), so that its weight is in % signal change per SD as every feature's.
    """
    mixed = {feature_key(c): [unit.key for unit in c.units] for c in clusters if len(c.units) > 1}
    if not mixed:
        return per_story
    sums = [
        {key: sum(story[u] for u in parts) for key, parts in mixed.items()} for story in per_story
    ]
    return [{**story, **extra} for story, extra in zip(per_story, normalise(sums), strict=True)]


def ar1_noise(
    rng: np.random.Generator, n_trs: int, n_voxels: int, ar1: float, std: float
) -> np.ndarray:
    """Stationary AR(1) noise, float32 [n_trs, n_voxels], lag-1 correlation ``ar1``, SD ``std``."""
    noise = rng.standard_normal((n_trs, n_voxels), dtype=np.float32)
    scale = np.float32(math.sqrt(1.0 - ar1**2))
    for t in range(1, n_trs):
        noise[t] = np.float32(ar1) * noise[t - 1] + scale * noise[t]
    noise *= np.float32(std)
    return noise


def legendre_drift(
    rng: np.random.Generator, n_trs: int, n_voxels: int, order: int, std: float
) -> np.ndarray:
    """Legendre polynomials of orders 1..``order`` over the run with N(0, std) weights.

    Returns float32 [n_trs, n_voxels].
    """
    if order == 0:
        return np.zeros((n_trs, n_voxels), dtype=np.float32)
    basis = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, n_trs), order)[:, 1:]
    weights = std * rng.standard_normal((order, n_voxels), dtype=np.float32)
    return basis.astype(np.float32) @ weights


def column_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns of ``a`` and ``b`` [T, V]."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
