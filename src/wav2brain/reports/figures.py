"""The study report's own figures: only those no step draws already (matplotlib, Agg backend).

Each function takes the small table the report shows beside the figure and writes one PNG
atomically (:func:`wav2brain.reports.brain_maps._save_figure`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    from wav2brain.reports.brain_maps import _save_figure

    figure.tight_layout()
    return _save_figure(figure, Path(path))


def plot_encoding_layers(per_subject, per_layer, path: Path) -> Path:
    """Held-out r per layer: each subject's mean (thin), the mean over subjects and its top 10 %.

    Parameters
    ----------
    per_subject : DataFrame
        subject, layer_number, mean_r.
    per_layer : DataFrame
        layer_number, mean_r, top10_mean_r (means over subjects).
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for _, rows in per_subject.groupby("subject", sort=True):
        rows = rows.sort_values("layer_number")
        axis.plot(rows["layer_number"], rows["mean_r"], color="0.7", lw=0.8)
    rows = per_layer.sort_values("layer_number")
    axis.plot(rows["layer_number"], rows["mean_r"], "o-", color="tab:blue", lw=2, label="mean r")
    axis.plot(
        rows["layer_number"], rows["top10_mean_r"], "s--", color="tab:orange", label="top-10 % r"
    )
    best = rows.loc[rows["mean_r"].idxmax()]
    axis.axvline(best["layer_number"], color="tab:blue", ls=":", lw=1)
    axis.set_xlabel("layer")
    axis.set_ylabel("held-out Pearson r")
    axis.set_xticks(rows["layer_number"].tolist())
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_ceiling(voxels, path: Path) -> Path:
    """Per voxel: held-out r at the best layer against the noise ceiling (identity line)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.4, 4))
    significant = voxels["ceiling_significant"].to_numpy(bool)
    axis.scatter(
        voxels["ceiling"][~significant],
        voxels["r"][~significant],
        s=5,
        color="0.65",
        label="ceiling not significant",
    )
    axis.scatter(
        voxels["ceiling"][significant],
        voxels["r"][significant],
        s=6,
        color="tab:red",
        label="ceiling significant",
    )
    low = float(np.nanmin([voxels["ceiling"].min(), voxels["r"].min(), 0.0]))
    high = float(np.nanmax([voxels["ceiling"].max(), voxels["r"].max(), 0.1]))
    axis.plot([low, high], [low, high], color="k", lw=0.8)
    axis.set_xlabel("noise ceiling (r)")
    axis.set_ylabel("held-out r, best layer")
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_training_curves(curves, path: Path) -> Path:
    """Training loss per optimiser step, one panel per stage, one line per run."""
    plt = _pyplot()
    stages = sorted(curves["stage"].unique())
    figure, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.4), squeeze=False)
    for axis, stage in zip(axes[0], stages, strict=True):
        for run, rows in curves[curves["stage"] == stage].groupby("run", sort=False):
            axis.plot(rows["step"], rows["loss"], "o-", ms=3, label=run)
        axis.set_title(stage)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.legend(fontsize=8)
    return _save(figure, path)


def plot_network_couplings(couplings, path: Path) -> Path:
    """Heat map of the mean |r| of every AN with each network, per layer; ANs passing FDR counted.

    Parameters
    ----------
    couplings : DataFrame
        layer_number, region, mean_abs_r, n_significant.
    """
    plt = _pyplot()
    values = couplings.pivot_table(index="region", columns="layer_number", values="mean_abs_r")
    counts = couplings.pivot_table(
        index="region", columns="layer_number", values="n_significant"
    ).reindex_like(values)
    figure, axis = plt.subplots(figsize=(1.2 + 0.9 * values.shape[1], 1.0 + 0.45 * values.shape[0]))
    image = axis.imshow(values.to_numpy(float), aspect="auto", cmap="viridis")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            count = counts.iat[i, j]
            if np.isfinite(count):
                axis.text(j, i, f"{int(count)}", ha="center", va="center", color="w", fontsize=8)
    axis.set_xticks(range(values.shape[1]), [str(c) for c in values.columns])
    axis.set_yticks(range(values.shape[0]), [str(r) for r in values.index])
    axis.set_xlabel("layer (in cells: ANs passing FDR)")
    figure.colorbar(image, ax=axis, label="mean |r| over ANs")
    return _save(figure, path)
