"""Biological neurons (BNs) as functional brain networks, and the regions anchoring couples to.

Liu et al. (AAAI 2023, "Coupling Artificial Neurons in BERT and Biological Neurons in the Human
Brain") take BNs to be functional networks extracted from the fMRI of the listeners and couple each
artificial neuron to a network by the synchrony of their temporal responses. :func:`functional_networks`
extracts them with nilearn's group decomposition (:class:`nilearn.decomposition.CanICA`, or
:class:`~nilearn.decomposition.DictLearning`) over the subjects' BOLD, unmasked through the
dataset's masks, and gives each subject's network time courses run by run, which anchoring
treats as extra targets with the same statistics as voxels. Each network is named against a
reference parcellation (by default, for MNI data, the Seitzman networks of
:func:`~wav2brain.anchoring.atlases.default_parcellation`) so that its stage (auditory,
higher-order) is known.

The regions themselves (:class:`Parcellation`, and atlases, nilearn's offline coordinate atlases
and the simulator's clusters) live in :mod:`wav2brain.anchoring.atlases` and are re-exported here.

What nilearn holds in memory. ``fit`` takes a list of 4-D images; for each it masks the data,
reduces it by SVD to ``n_components`` time samples and keeps only that reduction, one image at a
time with ``n_jobs=1``. The subjects are handed to it as a lazy sequence that builds a subject's
4-D image (its runs, z-scored within each run, stacked in time and unmasked onto the mask's grid)
only when nilearn asks for it, each one written into the same buffer (nilearn's loop still holds
the previous image when it asks for the next one), so one subject's 4-D volume is allocated,
never all subjects' BOLD. The peak is that volume (twice with smoothing: nilearn smooths a copy),
the subject's masked matrix and SVD, plus the reductions of all subjects (``n_subjects x
n_components x n_voxels`` float32) and nilearn's group PCA/ICA on them; :func:`estimate_memory`
computes it before anything is read, and a request above ``NetworkConfig.memory_limit_gb`` is
refused. The time courses take a second pass over the runs, one run at a time.

Resuming: with ``out_dir``, the networks are saved there (each file written atomically) with a key
of everything the decomposition depends on (its settings, every run's identity, the group mask); a
later call with the same key reloads the maps instead of refitting, and only names them again and
recomputes the time courses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.anchoring.atlases import (
    DEFAULT_ATLASES,
    KINDS,
    STAGES,
    Parcellation,
    default_parcellation,
    is_mni,
    mask_voxels,
    parcellation_from_atlas,
    read_labels,
    resolve_parcellation,
    simulated_parcellation,
)

__all__ = [
    "DEFAULT_ATLASES",
    "KINDS",
    "METHODS",
    "STAGES",
    "NetworkConfig",
    "NetworkMaps",
    "Parcellation",
    "dataset_networks",
    "default_parcellation",
    "estimate_memory",
    "functional_networks",
    "parcellation_from_atlas",
    "read_labels",
    "resolve_parcellation",
    "simulated_parcellation",
]

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("canica", "dictlearning")

MAPS_NAME = "networks.nii.gz"
TABLE_NAME = "networks.tsv"
MASK_NAME = "networks_mask.nii.gz"
SETTINGS_NAME = "networks.json"
"""Files of :meth:`NetworkMaps.save`."""


@dataclass(frozen=True)
class NetworkConfig:
    """How functional networks are extracted, labelled and named.

    Attributes
    ----------
    method : str
        ``"canica"`` (group ICA, Varoquaux et al. 2010) or ``"dictlearning"`` (sparse dictionary
        learning, Mensch et al. 2016).
    n_components : int
        Networks to extract (also the per-subject SVD reduction of nilearn).
    smoothing_fwhm : float or None
        Spatial smoothing before the decomposition (mm FWHM); nilearn's CanICA default (6 mm).
        None for none (grids coarser than the kernel gain nothing from it).
    random_state : int
        Seed of nilearn's SVDs, FastICA restarts and dictionary initialisation.
    canica_threshold : float, "auto" or None
        CanICA's ``threshold``: ``"auto"`` keeps the top ``1 / n_components`` fraction of
        absolute map values overall (nilearn's default), a float ``t`` the top ``t / n_components``,
        None no thresholding.
    n_init : int
        CanICA's FastICA restarts; the sparsest result is kept.
    alpha : float
        DictLearning's sparsity (larger: sparser maps).
    n_epochs : int
        DictLearning's passes over the data.
    batch_size : int
        DictLearning's mini-batch size (time samples).
    label_threshold : float
        Spatial z (each map z-scored over the mask's voxels) above which a voxel may belong to a
        network; a voxel goes to the network with the largest z (argmax). 2.0 keeps a network's
        tail: about the top 2 % of a Gaussian map, more for the heavy-tailed maps of ICA.
    name_min_share : float
        A network (its voxels with spatial z above ``label_threshold``) is named after the
        reference region holding the largest share of those of its voxels that fall in any
        reference region, when that share is at least this (default: a majority); otherwise it
        keeps a bare ``netNN`` name and stage "other". A share, not a mean z inside the region:
        coordinate atlases cover cortex sparsely (spheres), and a network that fills two of the
        twelve auditory spheres is auditory although the auditory network's mean z stays low.
    n_jobs : int
        Subjects nilearn reduces in parallel; each one holds a subject's 4-D BOLD, so 1 keeps one.
    memory_limit_gb : float or None
        A request whose estimated peak (:func:`estimate_memory`) exceeds this (GB) is refused
        before any BOLD is read; None means 80 % of the machine's physical memory.
    """

    method: str = "canica"
    n_components: int = 20
    smoothing_fwhm: float | None = 6.0
    random_state: int = 0
    canica_threshold: float | str | None = "auto"
    n_init: int = 10
    alpha: float = 10.0
    n_epochs: int = 1
    batch_size: int = 20
    label_threshold: float = 2.0
    name_min_share: float = 0.5
    n_jobs: int = 1
    memory_limit_gb: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"network method must be one of {METHODS}, got {self.method!r}")
        for name in ("n_components", "n_init", "n_epochs", "batch_size", "n_jobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NetworkConfig.{name} must be a positive integer, got {value!r}")
        if self.smoothing_fwhm is not None and not self.smoothing_fwhm >= 0:
            raise ValueError(f"smoothing_fwhm must be >= 0 mm or None, got {self.smoothing_fwhm}")
        if isinstance(self.canica_threshold, str) and self.canica_threshold != "auto":
            raise ValueError(
                f"canica_threshold must be 'auto', a float or None, got {self.canica_threshold!r}"
            )
        if not self.alpha > 0:
            raise ValueError(f"NetworkConfig.alpha must be > 0, got {self.alpha}")
        if not np.isfinite(self.label_threshold):
            raise ValueError(
                f"label_threshold must be a finite spatial z, got {self.label_threshold}"
            )
        if not 0 < self.name_min_share <= 1:
            raise ValueError(f"name_min_share must be in (0, 1], got {self.name_min_share}")
        if self.memory_limit_gb is not None and not self.memory_limit_gb > 0:
            raise ValueError(f"memory_limit_gb must be > 0 or None, got {self.memory_limit_gb}")

    @classmethod
    def from_spec(cls, spec: str, **overrides: Any) -> NetworkConfig:
        """Parse a command-line spec ``METHOD[:N_COMPONENTS]``, e.g. ``"canica:20"``."""
        method, _, count = str(spec).strip().lower().partition(":")
        if method not in METHODS:
            raise ValueError(
                f"--networks {spec!r}: expected METHOD[:N] with METHOD one of {METHODS}"
            )
        if count:
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"--networks {spec!r}: N must be a positive integer")
            overrides = {"n_components": int(count), **overrides}
        return cls(method=method, **overrides)

    @property
    def spec(self) -> str:
        """``METHOD:N_COMPONENTS``."""
        return f"{self.method}:{self.n_components}"

    def estimator(self, mask_img):
        """The nilearn estimator on ``mask_img``; the BOLD it gets is already z-scored per run."""
        from nilearn.decomposition import CanICA, DictLearning

        common = dict(
            mask=mask_img,
            n_components=self.n_components,
            smoothing_fwhm=self.smoothing_fwhm or None,
            random_state=self.random_state,
            standardize=False,
            detrend=False,
            n_jobs=self.n_jobs,
            memory_level=0,
            verbose=0,
        )
        if self.method == "canica":
            return CanICA(threshold=self.canica_threshold, n_init=self.n_init, **common)
        return DictLearning(
            alpha=self.alpha, n_epochs=self.n_epochs, batch_size=self.batch_size, **common
        )


RunInput = Any
"""A run: a :class:`~wav2brain.encoding.runs.RunRecord` (its BOLD read with ``load_bold``) or an
array ``[n_trs, n_voxels]`` over the subject's mask voxels."""


def _run_shape(run: RunInput) -> tuple[int, int]:
    if hasattr(run, "n_trs") and hasattr(run, "n_voxels") and hasattr(run, "shard"):
        return int(run.n_trs), int(run.n_voxels)
    shape = np.shape(run)
    if len(shape) != 2:
        raise ValueError(f"a run's BOLD must be [n_trs, n_voxels], got shape {shape}")
    return int(shape[0]), int(shape[1])


def _run_name(subject: str, index: int, run: RunInput) -> str:
    return getattr(run, "key", None) or f"sub {subject} run {index}"


def _load_run(run: RunInput) -> np.ndarray:
    if hasattr(run, "shard"):
        from wav2brain.encoding.runs import load_bold

        return load_bold(run)
    return np.asarray(run, dtype=np.float32)


def _zscore(bold: np.ndarray) -> np.ndarray:
    """Each column z-scored over the run's TRs (float32; constant columns become 0)."""
    values = np.nan_to_num(np.asarray(bold, dtype=np.float32))
    centred = values - values.mean(axis=0, dtype=np.float64).astype(np.float32)
    scale = np.sqrt(np.mean(centred.astype(np.float64) ** 2, axis=0)).astype(np.float32)
    return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 1e-12)


@dataclass(frozen=True)
class _Masks:
    """The subjects' masks on one grid, and the group mask (voxels in every subject's mask)."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    inside: dict[str, np.ndarray]
    group: np.ndarray

    @classmethod
    def build(cls, subjects: Sequence[str], masks) -> _Masks:
        per_subject = masks if isinstance(masks, Mapping) else dict.fromkeys(subjects, masks)
        missing = [s for s in subjects if s not in per_subject]
        if missing:
            raise ValueError(f"no mask given for subjects {missing[:10]}")
        loaded: dict[Any, tuple[Any, np.ndarray, str]] = {}
        inside, reference = {}, None
        for subject in subjects:
            mask = per_subject[subject]
            key = str(mask) if isinstance(mask, (str, Path)) else id(mask)
            if key not in loaded:
                image, voxels = mask_voxels(mask)
                loaded[key] = (image, voxels, str(mask) if isinstance(mask, (str, Path)) else "")
            image, voxels, name = loaded[key]
            if reference is None:
                reference = (image, subject, name)
            elif voxels.shape != reference[0].shape[:3] or not np.allclose(
                image.affine, reference[0].affine, atol=1e-3
            ):
                raise ValueError(
                    f"sub {subject}'s mask {name or '<image>'} (shape {voxels.shape}) is on another "
                    f"grid than sub {reference[1]}'s {reference[2] or '<image>'} (shape "
                    f"{reference[0].shape[:3]}): group networks need one grid; resample the data to "
                    "a common space, or anchor to an atlas instead"
                )
            inside[subject] = voxels
        group = np.logical_and.reduce([inside[s] for s in subjects])
        if not group.any():
            raise ValueError(f"the masks of subjects {list(subjects)[:10]} share no voxel")
        return cls(reference[0].affine, tuple(reference[0].shape[:3]), inside, group)

    def image(self, data: np.ndarray | None = None):
        import nibabel as nib

        values = self.group.astype(np.uint8) if data is None else data
        return nib.Nifti1Image(values, self.affine)


class _SubjectImages(Sequence):
    """The subjects' 4-D BOLD images, each built when nilearn asks for it.

    With ``reuse`` (``n_jobs=1``: nilearn is done with an image before it asks for the next) every
    image is a view of one buffer sized for the longest subject, so however nilearn's loop keeps
    its last reference, one subject's 4-D volume is allocated; otherwise each image gets its own
    array (``n_jobs`` of them in flight).
    """

    def __init__(self, runs: Mapping[str, Sequence[RunInput]], masks: _Masks, reuse: bool) -> None:
        self.subjects = list(runs)
        self.runs = runs
        self.masks = masks
        self.longest = max(sum(_run_shape(r)[0] for r in own) for own in runs.values())
        self.reuse = reuse
        self._buffer: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.subjects)

    def _volume(self, n_trs: int) -> np.ndarray:
        if not self.reuse:
            return np.zeros((*self.masks.shape, n_trs), dtype=np.float32)
        if self._buffer is None:
            self._buffer = np.empty((*self.masks.shape, self.longest), dtype=np.float32)
        volume = self._buffer[..., :n_trs]
        volume.fill(0.0)  # no value of the previous subject may reach the smoothing kernel
        return volume

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        subject = self.subjects[index]
        inside = self.masks.inside[subject]
        parts = [_zscore(_load_run(run)) for run in self.runs[subject]]
        n_trs = sum(p.shape[0] for p in parts)
        volume = self._volume(n_trs)
        volume[inside] = np.concatenate(parts).T
        del parts
        logger.info("networks: sub %s (%d TRs) handed to nilearn", subject, n_trs)
        return self.masks.image(volume)

    def __iter__(self) -> Iterator:
        for index in range(len(self)):
            yield self[index]


def estimate_memory(
    runs: Mapping[str, Sequence[RunInput]], n_grid: int, n_voxels: int, config: NetworkConfig
) -> int:
    """Estimated peak bytes of :func:`functional_networks` (see the module docstring).

    ``n_grid`` voxels of the mask's grid (the 4-D image), ``n_voxels`` of the group mask. The
    factors (4-D volume x3 with smoothing: the buffer, nilearn's copy and its smoothed copy; x2
    without; masked matrix x4: copies and the SVD) were set against ``benchmarks/bench_networks.py``
    (4 subjects, 200 TRs, 6 mm: 152 MB measured, 144 MB estimated).
    """
    longest = max(sum(_run_shape(r)[0] for r in own) for own in runs.values())
    volume = 4 * n_grid * longest * (3 if config.smoothing_fwhm else 2)
    masked = 4 * n_voxels * longest * 4
    reduced = 4 * len(runs) * config.n_components * n_voxels * 3
    return config.n_jobs * (volume + masked) + reduced


def _memory_limit(config: NetworkConfig) -> float:
    if config.memory_limit_gb is not None:
        return config.memory_limit_gb * 1e9
    return 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True, eq=False)
class NetworkMaps:
    """Functional networks: their spatial maps, names, stages and how they were made.

    Attributes
    ----------
    maps_img : nibabel.Nifti1Image
        4-D float32, one map per network on the mask grid, each z-scored over the group mask's
        voxels (0 outside) and signed so that its largest absolute value is positive.
    mask_img : nibabel.Nifti1Image
        The group mask the networks were extracted on (voxels in every subject's mask).
    names : tuple of str
        ``netNN`` or ``netNN_<reference region>`` (e.g. ``net03_Auditory``).
    stages : tuple of str
        Stage of each network (:data:`STAGES`), the matched reference region's.
    matched : tuple of str
        The reference region each network is named after ("" when none).
    matched_share : tuple of float
        Share of the network's voxels inside reference regions that lie in that region (NaN when
        none does or there is no reference).
    config : NetworkConfig
    source : str
        Method, components, subjects and reference, for tables.
    """

    maps_img: Any
    mask_img: Any
    names: tuple[str, ...]
    stages: tuple[str, ...]
    matched: tuple[str, ...]
    matched_share: tuple[float, ...]
    config: NetworkConfig
    source: str

    @property
    def n_networks(self) -> int:
        """Number of networks."""
        return len(self.names)

    def maps(self, mask_img=None) -> np.ndarray:
        """The maps over a mask's voxels, float32 ``[n_networks, n_voxels]`` (default: the group mask)."""
        from nilearn.masking import apply_mask

        mask = self.mask_img if mask_img is None else mask_voxels(mask_img)[0]
        return np.asarray(apply_mask(self.maps_img, mask), dtype=np.float32)

    def parcellation(self, mask_img=None) -> Parcellation:
        """Networks as a ``"network"`` Parcellation over a mask's voxels (default: the group mask).

        A voxel belongs to the network with the largest spatial z when that z exceeds
        ``config.label_threshold`` (:func:`parcellation_from_atlas` on the 4-D maps); networks
        left with no voxel are dropped with a warning.
        """
        return parcellation_from_atlas(
            self.maps_img,
            list(self.names),
            self.mask_img if mask_img is None else mask_img,
            "network",
            threshold=self.config.label_threshold,
            stages=dict(zip(self.names, self.stages, strict=True)),
            source=self.source,
        )

    def projector(self, mask_img) -> tuple[np.ndarray, np.ndarray]:
        """``(columns, P)`` so that ``zscore(bold)[:, columns] @ P`` are the network time courses.

        Stage 1 of dual regression (Beckmann et al. 2009; what nilearn's ``NiftiMapsMasker`` and
        ``CanICA.transform`` do): each TR's volume, over the group-mask voxels of this mask, is
        regressed on the maps by least squares, ``P = M^T (M M^T)^+`` with ``M`` the maps
        ``[n_networks, voxels]``.
        """
        _, inside = mask_voxels(mask_img)
        group = np.asarray(self.mask_img.dataobj) != 0
        if inside.shape != group.shape:
            raise ValueError(
                f"mask of shape {inside.shape} is not on the networks' grid {group.shape}"
            )
        columns = np.flatnonzero(group[inside])
        if columns.size == 0:
            raise ValueError("the mask shares no voxel with the networks' group mask")
        maps = np.asarray(self.maps_img.dataobj, dtype=np.float64)[inside][columns].T
        gram = maps @ maps.T
        return columns, (maps.T @ np.linalg.pinv(gram)).astype(np.float32)

    def time_courses(self, bold, mask_img) -> np.ndarray:
        """One run's network time courses, float32 ``[n_trs, n_networks]``.

        ``bold`` is the run's ``[n_trs, n_voxels]`` over ``mask_img``'s voxels; it is z-scored
        within the run (the rule applied before the decomposition) and regressed on the maps
        (:meth:`projector`).
        """
        columns, projector = self.projector(mask_img)
        array = np.asarray(bold)
        n_mask = int(mask_voxels(mask_img)[1].sum())
        if array.ndim != 2 or array.shape[1] != n_mask:
            raise ValueError(
                f"run BOLD of shape {array.shape} does not have the mask's {n_mask} voxel columns"
            )
        return _zscore(array)[:, columns] @ projector

    def table(self):
        """One row per network: ``index``, ``name``, ``stage``, ``matched``, ``matched_share``."""
        import pandas as pd

        return pd.DataFrame(
            {
                "index": np.arange(self.n_networks),
                "name": list(self.names),
                "stage": list(self.stages),
                "matched": list(self.matched),
                "matched_share": list(self.matched_share),
            }
        )

    def save(self, folder: str | os.PathLike, key: Mapping[str, Any] | None = None) -> Path:
        """Write the maps, group mask, table and settings into ``folder`` (each file atomically).

        ``key`` (what the decomposition depends on, JSON-serialisable) is stored in the settings,
        which are written last, so a folder with settings is complete.
        """
        import nibabel as nib

        from wav2brain.atomic import partial_path, write_text_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS_NAME).unlink(
            missing_ok=True
        )  # until rewritten, the folder is incomplete
        for image, name in ((self.maps_img, MAPS_NAME), (self.mask_img, MASK_NAME)):
            final = folder / name
            temporary = partial_path(final).with_name(f".{final.name}.partial.nii.gz")
            nib.save(image, temporary)
            os.replace(temporary, final)
        write_text_atomic(self.table().to_csv(sep="\t", index=False), folder / TABLE_NAME)
        settings = {"config": asdict(self.config), "source": self.source, "key": key}
        text = json.dumps(settings, indent=2, default=str) + "\n"
        write_text_atomic(text, folder / SETTINGS_NAME)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> NetworkMaps:
        """Read what :meth:`save` wrote."""
        import nibabel as nib
        import pandas as pd

        folder = Path(folder)
        for name in (MAPS_NAME, MASK_NAME, TABLE_NAME, SETTINGS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} not found: not a saved networks folder")
        table = pd.read_csv(folder / TABLE_NAME, sep="\t", dtype={"matched": str})
        table["matched"] = table["matched"].fillna("")
        settings = json.loads((folder / SETTINGS_NAME).read_text(encoding="utf-8"))
        known = {f.name for f in fields(NetworkConfig)}
        config = NetworkConfig(**{k: v for k, v in settings["config"].items() if k in known})
        maps = nib.load(str(folder / MAPS_NAME))
        return cls(
            maps_img=nib.Nifti1Image(np.asarray(maps.dataobj, dtype=np.float32), maps.affine),
            mask_img=nib.load(str(folder / MASK_NAME)),
            names=tuple(str(n) for n in table["name"]),
            stages=tuple(str(s) for s in table["stage"]),
            matched=tuple(str(m) for m in table["matched"]),
            matched_share=tuple(float(z) for z in table["matched_share"]),
            config=config,
            source=str(settings["source"]),
        )


def _spatial_z(components: np.ndarray) -> np.ndarray:
    """Each map z-scored over voxels and signed so that its largest absolute value is positive."""
    maps = np.asarray(components, dtype=np.float64)
    flip = np.where(maps.max(axis=1) < -maps.min(axis=1), -1.0, 1.0)
    maps = maps * flip[:, None]
    centred = maps - maps.mean(axis=1, keepdims=True)
    scale = centred.std(axis=1, keepdims=True)
    return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)


def _name_networks(
    zmaps: np.ndarray, reference: Parcellation | None, config: NetworkConfig
) -> tuple[list[str], list[str], list[str], list[float]]:
    """Names, stages, matched regions and shares: each network against the reference regions."""
    n = zmaps.shape[0]
    bare = [f"net{k + 1:02d}" for k in range(n)]
    names, stages, matched, shares = list(bare), ["other"] * n, [""] * n, [float("nan")] * n
    if reference is None:
        return names, stages, matched, shares
    inside = reference.labels >= 0
    for k in range(n):
        hits = reference.labels[inside & (zmaps[k] > config.label_threshold)]
        if hits.size == 0:
            continue
        counts = np.bincount(hits, minlength=reference.n_regions)
        best = int(counts.argmax())
        shares[k] = float(counts[best] / hits.size)
        if shares[k] >= config.name_min_share:
            region = reference.names[best]
            names[k], stages[k], matched[k] = (
                f"{bare[k]}_{region}",
                reference.stage_of(region),
                region,
            )
    return names, stages, matched, shares


DECOMPOSITION_FIELDS = (
    "method", "n_components", "smoothing_fwhm", "random_state", "canica_threshold", "n_init",
    "alpha", "n_epochs", "batch_size",
)  # fmt: skip
"""The :class:`NetworkConfig` fields the maps depend on (the others name, label or bound memory)."""


def _run_identity(run: RunInput) -> Any:
    if hasattr(run, "identity"):
        return run.identity()
    array = np.ascontiguousarray(run, dtype=np.float32)
    return {"shape": list(array.shape), "sha1": hashlib.sha1(array.data).hexdigest()}


def _fit_key(runs: Mapping[str, Sequence[RunInput]], grid: _Masks, config: NetworkConfig) -> dict:
    """Everything the decomposition depends on, as JSON-ready values."""
    settings = asdict(config)
    return {
        "config": {name: settings[name] for name in DECOMPOSITION_FIELDS},
        "runs": {subject: [_run_identity(r) for r in own] for subject, own in runs.items()},
        "group_mask": hashlib.sha1(np.packbits(grid.group).tobytes()).hexdigest(),
        "affine": np.round(grid.affine, 6).tolist(),
    }


def _saved_maps(out_dir, key: dict, grid: _Masks) -> np.ndarray | None:
    """The spatial z maps saved in ``out_dir`` under the same key, or None (then they are fitted)."""
    if out_dir is None or not (Path(out_dir) / SETTINGS_NAME).is_file():
        return None
    path = Path(out_dir) / SETTINGS_NAME
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("key")
    except json.JSONDecodeError:
        stored = None
    if stored != json.loads(json.dumps(key, default=str)):
        logger.info("networks: %s was made from other inputs or settings; refitting", path)
        return None
    saved = NetworkMaps.load(out_dir)
    logger.info("networks: reusing the decomposition saved in %s", out_dir)
    return np.asarray(saved.maps_img.dataobj, dtype=np.float64)[grid.group].T


def _check_runs(runs: Mapping[str, Sequence[RunInput]], masks: _Masks) -> None:
    if not runs:
        raise ValueError("functional_networks needs at least one subject's runs")
    for subject, own in runs.items():
        if not own:
            raise ValueError(f"sub {subject}: no runs")
        n_mask = int(masks.inside[subject].sum())
        for index, run in enumerate(own):
            n_trs, n_voxels = _run_shape(run)
            if n_voxels != n_mask:
                raise ValueError(
                    f"{_run_name(subject, index, run)}: BOLD has {n_voxels} voxel columns but the "
                    f"subject's mask holds {n_mask} voxels"
                )
            if n_trs < 2:
                raise ValueError(f"{_run_name(subject, index, run)}: {n_trs} TR (need >= 2)")


def _space(runs: Mapping[str, Sequence[RunInput]], space: str | None) -> str | None:
    spaces = {
        (subject, str(run.space))
        for subject, own in runs.items()
        for run in own
        if hasattr(run, "space")
    }
    distinct = sorted({s for _, s in spaces})
    if len(distinct) > 1:
        examples = {s: next(sub for sub, sp in sorted(spaces) if sp == s) for s in distinct}
        raise ValueError(
            f"runs in different spaces {examples} (space: first subject): group networks need "
            "one space; choose subjects of one space, or anchor to an atlas per space"
        )
    if distinct and space is not None and distinct[0] != space:
        raise ValueError(f"space {space!r} given but the runs are in space {distinct[0]!r}")
    return distinct[0] if distinct else space


def functional_networks(
    bold_runs_by_subject: Mapping[str, Sequence[RunInput]],
    masks,
    config: NetworkConfig | None = None,
    *,
    space: str | None = None,
    reference: Callable[[Any], Parcellation] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> tuple[NetworkMaps, dict[str, list[np.ndarray]]]:
    """Functional networks from the subjects' BOLD, and each subject's network time courses.

    Parameters
    ----------
    bold_runs_by_subject : mapping
        ``{subject: [run, ...]}``; a run is a :class:`~wav2brain.encoding.runs.RunRecord` (read
        with ``load_bold`` when needed, one subject at a time) or an array ``[n_trs, n_voxels]``
        over the subject's mask (TRs in rows).
    masks : path, image or mapping
        The mask of every subject, or ``{subject: mask}``; all on one grid. The decomposition runs
        on the voxels in every subject's mask (the group mask).
    config : NetworkConfig, optional
    space : str, optional
        The data's space when the runs are arrays (RunRecords carry theirs; all must agree).
    reference : callable, optional
        ``reference(group_mask_img) -> Parcellation`` naming the networks (e.g.
        ``lambda m: simulated_parcellation(truth, m, "network")``); default, for MNI spaces, the
        Seitzman networks (:func:`default_parcellation`), else none (bare ``netNN`` names).
    out_dir : path, optional
        Where the networks are saved (:meth:`NetworkMaps.save`) and, when a previous call with the
        same inputs saved them, reloaded from instead of refitting (see the module docstring).

    Returns
    -------
    networks : NetworkMaps
    time_courses : dict
        ``{subject: [float32 [n_trs, n_networks] per run, in the given order]}``.

    Raises
    ------
    ValueError
        Subjects in different spaces or on different grids, runs whose width is not their mask's,
        a request above the memory limit (before any BOLD is read), masks sharing no voxel.
    """
    config = config or NetworkConfig()
    subjects = list(bold_runs_by_subject)
    if not subjects:
        raise ValueError("functional_networks needs at least one subject's runs")
    space = _space(bold_runs_by_subject, space)
    grid = _Masks.build(subjects, masks)
    _check_runs(bold_runs_by_subject, grid)
    n_group = int(grid.group.sum())
    if config.n_components > n_group:
        raise ValueError(
            f"{config.n_components} networks requested from a group mask of {n_group} voxels"
        )
    peak = estimate_memory(bold_runs_by_subject, int(np.prod(grid.shape)), n_group, config)
    limit = _memory_limit(config)
    if peak > limit:
        raise ValueError(
            f"functional networks ({config.spec}, {len(subjects)} subjects, {n_group} voxels) "
            f"would need about {peak / 1e9:.1f} GB, above the limit of {limit / 1e9:.1f} GB "
            "(NetworkConfig.memory_limit_gb): use fewer subjects or components, or raise the limit"
        )
    logger.info(
        "networks: %s over %d subjects, %d voxels (estimated peak %.2f GB)",
        config.spec, len(subjects), n_group, peak / 1e9,
    )  # fmt: skip
    group_img = grid.image()
    key = _fit_key(bold_runs_by_subject, grid, config)
    zmaps = _saved_maps(out_dir, key, grid)
    if zmaps is None:
        estimator = config.estimator(group_img)
        estimator.fit(_SubjectImages(bold_runs_by_subject, grid, reuse=config.n_jobs == 1))
        zmaps = _spatial_z(estimator.components_)
    if reference is None and space is not None and is_mni(space):

        def reference(mask_img) -> Parcellation:
            return default_parcellation(space, mask_img, "network")

    parcels = reference(group_img) if reference is not None else None
    names, stages, matched, values = _name_networks(zmaps, parcels, config)
    volume = np.zeros((*grid.shape, zmaps.shape[0]), dtype=np.float32)
    volume[grid.group] = zmaps.T
    source = (
        f"{config.spec} over {len(subjects)} subjects"
        + (f" (space {space})" if space else "")
        + (f", named against {parcels.source}" if parcels is not None else "")
    )
    networks = NetworkMaps(
        maps_img=grid.image(volume),
        mask_img=group_img,
        names=tuple(names),
        stages=tuple(stages),
        matched=tuple(matched),
        matched_share=tuple(values),
        config=config,
        source=source,
    )
    if out_dir is not None:
        networks.save(out_dir, key)
    courses = {}
    for subject in subjects:
        mask_img = grid.image(grid.inside[subject].astype(np.uint8))
        columns, projector = networks.projector(mask_img)
        courses[subject] = [
            _zscore(_load_run(run))[:, columns] @ projector for run in bold_runs_by_subject[subject]
        ]
    return networks, courses


def dataset_networks(
    dataset: str | os.PathLike,
    config: NetworkConfig | None = None,
    *,
    subjects: Sequence[str] | None = None,
    reference: Callable[[Any], Parcellation] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> tuple[NetworkMaps, dict[str, list[np.ndarray]]]:
    """:func:`functional_networks` over a prepared dataset folder (``wav2brain prepare``).

    Runs are read with :func:`~wav2brain.encoding.runs.read_responses` (no BOLD until needed);
    each subject's mask is the file its runs name in the ``mask`` column (all of a subject's runs
    must name the same one). Time courses follow the order of each subject's runs in
    :func:`~wav2brain.encoding.runs.subject_runs`.
    """
    from wav2brain.encoding.runs import read_responses, subject_runs

    dataset = Path(dataset)
    grouped = subject_runs(read_responses(dataset), subjects)
    masks = {}
    for subject, records in grouped.items():
        named = sorted({r.mask or "" for r in records})
        if named == [""]:
            raise ValueError(
                f"{dataset}: sub {subject}'s runs name no mask (the responses' mask column): "
                "networks need volumes; surface or array data cannot be unmasked"
            )
        if len(named) > 1:
            raise ValueError(
                f"{dataset}: sub {subject}'s runs name several masks {named}: networks need one "
                "voxel grid per subject"
            )
        masks[subject] = dataset / named[0]
    return functional_networks(grouped, masks, config, reference=reference, out_dir=out_dir)
