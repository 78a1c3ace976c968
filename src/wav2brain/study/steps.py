"""The steps of a study: which apply, in what order, what each reads and the command it runs.

Each step is one public subcommand (``wav2brain <command> ...``) writing one folder (or file)
under the run folder ``RUN`` (interface A of issue 12)::

    simulate          wav2brain simulate --out RUN/bids            (simulated data only)
    prepare           wav2brain prepare BIDS --out RUN/dataset     (unless data.prepared)
    extract:base      wav2brain extract DATASET --model BASE       RUN/features/base
    encode:base       wav2brain encode DATASET --features ...      RUN/encoding/base
    selectivity:base  wav2brain selectivity --model BASE           RUN/selectivity/base
    anchor:base       wav2brain anchor DATASET --features ...      RUN/anchoring/base
    refine            wav2brain train RECIPE --output_dir RUN/refine
    refine:control    the same, stories shuffled, no stage 2       RUN/refine_control (simulated)
    extract:refined   wav2brain extract --model REFINED            RUN/features/refined
    anchor:refined    wav2brain anchor ... --compare-with base     RUN/anchoring/refined
    compare           wav2brain compare-models STAGE1 REFINED      RUN/compare
    probe_tasks       wav2brain make-probe-tasks                   RUN/probe_tasks
    probe             wav2brain probe --upstream base=BASE ...     RUN/probe
    check_simulated   wav2brain check-simulated --exit-zero        RUN/truth (simulated only)
    report            wav2brain report RUN                         RUN/report.html, RUN/report/

``BASE`` is ``models.base`` or, for simulated data, the simulator's planted model
(``bids/derivatives/ground_truth/model``); ``REFINED`` is ``RUN/refine/export/backbone`` (for
compare-models, which needs brain-encoding models on both sides, ``STAGE1`` is
``RUN/refine/stage1/final``, the base backbone with its trained head, and ``REFINED`` is
``RUN/refine/final``). The
ground-truth checks apply only when the simulator's own model is the base (with another model the
simulated BOLD is still driven by the simulator's model, so nothing planted is to be found in the
other model's units): with ``models.base`` set on simulated data, check_simulated does not apply.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wav2brain import __version__
from wav2brain.study.config import StudyConfig

STEP_ORDER: tuple[str, ...] = (
    "simulate",
    "prepare",
    "extract:base",
    "encode:base",
    "selectivity:base",
    "anchor:base",
    "refine",
    "refine:control",
    "extract:refined",
    "anchor:refined",
    "compare",
    "probe_tasks",
    "probe",
    "check_simulated",
    "report",
)
"""Every step, in the order a study runs them."""

SHARDED = frozenset(
    {"extract:base", "encode:base", "selectivity:base", "anchor:base", "extract:refined"}
    | {"anchor:refined", "probe"}
)
"""Steps that split their stimuli or subjects over ``processes`` (interface D)."""

FRESH_ON_CHANGE = frozenset({"simulate", "prepare", "refine", "refine:control", "probe_tasks"})
"""Steps whose command refuses, or would resume, a folder made with other options (a simulation,
a prepared folder, a training run, task folders): when their digest changes, their old output
folder is removed first. The other commands keep per-subject or per-stimulus parts under digests
of their inputs, so a changed step reuses what still holds."""

RECIPE_STEPS = frozenset({"refine", "refine:control"})
"""Steps whose options are recipe options (``--key value``, booleans as ``true``/``false``)."""


@dataclass(frozen=True)
class Step:
    """One planned step.

    Attributes
    ----------
    id : str
        Step id (:data:`STEP_ORDER`).
    argv : list of str
        The subcommand and its arguments (``wav2brain.cli.main(argv)``).
    out : Path
        What it writes (absolute).
    depends : tuple of str
        Ids of the steps whose outputs it reads.
    digest : str
        SHA-256 of its argv (run folder written ``$RUN``), its inputs' digests and the content of
        the files that configure it (the recipe); set by :func:`plan_study`.
    writes : tuple of Path
        Everything it writes (``out``, and the report's folder of figures).
    """

    id: str
    argv: list[str]
    out: Path
    depends: tuple[str, ...] = ()
    digest: str = ""
    config_files: tuple[Path, ...] = field(default=(), repr=False)
    writes: tuple[Path, ...] = ()

    @property
    def sharded(self) -> bool:
        """Whether the step splits its work over processes."""
        return self.id in SHARDED


def applicable_steps(config: StudyConfig) -> tuple[str, ...]:
    """The steps that apply to a study, in order (what runs when ``steps`` is not given)."""
    simulated = config.data.simulated
    truth_folder = config.data.ground_truth(Path(config.out).absolute())
    truth = truth_folder is not None
    refine = config.refine is not None
    probe = config.probe is not None
    return tuple(
        step
        for step in STEP_ORDER
        if {
            "simulate": simulated,
            "prepare": config.data.prepared is None,
            "refine": refine,
            "refine:control": refine and truth,
            "extract:refined": refine,
            "anchor:refined": refine,
            "compare": refine,
            "probe_tasks": probe and config.probe.tasks_dir is None,
            "probe": probe,
            "check_simulated": truth and planted_base(config, truth_folder),
        }.get(step, True)
    )


def planted_base(config: StudyConfig, truth: Path | None) -> bool:
    """Whether the base model is the simulator's planted one: ``models.base`` null, or naming
    the ground truth's own ``model`` folder."""
    base = config.models.base
    if base is None:
        return True
    return truth is not None and Path(base).expanduser().resolve() == (truth / "model").resolve()


def not_applicable_reason(config: StudyConfig, step: str) -> str:
    """Why ``step`` does not apply to the study (for errors and logs)."""
    if step == "simulate" and not config.data.simulated:
        return "it needs data.simulate"
    truth = config.data.ground_truth(Path(config.out).absolute())
    if step in ("refine:control", "check_simulated") and truth is None:
        return (
            "it needs simulated data (data.simulate, or a BIDS root or prepared folder holding "
            "the simulator's ground truth)"
        )
    if step == "check_simulated":
        return (
            f"models.base is {config.models.base!r}, not the simulator's model: the simulated BOLD "
            "is driven by the simulator's model, so its ground truth says nothing about this one"
        )
    if step == "prepare":
        return "data.prepared names a prepared folder"
    if step == "probe_tasks":
        return "the probe section is null or names its tasks_dir"
    if step == "probe":
        return "the probe section is null"
    return "the refine section is null"


def check_step_ids(config: StudyConfig) -> None:
    """Refuse an unknown step id, or a listed step that does not apply, in ``config.steps``."""
    applicable = applicable_steps(config)
    for step in config.steps or {}:
        if step not in STEP_ORDER:
            raise ValueError(
                f"unknown key {step!r} in section steps (expected step ids: {', '.join(STEP_ORDER)})"
            )
        if step not in applicable:
            raise ValueError(f"steps.{step}: does not apply: {not_applicable_reason(config, step)}")
    if "refine:control" in study_steps(config) and config.data.simulate is not None:
        _check_control_stories(config)  # a missing recipe is named by the path checks


def _check_control_stories(config: StudyConfig) -> None:
    """The shuffled-stories control pairs each training story with another one's BOLD: refuse,
    at start, a simulation with fewer than two training stories (the recipe's split counts)."""
    from wav2brain.simulation.configuration import SimulationConfig
    from wav2brain.training.arguments import DataArguments, read_recipe

    simulate = config.data.simulate
    stories = simulate.get("stories")
    if stories is None:
        stories = SimulationConfig.from_size(str(simulate.get("size", "test"))).n_stories
    if not config.refine.recipe.is_file():
        return
    options = {**read_recipe(config.refine.recipe), **config.refine.options}
    if options.get("train_units") is not None:
        train = len(options["train_units"])
    else:
        held_out = [
            len(options[f"{split}_units"])
            if options.get(f"{split}_units") is not None
            else int(options.get(f"n_{split}", getattr(DataArguments, f"n_{split}")))
            for split in ("test", "validation")
        ]
        train = int(stories) - sum(held_out)
    if train < 2:
        raise ValueError(
            f"refine:control (the shuffled-stories control) needs at least two training stories: "
            f"the simulation has {stories} and the recipe holds out the others, leaving {train}; "
            "simulate more (data.simulate.stories), set refine.options n_validation: 0, or leave "
            "refine:control out of steps"
        )


def study_steps(config: StudyConfig) -> tuple[str, ...]:
    """The steps the study runs: those listed in ``steps`` (in order), else every applicable one."""
    applicable = applicable_steps(config)
    if config.steps is None:
        return applicable
    return tuple(step for step in applicable if step in config.steps)


@dataclass(frozen=True)
class _Paths:
    """Where the study's inputs and outputs live."""

    run: Path
    bids: Path | None
    dataset: Path
    truth: Path | None
    base: str
    refined: Path
    tasks_dir: Path | None


def _paths(config: StudyConfig, run: Path) -> _Paths:

    bids = run / "bids" if config.data.simulated else config.data.bids
    truth = config.data.ground_truth(run)
    dataset = config.data.prepared if config.data.prepared is not None else run / "dataset"
    base = config.models.base if config.models.base is not None else str(truth / "model")
    tasks_dir = None
    if config.probe is not None:
        tasks_dir = config.probe.tasks_dir or run / "probe_tasks"
    return _Paths(
        run, bids, dataset, truth, base, run / "refine" / "export" / "backbone", tasks_dir
    )


def plan_study(config: StudyConfig, *, applicable: bool = False) -> list[Step]:
    """Every step the study runs, in order, with its argv, inputs and digest.

    Digests are computed for every applicable step (a step not run now still has the digest it
    would have), so a step's digest changes exactly when its own command, its recipe, what it
    reads from outside the run folder (:func:`external_inputs`: a BIDS root, a mask, a model
    folder, each by :func:`tree_fingerprint`), the wav2brain version (a new release's steps
    are not taken for an older one's) or any step it depends on changes. ``applicable=True`` returns every applicable step, also those the
    study's ``steps`` leave out (the producers a listed step may need).
    """
    run = Path(config.out).absolute()
    paths = _paths(config, run)
    selected = study_steps(config)
    steps: dict[str, Step] = {}
    fingerprints: dict[Path, str] = {}
    for step_id in applicable_steps(config):
        argv, out, depends, files = _build(step_id, config, paths, selected)
        options = (config.steps or {}).get(step_id, {})
        argv = argv + option_argv(options, recipe=step_id in RECIPE_STEPS)
        depends = tuple(d for d in depends if d in steps)
        writes = (out, run / "report") if step_id == "report" else (out,)
        external = [p for p in external_inputs(argv, run) if p not in map(Path, files)]
        if step_id in RECIPE_STEPS:  # inputs the recipe file itself names (real data)
            external += [p.absolute() for _, p in config.recipe_input_paths() if p.exists()]
        for path in external:
            if path not in fingerprints:
                fingerprints[path] = tree_fingerprint(path, skip=run)
        digest = _digest(
            __version__,
            [a.replace(str(run), "$RUN") for a in argv],
            [steps[d].digest for d in depends],
            [_file_digest(f) for f in files],
            [[str(path), fingerprints[path]] for path in external],
        )
        steps[step_id] = Step(step_id, argv, out, depends, digest, files, writes)
    return list(steps.values()) if applicable else [steps[s] for s in selected]


def _build(step: str, config: StudyConfig, p: _Paths, selected: Iterable[str]):
    """argv (without the step's options), out, producing steps read, files that configure it."""
    data, run = config.data, p.run
    revision = ["--revision", config.models.revision] if config.models.revision else []
    features, anchoring = run / "features", run / "anchoring"
    regions: list[str] = []
    if data.atlas is not None:
        regions = ["--atlas", str(data.atlas)]
        regions += ["--atlas-labels", str(data.atlas_labels)] if data.atlas_labels else []
    elif p.truth is not None:
        regions = ["--truth", str(p.truth)]
    if step == "simulate":
        argv = ["simulate", "--out", str(p.bids)]
        for key, value in data.simulate.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv, p.bids, (), ()
    if step == "prepare":
        argv = ["prepare", str(p.bids), "--out", str(p.dataset)]
        mask = data.mask
        if mask is None and p.truth is not None:
            mask = p.truth / "brain_mask.nii.gz"
        argv += ["--mask", str(mask)] if mask is not None else []
        argv += ["--subjects", *data.subjects] if data.subjects else []
        argv += ["--tasks", *data.tasks] if data.tasks else []
        return argv + option_argv(data.prepare), p.dataset, ("simulate",), ()
    if step.startswith("extract:"):
        model = p.base if step == "extract:base" else str(p.refined)
        depends = ("prepare",) if step == "extract:base" else ("prepare", "refine")
        out = features / step.split(":")[1]
        argv = ["extract", str(p.dataset), "--model", model, "--out", str(out)]
        return argv + (revision if step == "extract:base" else []), out, depends, ()
    if step == "encode:base":
        out = run / "encoding" / "base"
        argv = ["encode", str(p.dataset), "--features", str(features / "base"), "--out", str(out)]
        return argv, out, ("prepare", "extract:base"), ()
    if step == "selectivity:base":
        out = run / "selectivity" / "base"
        argv = ["selectivity", "--dataset", str(p.dataset), "--model", p.base, "--out", str(out)]
        return argv + revision, out, ("prepare",), ()
    if step == "anchor:base":
        out = anchoring / "base"
        argv = ["anchor", str(p.dataset), "--features", str(features / "base"), "--out", str(out)]
        depends = ["prepare", "extract:base"]
        if "selectivity:base" in selected:
            argv += ["--selectivity", str(run / "selectivity" / "base")]
            depends.append("selectivity:base")
        return argv + regions, out, tuple(depends), ()
    if step in ("refine", "refine:control"):
        out = run / ("refine" if step == "refine" else "refine_control")
        argv = ["train", str(config.refine.recipe), "--model_name_or_path", p.base]
        argv += ["--dataset", str(p.dataset), "--output_dir", str(out)]
        argv += ["--resume_from_checkpoint", "true"]
        if p.truth is not None and "voxel_selection" not in config.refine.options:
            argv += ["--voxel_selection", str(p.truth / "clusters.nii.gz")]
        options = dict(config.refine.options)
        if step == "refine:control":
            options.update(shuffle_train_stories=True, stage2_max_steps=0)
        argv += option_argv(options, recipe=True)
        return argv, out, ("simulate", "prepare"), (config.refine.recipe,)
    if step == "anchor:refined":
        out = anchoring / "refined"
        argv = ["anchor", str(p.dataset), "--features", str(features / "refined")]
        argv += ["--out", str(out), "--compare-with", str(anchoring / "base"), *regions]
        return argv, out, ("prepare", "extract:refined", "anchor:base"), ()
    if step == "compare":
        # the base backbone with its trained head (stage 1, backbone frozen) against the refined
        # model: parameter change (Figure 2), layer weights (Figure 4) and held-out accuracy per
        # voxel (Figure 3b) on the recipe's test stories and voxel selection (--recipe-run)
        refine = run / "refine"
        stage1, final = refine / "stage1" / "final", refine / "final"
        argv = ["compare-models", str(stage1), str(final), "--labels", "base", "refined"]
        argv += ["--recipe-run", str(refine), "--out", str(run / "compare")]
        return argv, run / "compare", ("prepare", "refine"), ()
    if step == "probe_tasks":
        argv = [
            "make-probe-tasks",
            "--out",
            str(p.tasks_dir),
            "--tasks",
            ",".join(config.probe.tasks),
        ]
        argv += ["--seed", str(config.probe.seed), "--size", config.probe.size]
        return argv, p.tasks_dir, (), ()
    if step == "probe":
        out = run / "probe"
        argv = ["probe", "--upstream", f"base={p.base}"]
        argv += ["--upstream", f"refined={p.refined}"] if config.refine is not None else []
        argv += ["--tasks", ",".join(config.probe.tasks), "--tasks-dir", str(p.tasks_dir)]
        return argv + ["--out", str(out)], out, ("probe_tasks", "refine"), ()
    if step == "check_simulated":
        out = run / "truth"
        argv = ["check-simulated", "--truth", str(p.truth), "--dataset", str(p.dataset)]
        depends = ["simulate", "prepare"]
        inputs = {
            "extract:base": ["--features", str(features / "base")],
            "anchor:base": ["--anchoring", str(anchoring / "base")],
            "refine": ["--refine", str(run / "refine")],
            "refine:control": ["--refine-control", str(run / "refine_control")],
        }
        for producer, flags in inputs.items():
            if producer in selected:
                argv += flags
                depends.append(producer)
        # --exit-zero: failed checks are rendered by the report; run_study reports the verdict
        return argv + ["--out", str(out), "--exit-zero"], out, tuple(depends), ()
    if step == "report":
        others = tuple(s for s in selected if s != "report")
        return ["report", str(run)], run / "report.html", others, ()
    raise ValueError(f"unknown step {step!r}")


def option_argv(options: Mapping[str, Any], *, recipe: bool = False) -> list[str]:
    """Command-line arguments for a mapping of options (see :mod:`wav2brain.study.config`).

    ``true`` is a bare flag (recipe options: the value ``true``); ``false`` is refused outside
    recipes, where a flag cannot be given a value (use the command's ``no-...`` flag).
    """
    argv: list[str] = []
    for key, value in options.items():
        flag = f"--{key}"
        if isinstance(value, bool):
            if recipe:
                argv += [flag, str(value).lower()]
            elif value:
                argv.append(flag)
            else:
                raise ValueError(
                    f"option {key}: false cannot be given to a flag; leave the option out "
                    "(or use the command's no- flag)"
                )
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def external_inputs(argv: Iterable[str], run: Path) -> list[Path]:
    """The existing files and folders a command line names outside the run folder, sorted.

    Every argument is a candidate (``name=path`` arguments by their path unless the whole
    argument is a path; relative paths from the current folder, as the commands read them);
    what lies in the run folder is made by the study's own steps and enters a digest through
    theirs (a folder holding the run folder is fingerprinted without it: :func:`tree_fingerprint`).
    """
    found = set()
    for token in argv:
        if token.startswith("-") or not token:
            continue
        candidates = [token] + ([token.split("=", 1)[1]] if "=" in token else [])
        path = next(
            (
                Path(c).expanduser().absolute()
                for c in candidates
                if c and Path(c).expanduser().exists()
            ),
            None,
        )
        if path is None or path == run or run in path.parents:
            continue
        found.add(path)
    return sorted(found)


def tree_fingerprint(path: Path, skip: Path | None = None) -> str:
    """SHA-256 of a file's size and modification time, or of every file's under a folder
    (relative path, size, modification time in ns): an edited, added or removed file changes
    it, without reading any data. Our choice: metadata, not content, so that a BIDS root of
    thousands of NIfTI files costs one ``stat`` per file; a copy that refreshes modification
    times counts as a change (the step reruns).

    Not walked: ``skip`` (the run folder, which may sit inside a BIDS root's ``derivatives/``:
    the study's own outputs must not change its inputs' fingerprint), hidden folders (``.git``,
    ``.datalad``: BIDS ignores them), and a folder reached again through a symbolic link.
    """
    digest = hashlib.sha256()
    if path.is_file():
        stat = path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()
    skipped = None if skip is None else Path(skip).resolve()
    seen: set[Path] = set()
    for folder, subfolders, names in os.walk(path, followlinks=True):
        real = Path(folder).resolve()
        if real in seen or real == skipped:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            file = Path(folder) / name
            try:
                stat = file.stat()
            except FileNotFoundError:  # a dangling link
                continue
            relative = file.relative_to(path).as_posix()
            digest.update(f"{relative}\0{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else f"missing:{path}"
