"""Anchoring over a prepared dataset: every AN of every cached layer against every voxel and region.

:func:`anchor` reads a prepared folder and its feature cache through
:mod:`wav2brain.encoding.runs` (one subject's BOLD and one layer's AN responses at a time; the
features cleaned per run as the BOLD was, :func:`~wav2brain.encoding.runs.clean_features`),
couples them (:func:`~wav2brain.anchoring.coupling.couple`) and writes to ``out``:

- ``units.parquet``: one row per subject and AN (:data:`UNIT_COLUMNS`, plus per target family
  ``<family>``, ``<family>_r``, ``<family>_z``, ``<family>_p``, ``<family>_q`` and
  ``best_voxel_<family>``: the family's region best coupled with the AN and the region holding
  the AN's best voxel);
- ``voxels.parquet``: one row per subject and voxel: its best AN (layer, unit), r, z, p, q;
- ``regions.parquet``: every AN x region coupling of each family (small: regions are few);
- ``group.parquet`` and ``group_regions.parquet`` (:mod:`wav2brain.anchoring.group`) when at
  least two subjects share their stories; ``profile.parquet`` and ``profile.png``
  (:mod:`wav2brain.anchoring.profile`);
- ``maps/``: per subject the best-layer and best-r maps of the voxels whose best coupling passes
  FDR, and per chosen AN its r map (and the group t map), NIfTI/GIfTI with PNG (glass brain for
  MNI data);
- ``matrices/sub-<s>_<layer>.safetensors`` (float16 r) with ``save_matrix``, small problems only.

The BH-FDR family of the voxel tests is all ANs of all layers x all voxels of a subject; each
region family is its own (see :mod:`wav2brain.anchoring.targets`).

Resuming: each subject's tables are written to ``parts/`` under a digest of its inputs (its runs
and their shards, its feature-cache rows and entries, the settings, the parcellations), computed
from metadata; a finished subject costs nothing on a rerun.

Processes: under ``torchrun`` or ``accelerate launch`` (:mod:`wav2brain.distributed`) each
process anchors its share of the subjects into ``parts/``; the main process, once every subject
is done (checked), writes the tables, the group level, the profile, the maps and
``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wav2brain import distributed
from wav2brain.anchoring.coupling import Coupling, CouplingConfig, couple, drift_regressors
from wav2brain.anchoring.significance import STATISTICS_VERSION, two_sided_p
from wav2brain.anchoring.targets import (
    TargetFamily,
    Timecourses,
    check_labels,
    family_names,
    region_timecourses,
)
from wav2brain.encoding.dataset import inputs_digest, write_frame

logger = logging.getLogger(__name__)

UNIT_COLUMNS = (
    "subject",
    "layer",
    "unit",
    "tensor",
    "valid",
    "top_voxels",
    "top_r",
    "top_z",
    "r",
    "z",
    "p",
    "q",
    "p_fwer",
    "n_significant",
    "n_fdr",
    "n_fwer",
)
"""Per-AN columns of ``units.parquet`` (``r``, ``z``, ``p``, ``q``, ``p_fwer``: of its best voxel;
``n_*``: voxels significant uncorrected, at FDR and at FWER; ``p_null``: pooled circular-shift
p when permutations were drawn)."""


@dataclass
class AnchorConfig:
    """Every setting of :func:`anchor`.

    Parameters
    ----------
    coupling : CouplingConfig
        Statistics, blocking and device.
    layers : tuple of str, optional
        Cached layer names or model layer numbers (default all).
    normalize_features : bool
        Clean each run's AN responses as its BOLD was.
    units : tuple of str
        ANs to map (``"layer_03:17"``); empty: the ``n_map_units`` ANs with the most FDR
        voxels over subjects.
    n_map_units : int
    maps : bool
        Write NIfTI/GIfTI maps and PNGs.
    save_matrix : bool
        Write each subject's full r matrix per layer (float16 safetensors); needs it to fit
        ``coupling.max_matrix_mb``.
    auditory, higher_order : str
        Regular expressions (case-insensitive) naming the auditory and the higher-order
        (language, default-mode) regions of the intermediate-stage profile.
    """

    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    layers: tuple[str, ...] | None = None
    normalize_features: bool = True
    units: tuple[str, ...] = ()
    n_map_units: int = 4
    maps: bool = True
    save_matrix: bool = False
    auditory: str = r"aud|heschl|a1|stg|superior.?temporal|temporal.?sup"
    higher_order: str = r"language|default|dmn|ifg|frontal|angular|precuneus|cingul|mtg"

    def __post_init__(self) -> None:
        import re

        if self.layers is not None:
            self.layers = tuple(str(layer) for layer in self.layers)
        self.units = tuple(str(u) for u in self.units)
        for unit in self.units:
            parse_unit(unit)
        if self.n_map_units < 0:
            raise ValueError(f"n_map_units must be >= 0, got {self.n_map_units}")
        for name in ("auditory", "higher_order"):
            try:
                re.compile(getattr(self, name))
            except re.error as error:
                raise ValueError(f"AnchorConfig.{name}: bad regular expression ({error})") from None


def parse_unit(text: str) -> tuple[str, int]:
    """``"layer_03:17"`` as (layer name, unit)."""
    layer, _, unit = text.partition(":")
    if not layer or not unit.isdigit():
        raise ValueError(f"unit {text!r}: expected LAYER:UNIT such as 'layer_03:17'")
    return layer, int(unit)


@dataclass
class AnchorResult:
    """What :func:`anchor` wrote and did."""

    out: Path
    units: Path
    voxels: Path
    regions: Path
    group: Path | None
    profile: Path | None
    maps: list[Path]
    analysed: list[str]
    reused: list[str]
    skipped: dict[str, str]

    def tables(self) -> dict:
        """The written tables as pandas frames, by name."""
        import pandas as pd

        paths = {"units": self.units, "voxels": self.voxels, "regions": self.regions}
        if self.group is not None:
            paths["group"] = self.group
        if self.profile is not None:
            paths["profile"] = self.profile
        return {name: pd.read_parquet(path) for name, path in paths.items()}


def _tensor(index, record) -> str:
    extraction = index.entry_record(record).get("key", {}).get("extraction", {})
    return str(extraction.get("tensor", "hidden_states"))


def check_subject(subject: str, records, index) -> str | None:
    """Why a subject cannot be anchored (None when it can), from metadata only."""
    masks = sorted({str(r.mask) for r in records})
    widths = sorted({r.n_voxels for r in records})
    trs = sorted({round(r.tr, 6) for r in records})
    if len(masks) > 1 or len(widths) > 1:
        return f"runs on different voxel sets (masks {masks}, voxel counts {widths})"
    if len(trs) > 1:
        return f"runs with different TRs {trs} s: one Bartlett lag set cannot serve them"
    return None


def _families(data, parcellations, extra, names) -> list[TargetFamily]:
    families = []
    lengths = [r.n_trs for r in data.records]
    for name, parcellation in zip(names, parcellations, strict=False):
        labels = check_labels(parcellation, data.bold.shape[1], data.subject)
        families.append(
            TargetFamily(
                name,
                parcellation.kind,
                tuple(parcellation.names),
                region_timecourses(data.bold, labels, len(parcellation.names)),
                parcellation.source,
                labels,
            )
        )
    for name, given in extra.items():
        families.append(
            TargetFamily(
                name,
                given.kind,
                tuple(given.names),
                given.stacked(data.subject, lengths),
                given.source,
            )
        )
    return families


def _region_frame(subject, family, layer_names, units, coupling: Coupling):
    import pandas as pd

    n_units, n_regions = coupling.r.shape
    z = coupling.z.ravel()
    valid = np.outer(coupling.valid_features, coupling.valid_targets).ravel()
    return pd.DataFrame(
        {
            "subject": subject,
            "family": family.name,
            "kind": family.kind,
            "layer": np.repeat(layer_names, n_regions),
            "unit": np.repeat(units, n_regions).astype(np.int32),
            "region": np.tile(np.array(family.names, dtype=object), n_units),
            "r": coupling.r.ravel(),
            "z": z,
            "p": np.where(valid, two_sided_p(z), 1.0),
            "q": np.where(valid, coupling.q_of(z), 1.0),
            "valid": valid,
        }
    )


def anchor_subject(data, plan_layers, index, config: AnchorConfig, cleaning, families, bar=None):
    """One subject's tables (units, voxels, regions) and its full matrices when asked."""
    import pandas as pd

    subject = data.subject
    tr = data.records[0].tr
    starts = data.starts
    voxel_parts, region_parts = [], {f.name: [] for f in families}
    layer_of, unit_of, matrices = [], [], {}
    region_config = CouplingConfig(**{**asdict(config.coupling), "keep_matrix": True})
    voxel_config = config.coupling
    if config.save_matrix:
        voxel_config = CouplingConfig(**{**asdict(config.coupling), "keep_matrix": True})
    tensor = _tensor(index, data.records[0])
    removed = drift_regressors([(r.n_trs, r.tr) for r in data.records], cleaning)
    for layer in plan_layers:
        features = data.features(index, layer, cleaning)
        voxel = couple(features, data.bold, starts, tr, voxel_config, removed=removed)
        voxel_parts.append(voxel)
        for family in families:
            region_parts[family.name].append(
                couple(features, family.values, starts, tr, region_config, removed=removed)
            )
        if voxel.r is not None:
            matrices[layer] = voxel.r
            voxel.r = voxel.z = voxel.exceed = None
        layer_of += [layer] * features.shape[1]
        unit_of += list(range(features.shape[1]))
        del features
        if bar is not None:
            bar.update()
    data.release()
    voxels = Coupling.concat(voxel_parts)
    layer_of, unit_of = np.array(layer_of, dtype=object), np.array(unit_of)
    counts = voxels.significant_counts()
    best_z = voxels.top_z[:, 0]
    units = pd.DataFrame(
        {
            "subject": subject,
            "layer": layer_of,
            "unit": unit_of.astype(np.int32),
            "tensor": tensor,
            "valid": voxels.valid_features,
            "top_voxels": list(voxels.top_index),
            "top_r": list(voxels.top_r),
            "top_z": list(voxels.top_z),
            "r": voxels.top_r[:, 0],
            "z": best_z,
            "p": np.where(voxels.valid_features, two_sided_p(best_z), 1.0),
            "q": np.where(voxels.valid_features, voxels.q_of(best_z), 1.0),
            "p_fwer": np.where(voxels.valid_features, voxels.fwer_p(best_z), 1.0),
            **{name: values.astype(np.int32) for name, values in counts.items()},
        }
    )
    null_p = voxels.null_p(best_z)
    if null_p is not None:
        units["p_null"] = np.where(voxels.valid_features, null_p, 1.0)
    regions = []
    best_voxel = voxels.top_index[:, 0]
    for family in families:
        coupling = Coupling.concat(region_parts[family.name])
        frame = _region_frame(subject, family, layer_of, unit_of, coupling)
        regions.append(frame)
        best = np.argmax(np.abs(coupling.z), axis=1)
        rows = np.arange(len(best))
        names = np.array(family.names, dtype=object)
        z = coupling.z[rows, best]
        valid = coupling.valid_features & coupling.valid_targets[best]
        units[family.name] = np.where(valid, names[best], None)
        units[f"{family.name}_r"] = np.where(valid, coupling.r[rows, best], 0.0).astype(np.float32)
        units[f"{family.name}_z"] = np.where(valid, z, 0.0).astype(np.float32)
        units[f"{family.name}_p"] = np.where(valid, two_sided_p(z), 1.0)
        units[f"{family.name}_q"] = np.where(valid, coupling.q_of(z), 1.0)
        if family.labels is not None:
            label = np.where(best_voxel >= 0, family.labels[np.maximum(best_voxel, 0)], -1)
            units[f"best_voxel_{family.name}"] = np.where(
                label >= 0, names[np.maximum(label, 0)], None
            )
    cutoff, _ = voxels.fdr()
    best = voxels.best_feature
    has = best >= 0
    voxel_frame = pd.DataFrame(
        {
            "subject": subject,
            "voxel": np.arange(len(best), dtype=np.int32),
            "layer": np.where(has, layer_of[np.maximum(best, 0)], None),
            "unit": np.where(has, unit_of[np.maximum(best, 0)], -1).astype(np.int32),
            "r": voxels.best_r,
            "z": voxels.best_z,
            "p": np.where(has, two_sided_p(voxels.best_z), 1.0),
            "q": np.where(has, voxels.q_of(voxels.best_z), 1.0),
            "valid": voxels.valid_targets,
        }
    )
    region_frame = (
        pd.concat(regions, ignore_index=True)
        if regions
        else pd.DataFrame(columns=COLUMNS["regions"])
    )
    skipped_units = int((~voxels.valid_features).sum())
    skipped_voxels = int((~voxels.valid_targets).sum())
    if skipped_units or skipped_voxels:
        logger.info(
            "sub-%s: %d constant ANs and %d constant voxels skipped",
            subject,
            skipped_units,
            skipped_voxels,
        )
    summary = {
        "subject": subject,
        "m": voxels.m,
        "skipped_units": skipped_units,
        "skipped_voxels": skipped_voxels,
        "fdr_z": float(voxels.grid.thresholds[cutoff]) if cutoff < voxels.grid.n_bins else None,
        "fwer_z": float(voxels.fwer_z()) if math.isfinite(voxels.fwer_z()) else None,
        "n_permutations": len(voxels.maxima),
    }
    return units, voxel_frame, region_frame, summary, matrices


def _subject_digest(records, layers, config: AnchorConfig, cleaning, index, families_id) -> str:
    settings = asdict(config)
    for name in ("maps", "units", "n_map_units", "auditory", "higher_order", "layers"):
        settings.pop(name)
    settings["coupling"].pop("device")
    return inputs_digest(
        {
            "settings": settings,
            "statistics": STATISTICS_VERSION,
            "layers": list(layers),
            "cleaning": None if cleaning is None else asdict(cleaning),
            "runs": [r.identity() for r in records],
            "features": [index.identity(r) for r in records],
            "targets": families_id,
        }
    )


def _array_digest(values) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def _families_identity(parcellations, extra: Mapping[str, Timecourses]) -> list:
    """What the target families depend on (names, labels, time courses), for resume keys."""
    identity: list = [
        {
            "kind": p.kind,
            "source": p.source,
            "names": list(p.names),
            "labels": _array_digest(p.labels),
        }
        for p in parcellations
    ]
    for name, given in extra.items():
        runs = {s: [_array_digest(v) for v in values] for s, values in given.runs.items()}
        identity.append({"name": name, "names": list(given.names), "runs": runs})
    return identity


def check_features(records, index) -> None:
    """Refuse runs whose cached features are on another TR grid, or FIR-stacked, naming both."""
    for record in records:
        entry = index.entry_record(record)
        tr = float(entry["grid"]["tr_s"])
        if abs(tr - record.tr) > 1e-6:
            raise ValueError(
                f"run {record.key} has TR {record.tr} s but its features "
                f"({index.entry_path(record)}) are on a {tr}-s grid: re-run extract for this TR"
            )
        method = entry.get("key", {}).get("grid_config", {}).get("method", "hrf")
        if method != "hrf":
            raise ValueError(
                f"{index.entry_path(record)}: features on the {method!r} grid stack delayed "
                "copies of each unit; anchoring couples single ANs (extract with method 'hrf')"
            )


def _subject_layers(subject: str, records, index, wanted) -> list[str]:
    """Layers cached for every run of the subject, selected as ``encode`` selects them."""
    from wav2brain.encoding.dataset import SubjectPlan, subject_layers

    return subject_layers(SubjectPlan(subject, list(records), None), index, wanted)


def _write_table(frames, path: Path, empty_columns) -> Path:
    import pandas as pd

    frames = [f for f in frames if len(f)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=empty_columns)
    return write_frame(frame, path)


def anchor(
    dataset: str | Path,
    features: str | Path,
    out: str | Path,
    config: AnchorConfig | None = None,
    subjects: Sequence[str] | None = None,
    parcellations: Sequence = (),
    timecourses: Mapping[str, Timecourses] | None = None,
    progress: bool = True,
) -> AnchorResult:
    """Anchor every AN of the cached layers to every voxel and region; write tables and maps.

    Parameters
    ----------
    dataset : path
        Prepared dataset folder (``wav2brain prepare``).
    features : path
        Feature cache of ``wav2brain extract`` for it (HRF grid).
    out : path
        Output folder (created; ``parts/`` make it resumable).
    config : AnchorConfig
    subjects : sequence of str, optional
        Subjects to anchor (default all).
    parcellations : sequence of Parcellation
        Regions or networks labelling every voxel of the subjects' masks (``kind``, ``names``,
        ``labels``, ``source``); each becomes a target family and labels the best voxels.
    timecourses : mapping of family name to Timecourses, optional
        Extra target families given per subject and run (functional networks).
    progress : bool
        Show tqdm bars.

    Every input is checked (folders, subjects, layers, TR grids, labels) before any BOLD is read;
    see the module docstring for the outputs.
    """
    from tqdm.auto import tqdm

    from wav2brain.atomic import write_text_atomic
    from wav2brain.encoding.runs import (
        FeatureIndex,
        SubjectData,
        read_cleaning,
        read_responses,
        subject_runs,
    )
    from wav2brain.reports.brain_maps import map_target

    config = config or AnchorConfig()
    dataset, features, out = Path(dataset), Path(features), Path(out)
    index = FeatureIndex(features)
    records = read_responses(dataset)
    selected = subject_runs(records, subjects)
    index.check([r for own in selected.values() for r in own])
    check_features([r for own in selected.values() for r in own], index)
    extra = dict(timecourses or {})
    names = family_names(parcellations, extra)
    for parcellation in parcellations:
        for subject, own in selected.items():
            if np.size(parcellation.labels) != own[0].n_voxels:
                raise ValueError(
                    f"parcellation {parcellation.source!r} ({parcellation.kind}) labels "
                    f"{np.size(parcellation.labels)} voxels but sub-{subject}'s runs have "
                    f"{own[0].n_voxels}"
                )
    for name, given in extra.items():
        missing = sorted(set(selected) - set(given.runs))
        if missing:
            raise ValueError(f"time courses {name!r} ({given.source}) lack subjects {missing}")
    skipped = {s: reason for s, own in selected.items() if (reason := check_subject(s, own, index))}
    for subject, reason in skipped.items():
        logger.warning("sub-%s skipped: %s", subject, reason)
    plans = {s: own for s, own in selected.items() if s not in skipped}
    if config.coupling.n_permutations:
        for own in plans.values():
            min_shift = math.ceil(config.coupling.min_shift_s / own[0].tr)
            short = [r.key for r in own if r.n_trs <= 2 * min_shift]
            if short:
                raise ValueError(
                    f"runs {short[:5]} are too short for circular shifts of at least "
                    f"{config.coupling.min_shift_s:g} s ({min_shift} TRs) either way: lower "
                    "min_shift_s (--min-shift-s) or draw no permutations"
                )
    map_reasons = {
        s: (
            map_target(
                own[0].space,
                None if own[0].mask is None else dataset / own[0].mask,
                own[0].n_voxels,
            )
            if config.maps
            else "maps not asked for"
        )
        for s, own in plans.items()
    }
    for subject, reason in map_reasons.items():
        if reason is not None and config.maps:
            logger.info("sub-%s: tables only (%s)", subject, reason)
    layers = {s: _subject_layers(s, own, index, config.layers) for s, own in plans.items()}
    cleaning = read_cleaning(dataset) if config.normalize_features else None
    families_id = _families_identity(parcellations, extra)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    digests = {
        subject: _subject_digest(own, layers[subject], config, cleaning, index, families_id)
        for subject, own in plans.items()
    }
    stems = {subject: parts / f"sub-{subject}_{digest}" for subject, digest in digests.items()}
    done = {}
    for subject in distributed.shard(list(plans)):
        summary = stems[subject].with_suffix(".json")
        if summary.is_file():
            logger.info("sub-%s: reusing %s", subject, summary)
            done[subject] = "reused"
            continue
        data = SubjectData.load(subject, plans[subject])
        families = _families(data, parcellations, extra, names)
        with tqdm(
            total=len(layers[subject]),
            desc=f"sub-{subject}{distributed.describe()}",
            unit="layer",
            disable=not progress,
        ) as bar:
            units, voxels, regions, summary_record, matrices = anchor_subject(
                data, layers[subject], index, config, cleaning, families, bar
            )
        del data, families
        for name, frame in (("units", units), ("voxels", voxels), ("regions", regions)):
            write_frame(frame, Path(f"{stems[subject]}_{name}.parquet"))
        if config.save_matrix:
            _save_matrices(matrices, out / "matrices", subject)
        write_text_atomic(json.dumps(summary_record, indent=2), summary)
        done[subject] = "analysed"
    outcome = distributed.merge(done, list(plans), "subject")
    analysed = [s for s, how in outcome.items() if how == "analysed"]
    reused = [s for s, how in outcome.items() if how == "reused"]
    paths = None
    if distributed.is_main():
        from wav2brain.anchoring.results import Finishing

        context = Finishing(
            out, dataset, plans, digests, map_reasons, index, config, cleaning, names, {}
        )
        paths = _merge_subjects(context, stems, parcellations, timecourses, skipped)
        logger.info(
            "%d subjects anchored (%d computed, %d reused), %d skipped, into %s",
            len(analysed) + len(reused),
            len(analysed),
            len(reused),
            len(skipped),
            out,
        )
    paths = distributed.gather(paths)[0]  # the main process's, once it wrote them
    return AnchorResult(
        out=out,
        units=paths["units"],
        voxels=paths["voxels"],
        regions=paths["regions"],
        group=paths["group"],
        profile=paths["profile"],
        maps=paths["maps"],
        analysed=analysed,
        reused=reused,
        skipped=skipped,
    )


def _merge_subjects(context, stems: Mapping[str, Path], parcellations, timecourses, skipped):
    """Main process: the subjects' parts into the tables, the finishing pass, ``summary.json``.

    Returns the paths of the tables (``units``, ``voxels``, ``regions``, ``group``,
    ``profile``) and the maps.
    """
    import pandas as pd

    from wav2brain.anchoring.results import finish
    from wav2brain.atomic import write_text_atomic

    tables: dict[str, list] = {name: [] for name in ("units", "voxels", "regions")}
    summaries = {}
    for subject, stem in stems.items():
        for name in tables:
            tables[name].append(pd.read_parquet(f"{stem}_{name}.parquet"))
        summaries[subject] = json.loads(stem.with_suffix(".json").read_text())
    out = context.out
    paths = {
        name: _write_table(frames, out / f"{name}.parquet", COLUMNS[name])
        for name, frames in tables.items()
    }
    units = pd.concat(tables["units"], ignore_index=True) if tables["units"] else None
    regions = pd.concat(tables["regions"], ignore_index=True) if tables["regions"] else None
    context.stages = {
        name: stage
        for family in [*parcellations, *(timecourses or {}).values()]
        for name, stage in zip(family.names, getattr(family, "stages", ()) or (), strict=False)
    }
    finished = finish(context, units, regions, tables["voxels"])
    record = {
        "dataset": str(Path(context.dataset).resolve()),
        "config": asdict(context.config),
        "subjects": summaries,
        "skipped": skipped,
        **finished["summary"],
    }
    write_text_atomic(json.dumps(record, indent=2, default=str), out / "summary.json")
    return {**paths, **{name: finished["paths"][name] for name in ("group", "profile", "maps")}}


def _save_matrices(matrices: Mapping[str, np.ndarray], folder: Path, subject: str) -> list[Path]:
    """Each layer's full r matrix [ANs, voxels] as float16 safetensors (atomic)."""
    from wav2brain.atomic import save_safetensors_atomic

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for layer, values in matrices.items():
        path = folder / f"sub-{subject}_{layer}.safetensors"
        metadata = {"subject": subject, "layer": layer, "rows": "ANs", "columns": "voxels"}
        written.append(save_safetensors_atomic({"r": values.astype(np.float16)}, path, metadata))
    return written


COLUMNS = {
    "units": list(UNIT_COLUMNS),
    "voxels": ["subject", "voxel", "layer", "unit", "r", "z", "p", "q", "valid"],
    "regions": [
        "subject",
        "family",
        "kind",
        "layer",
        "unit",
        "region",
        "r",
        "z",
        "p",
        "q",
        "valid",
    ],
}
