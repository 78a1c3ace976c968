"""Regions for anchoring: ROIs and networks from atlases, as labels over a subject's mask voxels.

A :class:`Parcellation` gives each voxel of a subject's mask (nilearn's order: column ``j`` of the
dataset's ``bold`` is voxel ``j`` of :func:`nilearn.masking.apply_mask`) the index of its region,
or -1 when it lies in none. Three sources build one:

- :func:`parcellation_from_atlas`: any user atlas, a 3-D label image with its labels table (or a
  4-D probabilistic atlas, one map per region, labelled by argmax above a threshold), resampled to
  the mask's grid with nearest-neighbour interpolation (a warning says so) and refused when it
  does not overlap the mask;
- :func:`default_parcellation`: the coordinate atlases nilearn ships inside its package (the
  Seitzman et al. 2018 300 ROIs with 13 network labels; Dosenbach et al. 2010), turned into
  spheres on the mask's grid, offline, for MNI data;
- :func:`simulated_parcellation`: the simulator's planted clusters (``clusters.nii.gz``), as
  ROIs or grouped into auditory and higher-order networks by the feature that drives them.

Each region may carry a processing *stage* (:data:`STAGES`) so that the anchoring profile over
layers can tell where auditory anchoring peaks and higher-order anchoring takes over.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS: tuple[str, ...] = ("roi", "network")
"""What a parcellation's regions are: anatomical/coordinate ROIs, or (functional) networks."""

STAGES: tuple[str, ...] = ("auditory", "higher-order", "other")
"""Processing stages a region can be given (the intermediate-stage profile contrasts the first
two)."""

BACKGROUND_NAMES = frozenset({"background", "unknown", "???", "0", ""})
"""A first name in a labels list that is one of these (case-insensitive) names label value 0."""

INDEX_COLUMNS = ("index", "value", "label_value", "id")
NAME_COLUMNS = ("name", "label", "region", "roi")
"""Columns read from a labels table (``.tsv`` / ``.csv``), first match wins: the BIDS ``dseg.tsv``
and nilearn look-up-table convention is ``index`` and ``name``. Without an index column, an integer
``label`` column next to another name column is the index (the simulator's ``clusters.tsv``:
``label``, ``name``, ...)."""


@dataclass(frozen=True, eq=False)
class Parcellation:
    """Regions (ROIs or networks) as one label per voxel of a subject's mask.

    Attributes
    ----------
    kind : str
        ``"roi"`` or ``"network"``.
    names : tuple of str
        Region names, unique; region ``i`` is ``names[i]``.
    labels : numpy.ndarray
        int64 ``[n_voxels]`` in the mask's voxel order (nilearn ``apply_mask``): the region index
        of each voxel, -1 for a voxel in no region. Stored read-only.
    source : str
        Where the regions come from (file, nilearn atlas and radius, decomposition), for tables.
    stages : tuple of str
        Optional processing stage of each region (one of :data:`STAGES`); empty when unknown.
    """

    kind: str
    names: tuple[str, ...]
    labels: np.ndarray
    source: str
    stages: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Parcellation kind must be one of {KINDS}, got {self.kind!r}")
        names = tuple(str(n) for n in self.names)
        if not names:
            raise ValueError(f"Parcellation from {self.source}: no region names")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"Parcellation from {self.source}: duplicated names {duplicated}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not (
            np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
        ):
            raise ValueError(
                f"Parcellation from {self.source}: labels must be a 1-D integer array over the "
                f"mask's voxels, got {labels.dtype} of shape {labels.shape}"
            )
        labels = labels.astype(np.int64)
        bad = labels[(labels < -1) | (labels >= len(names))]
        if bad.size:
            raise ValueError(
                f"Parcellation from {self.source}: label values {sorted(set(bad.tolist()))[:10]} "
                f"outside -1..{len(names) - 1} (one index per name, -1 = unlabelled)"
            )
        stages = tuple(str(s) for s in self.stages)
        if stages and len(stages) != len(names):
            raise ValueError(
                f"Parcellation from {self.source}: {len(stages)} stages for {len(names)} regions"
            )
        if unknown := sorted(set(stages) - set(STAGES)):
            raise ValueError(f"Parcellation from {self.source}: stages {unknown} not in {STAGES}")
        labels.setflags(write=False)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "stages", stages)

    @property
    def n_regions(self) -> int:
        """Number of regions."""
        return len(self.names)

    @property
    def n_voxels(self) -> int:
        """Number of mask voxels the labels cover (labelled or not)."""
        return int(self.labels.size)

    def counts(self) -> np.ndarray:
        """Voxels in each region, int64 ``[n_regions]``."""
        return np.bincount(self.labels[self.labels >= 0], minlength=self.n_regions)

    def stage_of(self, name: str) -> str:
        """The stage of region ``name`` (``"other"`` when the parcellation has no stages)."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not a region of {self.source}: have {self.names[:10]}")
        return self.stages[self.names.index(name)] if self.stages else "other"

    def table(self):
        """One row per region: ``index``, ``name``, ``stage``, ``n_voxels`` (pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "index": np.arange(self.n_regions),
                "name": list(self.names),
                "stage": list(self.stages) if self.stages else ["other"] * self.n_regions,
                "n_voxels": self.counts(),
            }
        )

    def _check_width(self, n: int, what: str) -> None:
        if n != self.n_voxels:
            raise ValueError(
                f"{what} has {n} voxels but the parcellation from {self.source} labels "
                f"{self.n_voxels} (not the same mask?)"
            )

    def region_means(self, data) -> np.ndarray:
        """Mean over each region's voxels of ``data`` ``[n_trs, n_voxels]`` -> ``[n_trs, n_regions]``.

        float32 for float32 input, float64 otherwise; a region without voxels raises (it has no
        mean; :func:`parcellation_from_atlas` drops such regions).
        """
        from scipy import sparse

        array = np.asarray(data)
        if array.ndim != 2:
            raise ValueError(f"region_means needs [n_trs, n_voxels], got shape {array.shape}")
        self._check_width(array.shape[1], "data")
        counts = self.counts()
        if empty := [self.names[i] for i in np.flatnonzero(counts == 0)]:
            raise ValueError(f"regions {empty[:10]} of {self.source} hold no voxel")
        dtype = np.float32 if array.dtype == np.float32 else np.float64
        inside = np.flatnonzero(self.labels >= 0)
        weights = sparse.csr_matrix(
            ((1.0 / counts[self.labels[inside]]).astype(dtype), (inside, self.labels[inside])),
            shape=(self.n_voxels, self.n_regions),
        )
        return np.asarray((weights.T @ array.astype(dtype, copy=False).T).T, dtype=dtype)

    def voxel_values(self, values, fill: float = 0.0) -> np.ndarray:
        """A per-region vector ``[n_regions]`` spread to the voxels, float32 ``[n_voxels]``.

        Unlabelled voxels get ``fill``.
        """
        array = np.asarray(values, dtype=np.float32)
        if array.shape != (self.n_regions,):
            raise ValueError(
                f"expected one value per region ({self.n_regions}), got shape {array.shape}"
            )
        out = np.full(self.n_voxels, fill, dtype=np.float32)
        inside = self.labels >= 0
        out[inside] = array[self.labels[inside]]
        return out

    def region_image(self, values, mask_img, fill: float = 0.0):
        """A per-region vector as a 3-D NIfTI image on the mask's grid (0 outside the mask)."""
        from wav2brain.reports.brain_maps import volume_image

        return volume_image(self.voxel_values(values, fill), mask_img)

    def label_image(self, mask_img):
        """The labels as a 3-D int16 NIfTI image (region index + 1; 0 = unlabelled or outside)."""
        import nibabel as nib

        image = self.region_image(np.arange(1, self.n_regions + 1), mask_img)
        return nib.Nifti1Image(np.asarray(image.dataobj).astype(np.int16), image.affine)


def _name(obj) -> str:
    return str(obj) if isinstance(obj, (str, Path)) else f"<{type(obj).__name__}>"


def _load(img, what: str):
    import nibabel as nib

    if isinstance(img, (str, Path)):
        if not Path(img).is_file():
            raise FileNotFoundError(f"{what} file not found: {img}")
        return nib.load(str(img))
    if not hasattr(img, "affine"):
        raise ValueError(f"{what} must be a NIfTI path or image, got {type(img).__name__}")
    return img


def mask_voxels(mask_img) -> tuple[Any, np.ndarray]:
    """The mask image and its boolean 3-D data (non-zero voxels)."""
    image = _load(mask_img, "mask")
    data = np.asarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"mask {_name(mask_img)} must be 3-D, got shape {data.shape}")
    inside = np.nan_to_num(data) != 0
    if not inside.any():
        raise ValueError(f"mask {_name(mask_img)} is empty (no non-zero voxel)")
    return image, inside


def read_labels(labels, source: str = "labels") -> dict[int, str]:
    """A labels table as ``{label value: name}``.

    Parameters
    ----------
    labels : mapping, sequence of str, or path
        ``{value: name}``; a sequence of names for values 1, 2, ... (or 0, 1, ... when the first
        name is a background name such as ``"Background"``, as nilearn's atlases list them); a
        ``.tsv`` / ``.csv`` table with an index column (``index``, ``value``..., else an integer
        ``label`` column) and a name column (``name``, ``label``...; :data:`NAME_COLUMNS`), BIDS
        ``dseg.tsv`` style; or a text file with one name per line (read as a sequence). For a
        4-D atlas, values are the volumes' positions + 1.
    source : str
        Named in errors.
    """
    if isinstance(labels, (str, Path)):
        path = Path(labels)
        if not path.is_file():
            raise FileNotFoundError(f"atlas labels file not found: {path}")
        if path.suffix.lower() in (".tsv", ".csv"):
            return _read_table(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        return read_labels([line.strip() for line in lines if line.strip()], str(path))
    if isinstance(labels, Mapping):
        out = {}
        for value, name in labels.items():
            try:
                key = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: label value {value!r} is not an integer") from None
            out[key] = str(name)
        return out
    if isinstance(labels, Sequence) and not isinstance(labels, (str, bytes)):
        names = [str(n) for n in labels]
        if not names:
            raise ValueError(f"{source}: no label names")
        first = 0 if names[0].strip().lower() in BACKGROUND_NAMES else 1
        return {index + first: name for index, name in enumerate(names)}
    raise ValueError(
        f"{source}: labels must be a mapping, a list of names or a file, got {type(labels).__name__}"
    )


def _read_table(path: Path) -> dict[int, str]:
    import pandas as pd

    table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    columns = {c.lower().strip(): c for c in table.columns}
    index = next((columns[c] for c in INDEX_COLUMNS if c in columns), None)
    names = [columns[c] for c in NAME_COLUMNS if c in columns]
    integer_label = "label" in columns and pd.api.types.is_integer_dtype(table[columns["label"]])
    if index is None and integer_label and len(names) > 1:  # another name column is there
        index = columns["label"]
    name = next((c for c in names if c != index), None)
    if index is None or name is None:
        raise ValueError(
            f"{path}: a labels table needs an index column (one of {INDEX_COLUMNS}, else an "
            f"integer 'label' column next to another name column) and a name column (one of "
            f"{NAME_COLUMNS}); it has {list(table.columns)}"
        )
    out = {}
    for row, (value, label) in enumerate(zip(table[index], table[name], strict=True)):
        if not isinstance(value, (int, np.integer)) and not float(value).is_integer():
            raise ValueError(f"{path} row {row + 1}: {index} {value!r} is not an integer")
        if int(value) in out:
            raise ValueError(f"{path} row {row + 1}: {index} {int(value)} appears twice")
        out[int(value)] = str(label)
    return out


def _label_volume(
    atlas, names: dict[int, str], threshold: float | None, source: str
) -> tuple[np.ndarray, bool]:
    """The atlas as a 3-D int label volume (0 = background), and whether it came from 4-D maps.

    A map with no voxel above the threshold is not an error (it is dropped later, with a
    warning): the threshold, not the table, decides it.
    """
    data = np.asarray(atlas.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        if set(names) != set(range(1, data.shape[3] + 1)):
            raise ValueError(
                f"4-D atlas {source} has {data.shape[3]} maps but its labels name values "
                f"{sorted(names)[:10]}...: give one name per map, in order"
            )
        values = np.nan_to_num(np.asarray(data, dtype=np.float32))
        best = values.argmax(axis=3)
        peak = np.take_along_axis(values, best[..., None], axis=3)[..., 0]
        cut = 0.0 if threshold is None else float(threshold)
        return np.where(peak > cut, best + 1, 0).astype(np.int64), True
    if data.ndim != 3:
        raise ValueError(f"atlas {source} must be a 3-D label image or 4-D maps, got {data.shape}")
    if threshold is not None:
        raise ValueError(f"atlas {source} is a 3-D label image: threshold applies to 4-D maps only")
    finite = np.nan_to_num(np.asarray(data, dtype=np.float64))
    if not np.all(finite == np.round(finite)):
        raise ValueError(
            f"atlas {source} holds non-integer values: a 3-D atlas must be a label image "
            "(a probabilistic atlas is 4-D, one map per region)"
        )
    if finite.min() < 0:
        raise ValueError(
            f"atlas {source} holds negative label values (min {finite.min():g}): labels are "
            "0 (background) or positive integers"
        )
    return finite.astype(np.int64), False


def _world_box(shape, affine) -> np.ndarray:
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape[:3]], indexing="ij"))
    corners = corners.reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def _describe(image, source: str) -> str:
    affine = np.array2string(np.asarray(image.affine), precision=2, separator=",")
    return f"{source} (shape {tuple(image.shape[:3])}, affine {affine.replace(chr(10), '')})"


LABEL_SUFFIXES = (".tsv", ".csv", ".txt")
"""Sidecar labels tables looked for beside an atlas image given without labels (BIDS ``dseg``:
``atlas.nii.gz`` with ``atlas.tsv``)."""


def atlas_labels_path(atlas_img) -> Path:
    """The labels table beside an atlas file (same stem, :data:`LABEL_SUFFIXES`)."""
    if not isinstance(atlas_img, (str, Path)):
        raise ValueError("an atlas given as an image needs its labels (a table, list or mapping)")
    path = Path(atlas_img)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    tried = [path.with_name(stem + suffix) for suffix in LABEL_SUFFIXES]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"atlas {path} was given without labels and no labels table lies beside it (tried "
        f"{[t.name for t in tried]}): pass its labels (--atlas-labels)"
    )


def parcellation_from_atlas(
    atlas_img,
    labels,
    mask_img,
    kind: str = "roi",
    *,
    threshold: float | None = None,
    stages: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Parcellation:
    """The regions of a user atlas over a subject's mask voxels.

    Parameters
    ----------
    atlas_img : path or nibabel image
        A 3-D label image (integer values, 0 = background) or a 4-D probabilistic atlas (one map
        per region). A 4-D atlas is labelled on its own grid by the argmax over maps, keeping
        voxels whose largest value exceeds ``threshold`` (in the maps' units: 0.25 for 0-1
        probabilities, 25 for the percent maps of Harvard-Oxford; default 0, any positive value),
        before resampling: labels are resampled, never probabilities, so one rule applies to both
        kinds of atlas.
    labels : mapping, sequence, path or None
        Names of the label values (:func:`read_labels`); None reads the table beside the atlas
        file (:func:`atlas_labels_path`).
    mask_img : path or nibabel image
        The subject's mask (the dataset's ``mask`` column); its voxel order is the labels' order.
    kind : str
        ``"roi"`` or ``"network"``.
    threshold : float, optional
        For 4-D atlases only (see above).
    stages : mapping, optional
        ``{name: stage}`` for some regions (others are ``"other"``); none when omitted.
    source : str, optional
        Description stored in the result; default the atlas file name.

    Returns
    -------
    Parcellation
        Regions that hold at least one mask voxel, in increasing label value; regions of the
        table left with no voxel inside the mask (outside the field of view) are dropped with a
        warning naming them.

    Raises
    ------
    FileNotFoundError
        A missing atlas, labels or mask file.
    ValueError
        Label values in the image without a name, names of values absent from the image, an atlas
        that does not overlap the mask (both grids named), non-integer 3-D atlases, bad kind.
    """
    from nilearn.image import resample_img

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    atlas = _load(atlas_img, "atlas")
    mask, inside = mask_voxels(mask_img)
    atlas_name, mask_name = _name(atlas_img), _name(mask_img)
    if labels is None:
        labels = atlas_labels_path(atlas_img)
    names = read_labels(labels, source=f"labels of atlas {atlas_name}")
    names.pop(0, None)
    volume, is_maps = _label_volume(atlas, names, threshold, atlas_name)
    present = set(np.unique(volume).tolist()) - {0}
    if unnamed := sorted(present - set(names)):
        raise ValueError(
            f"atlas {atlas_name} holds label values {unnamed[:20]} that its labels table does not "
            f"name ({len(names)} names for values {sorted(names)[:5]}...): wrong table for this image?"
        )
    if not is_maps and (absent := sorted(set(names) - present)):
        raise ValueError(
            f"the labels of atlas {atlas_name} name values absent from the image: "
            f"{[(v, names[v]) for v in absent[:10]]}: wrong table for this image?"
        )
    if not present:
        raise ValueError(
            f"atlas {atlas_name} labels no voxel"
            + (f" (no map value above threshold {threshold or 0})" if is_maps else "")
        )
    box_a, box_m = _world_box(volume.shape, atlas.affine), _world_box(mask.shape, mask.affine)
    disjoint = np.any(box_a[1] < box_m[0]) or np.any(box_m[1] < box_a[0])
    if not disjoint and not (
        volume.shape == inside.shape and np.allclose(atlas.affine, mask.affine, atol=1e-3)
    ):
        import nibabel as nib

        resampled = resample_img(
            nib.Nifti1Image(volume.astype(np.int32), atlas.affine),
            target_affine=mask.affine,
            target_shape=inside.shape,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
        volume = np.rint(np.asarray(resampled.dataobj)).astype(np.int64)
        warnings.warn(
            f"atlas {_describe(atlas, atlas_name)} is on another grid than the mask "
            f"{_describe(mask, mask_name)}: resampled with nearest-neighbour interpolation",
            stacklevel=2,
        )
    voxel_values = np.zeros(int(inside.sum()), dtype=np.int64) if disjoint else volume[inside]
    if not (voxel_values > 0).any():
        raise ValueError(
            f"atlas {_describe(atlas, atlas_name)} does not overlap the mask "
            f"{_describe(mask, mask_name)}: no mask voxel gets a label (another space?)"
        )
    kept = [v for v in sorted(names) if (voxel_values == v).any()]
    if dropped := [names[v] for v in sorted(names) if v not in set(kept)]:
        warnings.warn(
            f"{len(dropped)} regions of atlas {atlas_name} hold no voxel of the mask {mask_name} "
            f"(outside its field of view) and are left out: {dropped[:20]}",
            stacklevel=2,
        )
    lookup = np.full(max(names) + 1, -1, dtype=np.int64)
    lookup[kept] = np.arange(len(kept))
    region_names = [names[v] for v in kept]
    return Parcellation(
        kind=kind,
        names=tuple(region_names),
        labels=lookup[voxel_values],
        source=source or f"atlas {atlas_name}",
        stages=_stages(region_names, stages),
    )


def _stages(names: Sequence[str], stages: Mapping[str, str] | None) -> tuple[str, ...]:
    if stages is None:
        return ()
    if unknown := sorted(set(stages) - set(names)):
        warnings.warn(f"stages given for regions that are not kept: {unknown[:10]}", stacklevel=3)
    return tuple(stages.get(name, "other") for name in names)


@dataclass(frozen=True)
class CoordinateAtlas:
    """A coordinate atlas shipped inside nilearn (read offline from ``nilearn/datasets/data``).

    Attributes
    ----------
    name : str
        Key in :data:`DEFAULT_ATLASES`.
    radius_mm : float
        Published sphere radius (mm) used when the atlas file gives none.
    stages : mapping
        Stage of each network (:data:`STAGES`); networks not listed are ``"other"``.
    citation : str
        Reference, written in the parcellation's source.
    """

    name: str
    radius_mm: float
    stages: Mapping[str, str]
    citation: str

    def load(self):
        """``(xyz_mm [n, 3], radius_mm [n], roi_names [n], networks [n])`` from nilearn's package."""
        from nilearn import datasets

        if self.name == "seitzman_2018":
            bunch = datasets.fetch_coords_seitzman_2018(ordered_regions=False)
            xyz = bunch["rois"][["x", "y", "z"]].to_numpy(dtype=float)
            networks = [str(n) for n in bunch["networks"]]
            regions = [str(r) for r in bunch["regions"]]
            names = [
                f"{i + 1:03d}_{net}_{reg}"
                for i, (net, reg) in enumerate(zip(networks, regions, strict=True))
            ]
            return xyz, np.asarray(bunch["radius"], dtype=float), names, networks
        bunch = datasets.fetch_coords_dosenbach_2010(ordered_regions=False)
        xyz = bunch["rois"][["x", "y", "z"]].to_numpy(dtype=float)
        names = [str(label).replace(" ", "_") for label in bunch["labels"]]
        networks = [str(n) for n in bunch["networks"]]
        return xyz, np.full(len(names), self.radius_mm), names, networks


HIGHER_ORDER_SEITZMAN = ("DefaultMode", "FrontoParietal", "VentralAttention")
"""Seitzman networks counted as higher-order. The atlas has no language network; its default-mode
network holds the angular gyrus, anterior and posterior temporal and medial prefrontal ROIs of
narrative comprehension, and its ventral attention network the left-lateralised superior /
middle temporal and inferior frontal ROIs that Power et al. (2011) noted overlap language areas."""

DEFAULT_ATLASES: dict[str, CoordinateAtlas] = {
    "seitzman_2018": CoordinateAtlas(
        "seitzman_2018",
        5.0,
        {"Auditory": "auditory", **{n: "higher-order" for n in HIGHER_ORDER_SEITZMAN}},
        "Seitzman et al. 2020 NeuroImage (300 ROIs, 13 networks)",
    ),
    "dosenbach_2010": CoordinateAtlas(
        "dosenbach_2010",
        5.0,
        {"default": "higher-order", "fronto-parietal": "higher-order"},
        "Dosenbach et al. 2010 Science (160 ROIs, 6 networks, 10-mm spheres; no auditory network)",
    ),
}
"""The offline coordinate atlases of :func:`default_parcellation`. Seitzman's file gives each ROI
its radius (4-5 mm); Dosenbach et al. used 10-mm-diameter spheres."""

UNASSIGNED = frozenset({"unassigned"})
"""Network names meaning "no network": such ROIs are kept as ROIs but unlabelled as networks."""


def is_mni(space: str) -> bool:
    """Whether a ``space`` label names an MNI template (``MNI152NLin2009cAsym``, ``MNI305``...)."""
    return str(space).upper().startswith("MNI")


def default_parcellation(
    space: str,
    mask_img,
    kind: str = "network",
    *,
    atlas: str = "seitzman_2018",
    radius_mm: float | None = None,
) -> Parcellation:
    """Offline ROIs or networks for MNI data, from a coordinate atlas shipped inside nilearn.

    Each ROI is a sphere around its MNI coordinate; a mask voxel belongs to the nearest ROI centre
    within that ROI's radius (the simulator's rule for its clusters). The radius is the atlas's
    own (Seitzman: 4-5 mm per ROI; Dosenbach: 5 mm), raised to half the voxel diagonal
    (``sqrt(3) / 2`` times the largest voxel size) on coarse grids, so that the voxel holding an
    ROI's centre always belongs to it (a 5-mm sphere holds no voxel centre of an 8-mm grid
    otherwise); ``radius_mm`` replaces both. Coordinates are used as published in MNI space: the
    atlases do not say which MNI152 template, and template differences (a few mm) are below the
    sphere size.

    Parameters
    ----------
    space : str
        The data's space (``responses.space``); must be an MNI space (:func:`is_mni`).
    mask_img : path or nibabel image
        The subject's mask; labels follow its voxel order.
    kind : str
        ``"network"`` (default: regions are the atlas's networks, staged auditory / higher-order
        / other, ``unassigned`` ROIs unlabelled) or ``"roi"`` (one region per ROI, staged by its
        network).
    atlas : str
        A key of :data:`DEFAULT_ATLASES`.
    radius_mm : float, optional
        Sphere radius for every ROI (mm).

    Raises
    ------
    ValueError
        A space that is not MNI (named, with what to do instead), an unknown atlas, a mask that no
        ROI reaches.
    """
    from scipy.spatial import cKDTree

    if not is_mni(space):
        raise ValueError(
            f"no default atlas for space {space!r}: nilearn's shipped atlases are in MNI space. "
            "Give an atlas in this space (--atlas IMAGE --atlas-labels TABLE), or, for simulated "
            "data, the simulator's clusters (simulated_parcellation)"
        )
    if atlas not in DEFAULT_ATLASES:
        raise ValueError(
            f"unknown default atlas {atlas!r}: choose one of {sorted(DEFAULT_ATLASES)}"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if radius_mm is not None and not (math.isfinite(radius_mm) and radius_mm > 0):
        raise ValueError(f"radius_mm must be a positive number of mm, got {radius_mm}")
    spec = DEFAULT_ATLASES[atlas]
    xyz, radii, roi_names, networks = spec.load()
    mask, inside = mask_voxels(mask_img)
    voxel_size = float(np.max(np.linalg.norm(mask.affine[:3, :3], axis=0)))
    floor = math.sqrt(3) / 2 * voxel_size
    radii = np.full(len(roi_names), radius_mm) if radius_mm else np.maximum(radii, floor)
    ijk = np.argwhere(inside)
    world = ijk @ mask.affine[:3, :3].T + mask.affine[:3, 3]
    distance, nearest = cKDTree(xyz).query(world, k=1)
    roi = np.where(distance <= radii[nearest], nearest, -1)
    radius_text = f"{radius_mm:g} mm" if radius_mm else f"atlas radii, at least {floor:.1f} mm"
    source = f"nilearn {atlas} ({spec.citation}; spheres: {radius_text})"
    if not (roi >= 0).any():
        raise ValueError(
            f"no ROI of {atlas} reaches a voxel of the mask {_name(mask_img)}: is the mask in MNI "
            f"space (affine {np.round(mask.affine[:3, 3], 1).tolist()} origin)?"
        )
    if kind == "roi":
        kept = np.unique(roi[roi >= 0])
        lookup = np.full(len(roi_names), -1, dtype=np.int64)
        lookup[kept] = np.arange(kept.size)
        labels = np.where(roi >= 0, lookup[np.maximum(roi, 0)], -1)
        names = [roi_names[i] for i in kept]
        stages = tuple(spec.stages.get(networks[i], "other") for i in kept)
        return Parcellation("roi", tuple(names), labels, source, stages)
    network_names = sorted(
        {networks[i] for i in np.unique(roi[roi >= 0])} - UNASSIGNED,
        key=lambda n: networks.index(n),
    )
    index = {name: k for k, name in enumerate(network_names)}
    per_roi = np.array([index.get(n, -1) for n in networks], dtype=np.int64)
    labels = np.where(roi >= 0, per_roi[np.maximum(roi, 0)], -1)
    stages = tuple(spec.stages.get(n, "other") for n in network_names)
    return Parcellation("network", tuple(network_names), labels, source, stages)


FEATURE_STAGES = {"envelope": "auditory", "phoneme_onset": "auditory", "word_onset": "higher-order"}
"""Stage of a simulated cluster by its planted feature: the acoustic envelope and phoneme onsets
are auditory (acoustic-phonetic) signals, word onsets a lexical, higher-order one. A cluster
driven by model units is auditory when its deepest driving layer lies in the lower half of the
model's ``hidden_states`` (layer <= n_layers // 2), higher-order otherwise (see
:func:`simulated_parcellation`)."""


def _truth_folder(truth_dir) -> Path:
    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    path = Path(truth_dir)
    if (path / GROUND_TRUTH_DIR / "clusters.nii.gz").is_file():
        return path / GROUND_TRUTH_DIR
    for name in ("clusters.nii.gz", "clusters.tsv", "simulation.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} not found: truth_dir must be a simulated dataset or its "
                "derivatives/ground_truth folder (written by `wav2brain simulate`)"
            )
    return path


def _cluster_stage(row: Mapping[str, Any], n_layers: int, path: Path) -> str:
    feature = str(row["feature"])
    if feature in FEATURE_STAGES:
        return FEATURE_STAGES[feature]
    if feature == "unit":
        layers = [int(x) for x in re.findall(r"layer(\d+)", str(row.get("regressor", "")))]
        if not layers:
            raise ValueError(
                f"{path}: cluster {row['name']!r} is driven by units but its regressor names no layer"
            )
        return "auditory" if max(layers) <= n_layers // 2 else "higher-order"
    return "other"


def simulated_parcellation(truth_dir, mask_img, kind: str = "roi") -> Parcellation:
    """The simulator's planted clusters as ROIs, or grouped into auditory / higher-order networks.

    Parameters
    ----------
    truth_dir : path
        A simulated dataset folder or its ``derivatives/ground_truth`` (``clusters.nii.gz``,
        ``clusters.tsv``, ``simulation.json``).
    mask_img : path or nibabel image
        The subject's mask (the prepared dataset's ``mask.nii.gz``).
    kind : str
        ``"roi"``: one region per cluster (its ``clusters.tsv`` name), staged by its feature
        (:data:`FEATURE_STAGES`); ``"network"``: the clusters of each stage merged into one region
        named by the stage (``auditory``, ``higher-order``, ``other``).

    Returns
    -------
    Parcellation
        Source ``SIMULATED clusters <path>``.
    """
    import json

    import pandas as pd

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = _truth_folder(truth_dir)
    table = pd.read_csv(folder / "clusters.tsv", sep="\t")
    missing = [c for c in ("label", "name", "feature") if c not in table.columns]
    if missing:
        raise ValueError(f"{folder / 'clusters.tsv'}: no columns {missing}")
    settings = json.loads((folder / "simulation.json").read_text(encoding="utf-8"))
    try:
        n_layers = int(settings["config"]["model_kwargs"]["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{folder / 'simulation.json'}: no config.model_kwargs.num_hidden_layers"
        ) from None
    rows = table.to_dict("records")
    stages = {str(r["name"]): _cluster_stage(r, n_layers, folder / "clusters.tsv") for r in rows}
    names = {int(r["label"]): str(r["name"]) for r in rows}
    source = f"SIMULATED clusters {folder / 'clusters.nii.gz'}"
    rois = parcellation_from_atlas(
        folder / "clusters.nii.gz", names, mask_img, "roi", stages=stages, source=source
    )
    if kind == "roi":
        return rois
    groups = [s for s in STAGES if s in set(rois.stages)]
    per_roi = np.array([groups.index(s) for s in rois.stages], dtype=np.int64)
    labels = np.where(rois.labels >= 0, per_roi[np.maximum(rois.labels, 0)], -1)
    return Parcellation("network", tuple(groups), labels, source, tuple(groups))


def resolve_parcellation(
    mask_img,
    space: str,
    kind: str = "roi",
    *,
    atlas=None,
    atlas_labels=None,
    truth_dir=None,
    default_atlas: str = "seitzman_2018",
) -> Parcellation:
    """The regions a command's options ask for (``--atlas``, ``--atlas-labels``), in one rule.

    A user atlas when given (:func:`parcellation_from_atlas`; labels from ``atlas_labels`` or the
    table beside it); else the simulator's clusters when ``truth_dir`` is given
    (:func:`simulated_parcellation`); else nilearn's offline atlas for MNI data
    (:func:`default_parcellation`), which names the space and what to pass when it is not MNI.
    """
    if atlas is not None:
        return parcellation_from_atlas(atlas, atlas_labels, mask_img, kind)
    if atlas_labels is not None:
        raise ValueError(f"atlas labels {_name(atlas_labels)} given without an atlas (--atlas)")
    if truth_dir is not None:
        return simulated_parcellation(truth_dir, mask_img, kind)
    return default_parcellation(space, mask_img, kind, atlas=default_atlas)
