"""Fabricate an fMRIPrep derivatives tree of the real Narratives layout beside a fabricated raw copy.

Narratives' DataLad release (``snastase/narratives``, ``code/subject_meta.json``) holds fMRIPrep
1.5.0 output under ``derivatives/fmriprep/sub-<id>/func/``::

    <run>_space-MNI152NLin2009cAsym_res-native_desc-preproc_bold.nii.gz
    <run>_space-MNI152NLin2009cAsym_res-native_desc-brain_mask.nii.gz
    <run>_space-fsaverage6_hemi-L.func.gii  (and hemi-R)
    <run>_desc-confounds_regressors.tsv  (+ .json)

and AFNI-cleaned images under ``derivatives/afni-nosmooth/sub-<id>/func/``
(``<run>_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz``,
``<run>_space-fsaverage6_hemi-L_desc-clean.func.gii``). :func:`fabricate_fmriprep` writes stand-ins
with those names for every run of :data:`TASKS` that discovery finds in the raw copy:

* preproc volumes on a (4, 4, 3) grid with the raw run's volume count and the header TR; runs
  alternate between no sidecar at all and a sidecar with ``RepetitionTime``,
  ``SliceTimingCorrected: true`` and ``StartTime`` (what fMRIPrep 20.2+ writes);
* a brain mask that leaves out one corner column of voxels;
* a confounds table with fMRIPrep's column names (``trans_x``.. with ``_derivative1``,
  ``_power2``, ``_derivative1_power2``, ``white_matter``, ``csf``, ``global_signal``, ``cosine00``..,
  ``a_comp_cor_00``.. with a ``.json`` giving each component's mask, ``framewise_displacement``,
  ``dvars``) and ``n/a`` in the first row of every derivative-like column;
* fsaverage6-named surfaces (a few vertices per hemisphere) with ``TimeStep`` in ms;
* AFNI ``desc-clean`` volumes and surfaces.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from wav2brain.data.bids import discover_runs

SPACE = "MNI152NLin2009cAsym"
GRID = (4, 4, 3)
AFFINE = np.diag([3.0, 3.0, 4.0, 1.0])
N_VERTICES = 6
"""Vertices per hemisphere of the fabricated surfaces."""

TASKS = ("pieman", "tunnel", "milkyway")
"""Tasks given derivatives (prettymouth's two runs disagree about the story's place in the WAV,
which discovery refuses unless told how to align them)."""

MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
N_COSINES = 3
COMPCOR_MASKS = ("CSF", "CSF", "WM", "WM", "combined", "combined")
"""Mask of each fabricated ``a_comp_cor_XX`` (fMRIPrep < 21 names all anatomical ones a_comp_cor)."""


def fabricate_fmriprep(
    raw_root: Path, version: str = "1.5.0", seed: int = 0, sidecar_every: int = 2
) -> dict[str, Path]:
    """Write ``derivatives/fmriprep`` and ``derivatives/afni-nosmooth`` under ``raw_root``.

    Parameters
    ----------
    raw_root : Path
        A fabricated raw Narratives copy (``fabricate.fabricate_layout``).
    version : str
        fMRIPrep version in ``dataset_description.json`` (Narratives: 1.5.0).
    seed : int
        Random seed.
    sidecar_every : int
        Every ``sidecar_every``-th run (from the first) gets a preproc sidecar; the others none.

    Returns
    -------
    dict
        ``{"fmriprep": Path, "afni": Path, "sidecars": [run keys with a sidecar]}``.
    """
    rng = np.random.default_rng(seed)
    fmriprep = raw_root / "derivatives" / "fmriprep"
    afni = raw_root / "derivatives" / "afni-nosmooth"
    for root, name in ((fmriprep, "fMRIPrep"), (afni, "afni-nosmooth")):
        root.mkdir(parents=True, exist_ok=True)
        description = {
            "Name": f"Narratives {name}",
            "BIDSVersion": "1.4.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": name, "Version": version if name == "fMRIPrep" else "19"}],
        }
        (root / "dataset_description.json").write_text(json.dumps(description))
    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # runs whose WAV the mirror lacks (shapes*) are skipped
        runs = discover_runs(raw_root, tasks=TASKS, on_missing_stimulus="skip")
    with_sidecar = []
    for index, run in enumerate(runs):
        n_volumes = nib.load(str(run.bold_path)).shape[3]
        stem = run.bold_path.name[: -len("_bold.nii.gz")]
        folder = fmriprep / f"sub-{run.subject}" / "func"
        clean_folder = afni / f"sub-{run.subject}" / "func"
        folder.mkdir(parents=True, exist_ok=True)
        clean_folder.mkdir(parents=True, exist_ok=True)
        volume = f"{stem}_space-{SPACE}_res-native"
        write_volume(folder / f"{volume}_desc-preproc_bold.nii.gz", n_volumes, run.tr, rng)
        write_volume(clean_folder / f"{volume}_desc-clean_bold.nii.gz", n_volumes, run.tr, rng)
        mask = np.ones(GRID, np.uint8)
        mask[0, 0, :] = 0
        nib.save(nib.Nifti1Image(mask, AFFINE), str(folder / f"{volume}_desc-brain_mask.nii.gz"))
        if index % sidecar_every == 0:
            sidecar = {
                "RepetitionTime": run.tr,
                "SkullStripped": False,
                "SliceTimingCorrected": True,
                "StartTime": round(run.tr / 2 - 0.05, 3),
            }
            (folder / f"{volume}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
            with_sidecar.append(run.key)
        write_confounds(folder / f"{stem}_desc-confounds_regressors.tsv", n_volumes, rng)
        for hemi in ("L", "R"):
            write_surface(
                folder / f"{stem}_space-fsaverage6_hemi-{hemi}.func.gii", n_volumes, run.tr, rng
            )
            write_surface(
                clean_folder / f"{stem}_space-fsaverage6_hemi-{hemi}_desc-clean.func.gii",
                n_volumes,
                run.tr,
                rng,
            )
    return {"fmriprep": fmriprep, "afni": afni, "sidecars": with_sidecar}


def write_volume(path: Path, n_volumes: int, tr: float, rng) -> None:
    """A 4D float32 image on :data:`GRID` with header TR ``tr`` s."""
    import nibabel as nib

    data = (100.0 + rng.standard_normal(GRID + (n_volumes,))).astype(np.float32)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_zooms((3.0, 3.0, 4.0, float(tr)))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def write_surface(path: Path, n_volumes: int, tr: float, rng) -> None:
    """One GIfTI data array per volume, ``TimeStep`` in ms (FreeSurfer's convention)."""
    import nibabel as nib
    from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiMetaData

    arrays = [
        GiftiDataArray(
            (50.0 + rng.standard_normal(N_VERTICES)).astype(np.float32),
            meta=GiftiMetaData({"TimeStep": f"{tr * 1000:.6f}"}),
        )
        for _ in range(n_volumes)
    ]
    nib.save(GiftiImage(darrays=arrays), str(path))


def confound_columns() -> list[str]:
    """The fabricated table's columns, in fMRIPrep's order."""
    columns = ["global_signal", "csf", "white_matter"]
    for base in ("global_signal", "csf", "white_matter"):
        columns += [f"{base}_derivative1", f"{base}_power2", f"{base}_derivative1_power2"]
    columns += ["dvars", "std_dvars", "framewise_displacement"]
    columns += [f"a_comp_cor_{k:02d}" for k in range(len(COMPCOR_MASKS))]
    columns += [f"cosine{k:02d}" for k in range(N_COSINES)]
    for base in MOTION:
        columns += [base, f"{base}_derivative1", f"{base}_power2", f"{base}_derivative1_power2"]
    return columns


def write_confounds(path: Path, n_volumes: int, rng) -> Path:
    """An fMRIPrep confounds table (+ ``.json``) with first-row n/a where fMRIPrep writes them."""
    import pandas as pd

    columns = confound_columns()
    table = pd.DataFrame(rng.standard_normal((n_volumes, len(columns))), columns=columns)
    grid = np.arange(n_volumes)
    for k in range(N_COSINES):
        table[f"cosine{k:02d}"] = np.sqrt(2 / n_volumes) * np.cos(
            np.pi * (grid + 0.5) * (k + 1) / n_volumes
        )
    table["framewise_displacement"] = np.abs(table["framewise_displacement"]) * 0.1
    first_na = [c for c in columns if "derivative1" in c] + ["dvars", "std_dvars"]
    table.loc[0, first_na + ["framewise_displacement"]] = np.nan
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    meta = {
        f"a_comp_cor_{k:02d}": {
            "Method": "aCompCor",
            "Mask": mask,
            "Retained": True,
            "SingularValue": 10.0 - k,
        }
        for k, mask in enumerate(COMPCOR_MASKS)
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path
