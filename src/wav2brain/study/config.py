"""The study file: one YAML that names the data, the models and the steps of a whole study.

A study file has five sections besides ``name``, ``out`` and ``processes``::

    name: sim                      # the study's name (report title, study.json)
    out: runs/sim                  # run folder: every step writes under it
    processes: 1                   # processes of the sharded steps (> 1: torchrun)
    data:                          # exactly one of simulate, bids, prepared
      simulate: {size: demo, seed: 0}
      bids: null                   # a BIDS root, prepared into OUT/dataset
      prepared: null               # a folder `wav2brain prepare` (or a dataset script) wrote
      subjects: []                 # prepare --subjects
      tasks: []                    # prepare --tasks
      mask: null                   # prepare --mask (NIfTI or .npy)
      atlas: null                  # anchor --atlas
      atlas_labels: null           # anchor --atlas-labels
      prepare: {}                  # any other prepare option, e.g. {derivatives: D, exclude: F}
    models:
      base: null                   # Hub id or folder (simulated data: null = the simulator's model)
      revision: null               # Hub revision of base
    refine:                        # null: no refinement (and no refined steps)
      recipe: hf_configs/refine_sim.yaml
      options: {max_steps: 400}    # recipe options (wav2brain train RECIPE --key value)
    probe:                         # null: no probing
      tasks: [ks, ic, sid, asv]
      size: small
      seed: 0
      tasks_dir: null              # existing task folders (default: made by probe_tasks)
    steps:                         # which steps run, each with extra options of its command
      extract:base: {batch-size: 4}
      encode:base: {alphas: [1, 10, 100]}

Without ``steps`` every step that applies runs with its defaults; with it, only the listed ones
(in the fixed order of :data:`wav2brain.study.steps.STEP_ORDER`). Step options are the command's
own options without the leading dashes, spelt as the command spells them (``drift-order`` for
prepare, ``max_steps`` for the recipe): ``true`` is a bare flag (``no-maps: true``), a list gives
several values. Relative paths are relative to the directory the study runs from, as in the
recipes (``wav2brain demo`` resolves its shipped study file against the repository instead).

Every key is checked when the file is read: an unknown key is a ValueError naming it and its
section; with ``check_paths`` (the default) every path the file names must exist, else a
FileNotFoundError names it. Both happen before any step runs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_LEVEL = "top level"
"""The ``where`` of the study file's own keys in messages."""

RECIPE_INPUT_OPTIONS = ("voxel_selection",)
"""Recipe options naming input files that a study leaves to the recipe (checked at start)."""

PATH_OPTIONS = frozenset(
    {
        "mask",
        "mapping",
        "exclude",
        "derivatives",
        "derivatives-masks",
        "card",
        "atlas",
        "atlas-labels",
        "split",
        "sweep",
        "voxel_selection",
    }
)
"""Step and recipe options whose value is an input path (checked like the file's own paths)."""

SIMULATE_KEYS = frozenset({"size", "seed", "subjects", "stories", "runs", "story_duration", "tr"})
"""Keys of ``data.simulate``: ``wav2brain simulate`` options (``--story-duration`` etc.)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the study's audio and BOLD come from (exactly one of simulate, bids, prepared).

    Attributes
    ----------
    simulate : dict or None
        ``wav2brain simulate`` options (:data:`SIMULATE_KEYS`; ``story_duration`` in seconds):
        the study simulates its own BIDS dataset into ``OUT/bids``.
    bids : Path or None
        A BIDS root prepared into ``OUT/dataset`` (read in place, never copied).
    prepared : Path or None
        A prepared dataset folder (no prepare step).
    subjects, tasks : tuple of str
        Subjects and tasks kept by prepare (empty: all).
    mask : Path or None
        Brain or ROI mask of prepare (simulated data: the simulator's brain mask when not given).
    atlas, atlas_labels : Path or None
        Label image and its labels table for anchoring's regions (simulated data: its planted
        clusters; real MNI data without one: nilearn's offline Seitzman 2018 networks).
    prepare : dict
        Any other ``wav2brain prepare`` option.
    """

    simulate: dict[str, Any] | None = None
    bids: Path | None = None
    prepared: Path | None = None
    subjects: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    mask: Path | None = None
    atlas: Path | None = None
    atlas_labels: Path | None = None
    prepare: dict[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        """Whether the study simulates its data."""
        return self.simulate is not None

    def ground_truth(self, out: Path) -> Path | None:
        """The simulator's ground-truth folder of the study's data, or None for real data.

        ``OUT/bids/derivatives/ground_truth`` when the study simulates; else that of the BIDS
        root (or of the BIDS root a prepared folder was made from) when it holds one: a
        simulated dataset laid out anew or prepared elsewhere is still SIMULATED, and its
        ground truth still applies.
        """
        from wav2brain.simulation.files import GROUND_TRUTH_DIR
        from wav2brain.simulation.truth import ground_truth_folder

        if self.simulate is not None:
            return Path(out) / "bids" / GROUND_TRUTH_DIR
        root = self.bids
        if self.prepared is not None:
            from wav2brain.data.prepare import prepared_bids_root

            root = prepared_bids_root(self.prepared)
        return ground_truth_folder(root)


@dataclass(frozen=True)
class ModelsConfig:
    """The base model of every step.

    Attributes
    ----------
    base : str or None
        Hub id or local folder; None only for simulated data (the simulator's planted model).
    revision : str or None
        Hub revision (branch, tag or commit) of ``base``.
    """

    base: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class RefineConfig:
    """The brain refinement (``wav2brain train RECIPE``).

    Attributes
    ----------
    recipe : Path
        Recipe YAML (``hf_configs/refine_*.yaml``); the study sets its model, dataset and output
        folder (and, for simulated data, the planted clusters as voxel selection).
    options : dict
        Recipe options that override the recipe's values (``max_steps: 200``).
    """

    recipe: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeConfig:
    """SUPERB-style probing of the base and refined models.

    Attributes
    ----------
    tasks : tuple of str
        Task names (``wav2brain make-probe-tasks --tasks``).
    size : str
        Task preset (``small``: a few hundred clips; ``default``: about 3,000 utterances).
    seed : int
        Seed of the synthesised tasks.
    tasks_dir : Path or None
        Existing task folders (then no probe_tasks step).
    """

    tasks: tuple[str, ...] = ("ks", "ic", "sid", "asv")
    size: str = "small"
    seed: int = 0
    tasks_dir: Path | None = None


@dataclass(frozen=True)
class StudyConfig:
    """A whole study (see the module docstring for the file form).

    Attributes
    ----------
    name : str
        The study's name.
    out : Path
        Run folder.
    data, models : DataConfig, ModelsConfig
    refine : RefineConfig or None
    probe : ProbeConfig or None
    processes : int
        Processes of the sharded steps (extract, encode, anchor, selectivity, probe); above 1 each
        runs under ``torch.distributed.run``.
    steps : dict or None
        Step id → extra options of its command; None: every step that applies, with defaults.
    """

    name: str
    out: Path
    data: DataConfig
    models: ModelsConfig = field(default_factory=ModelsConfig)
    refine: RefineConfig | None = None
    probe: ProbeConfig | None = None
    processes: int = 1
    steps: dict[str, dict[str, Any]] | None = None

    @classmethod
    def from_yaml(
        cls, path: str | Path, *, check_paths: bool = True, root: str | Path | None = None
    ) -> StudyConfig:
        """Read and check a study file.

        Parameters
        ----------
        path : str or Path
            The YAML file.
        check_paths : bool
            Require every path the file names to exist (False: parse only, e.g. to check the
            shipped study files on a machine without their data).
        root : str or Path, optional
            Folder that relative paths are relative to (default: the current directory).

        Raises
        ------
        FileNotFoundError
            The file, or (with ``check_paths``) a path it names, does not exist.
        ValueError
            Not a regular file or not YAML; an unknown key (named with its section), a missing
            or ill-typed value.
        """
        from wav2brain.yamlfile import read_yaml

        path = Path(path)
        raw = read_yaml(path, "study file")
        if raw is None:
            raise ValueError(f"study file {path} is empty: expected a mapping of sections")
        if not isinstance(raw, Mapping):
            raise ValueError(f"study file {path}: expected a mapping of sections, got {raw!r}")
        try:
            return cls.from_dict(raw, check_paths=check_paths, root=root)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"study file {path}: {error}") from None

    @classmethod
    def from_dict(
        cls,
        raw: Mapping[str, Any],
        *,
        check_paths: bool = True,
        root: str | Path | None = None,
    ) -> StudyConfig:
        """Build and check a study from its mapping (as :meth:`from_yaml`, without the file)."""
        base = Path(root) if root is not None else Path()
        _known(raw, cls, TOP_LEVEL)
        for required in ("name", "out", "data"):
            if raw.get(required) is None:
                raise ValueError(f"{required!r} is required at the top level")
        data = _data(raw["data"], base)
        models = raw.get("models") or {}
        _known(models, ModelsConfig, "models")
        models = ModelsConfig(
            base=_optional_str(models.get("base"), "models.base"),
            revision=_optional_str(models.get("revision"), "models.revision"),
        )
        if models.base is None and data.ground_truth(_path(raw["out"], base)) is None:
            raise ValueError(
                "models.base is required unless the data are simulated (data.simulate, or a "
                "BIDS root or prepared folder holding the simulator's ground truth)"
            )
        refine = None
        if raw.get("refine") is not None:
            section = raw["refine"]
            _known(section, RefineConfig, "refine")
            if section.get("recipe") is None:
                raise ValueError(
                    "refine.recipe is required (a recipe YAML, hf_configs/refine_*.yaml)"
                )
            refine = RefineConfig(
                recipe=_path(section["recipe"], base),
                options=_options(section.get("options"), "refine.options", base),
            )
        probe = None
        if raw.get("probe") is not None:
            section = raw["probe"]
            _known(section, ProbeConfig, "probe")
            tasks = section.get("tasks", ProbeConfig.tasks)
            tasks = tasks.split(",") if isinstance(tasks, str) else tasks
            probe = ProbeConfig(
                tasks=_strings(tasks, "probe.tasks"),
                size=str(section.get("size", ProbeConfig.size)),
                seed=_integer(section.get("seed", ProbeConfig.seed), "probe.seed", 0),
                tasks_dir=_optional_path(section.get("tasks_dir"), base),
            )
            if not probe.tasks:
                raise ValueError("probe.tasks is empty: name at least one task, or set probe: null")
        steps = raw.get("steps")
        if steps is not None:
            if not isinstance(steps, Mapping):
                raise ValueError(f"steps: expected a mapping of step id -> options, got {steps!r}")
            steps = {str(k): _options(v, f"steps.{k}", base) for k, v in steps.items()}
        config = cls(
            name=str(raw["name"]),
            out=_path(raw["out"], base),
            data=data,
            models=models,
            refine=refine,
            probe=probe,
            processes=_integer(raw.get("processes", 1), "processes", 1),
            steps=steps,
        )
        from wav2brain.study.steps import check_step_ids

        check_step_ids(config)
        if check_paths:
            config.check_paths()
        return config

    def input_paths(self) -> list[tuple[str, Path]]:
        """Every input path the study names, with where it is named."""
        named = [
            (f"data.{key}", getattr(self.data, key))
            for key in ("bids", "prepared", "mask", "atlas", "atlas_labels")
        ]
        if self.refine is not None:
            named.append(("refine.recipe", self.refine.recipe))
            named += _option_paths(self.refine.options, "refine.options")
            named += self.recipe_input_paths()
        if self.probe is not None:
            named.append(("probe.tasks_dir", self.probe.tasks_dir))
        named += _option_paths(self.data.prepare, "data.prepare")
        for step, options in (self.steps or {}).items():
            named += _option_paths(options, f"steps.{step}")
        return [(where, path) for where, path in named if path is not None]

    def recipe_input_paths(self) -> list[tuple[str, Path]]:
        """Input paths of the recipe file that the study does not set itself (the voxel
        selection of real data), as ``train`` reads them: relative to the current folder."""
        from wav2brain.training.arguments import read_recipe

        recipe = self.refine.recipe
        if not recipe.is_file():
            return []  # named as missing by refine.recipe
        options = read_recipe(recipe)
        ours = {"model_name_or_path", "dataset", "output_dir", *self.refine.options}
        if self.data.ground_truth(self.out) is not None:
            ours.add("voxel_selection")  # the planted clusters (wav2brain.study.steps)
        return [
            (f"refine.recipe {recipe}: {key}", Path(str(options[key])).expanduser())
            for key in RECIPE_INPUT_OPTIONS
            if options.get(key) is not None and key not in ours
        ]

    def check_paths(self) -> None:
        """Raise FileNotFoundError naming the first input path that does not exist, or a
        ``models.base`` that is neither a checkpoint folder nor of a Hub id's form."""
        from wav2brain.features.extract import checkpoint_path

        for where, path in self.input_paths():
            if not path.exists():
                relative = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
                raise FileNotFoundError(f"{where}: {path} does not exist{relative}")
        if self.models.base is not None:  # a folder with config.json, or of a Hub id's form
            checkpoint_path(self.models.base, "models.base")

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as JSON-ready values (as recorded in study.json)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some top-level fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _data(section: Any, base: Path) -> DataConfig:
    if not isinstance(section, Mapping):
        raise ValueError(f"data: expected a mapping, got {section!r}")
    _known(section, DataConfig, "data")
    sources = [key for key in ("simulate", "bids", "prepared") if section.get(key) is not None]
    if len(sources) != 1:
        raise ValueError(
            "data: give exactly one of simulate, bids, prepared"
            + (f" (got {', '.join(sources)})" if sources else "")
        )
    simulate = section.get("simulate")
    if simulate is not None:
        if not isinstance(simulate, Mapping):
            raise ValueError(f"data.simulate: expected a mapping of options, got {simulate!r}")
        unknown = sorted(set(simulate) - SIMULATE_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key {unknown[0]!r} in section data.simulate "
                f"(expected one of {', '.join(sorted(SIMULATE_KEYS))})"
            )
        simulate = dict(simulate)
    return DataConfig(
        simulate=simulate,
        bids=_optional_path(section.get("bids"), base),
        prepared=_optional_path(section.get("prepared"), base),
        subjects=_strings(section.get("subjects") or (), "data.subjects"),
        tasks=_strings(section.get("tasks") or (), "data.tasks"),
        mask=_optional_path(section.get("mask"), base),
        atlas=_optional_path(section.get("atlas"), base),
        atlas_labels=_optional_path(section.get("atlas_labels"), base),
        prepare=_options(section.get("prepare"), "data.prepare", base),
    )


def _known(section: Any, cls: type, where: str) -> None:
    """Refuse a section that is not a mapping or has a key that ``cls`` does not have."""
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {section!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    place = "at the top level" if where == TOP_LEVEL else f"in section {where}"
    for key in section:
        if key not in fields:
            raise ValueError(f"unknown key {key!r} {place} (expected one of {', '.join(fields)})")


def _options(value: Any, where: str, base: Path) -> dict[str, Any]:
    """Command options of a step: names without dashes, scalar or list values; paths resolved."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of option -> value, got {value!r}")
    options = {}
    for key, item in value.items():
        key = str(key)
        if key.startswith("-"):
            raise ValueError(f"{where}: option {key!r}: write it without the leading dashes")
        if item is None or isinstance(item, Mapping):
            raise ValueError(f"{where}.{key}: expected a value or a list of values, got {item!r}")
        if key in PATH_OPTIONS and isinstance(item, str):
            item = str(_path(item, base))
        options[key] = list(item) if isinstance(item, list | tuple) else item
    return options


def _option_paths(options: Mapping[str, Any], where: str) -> list[tuple[str, Path]]:
    return [(f"{where}.{k}", Path(v)) for k, v in options.items() if k in PATH_OPTIONS]


def _path(value: Any, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _optional_path(value: Any, base: Path) -> Path | None:
    return None if value is None else _path(value, base)


def _optional_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return tuple(str(item).strip() for item in value)


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value
