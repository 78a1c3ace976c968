"""Dataset-level encoding: ridge per subject and layer over a prepared dataset, one subject at a time.

:func:`encode_dataset` reads a prepared folder (``wav2brain prepare``) and the feature cache of
``wav2brain extract`` through :mod:`wav2brain.encoding.runs`, fits one nested-CV
:class:`~wav2brain.encoding.RidgeCV` per subject and layer (:func:`~wav2brain.encoding.layers.encode`)
and writes to ``out``:

- ``scores.parquet``: one row per subject, layer and voxel (:data:`SCORE_COLUMNS`);
- ``profile.parquet``: subject, voxel, best_layer, preferred_layer (from held-out r);
- ``skipped.parquet``: subject, reason, n_runs, n_stories of every subject not fitted;
- ``maps/sub-<s>_<layer>_r.nii.gz`` (``.gii`` on surfaces), ``maps/sub-<s>_best_r`` and
  ``maps/sub-<s>_preferred_layer`` with PNGs, from each subject's own mask (the ``mask`` column
  of its runs); a subject whose runs name no mask gets tables only, with one log line, decided
  before anything is loaded.

Memory: one subject's BOLD (its runs stacked in one array) and one layer's features at a time;
cache entries are memory-mapped and sliced per run, never copied once per run. Held-out scores
are pooled over the outer folds (see :mod:`wav2brain.encoding.layers`).

Folds. Outer folds hold out whole stories. A subject who heard one story (or had one run)
cannot be scored on stories it was not trained on: it is skipped, with its reason in the log and
in ``skipped.parquet``; with ``allow_run_folds`` a one-story subject with several runs is fitted
with folds over its runs instead and marked ``cv_kind="runs"``: such scores measure how well a
model predicts another presentation of the same story (test-retest), not a new story.

Features are cleaned as the BOLD was (``normalize_features``, see
:func:`~wav2brain.encoding.runs.clean_features`): per run, the same drift basis and z-scoring, so
that run-mean shifts and slow feature trends do not become nuisance regressors against detrended
targets. Statistics learned across runs (RidgeCV's feature scaling, the alphas) come from training
rows only.

Noise ceiling (Pearson r units), one estimator per subject, named in ``ceiling_method``:

- ``"repeat"`` when the subject heard a story more than once with identical timing (CCmax for one
  presentation, :func:`~wav2brain.encoding.noise_ceiling.repeat_ceiling`, TR-weighted over its
  repeated stories); ``ceiling_n`` is the number of presentations (the fewest over its stories).
- else ``"loso"``: the correlation of the subject's first presentation of each story with the
  mean of every other subject of the dataset (selected or not) whose run of it has the same whole
  timing (stimulus, onset, TR, TR count, space, mask, voxel count, slice-time reference when the
  table has it), TR-weighted over stories; runs that differ in any of these are never averaged
  together. ``ceiling_n`` is the number of other subjects per voxel (the fewest over stories;
  voxels dropped in a run are left out of that run's count).
- else ``"none"`` (NaN).

``ceiling_z`` is the Fisher-z statistic of the correlation the ceiling rests on (split-half of the
repeats, or the LOSO correlation) with the autocorrelation-corrected number of TRs, combined over
stories (:func:`~wav2brain.encoding.noise_ceiling.combine_tests`); ``ceiling_significant`` says
whether it exceeds the one-sided critical value of level ``ceiling_alpha`` (per voxel).
``r_normalized`` = r / ceiling only there, NaN elsewhere: a ratio over a ceiling that is not
distinguishable from zero measures the ceiling's noise (CCmax is biased upwards at low signal).

Resuming. Each subject's scores are written to ``parts/`` under a digest of that subject's inputs
only (its rows of the responses table and their shard files, its runs' feature-cache rows and
entry records, the settings), computed from metadata without loading any BOLD; ceilings are
written per repeated subject or per LOSO timing group under a digest of the runs they read. A
finished subject costs nothing on a rerun, and adding subjects reuses every finished subject
(LOSO ceilings of the stories the new subjects heard are recomputed: they now rest on more
subjects).

Processes. Under a launcher that starts several (``torchrun --nproc_per_node N -m wav2brain encode
...``; :mod:`wav2brain.distributed`) each process fits its share of the subjects (parts and
maps) and of the ceiling parts, and the main process, once all are done, checks that every
subject was, writes ``skipped.parquet``, ``scores.parquet`` and ``profile.parquet``: the files
one process writes.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wav2brain import distributed
from wav2brain.encoding.layers import EncodingConfig
from wav2brain.encoding.noise_ceiling import CEILING_ALPHA
from wav2brain.encoding.runs import FeatureIndex, RunRecord, SubjectData, read_responses

logger = logging.getLogger(__name__)

LAYER_NAME = re.compile(r"layer_(\d+)")

SCORE_COLUMNS = (
    "subject",
    "layer",
    "voxel",
    "r",
    "r2",
    "alpha",
    "ceiling",
    "ceiling_method",
    "r_normalized",
    "cv_kind",
    "n_trs",
    "ceiling_n",
    "ceiling_z",
    "ceiling_significant",
)
"""Columns of ``scores.parquet`` (``n_trs``: held-out TRs pooled into r, all of the subject's)."""

SKIPPED_COLUMNS = ("subject", "reason", "n_runs", "n_stories")

VOXEL_BLOCK = 4096
"""Voxels per block in the ceiling computations (bounds their float64 temporaries)."""


@dataclass
class EncodeConfig:
    """Every setting of :func:`encode_dataset`.

    Parameters
    ----------
    encoding : EncodingConfig
        Ridge settings (alphas, inner folds, criterion, standardisation, memory bound).
    layers : tuple of str, optional
        Cached layer names or model layer numbers ("7" is ``layer_07``); None: all cached.
    normalize_features : bool
        Clean each run's features as its BOLD was (drift basis and z-scoring of the dataset's
        cleaning settings, :func:`~wav2brain.encoding.runs.clean_features`).
    allow_run_folds : bool
        Fit one-story subjects with folds over their runs (``cv_kind="runs"``) instead of
        skipping them.
    ceiling_alpha : float
        One-sided level of the per-voxel test that a ceiling is above zero (0.05).
    ceiling_max_lag : int, optional
        Lags (TRs) of the autocorrelation correction of that test (default: a quarter of the
        run, :func:`~wav2brain.encoding.noise_ceiling.default_max_lag`).
    maps : bool
        Write brain maps (NIfTI/GIfTI and PNG) besides the tables.
    """

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    layers: tuple[str, ...] | None = None
    normalize_features: bool = True
    allow_run_folds: bool = False
    ceiling_alpha: float = CEILING_ALPHA
    ceiling_max_lag: int | None = None
    maps: bool = True

    def __post_init__(self) -> None:
        alphas = tuple(float(a) for a in self.encoding.alphas)
        if not alphas or min(alphas) <= 0 or not np.isfinite(alphas).all():
            raise ValueError(f"alphas must be positive and finite, got {list(alphas)}")
        if self.encoding.inner_cv < 2:
            raise ValueError(f"inner_cv must be at least 2 folds, got {self.encoding.inner_cv}")
        if not 0 < self.ceiling_alpha < 0.5:
            raise ValueError(f"ceiling_alpha must be in (0, 0.5), got {self.ceiling_alpha}")
        if self.ceiling_max_lag is not None and self.ceiling_max_lag < 1:
            raise ValueError(f"ceiling_max_lag must be >= 1 TR, got {self.ceiling_max_lag}")
        if self.layers is not None:
            self.layers = tuple(str(layer) for layer in self.layers)


@dataclass
class SubjectPlan:
    """What is done with one subject: its runs, its folds (or why it is skipped), its maps."""

    subject: str
    records: list[RunRecord]
    cv_kind: str | None
    reason: str | None = None
    map_reason: str | None = None
    mask_path: Path | None = None
    digest: str = ""

    @property
    def stories(self) -> list[str]:
        return list(dict.fromkeys(r.stimulus_id for r in self.records))


def layer_number(name: str) -> int:
    """The model layer of a cached layer name (``layer_07`` is 7)."""
    match = LAYER_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"cached layer {name!r} has no number: expected a name like 'layer_07'")
    return int(match.group(1))


def select_layers(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Cached layer names matching ``wanted`` (names or model layer numbers; default all)."""
    numbers = {name: layer_number(name) for name in available}
    if not wanted:
        return list(available)
    chosen = []
    for item in wanted:
        matches = [
            name
            for name, number in numbers.items()
            if name == item or (item.isdigit() and number == int(item))
        ]
        if not matches:
            raise ValueError(f"--layers {item!r} not in the feature cache: have {list(available)}")
        chosen.extend(matches)
    return chosen


def plan_subject(
    subject: str, records: Sequence[RunRecord], dataset: Path, config: EncodeConfig
) -> SubjectPlan:
    """The folds, or the reason to skip, and the map target of one subject (metadata only)."""
    from wav2brain.reports.brain_maps import map_target

    records = list(records)
    plan = SubjectPlan(subject, records, None)
    stories = plan.stories
    masks = sorted({str(r.mask) for r in records})
    widths = sorted({r.n_voxels for r in records})
    if len(masks) > 1 or len(widths) > 1:
        plan.reason = (
            f"runs on different voxel sets (masks {masks}, voxel counts {widths}): "
            "their BOLD columns are not the same voxels"
        )
    elif len(records) < 2:
        plan.reason = "one run: no held-out run to score on"
    elif len(stories) < 2 and not config.allow_run_folds:
        plan.reason = (
            f"one story ({stories[0]}, {len(records)} runs): folds over its runs would measure "
            "test-retest reliability, not generalisation to new stories (allow_run_folds / "
            "--allow-run-folds fits them, marked cv_kind='runs')"
        )
    else:
        plan.cv_kind = "stories" if len(stories) >= 2 else "runs"
    if plan.reason is None:
        first = records[0]
        plan.mask_path = None if first.mask is None else dataset / first.mask
        plan.map_reason = (
            "maps not asked for"
            if not config.maps
            else map_target(first.space, plan.mask_path, first.n_voxels)
        )
    return plan


def cv_groups(plan: SubjectPlan) -> np.ndarray:
    """CV group of each stacked TR: its story, or its run (``cv_kind="runs"``)."""
    labels = [r.stimulus_id if plan.cv_kind == "stories" else r.key for r in plan.records]
    return np.concatenate(
        [np.full(r.n_trs, label) for r, label in zip(plan.records, labels, strict=True)]
    )


def inputs_digest(record: dict) -> str:
    """Short (16 hex) SHA-256 of a JSON record of inputs and the wav2brain version: the name of
    a resumable part (one release's parts are never reused by another)."""
    from wav2brain.features.cache import package_version, sha256_json

    return sha256_json({**record, "wav2brain": package_version()})[:16]


def subject_digest(
    plan: SubjectPlan, layers: Sequence[str], config: EncodeConfig, cleaning, index: FeatureIndex
) -> str:
    """Digest of everything one subject's scores depend on, read without loading its BOLD."""
    settings = asdict(config)
    for name in ("maps", "ceiling_alpha", "ceiling_max_lag", "layers"):
        settings.pop(name)
    return inputs_digest(
        {
            "settings": settings,
            "layers": list(layers),
            "cleaning": None if cleaning is None else asdict(cleaning),
            "cv_kind": plan.cv_kind,
            "runs": [r.identity() for r in plan.records],
            "features": [index.identity(r) for r in plan.records],
        }
    )


def _blocks(n: int) -> list[slice]:
    return [slice(i, min(i + VOXEL_BLOCK, n)) for i in range(0, n, VOXEL_BLOCK)]


def repeat_groups(records: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """A subject's runs sharing one whole timing, for timings presented at least twice."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.timing, []).append(record)
    return [group for group in groups.values() if len(group) >= 2]


def repeat_ceiling_table(groups: Sequence[Sequence[RunRecord]], max_lag: int | None):
    """Repeat ceiling of one subject: voxel, ceiling, ceiling_n, ceiling_z (pandas).

    CCmax (single presentation) per repeated story, TR-weighted over stories; its test rests on
    the split-half correlation of each story's repeats, combined over stories. Voxels dropped in
    any repeat of a story are NaN for that story.
    """
    from wav2brain.encoding.noise_ceiling import repeat_ceiling, split_half
    from wav2brain.encoding.runs import load_bold

    n_voxels = groups[0][0].n_voxels
    values, weights, rs, n_effs, counts = [], [], [], [], []
    for group in groups:
        stack = np.empty((len(group), group[0].n_trs, n_voxels), dtype=np.float32)
        for record, part in zip(group, stack, strict=True):
            load_bold(record, part)
        ceiling, r, n_eff = (np.empty(n_voxels) for _ in range(3))
        for block in _blocks(n_voxels):
            part = stack[:, :, block]
            ceiling[block] = repeat_ceiling(part, target="single")
            r[block], n_eff[block] = split_half(part, max_lag)
        dropped = sorted({i for record in group for i in record.dropped})
        ceiling[dropped] = r[dropped] = np.nan
        values.append(ceiling)
        weights.append(np.where(np.isfinite(ceiling), group[0].n_trs, 0.0))
        rs.append(r)
        n_effs.append(n_eff)
        counts.append(np.where(np.isfinite(ceiling), len(group), 0))
        del stack
    return _ceiling_frame(values, weights, rs, n_effs, counts, "repeat")


def _ceiling_frame(values, weights, rs, n_effs, counts, method: str):
    """One subject's ceiling table from per-story values (TR-weighted mean, combined z)."""
    import pandas as pd

    from wav2brain.encoding.noise_ceiling import combine_tests

    weights = np.stack(weights)
    total = weights.sum(0)
    stacked = np.nan_to_num(np.stack(values), nan=0.0)
    ceiling = np.divide(
        (stacked * weights).sum(0), total, out=np.full(total.shape, np.nan), where=total > 0
    )
    count = np.stack(counts).astype(np.float64)
    count[weights == 0] = np.inf
    minimum = count.min(0)
    return pd.DataFrame(
        {
            "voxel": np.arange(len(ceiling)),
            "ceiling": ceiling.astype(np.float32),
            "ceiling_method": method,
            "ceiling_n": np.where(np.isfinite(minimum), minimum, 0).astype(np.int32),
            "ceiling_z": combine_tests(rs, n_effs).astype(np.float32),
        }
    )


def loso_groups(records: Sequence[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """Runs by whole timing, one per subject (its first run with that timing)."""
    groups: dict[tuple, dict[str, RunRecord]] = {}
    for record in records:
        groups.setdefault(record.timing, {}).setdefault(record.subject, record)
    return {timing: list(members.values()) for timing, members in groups.items()}


LOSO_SCHEMA = (
    ("subject", "string"),
    ("voxel", "int32"),
    ("r", "float32"),
    ("n_eff", "float32"),
    ("n_others", "int32"),
)
"""Columns of a LOSO group part: one row group per member."""


def write_loso_group(members: Sequence[RunRecord], max_lag: int | None, path: Path) -> Path:
    """LOSO correlation of every member with the mean of the others, written to ``path``.

    Columns :data:`LOSO_SCHEMA`, one Parquet row group per member (read back one member at a
    time by :func:`read_loso_member`). Two passes over the members' BOLD: their sum (float32
    ``[TRs, voxels]``, voxels dropped in a run left out with their count), then each member
    against the mean of the others. One run (read into one reused buffer) and the sum are held
    at a time, whatever the number of members: two runs' worth. The sum is float32, half of a
    float64 one: the BOLD is z-scored per voxel, so after N members each sum is about sqrt(N)
    in size and its rounding error at most about N * 6e-8 of it (2e-5 at 300 subjects), far
    below the sampling error of a correlation over a few hundred TRs. The file is written under
    a temporary name and renamed.
    """
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from wav2brain.atomic import partial_path
    from wav2brain.encoding.noise_ceiling import paired_correlation
    from wav2brain.encoding.runs import load_bold

    first = members[0]
    total = np.zeros((first.n_trs, first.n_voxels), dtype=np.float32)
    bold = np.empty_like(total)
    count = np.zeros(first.n_voxels)
    valid = {}
    for member in members:
        keep = np.ones(first.n_voxels, dtype=bool)
        keep[list(member.dropped)] = False
        valid[member.subject] = keep
        np.add(total, load_bold(member, bold), out=total, where=keep)
        count += keep
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in LOSO_SCHEMA])
    temporary = partial_path(path)
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            for member in members:
                load_bold(member, bold)
                keep = valid[member.subject]
                others_n = count - keep
                usable = keep & (others_n >= 1)
                r = np.full(first.n_voxels, np.nan)
                n_eff = np.full(first.n_voxels, np.nan)
                for block in _blocks(first.n_voxels):
                    own = bold[:, block]
                    mean = (total[:, block] - own * keep[block]) / np.maximum(others_n[block], 1)
                    r[block], n_eff[block] = paired_correlation(own, mean, max_lag)
                r[~usable] = n_eff[~usable] = np.nan
                columns = {
                    "subject": [member.subject] * first.n_voxels,
                    "voxel": np.arange(first.n_voxels, dtype=np.int32),
                    "r": r.astype(np.float32),
                    "n_eff": n_eff.astype(np.float32),
                    "n_others": np.where(usable, others_n, 0).astype(np.int32),
                }
                writer.write_table(pa.table(columns, schema=schema))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_loso_member(path: Path, subject: str):
    """One member's rows of a LOSO group part (pandas, sorted by voxel); only its row group.

    The row group is found by its ``subject`` statistics (one subject per row group, as
    :func:`write_loso_group` writes them), so reading one member costs one member's rows
    whatever the number of subjects; a part without statistics is filtered row by row.
    """
    import pyarrow.parquet as pq

    part = pq.ParquetFile(path)
    column = part.schema_arrow.get_field_index("subject")
    for index in range(part.num_row_groups):
        stats = part.metadata.row_group(index).column(column).statistics
        if stats is None or not stats.has_min_max:
            table = pq.read_table(path, filters=[("subject", "==", subject)])
            break
        if stats.min == subject == stats.max:
            table = part.read_row_group(index)
            break
    else:
        raise ValueError(f"{path}: no LOSO rows of subject {subject!r}")
    return table.to_pandas().sort_values("voxel", ignore_index=True)


class _Ceilings:
    """Ceiling tables of the planned subjects, computed once per digest and kept in ``parts``."""

    def __init__(self, records: Sequence[RunRecord], parts: Path, max_lag: int | None) -> None:
        self.parts = parts
        self.max_lag = max_lag
        self.groups = loso_groups(records)
        self.loso_paths: dict[tuple, Path] = {}

    def path(self, name: str, record: dict) -> Path:
        """The part of a ceiling computation named by a digest of its inputs."""
        digest = inputs_digest({**record, "max_lag": self.max_lag})
        return self.parts / f"ceiling-{name}_{digest}.parquet"

    def repeat_part(self, plan: SubjectPlan) -> tuple[Path, list[list[RunRecord]]] | None:
        """The part and the repeated groups of a subject with repeats (None without)."""
        repeats = repeat_groups(plan.records)
        if not repeats:
            return None
        path = self.path(
            f"sub-{plan.subject}", {"runs": [[r.identity() for r in group] for group in repeats]}
        )
        return path, repeats

    def loso_part(self, record: RunRecord) -> Path | None:
        """The LOSO part of the timing group of ``record`` (None with fewer than 2 members)."""
        members = self.groups[record.timing]
        if len(members) < 2:
            return None
        if record.timing not in self.loso_paths:
            identity = sorted((m.identity() for m in members), key=lambda m: m["key"])
            self.loso_paths[record.timing] = self.path("loso", {"members": identity})
        return self.loso_paths[record.timing]

    @staticmethod
    def _firsts(plan: SubjectPlan) -> list[RunRecord]:
        firsts: dict[str, RunRecord] = {}
        for record in plan.records:
            firsts.setdefault(record.stimulus_id, record)
        return list(firsts.values())

    def jobs(self, plans: Sequence[SubjectPlan]) -> dict[str, Callable[[], None]]:
        """Every ceiling part the plans need, by file name, each with its computation.

        Parts are shared (a LOSO group serves every member), so the jobs, not the subjects,
        are what processes split (:mod:`wav2brain.distributed`); a part on disk is a done job.
        """
        jobs: dict[str, Callable[[], None]] = {}
        for plan in plans:
            repeat = self.repeat_part(plan)
            if repeat is not None:
                path, groups = repeat
                jobs[path.name] = functools.partial(self._write_repeat, path, groups)
                continue
            for record in self._firsts(plan):
                path = self.loso_part(record)
                if path is not None:
                    members = self.groups[record.timing]
                    jobs[path.name] = functools.partial(self._write_loso, path, members)
        return jobs

    def _write_repeat(self, path: Path, groups) -> None:
        if not path.is_file():
            write_frame(repeat_ceiling_table(groups, self.max_lag), path)

    def _write_loso(self, path: Path, members) -> None:
        if not path.is_file():
            write_loso_group(members, self.max_lag, path)

    def subject_table(self, plan: SubjectPlan):
        """The ceiling table (voxel, ceiling, ceiling_method, ceiling_n, ceiling_z) of a subject.

        Computes the parts it needs that are missing (none after :meth:`jobs` ran).
        """
        import pandas as pd

        repeat = self.repeat_part(plan)
        if repeat is not None:
            self._write_repeat(*repeat)
            return pd.read_parquet(repeat[0])
        values, weights, rs, n_effs, counts = [], [], [], [], []
        for record in self._firsts(plan):
            path = self.loso_part(record)
            if path is None:
                continue
            self._write_loso(path, self.groups[record.timing])
            own = read_loso_member(path, plan.subject)
            r = own["r"].to_numpy()
            values.append(r)
            weights.append(np.where(np.isfinite(r), record.n_trs, 0.0))
            rs.append(r)
            n_effs.append(own["n_eff"].to_numpy())
            counts.append(own["n_others"].to_numpy())
        if not values:
            n_voxels = plan.records[0].n_voxels
            return pd.DataFrame(
                {
                    "voxel": np.arange(n_voxels),
                    "ceiling": np.full(n_voxels, np.nan, np.float32),
                    "ceiling_method": "none",
                    "ceiling_n": np.zeros(n_voxels, np.int32),
                    "ceiling_z": np.full(n_voxels, np.nan, np.float32),
                }
            )
        return _ceiling_frame(values, weights, rs, n_effs, counts, "loso")


def write_frame(frame, path: Path) -> Path:
    """A pandas frame to Parquet atomically (no index)."""
    import pyarrow as pa

    from wav2brain.data.hf_layout import write_shard

    return write_shard(pa.Table.from_pandas(frame, preserve_index=False), path)


def encode_subject(
    data: SubjectData,
    plan: SubjectPlan,
    layers: Sequence[str],
    index: FeatureIndex,
    config: EncodeConfig,
    cleaning,
    progress: Callable[[str], None] | None = None,
):
    """Held-out scores of one subject (pandas: subject, layer, voxel, r, r2, alpha, cv_kind, n_trs).

    One layer's features are built at a time (``[TRs, units]``, cleaned per run when
    ``cleaning`` is given) and dropped after its fit.
    """
    import pandas as pd

    from wav2brain.encoding.layers import encode

    groups = cv_groups(plan)
    frames = []
    n_voxels = data.bold.shape[1]
    for layer in layers:
        features = data.features(index, layer, cleaning)
        scores = encode(features, data.bold, groups, config.encoding)
        del features
        frames.append(
            pd.DataFrame(
                {
                    "subject": plan.subject,
                    "layer": layer,
                    "voxel": np.arange(n_voxels),
                    "r": scores.r,
                    "r2": scores.r2,
                    "alpha": scores.alpha,
                    "cv_kind": plan.cv_kind,
                    "n_trs": np.int32(len(groups)),
                }
            )
        )
        if progress is not None:
            progress(layer)
    data.release()
    return pd.concat(frames, ignore_index=True)


def _layer_scores(table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Layer names, their model numbers and held-out r [n_layers, n_voxels] of one subject."""
    layers = list(dict.fromkeys(table["layer"]))
    scores = np.stack([table.loc[table["layer"] == name, "r"].to_numpy() for name in layers])
    return layers, np.array([layer_number(name) for name in layers]), scores


def profile_table(table):
    """Per-voxel layer profile (from r, model layer numbers) of every subject in a scores table."""
    import pandas as pd

    from wav2brain.encoding.layers import layer_profile

    frames = []
    for subject, part in table.groupby("subject", sort=False):
        layers, numbers, scores = _layer_scores(part)
        best, preferred = layer_profile(scores, numbers)
        names = dict(zip(numbers.tolist(), layers, strict=True))
        frames.append(
            pd.DataFrame(
                {
                    "subject": subject,
                    "voxel": np.arange(scores.shape[1]),
                    "best_layer": [names[int(i)] if np.isfinite(i) else None for i in best],
                    "preferred_layer": preferred.astype(np.float32),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_subject_maps(table, out: Path, space: str, mask_path: Path | None) -> list[Path]:
    """NIfTI/GIfTI of r per layer, plus best-r and preferred-layer maps with PNGs (one subject)."""
    from wav2brain.encoding.layers import layer_profile
    from wav2brain.reports.brain_maps import save_gifti, save_nifti, write_map

    subject = table["subject"].iloc[0]
    layers, numbers, scores = _layer_scores(table)
    maps = out / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    written = []
    for name, values in zip(layers, scores, strict=True):
        stem = maps / f"sub-{subject}_{name}_r"
        written.append(
            save_nifti(values, mask_path, stem.with_name(stem.name + ".nii.gz"))
            if mask_path is not None
            else save_gifti(values, stem.with_name(stem.name + ".gii"))
        )
    _, preferred = layer_profile(scores, numbers)
    written += write_map(
        np.nanmax(scores, axis=0),
        maps / f"sub-{subject}_best_r",
        space,
        mask_path,
        title=f"sub-{subject} best held-out r",
    )
    written += write_map(
        preferred,
        maps / f"sub-{subject}_preferred_layer",
        space,
        mask_path,
        title=f"sub-{subject} preferred layer ({numbers.min()}-{numbers.max()})",
    )
    return written


def subject_layers(plan: SubjectPlan, index: FeatureIndex, wanted) -> list[str]:
    """Layers to fit for one subject, present in every entry serving its runs."""
    per_run = [index.layers(record) for record in plan.records]
    common = [name for name in per_run[0] if all(name in names for names in per_run)]
    return select_layers(common, wanted)


@dataclass
class EncodeResult:
    """What :func:`encode_dataset` wrote and did (paths, and subjects fitted, reused, skipped)."""

    scores: Path
    profile: Path
    skipped: Path
    fitted: list[str]
    reused: list[str]
    skipped_subjects: dict[str, str]


def encode_dataset(
    dataset: str | Path,
    features: str | Path,
    out: str | Path,
    config: EncodeConfig | None = None,
    subjects: Sequence[str] | None = None,
    progress: bool = True,
) -> EncodeResult:
    """Encode every (selected) subject of a prepared dataset; write tables and maps to ``out``.

    Parameters
    ----------
    dataset : path
        Prepared dataset folder (``wav2brain prepare``).
    features : path
        Feature cache of ``wav2brain extract`` for that dataset.
    out : path
        Output folder (created; its ``parts/`` make the work resumable).
    config : EncodeConfig
    subjects : sequence of str, optional
        Subjects to fit (default all). Ceilings still use every subject of the dataset.
    progress : bool
        Show tqdm bars.

    Every input is checked (folders, tables, subjects, layers, masks) before any BOLD is read.
    See the module docstring for the outputs, folds, ceilings and resuming.
    """
    import pandas as pd

    from wav2brain.encoding.runs import read_cleaning, subject_runs

    config = config or EncodeConfig()
    dataset, features, out = Path(dataset), Path(features), Path(out)
    index = FeatureIndex(features)
    records = read_responses(dataset)
    selected = subject_runs(records, subjects)
    index.check([r for own in selected.values() for r in own])
    spaces = sorted({r.space for own in selected.values() for r in own})
    if len(spaces) != 1:
        raise ValueError(f"responses mix spaces {spaces}: encode one space at a time (--subjects)")
    space = spaces[0]
    plans = {s: plan_subject(s, own, dataset, config) for s, own in selected.items()}
    layers = {
        s: subject_layers(plan, index, config.layers)
        for s, plan in plans.items()
        if plan.reason is None
    }
    cleaning = read_cleaning(dataset) if config.normalize_features else None
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    skipped = {s: p.reason for s, p in plans.items() if p.reason is not None}
    skipped_path = out / "skipped.parquet"
    main = distributed.is_main()
    if main:
        for subject, reason in skipped.items():
            logger.warning("sub-%s skipped: %s", subject, reason)
        _write_skipped(plans, skipped, skipped_path)
        no_maps: dict[str, list[str]] = {}
        for plan in plans.values():
            if plan.reason is None and plan.map_reason is not None:
                no_maps.setdefault(plan.map_reason, []).append(plan.subject)
        for reason, names in no_maps.items():
            logger.info("no maps for %d subject(s) (%s): %s", len(names), ", ".join(names), reason)
    fit = [plan for plan in plans.values() if plan.reason is None]
    for plan in fit:
        plan.digest = subject_digest(plan, layers[plan.subject], config, cleaning, index)
    done = {}
    for plan in distributed.shard(fit):
        done[plan.subject] = _fit_subject(
            plan, layers[plan.subject], index, config, cleaning, out, space, progress
        )
    ceilings = _Ceilings(records, parts, config.ceiling_max_lag)
    jobs = ceilings.jobs(fit)
    computed = distributed.shard(list(jobs))
    for name in computed:
        jobs[name]()
    outcome = distributed.merge(done, [plan.subject for plan in fit], "subject")
    distributed.merge(dict.fromkeys(computed, True), list(jobs), "ceiling part")
    fitted = [s for s, how in outcome.items() if how == "fitted"]
    reused = [s for s, how in outcome.items() if how == "reused"]
    scores_path, profile_path = out / "scores.parquet", out / "profile.parquet"
    if main:
        writers = _TableWriters(out)
        try:
            for plan in fit:
                table = pd.read_parquet(_part(parts, plan))
                table = _with_ceilings(table, ceilings.subject_table(plan), config.ceiling_alpha)
                writers.write(table)
        except BaseException:
            writers.abort()
            raise
        writers.close()
        logger.info(
            "%d subjects encoded (%d fitted, %d reused), %d skipped, into %s",
            len(fitted) + len(reused),
            len(fitted),
            len(reused),
            len(skipped),
            out,
        )
    distributed.wait()
    return EncodeResult(scores_path, profile_path, skipped_path, fitted, reused, skipped)


def _part(parts: Path, plan: SubjectPlan) -> Path:
    """The scores part of a planned subject (named by its digest)."""
    return parts / f"sub-{plan.subject}_{plan.digest}.parquet"


def _fit_subject(
    plan: SubjectPlan,
    layers: Sequence[str],
    index: FeatureIndex,
    config: EncodeConfig,
    cleaning,
    out: Path,
    space: str,
    progress: bool,
) -> str:
    """Fit one subject into its part (``"fitted"``), or find it done (``"reused"``); its maps."""
    import pandas as pd
    from tqdm.auto import tqdm

    part = _part(out / "parts", plan)
    if part.is_file():
        logger.info("sub-%s: reusing %s", plan.subject, part)
        table, how = pd.read_parquet(part), "reused"
    else:
        data = SubjectData.load(plan.subject, plan.records)
        with tqdm(
            total=len(layers),
            desc=f"sub-{plan.subject}{distributed.describe()}",
            unit="layer",
            disable=not progress,
        ) as bar:
            table = encode_subject(
                data, plan, layers, index, config, cleaning, progress=lambda _: bar.update()
            )
        del data
        write_frame(table, part)
        how = "fitted"
    _subject_maps(table, plan, out, space, out / "parts")
    return how


def _write_skipped(plans: dict[str, SubjectPlan], skipped: dict[str, str], path: Path) -> Path:
    """``skipped.parquet``: subject, reason, n_runs, n_stories of every subject not fitted."""
    import pandas as pd

    return write_frame(
        pd.DataFrame(
            {
                "subject": pd.Series(list(skipped), dtype=object),
                "reason": pd.Series(list(skipped.values()), dtype=object),
                "n_runs": pd.Series([len(plans[s].records) for s in skipped], dtype="int32"),
                "n_stories": pd.Series([len(plans[s].stories) for s in skipped], dtype="int32"),
            }
        ),
        path,
    )


def _with_ceilings(table, ceiling, alpha: float):
    """Scores joined with a subject's ceiling table, normalised where the ceiling is significant."""
    from wav2brain.encoding.noise_ceiling import significant
    from wav2brain.encoding.scores import normalized_score

    merged = table.merge(ceiling, on="voxel", how="left", validate="many_to_one")
    merged["ceiling_significant"] = significant(merged["ceiling_z"].to_numpy(), alpha)
    merged["r_normalized"] = normalized_score(
        merged["r"].to_numpy(np.float64),
        merged["ceiling"].to_numpy(np.float64),
        min_ceiling=0.0,
        significant=merged["ceiling_significant"].to_numpy(),
    ).astype(np.float32)
    return merged[list(SCORE_COLUMNS)]


def _subject_maps(table, plan: SubjectPlan, out: Path, space: str, parts: Path) -> None:
    """Write a subject's maps once per digest (a marker in ``parts`` records them)."""
    from wav2brain.atomic import write_text_atomic

    if plan.map_reason is not None:
        return
    marker = parts / f"sub-{plan.subject}_{plan.digest}.maps"
    if marker.is_file() and all((out / line).is_file() for line in marker.read_text().split()):
        return
    written = write_subject_maps(table, out, space, plan.mask_path)
    write_text_atomic("\n".join(str(p.relative_to(out)) for p in written) + "\n", marker)


class _TableWriters:
    """``scores.parquet`` and ``profile.parquet`` written subject by subject, then renamed."""

    def __init__(self, out: Path) -> None:
        from wav2brain.atomic import partial_path

        self.paths = {"scores": out / "scores.parquet", "profile": out / "profile.parquet"}
        self.partial = {name: partial_path(path) for name, path in self.paths.items()}
        self.writers: dict[str, object] = {}

    def write(self, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for name, frame in (("scores", table), ("profile", profile_table(table))):
            arrow = pa.Table.from_pandas(frame, preserve_index=False)
            if name not in self.writers:
                self.writers[name] = pq.ParquetWriter(self.partial[name], arrow.schema)
            self.writers[name].write_table(arrow.cast(self.writers[name].schema))

    def close(self) -> tuple[Path, Path]:
        import os

        import pandas as pd

        for writer in self.writers.values():
            writer.close()
        if not self.writers:
            write_frame(pd.DataFrame({c: [] for c in SCORE_COLUMNS}), self.partial["scores"])
            write_frame(
                pd.DataFrame(
                    {c: [] for c in ("subject", "voxel", "best_layer", "preferred_layer")}
                ),
                self.partial["profile"],
            )
        for name, path in self.paths.items():
            os.replace(self.partial[name], path)
        return self.paths["scores"], self.paths["profile"]

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.close()
        for path in self.partial.values():
            path.unlink(missing_ok=True)
