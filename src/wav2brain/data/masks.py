"""Brain/ROI masks: computed from EPI with nilearn, or read from a file and matched to the BOLD grid.

A mask on another grid than the BOLD is resampled (nearest neighbour, so labels stay labels) with a
warning, when the two grids describe the same part of space; it is refused when most of the mask
lies outside the BOLD field of view, which is what a mask in another space (MNI vs native)
looks like. Surface and array data take a boolean vector over vertices/columns instead.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_VOLUMES = 32
"""Volumes read at once from a 4D image (bounds memory to a few volumes)."""


@dataclass
class MaskConfig:
    """How a brain mask is computed from EPI and matched to a BOLD grid.

    Attributes
    ----------
    lower_cutoff, upper_cutoff : float
        Fractions of the mean-image histogram for :func:`nilearn.masking.compute_epi_mask`.
    opening : int
        Morphological opening iterations (voxels) of ``compute_epi_mask``.
    intersect_threshold : float
        Fraction of runs a voxel must be in to enter the common mask
        (:func:`nilearn.masking.intersect_masks`; 1 is the intersection, 0 the union).
    min_overlap : float
        Smallest fraction of mask voxels (world coordinates) that must fall inside the BOLD
        field of view for a mask on another grid to be resampled rather than refused.
    """

    lower_cutoff: float = 0.2
    upper_cutoff: float = 0.85
    opening: int = 2
    intersect_threshold: float = 0.5
    min_overlap: float = 0.5


def iter_volumes(img, start: int = 0, stop: int | None = None, chunk_volumes: int = CHUNK_VOLUMES):
    """Yield ``(first, block)``: float32 [x, y, z, n] blocks of volumes ``start:stop`` in order.

    A file-backed image is read front to back through one open stream
    (:class:`nibabel.openers.ImageOpener`, with the offset, dtype, order and scaling of its
    :class:`nibabel.arrayproxy.ArrayProxy`), because nibabel's
    ``dataobj[..., a:b]`` reopens a ``.nii.gz`` and decompresses it from the start for every slice
    (without ``indexed_gzip``), which makes chunked reading quadratic in the run length. An
    in-memory image is sliced through ``dataobj``.

    Parameters
    ----------
    img : nibabel image
        4D NIfTI.
    start, stop : int
        Volume range (TRs); ``stop`` defaults to the last volume.
    chunk_volumes : int
        Volumes per block.
    """
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.openers import ImageOpener

    stop = img.shape[3] if stop is None else stop
    proxy = img.dataobj
    if not isinstance(proxy, ArrayProxy) or not isinstance(proxy.file_like, (str, Path)):
        for first in range(start, stop, chunk_volumes):
            last = min(first + chunk_volumes, stop)
            yield first, np.asarray(proxy[..., first:last], dtype=np.float32)
        return
    volume_bytes = int(np.prod(img.shape[:3])) * proxy.dtype.itemsize
    scaled = proxy.slope != 1 or proxy.inter != 0
    with ImageOpener(proxy.file_like, "rb") as stream:
        stream.seek(int(proxy.offset) + start * volume_bytes)
        for first in range(start, stop, chunk_volumes):
            count = min(chunk_volumes, stop - first)
            try:
                raw = stream.read(count * volume_bytes)
            except (EOFError, OSError, zlib.error) as err:
                raise ValueError(f"{proxy.file_like} is corrupt or truncated: {err}") from err
            if len(raw) != count * volume_bytes:
                raise ValueError(
                    f"{proxy.file_like} is truncated: volumes {first}-{first + count - 1} of "
                    f"{img.shape[3]} announced by the header are missing"
                )
            block = np.frombuffer(raw, proxy.dtype).reshape(
                img.shape[:3] + (count,), order=proxy.order
            )
            block = block.astype(np.float32)
            if scaled:
                block = block * np.float32(proxy.slope) + np.float32(proxy.inter)
            yield first, block


def mean_image(bold, chunk_volumes: int = CHUNK_VOLUMES):
    """Temporal mean of a 4D NIfTI, read a few volumes at a time (:func:`iter_volumes`).

    Parameters
    ----------
    bold : str, Path or nibabel image
        4D image.
    chunk_volumes : int
        Volumes read per step.

    Returns
    -------
    nibabel.Nifti1Image
        3D float32 mean image on the BOLD grid.
    """
    import nibabel as nib

    img = nib.load(str(bold)) if isinstance(bold, (str, Path)) else bold
    if img.ndim != 4:
        raise ValueError(f"expected a 4D BOLD image, got shape {img.shape} ({_name(bold)})")
    total = np.zeros(img.shape[:3], dtype=np.float64)
    for _, block in iter_volumes(img, chunk_volumes=chunk_volumes):
        total += np.nan_to_num(block).sum(axis=3, dtype=np.float64)
    return nib.Nifti1Image((total / img.shape[3]).astype(np.float32), img.affine)


def compute_mask(bold_paths: Sequence, config: MaskConfig | None = None):
    """A brain mask common to several runs, computed with nilearn from each run's mean EPI.

    Each run's mean image (:func:`mean_image`) goes through
    :func:`nilearn.masking.compute_epi_mask`; the run masks are combined with
    :func:`nilearn.masking.intersect_masks`. One run is held in memory at a time, a few volumes
    at a time.

    Returns
    -------
    nibabel.Nifti1Image
        3D uint8 mask on the grid of the runs (which must share it).
    """
    from nilearn.masking import compute_epi_mask, intersect_masks

    config = config or MaskConfig()
    if not bold_paths:
        raise ValueError("compute_mask needs at least one BOLD image")
    masks = []
    for bold in bold_paths:
        mask = compute_epi_mask(
            mean_image(bold),
            lower_cutoff=config.lower_cutoff,
            upper_cutoff=config.upper_cutoff,
            opening=config.opening,
        )
        if masks and (
            mask.shape != masks[0].shape or not np.allclose(mask.affine, masks[0].affine)
        ):
            raise ValueError(
                f"BOLD {_name(bold)} is on another grid than {_name(bold_paths[0])}; "
                "compute masks per space, or resample the runs first"
            )
        masks.append(mask)
    combined = masks[0]
    if len(masks) > 1:
        combined = intersect_masks(masks, threshold=config.intersect_threshold, connected=True)
    if not np.asarray(combined.dataobj).any():
        raise ValueError(
            f"the EPI mask computed from {[_name(b) for b in bold_paths]} is empty; pass a brain "
            "mask, or check that the images are raw EPI (not already masked or cleaned)"
        )
    return combined


def combine_masks(mask_paths: Sequence, reference, config: MaskConfig | None = None):
    """One mask from the brain masks that come with several runs (fMRIPrep ``desc-brain_mask``).

    Each mask is matched to the reference grid (:func:`load_mask`) and they are combined with
    :func:`nilearn.masking.intersect_masks` at ``config.intersect_threshold``, the rule used for
    computed masks (:func:`compute_mask`), so that a column means the same voxel in every run.

    Returns
    -------
    nibabel.Nifti1Image
        3D uint8 mask on the reference grid.
    """
    from nilearn.masking import intersect_masks

    config = config or MaskConfig()
    if not mask_paths:
        raise ValueError("combine_masks needs at least one mask")
    masks = [load_mask(path, reference, config) for path in mask_paths]
    if len(masks) == 1:
        return masks[0]
    combined = intersect_masks(masks, threshold=config.intersect_threshold, connected=False)
    if not np.asarray(combined.dataobj).any():
        raise ValueError(
            f"the brain masks {[_name(p) for p in mask_paths]} have no voxel in common at "
            f"intersect_threshold {config.intersect_threshold}"
        )
    return combined


def load_mask(mask, reference, config: MaskConfig | None = None):
    """Read a mask file (or image) and match it to a BOLD grid.

    Parameters
    ----------
    mask : str, Path or nibabel image
        3D mask or ROI/label image; every non-zero voxel is in the mask.
    reference : nibabel image
        BOLD image (3D or 4D) whose grid the mask must share.
    config : MaskConfig, optional
        ``min_overlap`` decides between resampling and refusing.

    Returns
    -------
    nibabel.Nifti1Image
        3D uint8 mask on the reference grid.

    Raises
    ------
    FileNotFoundError
        Missing mask file.
    ValueError
        Not 3D; empty; on a grid covering another part of space (refused); empty after
        resampling.
    """
    import nibabel as nib
    from nilearn.image import resample_to_img

    config = config or MaskConfig()
    if isinstance(mask, (str, Path)):
        if not Path(mask).is_file():
            raise FileNotFoundError(f"mask file not found: {mask}")
        img = nib.load(str(mask))
    else:
        img = mask
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"mask {_name(mask)} must be 3D, got shape {data.shape}")
    binary = nib.Nifti1Image((np.nan_to_num(data) != 0).astype(np.uint8), img.affine)
    if not binary.get_fdata().any():
        raise ValueError(f"mask {_name(mask)} is empty (no non-zero voxel)")
    ref_shape, ref_affine = reference.shape[:3], reference.affine
    if binary.shape == ref_shape and np.allclose(binary.affine, ref_affine, atol=1e-3):
        return binary
    overlap = _overlap_fraction(binary, ref_shape, ref_affine)
    if overlap < config.min_overlap:
        raise ValueError(
            f"mask {_name(mask)} (shape {binary.shape}) and the BOLD grid (shape {ref_shape}) "
            f"cover different parts of space: {overlap:.0%} of mask voxels lie inside the BOLD "
            f"field of view (need {config.min_overlap:.0%}); is the mask in the same space?"
        )
    ref3d = nib.Nifti1Image(np.zeros(ref_shape, dtype=np.uint8), ref_affine)
    resampled = resample_to_img(
        binary, ref3d, interpolation="nearest", force_resample=True, copy_header=True
    )
    out = nib.Nifti1Image((resampled.get_fdata() > 0.5).astype(np.uint8), ref_affine)
    if not out.get_fdata().any():
        raise ValueError(f"mask {_name(mask)} is empty after resampling to the BOLD grid")
    warnings.warn(
        f"mask {_name(mask)} is on another grid (shape {binary.shape}) than the BOLD "
        f"(shape {ref_shape}); resampled with nearest-neighbour interpolation",
        stacklevel=2,
    )
    return out


def feature_mask(mask, n_features: int, source: str) -> np.ndarray:
    """A boolean vector over surface vertices or array columns.

    Parameters
    ----------
    mask : None, array-like, or path to ``.npy`` / ``.gii``
        Non-zero entries are kept; None keeps all.
    n_features : int
        Vertices (both hemispheres, left first) or array columns.
    source : str
        The data file, named in errors.
    """
    if mask is None:
        return np.ones(n_features, dtype=bool)
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        if path.name.endswith(".gii"):
            import nibabel as nib

            values = np.concatenate([np.ravel(d.data) for d in nib.load(str(path)).darrays])
        else:
            values = np.load(path)
    else:
        values = np.asarray(mask)
    values = np.ravel(values)
    if values.shape[0] != n_features:
        raise ValueError(
            f"mask {_name(mask)} has {values.shape[0]} entries but {source} has "
            f"{n_features} vertices/columns"
        )
    keep = np.nan_to_num(values.astype(np.float64)) != 0
    if not keep.any():
        raise ValueError(f"mask {_name(mask)} is empty (no non-zero entry)")
    return keep


def _overlap_fraction(mask_img, ref_shape, ref_affine) -> float:
    """Fraction of mask voxel centres that fall inside the reference field of view."""
    ijk = np.argwhere(np.asarray(mask_img.dataobj) > 0)
    world = mask_img.affine[:3, :3] @ ijk.T + mask_img.affine[:3, 3:4]
    ref_ijk = np.linalg.inv(ref_affine)[:3, :3] @ world + np.linalg.inv(ref_affine)[:3, 3:4]
    inside = np.all((ref_ijk > -0.5) & (ref_ijk < np.asarray(ref_shape)[:, None] - 0.5), axis=0)
    return float(inside.mean())


def _name(obj) -> str:
    return str(obj) if isinstance(obj, (str, Path)) else f"<{type(obj).__name__}>"
