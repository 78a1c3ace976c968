"""Load one run's BOLD as a float32 [TRs, voxels] matrix: mask, trim, drop bad voxels, clean.

Sources: NIfTI volumes (nibabel), GIfTI surfaces (``.func.gii``, one file per hemisphere, left then
right), and preprocessed arrays (LeBel's ``.hf5`` ``data`` [TRs, voxels] float64, or ``.npy``).

Order of work, and why:

1. Header checks before reading any data: the TR in the image header (:func:`header_tr`) joins
   the run's other TR sources (mapping table, sidecars) and every source must agree within 1 %
   (:func:`resolve_tr`, :func:`wav2brain.data.timing.check_tr`); a run with no sidecar TR
   (derivative BOLD without a json) takes the header's. Then the volumes kept after trimming must
   cover ``onset + duration`` seconds of stimulus (:func:`check_coverage`). A shortfall above one
   TR is an error (a truncated scan, a wrong onset or an end trim into the stimulus); a shortfall
   of at most one TR is accepted with a warning (the last partial TR of audio is never a window
   end, so nothing is lost but that fraction of a TR).
2. Trimming ``trim_start_trs``/``trim_end_trs`` volumes before cleaning, so that non-steady-state
   volumes do not bend the detrending and z-scoring. The stimulus onset is re-expressed relative
   to the first kept volume (:attr:`BoldData.onset`).
3. Masking volume chunk by chunk (:func:`wav2brain.data.masks.iter_volumes`, one sequential
   pass over the file), so only float32 [TRs, voxels-in-mask] is ever whole in memory, never a
   float64 copy of the 4D image; cleaning then runs on blocks of voxels. Optional smoothing
   (:func:`nilearn.image.smooth_img`) is spatial only, so it is applied to each chunk of volumes.
4. Voxels with any NaN/inf, or constant over the kept TRs, are dropped and counted
   (:attr:`BoldData.dropped_voxels`): a z-score of a constant is undefined and NaNs would poison
   every ridge fit.
5. :func:`nilearn.signal.clean` per run: detrend, optional confounds (chosen by nilearn strategy
   and/or column pattern and trimmed like the volumes, see :mod:`wav2brain.data.confounds`) and
   Butterworth high-pass,
   then z-score (``zscore_sample``) so every run has unit variance per voxel. Detrending regresses
   out Legendre polynomials of orders 1..``drift_order`` over the run (passed to nilearn as
   confounds, next to nilearn's own linear detrend), see :func:`drift_confounds`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2brain.data.bids import RunSpec, require_file
from wav2brain.data.confounds import (
    ConfoundStrategy,
    as_strategy,
    kept_confounds,
    run_confounds,
)
from wav2brain.data.masks import MaskConfig, feature_mask, iter_volumes, load_mask, mean_image
from wav2brain.data.timing import check_tr

_CLEAN_BLOCK_VOXELS = 8192
"""Voxels cleaned at once: nilearn works in float64, so blocks bound its copies."""

_HEADER_TIME_SCALE = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
"""NIfTI ``xyzt_units`` time codes to seconds."""

AFNI_POLORT_PERIOD_S = 150.0
"""Seconds of run per extra polynomial order in the automatic drift order (AFNI ``-polort A``)."""


@dataclass
class CleaningConfig:
    """How a run is trimmed and cleaned.

    Attributes
    ----------
    detrend : bool
        Remove slow drift per voxel and run: Legendre polynomials of orders 1..``drift_order``
        over the kept TRs (and the mean), regressed out with the other confounds.
    drift_order : int or None
        Highest polynomial order of the drift (1 = linear). None (default) chooses AFNI's rule
        (``3dDeconvolve -polort A``): ``1 + floor(run duration / 150 s)``, e.g. 1 for runs under
        150 s, 3 for a 5-min Narratives story, 25 for a 1-h run. Scanner drift is not linear over
        a 5- to 60-min story, a linear detrend leaves its curvature in the data, and a
        polynomial basis sized by run length is the standard remedy for long naturalistic runs
        (it acts as a high-pass with a cut-off near ``order / (2 * duration)`` Hz, about 0.005 Hz
        for a 5-min run, far below the 0.01-0.1 Hz band of speech-driven BOLD). Use ``high_pass``
        instead or in addition for a Butterworth filter.
    standardize : bool
        z-score each voxel over the run (``zscore_sample``).
    high_pass, low_pass : float or None
        Butterworth cut-offs in Hz (e.g. 0.01 Hz = 100 s periods); None for no filter.
    smoothing_fwhm : float or None
        Gaussian smoothing FWHM in mm (NIfTI only; ignored with a warning on surfaces/arrays).
    trim_start_trs, trim_end_trs : int
        Volumes (TRs) dropped at the start and end before cleaning.
    confound_columns : tuple of str or None
        Columns to use when confounds come as a table (fMRIPrep ``desc-confounds_timeseries.tsv``):
        exact names or case-sensitive :mod:`fnmatch` patterns (``"trans_*"``, ``"rot_*"``,
        ``"a_comp_cor_0[0-5]"``), see :func:`wav2brain.data.confounds.select_confound_columns`.
        None uses all columns of a table passed to :func:`load_bold` (unless a strategy is set);
        :func:`wav2brain.data.prepare.prepare_dataset` regresses confounds only when this or
        ``confounds_strategy`` is set.
    confounds_strategy : ConfoundStrategy, sequence of str, or None
        fMRIPrep noise components chosen with nilearn's ``load_confounds``
        (:class:`wav2brain.data.confounds.ConfoundStrategy`; a sequence such as
        ``("motion", "wm_csf", "high_pass")`` takes nilearn's defaults for the rest). With
        ``confound_columns`` too, the regressors are the union (strategy columns first).
    drop_invalid_voxels : bool
        Drop (and count) NaN/inf or constant voxels. When False they raise an error instead.
    """

    detrend: bool = True
    drift_order: int | None = None
    standardize: bool = True
    high_pass: float | None = None
    low_pass: float | None = None
    smoothing_fwhm: float | None = None
    trim_start_trs: int = 0
    trim_end_trs: int = 0
    confound_columns: tuple[str, ...] | None = None
    confounds_strategy: ConfoundStrategy | tuple[str, ...] | None = None
    drop_invalid_voxels: bool = True

    def __post_init__(self) -> None:
        if self.trim_start_trs < 0 or self.trim_end_trs < 0:
            raise ValueError(
                f"trim_start_trs/trim_end_trs must be >= 0 TRs, got "
                f"{self.trim_start_trs}/{self.trim_end_trs}"
            )
        order = self.drift_order
        if order is not None and (
            isinstance(order, bool) or not isinstance(order, int) or order < 1
        ):
            raise ValueError(f"drift_order must be an integer >= 1 or None (auto), got {order!r}")
        for name in ("high_pass", "low_pass", "smoothing_fwhm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        columns = self.confound_columns
        if columns is not None:
            if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns):
                raise ValueError(
                    f"confound_columns must be a sequence of column names or patterns, e.g. "
                    f"('trans_*', 'rot_*'), got {columns!r}"
                )
            if not columns:
                raise ValueError("confound_columns is empty; name at least one column, or None")
            self.confound_columns = tuple(columns)
        self.confounds_strategy = as_strategy(self.confounds_strategy)

    @property
    def uses_confounds(self) -> bool:
        """Whether confounds are regressed (columns or a strategy chosen)."""
        return self.confound_columns is not None or self.confounds_strategy is not None


@dataclass
class BoldData:
    """One run's cleaned responses.

    Attributes
    ----------
    data : np.ndarray
        float32 [TRs, voxels] after trimming, dropping and cleaning.
    tr : float
        Seconds.
    space : str
        ``"native"``, ``"MNI152NLin2009cAsym"``, ``"fsaverage"``...
    dropped_voxels : int
        Voxels/vertices of the mask dropped as NaN or constant.
    mask_img : nibabel.Nifti1Image or None
        3D mask of the kept voxels (NIfTI); None for surfaces and arrays.
    kept : np.ndarray
        bool over the input features (voxels of the given or computed mask, in nilearn's
        C order; vertices, left then right; or array columns): which ones are the columns of
        ``data``. Runs that must share columns intersect these.
    onset : float
        Seconds from the first kept TR to the stimulus's first sample.
    first_tr : int
        Index in the scan of the first kept volume.
    n_scan_trs : int
        Volumes in the file before trimming.
    """

    data: np.ndarray
    tr: float
    space: str
    dropped_voxels: int
    mask_img: object | None
    kept: np.ndarray
    onset: float
    first_tr: int
    n_scan_trs: int


def load_bold(
    run: RunSpec,
    mask=None,
    cleaning: CleaningConfig | None = None,
    confounds=None,
    mask_config: MaskConfig | None = None,
) -> BoldData:
    """Load, mask, trim and clean one run.

    Parameters
    ----------
    run : RunSpec
        From :func:`wav2brain.data.bids.discover_runs`.
    mask : path, nibabel image, array-like or None
        NIfTI: mask file or image (resampled with a warning or refused, see
        :func:`wav2brain.data.masks.load_mask`); None computes an EPI mask of this run with
        nilearn, unless the run comes with a brain mask (:attr:`RunSpec.mask_path`, fMRIPrep's
        ``desc-brain_mask``), which is then used. For multi-run datasets pass one shared mask
        (:func:`wav2brain.data.masks.compute_mask`) so that columns mean the same voxels.
        Surfaces/arrays: boolean vector (or ``.npy``/``.gii``); None keeps all.
    cleaning : CleaningConfig, optional
        Defaults: detrend and z-score, no filter, no smoothing, no trimming.
    confounds : array [TRs, k], path to a TSV/CSV/NPY, or None
        One row per scan volume (before trimming); rows are trimmed like the volumes, and
        leading n/a are filled (:func:`wav2brain.data.confounds.trim_confounds`). Columns of a
        table are picked by ``cleaning.confounds_strategy`` and/or
        ``cleaning.confound_columns`` (:func:`wav2brain.data.confounds.run_confounds`).
    mask_config : MaskConfig, optional
        Settings of the EPI mask and of the resample-or-refuse decision.

    Raises
    ------
    FileNotFoundError
        Missing image, mask or confounds file.
    ValueError
        TR sources (mapping table, sidecars, image header) that disagree by more than 1 % or
        give an implausible TR (:func:`resolve_tr`); too few volumes for onset + duration (both
        numbers given), bad shapes, confounds of the wrong length, without the requested columns
        or with n/a past their first rows, every voxel invalid, trimming that leaves fewer than
        2 TRs.
    """
    cleaning = cleaning or CleaningConfig()
    path = Path(run.bold_path)
    require_file(path)
    run = resolve_tr(run)
    if mask is None and run.mask_path is not None:
        mask = run.mask_path
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        reader = _NiftiReader(path, cleaning)
    elif name.endswith(".gii"):
        reader = _SurfaceReader(path)
    elif run.is_array:
        reader = _ArrayReader(path, run.repeat)
    else:
        raise ValueError(
            f"{path}: unsupported BOLD file; expected .nii[.gz], .func.gii, .hf5, .npy"
        )
    if cleaning.smoothing_fwhm is not None and not isinstance(reader, _NiftiReader):
        warnings.warn(
            f"{path}: smoothing_fwhm applies to NIfTI volumes only; not smoothed", stacklevel=2
        )
    n_scan = reader.n_volumes
    start, stop = cleaning.trim_start_trs, n_scan - cleaning.trim_end_trs
    if stop - start < 2:
        raise ValueError(
            f"{path}: trimming {cleaning.trim_start_trs} + {cleaning.trim_end_trs} TRs of "
            f"{n_scan} leaves {max(stop - start, 0)}; need at least 2 TRs"
        )
    check_coverage(n_scan, run, path, cleaning.trim_start_trs, cleaning.trim_end_trs)
    confound_matrix = _read_confounds(confounds, n_scan, cleaning, path, start, stop)
    reader.set_mask(mask, mask_config)
    data = reader.read(start, stop)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(data).all(axis=0) & (np.ptp(data, axis=0) > 0)
    dropped = int((~valid).sum())
    if dropped and not cleaning.drop_invalid_voxels:
        raise ValueError(f"{path}: {dropped} voxel(s) are NaN/inf or constant")
    if not valid.any():
        raise ValueError(f"{path}: every one of the {valid.size} voxels is NaN/inf or constant")
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} NaN/inf or constant voxel(s)", stacklevel=2)
        data = data[:, valid]
    data = clean_signals(data, run.tr, cleaning, confound_matrix)
    kept = reader.kept.copy()
    kept[kept] = valid
    return BoldData(
        data=data,
        tr=run.tr,
        space=run.space,
        dropped_voxels=dropped,
        mask_img=reader.mask_of(kept),
        kept=kept,
        onset=run.onset - start * run.tr,
        first_tr=start,
        n_scan_trs=n_scan,
    )


def check_coverage(
    n_volumes: int,
    run: RunSpec,
    source: Path | str,
    trim_start_trs: int = 0,
    trim_end_trs: int = 0,
) -> None:
    """Check that the kept volumes (TRs) cover ``onset + duration`` seconds of stimulus.

    The kept volumes are the ``n_volumes`` of the scan less ``trim_start_trs`` and
    ``trim_end_trs``, and the onset is re-expressed from the first kept volume
    (``onset - trim_start_trs * tr``), so an end trim that cuts into the stimulus is caught like
    a short scan: a shortfall of more than one TR raises, up to one TR warns. A start trim past
    the onset only warns: the responses of the first seconds are lost but the features still see
    the whole stimulus (negative onsets are supported end to end), and dropping non-steady-state
    volumes of a story that starts with the scan is the usual practice. The duration is not
    checked when ``run.duration`` is None: preprocessed arrays from a mapping table without a
    ``duration`` column, which their authors cropped to the span they model; ``prepare`` checks
    those with :func:`check_overlap`.
    """
    kept = n_volumes - trim_start_trs - trim_end_trs
    onset = run.onset - trim_start_trs * run.tr
    trimmed = (
        f" after trimming {trim_start_trs} + {trim_end_trs} TRs of {n_volumes}"
        if trim_start_trs or trim_end_trs
        else ""
    )
    lost = trim_start_trs * run.tr - max(run.onset, 0.0)
    if lost > 1e-6:
        warnings.warn(
            f"{source}: trim_start_trs {trim_start_trs} drops {trim_start_trs * run.tr:.2f} s of "
            f"scan, past the stimulus onset at {run.onset} s: its first {lost:.2f} s have no "
            f"kept volume (onset re-expressed as {onset:.2f} s)",
            stacklevel=3,
        )
    if run.duration is None:
        return
    needed = onset + run.duration
    available = kept * run.tr
    shortfall = needed - available
    if shortfall > run.tr + 1e-6:
        raise ValueError(
            f"{source}: {kept} volumes x {run.tr} s = {available:.2f} s{trimmed}, but the "
            f"stimulus ends at onset {onset:.2f} s + duration {run.duration:.2f} s = {needed:.2f} s "
            f"({math.ceil(needed / run.tr - 1e-9)} volumes needed)"
        )
    if shortfall > 1e-6:
        warnings.warn(
            f"{source}: {kept} volumes{trimmed} cover {available:.2f} s, {shortfall:.2f} s "
            f"(<= 1 TR) short of the stimulus end at {needed:.2f} s; the last {shortfall:.2f} s "
            "of audio have no volume and are trimmed",
            stacklevel=3,
        )


MIN_UNCHECKED_OVERLAP = 0.5
"""Least fraction of the shorter of scan and WAV that must overlap in time when a run has no
``duration`` to check (:func:`check_overlap`). LeBel's cropped arrays overlap their story over
nearly all of the scan; half leaves room for any author's cropping while catching an onset that
puts the scan outside the story."""


def check_overlap(
    n_volumes: int,
    run: RunSpec,
    source: Path | str,
    trim_start_trs: int = 0,
    trim_end_trs: int = 0,
) -> None:
    """Refuse a run without ``duration`` whose kept volumes barely overlap its WAV in time.

    The run's coverage of the stimulus is not checked (:func:`check_coverage`), but an onset in
    milliseconds, or one that puts the scan outside a short story, gives a run that samples no
    audio and so yields no training window or feature row: the kept volumes must overlap the WAV
    (read from its header) for :data:`MIN_UNCHECKED_OVERLAP` of the shorter of the two.
    """
    from wav2brain.data.audio import audio_info

    kept = n_volumes - trim_start_trs - trim_end_trs
    onset = run.onset - trim_start_trs * run.tr
    trimmed = (
        f" (after trimming {trim_start_trs} + {trim_end_trs})"
        if trim_start_trs or trim_end_trs
        else ""
    )
    length = audio_info(run.stimulus_path)[2]
    start, end = -onset, kept * run.tr - onset
    overlap = max(min(end, length) - max(start, 0.0), 0.0)
    shorter = min(kept * run.tr, length)
    if overlap < MIN_UNCHECKED_OVERLAP * shorter:
        raise ValueError(
            f"{source}: {kept} volumes x {run.tr} s{trimmed} at onset {onset:.2f} s span stimulus "
            f"time {start:.2f} to {end:.2f} s, overlapping the {length:.2f}-s WAV "
            f"{run.stimulus_path.name} by {overlap:.2f} s; expected at least "
            f"{MIN_UNCHECKED_OVERLAP:.0%} of {shorter:.2f} s (onset in seconds from the first "
            "volume to the WAV's first sample, negative when the responses start after it)"
        )


def header_tr(path: Path | str) -> float | None:
    """The TR (s) an image header states, or None when it states none.

    NIfTI: ``pixdim[4]`` in the time unit of ``xyzt_units`` (s, ms or us). A value of 0 means the
    converter wrote no TR, and a value of exactly 1 with no time unit is nibabel's (and many
    converters') placeholder for "not set": both are None, so they neither disagree with a sidecar
    nor stand in for one. Any other unit-less value is taken as seconds, the NIfTI convention
    for fMRI; a value in ms then fails the plausible-range check of
    :func:`wav2brain.data.timing.check_tr` with a unit hint. GIfTI: the ``TimeStep`` metadata of
    the first data array, in milliseconds as FreeSurfer's ``mri_vol2surf`` (which fMRIPrep uses
    for fsaverage surfaces) writes it; only the file's XML head is read. Arrays (``.hf5``,
    ``.npy``) have no header: None.

    Raises
    ------
    ValueError
        An unreadable NIfTI header or a non-numeric GIfTI ``TimeStep`` (the file is named).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        header = _load_nifti(path).header
        zooms = header.get_zooms()
        if len(zooms) < 4 or not float(zooms[3]) > 0:
            return None
        value, unit = float(zooms[3]), header.get_xyzt_units()[1]
        if unit not in _HEADER_TIME_SCALE:
            return None if value == 1.0 else value
        return value * _HEADER_TIME_SCALE[unit]
    if name.endswith(".gii"):
        step = _gifti_time_step(path)
        return None if step is None or step == 0 else step / 1000.0
    return None


def resolve_tr(run: RunSpec) -> RunSpec:
    """The run with its TR checked against the image header (no data read).

    The sources are the run's own (:attr:`RunSpec.tr_sources`: mapping-table row, sidecars;
    ``RunSpec.tr`` itself, first, when it is none of theirs) plus ``("<kind> header <file>", value)`` from
    :func:`header_tr`; :func:`wav2brain.data.timing.check_tr` compares them. The first source that
    gives a value sets the TR, so a sidecar or table wins over the header when they agree within
    1 %. A run with no TR (``RunSpec.tr`` NaN: a derivative without sidecar) takes the header's,
    and its ``tr_sources`` then name the header, which the dataset card repeats.

    Raises
    ------
    ValueError
        Sources disagree by more than 1 %, a TR outside 0.2-20 s, or no source at all (each
        source and value named).
    """
    sources: dict[str, float | None] = dict(run.tr_sources)
    if math.isfinite(run.tr) and run.tr not in sources.values():  # set by hand, or no sources
        sources = {"run TR": run.tr, **sources}
    kind = "GIfTI" if run.bold_path.name.lower().endswith(".gii") else "NIfTI"
    header = None if run.is_array else header_tr(run.bold_path)
    if header is not None:
        sources[f"{kind} header {run.bold_path.name}"] = header
    tr = check_tr(sources, f"{run.key} ({run.bold_path})")
    listed = tuple((name, float(value)) for name, value in sources.items() if value is not None)
    if tr == run.tr and listed == run.tr_sources:
        return run
    return dataclasses.replace(run, tr=tr, tr_sources=listed)


def _load_nifti(path: Path):
    """``nibabel.load`` with a ValueError naming the file for a broken header."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError) as err:
        raise ValueError(f"cannot read BOLD image {path}: {err}") from err


def gifti_volumes(path: Path | str) -> int:
    """Volumes (TRs) of a GIfTI time series, from its XML alone (no data array is decoded).

    One data array per volume, or one [vertices, TRs] array (the smaller dimension is time, as
    :func:`load_bold` reads it).

    Raises
    ------
    ValueError
        Unreadable XML, or no data array.
    """
    import xml.etree.ElementTree as ET

    path = Path(path)
    require_file(path)
    count, dims = 0, None
    try:
        for _, element in ET.iterparse(str(path), events=("end",)):
            if element.tag == "DataArray":
                count += 1
                if int(element.get("Dimensionality", "1")) == 2:
                    dims = (int(element.get("Dim0", "0")), int(element.get("Dim1", "0")))
                element.clear()
    except ET.ParseError as err:
        raise ValueError(f"cannot read GIfTI {path}: {err}") from err
    if count == 0:
        raise ValueError(f"{path}: the GIfTI holds no data array")
    return min(dims) if count == 1 and dims is not None else count


def _gifti_time_step(path: Path) -> float | None:
    """``TimeStep`` of a GIfTI's first data array (the unit is the writer's), read from the XML
    up to the first ``Data`` element only."""
    import xml.etree.ElementTree as ET

    require_file(path)
    name = None
    try:
        for event, element in ET.iterparse(str(path), events=("start", "end")):
            if event == "start" and element.tag == "Data":
                return None
            if event == "end" and element.tag == "Name":
                name = (element.text or "").strip()
            elif event == "end" and element.tag == "Value" and name == "TimeStep":
                text = (element.text or "").strip()
                try:
                    return float(text)
                except ValueError:
                    raise ValueError(f"{path}: GIfTI TimeStep {text!r} is not a number") from None
    except ET.ParseError as err:
        raise ValueError(f"cannot read GIfTI {path}: {err}") from err
    return None


class _NiftiReader:
    """Masked, chunked reading of a 4D NIfTI."""

    def __init__(self, path: Path, cleaning) -> None:
        self.path, self.cleaning = path, cleaning
        self.img = _load_nifti(path)
        if self.img.ndim != 4:
            raise ValueError(f"{path}: expected a 4D BOLD image, got shape {self.img.shape}")
        self.n_volumes = self.img.shape[3]

    def set_mask(self, mask, mask_config: MaskConfig | None) -> None:
        from nilearn.masking import compute_epi_mask

        path = self.path
        config = mask_config or MaskConfig()
        if mask is None:
            self.mask = compute_epi_mask(
                mean_image(self.img),
                lower_cutoff=config.lower_cutoff,
                upper_cutoff=config.upper_cutoff,
                opening=config.opening,
            )
        else:
            self.mask = load_mask(mask, self.img, config)
        self.mask_bool = np.asarray(self.mask.dataobj).astype(bool)
        if not self.mask_bool.any():
            raise ValueError(
                f"{path}: the EPI mask computed with nilearn is empty; pass a brain mask "
                "(mask=...) or check that the image is raw EPI (not already masked/detrended)"
            )
        self.kept = np.ones(int(self.mask_bool.sum()), dtype=bool)

    def read(self, start: int, stop: int) -> np.ndarray:
        from nibabel import Nifti1Image
        from nilearn.image import smooth_img

        out = np.empty((stop - start, int(self.mask_bool.sum())), dtype=np.float32)
        for first, block in iter_volumes(self.img, start, stop):
            if self.cleaning.smoothing_fwhm is not None:
                chunk = Nifti1Image(block, self.img.affine)
                smoothed = smooth_img(chunk, self.cleaning.smoothing_fwhm)
                block = np.asarray(smoothed.dataobj, dtype=np.float32)
            out[first - start : first - start + block.shape[3]] = block[self.mask_bool].T
        return out

    def mask_of(self, kept: np.ndarray):
        from nibabel import Nifti1Image

        final = np.zeros(self.mask_bool.shape, dtype=np.uint8)
        final[self.mask_bool] = kept
        return Nifti1Image(final, self.img.affine)


def right_hemisphere(path: Path) -> Path | None:
    """The ``hemi-R`` file named like a ``hemi-L`` GIfTI (None when the name has no ``hemi-L``).

    Both fMRIPrep spellings: ``..._hemi-L_space-fsaverage_bold.func.gii`` (20.2 on) and
    ``..._space-fsaverage6_hemi-L.func.gii`` (1.x-20.1, Narratives).
    """
    stem, dot, extension = path.name.partition(".")
    parts = stem.split("_")
    if "hemi-L" not in parts:
        return None
    return path.with_name(
        "_".join("hemi-R" if p == "hemi-L" else p for p in parts) + dot + extension
    )


class _SurfaceReader:
    """GIfTI time series, both hemispheres (``hemi-L`` then ``hemi-R``) when both exist."""

    def __init__(self, path: Path) -> None:
        import nibabel as nib

        self.path, self.paths = path, [path]
        right = right_hemisphere(path)
        if right is not None and right.exists():
            self.paths.append(right)
        series = []
        for part in self.paths:
            arrays = [np.asarray(d.data, dtype=np.float32) for d in nib.load(str(part)).darrays]
            if len(arrays) == 1 and arrays[0].ndim == 2:
                series.append(arrays[0].T if arrays[0].shape[0] > arrays[0].shape[1] else arrays[0])
            elif arrays and all(a.ndim == 1 for a in arrays):
                series.append(np.stack(arrays))
            else:
                raise ValueError(
                    f"{part}: expected one data array per volume, or one [vertices, TRs]"
                )
        if len({s.shape[0] for s in series}) != 1:
            raise ValueError(f"{self.paths}: hemispheres have different numbers of volumes")
        self.series = np.concatenate(series, axis=1)
        self.n_volumes = self.series.shape[0]

    def set_mask(self, mask, mask_config: MaskConfig | None) -> None:
        self.kept = feature_mask(mask, self.series.shape[1], str(self.path))

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.series[start:stop, self.kept])

    def mask_of(self, kept: np.ndarray) -> None:
        return None


class _ArrayReader:
    """Preprocessed responses [TRs, voxels] (``.hf5``/``.h5`` ``data``, or ``.npy``).

    LeBel's held-out story is stored as [repeats, TRs, voxels]: with ``repeat`` (the run's
    :attr:`~wav2brain.data.bids.RunSpec.repeat`) only that repeat is read, so each repeat is its
    own run; without it the repeats are averaged (with a warning).
    The HDF5 file is opened only while reading, and rows are converted to float32 one repeat
    at a time (h5py ``astype``), never as a whole float64 copy.
    """

    def __init__(self, path: Path, repeat: int | None = None) -> None:
        self.path = path
        self.repeat = repeat
        try:
            with self._open() as array:
                self.shape = tuple(array.shape)
        except OSError as err:
            raise ValueError(f"cannot read response array {path}: {err}") from err
        if len(self.shape) not in (2, 3):
            raise ValueError(f"{path}: expected data [TRs, voxels], got shape {self.shape}")
        if repeat is not None and (len(self.shape) != 3 or not 0 <= repeat < self.shape[0]):
            raise ValueError(
                f"{path}: repeat {repeat} asked of data of shape {self.shape}; expected "
                "[repeats, TRs, voxels] with 0 <= repeat < repeats"
            )
        if len(self.shape) == 3 and repeat is None:
            warnings.warn(
                f"{path}: data has {self.shape[0]} repeats [repeats, TRs, voxels]; averaging them",
                stacklevel=3,
            )
        self.n_volumes = self.shape[-2]

    def set_mask(self, mask, mask_config: MaskConfig | None) -> None:
        self.kept = feature_mask(mask, self.shape[-1], str(self.path))

    def read(self, start: int, stop: int) -> np.ndarray:
        columns = np.flatnonzero(self.kept)
        with self._open() as array:
            if len(self.shape) == 2 or self.repeat is not None:
                rows = _rows(array, start, stop, self.repeat)
                return np.ascontiguousarray(rows[:, columns])
            out = np.zeros((stop - start, columns.size), dtype=np.float32)
            for repeat in range(self.shape[0]):
                out += _rows(array, start, stop, repeat)[:, columns]
        return out / np.float32(self.shape[0])

    def mask_of(self, kept: np.ndarray) -> None:
        return None

    @contextmanager
    def _open(self):
        if self.path.suffix.lower() == ".npy":
            yield np.load(self.path, mmap_mode="r")
            return
        import h5py

        with h5py.File(self.path, "r") as handle:
            keys = list(handle.keys())
            key = "data" if "data" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise ValueError(f"{self.path}: no 'data' dataset (found {keys})")
            yield handle[key]


def _rows(array, start: int, stop: int, repeat: int | None = None) -> np.ndarray:
    """float32 rows ``start:stop`` (of one repeat) of an HDF5 dataset or array."""
    index = (slice(start, stop),) if repeat is None else (repeat, slice(start, stop))
    if hasattr(array, "astype") and not isinstance(array, np.ndarray):
        return array.astype(np.float32)[index]
    return np.asarray(array[index], dtype=np.float32)


def _read_confounds(
    confounds, n_scan: int, cleaning: CleaningConfig, source: Path, start: int, stop: int
) -> np.ndarray | None:
    """Confounds of the kept volumes ``start:stop`` as float64 [stop - start, k], or None."""
    if confounds is None:
        return None
    names = None
    strategy = cleaning.confounds_strategy
    if isinstance(confounds, (str, Path)) and Path(confounds).suffix.lower() != ".npy":
        matrix, names = run_confounds(
            confounds, n_scan, cleaning.confound_columns, strategy, source
        )
    else:
        if strategy is not None:
            raise ValueError(
                f"confounds for {source}: a confounds strategy needs an fMRIPrep confounds "
                "table (TSV), not an array"
            )
        if isinstance(confounds, (str, Path)):
            require_file(Path(confounds))
        matrix = np.load(confounds) if isinstance(confounds, (str, Path)) else confounds
        matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[0] != n_scan:
        raise ValueError(
            f"confounds for {source} have shape {matrix.shape}; expected [{n_scan} volumes, k]"
        )
    return kept_confounds(matrix, start, stop, names, confounds)[0]


def drift_order(n_trs: int, tr: float, cleaning: CleaningConfig) -> int:
    """Highest drift polynomial order for a run of ``n_trs`` TRs of ``tr`` s (0 = no detrending)."""
    if not cleaning.detrend:
        return 0
    if cleaning.drift_order is not None:
        return cleaning.drift_order
    return 1 + int(n_trs * tr // AFNI_POLORT_PERIOD_S)


def drift_confounds(n_trs: int, order: int) -> np.ndarray | None:
    """Legendre polynomials of orders 1..``order`` over ``n_trs`` TRs, float64 [n_trs, order].

    Evaluated on an even grid of [-1, 1] (AFNI's ``-polort`` basis); None when ``order`` is 0.
    A run with at most ``order`` TRs gets orders up to ``n_trs - 1``.
    """
    order = min(order, n_trs - 1)
    if order < 1:
        return None
    grid = np.linspace(-1.0, 1.0, n_trs)
    return np.polynomial.legendre.legvander(grid, order)[:, 1:]


def clean_signals(
    data: np.ndarray, tr: float, cleaning: CleaningConfig, confounds: np.ndarray | None
) -> np.ndarray:
    """:func:`nilearn.signal.clean` in place, a block of voxels at a time (``tr`` in seconds).

    The one cleaning rule: prepare applies it to the BOLD and encoding to the features, so both
    lose the same drift basis and are z-scored alike.

    ``confounds`` are float64 [TRs, k] of the kept volumes (:func:`trim_confounds`) or None. The
    drift polynomials (:func:`drift_confounds`) join them, so nilearn removes them with its own
    machinery (confounds detrended and filtered like the signals, then projected out). Every step
    (detrending, filtering, confound regression, z-scoring) acts on each voxel's time series
    alone, so cleaning column blocks gives the same result as one call, while nilearn's float64
    copies stay the size of one block.
    """
    from nilearn.signal import clean

    n_trs = data.shape[0]
    drift = drift_confounds(n_trs, drift_order(n_trs, tr, cleaning))
    if drift is not None:
        confounds = drift if confounds is None else np.hstack([confounds, drift])
    active = cleaning.detrend or cleaning.standardize or cleaning.high_pass or cleaning.low_pass
    if not active and confounds is None:
        return data
    data = np.ascontiguousarray(data, dtype=np.float32)
    for first in range(0, data.shape[1], _CLEAN_BLOCK_VOXELS):
        block = slice(first, first + _CLEAN_BLOCK_VOXELS)
        data[:, block] = clean(
            data[:, block],
            detrend=cleaning.detrend,
            standardize="zscore_sample" if cleaning.standardize else None,
            confounds=confounds,
            high_pass=cleaning.high_pass,
            low_pass=cleaning.low_pass,
            t_r=tr,
            ensure_finite=False,
        )
    return data
