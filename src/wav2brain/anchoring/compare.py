"""Before and after refinement: the same anchoring of two checkpoints, compared per layer and region.

:func:`compare_anchoring` reads two output folders of :func:`~wav2brain.anchoring.anchor` (the
same dataset and subjects, two feature caches: a base model and a brain-refined one) and
returns, per family, layer and region, the share of ANs anchored there before and after and its
change, and per layer the voxels' mean best ``|r|`` and the ANs' mean FDR voxel count before and
after. Both runs must have analysed the same subjects (else the difference would mix subjects).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _read(folder: Path):
    import pandas as pd

    folder = Path(folder)
    if not (folder / "units.parquet").is_file():
        raise FileNotFoundError(
            f"{folder / 'units.parquet'} not found: run `wav2brain anchor` into {folder}"
        )
    profile = folder / "profile.parquet"
    return (
        pd.read_parquet(folder / "units.parquet"),
        pd.read_parquet(profile) if profile.is_file() else None,
    )


def compare_anchoring(before: str | Path, after: str | Path):
    """(regions, layers) DataFrames of the change from ``before`` to ``after``.

    ``regions``: family, layer, region, class, share_before, share_after, change.
    ``layers``: layer, mean_abs_r_before/after, mean_n_fdr_before/after and their changes.
    """
    import pandas as pd

    units_a, profile_a = _read(Path(before))
    units_b, profile_b = _read(Path(after))
    subjects_a, subjects_b = sorted(set(units_a["subject"])), sorted(set(units_b["subject"]))
    if subjects_a != subjects_b:
        raise ValueError(
            f"{before} analysed subjects {subjects_a} but {after} analysed {subjects_b}: "
            "compare runs over the same subjects"
        )
    keys = ["family", "layer", "layer_number", "region", "class"]
    if (profile_a is None) != (profile_b is None):
        raise ValueError(
            f"only one of {before} and {after} has a region profile: anchor both with the same "
            "parcellations"
        )
    if profile_a is None:
        profile_a = profile_b = pd.DataFrame({**{k: [] for k in keys}, "share": []})
    regions = profile_a.merge(
        profile_b, on=keys, how="outer", suffixes=("_before", "_after")
    ).fillna({"share_before": 0.0, "share_after": 0.0})
    regions["change"] = regions["share_after"] - regions["share_before"]

    def per_layer(units):
        valid = units[units["valid"]]
        return valid.groupby("layer", sort=True).agg(
            mean_abs_r=("r", lambda r: float(np.abs(r).mean())), mean_n_fdr=("n_fdr", "mean")
        )

    layers = per_layer(units_a).join(
        per_layer(units_b), how="outer", lsuffix="_before", rsuffix="_after"
    )
    for name in ("mean_abs_r", "mean_n_fdr"):
        layers[f"{name}_change"] = layers[f"{name}_after"] - layers[f"{name}_before"]
    return regions.sort_values(
        ["family", "layer_number", "region"], ignore_index=True
    ), layers.reset_index()


def write_comparison(before: str | Path, after: str | Path, out: str | Path) -> dict[str, Path]:
    """Write ``compare_regions.parquet``, ``compare_layers.parquet`` and ``compare.png`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow as pa

    from wav2brain.data.hf_layout import write_shard
    from wav2brain.reports.brain_maps import _save_figure

    out = Path(out)
    regions, layers = compare_anchoring(before, after)
    paths = {
        "regions": write_shard(
            pa.Table.from_pandas(regions, preserve_index=False), out / "compare_regions.parquet"
        ),
        "layers": write_shard(
            pa.Table.from_pandas(layers, preserve_index=False), out / "compare_layers.parquet"
        ),
    }
    summed = regions.groupby(["family", "layer_number", "class"], as_index=False)["change"].sum()
    families = list(dict.fromkeys(summed["family"]))
    figure, axes = plt.subplots(1, max(1, len(families)), figsize=(5 * max(1, len(families)), 3.5))
    for axis, family in zip(np.atleast_1d(axes), families, strict=False):
        for kind, rows in summed[summed["family"] == family].groupby("class"):
            axis.plot(rows["layer_number"], rows["change"], marker="o", label=kind)
        axis.axhline(0, color="0.5", lw=0.8)
        axis.set_xlabel("layer")
        axis.set_ylabel("change in share anchored (after - before)")
        axis.set_title(family)
        axis.legend(fontsize=8)
    figure.tight_layout()
    paths["figure"] = _save_figure(figure, out / "compare.png")
    return paths
