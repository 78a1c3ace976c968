"""Confound regressors of one run: fMRIPrep tables, by nilearn strategy and/or by column pattern.

Two ways to choose columns, which combine:

* **Strategies** (:class:`ConfoundStrategy`, ``wav2brain prepare --confounds-strategy motion wm_csf
  high_pass``): :func:`nilearn.interfaces.fmriprep.load_confounds` picks the columns of each noise
  component (24 motion parameters, white matter and CSF means, cosine drift basis, CompCor...)
  and fills the first-row ``n/a`` of fMRIPrep's derivative columns with the second row.
* **Column patterns** (``CleaningConfig.confound_columns``, ``--confounds 'trans_*'``): exact names
  or :mod:`fnmatch` patterns (:func:`select_confound_columns`).

When both are given the regressors are the union: the strategy's columns, then the pattern
columns the strategy did not already choose (``--confounds-strategy motion --confounds
'a_comp_cor_0[0-4]'`` gives 24 motion columns and 5 CompCor components). Leading ``n/a`` follow
one rule in both cases: a column's first value fills them (:func:`trim_confounds`), which is
nilearn's rule for the one first-row ``n/a`` fMRIPrep writes.

Volumes that ``load_confounds`` would censor (its ``sample_mask``: non-steady-state volumes,
scrubbed high-motion volumes) cannot be removed here: every stored run keeps one row per TR,
because windows and feature rows are placed by TR index (:mod:`wav2brain.data.timing`). Each
censored volume among the kept ones becomes a spike regressor instead (a one-hot column
``censored_<volume>``), which removes that volume's influence on the confound fit exactly as
censoring does for the regression (Satterthwaite et al. 2013's spike regression); volumes a start
trim removes need none.

``load_confounds`` finds the table from an fMRIPrep-named image beside it. The run's table is the
one discovery found (:attr:`~wav2brain.data.bids.RunSpec.confounds_path`, also a mapping-table
``confounds`` column, a surface's or a preprocessed array's table), so it is linked under an
fMRIPrep name in a temporary folder (with its ``.json``, needed by anatomical CompCor) and read
there: the table read is always the one that was checked, whatever the image is.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from wav2brain.data.bids import require_file

STRATEGIES = (
    "motion",
    "high_pass",
    "wm_csf",
    "global_signal",
    "compcor",
    "ica_aroma",
    "scrub",
    "non_steady_state",
)
"""Noise components of :func:`nilearn.interfaces.fmriprep.load_confounds` that read the confounds
table only. ``tedana`` (needs tedana's own tables) and ``ica_aroma="full"`` (needs the
``desc-smoothAROMAnonaggr`` image) are refused."""

MODELS = ("basic", "power2", "derivatives", "full")
"""Expansions of motion, wm_csf and global_signal (``load_confounds``'s ``motion=`` etc.)."""

COMPCOR_TYPES = (
    "anat_combined",
    "anat_separated",
    "temporal",
    "temporal_anat_combined",
    "temporal_anat_separated",
)

CENSORED_PREFIX = "censored_"
"""Name prefix of the spike regressor of a censored volume (``censored_12`` = volume 12)."""


@dataclass
class ConfoundStrategy:
    """Which fMRIPrep confounds :func:`nilearn.interfaces.fmriprep.load_confounds` chooses.

    The fields are ``load_confounds``'s parameters, with its defaults (nilearn 0.14); see its
    documentation for each.

    Attributes
    ----------
    strategy : tuple of str
        Noise components, from :data:`STRATEGIES` (``"compcor"`` needs ``"high_pass"`` too, as
        nilearn requires).
    motion, wm_csf, global_signal : str
        Expansion of each component: ``"basic"``, ``"power2"``, ``"derivatives"``, ``"full"``.
    compcor : str
        CompCor flavour (:data:`COMPCOR_TYPES`).
    n_compcor : int or "all"
        Components kept per CompCor mask.
    scrub : int
        Shortest run of volumes (TRs) kept between censored ones.
    fd_threshold : float
        Framewise displacement (mm) above which a volume is censored by ``"scrub"``.
    std_dvars_threshold : float
        Standardised DVARS above which a volume is censored by ``"scrub"``.
    ica_aroma : str
        Only ``"basic"`` (AROMA noise components as regressors).
    """

    strategy: tuple[str, ...]
    motion: str = "full"
    wm_csf: str = "basic"
    global_signal: str = "basic"
    compcor: str = "anat_combined"
    n_compcor: int | str = "all"
    scrub: int = 5
    fd_threshold: float = 0.5
    std_dvars_threshold: float = 1.5
    ica_aroma: str = "basic"

    def __post_init__(self) -> None:
        strategy = self.strategy
        if isinstance(strategy, str) or not strategy:
            raise ValueError(
                f"confounds strategy must be a non-empty sequence of components from "
                f"{list(STRATEGIES)}, e.g. ('motion', 'wm_csf', 'high_pass'); got {strategy!r}"
            )
        unknown = [s for s in strategy if s not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"unknown confounds strategy component(s) {unknown}; expected some of "
                f"{list(STRATEGIES)} (tedana and full ICA-AROMA need other files)"
            )
        if "compcor" in strategy and "high_pass" not in strategy:
            raise ValueError(
                "confounds strategy 'compcor' needs 'high_pass' too: fMRIPrep computes CompCor "
                "after its cosine high-pass, so the cosines must be regressed with it"
            )
        self.strategy = tuple(dict.fromkeys(strategy))
        for name in ("motion", "wm_csf", "global_signal"):
            if getattr(self, name) not in MODELS:
                raise ValueError(
                    f"{name} must be one of {list(MODELS)}, got {getattr(self, name)!r}"
                )
        if self.compcor not in COMPCOR_TYPES:
            raise ValueError(f"compcor must be one of {list(COMPCOR_TYPES)}, got {self.compcor!r}")
        n = self.n_compcor
        if n != "all" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n_compcor must be 'all' or an integer >= 1, got {n!r}")
        if isinstance(self.scrub, bool) or not isinstance(self.scrub, int) or self.scrub < 0:
            raise ValueError(f"scrub must be an integer >= 0 (TRs), got {self.scrub!r}")
        for name in ("fd_threshold", "std_dvars_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if self.ica_aroma != "basic":
            raise ValueError(
                f"ica_aroma must be 'basic' (noise components as regressors), got "
                f"{self.ica_aroma!r}; 'full' needs fMRIPrep's desc-smoothAROMAnonaggr image"
            )


def as_strategy(value: ConfoundStrategy | Sequence[str] | None) -> ConfoundStrategy | None:
    """A :class:`ConfoundStrategy` from itself, a sequence of component names, or None."""
    if value is None or isinstance(value, ConfoundStrategy):
        return value
    return ConfoundStrategy(strategy=tuple(value) if not isinstance(value, str) else value)


def select_confound_columns(
    available: Sequence[str], patterns: Sequence[str] | None, source: Path | str
) -> list[str]:
    """Columns of a confounds table chosen by exact names or :func:`fnmatch.fnmatchcase` patterns.

    Order: the patterns' order, then the table's; each column once. None chooses every column.

    Raises
    ------
    ValueError
        A pattern matches no column (the patterns and the available columns are listed).
    """
    available = [str(c) for c in available]
    if patterns is None:
        return available
    chosen: list[str] = []
    unmatched = []
    for pattern in patterns:
        matches = [c for c in available if c == pattern or fnmatchcase(c, pattern)]
        if not matches:
            unmatched.append(pattern)
        chosen.extend(c for c in matches if c not in chosen)
    if unmatched:
        raise ValueError(
            f"confounds {source}: no column matches {unmatched}; available columns: {available}"
        )
    return chosen


def read_confounds_table(
    path: Path | str, patterns: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Read a confounds TSV/CSV (header row, one row per volume) and pick its columns.

    Returns float64 [rows, k] (NaN where the table says ``n/a``, as fMRIPrep writes) and the
    chosen column names (:func:`select_confound_columns`).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Unreadable table, unmatched patterns, non-numeric chosen columns (named).
    """
    import pandas as pd

    path = Path(path)
    require_file(path)
    try:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read confounds table {path}: {err}") from err
    names = select_confound_columns(table.columns, patterns, path)
    chosen = table[names].apply(pd.to_numeric, errors="coerce")
    bad = [n for n in names if (chosen[n].isna() & table[n].notna()).any()]
    if bad:
        raise ValueError(f"confounds {path}: column(s) {bad} are not numeric (or n/a)")
    return chosen.to_numpy(dtype=np.float64), names


def strategy_confounds(
    path: Path | str, strategy: ConfoundStrategy, n_volumes: int, scan: object = "the scan"
) -> tuple[np.ndarray, list[str]]:
    """The regressors :func:`nilearn.interfaces.fmriprep.load_confounds` chooses from one table.

    Parameters
    ----------
    path : path
        fMRIPrep ``desc-confounds_timeseries.tsv`` (or ``_regressors.tsv``), one row per volume;
        its ``.json`` beside it is used when it exists (anatomical CompCor needs it).
    strategy : ConfoundStrategy
        Components and their parameters.
    n_volumes : int
        Volumes (TRs) of the scan, which the table must match.
    scan : object
        The BOLD file, named in errors.

    Returns
    -------
    matrix : np.ndarray
        float64 [n_volumes, k], not demeaned (nilearn's ``signal.clean`` centres confounds), with
        one spike column per volume ``load_confounds`` censors (module docstring).
    names : list of str
        Column names; spike columns are ``censored_<volume>``.

    Raises
    ------
    FileNotFoundError
        No such table.
    ValueError
        Not a ``.tsv``; columns a component needs are missing (nilearn's message, with the table
        named), rows differ from ``n_volumes``, or every volume is censored.
    """
    import warnings

    from nilearn.interfaces.fmriprep import load_confounds

    path = Path(path)
    require_file(path)
    if path.suffix.lower() != ".tsv":
        raise ValueError(
            f"confounds {path}: a confounds strategy reads fMRIPrep's tab-separated tables "
            "(.tsv); choose columns with confound_columns for other tables"
        )
    with tempfile.TemporaryDirectory(prefix="wav2brain-confounds-") as folder:
        image = _stage_fmriprep_names(path, Path(folder))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                frame, sample_mask = load_confounds(
                    str(image),
                    strategy=list(strategy.strategy),
                    motion=strategy.motion,
                    scrub=strategy.scrub,
                    fd_threshold=strategy.fd_threshold,
                    std_dvars_threshold=strategy.std_dvars_threshold,
                    wm_csf=strategy.wm_csf,
                    global_signal=strategy.global_signal,
                    compcor=strategy.compcor,
                    n_compcor=strategy.n_compcor,
                    ica_aroma=strategy.ica_aroma,
                    demean=False,
                )
        except ValueError as err:
            message = str(err).replace(str(image.parent), str(path.parent))
            raise ValueError(
                f"confounds {path}: strategy {list(strategy.strategy)} cannot be applied: {message}"
            ) from None
    if len(frame) != n_volumes:
        raise ValueError(
            f"confounds {path} have {len(frame)} rows but {scan} has {n_volumes} volumes; "
            "expected one row per volume (before trimming)"
        )
    names = [str(c) for c in frame.columns]
    matrix = frame.to_numpy(dtype=np.float64) if names else np.zeros((n_volumes, 0))
    if sample_mask is not None:
        censored = np.setdiff1d(np.arange(n_volumes), np.asarray(sample_mask, dtype=np.int64))
        if censored.size == n_volumes:
            raise ValueError(
                f"confounds {path}: strategy {list(strategy.strategy)} censors all "
                f"{n_volumes} volumes (fd_threshold {strategy.fd_threshold} mm, "
                f"std_dvars_threshold {strategy.std_dvars_threshold})"
            )
        spikes = np.zeros((n_volumes, censored.size))
        spikes[censored, np.arange(censored.size)] = 1.0
        matrix = np.hstack([matrix, spikes])
        names += [f"{CENSORED_PREFIX}{v}" for v in censored]
    return matrix, names


def _stage_fmriprep_names(table: Path, folder: Path) -> Path:
    """Link ``table`` (and its ``.json``) into ``folder`` under fMRIPrep names; the image path.

    ``load_confounds`` never opens the image: it derives the table's name from it. An
    fMRIPrep-named table keeps its name (so nilearn's messages name the real file); any other is
    staged as ``sub-0_task-0``.
    """
    suffix = "regressors" if table.name.endswith("_regressors.tsv") else "timeseries"
    ending = f"_desc-confounds_{suffix}.tsv"
    stem = table.name[: -len(ending)] if table.name.endswith(ending) else "sub-0_task-0"
    if not re.fullmatch(r"sub-[a-zA-Z0-9]+(_[a-zA-Z0-9]+-[a-zA-Z0-9]+)*", stem):
        stem = "sub-0_task-0"
    _link(table, folder / f"{stem}{ending}")
    sidecar = table.with_suffix(".json")
    if sidecar.is_file():
        _link(sidecar, folder / f"{stem}{ending[:-4]}.json")
    return folder / f"{stem}_desc-preproc_bold.nii.gz"


def _link(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copyfile(source, target)


def run_confounds(
    path: Path | str,
    n_volumes: int,
    patterns: Sequence[str] | None,
    strategy: ConfoundStrategy | None,
    scan: object = "the scan",
) -> tuple[np.ndarray, list[str]]:
    """A run's confounds [n_volumes, k] and their names: strategy columns, then pattern columns.

    See the module docstring for how the two combine. ``patterns=None`` with no strategy chooses
    every column of the table (a table given explicitly to
    :func:`wav2brain.data.fmri.load_bold`). ``scan`` (the BOLD file) is named in errors.

    Raises
    ------
    ValueError
        As :func:`strategy_confounds` and :func:`read_confounds_table`; a table whose rows differ
        from ``n_volumes``.
    """
    matrix = np.zeros((n_volumes, 0))
    names: list[str] = []
    if strategy is not None:
        matrix, names = strategy_confounds(path, strategy, n_volumes, scan)
    if patterns is not None or strategy is None:
        table, columns = read_confounds_table(path, patterns)
        if table.shape[0] != n_volumes:
            raise ValueError(
                f"confounds {path} have {table.shape[0]} rows but {scan} has {n_volumes} "
                "volumes; expected one row per volume (before trimming)"
            )
        extra = [j for j, c in enumerate(columns) if c not in names]
        matrix = np.hstack([matrix, table[:, extra]])
        names += [columns[j] for j in extra]
    return matrix, names


def trim_confounds(
    matrix: np.ndarray,
    start: int,
    stop: int,
    names: Sequence[str] | None = None,
    source: object = "confounds",
) -> np.ndarray:
    """Keep rows ``start:stop`` (the kept volumes) and fill each column's leading NaN.

    fMRIPrep writes ``n/a`` in the first row of columns that compare a volume with the previous
    one (``*_derivative1``, ``framewise_displacement``, ``dvars``): there is no previous volume.
    Those rows take the column's first value among the kept rows, which is nilearn's
    ``load_confounds`` rule (row 0 copies row 1), so columns chosen by pattern and by strategy
    are filled alike; a start trim usually drops that row anyway. NaN after a column's first
    finite value, infinities, or a column with no finite value in the kept rows are errors:
    those are not fMRIPrep's first-row n/a, and a silent fill would hide a broken table.

    Parameters
    ----------
    matrix : np.ndarray
        float [scan volumes, k], one row per volume (TR) before trimming.
    start, stop : int
        First kept volume and one past the last (TRs).
    names : sequence of str, optional
        Column names, for error messages.
    source : object
        The table (path) named in error messages.

    Returns
    -------
    np.ndarray
        float64 [stop - start, k].
    """
    kept = np.array(matrix[start:stop], dtype=np.float64)
    names = list(names) if names is not None else [f"column {j}" for j in range(kept.shape[1])]
    missing = np.isnan(kept)
    leading = np.cumprod(missing, axis=0).astype(bool)
    for j in np.flatnonzero((missing & ~leading).any(axis=0) | np.isinf(kept).any(axis=0)):
        row = start + int(np.flatnonzero(~np.isfinite(kept[:, j]) & ~leading[:, j])[0])
        raise ValueError(
            f"{source}: confound {names[j]!r} is n/a or infinite at row {row} (volume {row}); "
            "only n/a in a column's first rows (fMRIPrep's first-row n/a) are filled"
        )
    if leading.all(axis=0).any():
        empty = [names[j] for j in np.flatnonzero(leading.all(axis=0))]
        raise ValueError(
            f"{source}: confound(s) {empty} have no value in volumes {start}-{stop - 1}"
        )
    if missing.any():
        first = kept[np.argmax(~missing, axis=0), np.arange(kept.shape[1])]
        kept = np.where(missing, first, kept)
    return kept


def kept_confounds(
    matrix: np.ndarray,
    start: int,
    stop: int,
    names: Sequence[str] | None = None,
    source: object = "confounds",
) -> tuple[np.ndarray, list[str]]:
    """:func:`trim_confounds`, less the spike columns of censored volumes the trim removed.

    Returns the float64 [stop - start, k'] matrix and its column names.
    """
    names = list(names) if names is not None else [f"column {j}" for j in range(matrix.shape[1])]
    kept = trim_confounds(matrix, start, stop, names, source)
    keep = [
        j
        for j, name in enumerate(names)
        if not name.startswith(CENSORED_PREFIX) or kept[:, j].any()
    ]
    if len(keep) + 1 >= kept.shape[0]:
        raise ValueError(
            f"{source}: {len(keep)} confound regressors for {kept.shape[0]} kept volumes (TRs); "
            "a run needs more volumes than regressors (choose fewer components or columns)"
        )
    return kept[:, keep], [names[j] for j in keep]
