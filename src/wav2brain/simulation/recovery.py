"""Recovery of planted ground truth on the SIMULATED dataset: a check that can fail.

:func:`simulated_recovery` reads what ``wav2brain simulate`` planted (``derivatives/ground_truth``),
the prepared dataset (``wav2brain prepare``) and its feature cache (``wav2brain extract``), fits
voxelwise ridge models of the planted layers through the library's public API
(:class:`~wav2brain.encoding.RidgeCV`, :func:`~wav2brain.features.pipeline.run_features`) and
runs three tests, each with a threshold derived from the statistics of the held-out test rather
than a fixed tolerance. Every figure it returns is SIMULATED.

The fit. Per subject and planted layer, the layer's features are placed on each run's TRs, then
normalised as ``prepare`` normalised the BOLD (per run: the mean and the same Legendre drift basis
projected out, then z-scored; the basis comes from the dataset's cleaning settings), and a nested
cross-validation over stories (outer: leave one story out; inner: :class:`RidgeCV` choosing each
voxel's alpha over the training stories) gives held-out predictions of every TR. Scores are
Pearson r of the predictions pooled over all outer folds (all ``n`` TRs of the subject), as
``wav2brain encode`` reports them. The check never reads ``encode``'s tables, so it does not
depend on how that command is organised; it does exercise the same extraction, cache, TR-grid and
ridge code.

1. Planted voxels reach their ceiling. The ceiling of a voxel driven by units of layer ``l`` is
   the held-out oracle: the pooled r of the same nested cross-validated ridge fitted on the exact
   layer, the ground-truth regressors of every unit of layer ``l`` (written by the simulator with
   nilearn's ``compute_regressor``, independently of the feature cache, normalised like the
   features), i.e. what the pipeline scores when its extraction, TR grid and alignment lose
   nothing. A voxel agrees when its ceiling lies inside the two-sided ``1 - level`` Fisher-z
   confidence interval of its r, ``atanh r +- z / sqrt(n_eff - 3)``, where ``n_eff`` is the
   effective number of held-out TRs (:func:`~wav2brain.metrics.autocorrelation.effective_sample_size`, Bartlett's formula from the
   lag autocorrelations of the prediction and the BOLD). The test passes unless significantly
   more than ``level`` of the planted voxels disagree (one-sided binomial test at
   ``decision_level``). r and its ceiling share the BOLD's noise and the ridge's estimation loss
   (r falls short of the planted regressor's own correlation by roughly ``(units / training TRs)
   (1 - r^2) / r``: 0.055 with 32 distinct units and 480 training TRs), so their difference varies
   less than the interval says and the test is conservative against sampling error. It is
   built to catch a pipeline that loses much more than that (misaligned voxels, wrong layer,
   broken features); a half-TR error costs only about 2 % of r (HRF-filtered features keep
   about 0.98 of their correlation at a 0.5-s shift), which it may or may not see. The next test
   is the one built for timing. ``planted_mean_signal_r`` reports the planted regressor's own
   correlation with the BOLD (what recovering the planted feature exactly would score).
2. Timing controls. Every run's onset is shifted by ``±s`` TRs for each ``s`` of ``shifts_trs``
   (default 0.5 and 1), the features are re-sampled there by the real pipeline (a whole-TR shift
   re-reads the cached entry; a sub-TR shift runs the ground-truth model again on a grid of the
   new phase through :func:`~wav2brain.features.pipeline.stimulus_features`, into ``work_dir``)
   and the same fit is repeated. Per subject ``d = mean over planted voxels of atanh r(true onset)
   - atanh r(shifted onset)``; a one-sided t over subjects (df = subjects - 1) tests ``d > 0`` on
   each side, and the control passes only when both sides exceed the critical t at
   ``decision_level`` (an intersection-union test: its level is that of each side). A pipeline
   whose timing is wrong by half a TR or more has a shifted side that fits better, so it fails.
3. Noise voxels stay at chance. A noise-only voxel is a false positive when
   ``atanh r > z_(1-level) / sqrt(n_eff - 3)`` (one-sided: a negative r is no recovery). The same
   thresholds are applied to a permutation null: each run's held-out predictions circularly
   shifted by a random offset (``n_permutations`` draws). Held-out predictions of a noise voxel
   are independent of its held-out BOLD, so any circular shift is a draw from the null that keeps
   both series' autocorrelation. The null's rate must lie within ``null_tolerance`` of ``level``
   (the threshold, i.e. Bartlett's ``n_eff``, holds its nominal level), and the observed rate must
   not be significantly above the null's (one-sided binomial over voxels at ``decision_level``):
   nothing leaks, drift left in the BOLD for one. Noise voxels (a seeded subset of
   ``max_noise_voxels``) are split evenly among the planted layers' models, so each is scored
   once and false positives are independent across voxels.

The planted voxels of these tests are those whose every driving unit is a ``hidden_states`` unit of
one layer (``planted_pairs.tsv``): their planted regressor is then a linear function of that
layer's cached features, which a ridge on the layer can reach. Voxels driven by the envelope or by
word or phoneme onsets (no unit of the model is their cause), by ``attention_output`` or
``ffn_intermediate`` units (not in a ``hidden_states`` cache), or by units of two layers (no one
layer's model reaches their ceiling) are left out of every test, and out of the noise voxels.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wav2brain.metrics.autocorrelation import effective_sample_size

SIMULATED = "SIMULATED"
"""Label carried by every result of this module."""

_R_MAX = 1 - 1e-7
"""Correlations are clipped to ``±_R_MAX`` before ``atanh``."""


@dataclass(frozen=True)
class RecoveryConfig:
    """Settings of :func:`simulated_recovery`.

    Attributes
    ----------
    level : float
        Voxelwise level: the planted voxels' confidence intervals cover ``1 - level``, and a noise
        voxel is a false positive above the one-sided ``1 - level`` threshold.
    decision_level : float
        Level of the check's own tests (binomial tests of the disagreeing and false-positive
        counts, t tests of the timing controls). 0.01 by default, so a correct pipeline fails
        each test about once in a hundred seeds.
    shifts_trs : tuple of float
        Magnitudes (TRs) of the onset shifts of the timing controls; each is applied both ways.
    alphas : tuple of float
        Ridge grid (units of the squared z-scored features).
    inner_cv : int
        Folds over the training stories that choose each voxel's alpha (lowered to the number of
        training stories; one training story: contiguous blocks of its TRs).
    max_lag_s : float
        Longest lag (s) in Bartlett's sum (:func:`~wav2brain.metrics.autocorrelation.effective_sample_size`); 30 s covers the
        haemodynamic response and the AR noise, while longer lags, whose sample autocorrelations
        are mostly noise, would only add variance. Capped at a quarter of the shortest run.
    n_permutations : int
        Circular-shift draws of the permutation null per subject.
    null_tolerance : float
        Largest relative departure of the permutation null's false-positive rate from ``level``
        (0.25: 3.75 % to 6.25 % at a 5 % level). Bartlett's formula is an approximation (measured
        at demo size: 5.2 % at 5 %), and the null's draws share voxels, so a binomial test of a
        calibration that is right to a few tenths of a percent would reject it.
    max_noise_voxels : int or None
        Noise-only voxels scored per subject (a seeded random subset; None: all). Their ridge
        fits are most of the check's cost; 1,000 per subject detects a false-positive rate one
        percentage point above the null's with four subjects.
    seed : int
        Seed of the permutation null and of the noise-voxel subset.
    """

    level: float = 0.05
    decision_level: float = 0.01
    shifts_trs: tuple[float, ...] = (0.5, 1.0)
    alphas: tuple[float, ...] = tuple(np.logspace(-1, 4, 8).tolist())
    inner_cv: int = 5
    max_lag_s: float = 30.0
    n_permutations: int = 20
    null_tolerance: float = 0.25
    max_noise_voxels: int | None = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shifts_trs", tuple(float(s) for s in self.shifts_trs))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        checks = (
            (0 < self.level < 0.5, "level", "in (0, 0.5)"),
            (0 < self.decision_level < 0.5, "decision_level", "in (0, 0.5)"),
            (
                len(self.shifts_trs) > 0 and all(s > 0 for s in self.shifts_trs),
                "shifts_trs",
                "a non-empty tuple of positive TR counts",
            ),
            (
                len(self.alphas) > 0 and all(a > 0 and math.isfinite(a) for a in self.alphas),
                "alphas",
                "a non-empty tuple of positive numbers",
            ),
            (self.inner_cv >= 2, "inner_cv", "an integer >= 2"),
            (self.max_lag_s > 0, "max_lag_s", "> 0 s"),
            (self.n_permutations >= 1, "n_permutations", "an integer >= 1"),
            (0 < self.null_tolerance < 1, "null_tolerance", "in (0, 1)"),
            (
                self.max_noise_voxels is None or self.max_noise_voxels >= 1,
                "max_noise_voxels",
                "None or an integer >= 1",
            ),
        )
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(
                    f"RecoveryConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )


@dataclass(frozen=True)
class RateTest:
    """A count of voxels tested against a reference rate (one-sided binomial).

    ``passed`` unless ``count`` out of ``total`` is significantly above ``nominal``:
    ``p_value = P(Binomial(total, nominal) >= count) >= decision_level``.
    """

    name: str
    count: int
    total: int
    nominal: float
    rate: float
    p_value: float
    passed: bool


@dataclass(frozen=True)
class NullCalibration:
    """The false-positive threshold's rate on the permutation null, against its nominal level.

    ``passed`` when ``|rate - nominal| <= tolerance * nominal``.
    """

    count: int
    total: int
    nominal: float
    rate: float
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class ShiftControl:
    """One timing control: every onset shifted by ``+shift_trs`` and by ``-shift_trs`` TRs.

    ``t`` and ``mean_advantage_r`` are keyed by the signed shift (``"-0.5"``, ``"+0.5"``): the
    one-sided t over subjects of the per-subject mean ``atanh r(true) - atanh r(shifted)``, and the
    mean over subjects and planted voxels of ``r(true) - r(shifted)``. ``passed`` when both t
    exceed ``critical_t`` (df = subjects - 1, one-sided at the decision level).
    """

    shift_trs: float
    t: dict[str, float]
    mean_advantage_r: dict[str, float]
    critical_t: float
    df: int
    passed: bool


@dataclass(frozen=True)
class SubjectRecovery:
    """Per-subject figures (SIMULATED).

    Attributes
    ----------
    subject : str
    n_trs : int
        Held-out TRs (every TR of the subject's runs, each predicted by the fold holding it out).
    n_planted, n_noise : int
        Unit-driven and noise-only voxels scored.
    planted_mean_r, planted_mean_ceiling, planted_mean_gap, planted_max_abs_gap : float
        Mean held-out r, mean ceiling (the oracle fit on the exact layer), mean ``r - ceiling``
        and largest ``|r - ceiling|`` of the planted voxels.
    planted_mean_signal_r : float
        Mean correlation of the planted regressor itself with the BOLD (on the same TRs).
    planted_median_n_eff, noise_median_n_eff : float
        Median effective held-out TRs (Bartlett) of the two groups.
    planted_outside_ci : int
        Planted voxels whose ceiling lies outside their r's confidence interval.
    noise_median_threshold_r : float
        Median false-positive threshold (r) of the noise voxels.
    noise_false_positives : int
        Noise voxels above their threshold.
    null_false_positive_rate : float
        Rate of the same thresholds on the permutation null.
    shift_advantage_z, shift_advantage_r : dict
        Signed shift (TRs, ``"+0.5"``) to the mean over planted voxels of
        ``atanh r(true) - atanh r(shifted)``, and of ``r(true) - r(shifted)``.
    """

    subject: str
    n_trs: int
    n_planted: int
    n_noise: int
    planted_mean_r: float
    planted_mean_ceiling: float
    planted_mean_signal_r: float
    planted_mean_gap: float
    planted_max_abs_gap: float
    planted_median_n_eff: float
    planted_outside_ci: int
    noise_median_n_eff: float
    noise_median_threshold_r: float
    noise_false_positives: int
    null_false_positive_rate: float
    shift_advantage_z: dict[str, float] = field(default_factory=dict)
    shift_advantage_r: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RecoveryResult:
    """Outcome of :func:`simulated_recovery` (SIMULATED data); :meth:`to_dict` is JSON-ready.

    ``passed`` when every test passed; ``failures`` says which did not, and why.
    """

    config: RecoveryConfig
    subjects: tuple[SubjectRecovery, ...]
    planted: RateTest
    noise: RateTest
    null: NullCalibration
    controls: tuple[ShiftControl, ...]
    failures: tuple[str, ...]
    passed: bool
    simulated: bool = True
    label: str = SIMULATED

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


def held_out_predictions(
    X: np.ndarray, Y: np.ndarray, groups: np.ndarray, alphas: Sequence[float], inner_cv: int
) -> np.ndarray:
    """Nested-CV held-out predictions [n_trs, n_voxels]: each group predicted by a fit without it.

    The outer folds leave one group (story) out; a :class:`~wav2brain.encoding.RidgeCV` on the
    other groups chooses each voxel's alpha with ``inner_cv`` folds over them (contiguous blocks
    when a single group is left for training).
    """
    from wav2brain.encoding import RidgeCV, make_splits

    predictions = np.empty(Y.shape, dtype=np.float32)
    for train, test in make_splits(len(X), groups, "groups"):
        n_train_groups = len(np.unique(groups[train]))
        inner = groups[train] if n_train_groups >= 2 else None
        model = RidgeCV(
            alphas=alphas,
            cv=min(inner_cv, n_train_groups) if inner is not None else inner_cv,
        ).fit(X[train], Y[train], groups=inner)
        predictions[test] = model.predict(X[test])
    return predictions


def normalize_like_bold(values: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """One run's columns [n_trs, k] with the mean and ``basis`` [n_trs, b] projected out, z-scored.

    The BOLD's own cleaning (``prepare``: Legendre drift basis, then z-score per run), applied to
    features or regressors so that both sides of every correlation are cleaned alike. Constant
    columns come out as zeros.
    """
    values = np.asarray(values, dtype=np.float64)
    design = np.ones((len(values), 1))
    if basis is not None:
        design = np.hstack([design, basis])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = values - design @ coef
    std = residual.std(0)
    return np.divide(
        residual, std, out=np.zeros_like(residual), where=std > 1e-12 * (1 + std.max())
    )


def _pooled_r(x_runs: Sequence[np.ndarray], y_runs: Sequence[np.ndarray]) -> np.ndarray:
    """Pearson r per column of the runs concatenated (float64)."""
    x = np.concatenate(x_runs).astype(np.float64)
    y = np.concatenate(y_runs).astype(np.float64)
    x -= x.mean(0)
    y -= y.mean(0)
    denominator = np.sqrt((x * x).sum(0) * (y * y).sum(0))
    return np.divide((x * y).sum(0), denominator, out=np.zeros(x.shape[1]), where=denominator > 0)


def _split(values: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Rows of ``values`` cut into consecutive runs of ``lengths``."""
    return np.split(values, np.cumsum(lengths)[:-1])


def _rate_test(name: str, count: int, total: int, nominal: float, decision: float) -> RateTest:
    """One-sided binomial test of ``count`` out of ``total`` against ``nominal``."""
    from scipy.stats import binom

    p_value = float(binom.sf(count - 1, total, nominal)) if total else 1.0
    rate = count / total if total else 0.0
    return RateTest(name, int(count), int(total), nominal, rate, p_value, p_value >= decision)


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch and BLAS on one thread for the check's small fits (tens of features).

    Thread hand-offs cost more than they gain there: measured on 2 cores, the ridge's
    eigendecomposition of a 450 x 32 design takes 89 ms with 2 torch threads, 0.2 ms with 1.
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def _shift_name(shift: float) -> str:
    """``+0.5``, ``-1`` (TRs)."""
    return f"{shift:+g}"


@dataclass
class _Run:
    """One prepared run: identifiers, timing (a :class:`~wav2brain.features.pipeline.RunTiming`),
    cleaned BOLD columns, drift basis, cache entry, planted regressors and the exact layer
    designs (planted layer -> ground-truth regressors of all its units)."""

    subject: str
    stimulus_id: str
    timing: Any
    bold: np.ndarray
    entry_path: Path
    basis: np.ndarray | None
    regressors: np.ndarray
    design: dict[int, np.ndarray]


@dataclass
class _Truth:
    """What the simulator planted, mapped to the prepared dataset's columns."""

    planted_columns: np.ndarray
    planted_layers: np.ndarray
    planted_regressors: list[str]
    noise_columns: np.ndarray


def _column_of_voxels(dataset: Path, ijk: np.ndarray) -> np.ndarray:
    """Column of ``bold`` of each voxel index (i, j, k) [n, 3]; -1 where outside the mask."""
    import nibabel as nib

    mask_path = dataset / "mask.nii.gz"
    if not mask_path.is_file():
        raise FileNotFoundError(f"{mask_path} not found: expected a prepared NIfTI dataset")
    mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
    column = np.full(mask.shape, -1, dtype=np.int64)
    column[mask] = np.arange(int(mask.sum()))
    return column[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def _read_truth(truth: Path, dataset: Path) -> _Truth:
    """Planted voxels (columns, layers, regressor names) of one layer's hidden states, and the
    noise-only columns (outside every cluster)."""
    import nibabel as nib
    import pandas as pd

    from wav2brain.simulation.truth import planted_pairs

    if not (truth / "voxels.tsv").is_file():
        raise FileNotFoundError(f"{truth / 'voxels.tsv'} not found: not a simulated dataset")
    voxels = pd.read_csv(truth / "voxels.tsv", sep="\t")
    columns = _column_of_voxels(dataset, voxels[["i", "j", "k"]].to_numpy())
    if (columns < 0).any():
        raise ValueError(
            f"{int((columns < 0).sum())} planted voxels lie outside {dataset / 'mask.nii.gz'}; "
            f"prepare with --mask {truth / 'brain_mask.nii.gz'}"
        )
    pairs = planted_pairs(truth).groupby("voxel")
    one_layer = (pairs["tensor"].agg(lambda t: set(t) == {"hidden_states"})) & (
        pairs["layer"].nunique() == 1
    )
    layer_of = pairs["layer"].first()[one_layer]
    eligible = voxels["voxel"].isin(layer_of.index).to_numpy()
    if not eligible.any():
        raise ValueError(
            f"{truth / 'planted_pairs.tsv'}: no voxel is driven only by hidden_states units of "
            "one layer"
        )
    brain = _column_of_voxels(dataset, np.argwhere(nib.load(truth / "brain_mask.nii.gz").dataobj))
    return _Truth(
        planted_columns=columns[eligible],
        planted_layers=layer_of.loc[voxels.loc[eligible, "voxel"]].to_numpy(dtype=np.int64),
        planted_regressors=list(voxels.loc[eligible, "regressor"]),
        noise_columns=np.setdiff1d(brain[brain >= 0], columns),
    )


def _stream(dataset: Path, table: str):
    """A table of the prepared folder, streamed from its Parquet shards.

    Not ``load_dataset(folder, table)``: datasets 5 reuses the Arrow cache built for any earlier
    folder with the same name and dataset card, whatever its files hold (measured: a folder
    rewritten with other values, or another folder of the same name, reads the first one's
    rows). Streaming reads the shards themselves, one row at a time.
    """
    from datasets import load_dataset

    return load_dataset(str(dataset), table, split="train", streaming=True)


def _key_columns(table, keys: Sequence[str]):
    """``keys`` columns of ``table`` as strings, missing values as ''."""
    return table[list(keys)].astype(object).where(table[list(keys)].notna(), "").astype(str)


RUN_COLUMNS = ("subject", "session", "task", "run", "stimulus_id")
"""Columns that identify a run in ``responses`` and in the cache's ``runs.parquet``."""


def _run_table(dataset: Path, features: Path, truth: Path):
    """The runs' identifiers, TR counts and cache entries, checked before any BOLD is read.

    Raises when a run has no cached features or no ground truth, when there are fewer than two
    subjects (the timing controls need a t over subjects) or a subject heard fewer than two
    stories (held-out scores need folds over stories).
    """
    import pandas as pd

    if not (dataset / "README.md").is_file():
        raise FileNotFoundError(
            f"{dataset} is not a prepared dataset folder: no README.md (run `wav2brain prepare`)"
        )
    index_path = features / "runs.parquet"
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{index_path} not found: run `wav2brain extract {dataset} --out {features}` first"
        )
    cached = pd.read_parquet(index_path)
    cached.index = pd.MultiIndex.from_frame(_key_columns(cached, RUN_COLUMNS))
    columns = [*RUN_COLUMNS, "n_trs"]
    table = pd.DataFrame(list(_stream(dataset, "responses").select_columns(columns)))
    keys = [tuple(row) for row in _key_columns(table, RUN_COLUMNS).itertuples(index=False)]
    if missing := [key for key in keys if key not in cached.index]:
        raise ValueError(
            f"runs without cached features in {index_path}: {missing[:5]} (re-run extract)"
        )
    table["entry"] = [str(features / str(cached.loc[key, "path"])) for key in keys]
    for task in sorted(set(table["task"])):
        if not (truth / f"task-{task}_regressors.tsv").is_file():
            raise FileNotFoundError(
                f"{truth / f'task-{task}_regressors.tsv'} not found: no ground truth for task "
                f"{task!r}"
            )
    subjects = sorted(set(table["subject"]))
    if len(subjects) < 2:
        raise ValueError(
            f"{dataset}: {len(subjects)} subject(s); the timing controls need at least 2 "
            "(a t over subjects)"
        )
    for subject, stories in table.groupby("subject")["stimulus_id"]:
        if stories.nunique() < 2:
            raise ValueError(
                f"sub-{subject} heard {sorted(set(stories))}: held-out scores need folds over at "
                "least 2 stories"
            )
    return table


def _read_runs(dataset: Path, table, truth: Path, planted: _Truth) -> list[_Run]:
    """Every run of ``table`` (:func:`_run_table`) with its BOLD, drift basis, regressors and the
    exact designs of the planted layers."""
    import pandas as pd

    from wav2brain.data.fmri import drift_confounds, drift_order
    from wav2brain.encoding.runs import read_cleaning
    from wav2brain.features.pipeline import RunTiming
    from wav2brain.simulation.configuration import PlantedUnit

    cleaning = read_cleaning(dataset)
    start = cleaning.trim_start_trs
    layers = sorted(set(planted.planted_layers.tolist()))
    tables = {
        task: pd.read_csv(truth / f"task-{task}_regressors.tsv", sep="\t")
        for task in sorted(set(table["task"]))
    }
    design_columns = {}
    for layer in layers:
        prefix = PlantedUnit(layer, 0).key.rsplit("unit", 1)[0]
        design_columns[layer] = [
            c for c in next(iter(tables.values())).columns if c.startswith(prefix)
        ]
        if not design_columns[layer]:
            raise ValueError(
                f"{truth}: the regressor tables hold no {prefix}* columns (the exact design of "
                f"planted layer {layer}); simulate the dataset again with this wav2brain"
            )
    responses = _stream(dataset, "responses").with_format("numpy")
    runs = []
    for info, row in zip(table.itertuples(index=False), responses, strict=True):
        bold = np.asarray(np.stack(row["bold"]) if row["bold"].dtype == object else row["bold"])
        regressors = tables[info.task]
        n, tr = len(bold), float(row["tr"])
        if start + n > len(regressors):
            raise ValueError(
                f"run sub-{info.subject} task-{info.task}: {n} TRs from volume {start} exceed "
                f"the {len(regressors)} volumes of the simulated scan"
            )
        rows = slice(start, start + n)
        runs.append(
            _Run(
                subject=str(info.subject),
                stimulus_id=str(info.stimulus_id),
                timing=RunTiming.from_row(row),
                bold=bold.astype(np.float32),
                entry_path=Path(info.entry),
                basis=drift_confounds(n, drift_order(n, tr, cleaning)),
                regressors=regressors[planted.planted_regressors].to_numpy(np.float64)[rows],
                design={
                    layer: regressors[columns].to_numpy(np.float64)[rows]
                    for layer, columns in design_columns.items()
                },
            )
        )
    return runs


class _Features:
    """Features of a layer at a run's onset plus a shift (TRs), normalised like the BOLD.

    Whole-TR shifts re-read the run's cache entry; sub-TR shifts need an entry on a grid of
    another phase, computed once per stimulus by the ground-truth model (:meth:`prepare`).
    """

    def __init__(self, truth: Path) -> None:
        self._truth = truth
        self._entries: dict[tuple[Path, float], Any] = {}
        self._model = None

    def check(self, entry_path: Path, layers: Sequence[str], sub_tr: bool) -> None:
        """Refuse a cache without the planted ``layers`` or, when ``sub_tr`` shifts will run the
        model, one extracted with another model than the simulator's."""
        entry = self._entry(entry_path, 0.0)
        if missing := sorted(set(layers) - set(entry.layers)):
            raise ValueError(
                f"the planted layers {missing} are not in the feature cache entry {entry_path}: "
                f"have {sorted(entry.layers)}; extract every layer"
            )
        if not sub_tr:
            return
        from transformers import AutoModel

        from wav2brain.features.cache import model_identity

        stored = entry.metadata["key"]["model"]
        model = AutoModel.from_pretrained(self._truth / "model").eval()
        if model_identity(model, stored["name"], stored.get("revision")) != stored:
            raise ValueError(
                f"the feature cache ({entry_path.parent.parent}) was extracted with another model "
                f"than the simulation's {self._truth / 'model'}: the planted units are not its "
                "units"
            )
        self._model = model

    def prepare(
        self, dataset: Path, runs: Sequence[_Run], shifts: Sequence[float], work: Path
    ) -> None:
        """Compute (or find in the cache ``work``) every sub-TR-shifted entry, one model pass per
        stimulus, with the extraction and TR-grid settings of the run's own entry."""
        from wav2brain.data.hf_layout import decode_audio
        from wav2brain.features.cache import FeatureCache
        from wav2brain.features.extract import ExtractionConfig
        from wav2brain.features.pipeline import stimulus_features
        from wav2brain.features.resample import TRGridConfig

        fractional = [s for s in shifts if not float(s).is_integer()]
        if not fractional:
            return
        if self._model is None:
            raise RuntimeError("check() the cache's model before computing shifted features")
        wanted = {run.stimulus_id for run in runs}
        audio = {
            str(row["id"]): row["audio"]
            for row in _stream(dataset, "stimuli").select_columns(["id", "audio"])
            if str(row["id"]) in wanted
        }
        cache = FeatureCache(work)
        for stimulus_id in sorted({run.stimulus_id for run in runs}):
            played = [run for run in runs if run.stimulus_id == stimulus_id]
            key = self._entry(played[0].entry_path, 0.0).metadata["key"]
            extraction = dict(key["extraction"])
            if extraction.get("layers") is not None:
                extraction["layers"] = tuple(extraction["layers"])
            timings = {
                (run.entry_path, shift): _shifted(run.timing, shift)
                for run in played
                for shift in fractional
            }
            entries = stimulus_features(
                self._model,
                decode_audio(audio[stimulus_id]),
                stimulus_id=stimulus_id,
                model_id=key["model"],
                cache=cache,
                timings=list(dict.fromkeys(timings.values())),
                extraction=ExtractionConfig(**extraction),
                grid_config=TRGridConfig(**_grid_config(key)),
            )
            for where, timing in timings.items():
                self._entries[where] = entries[timing]

    def _entry(self, path: Path, shift: float):
        """The cache entry serving ``path``'s runs at ``shift`` TRs (0 or whole: the run's own)."""
        if float(shift).is_integer():
            shift = 0.0
        if (path, shift) not in self._entries:
            if shift:
                raise KeyError(f"no entry at a {shift:+g}-TR shift for {path}: call prepare()")
            from wav2brain.features.cache import open_entry

            self._entries[(path, shift)] = open_entry(path)
        return self._entries[(path, shift)]

    def of(self, run: _Run, layer: str, shift: float) -> np.ndarray:
        """Layer ``layer`` on ``run``'s TRs with the onset moved by ``shift`` TRs, normalised."""
        from wav2brain.features.pipeline import run_features
        from wav2brain.features.resample import TRGridConfig

        entry = self._entry(run.entry_path, shift)
        grid_config = TRGridConfig(**_grid_config(entry.metadata["key"]))
        timing = _shifted(run.timing, shift)
        values = run_features(entry, timing, len(run.bold), grid_config, [layer])[layer]
        return normalize_like_bold(values, run.basis)


def _shifted(timing, shift_trs: float):
    """``timing`` (a ``RunTiming``) with the stimulus onset ``shift_trs`` TRs later."""
    return replace(timing, onset_s=timing.onset_s + shift_trs * timing.tr_s)


def _grid_config(key: Mapping[str, Any]) -> dict[str, Any]:
    """A cache key's TR-grid settings as keyword arguments of ``TRGridConfig``."""
    config = dict(key["grid_config"])
    config["delays"] = tuple(config.get("delays", ()))
    return config


def _layer_name(layer: int) -> str:
    """Cache name of a ``hidden_states`` index (``layer_02``)."""
    return f"layer_{int(layer):02d}"


def simulated_recovery(
    bids: str | Path,
    dataset: str | Path,
    features: str | Path,
    config: RecoveryConfig | None = None,
    work_dir: str | Path | None = None,
) -> RecoveryResult:
    """Test that the pipeline recovers what the simulator planted, and fails when timing is off.

    Parameters
    ----------
    bids : str or Path
        The simulated BIDS root (holds ``derivatives/ground_truth``).
    dataset : str or Path
        Its prepared folder (``wav2brain prepare --mask <ground truth brain_mask.nii.gz>``).
    features : str or Path
        The feature cache of ``dataset`` (``wav2brain extract --model <ground truth model>``).
    config : RecoveryConfig, optional
        Levels, shifts, ridge grid, permutations.
    work_dir : str or Path, optional
        Feature cache for the sub-TR-shifted onsets (entries are keyed like ``extract``'s, so
        this may be ``features`` itself, and a rerun reuses them); None: a temporary folder
        removed afterwards.

    Returns
    -------
    RecoveryResult
        Per-subject figures, the three tests and ``passed`` (see the module docstring).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing ground truth, dataset files or cache entries; planted voxels outside the mask;
        a subject with fewer than two stories or fewer than two subjects (the timing controls
        need a t over subjects); checked before any fitting.
    """
    from scipy.stats import norm
    from scipy.stats import t as student_t

    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    config = config or RecoveryConfig()
    bids, dataset, features = Path(bids), Path(dataset), Path(features)
    truth_dir = bids / GROUND_TRUTH_DIR
    truth = _read_truth(truth_dir, dataset)
    table = _run_table(dataset, features, truth_dir)
    shifts = [sign * s for s in config.shifts_trs for sign in (-1.0, 1.0)]
    source = _Features(truth_dir)
    layers = sorted({_layer_name(layer) for layer in truth.planted_layers})
    sub_tr = any(not float(s).is_integer() for s in shifts)
    for entry in dict.fromkeys(table["entry"]):
        source.check(Path(entry), layers, sub_tr and entry == table["entry"].iloc[0])
    runs = _read_runs(dataset, table, truth_dir, truth)
    subjects = sorted({run.subject for run in runs})
    rng = np.random.default_rng(config.seed)
    noise_columns = truth.noise_columns
    if config.max_noise_voxels is not None and noise_columns.size > config.max_noise_voxels:
        noise_columns = np.sort(rng.choice(noise_columns, config.max_noise_voxels, replace=False))
        truth = replace(truth, noise_columns=noise_columns)
    z_ci = float(norm.ppf(1 - config.level / 2))
    z_fp = float(norm.ppf(1 - config.level))
    with tempfile.TemporaryDirectory(prefix="wav2brain-recovery-") as scratch, _one_thread():
        source.prepare(
            dataset, runs, shifts, Path(work_dir) if work_dir is not None else Path(scratch)
        )
        per_subject = [
            _subject_recovery(
                [run for run in runs if run.subject == subject],
                truth,
                source,
                shifts,
                config,
                rng,
                (z_ci, z_fp),
            )
            for subject in subjects
        ]
    subject_results = tuple(result for result, _ in per_subject)
    null_counts = [counts for _, counts in per_subject]
    decision = config.decision_level
    planted = _rate_test(
        "planted voxels whose ceiling lies outside the confidence interval of their r",
        sum(s.planted_outside_ci for s in subject_results),
        sum(s.n_planted for s in subject_results),
        config.level,
        decision,
    )
    null_count = sum(count for count, _ in null_counts)
    null_total = sum(total for _, total in null_counts)
    null_rate = null_count / null_total
    null = NullCalibration(
        count=null_count,
        total=null_total,
        nominal=config.level,
        rate=null_rate,
        tolerance=config.null_tolerance,
        passed=abs(null_rate - config.level) <= config.null_tolerance * config.level,
    )
    noise = _rate_test(
        "noise voxels above the false-positive threshold (reference: the permutation null)",
        sum(s.noise_false_positives for s in subject_results),
        sum(s.n_noise for s in subject_results),
        null_rate,
        decision,
    )
    df = len(subjects) - 1
    critical = float(student_t.ppf(1 - decision, df))
    controls = []
    for magnitude in config.shifts_trs:
        t_values, advantage = {}, {}
        for shift in (-magnitude, magnitude):
            name = _shift_name(shift)
            d = np.array([s.shift_advantage_z[name] for s in subject_results])
            spread = d.std(ddof=1)
            t_values[name] = (
                float(d.mean() / (spread / math.sqrt(len(d))))
                if spread > 0
                else math.copysign(math.inf, d.mean())
            )
            advantage[name] = float(np.mean([s.shift_advantage_r[name] for s in subject_results]))
        controls.append(
            ShiftControl(
                shift_trs=magnitude,
                t=t_values,
                mean_advantage_r=advantage,
                critical_t=critical,
                df=df,
                passed=all(value > critical for value in t_values.values()),
            )
        )
    failures = [
        f"{test.name}: {test.count} of {test.total} ({test.rate:.2%}) is significantly above "
        f"{test.nominal:.2%} (p = {test.p_value:.2g} < {decision})"
        for test in (planted, noise)
        if not test.passed
    ]
    if not null.passed:
        failures.append(
            f"the false-positive threshold is not calibrated: {null.rate:.2%} of the permutation "
            f"null exceeds it, nominal {null.nominal:.0%} +- {null.tolerance:.0%} of it"
        )
    failures += [
        f"onsets shifted by ±{control.shift_trs:g} TR are not detected as worse: t "
        + ", ".join(f"{name} TR {value:.2f}" for name, value in control.t.items())
        + f" (critical {control.critical_t:.2f}, df {control.df})"
        for control in controls
        if not control.passed
    ]
    return RecoveryResult(
        config=config,
        subjects=subject_results,
        planted=planted,
        noise=noise,
        null=null,
        controls=tuple(controls),
        failures=tuple(failures),
        passed=not failures,
    )


def _subject_recovery(
    runs: Sequence[_Run],
    truth: _Truth,
    source: _Features,
    shifts: Sequence[float],
    config: RecoveryConfig,
    rng: np.random.Generator,
    z: tuple[float, float],
) -> tuple[SubjectRecovery, tuple[int, int]]:
    """Fits, scores and tests of one subject; also the permutation null's (count, total)."""
    z_ci, z_fp = z
    lengths = [len(run.bold) for run in runs]
    groups = np.concatenate(
        [np.full(n, run.stimulus_id) for n, run in zip(lengths, runs, strict=True)]
    )
    max_lag = min(math.ceil(config.max_lag_s / runs[0].timing.tr_s), min(lengths) // 4)
    layers = sorted(set(truth.planted_layers.tolist()))
    fit = {"alphas": config.alphas, "inner_cv": config.inner_cv}
    planted: dict[str, list[np.ndarray]] = {
        "r": [],
        "ceiling": [],
        "signal_r": [],
        "n_eff": [],
        "outside": [],
    }
    noise: dict[str, list[np.ndarray]] = {"n_eff": [], "threshold": [], "positive": []}
    shifted: dict[str, list[np.ndarray]] = {_shift_name(s): [] for s in shifts}
    null_count = null_total = 0
    for index, layer in enumerate(layers):
        name = _layer_name(layer)
        which = truth.planted_layers == layer
        n_planted = int(which.sum())
        targets = np.concatenate(
            [truth.planted_columns[which], truth.noise_columns[index :: len(layers)]]
        )
        y_runs = [run.bold[:, targets] for run in runs]
        Y = np.concatenate(y_runs)
        X = np.concatenate([source.of(run, name, 0.0) for run in runs])
        p_runs = _split(held_out_predictions(X, Y, groups, **fit), lengths)
        r = _pooled_r(p_runs, y_runs)
        n_eff = effective_sample_size(p_runs, y_runs, max_lag)
        se = 1.0 / np.sqrt(n_eff - 3.0)
        signal = [normalize_like_bold(run.regressors[:, which], run.basis) for run in runs]
        planted["signal_r"].append(_pooled_r(signal, [y[:, :n_planted] for y in y_runs]))
        exact = np.concatenate([normalize_like_bold(run.design[layer], run.basis) for run in runs])
        oracle = _split(held_out_predictions(exact, Y[:, :n_planted], groups, **fit), lengths)
        ceiling = _pooled_r(oracle, [y[:, :n_planted] for y in y_runs])
        z_r = np.arctanh(np.clip(r, -_R_MAX, _R_MAX))
        z_gap = z_r[:n_planted] - np.arctanh(np.clip(ceiling, -_R_MAX, _R_MAX))
        planted["r"].append(r[:n_planted])
        planted["ceiling"].append(ceiling)
        planted["n_eff"].append(n_eff[:n_planted])
        planted["outside"].append(np.abs(z_gap) > z_ci * se[:n_planted])
        threshold = z_fp * se[n_planted:]
        noise["n_eff"].append(n_eff[n_planted:])
        noise["threshold"].append(np.tanh(threshold))
        noise["positive"].append(z_r[n_planted:] > threshold)
        noise_p = [p[:, n_planted:] for p in p_runs]
        noise_y = [y[:, n_planted:] for y in y_runs]
        for _ in range(config.n_permutations):
            rolled = [np.roll(p, int(rng.integers(1, len(p))), axis=0) for p in noise_p]
            z_null = np.arctanh(np.clip(_pooled_r(rolled, noise_y), -_R_MAX, _R_MAX))
            null_count += int((z_null > threshold).sum())
            null_total += z_null.size
        Y_planted = Y[:, :n_planted]
        for shift in shifts:
            X_shift = np.concatenate([source.of(run, name, shift) for run in runs])
            p_shift = _split(held_out_predictions(X_shift, Y_planted, groups, **fit), lengths)
            r_shift = _pooled_r(p_shift, [y[:, :n_planted] for y in y_runs])
            shifted[_shift_name(shift)].append(np.stack([r[:n_planted], r_shift]))
    r_planted = np.concatenate(planted["r"])
    ceiling = np.concatenate(planted["ceiling"])
    gap = r_planted - ceiling
    advantage_z, advantage_r = {}, {}
    for key, parts in shifted.items():
        true_r, shift_r = np.concatenate(parts, axis=1)
        clip = (np.clip(true_r, -_R_MAX, _R_MAX), np.clip(shift_r, -_R_MAX, _R_MAX))
        advantage_z[key] = float(np.mean(np.arctanh(clip[0]) - np.arctanh(clip[1])))
        advantage_r[key] = float(np.mean(true_r - shift_r))
    positives = np.concatenate(noise["positive"])
    result = SubjectRecovery(
        subject=runs[0].subject,
        n_trs=int(sum(lengths)),
        n_planted=int(r_planted.size),
        n_noise=int(positives.size),
        planted_mean_r=float(r_planted.mean()),
        planted_mean_ceiling=float(ceiling.mean()),
        planted_mean_signal_r=float(np.concatenate(planted["signal_r"]).mean()),
        planted_mean_gap=float(gap.mean()),
        planted_max_abs_gap=float(np.abs(gap).max()),
        planted_median_n_eff=float(np.median(np.concatenate(planted["n_eff"]))),
        planted_outside_ci=int(np.concatenate(planted["outside"]).sum()),
        noise_median_n_eff=float(np.median(np.concatenate(noise["n_eff"]))),
        noise_median_threshold_r=float(np.median(np.concatenate(noise["threshold"]))),
        noise_false_positives=int(positives.sum()),
        null_false_positive_rate=null_count / null_total if null_total else 0.0,
        shift_advantage_z=advantage_z,
        shift_advantage_r=advantage_r,
    )
    return result, (null_count, null_total)
