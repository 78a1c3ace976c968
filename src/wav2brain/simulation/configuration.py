"""Configuration of the simulated study: sizes, stories, voices, clusters, noise (every number in one place)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from wav2brain.features.extract import ExtractionConfig

FEATURE_KINDS: tuple[str, ...] = ("unit", "envelope", "word_onset", "phoneme_onset")
LEAD_INS: tuple[str, ...] = ("music", "silence")
SIZES: tuple[str, ...] = ("test", "demo")


def tiny_model_kwargs() -> dict[str, Any]:
    """A tiny wav2vec2 config (hidden size 32, 2 layers) with wav2vec2-base's 50 Hz front end.

    The convolutional strides and kernels are those of wav2vec2-base, so frames are 20 ms apart and
    the receptive field is 400 samples (25 ms), while the channel counts fit a 2-core CPU. Dropout,
    layerdrop and time masking are off, so hidden states are a fixed function of the audio. It is the
    simulator's planted model and the model of the test suite.
    """
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 32),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        layerdrop=0.0,
        mask_time_prob=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
    )


@dataclass(frozen=True)
class PlantedUnit:
    """One artificial neuron of the planted model: a hidden dimension of one tensor of one layer.

    Attributes
    ----------
    layer : int
        For ``"hidden_states"``: index into the model's ``hidden_states`` (0 = input of the first
        transformer layer, l = output of layer l); for the other tensors the 1-based transformer
        layer (:mod:`wav2brain.features.taps`).
    unit : int
        The dimension: ``< hidden_size``, or ``< intermediate_size`` for ``"ffn_intermediate"``.
    tensor : str
        One of :data:`wav2brain.features.taps.TENSORS`.
    """

    layer: int
    unit: int
    tensor: str = "hidden_states"

    @property
    def key(self) -> str:
        """Regressor name: ``"hidden_states_layer2_unit5"``."""
        return f"{self.tensor}_layer{self.layer}_unit{self.unit}"


@dataclass(frozen=True)
class ClusterSpec:
    """A sphere of voxels driven by one planted feature.

    Attributes
    ----------
    name : str
        Label written to the ground truth.
    center_mm : tuple of float
        Centre in MNI152 coordinates (mm).
    radius_mm : float
        Voxels whose centres lie within this distance (mm) belong to the cluster; a voxel within
        reach of two clusters goes to the nearer centre.
    feature : str
        One of :data:`FEATURE_KINDS`.
    units : tuple of PlantedUnit
        For ``feature="unit"``: the one or more units that drive the cluster. With several, the
        cluster's regressor is the sum of the units' regressors (each scaled to unit SD first),
        scaled to unit SD again, so each unit explains an equal share of the planted signal.
    labels : tuple of str or None
        For ``"word_onset"`` / ``"phoneme_onset"``: only tokens with these labels count (compared
        lower-case; phonemes are espeak-ng IPA without stress marks, e.g. ``"s"``, ``"ʃ"``);
        None counts every token.
    """

    name: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    feature: str
    units: tuple[PlantedUnit, ...] = ()
    labels: tuple[str, ...] | None = None


SIBILANTS: tuple[str, ...] = ("s", "z", "ʃ", "ʒ", "tʃ", "dʒ")
"""espeak-ng IPA labels of the sibilant phonemes (a phoneme class with its own cortical sites)."""


def _unit(tensor: str, layer: int, unit: int) -> PlantedUnit:
    return PlantedUnit(layer, unit, tensor)


_HS2_5 = _unit("hidden_states", 2, 5)
_HS1_11 = _unit("hidden_states", 1, 11)
_HS2_20 = _unit("hidden_states", 2, 20)
_HS1_27 = _unit("hidden_states", 1, 27)
_ATT1_3 = _unit("attention_output", 1, 3)
_ATT2_14 = _unit("attention_output", 2, 14)
_FFN1_40 = _unit("ffn_intermediate", 1, 40)
_FFN2_9 = _unit("ffn_intermediate", 2, 9)

DEFAULT_CLUSTERS: tuple[ClusterSpec, ...] = (
    ClusterSpec("left_heschl_envelope", (-46.0, -20.0, 8.0), 12.0, "envelope"),
    ClusterSpec("right_heschl_unit", (48.0, -20.0, 8.0), 12.0, "unit", (_HS2_5,)),
    ClusterSpec("left_anterior_stg_unit", (-56.0, 4.0, -8.0), 12.0, "unit", (_HS1_11,)),
    ClusterSpec("left_ifg_units", (-48.0, 24.0, 4.0), 12.0, "unit", (_HS2_5, _HS2_20)),
    ClusterSpec("right_ifg_attention", (48.0, 24.0, 4.0), 12.0, "unit", (_ATT1_3,)),
    ClusterSpec("left_precentral_mixed", (-44.0, -8.0, 48.0), 12.0, "unit", (_FFN2_9, _HS1_11)),
    ClusterSpec("right_mtg_ffn", (62.0, -24.0, -16.0), 12.0, "unit", (_FFN1_40,)),
    ClusterSpec("left_angular_mixed", (-44.0, -66.0, 36.0), 12.0, "unit", (_ATT2_14, _HS2_20)),
    ClusterSpec("precuneus_unit", (0.0, -60.0, 44.0), 12.0, "unit", (_HS1_27,)),
    ClusterSpec(
        "right_temporal_pole_mixed", (40.0, 12.0, -30.0), 12.0, "unit", (_FFN1_40, _ATT1_3)
    ),
    ClusterSpec("right_posterior_stg_word", (58.0, -44.0, 14.0), 12.0, "word_onset"),
    ClusterSpec(
        "left_posterior_stg_sibilant",
        (-58.0, -46.0, 14.0),
        12.0,
        "phoneme_onset",
        labels=SIBILANTS,
    ),
)
"""The planted clusters: the envelope, word onsets, sibilant onsets, and 9 clusters driven by 8
units of the model (layers 1 and 2, all three tensors). Five units drive two clusters each and
four clusters are driven by two units (two of one layer and tensor, two mixing layers or
tensors). Planted AN-voxel pairs (:func:`wav2brain.simulation.truth.planted_pairs`): 54 at the
test size (12-mm grid, 4-6 voxels per cluster), 182 at the demo size (8-mm grid, 12-17)."""


@dataclass(frozen=True)
class SimulationConfig:
    """Every knob of the simulated dataset (defaults: the fast test size).

    Attributes
    ----------
    seed : int
        Master seed; text, music, model, weights, subjects and noise derive from it.
    n_subjects, n_stories, n_runs_per_story : int
        Subjects; stories (one BIDS task each); scans of each story per subject (> 1 adds ``run-N``).
    story_duration_s : float
        Speech per story (s); a story ends at the first sentence end past this length.
    voices, rates_wpm, pitches : tuple
        espeak-ng voices, speaking rates (words/min) and base pitches (0-100), cycled over stories.
    rate_jitter : float
        Each sentence is spoken at the story's rate times a factor drawn in [1 - rate_jitter,
        1 + rate_jitter] (fraction, < 1), so word rate varies within a story.
    lead_ins : tuple of str
        Cycled over stories: ``"music"`` puts ``music_duration_s`` of a synthetic chord melody and
        ``music_gap_s`` of silence at the start of the WAV, scanned from t = 0 (Narratives pieman:
        music 0-13 s, story from 15 s); ``"silence"`` starts the WAV, which holds the story only,
        ``silence_duration_s`` into the scan (Narratives tunnel: 3 s).
    post_stimulus_s : float
        Scan time after the audio ends (s), so the last responses are recorded.
    tr_s : float
        Repetition time (s).
    voxel_size_mm : float
        Isotropic voxel size of the MNI grid (mm); the 2-mm nilearn MNI152 mask is resampled to it.
    clusters : tuple of ClusterSpec
        The driven voxels; every other brain voxel is noise only.
    ceiling_range : tuple of float
        Target noise ceilings of driven voxels are drawn uniformly in this range (0 < low <= high < 1).
    noise_std_percent, noise_ar1 : float
        Stationary standard deviation (% signal change) and lag-1 autocorrelation of the noise.
    drift_percent : float
        Standard deviation of each drift polynomial's coefficient (% signal change).
    drift_order : int
        Highest Legendre polynomial order of the drift (0 = no drift).
    subject_gain_range, subject_noise_range : tuple of float
        Each subject's signal gain and noise scale are drawn uniformly in these ranges.
    baseline : float
        Mean in-brain BOLD intensity (arbitrary scanner units).
    hrf_model : str
        nilearn HRF model for the ground truth (``"glover"`` or ``"spm"``).
    model_kwargs : dict
        ``Wav2Vec2Config`` keyword arguments of the fixed, seeded model whose units are planted.
    transformer_init_std : float or None
        Standard deviation of the weights of every linear map inside the transformer layers
        (attention q/k/v/out projections, feed-forward dense layers); None keeps wav2vec2's
        ``initializer_range`` (0.02). With 0.02 in a 32-wide model each residual branch adds
        about 1e-4 of the residual's variance, so every layer is the identity plus a
        perturbation and the canonical correlations between layers are 0.999-1.0 (measured):
        no analysis could say which layer a voxel follows. With 1.0 (measured on 2 minutes of
        the simulator's speech, 6,500 frames) the largest canonical correlation between
        consecutive layers' hidden states is about 0.85 and their mean 0.26; the layer
        norms keep the activations' scale. Attention becomes sharp, so the units depend on the
        extraction's windows: they are defined by ``chunk_s`` and ``context_s``.
    chunk_s, context_s : float
        Unit activations are computed on ``chunk_s`` (s) of audio at a time with ``context_s`` (s)
        of audio on each side (``ExtractionConfig.chunk_seconds`` / ``context_seconds``). The
        defaults are ``ExtractionConfig``'s, so ``wav2brain extract`` with its default settings
        computes exactly the planted units.
    """

    seed: int = 0
    n_subjects: int = 2
    n_stories: int = 2
    n_runs_per_story: int = 1
    story_duration_s: float = 20.0
    voices: tuple[str, ...] = ("en-us", "en-gb-x-rp", "en-gb-scotland")
    rates_wpm: tuple[int, ...] = (165, 190, 150)
    pitches: tuple[int, ...] = (50, 40, 60)
    rate_jitter: float = 0.25
    lead_ins: tuple[str, ...] = ("music", "silence")
    music_duration_s: float = 6.0
    music_gap_s: float = 2.0
    silence_duration_s: float = 3.0
    post_stimulus_s: float = 12.0
    tr_s: float = 1.5
    voxel_size_mm: float = 12.0
    clusters: tuple[ClusterSpec, ...] = DEFAULT_CLUSTERS
    ceiling_range: tuple[float, float] = (0.3, 0.9)
    noise_std_percent: float = 1.0
    noise_ar1: float = 0.3
    drift_percent: float = 1.0
    drift_order: int = 2
    subject_gain_range: tuple[float, float] = (0.8, 1.2)
    subject_noise_range: tuple[float, float] = (0.8, 1.25)
    baseline: float = 1000.0
    hrf_model: str = "glover"
    model_kwargs: dict[str, Any] = field(default_factory=tiny_model_kwargs)
    transformer_init_std: float | None = 1.0
    chunk_s: float = ExtractionConfig.chunk_seconds
    context_s: float = ExtractionConfig.context_seconds

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> SimulationConfig:
        """Return the ``"test"`` (seconds to build) or ``"demo"`` (many minutes of story) preset.

        The demo has 4 subjects who each hear 3 stories of 4 min (12 min of speech) twice, on an
        8-mm grid (about 3,700 brain voxels); ``overrides`` replace any field of the preset.
        """
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        preset: dict[str, Any] = {}
        if size == "demo":
            preset = dict(
                n_subjects=4,
                n_stories=3,
                n_runs_per_story=2,
                story_duration_s=240.0,
                music_duration_s=13.0,
                music_gap_s=2.0,
                post_stimulus_s=15.0,
                voxel_size_mm=8.0,
            )
        return cls(**{**preset, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SimulationConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"SimulationConfig.{name} must be a finite number {bound}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not low <= value[0] <= value[1] <= high
    ):
        raise ValueError(
            f"SimulationConfig.{name} must be a pair (low, high) with {low} <= low <= high <= "
            f"{high}, got {value!r}"
        )


def _validate(config: SimulationConfig) -> None:
    """Raise ValueError naming the first bad field of ``config``."""
    from wav2brain.simulation.speech import ESPEAK_PITCH_RANGE, ESPEAK_RATE_RANGE_WPM

    _check_int("seed", config.seed, 0)
    _check_int("n_subjects", config.n_subjects, 1)
    _check_int("n_stories", config.n_stories, 1)
    _check_int("n_runs_per_story", config.n_runs_per_story, 1)
    _check_int("drift_order", config.drift_order, 0)
    for name in (
        "story_duration_s",
        "tr_s",
        "voxel_size_mm",
        "noise_std_percent",
        "baseline",
        "chunk_s",
    ):
        _check_positive(name, getattr(config, name))
    for name in (
        "music_duration_s",
        "music_gap_s",
        "silence_duration_s",
        "post_stimulus_s",
        "drift_percent",
        "context_s",
    ):
        _check_positive(name, getattr(config, name), allow_zero=True)
    if not isinstance(config.rate_jitter, int | float) or not 0.0 <= config.rate_jitter < 1.0:
        raise ValueError(
            f"SimulationConfig.rate_jitter must be a fraction in [0, 1), got {config.rate_jitter!r}"
        )
    if not isinstance(config.noise_ar1, int | float) or not 0.0 <= config.noise_ar1 < 1.0:
        raise ValueError(f"SimulationConfig.noise_ar1 must be in [0, 1), got {config.noise_ar1!r}")
    _check_range("ceiling_range", config.ceiling_range, 1e-6, 1 - 1e-6)
    _check_range("subject_gain_range", config.subject_gain_range, 1e-6, math.inf)
    _check_range("subject_noise_range", config.subject_noise_range, 1e-6, math.inf)
    for name, values in (("voices", config.voices), ("lead_ins", config.lead_ins)):
        if (
            not isinstance(values, tuple | list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise ValueError(
                f"SimulationConfig.{name} must be a non-empty tuple of names, got {values!r}"
            )
    if bad := [v for v in config.lead_ins if v not in LEAD_INS]:
        raise ValueError(f"SimulationConfig.lead_ins: {bad} not in {LEAD_INS}")
    for name, values, (low, high) in (
        ("rates_wpm", config.rates_wpm, ESPEAK_RATE_RANGE_WPM),
        ("pitches", config.pitches, ESPEAK_PITCH_RANGE),
    ):
        if (
            not isinstance(values, tuple | list)
            or not values
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
            )
        ):
            raise ValueError(
                f"SimulationConfig.{name} must be a non-empty tuple of integers in [{low}, {high}], "
                f"got {values!r}"
            )
    if config.hrf_model not in ("glover", "spm"):
        raise ValueError(
            f"SimulationConfig.hrf_model must be 'glover' or 'spm', got {config.hrf_model!r}"
        )
    if config.transformer_init_std is not None:
        _check_positive("transformer_init_std", config.transformer_init_std)
    _validate_clusters(config)


def _validate_clusters(config: SimulationConfig) -> None:
    if not config.clusters:
        raise ValueError("SimulationConfig.clusters must hold at least one ClusterSpec")
    n_layers = config.model_kwargs.get("num_hidden_layers", 12)
    hidden = config.model_kwargs.get("hidden_size", 768)
    sizes = {
        "hidden_states": hidden,
        "attention_output": hidden,
        "ffn_intermediate": config.model_kwargs.get("intermediate_size", 3072),
    }
    names = [cluster.name for cluster in config.clusters]
    if len(set(names)) != len(names):
        raise ValueError(f"SimulationConfig.clusters: names must be unique, got {names}")
    for cluster in config.clusters:
        where = f"SimulationConfig.clusters[{cluster.name!r}]"
        if cluster.feature not in FEATURE_KINDS:
            raise ValueError(
                f"{where}.feature must be one of {FEATURE_KINDS}, got {cluster.feature!r}"
            )
        if len(cluster.center_mm) != 3:
            raise ValueError(
                f"{where}.center_mm must be (x, y, z) in mm, got {cluster.center_mm!r}"
            )
        _check_positive(f"clusters[{cluster.name!r}].radius_mm", cluster.radius_mm)
        onset = cluster.feature in ("word_onset", "phoneme_onset")
        if cluster.labels is not None and (
            not onset
            or not isinstance(cluster.labels, tuple)
            or not cluster.labels
            or not all(isinstance(label, str) and label for label in cluster.labels)
        ):
            raise ValueError(
                f"{where}.labels must be None or a non-empty tuple of token labels, and only for "
                f"word_onset / phoneme_onset features; got {cluster.labels!r} for "
                f"{cluster.feature!r}"
            )
        if (cluster.feature == "unit") != bool(cluster.units):
            raise ValueError(
                f"{where}.units must name at least one PlantedUnit for feature 'unit' and none "
                f"for other features; got {cluster.units!r} for {cluster.feature!r}"
            )
        for unit in cluster.units:
            _validate_unit(where, unit, n_layers, sizes)
        if len(set(cluster.units)) != len(cluster.units):
            raise ValueError(f"{where}.units repeats a unit: {cluster.units!r}")


def _validate_unit(where: str, unit: Any, n_layers: int, sizes: dict[str, int]) -> None:
    from wav2brain.features.taps import TENSORS

    if not isinstance(unit, PlantedUnit):
        raise ValueError(f"{where}.units must hold PlantedUnit values, got {unit!r}")
    if unit.tensor not in TENSORS:
        raise ValueError(f"{where}: unit tensor must be one of {TENSORS}, got {unit.tensor!r}")
    lowest = 0 if unit.tensor == "hidden_states" else 1
    if (
        isinstance(unit.layer, bool)
        or not isinstance(unit.layer, int)
        or not (lowest <= unit.layer <= n_layers)
    ):
        raise ValueError(
            f"{where}: unit layer must be an integer in [{lowest}, {n_layers}] for "
            f"{unit.tensor} (0 = transformer input, hidden_states only), got {unit.layer!r}"
        )
    size = sizes[unit.tensor]
    if isinstance(unit.unit, bool) or not isinstance(unit.unit, int) or not 0 <= unit.unit < size:
        raise ValueError(
            f"{where}: unit must be an integer in [0, {size}) for {unit.tensor}, got {unit.unit!r}"
        )
