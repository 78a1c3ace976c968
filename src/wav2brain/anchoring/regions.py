"""The target families of a dataset's anchoring: atlas regions and functional networks, in one rule.

:func:`dataset_regions` turns what a user asks for (a user atlas, the simulator's clusters,
nilearn's offline atlas for MNI data, CanICA or DictLearning networks) into the
``parcellations`` and ``timecourses`` arguments of :func:`wav2brain.anchoring.anchor`, checked
before any BOLD is read (except the networks' decomposition, which needs the BOLD itself).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

MNI_PREFIX = "MNI"
"""Spaces whose name starts with this are MNI templates (``MNI152NLin2009cAsym``, ...)."""


def _common_mask(dataset: Path, records) -> tuple[Path | None, str]:
    """The one mask file and space of the selected runs (None when the runs name no mask)."""
    masks = sorted({r.mask or "" for r in records})
    spaces = sorted({r.space or "" for r in records})
    if masks == [""]:
        return None, spaces[0] if len(spaces) == 1 else ""
    if len(masks) > 1 or len(spaces) > 1:
        raise ValueError(
            f"{dataset}: the selected runs lie on several grids (masks {masks}, spaces {spaces}): "
            "regions label one grid; anchor the subjects of each grid separately (--subjects)"
        )
    return dataset / masks[0], spaces[0]


def dataset_regions(
    dataset: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    atlas: str | Path | None = None,
    atlas_labels: str | Path | None = None,
    truth_dir: str | Path | None = None,
    networks: str | None = None,
    out_dir: str | Path | None = None,
) -> tuple[list, dict]:
    """Regions and networks to anchor a prepared dataset's subjects against.

    Parameters
    ----------
    dataset : path
        Prepared dataset folder (``wav2brain prepare``).
    subjects : sequence of str, optional
        The subjects that will be anchored (default all).
    atlas, atlas_labels : path, optional
        A user atlas (3-D label or 4-D probabilistic image) and its labels table
        (:func:`~wav2brain.anchoring.atlases.parcellation_from_atlas`).
    truth_dir : path, optional
        A simulated dataset (or its ground-truth folder): its clusters as ROIs and their
        auditory / higher-order grouping as networks (SIMULATED).
    networks : str, optional
        ``"canica:20"`` or ``"dictlearning:N"`` (:meth:`NetworkConfig.from_spec`): functional
        networks from the subjects' BOLD, with per-run time courses.
    out_dir : path, optional
        Where the networks' decomposition is saved and reused (``<out_dir>/networks``).

    Returns
    -------
    parcellations : list of Parcellation
        ROIs (and, for simulated data, networks) labelling every voxel of the common mask.
    timecourses : dict of str to Timecourses
        ``{"functional_networks": ...}`` when ``networks`` is given.

    Without an atlas or truth, MNI data get nilearn's offline Seitzman 2018 networks; other spaces
    (native volumes, surfaces, arrays without a mask) are anchored voxel by voxel only, which is
    logged, since no atlas can be assumed there.
    """
    from wav2brain.anchoring.atlases import resolve_parcellation, simulated_parcellation
    from wav2brain.anchoring.networks import NetworkConfig, dataset_networks
    from wav2brain.anchoring.targets import Timecourses
    from wav2brain.encoding.runs import read_responses, subject_runs

    dataset = Path(dataset)
    network_config = NetworkConfig.from_spec(networks) if networks else None
    for name, path in (("atlas", atlas), ("atlas labels", atlas_labels), ("truth", truth_dir)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name} {path}: no such file or folder")
    grouped = subject_runs(read_responses(dataset), subjects)
    records = [r for runs in grouped.values() for r in runs]
    mask, space = _common_mask(dataset, records)
    parcellations = []
    if mask is None:
        if atlas is not None or truth_dir is not None or networks:
            raise ValueError(
                f"{dataset}: the runs name no mask (the responses' mask column), so atlases and "
                "networks cannot be placed on their voxels"
            )
        logger.info("%s: no mask, so no regions: anchoring voxel by voxel only", dataset)
    elif atlas is not None or truth_dir is not None or space.startswith(MNI_PREFIX):
        parcellations.append(
            resolve_parcellation(
                mask, space, "roi", atlas=atlas, atlas_labels=atlas_labels, truth_dir=truth_dir
            )
        )
        if truth_dir is not None:
            parcellations.append(simulated_parcellation(truth_dir, mask, "network"))
    else:
        logger.info(
            "%s: space %r is not MNI and no --atlas was given: anchoring voxel by voxel only",
            dataset,
            space,
        )
    timecourses = {}
    if network_config is not None:

        def reference(group_mask):
            """The networks' names: the regions above, placed on the networks' group mask."""
            return resolve_parcellation(
                group_mask,
                space,
                "network",
                atlas=atlas,
                atlas_labels=atlas_labels,
                truth_dir=truth_dir,
            )

        maps, runs = dataset_networks(
            dataset,
            network_config,
            subjects=list(grouped),
            reference=reference if parcellations else None,
            out_dir=None if out_dir is None else Path(out_dir) / "networks",
        )
        timecourses["functional_networks"] = Timecourses(
            names=maps.names, runs=runs, kind="network", source=maps.source, stages=maps.stages
        )
    return parcellations, timecourses
