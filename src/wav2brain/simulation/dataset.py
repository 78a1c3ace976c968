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

* ``x_c,k`` is the planted feature of the voxel's cluster c: a unit (hidden state, attention
  output or feed-forward intermediate) of a fixed, seeded tiny wav2vec2 model whose transformer
  weights are drawn so that its layers differ (``transformer_init_std``; activations from
  :func:`wav2brain.features.extract.iter_activations`, the extractor analyses use, with its
  default chunking), the sum of two such units (each scaled to unit SD, then the sum), the
  acoustic envelope (RMS of 25-ms windows every 20 ms), or onsets of
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

The work is split: :mod:`~wav2brain.simulation.stimuli` (speech and lead-in),
:mod:`~wav2brain.simulation.signals` (grid, regressors, noise) and
:mod:`~wav2brain.simulation.files` (BIDS files and ground truth); this module holds the
configuration and the orchestration.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.atomic import replace_directory
from wav2brain.simulation.configuration import SimulationConfig
from wav2brain.simulation.files import (
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
from wav2brain.simulation.signals import (
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
    with_mixtures,
)
from wav2brain.simulation.speech import check_voices
from wav2brain.simulation.stimuli import Stimulus, make_stimulus

logger = logging.getLogger(__name__)


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
        replace_directory(tmp, out)
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
    regressors = with_mixtures(normalise(raw), config.clusters)

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
