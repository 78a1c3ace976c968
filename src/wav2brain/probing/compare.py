"""Comparison of upstreams on probing tasks: the paper's SUPERB table, bar chart and layer weights.

:func:`compare_upstreams` trains the same downstream (same configuration, same seeds) on each
upstream and task and writes, in ``out``:

- ``runs/<upstream>/<task>.json``: each result (per-seed scores, layer weights, timings) with the
  key it was made under; a rerun with the same key reuses it (resumable; with the feature cache
  also warm, a rerun does no model work and no training);
- ``results.parquet``: one row per upstream, task and seed (``score``);
- ``comparison.parquet`` and ``comparison.md``: per task and each upstream after the first
  against the first (``a``): task, metric, higher_is_better, a, b (labels and means), difference
  ``b - a``, its confidence interval over the paired seeds and whether it excludes zero; the
  markdown also has the SUPERB-style table (rows upstreams, columns tasks, mean ± half interval,
  in percent as the paper reports them);
- ``comparison.png``: bars per task and upstream with their intervals;
- ``layer_weights.parquet`` and ``layer_weights.png``: the learned softmax layer weights (mean over
  seeds) per task and upstream: which layers each task uses, before and after refinement.

Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wav2brain import distributed
from wav2brain.atomic import partial_path, write_text_atomic
from wav2brain.features.cache import sha256_json
from wav2brain.probing.features import (
    ProbeFeatureCache,
    Upstream,
    check_upstream,
    fill_task_features,
    load_upstream,
    upstream_label,
)
from wav2brain.probing.harness import (
    SPLITS,
    ProbeConfig,
    ProbeTask,
    TaskResult,
    check_frames,
    load_task,
    probe_task,
)
from wav2brain.probing.metrics import HIGHER_IS_BETTER, paired_difference

logger = logging.getLogger(__name__)

METRIC_NAMES = {"accuracy": "Acc", "per": "PER", "wer": "WER", "eer": "EER"}
TABLE_ORDER = ("pr", "ks", "ic", "sid", "er", "asr", "asv")
"""Column order of the paper's SUPERB table (other tasks follow in the order given)."""


@dataclass(frozen=True)
class UpstreamSpec:
    """An upstream to compare: a display ``label`` and the ``spec`` to load (``fbank``, path, id)."""

    label: str
    spec: str
    revision: str | None = None


def parse_upstreams(values: Sequence[str]) -> list[UpstreamSpec]:
    """``LABEL=SPEC`` or ``SPEC`` strings to specs with distinct labels (``-2``, ``-3`` appended).

    Raises
    ------
    ValueError
        For fewer than one upstream or an empty label or spec.
    """
    if not values:
        raise ValueError("give at least one --upstream")
    specs, seen = [], {}
    for value in values:
        label, sep, spec = value.partition("=")
        if not sep:
            label, spec = upstream_label(value), value
        if not label or not spec:
            raise ValueError(f"--upstream {value!r}: expected SPEC or LABEL=SPEC")
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        specs.append(UpstreamSpec(label, spec))
    return specs


def _result_key(upstream: Upstream, task: ProbeTask, config: ProbeConfig) -> str:
    """What a stored result depends on: upstream, task audio and targets, configuration."""
    return sha256_json(
        {
            "upstream": upstream.identity,
            "extraction": upstream.extraction,
            "task": [task.name, task.type, task.target_column],
            "audio": {split: task.fingerprint(split) for split in SPLITS},
            "targets": task.targets,
            "trials": {k: [v.tolist() for v in t] for k, t in (task.trials or {}).items()},
            "config": config.task_key(task),
        }
    )


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "upstream"


def _write_parquet(frame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _save_figure(figure, path: Path) -> Path:
    tmp = partial_path(path)
    try:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class Comparison:
    """What :func:`compare_upstreams` produced: results, tables (pandas) and output paths."""

    results: list[TaskResult]
    table: object
    scores: object
    layer_weights: object
    paths: dict[str, Path]


def result_frames(results: Sequence[TaskResult], labels: Sequence[str], confidence: float = 0.95):
    """The long scores table, the comparison table and the layer-weights table (pandas)."""
    import pandas as pd

    scores = pd.DataFrame(
        [
            dict(upstream=r.upstream, task=r.task, metric=r.metric, seed=s.seed, score=s.score)
            for r in results
            for s in r.seeds
        ]
    )
    weights = pd.DataFrame(
        [
            dict(upstream=r.upstream, task=r.task, layer=k, weight=float(w))
            for r in results
            for k, w in enumerate(r.layer_weights)
        ]
    )
    by_key = {(r.upstream, r.task): r for r in results}
    tasks = list(dict.fromkeys(r.task for r in results))
    rows = []
    for task in tasks:
        a = by_key[(labels[0], task)]
        for label in labels[1:]:
            b = by_key[(label, task)]
            paired = {s.seed: s.score for s in a.seeds}
            seeds = [s.seed for s in b.seeds if s.seed in paired]
            interval, significant = paired_difference(
                [paired[k] for k in seeds],
                [s.score for s in b.seeds if s.seed in paired],
                confidence,
            )
            rows.append(
                dict(
                    task=task,
                    metric=a.metric,
                    higher_is_better=HIGHER_IS_BETTER[a.metric],
                    upstream_a=labels[0],
                    upstream_b=label,
                    a=a.interval.mean,
                    b=b.interval.mean,
                    difference=interval.mean,
                    ci_low=interval.low,
                    ci_high=interval.high,
                    significant=significant,
                    n_seeds=len(seeds),
                )
            )
    columns = [
        "task",
        "metric",
        "higher_is_better",
        "upstream_a",
        "upstream_b",
        "a",
        "b",
        "difference",
        "ci_low",
        "ci_high",
        "significant",
        "n_seeds",
    ]
    return scores, pd.DataFrame(rows, columns=columns), weights


def _ordered(tasks: Sequence[str]) -> list[str]:
    return sorted(tasks, key=lambda t: TABLE_ORDER.index(t) if t in TABLE_ORDER else 99)


def _percent(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{100 * value:.2f}"


def markdown_table(results: Sequence[TaskResult], table, labels: Sequence[str]) -> str:
    """The SUPERB-style table (percent, mean ± half interval) and the difference table."""
    by_key = {(r.upstream, r.task): r for r in results}
    tasks = _ordered(list(dict.fromkeys(r.task for r in results)))
    header = ["upstream"] + [
        f"{t.upper()} {METRIC_NAMES[by_key[(labels[0], t)].metric]} "
        f"{'↑' if HIGHER_IS_BETTER[by_key[(labels[0], t)].metric] else '↓'}"
        for t in tasks
    ]
    lines = [
        "# Probing comparison (SUPERB-style; percent, mean ± half the confidence interval over seeds)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for label in labels:
        cells = []
        for task in tasks:
            interval = by_key[(label, task)].interval
            spread = interval.half_width
            cells.append(
                _percent(interval.mean)
                + ("" if not np.isfinite(spread) else f" ± {_percent(spread)}")
            )
        lines.append("| " + " | ".join([label, *cells]) + " |")
    if len(table):
        lines += [
            "",
            "## Differences (b − a, percentage points; interval over paired seeds)",
            "",
            "| task | metric | A | B | A score | B score | difference | CI | significant |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in table.itertuples():
            ci = (
                "—"
                if not np.isfinite(row.ci_low)
                else f"[{_percent(row.ci_low)}, {_percent(row.ci_high)}]"
            )
            lines.append(
                f"| {row.task} | {row.metric} | {row.upstream_a} | {row.upstream_b} | "
                f"{_percent(row.a)} | {_percent(row.b)} | {_percent(row.difference)} | {ci} | "
                f"{'yes' if row.significant else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def plot_comparison(results: Sequence[TaskResult], labels: Sequence[str], path: Path) -> Path:
    """Bars per task (one panel each: metrics differ in scale) and upstream, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(r.upstream, r.task): r for r in results}
    tasks = _ordered(list(dict.fromkeys(r.task for r in results)))
    figure, axes = plt.subplots(1, len(tasks), figsize=(2.2 + 1.0 * len(labels) * len(tasks), 3.2))
    axes = np.atleast_1d(axes)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes, tasks, strict=True):
        means = [100 * by_key[(label, task)].interval.mean for label in labels]
        halves = [100 * by_key[(label, task)].interval.half_width for label in labels]
        errors = [h if np.isfinite(h) else 0.0 for h in halves]
        ax.bar(
            range(len(labels)),
            means,
            yerr=errors,
            capsize=3,
            color=[colours[k % len(colours)] for k in range(len(labels))],
        )
        metric = by_key[(labels[0], task)].metric
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        ax.set_title(f"{task.upper()} {METRIC_NAMES[metric]} {arrow} (%)")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    figure.tight_layout()
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


def plot_layer_weights(results: Sequence[TaskResult], labels: Sequence[str], path: Path) -> Path:
    """One panel per task: softmax layer weight against layer index, one line per upstream.

    Upstreams with a single layer (``fbank``) are left out (their weight is 1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {(r.upstream, r.task): r for r in results}
    tasks = _ordered(list(dict.fromkeys(r.task for r in results)))
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for label in labels:
            weights = by_key[(label, task)].layer_weights
            if len(weights) > 1:
                ax.plot(range(len(weights)), weights, marker="o", label=label)
        ax.set_title(task.upper())
        ax.set_xlabel("layer (0 = transformer input)")
        ax.set_ylabel("softmax weight")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.tight_layout()
    try:
        return _save_figure(figure, path)
    finally:
        plt.close(figure)


def compare_upstreams(
    upstreams: Sequence[str | UpstreamSpec],
    tasks: Sequence[str | ProbeTask],
    out: str | Path,
    *,
    tasks_dir: str | Path | None = None,
    config: ProbeConfig | None = None,
    cache_dir: str | Path | None = None,
) -> Comparison | None:
    """Probe every upstream on every task with the same downstream and write the comparison.

    Parameters
    ----------
    upstreams
        Specs (``"fbank"``, a local folder, a Hub id; ``LABEL=SPEC`` sets the label) or
        :class:`UpstreamSpec`. The first is the reference ``a`` of every difference.
    tasks
        Task names (folders of ``tasks_dir``) or built :class:`~wav2brain.probing.harness.ProbeTask`.
    out
        Output folder (module docstring).
    cache_dir
        Probe feature cache (default ``out / "features"``).

    Every upstream's config, every task and its downstream configuration are checked before any
    weights are loaded; every CTC task's lengths against every upstream before any feature
    extraction. Under several processes (:mod:`wav2brain.distributed`) they share the feature
    extraction (:func:`~wav2brain.probing.features.fill_task_features`) and the main process
    trains and writes; the others return None.
    """
    config = config or ProbeConfig()
    out = Path(out)
    specs = [u if isinstance(u, UpstreamSpec) else None for u in upstreams]
    if any(s is None for s in specs):
        parsed = iter(parse_upstreams([u for u in upstreams if not isinstance(u, UpstreamSpec)]))
        specs = [s if s is not None else next(parsed) for s in specs]
    if not specs:
        raise ValueError("give at least one upstream")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"upstream labels must be distinct, got {labels}")
    if not tasks:
        raise ValueError("give at least one task")
    for spec in specs:
        check_upstream(spec.spec, spec.revision)
    built = [t if isinstance(t, ProbeTask) else load_task(t, tasks_dir) for t in tasks]
    names = [t.name for t in built]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks must be distinct, got {names}")
    for task in built:
        config.downstream.for_task(task.name, task.type)
    loaded = [load_upstream(s.spec, s.revision, config.extraction, config.fbank) for s in specs]
    for upstream in loaded:
        for task in built:
            check_frames(task, upstream)
    cache = ProbeFeatureCache(cache_dir if cache_dir is not None else out / "features")
    if distributed.is_distributed():  # features over the processes, then training on the main
        pending = [
            (spec.label, upstream, task)
            for spec, upstream in zip(specs, loaded, strict=True)
            for task in built
            if _stored(out / "runs" / _safe(spec.label) / f"{task.name}.json",
                       _result_key(upstream, task, config)) is None
        ]  # fmt: skip
        fill_task_features(pending, cache, config.storage_dtype)
        if not distributed.is_main():
            return None
    results = []
    for spec, upstream in zip(specs, loaded, strict=True):
        for task in built:
            path = out / "runs" / _safe(spec.label) / f"{task.name}.json"
            key = _result_key(upstream, task, config)
            result = _stored(path, key)
            if result is None:
                logger.info("probing %s on %s", spec.label, task.name)
                result = probe_task(upstream, task, cache, config, label=spec.label)
                record = {"key": key, "result": result.to_dict()}
                write_text_atomic(json.dumps(record, indent=1), path)
            else:
                logger.info("%s on %s: stored result reused", spec.label, task.name)
                result.upstream = spec.label
            results.append(result)
    scores, table, weights = result_frames(results, labels, config.confidence)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": _write_parquet(scores, out / "results.parquet"),
        "comparison": _write_parquet(table, out / "comparison.parquet"),
        "layer_weights": _write_parquet(weights, out / "layer_weights.parquet"),
        "markdown": write_text_atomic(
            markdown_table(results, table, labels), out / "comparison.md"
        ),
        "chart": plot_comparison(results, labels, out / "comparison.png"),
        "layer_plot": plot_layer_weights(results, labels, out / "layer_weights.png"),
    }
    return Comparison(results, table, scores, weights, paths)


def _stored(path: Path, key: str) -> TaskResult | None:
    """The result stored at ``path`` under ``key``, or None (missing, other key, unreadable)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("key") != key:
            return None
        return TaskResult.from_dict(record["result"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        logger.warning("recomputing %s: %s", path, error)
        return None
