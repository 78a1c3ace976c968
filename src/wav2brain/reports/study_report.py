"""The study report: one self-contained HTML page over a run folder, with its figures and tables.

:func:`build_report` reads ``RUN/study.json`` (written by ``wav2brain run`` after every step:
``{"format": 1, "name", "simulated", "config", "steps": {STEP_ID: {"command", "out", ...}}}``)
and each step's output folder, and writes

- ``RUN/report.html``: one file, CSS inline and every image a ``data:`` URI (no script, no
  network), which opens offline in any browser;
- ``RUN/report/``: the same PNGs, the Parquet tables the page shows and ``headline.json``, the
  headline numbers (also in the page, each a ``<span data-key="...">``).

Sections follow the two papers: the dataset; encoding per layer with brain maps and noise
ceilings; anchoring (how many artificial neurons, ANs, anchor, where, per layer and tensor, maps
of the strongest, network-level couplings, the intermediate-stage profile); selectivity;
refinement (training curves, parameter change, layer weights); the probing table; anchoring
before and after refinement; and for simulated data every ground-truth check of
``truth/truth.json``. A step that did not run gives its section the line "not run in this study".
Figures the steps drew are reused; the report draws only the ones no step draws
(:mod:`wav2brain.reports.figures`). Simulated studies carry a SIMULATED banner and every caption
says SIMULATED.

The folder is built under a temporary name and renamed into place, then the page is written
through a temporary name: a reader never sees half a report, and an interrupted build leaves
the previous one intact. Tables are read column by column (only the columns shown).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wav2brain.reports.page import Headline, Section, absent, escape, figure, key_values, table
from wav2brain.study.runner import FORMAT as STUDY_FORMAT
from wav2brain.study.runner import STUDY_FILE
from wav2brain.study.steps import STEP_ORDER

logger = logging.getLogger(__name__)

HEADLINE_FILE = "headline.json"
REPORT_FILE = "report.html"
NOT_RUN = "not run in this study"
NOT_YET = "not run yet (a step of this study: run the study again to finish it)"

MAX_MAPPED_UNITS = 4
"""ANs whose maps are shown (the anchoring step's ``mapped_units``, strongest first)."""
MAX_MAP_SUBJECTS = 3
"""Subjects whose encoding maps are shown (the rest stay in the step's folder)."""


# ----------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class StudyRun:
    """A run folder's ``study.json``, checked.

    Attributes
    ----------
    root : Path
        The run folder.
    name : str
    simulated : bool
    config : dict
        The resolved study config as the runner recorded it.
    steps : dict
        Step id -> its record (``command``, ``out`` relative to ``root``, ``seconds``, ...).
    planned : tuple of str
        The study's steps (``planned`` in study.json; empty in records of older runners).
    """

    root: Path
    name: str
    simulated: bool
    config: dict
    steps: dict
    planned: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """The ``study.json`` file."""
        return self.root / STUDY_FILE

    @classmethod
    def read(cls, run_dir: str | Path) -> StudyRun:
        """Read and check ``run_dir/study.json``; every listed step's output must exist.

        Raises
        ------
        FileNotFoundError
            No run folder or no ``study.json`` in it; a step whose output folder is missing
            (named with the folder).
        ValueError
            ``study.json`` is not JSON, or a field is missing or of the wrong type (named).
        """
        root = Path(run_dir)
        if root.exists() and not root.is_dir():
            raise ValueError(f"{root} is a file, not a run folder (give the study's out folder)")
        if not root.is_dir():
            raise FileNotFoundError(f"run folder {root} does not exist")
        path = root / STUDY_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a run folder is made by `wav2brain run --config STUDY.yaml` "
                "(or `wav2brain demo`)"
            )
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}")
        if record.get("format") != STUDY_FORMAT:
            raise ValueError(
                f"{path}: field 'format' is {record.get('format')!r}, expected {STUDY_FORMAT}"
            )
        for key, kind in (("name", str), ("simulated", bool), ("config", dict), ("steps", dict)):
            if not isinstance(record.get(key), kind):
                raise ValueError(
                    f"{path}: field {key!r} must be a {kind.__name__}, got {record.get(key)!r}"
                )
        unknown = sorted(set(record["steps"]) - set(STEP_ORDER))
        if unknown:
            raise ValueError(
                f"{path}: unknown steps {unknown}; a study records {', '.join(STEP_ORDER)}"
            )
        for step, entry in record["steps"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("out"), str):
                raise ValueError(f"{path}: step {step!r} needs an object with an 'out' string")
            command = entry.get("command", [])
            if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
                raise ValueError(f"{path}: step {step!r}: 'command' must be a list of strings")
        planned = record.get("planned", [])
        if not isinstance(planned, list) or not set(planned) <= set(STEP_ORDER):
            raise ValueError(f"{path}: field 'planned' must list step ids, got {planned!r}")
        run = cls(
            root,
            record["name"],
            record["simulated"],
            record["config"],
            record["steps"],
            tuple(planned),
        )
        for step in run.steps:
            if step != "report" and not run.output(step).exists():
                raise FileNotFoundError(
                    f"{path}: step {step!r} lists its output {run.steps[step]['out']!r}, but "
                    f"{run.output(step)} does not exist (run the step again)"
                )
        return run

    def output(self, step: str) -> Path:
        """Where ``step`` wrote (``RUN/<out>``)."""
        return self.root / self.steps[step]["out"]

    def folder(self, step: str) -> Path | None:
        """The output of ``step``, or None when the study did not run it."""
        return self.output(step) if step in self.steps else None

    def not_run(self, step: str) -> str:
        """Why ``step`` has no output: planned but not run yet, or not a step of this study."""
        return NOT_YET if step in self.planned else NOT_RUN

    def option(self, step: str, flag: str) -> str | None:
        """The value the step's command gave ``flag`` (``--alpha 0.01`` or ``--alpha=0.01``)."""
        command = self.steps.get(step, {}).get("command", [])
        for i, argument in enumerate(command):
            if argument == flag and i + 1 < len(command):
                return command[i + 1]
            if argument.startswith(flag + "="):
                return argument.split("=", 1)[1]
        return None


def dataset_folder(run: StudyRun) -> Path | None:
    """The prepared dataset: the prepare step's output, else the study's ``data.prepared``."""
    folder = run.folder("prepare")
    if folder is not None:
        return folder
    prepared = (run.config.get("data") or {}).get("prepared")
    if not prepared:
        return None
    path = Path(prepared)
    for candidate in (path, run.root / path):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{run.path}: the study's data.prepared {prepared} does not exist")


def check_label(run: StudyRun) -> None:
    """Refuse a study recorded as real whose prepared dataset the simulator made.

    Raises
    ------
    ValueError
        ``simulated`` is false but the dataset's BIDS root holds the simulator's ground truth
        (its results would go out without the SIMULATED label).
    """
    from wav2brain.simulation.truth import is_simulated

    folder = dataset_folder(run)
    if not run.simulated and folder is not None and is_simulated(folder):
        raise ValueError(
            f"{run.path}: field 'simulated' is false, but the prepared dataset {folder} was made "
            "from the simulator's BIDS dataset: its report must be labelled SIMULATED"
        )


# ----------------------------------------------------------------------------- building


@dataclass
class Builder:
    """What the section writers share: the run, the staging folder and the headline numbers."""

    run: StudyRun
    folder: Path
    headline: Headline = field(default_factory=Headline)
    files: list[str] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return self.run.simulated

    def _name(self, name: str) -> Path:
        if name in self.files:
            raise ValueError(f"report file {name!r} written twice")
        self.files.append(name)
        return self.folder / name

    def figure(self, source: Path, name: str, caption: str) -> str:
        """Copy a step's PNG into the report folder as ``name``; its embedded HTML."""
        target = self._name(name)
        shutil.copyfile(source, target)
        return figure(target, caption, self.simulated, name)

    def drawn(self, draw: Callable[[Path], Path], name: str, caption: str) -> str:
        """Draw a new figure into the report folder as ``name``; its embedded HTML."""
        target = draw(self._name(name))
        return figure(target, caption, self.simulated, name)

    def write_table(self, frame, name: str) -> Path:
        """Write ``frame`` into the report folder as ``name`` (Parquet)."""
        path = self._name(name)
        frame.to_parquet(path, index=False)
        return path

    def table(self, frame, name: str, **shown) -> str:
        """Write ``frame`` as ``name`` (Parquet) and return its HTML table."""
        self.write_table(frame, name)
        return table(frame, **shown) + f'<p class="note">Table: {escape(name)}</p>'

    def number(self, key: str, value: Any, digits: int = 3, unit: str = "") -> str:
        """A headline number's span (:meth:`wav2brain.reports.page.Headline.number`)."""
        return self.headline.number(key, value, digits, unit)


def _slug(step: str) -> str:
    return step.replace(":", "-")


def _read(
    path: Path,
    columns: Sequence[str] | None = None,
    filters: list[tuple] | None = None,
    without: Sequence[str] = (),
):
    """A Parquet table: only ``columns`` (those present), rows matching ``filters``.

    ``without`` names columns left unread (per-AN top-voxel lists, for instance); study-scale
    tables are never read whole.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    if columns is not None or without:
        names = pq.read_schema(path).names
        wanted = names if columns is None else [c for c in columns if c in names]
        columns = [c for c in wanted if c not in without]
    return pd.read_parquet(path, columns=columns, filters=filters)


def _subjects(path: Path) -> list[str]:
    """The distinct ``subject`` values of a Parquet table (one column read)."""
    import pyarrow.parquet as pq

    return sorted(set(pq.read_table(path, columns=["subject"]).column(0).to_pylist()))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _need(path: Path, step: str) -> Path:
    """``path`` inside a step's output, which must exist (else the step did not finish)."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the output of step {step!r} is incomplete (run the step again)"
        )
    return path


def _layer_number(name: Any) -> int:
    from wav2brain.encoding.dataset import layer_number

    return int(name) if not isinstance(name, str) else layer_number(name)


# ----------------------------------------------------------------------------- sections


def overview_section(b: Builder) -> Section:
    """The study, where it ran and what each step took."""
    import pandas as pd

    rows = []
    for step in STEP_ORDER:
        entry = b.run.steps.get(step)
        rows.append(
            {
                "step": step,
                "ran": entry is not None,
                "output": entry["out"] if entry else "",
                "seconds": float(entry.get("seconds", float("nan"))) if entry else float("nan"),
                "finished": str(entry.get("finished", "")) if entry else "",
                "command": shlex.join(entry.get("command", [])) if entry else "",
            }
        )
    steps = pd.DataFrame(rows)
    ran = steps[steps["ran"]]
    body = key_values(
        [
            ("study", escape(b.run.name)),
            ("data", "SIMULATED (the toolkit's simulator)" if b.simulated else "real"),
            ("steps run", b.number("study.steps_run", int(len(ran)))),
            ("step time", b.number("study.seconds", float(ran["seconds"].sum()), unit="s")),
        ]
    )
    body += b.table(steps, "steps.parquet", columns=["step", "ran", "output", "seconds", "command"])
    return Section("overview", "Study", body)


def dataset_section(b: Builder) -> Section:
    """Subjects, runs, stories, TRs, voxels and TR of the prepared folder (its manifest).

    Voxels per subject are one number (``dataset.voxels``) when every subject has the same
    count, else a range (``dataset.voxels_min``, ``dataset.voxels_max``); likewise one TR
    (``dataset.tr``) or the list of TRs.
    """
    import pandas as pd

    from wav2brain.data.prepare import MANIFEST_NAME

    folder = dataset_folder(b.run)
    title = "Dataset"
    if folder is None:
        return Section("dataset", title, absent(f"Prepared dataset: {b.run.not_run('prepare')}."))
    manifest = _json(_need(folder / MANIFEST_NAME, "prepare"))
    runs = pd.DataFrame(
        [
            {
                "run": key,
                "subject": str(r["subject"]),
                "stimulus_id": str(r["stimulus_id"]),
                "n_trs": int(r["n_trs"]),
                "n_voxels": int(r["n_voxels"]),
                "tr": float(r["tr"]),
                "space": str(r.get("space", "")),
            }
            for key, r in sorted(manifest.get("runs", {}).items())
        ]
    )
    if not len(runs):
        raise ValueError(f"{folder / MANIFEST_NAME} lists no runs")
    stimuli = manifest.get("stimuli", {})
    voxels = runs.groupby("subject")["n_voxels"].max()
    trs = sorted(runs["tr"].unique())
    rows = [
        ("subjects", b.number("dataset.subjects", int(runs["subject"].nunique()))),
        ("runs", b.number("dataset.runs", int(len(runs)))),
        ("stories", b.number("dataset.stories", int(runs["stimulus_id"].nunique()))),
        ("TRs (all runs)", b.number("dataset.trs", int(runs["n_trs"].sum()))),
    ]
    if voxels.min() == voxels.max():
        rows.append(("voxels per subject", b.number("dataset.voxels", int(voxels.max()))))
    else:
        low = b.number("dataset.voxels_min", int(voxels.min()))
        rows.append(
            ("voxels per subject", f"{low} to {b.number('dataset.voxels_max', int(voxels.max()))}")
        )
    if len(trs) == 1:
        rows.append(("TR", b.number("dataset.tr", float(trs[0]), unit="s")))
    else:
        rows.append(("TR", ", ".join(f"{t:g} s" for t in trs) + " (several)"))
    if stimuli:
        seconds = sum(float(s.get("duration", 0.0)) for s in stimuli.values())
        rows.append(("story audio", b.number("dataset.audio_seconds", seconds, unit="s")))
    rows.append(("space", escape(", ".join(sorted(runs["space"].unique())))))
    rows.append(("folder", escape(folder)))
    per_subject = runs.groupby("subject", as_index=False).agg(
        runs=("run", "size"),
        stories=("stimulus_id", "nunique"),
        trs=("n_trs", "sum"),
        voxels=("n_voxels", "max"),
    )
    body = key_values(rows) + b.table(per_subject, "dataset_subjects.parquet")
    b.write_table(runs, "dataset_runs.parquet")
    return Section("dataset", title, body)


def encoding_section(b: Builder) -> Section:
    """Held-out r per layer (best-layer curve), noise ceilings and the step's brain maps."""
    from wav2brain.reports import figures

    step = "encode:base"
    title = "Encoding per layer"
    folder = b.run.folder(step)
    if folder is None:
        return Section("encoding", title, absent(f"Encoding ({step}): {b.run.not_run(step)}."))
    import numpy as np
    import pandas as pd

    path = _need(folder / "scores.parquet", step)
    subjects = _subjects(path)
    if not subjects:
        return Section("encoding", title, absent(f"{path} is empty."))

    def top10(values) -> float:
        ordered = values.sort_values(ascending=False)
        return float(ordered.head(max(1, len(ordered) // 10)).mean())

    frames, best_r, ceilings = [], [], []
    for subject in subjects:  # one subject's rows at a time
        scores = _read(
            path,
            ["layer", "voxel", "r", "ceiling", "ceiling_significant", "r_normalized"],
            filters=[("subject", "==", subject)],
        )
        frames.append(
            scores.groupby("layer", as_index=False)
            .agg(
                mean_r=("r", "mean"),
                median_r=("r", "median"),
                top10_mean_r=("r", top10),
                mean_r_normalized=("r_normalized", "mean"),
                voxels=("voxel", "size"),
            )
            .assign(subject=subject)
        )
        best_r.append(scores.groupby("voxel")["r"].max().to_numpy(np.float64))
        ceilings.append(scores.drop_duplicates("voxel")[["ceiling", "ceiling_significant"]])
        del scores
    per_subject = pd.concat(frames, ignore_index=True)
    per_subject["layer_number"] = [_layer_number(n) for n in per_subject["layer"]]
    ceilings = pd.concat(ceilings, ignore_index=True)
    per_layer = (
        per_subject.groupby(["layer", "layer_number"], as_index=False)
        .agg(
            subjects=("subject", "nunique"),
            mean_r=("mean_r", "mean"),
            median_r=("median_r", "mean"),
            top10_mean_r=("top10_mean_r", "mean"),
            mean_r_normalized=("mean_r_normalized", "mean"),
        )
        .sort_values("layer_number")
    )
    best = per_layer.loc[per_layer["mean_r"].idxmax()]
    best_voxels = _read(
        path,
        ["r", "ceiling", "ceiling_significant", "r_normalized"],
        filters=[("layer", "==", best["layer"])],
    )
    rows = [
        (
            "best layer (mean held-out r)",
            b.number("encoding.best_layer", int(best["layer_number"])),
        ),
        ("its mean r", b.number("encoding.best_layer_mean_r", float(best["mean_r"]))),
        (
            "its top-10 % mean r",
            b.number("encoding.best_layer_top10_r", float(best["top10_mean_r"])),
        ),
        (
            "median over voxels of the best r over layers",
            b.number("encoding.median_best_r", float(np.median(np.concatenate(best_r)))),
        ),
        (
            "mean noise ceiling",
            b.number("encoding.mean_ceiling", float(ceilings["ceiling"].mean())),
        ),
        (
            "voxels with a significant ceiling",
            b.number(
                "encoding.share_ceiling_significant",
                float(ceilings["ceiling_significant"].astype(bool).mean()),
            ),
        ),
        (
            "mean r / ceiling at the best layer (where the ceiling is significant)",
            b.number(
                "encoding.best_layer_mean_r_normalized", float(best_voxels["r_normalized"].mean())
            ),
        ),
    ]
    body = key_values(rows)
    body += b.drawn(
        lambda p: figures.plot_encoding_layers(per_subject, per_layer, p),
        "encoding_layers.png",
        "Held-out Pearson r per layer (nested cross-validation over stories): each subject's "
        "mean over voxels (grey), the mean over subjects (blue) and of each subject's top 10 % "
        "of voxels (orange); dotted: the best layer.",
    )
    body += b.table(
        per_layer,
        "encoding_layers.parquet",
        columns=["layer", "subjects", "mean_r", "median_r", "top10_mean_r", "mean_r_normalized"],
    )
    body += b.drawn(
        lambda p: figures.plot_ceiling(best_voxels, p),
        "encoding_ceiling.png",
        f"Per voxel: held-out r at the best layer ({best['layer']}) against its noise ceiling "
        "(red: ceiling significantly above zero; r / ceiling is given only there).",
    )
    maps = folder / "maps"
    for subject in subjects[:MAX_MAP_SUBJECTS]:
        for kind, what in (
            ("best_r", "best held-out r over layers"),
            ("preferred_layer", "preferred layer (r-weighted mean layer)"),
        ):
            png = maps / f"sub-{subject}_{kind}.png"
            if png.is_file():
                body += b.figure(
                    png,
                    f"{_slug(step)}_sub-{subject}_{kind}.png",
                    f"sub-{subject}: {what}, from {step}.",
                )
    if not maps.is_dir():
        body += '<p class="note">The encoding step wrote no maps (tables only).</p>'
    return Section("encoding", title, body)


def _anchoring_alpha(b: Builder, step: str) -> float:
    """The FDR level the step ran with (its ``--alpha``, else the anchoring default)."""
    from wav2brain.anchoring import CouplingConfig

    given = b.run.option(step, "--alpha")
    return float(given) if given is not None else CouplingConfig().alpha


def voxel_anchored(units):
    """Per row of a ``units.parquet``: the AN anchors in that subject (bool Series).

    Valid (not constant) with at least one voxel passing the subject's FDR (``n_fdr > 0``).
    """
    return units["valid"].astype(bool) & (units["n_fdr"] > 0)


def _families(units) -> list[str]:
    """Target families of a ``units.parquet`` (columns ``<family>`` with ``<family>_q``)."""
    return [c[:-2] for c in units.columns if c.endswith("_q") and c[:-2] in units.columns]


@dataclass
class Anchoring:
    """One anchoring output folder as the report reads it.

    ``units``: one row per subject and AN, with ``anchored`` (:func:`voxel_anchored`);
    ``group_level``: the ANs anchored in a region or network at
    group level (:func:`wav2brain.anchoring.results.anchored_frame`, the rule of the step's own
    profile), None without a group.
    """

    step: str
    label: str
    folder: Path
    alpha: float
    units: Any
    families: list[str]
    group_level: Any
    summary: dict

    @property
    def id(self) -> str:
        return f"anchoring-{self.label}"

    @property
    def key(self) -> str:
        return f"anchoring.{self.label}"

    @classmethod
    def read(cls, b: Builder, step: str, label: str, folder: Path) -> Anchoring:
        from wav2brain.anchoring.results import anchored_frame

        units = _read(
            _need(folder / "units.parquet", step), without=("top_voxels", "top_r", "top_z")
        )
        units["anchored"] = voxel_anchored(units)
        group_path = folder / "group.parquet"
        group = _read(group_path) if group_path.is_file() else None
        families = _families(units)
        alpha = _anchoring_alpha(b, step)
        group_level = None
        frame = anchored_frame(units, group, families, alpha)
        if group is not None and frame is not None:
            group_level = frame[(frame["source"] == "group") & frame["significant"]]
        summary_path = folder / "summary.json"
        summary = _json(summary_path) if summary_path.is_file() else {}
        return cls(step, label, folder, alpha, units, families, group_level, summary)


def _anchoring_counts(b: Builder, a: Anchoring) -> str:
    """How many ANs anchor, overall and per layer and tensor."""
    units = a.units
    n_subjects = int(units["subject"].nunique())
    per_an = units.groupby(["layer", "tensor", "unit"], as_index=False).agg(
        subjects_anchored=("anchored", "sum")
    )
    per_an["in_any"] = per_an["subjects_anchored"] > 0
    per_an["in_every"] = per_an["subjects_anchored"] >= n_subjects
    per_layer = per_an.groupby(["layer", "tensor"], as_index=False).agg(
        ans=("unit", "size"),
        anchored_in_any_subject=("in_any", "sum"),
        anchored_in_every_subject=("in_every", "sum"),
    )
    share = (
        units.groupby(["layer", "tensor", "subject"])["anchored"]
        .mean()
        .groupby(["layer", "tensor"])
        .mean()
    )
    keys = list(zip(per_layer["layer"], per_layer["tensor"], strict=True))
    per_layer["mean_share_per_subject"] = [float(share[k]) for k in keys]
    rows = [
        ("subjects", b.number(f"{a.key}.subjects", n_subjects)),
        ("ANs (layers x units)", b.number(f"{a.key}.ans", int(len(per_an)))),
        (
            f"ANs with a voxel at FDR q <= {a.alpha:g} in at least one subject",
            b.number(f"{a.key}.anchored_any_subject", int(per_an["in_any"].sum())),
        ),
        (
            "... in every subject",
            b.number(f"{a.key}.anchored_every_subject", int(per_an["in_every"].sum())),
        ),
    ]
    if a.group_level is not None:
        for family in a.families:
            hits = a.group_level[a.group_level["family"] == family]
            per_family = hits.groupby("layer")["unit"].nunique()
            per_layer[f"group_anchored_{family}"] = [
                int(per_family.get(name, 0)) for name in per_layer["layer"]
            ]
            rows.append(
                (
                    f"ANs anchored at group level in a {family} (FDR q <= {a.alpha:g})",
                    b.number(
                        f"{a.key}.group_anchored.{family}",
                        int(len(hits[["layer", "unit"]].drop_duplicates())),
                    ),
                )
            )
    per_layer["layer_number"] = [_layer_number(n) for n in per_layer["layer"]]
    per_layer = per_layer.sort_values(["layer_number", "tensor"]).drop(columns="layer_number")
    return (
        key_values(rows)
        + "<h3>Per layer and tensor</h3>"
        + b.table(per_layer, f"{a.id}_layers.parquet")
    )


def _anchoring_where(b: Builder, a: Anchoring) -> str:
    """The regions the ANs anchor in: group level when there is one, else per subject."""
    body = "<h3>Where they anchor</h3>"
    if a.group_level is not None and len(a.group_level):
        where = (
            a.group_level.groupby(["family", "region", "layer"], as_index=False)["unit"]
            .nunique()
            .rename(columns={"unit": "anchored_ans"})
            .sort_values(["family", "anchored_ans"], ascending=[True, False])
        )
        return (
            body + '<p class="note">Group level: each AN in the region best coupled with it, when '
            "that coupling passes FDR over subjects.</p>" + b.table(where, f"{a.id}_where.parquet")
        )
    anchored = a.units[a.units["anchored"]]
    if not a.families or not len(anchored):
        return body + '<p class="note">No AN has a voxel passing FDR: nowhere to show.</p>'
    family = a.families[0]
    column = f"best_voxel_{family}" if f"best_voxel_{family}" in anchored else family
    where = (
        anchored.groupby([column, "layer"], as_index=False)["unit"]
        .nunique()
        .rename(columns={column: "region", "unit": "anchored_ans"})
        .sort_values("anchored_ans", ascending=False)
    )
    return (
        body
        + f'<p class="note">No AN passes FDR at group level; per subject, the {escape(family)} '
        "region holding each anchored AN's best voxel.</p>"
        + b.table(where, f"{a.id}_where.parquet")
    )


def _anchoring_maps(b: Builder, a: Anchoring) -> str:
    """The step's maps of its strongest ANs: the group t map (glass brain for MNI data)."""
    body = "<h3>Maps of the strongest ANs</h3>"
    maps = a.folder / "maps"
    subjects = sorted(a.units["subject"].unique())
    shown = 0
    for unit in a.summary.get("mapped_units", [])[:MAX_MAPPED_UNITS]:
        layer, number = unit.split(":")
        stems = [(f"group_{layer}_unit-{number}_t", "group t over subjects")] + [
            (f"sub-{s}_{layer}_unit-{number}_r", f"sub-{s} r") for s in subjects
        ]
        for stem, what in stems:
            found = [maps / f"{stem}{end}.png" for end in ("_glass", "")]
            png = next((p for p in found if p.is_file()), None)
            if png is not None:
                view = "glass brain" if png.stem.endswith("_glass") else "slices"
                body += b.figure(
                    png,
                    f"{a.id}_{png.name}",
                    f"{layer} unit {number} ({what}, {view}): among the ANs with the most "
                    "voxels passing FDR.",
                )
                shown += 1
                break
    if not shown:
        body += (
            '<p class="note">The anchoring step mapped no AN (none passed FDR, or maps were '
            "not asked for).</p>"
        )
    return body


def _network_couplings(b: Builder, a: Anchoring) -> str:
    """Every AN's coupling with each network: mean |r| per layer and the count passing FDR."""
    from wav2brain.reports import figures

    body = "<h3>Network-level couplings</h3>"
    tests_path = a.folder / "group_regions.parquet"
    if tests_path.is_file():
        columns, r, q, source = ["group_r", "group_q"], "group_r", "group_q", "group"
        tests = _read(
            tests_path,
            ["kind", "family", "layer", "unit", "region", *columns],
            filters=[("kind", "==", "network")],
        )
    else:
        r, q, source = "r", "q", "per subject"
        tests = _read(
            _need(a.folder / "regions.parquet", a.step),
            ["kind", "family", "layer", "unit", "region", "r", "q"],
            filters=[("kind", "==", "network")],
        )
    networks = tests[tests["kind"] == "network"] if "kind" in tests else tests.iloc[0:0]
    if not len(networks):
        return body + '<p class="note">No network family was anchored (regions only).</p>'
    networks = networks.assign(abs_r=networks[r].abs(), significant=networks[q] <= a.alpha)
    couplings = networks.groupby(["family", "layer", "region"], as_index=False).agg(
        mean_abs_r=("abs_r", "mean"),
        max_abs_r=("abs_r", "max"),
        n_significant=("significant", "sum"),
    )
    couplings["layer_number"] = [_layer_number(n) for n in couplings["layer"]]
    body += b.drawn(
        lambda p: figures.plot_network_couplings(couplings, p),
        f"{a.id}_networks.png",
        f"Coupling of every AN with each network ({source}): mean |r| over a layer's ANs; the "
        f"number is how many pass FDR q <= {a.alpha:g}.",
    )
    return body + b.table(couplings.drop(columns="layer_number"), f"{a.id}_networks.parquet")


def _layer_profile(b: Builder, a: Anchoring) -> str:
    """The step's intermediate-stage profile: figure, peak and takeover layers, table."""
    body = "<h3>Intermediate stage: layer profile</h3>"
    path = a.folder / "profile.parquet"
    profile = _read(path) if path.is_file() else None
    if profile is None or not len(profile):
        return body + '<p class="note">No AN is anchored at FDR in any region: no profile.</p>'
    png = a.folder / "profile.png"
    if png.is_file():
        body += b.figure(
            png,
            f"{a.id}_profile.png",
            "Share of each layer's ANs anchored in each region (grey), auditory (blue) and "
            "higher-order (red); dotted: the peak auditory and the takeover layers.",
        )
    rows = []
    for family, stage in a.summary.get("stage", {}).items():
        for field_name, what in (
            ("peak_auditory_layer", "peak auditory layer"),
            ("takeover_layer", "takeover layer"),
        ):
            value = stage.get(field_name)
            rows.append(
                (f"{family}: {what}", b.number(f"{a.key}.stage.{family}.{field_name}", value))
            )
    return body + (key_values(rows) if rows else "") + b.table(profile, f"{a.id}_profile.parquet")


def anchoring_section(b: Builder, step: str, label: str) -> Section:
    """How many ANs anchor, where, per layer and tensor; maps; networks; the layer profile."""
    title = f"Anchoring ({label} model)"
    folder = b.run.folder(step)
    if folder is None:
        return Section(
            f"anchoring-{label}", title, absent(f"Anchoring ({step}): {b.run.not_run(step)}.")
        )
    a = Anchoring.read(b, step, label, folder)
    body = "".join(
        part(b, a)
        for part in (
            _anchoring_counts,
            _anchoring_where,
            _anchoring_maps,
            _network_couplings,
            _layer_profile,
        )
    )
    return Section(a.id, title, body)


def selectivity_section(b: Builder) -> Section:
    """Phoneme, class and word selectivity per layer; the peaks; anchored ANs' selectivity."""
    step = "selectivity:base"
    title = "Selectivity"
    folder = b.run.folder(step)
    if folder is None:
        return Section(
            "selectivity", title, absent(f"Selectivity ({step}): {b.run.not_run(step)}.")
        )
    layers = _read(_need(folder / "layers.parquet", step))
    summary = _json(_need(folder / "summary.json", step))
    rows = [
        ("tensor", escape(summary.get("tensor", ""))),
        (
            "phoneme peak layer",
            b.number("selectivity.phoneme_peak_layer", summary.get("phoneme_peak_layer")),
        ),
        (
            "word peak layer",
            b.number("selectivity.word_peak_layer", summary.get("word_peak_layer")),
        ),
        (
            "constant units (skipped)",
            b.number("selectivity.constant_units", summary.get("constant_units")),
        ),
    ]
    body = key_values(rows) + b.table(layers, "selectivity_layers.parquet")
    anchoring = b.run.folder("anchor:base")
    if anchoring is not None:
        units = _read(
            anchoring / "units.parquet",
            [
                "subject",
                "layer",
                "unit",
                "tensor",
                "valid",
                "n_fdr",
                "sel_psi_max",
                "sel_best_class",
            ],
        )
        if "sel_psi_max" in units:
            units["anchored"] = voxel_anchored(units)
            per_an = units.groupby(["layer", "tensor", "unit"], as_index=False).agg(
                anchored=("anchored", "any"),
                psi_max=("sel_psi_max", "first"),
                class_selective=("sel_best_class", lambda s: bool(s.notna().iloc[0])),
            )
            joined = per_an.groupby("anchored", as_index=False).agg(
                ans=("unit", "size"),
                mean_psi_max=("psi_max", "mean"),
                share_class_selective=("class_selective", "mean"),
            )
            body += (
                "<h3>Anchored ANs against the others (sel_* columns of the anchoring tables)</h3>"
            )
            body += b.table(joined, "selectivity_anchored.parquet")
        else:
            body += (
                '<p class="note">The anchoring step was run without --selectivity: '
                "no sel_* columns.</p>"
            )
    peak = summary.get("phoneme_peak_layer")
    for kind, what in (
        ("phonemes", "phoneme selectivity index per AN"),
        ("classes", "phonetic-class t per AN"),
    ):
        png = folder / "figures" / f"{kind}_layer_{int(peak):02d}.png" if peak is not None else None
        if png is not None and png.is_file():
            body += b.figure(
                png, f"selectivity_{png.name}", f"Layer {peak} (phoneme peak): {what}."
            )
    return Section("selectivity", title, body)


def _training_curves(folder: Path, run: str):
    """Loss per step of each stage, from the last checkpoint's ``trainer_state.json``."""
    import pandas as pd

    rows = []
    for stage in ("stage1", "stage2"):
        states = sorted(
            (folder / stage).glob("checkpoint-*/trainer_state.json"),
            key=lambda p: int(p.parent.name.split("-")[-1]),
        )
        if not states:
            continue
        for entry in _json(states[-1]).get("log_history", []):
            if "loss" in entry and "step" in entry:
                rows.append(
                    {
                        "run": run,
                        "stage": stage,
                        "step": int(entry["step"]),
                        "loss": float(entry["loss"]),
                    }
                )
    return pd.DataFrame(rows, columns=["run", "stage", "step", "loss"])


def refinement_section(b: Builder) -> Section:
    """Held-out scores per stage, training curves, parameter change and layer weights."""
    import pandas as pd

    from wav2brain.reports import figures

    title = "Refinement"
    refine = b.run.folder("refine")
    if refine is None:
        return Section(
            "refinement", title, absent(f"Refinement (refine): {b.run.not_run('refine')}.")
        )
    runs = {"refined": refine}
    control = b.run.folder("refine:control")
    if control is not None:
        runs["control (stories shuffled)"] = control
    scores, curves = [], []
    for name, folder in runs.items():
        metrics = _json(
            _need(folder / "metrics.json", "refine" if name == "refined" else "refine:control")
        )
        for stage in ("stage1", "stage2"):
            if stage in metrics:
                record = metrics[stage]
                scores.append(
                    {
                        "run": name,
                        "stage": stage,
                        **{
                            k: record.get(k)
                            for k in (
                                "mean",
                                "median",
                                "top10_mean",
                                "fraction_significant",
                                "n_voxels",
                            )
                        },
                    }
                )
        curves.append(_training_curves(folder, name))
    scores = pd.DataFrame(scores)
    rows = []
    for record in scores.itertuples(index=False):
        slug = "refine" if record.run == "refined" else "refine_control"
        rows.append(
            (
                f"{record.run}, {record.stage}: mean held-out r",
                b.number(f"{slug}.{record.stage}.mean_r", record.mean),
            )
        )
    body = key_values(rows) + b.table(scores, "refine_scores.parquet")
    curves = pd.concat(curves, ignore_index=True)
    if len(curves):
        body += b.drawn(
            lambda p: figures.plot_training_curves(curves, p),
            "refine_curves.png",
            "Training loss per step: stage 1 (head and layer weights), stage 2 (transformer too).",
        )
        b.write_table(curves, "refine_curves.parquet")
    else:
        body += '<p class="note">No checkpoint holds a training log (trainer_state.json).</p>'
    compare = b.run.folder("compare")
    body += "<h3>Base against refined (compare-models)</h3>"
    if compare is None:
        return Section(
            "refinement",
            title,
            body + absent(f"compare-models (compare): {b.run.not_run('compare')}."),
        )
    record = _json(_need(compare / "compare.json", "compare"))
    files, headline = record.get("files", {}), record.get("headline", {})
    changed = headline.get("parameters_changed", {})
    facts = [
        ("backbone parameters changed", b.number("compare.parameters_changed", changed.get("all")))
    ]
    for model, value in headline.get("mean_r", {}).items():
        facts.append((f"{model}: mean held-out r", b.number(f"compare.mean_r.{model}", value)))
    body += key_values(facts)
    captions = {
        "parameter_change_png": (
            "Share of parameters changed per type and layer (Li et al. 2024, Fig. 2)."
        ),
        "layer_weights_png": "Learned layer weights (Fig. 4).",
        "brain_accuracy_png": "Held-out r of both models per voxel (Fig. 3b).",
        "history_sweep_png": "Held-out score against the history length (Fig. 3a).",
    }
    for key, caption in captions.items():
        if key in files:
            body += b.figure(
                _need(compare / files[key], "compare"), f"compare_{Path(files[key]).name}", caption
            )
    if "change_by_type" in files:
        frame = _read(compare / files["change_by_type"])
        body += b.table(frame, "compare_change_by_type.parquet")
    return Section("refinement", title, body)


def probing_section(b: Builder) -> Section:
    """The SUPERB-style table (scores and paired differences), its figure and layer weights."""
    step = "probe"
    title = "Probing"
    folder = b.run.folder(step)
    if folder is None:
        return Section("probing", title, absent(f"Probing ({step}): {b.run.not_run(step)}."))
    comparison = _read(_need(folder / "comparison.parquet", step))
    seen, rows = set(), []
    for record in comparison.itertuples(index=False):
        for upstream, value in ((record.upstream_a, record.a), (record.upstream_b, record.b)):
            name = f"probe.{record.task}.{record.metric}.{upstream}"
            if name not in seen:
                seen.add(name)
                rows.append((f"{record.task} {record.metric}: {upstream}", b.number(name, value)))
        rows.append(
            (
                f"{record.task} {record.metric}: {record.upstream_b} - {record.upstream_a}",
                b.number(
                    f"probe.{record.task}.{record.metric}."
                    f"{record.upstream_b}_minus_{record.upstream_a}",
                    record.difference,
                )
                + (" (significant)" if record.significant else " (not significant)"),
            )
        )
    body = key_values(rows) + b.table(comparison, "probe_comparison.parquet")
    for name, caption in (
        ("comparison.png", "Probing scores per task and upstream, with intervals over seeds."),
        ("layer_weights.png", "Softmaxed layer weights of each upstream's weighted sum, per task."),
    ):
        if (folder / name).is_file():
            body += b.figure(folder / name, f"probe_{name}", caption)
    return Section("probing", title, body)


def anchoring_change_section(b: Builder) -> Section:
    """Anchoring of the refined model against the base (anchor:refined --compare-with)."""
    step = "anchor:refined"
    title = "Anchoring before and after refinement"
    folder = b.run.folder(step)
    if folder is None:
        return Section(
            "anchoring-change",
            title,
            absent(f"Anchoring of the refined model ({step}): {b.run.not_run(step)}."),
        )
    layers_path = folder / "compare_layers.parquet"
    if not layers_path.is_file():
        return Section(
            "anchoring-change",
            title,
            absent(f"{step} was run without --compare-with: no comparison."),
        )
    layers = _read(layers_path)
    body = key_values(
        [
            (
                "mean |r| change over layers",
                b.number(
                    "anchoring_change.mean_abs_r_change", float(layers["mean_abs_r_change"].mean())
                ),
            ),
            (
                "mean FDR-voxel count change over layers",
                b.number(
                    "anchoring_change.mean_n_fdr_change", float(layers["mean_n_fdr_change"].mean())
                ),
            ),
        ]
    )
    body += b.table(layers, "anchoring_change_layers.parquet")
    regions_path = folder / "compare_regions.parquet"
    if regions_path.is_file():
        regions = _read(regions_path)
        if len(regions):
            regions = regions.reindex(regions["change"].abs().sort_values(ascending=False).index)
            body += b.table(regions, "anchoring_change_regions.parquet")
    if (folder / "compare.png").is_file():
        body += b.figure(
            folder / "compare.png",
            "anchoring_change.png",
            "Anchoring of the refined model against the base, per layer and region.",
        )
    return Section("anchoring-change", title, body)


def truth_section(b: Builder) -> Section:
    """Every ground-truth check of ``truth/truth.json`` (simulated studies only)."""
    import pandas as pd

    title = "Ground truth (SIMULATED)"
    folder = b.run.folder("check_simulated")
    path = None if folder is None else folder / "truth.json"
    if path is None or not path.is_file():
        return Section("truth", title, absent("Ground truth: not checked (no truth/truth.json)."))
    record = _json(path)
    checks = record.get("checks")
    if not isinstance(checks, list):
        raise ValueError(f"{path}: 'checks' must be a list of check rows")
    columns = ["name", "description", "value", "op", "threshold", "passed", "issue"]
    for i, check in enumerate(checks):
        missing = [c for c in columns if c not in check]
        if missing:
            raise ValueError(f"{path}: check row {i} lacks {missing}")
    frame = pd.DataFrame(checks, columns=columns)
    passed = int(frame["passed"].sum())
    rows = [
        ("all checks passed", b.number("truth.passed", bool(record.get("passed")))),
        (
            "checks passed",
            f"{b.number('truth.checks_passed', passed)} of "
            f"{b.number('truth.checks', int(len(frame)))}",
        ),
    ]
    keys = [f"truth.{c['name']}" for c in checks]
    for i, check in enumerate(checks):
        key = keys[i] if keys.count(keys[i]) == 1 else f"{keys[i]}#{i}"
        verdict = (
            '<span class="pass">pass</span>'
            if check["passed"]
            else '<span class="fail">FAIL</span>'
        )
        rows.append(
            (
                check["name"],
                f"{b.number(key, check['value'])} {escape(check['op'])} "
                f"{escape(check['threshold'])} {verdict}",
            )
        )
    body = (
        '<p class="note"><span class="sim">SIMULATED.</span> Each score against the planted '
        "ground truth, at the threshold its issue set.</p>"
    )
    body += key_values(rows) + b.table(frame, "truth_checks.parquet", verdicts=("passed",))
    training = (record.get("details") or {}).get("training") or {}
    if isinstance(training.get("architecture_ceiling"), dict):
        body += _readout_ceiling(b, training, path)
    return Section("truth", title, body)


def _readout_ceiling(b: Builder, training: dict, path: Path) -> str:
    """The training part's ceilings: noise, the noise-free signals as scored, the architecture's."""
    import pandas as pd

    ceiling = training["architecture_ceiling"]
    try:
        regressors = pd.DataFrame(
            [
                {"regressor": name, "r": float(v["r"]), "alpha": float(v["alpha"])}
                for name, v in ceiling["regressors"].items()
            ]
        )
        rows = [
            ("planted noise ceilings (mean)", b.number("truth.training.noise_ceiling",
                                                       training["planted_ceiling_mean"])),
            ("noise-free planted signals, scored as stage 1",
             b.number("truth.training.signal", ceiling["signal_mean"])),
            ("architecture's ceiling", b.number("truth.training.ceiling", ceiling["mean"])),
            ("stage 1", b.number("truth.training.stage1", training["stage1"]["mean"])),
        ]  # fmt: skip
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: details.training.architecture_ceiling: {error!r}") from None
    return (
        "<p>Training ceilings (held-out r on the planted voxels of the test stories). The "
        "architecture's ceiling is a ridge readout of the frozen TR-pooled hidden states of every "
        "layer, fit to the noise-free planted signals of the training stories; the table gives "
        "its r with each planted signal.</p>"
        + key_values(rows)
        + b.table(regressors, "truth_readout.parquet")
    )


SECTIONS: tuple[Callable[[Builder], Section], ...] = (
    overview_section,
    dataset_section,
    encoding_section,
    lambda b: anchoring_section(b, "anchor:base", "base"),
    selectivity_section,
    refinement_section,
    probing_section,
    anchoring_change_section,
)


# ----------------------------------------------------------------------------- the report


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the study report of ``run_dir``; return the page's path.

    Parameters
    ----------
    run_dir : path
        A run folder (``wav2brain run`` / ``wav2brain demo``), holding ``study.json``.
    out : path, optional
        The page (default ``RUN/report.html``); its figures and tables go to the folder of the
        same name without the suffix (``RUN/report/``).

    Raises
    ------
    FileNotFoundError
        No ``study.json``; a step's output folder (or a file in it) is missing (named).
    ValueError
        ``study.json`` or a step's JSON is malformed (the file named).
    """
    from wav2brain.atomic import replace_directory, write_text_atomic

    run = StudyRun.read(run_dir)
    check_label(run)
    page = Path(out) if out is not None else run.root / REPORT_FILE
    if page.suffix != ".html":
        raise ValueError(f"--out {page}: the report is an .html file")
    folder = page.with_suffix("")
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        builder = Builder(run, staging)
        sections = [write(builder) for write in SECTIONS]
        if run.simulated:
            sections.append(truth_section(builder))
        write_text_atomic(
            json.dumps(builder.headline.values, indent=2, sort_keys=True) + "\n",
            staging / HEADLINE_FILE,
        )
        from wav2brain.reports.page import document

        text = document(
            f"wav2brain study report: {run.name}" + (" (SIMULATED)" if run.simulated else ""),
            f"Run folder {escape(run.root)}; figures and tables in {escape(folder.name)}/.",
            sections,
            run.simulated,
        )
        replace_directory(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(text, page)
    logger.info("study report %s (%d files in %s)", page, len(builder.files), folder)
    return page


def read_headline(folder: str | Path) -> Mapping[str, Any]:
    """The headline numbers of a report folder (``RUN/report/headline.json``)."""
    return _json(Path(folder) / HEADLINE_FILE)
