"""The intermediate stage: where in the model anchoring moves from auditory to higher-order cortex.

Per layer, the share of its ANs anchored in each region (or network): an AN is anchored in the
region best coupled with it (largest ``|z|``, or group ``|t|``) when that coupling passes FDR
(``q <= alpha``). Over layers, the auditory share (regions matching ``auditory``) and the
higher-order share (``higher_order``: language and default-mode regions) draw the paper's
argument: auditory anchoring peaks at an intermediate layer (``peak_auditory_layer``) after
which higher-order anchoring takes over (``takeover_layer``: the first layer after the peak
whose higher-order share exceeds its auditory share; None when it never does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wav2brain.encoding.dataset import layer_number

STAGE_CLASSES = {"auditory": "auditory", "higher-order": "higher_order", "other": "other"}
"""Profile class of each stage a parcellation gives its regions (``Parcellation.stages``)."""


def region_class(
    name: str, auditory: str, higher_order: str, stages: Mapping[str, str] | None = None
) -> str:
    """``"auditory"``, ``"higher_order"`` or ``"other"``.

    The region's stage from its parcellation when it has one (``stages``: region name -> one of
    :data:`STAGE_CLASSES`' keys); else the regular expressions on its name (auditory wins a
    double match).
    """
    if stages and name in stages:
        return STAGE_CLASSES[stages[name]]
    if re.search(auditory, name, flags=re.IGNORECASE):
        return "auditory"
    if re.search(higher_order, name, flags=re.IGNORECASE):
        return "higher_order"
    return "other"


def layer_profile(
    anchored, auditory: str, higher_order: str, stages: Mapping[str, str] | None = None
):
    """Share of each layer's ANs anchored in each region (pandas).

    Parameters
    ----------
    anchored : DataFrame
        One row per (subject or "group", family, layer, unit): ``region`` and ``significant``.
    auditory, higher_order : str
        Regular expressions classing regions without a stage (:func:`region_class`).
    stages : mapping of region name to stage, optional
        The stages the parcellations give their regions.

    Returns
    -------
    DataFrame: family, layer, layer_number, region, class, share (mean over subjects).
    """
    import pandas as pd

    frames = []
    for (family, layer), part in anchored.groupby(["family", "layer"], sort=False):
        per_source = []
        for _, rows in part.groupby("source", sort=False):
            hits = rows[rows["significant"]]
            per_source.append(hits["region"].value_counts() / len(rows))
        share = pd.concat(per_source, axis=1).fillna(0.0).mean(axis=1)
        frames.append(
            pd.DataFrame(
                {
                    "family": family,
                    "layer": layer,
                    "layer_number": layer_number(layer),
                    "region": share.index.astype(str),
                    "class": [region_class(n, auditory, higher_order, stages) for n in share.index],
                    "share": share.to_numpy(np.float64),
                }
            )
        )
    columns = ["family", "layer", "layer_number", "region", "class", "share"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def stage_summary(profile, layers) -> dict:
    """Per family: auditory and higher-order share per layer, peak and takeover layers."""
    summary = {}
    numbers = sorted({layer_number(name) for name in layers})
    for family, part in profile.groupby("family", sort=False):
        by_class = part.pivot_table(
            index="layer_number", columns="class", values="share", aggfunc="sum"
        ).reindex(numbers, fill_value=0.0)
        auditory = by_class.get("auditory", 0.0 * by_class.index.to_series()).to_numpy()
        higher = by_class.get("higher_order", 0.0 * by_class.index.to_series()).to_numpy()
        peak = int(np.argmax(auditory)) if auditory.max() > 0 else None
        takeover = None
        if peak is not None:
            later = [i for i in range(peak + 1, len(numbers)) if higher[i] > auditory[i]]
            takeover = numbers[later[0]] if later else None
        summary[family] = {
            "layers": numbers,
            "auditory_share": auditory.round(6).tolist(),
            "higher_order_share": higher.round(6).tolist(),
            "peak_auditory_layer": None if peak is None else numbers[peak],
            "takeover_layer": takeover,
        }
    return summary


def plot_profile(profile, summary: dict, path: Path, title: str = "") -> Path:
    """PNG: per family, the share of anchored ANs per layer by region, with the two classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wav2brain.reports.brain_maps import _save_figure

    families = list(summary)
    figure, axes = plt.subplots(1, max(1, len(families)), figsize=(5 * max(1, len(families)), 3.8))
    axes = np.atleast_1d(axes)
    for axis, family in zip(axes, families, strict=False):
        part = profile[profile["family"] == family]
        for _region, rows in part.groupby("region", sort=False):
            rows = rows.sort_values("layer_number")
            axis.plot(rows["layer_number"], rows["share"], color="0.75", lw=0.8)
        info = summary[family]
        axis.plot(info["layers"], info["auditory_share"], color="tab:blue", lw=2, label="auditory")
        axis.plot(
            info["layers"], info["higher_order_share"], color="tab:red", lw=2, label="higher-order"
        )
        if info["peak_auditory_layer"] is not None:
            axis.axvline(info["peak_auditory_layer"], color="tab:blue", ls=":")
        if info["takeover_layer"] is not None:
            axis.axvline(info["takeover_layer"], color="tab:red", ls=":")
        axis.set_xlabel("layer")
        axis.set_ylabel("share of ANs anchored")
        axis.set_title(f"{family} {title}".strip())
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, Path(path))
