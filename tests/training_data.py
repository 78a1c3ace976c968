"""A simulated, prepared dataset shared by the training tests (built once per test session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_STORIES = 4
STORY_DURATION_S = 60.0


def simulated_study(base: Path) -> Path:
    """Simulate 4 stories of 1 min x 2 subjects and prepare them inside the simulator's mask.

    Returns the folder holding ``bids/`` and ``dataset/`` (reused when already built).
    """
    from wav2brain.data.prepare import prepare_dataset
    from wav2brain.simulation import GROUND_TRUTH_DIR, SimulationConfig, simulate_dataset

    root = base / "training_study"
    if (root / "dataset" / "wav2brain_prepare.json").is_file():
        return root
    config = SimulationConfig.from_size(
        "test", n_stories=N_STORIES, story_duration_s=STORY_DURATION_S
    )
    bids = simulate_dataset(root / "bids", config)
    prepare_dataset(bids, root / "dataset", mask=bids / GROUND_TRUTH_DIR / "brain_mask.nii.gz")
    return root


def planted_columns(root: Path) -> np.ndarray:
    """Columns of the BOLD rows that hold planted voxels (the ground truth's voxels.tsv)."""
    import nibabel as nib
    import pandas as pd

    truth = root / "bids" / "derivatives" / "ground_truth"
    voxels = pd.read_csv(truth / "voxels.tsv", sep="\t")
    mask = np.asarray(nib.load(str(root / "dataset" / "mask.nii.gz")).dataobj) > 0
    column = np.full(mask.shape, -1)
    column[mask] = np.arange(int(mask.sum()))
    return np.sort(column[voxels["i"], voxels["j"], voxels["k"]])
