"""Per-voxel maps to images: NIfTI through the dataset's mask, GIfTI on surfaces, PNG with nilearn.

Column ``j`` of a dataset's ``bold`` is voxel ``j`` of its mask in nilearn's order
(:func:`nilearn.masking.apply_mask`), so :func:`nilearn.masking.unmask` puts a per-voxel array
back into the volume. Surface datasets (space ``fsaverage*``) hold both hemispheres, left then
right. Each run names its own mask (the ``mask`` column of ``responses``: ``mask.nii.gz``, or
``masks/grid-<k>.nii.gz`` when runs lie on several voxel grids); :func:`map_target` checks, before
any BOLD is read, whether a subject's maps can be drawn and from which mask. Every file is written
under a temporary name and renamed (atomic). Plots use the Agg
backend (no display needed) and nilearn's bundled MNI152 template or fsaverage5 mesh (no download).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

PARTIAL = ".partial"
FSAVERAGE5_VERTICES = 2 * 10242
"""Vertices of nilearn's bundled fsaverage5 mesh, both hemispheres."""

logger = logging.getLogger(__name__)


def mask_voxel_count(mask_path: str | os.PathLike) -> int:
    """Voxels inside a mask image (non-zero values); the header and data of a small file."""
    import nibabel as nib

    return int(np.count_nonzero(np.asarray(nib.load(str(mask_path)).dataobj)))


def map_target(space: str, mask_path: Path | None, n_voxels: int) -> str | None:
    """Why a subject's maps cannot be drawn (None when they can), checked before any loading.

    Parameters
    ----------
    space : str
        The runs' space (``responses.space``).
    mask_path : Path or None
        The mask the runs name (``dataset / responses.mask``), or None when they name none.
    n_voxels : int
        Columns of the runs' ``bold``.

    Returns
    -------
    None for a volume with its mask or a surface (``fsaverage*``, GIfTI); else one line saying
    why only tables are written (arrays without a mask, such as LeBel's native voxels).

    Raises
    ------
    FileNotFoundError
        The runs name a mask that is not in the dataset folder.
    ValueError
        The mask holds another number of voxels than the runs' columns.
    """
    if mask_path is None:
        if space.startswith("fsaverage"):
            return None
        return (
            f"the runs (space {space!r}) name no mask in the responses table: "
            "their columns cannot be placed in a volume, so only tables are written"
        )
    if not mask_path.is_file():
        raise FileNotFoundError(f"the runs name the mask {mask_path}, which does not exist")
    inside = mask_voxel_count(mask_path)
    if inside != n_voxels:
        raise ValueError(
            f"mask {mask_path} holds {inside} voxels but the runs' bold has {n_voxels} columns"
        )
    return None


def _temporary(path: Path) -> Path:
    """A sibling temporary name keeping the extension (nibabel reads the format from it)."""
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    return path.with_name(f"{name[: len(name) - len(suffix)]}{PARTIAL}.{os.getpid()}{suffix}")


def _values(values, n_expected: int | None = None) -> np.ndarray:
    """A finite-or-NaN float32 vector, checked against the expected voxel count."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"a map must be 1-D [n_voxels], got shape {array.shape}")
    if n_expected is not None and array.size != n_expected:
        raise ValueError(f"map has {array.size} values but the mask has {n_expected} voxels")
    return array


def volume_image(values, mask_img):
    """A 3-D NIfTI image holding ``values`` [n_voxels] at the mask's voxels (0 elsewhere)."""
    from nilearn.image import load_img
    from nilearn.masking import unmask

    mask = load_img(mask_img)
    n_voxels = int(np.count_nonzero(np.asarray(mask.dataobj)))
    return unmask(_values(values, n_voxels), mask)


def save_nifti(values, mask_img, path: str | os.PathLike) -> Path:
    """Write ``values`` [n_voxels] as a NIfTI volume in the mask's space; return the path."""
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI map needs a .nii or .nii.gz name")
    image = volume_image(values, mask_img)
    temporary = _temporary(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine), temporary)
    os.replace(temporary, path)
    return path


def save_gifti(values, path: str | os.PathLike) -> Path:
    """Write ``values`` [n_vertices] as one GIfTI data array (float32); return the path."""
    import nibabel as nib

    path = Path(path)
    if path.suffix != ".gii":
        raise ValueError(f"{path}: a GIfTI map needs a .gii name")
    array = nib.gifti.GiftiDataArray(
        _values(values), intent="NIFTI_INTENT_ESTIMATE", datatype="NIFTI_TYPE_FLOAT32"
    )
    temporary = _temporary(path)
    nib.save(nib.gifti.GiftiImage(darrays=[array]), temporary)
    os.replace(temporary, path)
    return path


def split_hemispheres(values, mesh: str = "fsaverage5") -> dict[str, np.ndarray]:
    """Split a both-hemisphere vector (left first) into ``{"left", "right"}`` for ``mesh``."""
    from nilearn.datasets import load_fsaverage

    meshes = load_fsaverage(mesh)["inflated"]
    n_left, n_right = meshes.parts["left"].n_vertices, meshes.parts["right"].n_vertices
    array = _values(values, n_left + n_right)
    return {"left": array[:n_left], "right": array[n_left:]}


def _save_figure(figure, path: Path) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    temporary = _temporary(path)
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def plot_volume_map(
    values, mask_img, path: str | os.PathLike, title: str = "", template: bool = True
) -> Path:
    """PNG of a per-voxel map over the mask (nilearn ``plot_stat_map``, ortho slices).

    ``template`` draws the map over nilearn's MNI152 template: right for MNI-space data, wrong
    for native or toy grids, where it should be False (no background).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    image = volume_image(np.nan_to_num(_values(values)), mask_img)
    figure = plt.figure(figsize=(9, 3.5))
    kwargs = {} if template else {"bg_img": None}
    plotting.plot_stat_map(image, figure=figure, title=title or None, **kwargs)
    return _save_figure(figure, Path(path))


def plot_surface_map(
    values, path: str | os.PathLike, title: str = "", mesh: str = "fsaverage5"
) -> Path:
    """PNG of a both-hemisphere map on nilearn's inflated ``mesh`` (lateral views)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting
    from nilearn.datasets import load_fsaverage

    hemispheres = split_hemispheres(np.nan_to_num(_values(values)), mesh)
    inflated = load_fsaverage(mesh)["inflated"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 4), subplot_kw={"projection": "3d"})
    for axis, hemi in zip(axes, ("left", "right"), strict=True):
        plotting.plot_surf_stat_map(
            inflated.parts[hemi],
            hemispheres[hemi],
            hemi=hemi,
            axes=axis,
            figure=figure,
            colorbar=hemi == "right",
            title=f"{title} ({hemi})".strip(),
        )
    return _save_figure(figure, Path(path))


def write_map(
    values, stem: str | os.PathLike, space: str, mask_img=None, title: str = ""
) -> list[Path]:
    """Write a per-voxel map in the dataset's space, with its PNG; return the written paths.

    Volumes (``mask_img`` given): ``stem.nii.gz`` and ``stem.png``. Surfaces (``space`` starting
    with "fsaverage", no mask): ``stem.gii`` (both hemispheres, left first), and ``stem.png``
    when the vertex count is fsaverage5's (the only mesh nilearn ships).
    """
    stem = Path(stem)
    if mask_img is not None:
        return [
            save_nifti(values, mask_img, stem.with_name(stem.name + ".nii.gz")),
            plot_volume_map(
                values,
                mask_img,
                stem.with_name(stem.name + ".png"),
                title,
                template=space.upper().startswith("MNI"),
            ),
        ]
    if not space.startswith("fsaverage"):
        raise ValueError(f"space {space!r} needs a mask image for volume maps (mask.nii.gz)")
    written = [save_gifti(values, stem.with_name(stem.name + ".gii"))]
    if np.size(values) == FSAVERAGE5_VERTICES:
        written.append(plot_surface_map(values, stem.with_name(stem.name + ".png"), title))
    else:
        logger.info(
            "%s: not fsaverage5-sized (%d values): GIfTI only, no PNG", stem, np.size(values)
        )
    return written
