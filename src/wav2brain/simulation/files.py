"""Files of the simulated dataset: the BIDS side (Narratives layout) and the ground truth.

Internal helpers of :mod:`wav2brain.simulation`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wav2brain.simulation.signals import feature_key

if TYPE_CHECKING:
    from wav2brain.simulation.configuration import ClusterSpec, SimulationConfig
    from wav2brain.simulation.signals import Grid
    from wav2brain.simulation.stimuli import Stimulus

GROUND_TRUTH_DIR = Path("derivatives") / "ground_truth"
"""Where the ground truth goes, relative to the dataset root."""
PLANTED_PAIRS_FILE = "planted_pairs.tsv"
"""One row per planted (unit, voxel) pair, in the ground truth folder."""
PLANTED_PAIR_COLUMNS = ("voxel", "cluster", "layer", "tensor", "unit", "regressor", "i", "j", "k")
"""Columns of :data:`PLANTED_PAIRS_FILE`."""


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def write_tsv(
    path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None
) -> None:
    """Write ``rows`` as a BIDS TSV (``n/a`` for missing values), creating the folder.

    ``columns`` fixes the header (and its order), so that a table without rows keeps it.
    """
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=None if columns is None else list(columns)).to_csv(
        path, sep="\t", index=False, na_rep="n/a", float_format="%.10g"
    )


def save_nifti(path: Path, data: np.ndarray, grid: Grid, tr_s: float | None = None) -> None:
    """Save a volume (or a 4-D run with ``tr_s`` as the 4th zoom) on the grid, MNI-coded."""
    import nibabel as nib

    image = nib.Nifti1Image(data, grid.affine)
    image.set_sform(grid.affine, code="mni")
    image.set_qform(grid.affine, code="mni")
    zooms = tuple(float(z) for z in np.abs(np.diag(grid.affine))[:3])
    image.header.set_zooms(zooms + ((tr_s,) if tr_s is not None else ()))
    image.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def to_volume(grid: Grid, values: np.ndarray, dtype) -> np.ndarray:
    """In-brain ``values`` [V] (or [V, T]) scattered into the grid, zeros outside the brain."""
    volume = np.zeros(grid.mask.shape + values.shape[1:], dtype=dtype)
    volume[grid.mask] = values
    return volume


def write_stimulus(root: Path, stimulus: Stimulus) -> None:
    """The WAV (16-bit PCM), its Gentle ``align.json`` and ``transcript.txt``."""
    import soundfile as sf

    from wav2brain.data.alignments import Alignment, write_gentle_json

    wav = root / "stimuli" / f"{stimulus.task}_audio.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav, stimulus.waveform, stimulus.sampling_rate, subtype="PCM_16")
    gentle = root / "stimuli" / "gentle" / stimulus.task
    alignment = Alignment(words=stimulus.words, phonemes=stimulus.phonemes)
    write_gentle_json(alignment, gentle / "align.json", stimulus.transcript)
    (gentle / "transcript.txt").write_text(stimulus.transcript + "\n", encoding="utf-8")


def events_rows(stimulus: Stimulus) -> list[dict[str, Any]]:
    """Narratives ``events.tsv`` rows: the music (if any) and the story, in scan time (s)."""
    wav = f"{stimulus.task}_audio.wav"
    rows = []
    if stimulus.lead_in == "music":
        rows.append(
            {"onset": stimulus.audio_onset_s, "duration": stimulus.music_duration_s,
             "trial_type": "music", "stim_file": wav}
        )  # fmt: skip
    rows.append(
        {"onset": round(stimulus.audio_onset_s + stimulus.story_offset_s, 6),
         "duration": round(stimulus.story_duration_s, 6), "trial_type": "story", "stim_file": wav}
    )  # fmt: skip
    return rows


def run_name(subject: str, task: str, run: int, config: SimulationConfig) -> str:
    """BIDS run stem ``sub-XXX_task-<task>[_run-N]`` (``run-`` only with several scans)."""
    run_part = f"_run-{run}" if config.n_runs_per_story > 1 else ""
    return f"{subject}_task-{task}{run_part}"


def sidecar(stimulus: Stimulus, config: SimulationConfig) -> dict[str, Any]:
    """The run\'s ``_bold.json``: RepetitionTime (s), TaskName and a SIMULATED description."""
    return {
        "RepetitionTime": config.tr_s,
        "TaskName": stimulus.task,
        "TaskDescription": (
            f"SIMULATED: passively listened to synthesised story '{stimulus.task}' "
            f"(espeak-ng voice {stimulus.voice}, {stimulus.rate_wpm} words/min)"
        ),
    }


_README = """# wav2brain simulated Narratives-style dataset — SIMULATED DATA

Every file here is SIMULATED by `wav2brain simulate` (seed {seed}); no person was scanned.
Stories are sentences of a small seeded grammar spoken by espeak-ng; the BOLD is generated on a
{voxel} mm MNI152 grid from planted features (units of a fixed, seeded wav2vec2 model saved in
`derivatives/ground_truth/model`: hidden states, attention outputs and feed-forward intermediates
of its layers, as `wav2brain extract` computes them with chunks of {chunk} s and {context} s of
context; the acoustic envelope; onsets of words and of chosen phonemes, e.g. sibilants) convolved with the {hrf} HRF, plus AR(1) noise, slow drift and subject
differences. The planted features are correlated with one another, as in real speech (see the
regressor tables); a voxel's ground truth is its regressor in `voxels.tsv` (one feature, or
the normalised sum of two units).

Layout as OpenNeuro ds002345 (Narratives): `stimuli/<task>_audio.wav` (music or silence lead-in
before the story; the WAV starts at the onset of the first events row that names it),
`stimuli/gentle/<task>/align.json`, and per run `_bold.nii.gz`, `_bold.json` (RepetitionTime,
TaskName) and `_events.tsv` (onset, duration, trial_type music/story, stim_file).

Ground truth in `derivatives/ground_truth/`:
- `voxels.tsv`: each driven voxel (grid index i j k, MNI x y z in mm, cluster, feature, its
  regressor column, number of driving units, weight in % signal change per SD of the regressor,
  target noise ceiling, `voxel`: its index in the brain mask's C order, which is the column of
  a dataset prepared with `--mask brain_mask.nii.gz`);
- `planted_pairs.tsv`: one row per planted (unit, voxel) pair: voxel, cluster, layer (the
  `hidden_states` index, or the 1-based layer of the other tensors), tensor, unit, the unit's
  regressor column, i j k; a cluster driven by two units has two rows per voxel
  (`wav2brain.simulation.truth.planted_pairs` reads it);
- `clusters.nii.gz` + `clusters.tsv`: cluster label map (0 = noise only) and what drives each;
- `target_noise_ceiling.nii.gz`, `sub-XXX_noise_ceiling.nii.gz`: the ceiling the weights were
  chosen for, and the realised corr(signal, signal + noise) of each subject over all its runs
  (drift excluded: detrending removes it);
- `brain_mask.nii.gz`; `subjects.tsv` (gain, noise scale); `stories.tsv` (voice, rate, timing);
- `task-<task>_regressors.tsv`: every feature, HRF-convolved and sampled at the TR, as planted;
- `simulation.json`: the full configuration; `model/`: the wav2vec2 model (save_pretrained).
"""


def write_top_level(
    root: Path, config: SimulationConfig, stimuli: list[Stimulus], subjects: list[dict]
) -> None:
    """``dataset_description.json``, ``README`` and ``participants.tsv`` (Narratives columns)."""
    from wav2brain import __version__

    tasks = ",".join(stimulus.task for stimulus in stimuli)
    write_json(
        root / "dataset_description.json",
        {
            "Name": "wav2brain simulated Narratives-style dataset (SIMULATED)",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["wav2brain simulate"],
            "GeneratedBy": [
                {
                    "Name": "wav2brain",
                    "Version": __version__,
                    "Description": "SIMULATED data with known ground truth (derivatives/ground_truth)",
                }
            ],
        },
    )
    (root / "README").write_text(
        _README.format(
            seed=config.seed,
            voxel=config.voxel_size_mm,
            hrf=config.hrf_model,
            chunk=config.chunk_s,
            context=config.context_s,
        ),
        encoding="utf-8",
    )
    n_tasks = len(stimuli)
    write_tsv(
        root / "participants.tsv",
        [
            {
                "participant_id": subject["participant_id"],
                "age": ",".join(["n/a"] * n_tasks),
                "sex": ",".join(["n/a"] * n_tasks),
                "task": tasks,
                "condition": ",".join(["n/a"] * n_tasks),
            }
            for subject in subjects
        ],
    )


def write_ground_truth(
    truth: Path,
    config: SimulationConfig,
    grid: Grid,
    labels: np.ndarray,
    driven: np.ndarray,
    clusters: list[ClusterSpec],
    weights: np.ndarray,
    target: np.ndarray,
    stimuli: list[Stimulus],
    regressors: list[dict[str, np.ndarray]],
    subjects: list[dict[str, Any]],
    ceilings: list[np.ndarray],
) -> None:
    """Tables, maps and the configuration that say which feature drives which voxel, how much."""
    write_json(
        truth / "dataset_description.json",
        {
            "Name": "wav2brain simulation ground truth (SIMULATED)",
            "BIDSVersion": "1.8.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "wav2brain simulate"}],
        },
    )
    write_json(
        truth / "simulation.json",
        {
            "config": config.to_dict(),
            "grid_affine": grid.affine.tolist(),
            "grid_shape": list(grid.mask.shape),
            "noise_ceiling": "corr(signal, signal + AR(1) noise) per voxel over all runs of a "
            "subject; drift excluded",
            "weight_units": "percent signal change per SD of the feature regressor",
        },
    )
    write_tsv(
        truth / "voxels.tsv",
        [
            {
                "i": int(grid.ijk[v, 0]), "j": int(grid.ijk[v, 1]), "k": int(grid.ijk[v, 2]),
                "x_mm": float(grid.xyz_mm[v, 0]), "y_mm": float(grid.xyz_mm[v, 1]),
                "z_mm": float(grid.xyz_mm[v, 2]), "cluster": cluster.name,
                "feature": cluster.feature, "regressor": feature_key(cluster),
                "n_units": len(cluster.units), "weight": float(weight),
                "target_noise_ceiling": float(ceiling), "voxel": int(v),
            }
            for v, cluster, weight, ceiling in zip(driven, clusters, weights, target, strict=True)
        ],
    )  # fmt: skip
    write_tsv(
        truth / PLANTED_PAIRS_FILE,
        [
            {
                "voxel": int(v), "cluster": cluster.name, "layer": unit.layer,
                "tensor": unit.tensor, "unit": unit.unit, "regressor": unit.key,
                "i": int(grid.ijk[v, 0]), "j": int(grid.ijk[v, 1]), "k": int(grid.ijk[v, 2]),
            }
            for v, cluster in zip(driven, clusters, strict=True)
            for unit in cluster.units
        ],
        columns=PLANTED_PAIR_COLUMNS,
    )  # fmt: skip
    write_tsv(
        truth / "clusters.tsv",
        [
            {
                "label": index + 1, "name": c.name, "feature": c.feature,
                "regressor": feature_key(c), "n_units": len(c.units),
                "tokens": None if c.labels is None else "|".join(c.labels), "x_mm": c.center_mm[0], "y_mm": c.center_mm[1],
                "z_mm": c.center_mm[2], "radius_mm": c.radius_mm,
                "n_voxels": int((labels == index + 1).sum()),
            }
            for index, c in enumerate(config.clusters)
        ],
    )  # fmt: skip
    write_tsv(truth / "subjects.tsv", subjects)
    write_tsv(
        truth / "stories.tsv",
        [
            {
                "task": s.task, "stim_file": f"{s.task}_audio.wav", "voice": s.voice,
                "rate_wpm": s.rate_wpm, "pitch": s.pitch, "lead_in": s.lead_in,
                "audio_onset_s": s.audio_onset_s, "story_offset_s": s.story_offset_s,
                "story_duration_s": s.story_duration_s, "n_trs": s.n_trs,
                "n_words": len(s.words), "n_phonemes": len(s.phonemes),
                "sampling_rate_hz": s.sampling_rate,
            }
            for s in stimuli
        ],
    )  # fmt: skip
    for stimulus, story in zip(stimuli, regressors, strict=True):
        rows = [
            {"volume": m, "time_s": m * config.tr_s, **{k: float(v[m]) for k, v in story.items()}}
            for m in range(stimulus.n_trs)
        ]
        write_tsv(truth / f"task-{stimulus.task}_regressors.tsv", rows)
    save_nifti(truth / "brain_mask.nii.gz", grid.mask.astype(np.uint8), grid)
    save_nifti(truth / "clusters.nii.gz", to_volume(grid, labels.astype(np.int16), np.int16), grid)
    target_map = np.zeros(labels.shape[0], dtype=np.float32)
    target_map[driven] = target
    save_nifti(truth / "target_noise_ceiling.nii.gz", to_volume(grid, target_map, np.float32), grid)
    for subject, ceiling in zip(subjects, ceilings, strict=True):
        name = f"{subject['participant_id']}_noise_ceiling.nii.gz"
        save_nifti(truth / name, to_volume(grid, ceiling.astype(np.float32), np.float32), grid)
