"""The dataset-level products of :func:`~wav2brain.anchoring.anchor` after the per-subject pass.

:func:`finish` writes the subject maps, the group tables (:mod:`wav2brain.anchoring.group`), the
intermediate-stage profile (:mod:`wav2brain.anchoring.profile`) and the maps of chosen ANs: each
subject's r map and, across subjects sharing one space and mask, the group t map (glass-brain PNG
for MNI data). Chosen ANs' maps need one more pass over the subjects (their voxel rows were never
held): it reads only the chosen ANs' layers and is cached per subject in ``parts/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from wav2brain.anchoring.dataset import (
    AnchorConfig,
    inputs_digest,
    parse_unit,
    write_frame,
)
from wav2brain.atomic import save_safetensors_atomic

logger = logging.getLogger(__name__)


@dataclass
class Finishing:
    """What :func:`finish` needs from the subject pass."""

    out: Path
    dataset: Path
    plans: dict
    digests: dict
    map_reasons: dict
    index: object
    config: AnchorConfig
    cleaning: object
    families: list[str] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)


def glass_brain(values, mask_img, path: Path, title: str = "") -> Path:
    """Glass-brain PNG of a per-voxel map of MNI data (nilearn ``plot_glass_brain``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    from wav2brain.reports.brain_maps import _save_figure, volume_image

    figure = plt.figure(figsize=(9, 3.5))
    image = volume_image(np.nan_to_num(np.asarray(values, np.float32)), mask_img)
    plotting.plot_glass_brain(
        image, figure=figure, title=title or None, plot_abs=False, colorbar=True
    )
    return _save_figure(figure, Path(path))


def _map(values, stem: Path, space: str, mask_path, title: str) -> list[Path]:
    from wav2brain.reports.brain_maps import write_map

    written = write_map(values, stem, space, mask_path, title=title)
    if mask_path is not None and space.upper().startswith("MNI"):
        written.append(
            glass_brain(values, mask_path, stem.with_name(stem.name + "_glass.png"), title)
        )
    return written


def _once(marker: Path, out: Path, write) -> list[Path]:
    """Files written by ``write()`` once per marker (a rerun with the same inputs reuses them)."""
    from wav2brain.atomic import write_text_atomic

    if marker.is_file():
        listed = [out / line for line in marker.read_text().split()]
        if all(path.is_file() for path in listed):
            return listed
    written = write()
    write_text_atomic("\n".join(str(p.relative_to(out)) for p in written) + "\n", marker)
    return written


def subject_maps(voxels, context: Finishing) -> list[Path]:
    """Best-layer and best-r maps of one subject's voxels passing FDR (0 elsewhere)."""
    from wav2brain.encoding.dataset import layer_number

    subject = str(voxels["subject"].iloc[0])
    if context.map_reasons.get(subject) is not None:
        return []
    first = context.plans[subject][0]
    mask = None if first.mask is None else context.dataset / first.mask
    passing = (voxels["q"] <= context.config.coupling.alpha).to_numpy()
    layers = np.array([layer_number(n) if isinstance(n, str) else 0 for n in voxels["layer"]])
    folder = context.out / "maps"
    folder.mkdir(parents=True, exist_ok=True)
    return _map(
        np.where(passing, layers, 0).astype(np.float32),
        folder / f"sub-{subject}_best_layer",
        first.space,
        mask,
        f"sub-{subject} layer of the best AN (FDR {context.config.coupling.alpha:g})",
    ) + _map(
        np.where(passing, voxels["r"].to_numpy(), 0).astype(np.float32),
        folder / f"sub-{subject}_best_r",
        first.space,
        mask,
        f"sub-{subject} r of the best AN",
    )


def chosen_units(units, config: AnchorConfig) -> list[tuple[str, int]]:
    """The ANs to map: ``config.units``, or the ``n_map_units`` with most FDR voxels overall."""
    if config.units:
        chosen = [parse_unit(u) for u in config.units]
        known = set(zip(units["layer"], units["unit"], strict=True))
        unknown = [f"{layer}:{unit}" for layer, unit in chosen if (layer, unit) not in known]
        if unknown:
            raise ValueError(f"units {unknown} are not among the anchored ANs")
        return chosen
    totals = (
        units[units["valid"]]
        .groupby(["layer", "unit"], sort=False)["n_fdr"]
        .sum()
        .sort_values(ascending=False)
    )
    totals = totals[totals > 0].head(config.n_map_units)
    return [(str(layer), int(unit)) for layer, unit in totals.index]


def unit_rows(subject: str, chosen, context: Finishing) -> np.ndarray:
    """r [chosen ANs, voxels] of one subject, computed once per digest (cached in parts)."""
    from safetensors.numpy import load_file

    from wav2brain.anchoring.coupling import couple
    from wav2brain.encoding.runs import SubjectData

    key = inputs_digest({"subject": context.digests[subject], "units": [list(u) for u in chosen]})
    path = context.out / "parts" / f"sub-{subject}_units_{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["r"]
    records = context.plans[subject]
    data = SubjectData.load(subject, records)
    coupling_config = replace(context.config.coupling, keep_matrix=True, n_permutations=0, top_k=1)
    rows = np.zeros((len(chosen), data.bold.shape[1]), np.float32)
    for layer in dict.fromkeys(layer for layer, _ in chosen):
        features = data.features(context.index, layer, context.cleaning)
        wanted = [i for i, (name, _) in enumerate(chosen) if name == layer]
        columns = [chosen[i][1] for i in wanted]
        coupling = couple(
            features[:, columns], data.bold, data.starts, records[0].tr, coupling_config
        )
        rows[wanted] = coupling.r
    data.release()
    save_safetensors_atomic({"r": rows}, path)
    return rows


def unit_maps(chosen, members: list[str], context: Finishing) -> list[Path]:
    """Maps of the chosen ANs per subject and, when the members share a voxel space, the group's."""
    from wav2brain.anchoring.group import one_sample_t

    if not chosen:
        return []
    folder = context.out / "maps"
    folder.mkdir(parents=True, exist_ok=True)
    written, per_subject = [], {}
    for subject in context.plans:
        if context.map_reasons.get(subject) is not None:
            continue
        per_subject[subject] = unit_rows(subject, chosen, context)
        first = context.plans[subject][0]
        mask = None if first.mask is None else context.dataset / first.mask
        for (layer, unit), values in zip(chosen, per_subject[subject], strict=True):
            written += _map(
                values,
                folder / f"sub-{subject}_{layer}_unit-{unit}_r",
                first.space,
                mask,
                f"sub-{subject} {layer} unit {unit}: r",
            )
    grid = {
        (context.plans[s][0].space, context.plans[s][0].mask, context.plans[s][0].n_voxels)
        for s in members
        if s in per_subject
    }
    members = [s for s in members if s in per_subject]
    if len(members) >= 2 and len(grid) == 1:
        space, mask_name, _ = grid.pop()
        mask = None if mask_name is None else context.dataset / mask_name
        stack = np.stack([per_subject[s] for s in members])
        _, t, _ = one_sample_t(
            np.arctanh(np.clip(stack, -0.999999, 0.999999)).reshape(len(members), -1)
        )
        t = t.reshape(stack.shape[1:])
        for (layer, unit), values in zip(chosen, t, strict=True):
            written += _map(
                values.astype(np.float32),
                folder / f"group_{layer}_unit-{unit}_t",
                space,
                mask,
                f"group ({len(members)} subjects) {layer} unit {unit}: t",
            )
    elif len(members) >= 2:
        logger.warning(
            "group maps of the chosen ANs refused: subjects %s lie on different voxel spaces %s; "
            "they are combined at region/network level only (group.parquet)",
            members,
            sorted(map(str, grid)),
        )
    return written


def group_units(regions, members: list[str], alpha: float):
    """(per-AN group table, all AN x region group tests), or (None, None) without a group."""

    from wav2brain.anchoring.group import best_regions, group_regions

    if len(members) < 2 or regions is None or not len(regions):
        return None, None
    tests = group_regions(regions, members, alpha)
    if not len(tests):
        return None, tests
    best = best_regions(tests)
    wide = None
    for family, part in best.groupby("family", sort=False):
        part = part.drop(columns=["family", "kind"]).rename(
            columns={
                "region": family,
                **{
                    c: f"{family}_{c}"
                    for c in part.columns
                    if c.startswith(("group_", "sign_", "replication", "n_subjects"))
                },
            }
        )
        wide = part if wide is None else wide.merge(part, on=["layer", "unit"], how="outer")
    return wide.reset_index(drop=True), tests


def anchored_frame(units, group, families: list[str], alpha: float):
    """Each AN's anchoring region per family and whether it passes FDR (input of the profile).

    From the group table when there is one (``source = "group"``), else per subject.
    """
    import pandas as pd

    frames = []
    for family in families:
        if group is not None and family in group:
            frames.append(
                pd.DataFrame(
                    {
                        "source": "group",
                        "family": family,
                        "layer": group["layer"],
                        "unit": group["unit"],
                        "region": group[family],
                        "significant": group[f"{family}_group_q"] <= alpha,
                    }
                )
            )
        elif family in units:
            frames.append(
                pd.DataFrame(
                    {
                        "source": units["subject"],
                        "family": family,
                        "layer": units["layer"],
                        "unit": units["unit"],
                        "region": units[family],
                        "significant": units["valid"] & (units[f"{family}_q"] <= alpha),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True) if frames else None


def finish(context: Finishing, units, regions, voxel_frames) -> dict:
    """Maps, group tables and the profile; returns paths and the summary additions."""
    from wav2brain.anchoring.group import group_subjects
    from wav2brain.anchoring.profile import layer_profile, plot_profile, stage_summary

    config, out = context.config, context.out
    alpha = config.coupling.alpha
    written: list[Path] = []
    if config.maps:
        for voxels in voxel_frames:
            subject = str(voxels["subject"].iloc[0])
            marker = out / "parts" / f"sub-{subject}_{context.digests[subject]}.maps"
            written += _once(marker, out, lambda v=voxels: subject_maps(v, context))
    stories = {s: [r.stimulus_id for r in own] for s, own in context.plans.items()}
    members = group_subjects(stories) if len(stories) >= 2 else []
    group, tests = group_units(regions, members, alpha)
    paths: dict[str, Path | None] = {"group": None, "group_regions": None, "profile": None}
    if tests is not None:
        paths["group_regions"] = write_frame(tests, out / "group_regions.parquet")
    if group is not None:
        paths["group"] = write_frame(group, out / "group.parquet")
    summary: dict = {"group_subjects": members if group is not None else []}
    anchored = None if units is None else anchored_frame(units, group, context.families, alpha)
    if anchored is not None and len(anchored):
        profile = layer_profile(anchored, config.auditory, config.higher_order, context.stages)
        paths["profile"] = write_frame(profile, out / "profile.parquet")
        stage = stage_summary(profile, sorted(set(units["layer"])))
        summary["stage"] = stage
        written.append(plot_profile(profile, stage, out / "profile.png"))
    if config.maps and units is not None:
        chosen = chosen_units(units, config)
        key = inputs_digest({"digests": context.digests, "units": chosen, "members": members})
        written += _once(
            out / "parts" / f"units_{key}.maps",
            out,
            lambda: unit_maps(chosen, members, context),
        )
        summary["mapped_units"] = [f"{layer}:{unit}" for layer, unit in chosen]
    paths["maps"] = written
    return {"paths": paths, "summary": summary}
