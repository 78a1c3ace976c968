"""A simulated audio-fMRI dataset with known ground truth, in the Narratives (ds002345) layout.

``simulate_dataset(out, config)`` writes a BIDS folder that the same loader reads as the real
Narratives data (SIMULATED, labelled as such in its README and ``dataset_description.json``)::

    stimuli/<task>_audio.wav                     espeak-ng speech (22050 Hz), music or silence lead-in
    stimuli/gentle/<task>/align.json, transcript.txt   Gentle-style word + phone alignment
    sub-XXX/func/sub-XXX_task-<task>[_run-N]_bold.nii.gz, _bold.json, _events.tsv
    participants.tsv, dataset_description.json, README
    derivatives/ground_truth/                    what drives which voxel (see :func:`simulate_dataset`)

Generative model (every number is a :class:`SimulationConfig` field). In scan time t (s), voxel v of
subject s in a run of story k has BOLD

    y_v(t) = b_v * (1 + (g_s * w_v * x_c(v),k(t) + n_v(t) + d_v(t)) / 100)

* ``x_c,k`` is the planted feature of the voxel's cluster c: a hidden unit of a fixed, seeded tiny
  wav2vec2 model (activations from :func:`wav2brain.features.extract.iter_activations`, the
  extractor analyses use), the acoustic envelope (RMS of 25-ms windows every 20 ms), or onsets of
  words or phonemes (unit impulses; all tokens, or those with chosen labels such as sibilants).
  Each is convolved with the HRF and sampled at the volume times t = m * TR with nilearn's
  ``compute_regressor``, independently of :mod:`wav2brain.features.hrf`. Each feature is divided
  by its standard deviation over all stories and demeaned per story, so w_v (> 0) is in percent
  signal change per standard deviation of the feature. Audio time 0 (the WAV's first sample,
  music included) is scan time ``audio_onset_s``: 0 with a music lead-in, ``silence_duration_s``
  with a silence lead-in, as the ``events.tsv`` rows say.
* ``n_v`` is AR(1) noise (coefficient ``noise_ar1``) of stationary standard deviation
  ``noise_std_percent * q_s``; ``d_v`` a slow drift (Legendre polynomials of order 1..``drift_order``
  over the run); ``g_s`` and ``q_s`` are the subject's gain and noise scale; ``b_v`` the MNI152
  template intensity scaled to a mean of ``baseline`` in the brain. Voxels outside the clusters are
  noise and drift only; voxels outside the brain mask are 0.
* Weights are chosen from target noise ceilings: for a voxel with target ceiling r drawn uniformly
  in ``ceiling_range``, ``w_v = noise_std_percent * r / sqrt(1 - r^2)``, so that for a subject with
  g = q = 1 the correlation of signal + noise with the signal is r. The realised ceiling of each
  subject, ``corr(signal, signal + n)`` over all its runs, is written too. The drift is left out of
  both because detrending / high-pass filtering, which every analysis applies, removes it.

The work is split: :mod:`~wav2brain.data.simulate_stimuli` (speech and lead-in),
:mod:`~wav2brain.data.simulate_signals` (grid, regressors, noise) and
:mod:`~wav2brain.data.simulate_files` (BIDS files and ground truth); this module holds the
configuration and the orchestration.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.data.simulate_files import (
    GROUND_TRUTH_DIR,
    events_rows,
    run_name,
    save_nifti,
    sidecar,
    to_volume,
    write_ground_truth,
    write_json,
    write_stimulus,
    write_top_level,
    write_tsv,
)
from wav2brain.data.simulate_signals import (
    Grid,
    ar1_noise,
    assign_clusters,
    build_model,
    column_correlation,
    feature_key,
    legendre_drift,
    make_grid,
    normalise,
    stimulus_regressors,
)
from wav2brain.data.simulate_stimuli import Stimulus, make_stimulus
from wav2brain.data.speech import check_voices

logger = logging.getLogger(__name__)

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
    layer, unit : int or None
        For ``feature="unit"``: index into the model's ``hidden_states`` (0 = input of the first
        transformer layer, l = output of layer l) and the hidden dimension.
    labels : tuple of str or None
        For ``"word_onset"`` / ``"phoneme_onset"``: only tokens with these labels count (compared
        lower-case; phonemes are espeak-ng IPA without stress marks, e.g. ``"s"``, ``"ʃ"``);
        None counts every token.
    """

    name: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    feature: str
    layer: int | None = None
    unit: int | None = None
    labels: tuple[str, ...] | None = None


SIBILANTS: tuple[str, ...] = ("s", "z", "ʃ", "ʒ", "tʃ", "dʒ")
"""espeak-ng IPA labels of the sibilant phonemes (a phoneme class with its own cortical sites)."""

DEFAULT_CLUSTERS: tuple[ClusterSpec, ...] = (
    ClusterSpec("left_heschl_envelope", (-46.0, -20.0, 8.0), 12.0, "envelope"),
    ClusterSpec("right_heschl_unit", (48.0, -20.0, 8.0), 12.0, "unit", layer=2, unit=5),
    ClusterSpec("left_anterior_stg_unit", (-56.0, 4.0, -8.0), 12.0, "unit", layer=1, unit=11),
    ClusterSpec("right_posterior_stg_word", (58.0, -44.0, 14.0), 12.0, "word_onset"),
    ClusterSpec(
        "left_posterior_stg_sibilant",
        (-58.0, -46.0, 14.0),
        12.0,
        "phoneme_onset",
        labels=SIBILANTS,
    ),
)


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
    chunk_s, context_s : float
        Unit activations are computed on ``chunk_s`` (s) of audio at a time with ``context_s`` (s)
        of audio on each side (``ExtractionConfig.chunk_seconds`` / ``context_seconds``).
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
    chunk_s: float = 20.0
    context_s: float = 5.0

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
    from wav2brain.data.speech import ESPEAK_PITCH_RANGE, ESPEAK_RATE_RANGE_WPM

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
    _validate_clusters(config)


def _validate_clusters(config: SimulationConfig) -> None:
    if not config.clusters:
        raise ValueError("SimulationConfig.clusters must hold at least one ClusterSpec")
    n_layers = config.model_kwargs.get("num_hidden_layers", 12)
    hidden = config.model_kwargs.get("hidden_size", 768)
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
        if cluster.feature == "unit":
            if not isinstance(cluster.layer, int) or not 0 <= cluster.layer <= n_layers:
                raise ValueError(
                    f"{where}.layer must be an integer in [0, {n_layers}] (hidden_states index), "
                    f"got {cluster.layer!r}"
                )
            if not isinstance(cluster.unit, int) or not 0 <= cluster.unit < hidden:
                raise ValueError(
                    f"{where}.unit must be an integer in [0, {hidden}) (hidden dimension), "
                    f"got {cluster.unit!r}"
                )


def _seeds(seed: int, n_stories: int) -> dict[str, Any]:
    """Independent child seeds of the master ``seed`` for each random part of the simulation."""
    stories, model, weights, subjects, noise = np.random.SeedSequence(seed).spawn(5)
    return {
        "stories": [int(s) for s in stories.generate_state(n_stories)],
        "model": int(model.generate_state(1)[0]),
        "weights": np.random.default_rng(weights),
        "subjects": np.random.default_rng(subjects),
        "noise": noise,
    }


def _write_bold_runs(
    root: Path,
    config: SimulationConfig,
    grid: Grid,
    stimuli: list[Stimulus],
    design: list[np.ndarray],
    driven: np.ndarray,
    weights: np.ndarray,
    subjects: list[dict[str, Any]],
    noise_seed: np.random.SeedSequence,
) -> list[np.ndarray]:
    """Write every subject's runs (BOLD, sidecar, events); return realised ceilings [V] per subject.

    ``design[k]`` is story k's planted regressor of each driven voxel, [n_trs, len(driven)].
    """
    from tqdm.auto import tqdm

    run_seeds = iter(noise_seed.spawn(len(subjects) * len(stimuli) * config.n_runs_per_story))
    ceilings = []
    total = len(subjects) * len(stimuli) * config.n_runs_per_story
    progress = tqdm(total=total, desc="simulating BOLD runs", unit="run", leave=False)
    for subject in subjects:
        signal_parts, noise_parts = [], []
        for stimulus, regressors in zip(stimuli, design, strict=True):
            for run in range(1, config.n_runs_per_story + 1):
                rng = np.random.default_rng(next(run_seeds))
                n_trs, n_voxels = stimulus.n_trs, grid.ijk.shape[0]
                noise_std = config.noise_std_percent * subject["noise_scale"]
                noise = ar1_noise(rng, n_trs, n_voxels, config.noise_ar1, noise_std)
                drift = legendre_drift(
                    rng, n_trs, n_voxels, config.drift_order, config.drift_percent
                )
                signal = subject["gain"] * weights * regressors
                change = noise + drift
                change[:, driven] += signal
                bold = grid.baseline[:, None] * (1.0 + change.T / 100.0)
                name = run_name(subject["participant_id"], stimulus.task, run, config)
                func = root / subject["participant_id"] / "func"
                save_nifti(func / f"{name}_bold.nii.gz", to_volume(grid, bold, np.float32), grid,
                            config.tr_s)  # fmt: skip
                write_json(func / f"{name}_bold.json", sidecar(stimulus, config))
                write_tsv(func / f"{name}_events.tsv", events_rows(stimulus))
                signal_parts.append(signal)
                noise_parts.append(noise[:, driven])
                progress.update()
        ceiling = np.zeros(grid.ijk.shape[0])
        ceiling[driven] = column_correlation(
            np.concatenate(signal_parts), np.concatenate(signal_parts) + np.concatenate(noise_parts)
        )
        ceilings.append(ceiling)
    progress.close()
    return ceilings


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"--out {out} exists and is not empty; choose another folder or pass overwrite "
            "(--overwrite) to replace it"
        )


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing ``out`` only now."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def simulate_dataset(
    out: str | Path, config: SimulationConfig | None = None, *, overwrite: bool = False
) -> Path:
    """Write a SIMULATED Narratives-layout BIDS dataset with its ground truth to ``out``.

    Everything is written into a hidden temporary sibling folder (``.<out>.partial-*``) that is
    renamed to ``out`` at the end, so an interrupted run leaves no folder that looks complete;
    running again removes such leftovers and redoes the work (the same seed gives identical
    files, so nothing is lost by starting over).

    Parameters
    ----------
    out : str or Path
        Dataset folder to create; must be absent or empty unless ``overwrite``.
    config : SimulationConfig, optional
        Every knob; default the fast test size (:meth:`SimulationConfig.from_size`).
    overwrite : bool
        Replace a non-empty ``out`` (only once the new dataset is complete).

    Returns
    -------
    Path
        ``out``.
    """
    config = SimulationConfig() if config is None else config
    if not isinstance(config, SimulationConfig):
        raise ValueError(f"config must be a SimulationConfig, got {type(config).__name__}")
    out = Path(out)
    _check_out(out, overwrite)
    check_voices(config.voices)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out.parent.glob(f".{out.name}.partial-*")):
        logger.warning("removing %s left by an interrupted simulation", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_dataset(tmp, config)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote SIMULATED dataset to %s", out)
    return out


def _write_dataset(root: Path, config: SimulationConfig) -> None:
    """Generate everything into ``root``: grid, model, stories, weights, subjects, runs, truth."""
    from tqdm.auto import tqdm

    seeds = _seeds(config.seed, config.n_stories)
    grid = make_grid(config.voxel_size_mm, config.baseline)
    labels = assign_clusters(grid.xyz_mm, config.clusters)
    model = build_model(config, seeds["model"])
    stimuli, raw = [], []
    for index in tqdm(range(config.n_stories), desc="synthesising stories", leave=False):
        stimulus = make_stimulus(config, index, seeds["stories"][index])
        stimuli.append(stimulus)
        raw.append(stimulus_regressors(stimulus, model, config))
        write_stimulus(root, stimulus)
    regressors = normalise(raw)

    driven = np.flatnonzero(labels)
    clusters = [config.clusters[label - 1] for label in labels[driven]]
    keys = [feature_key(cluster) for cluster in clusters]
    target = seeds["weights"].uniform(*config.ceiling_range, size=driven.size)
    weights = config.noise_std_percent * target / np.sqrt(1.0 - target**2)
    design = [np.stack([story[key] for key in keys], axis=1) for story in regressors]
    rng = seeds["subjects"]
    subjects = [
        {
            "participant_id": f"sub-{index + 1:03d}",
            "gain": float(rng.uniform(*config.subject_gain_range)),
            "noise_scale": float(rng.uniform(*config.subject_noise_range)),
        }
        for index in range(config.n_subjects)
    ]
    ceilings = _write_bold_runs(
        root, config, grid, stimuli, design, driven, weights, subjects, seeds["noise"]
    )
    write_top_level(root, config, stimuli, subjects)
    truth = root / GROUND_TRUTH_DIR
    model.save_pretrained(truth / "model")
    write_ground_truth(
        truth, config, grid, labels, driven, clusters, weights, target, stimuli, regressors,
        subjects, ceilings,
    )  # fmt: skip
