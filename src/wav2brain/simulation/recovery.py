"""Recovery of planted ground truth on the SIMULATED dataset: held-out r against the true ceiling.

:func:`simulated_recovery` reads what ``wav2brain simulate`` planted
(``derivatives/ground_truth``), the prepared dataset's BOLD and ``wav2brain encode``'s scores, and
applies :func:`~wav2brain.encoding.noise_ceiling.ceiling_agreement` per subject.

Which ceiling, and why. The score of a voxel is the mean over held-out stories of
``corr(prediction, BOLD)``. Its true ceiling is the same mean of ``corr(planted signal, BOLD)``
on the same held-out stories, with the BOLD exactly as the encoding model saw it (cleaned by
``prepare``): the correlation a model that recovered the planted feature perfectly would reach.
This "held-out oracle" differs from the simulator's per-subject realised ceiling (pooled over all
runs, before cleaning) by the sampling error of a correlation over one story's TRs (about
``(1 - r^2) / sqrt(n_trs)``, 0.04 at r = 0.6 over 200 TRs) and by the part of the signal that
detrending removes, neither of which an encoding model can recover; comparing with it isolates
what the pipeline loses (estimation, alignment, normalisation).

Which layer. Voxels driven by hidden unit ``u`` of layer ``l`` are scored with the encoding model
of layer ``l`` (the planted layer): the claim is that the features of the planted layer recover
the planted unit, and a best-of-layers score would be biased upwards by the maximum over layers.
Noise-only voxels are scored with every layer; voxels driven by the envelope or by word or
phoneme onsets (no unit of the model is their cause) are left out of both groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.encoding.noise_ceiling import ceiling_agreement
from wav2brain.encoding.scores import pearson_r


def _column_of_voxels(dataset: Path, ijk: np.ndarray) -> np.ndarray:
    """Column of ``bold`` of each voxel index (i, j, k) [n, 3]; -1 where outside the mask."""
    import nibabel as nib

    mask_path = dataset / "mask.nii.gz"
    if not mask_path.is_file():
        raise FileNotFoundError(f"{mask_path} not found: expected a prepared NIfTI dataset")
    mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
    column = np.full(mask.shape, -1, dtype=np.int64)
    column[mask] = np.arange(int(mask.sum()))
    return column[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def held_out_oracle(
    bold_by_story: dict[str, np.ndarray], signal_by_story: dict[str, np.ndarray]
) -> np.ndarray:
    """Mean over stories of ``corr(signal, bold)`` per voxel: the held-out ceiling [n_voxels].

    Both map a story id to arrays [n_trs, n_voxels] on the same TRs and voxels; each story is a
    held-out fold of ``wav2brain encode`` (folds over stories).
    """
    if set(bold_by_story) != set(signal_by_story) or not bold_by_story:
        raise ValueError(
            f"stories of BOLD {sorted(bold_by_story)} and of the planted signal "
            f"{sorted(signal_by_story)} must match and be non-empty"
        )
    return np.mean(
        [pearson_r(bold_by_story[s], signal_by_story[s]) for s in sorted(bold_by_story)], axis=0
    )


def simulated_recovery(
    bids: str | Path, dataset: str | Path, scores, tolerance: float = 0.05, z: float = 3.0
) -> dict[str, Any]:
    """Planted voxels' held-out r vs their true ceiling, and noise voxels vs chance, per subject.

    Parameters
    ----------
    bids : str or Path
        The simulated BIDS root (holds ``derivatives/ground_truth``).
    dataset : str or Path
        Its prepared folder (``wav2brain prepare``; one run per subject and story).
    scores : pandas.DataFrame
        ``wav2brain encode``'s ``scores.parquet`` (subject, layer ``layer_NN``, voxel, r).
    tolerance : float
        Allowed ``|r - ceiling|`` of a planted voxel (r units).
    z : float
        A noise voxel is a false positive when ``r > z / sqrt(n_trs)`` (n_trs: TRs of the
        shortest held-out story).

    Returns
    -------
    dict: ``subjects`` ({subject: :func:`ceiling_agreement` result plus ``n_planted``,
    ``n_noise``, ``mean_gap`` (mean of r - ceiling) and ``n_trs``}), and pooled over subjects
    ``planted_within`` (fraction of planted voxels within ``tolerance``), ``noise_false_positive``
    (fraction of noise voxel-layer scores above chance), ``noise_mean_abs_r`` and ``passed``.
    """
    import nibabel as nib
    import pandas as pd
    from datasets import load_dataset

    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    truth, dataset = Path(bids) / GROUND_TRUTH_DIR, Path(dataset)
    if not (truth / "voxels.tsv").is_file():
        raise FileNotFoundError(f"{truth / 'voxels.tsv'} not found: not a simulated dataset")
    voxels = pd.read_csv(truth / "voxels.tsv", sep="\t")
    units = (voxels["feature"] == "unit").to_numpy()
    columns = _column_of_voxels(dataset, voxels[["i", "j", "k"]].to_numpy())
    if (columns < 0).any():
        raise ValueError(
            f"{int((columns < 0).sum())} planted voxels lie outside {dataset / 'mask.nii.gz'}; "
            f"prepare with --mask {truth / 'brain_mask.nii.gz'}"
        )
    brain = _column_of_voxels(dataset, np.argwhere(nib.load(truth / "brain_mask.nii.gz").dataobj))
    noise_columns = np.setdiff1d(brain[brain >= 0], columns)
    planted_cols = columns[units]
    layer_names = [f"layer_{int(layer):02d}" for layer in voxels.loc[units, "layer"]]
    responses = load_dataset(str(dataset), "responses", split="train").with_format("numpy")
    regressors = {
        path.name[len("task-") : -len("_regressors.tsv")]: pd.read_csv(path, sep="\t")
        for path in truth.glob("task-*_regressors.tsv")
    }
    per_subject, pooled = {}, {"within": [], "noise": [], "abs": []}
    for subject in sorted(scores["subject"].astype(str).unique()):
        rows = [row for row in responses if str(row["subject"]) == subject]
        by_story = len({str(row["task"]) for row in rows}) >= 2  # encode's folds: stories or runs
        bold: dict[str, list[np.ndarray]] = {}
        signal: dict[str, list[np.ndarray]] = {}
        for index, row in enumerate(rows):
            fold = str(row["task"]) if by_story else str(index)
            run_bold = np.asarray(np.stack(row["bold"]), np.float64)[:, planted_cols]
            planted = regressors[str(row["task"])][voxels.loc[units, "regressor"]].to_numpy()
            bold.setdefault(fold, []).append(run_bold)
            signal.setdefault(fold, []).append(planted[: len(run_bold)])
        ceiling = held_out_oracle(
            {k: np.concatenate(v) for k, v in bold.items()},
            {k: np.concatenate(v) for k, v in signal.items()},
        )
        n_trs = min(sum(len(b) for b in parts) for parts in bold.values())
        own = scores[scores["subject"].astype(str) == subject]
        table = own.pivot(index="voxel", columns="layer", values="r")
        if missing := sorted(set(layer_names) - set(table.columns)):
            raise ValueError(f"scores of subject {subject!r} lack the planted layers {missing}")
        r_planted = table.to_numpy()[planted_cols, [table.columns.get_loc(n) for n in layer_names]]
        r_noise = table.to_numpy()[noise_columns].ravel()
        result = ceiling_agreement(
            np.concatenate([r_planted, r_noise]),
            np.concatenate([ceiling, np.zeros(r_noise.size)]),
            np.arange(r_planted.size + r_noise.size) < r_planted.size,
            n_trs=n_trs,
            tolerance=tolerance,
            z=z,
        )
        gap = r_planted - ceiling
        result.update(
            n_planted=int(r_planted.size),
            n_noise=int(noise_columns.size),
            mean_gap=float(gap.mean()),
            n_trs=n_trs,
        )
        per_subject[subject] = result
        pooled["within"].append(np.abs(gap) <= tolerance)
        pooled["noise"].append(r_noise > z / np.sqrt(n_trs))
        pooled["abs"].append(np.abs(r_noise))
    return {
        "simulated": True,
        "subjects": per_subject,
        "planted_within": float(np.concatenate(pooled["within"]).mean()),
        "noise_false_positive": float(np.concatenate(pooled["noise"]).mean()),
        "noise_mean_abs_r": float(np.concatenate(pooled["abs"]).mean()),
        "passed": all(result["passed"] for result in per_subject.values()),
    }
