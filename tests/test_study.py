"""``wav2brain run``: the study file, its checks, the step plan, resume and dry runs.

The runner's bookkeeping is tested with a stand-in for the step execution (each "command" only
creates its output folder), so that every case takes milliseconds; tests/test_demo.py runs real
commands end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wav2brain.cli import main
from wav2brain.study import StudyConfig, plan_study, read_record, run_study
from wav2brain.study import runner as study_runner

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "hf_configs").glob("study_*.yaml"))
CHEAP_STEPS = ("simulate", "prepare", "extract:base", "encode:base", "selectivity:base")
CHEAP_STEPS += ("anchor:base",)


def write_study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text.format(tmp=tmp_path, repo=REPO))
    return path


SIM_STUDY = """
name: t
out: {tmp}/run
data:
  simulate: {{size: test, seed: 0}}
steps:
  simulate: {{}}
  prepare: {{drift-order: 2}}
  extract:base: {{}}
  encode:base: {{alphas: [1, 10]}}
  selectivity:base: {{}}
  anchor:base: {{}}
"""


@pytest.fixture
def executed(monkeypatch):
    """Replace step execution by creating each step's output; return the ids run, in order."""
    calls: list[str] = []

    def fake(step, processes):
        calls.append(step.id)
        step.out.mkdir(parents=True, exist_ok=True)
        (step.out / "done.txt").write_text(" ".join(step.argv))
        return 0.01

    monkeypatch.setattr(study_runner, "_execute", fake)
    return calls


def silent(*args) -> None:
    return None


# --- the study file -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_study_file_parses_and_plans(path):
    config = StudyConfig.from_yaml(path, check_paths=False)
    steps = plan_study(config)
    assert steps and steps[-1].id == "report"
    assert all(step.argv[0] for step in steps)
    assert config.to_dict()["name"] == config.name


def test_shipped_study_files_are_the_three_named():
    assert [p.name for p in SHIPPED] == [
        "study_lebel.yaml",
        "study_narratives.yaml",
        "study_sim.yaml",
    ]


def test_shipped_simulated_study_checks_its_paths_from_the_repository():
    config = StudyConfig.from_yaml(REPO / "hf_configs" / "study_sim.yaml", root=REPO)
    assert config.refine.recipe == REPO / "hf_configs" / "refine_sim.yaml"
    assert config.data.simulated and config.models.base is None


def test_real_study_files_name_their_missing_data_when_paths_are_checked(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(FileNotFoundError, match="data/ds002345"):
        StudyConfig.from_yaml(REPO / "hf_configs" / "study_narratives.yaml")
    with pytest.raises(FileNotFoundError, match="data/lebel_prepared"):
        StudyConfig.from_yaml(REPO / "hf_configs" / "study_lebel.yaml")


@pytest.mark.parametrize(
    ("text", "key", "section"),
    [
        (
            "name: t\nout: o\ndata: {{simulate: {{}}}}\nmodel: {{base: x}}\n",
            "model",
            None,
        ),
        ("name: t\nout: o\ndata: {{simulate: {{}}, subject: [1]}}\n", "subject", "data"),
        ("name: t\nout: o\ndata: {{simulate: {{sizes: demo}}}}\n", "sizes", "data.simulate"),
        ("name: t\nout: o\ndata: {{simulate: {{}}}}\nmodels: {{bas: x}}\n", "bas", "models"),
        ("name: t\nout: o\ndata: {{simulate: {{}}}}\nprobe: {{task: [ks]}}\n", "task", "probe"),
        (
            "name: t\nout: o\ndata: {{simulate: {{}}}}\nrefine: {{recipe: r.yaml, option: {{}}}}\n",
            "option",
            "refine",
        ),
        ("name: t\nout: o\ndata: {{simulate: {{}}}}\nsteps: {{encode: {{}}}}\n", "encode", "steps"),
    ],
)
def test_unknown_key_is_named_with_its_section(tmp_path, text, key, section):
    path = write_study(tmp_path, text)
    place = "at the top level" if section is None else f"in section {section}"
    with pytest.raises(ValueError, match=f"unknown key '{key}' {place}") as error:
        StudyConfig.from_yaml(path, check_paths=False)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ("bids: {tmp}/no_bids", "no_bids"),
        ("prepared: {tmp}/no_prepared", "no_prepared"),
        ("simulate: {{}}, mask: {tmp}/no_mask.nii.gz", "no_mask.nii.gz"),
        ("simulate: {{}}, prepare: {{exclude: {tmp}/no_exclude.json}}", "no_exclude.json"),
        ("simulate: {{}}, atlas: {tmp}/no_atlas.nii.gz", "no_atlas.nii.gz"),
    ],
)
def test_missing_path_is_named_at_start_and_parsing_alone_accepts_it(tmp_path, data, named):
    models = "" if "simulate" in data else "models: {{base: {tmp}}}\n"
    path = write_study(tmp_path, f"name: t\nout: {{tmp}}/run\ndata: {{{{{data}}}}}\n{models}")
    with pytest.raises(FileNotFoundError, match=named):
        StudyConfig.from_yaml(path)
    assert StudyConfig.from_yaml(path, check_paths=False).name == "t"


def test_missing_recipe_and_step_option_path_are_named(tmp_path):
    path = write_study(
        tmp_path,
        "name: t\nout: o\ndata: {{simulate: {{}}}}\nrefine: {{recipe: {tmp}/no_recipe.yaml}}\n",
    )
    with pytest.raises(FileNotFoundError, match="refine.recipe: .*no_recipe.yaml"):
        StudyConfig.from_yaml(path)
    path = write_study(
        tmp_path,
        "name: t\nout: o\ndata: {{simulate: {{}}}}\n"
        "steps: {{anchor:base: {{atlas: {tmp}/no_atlas.nii.gz}}}}\n",
    )
    with pytest.raises(FileNotFoundError, match=r"steps.anchor:base.atlas: .*no_atlas"):
        StudyConfig.from_yaml(path)


def test_missing_study_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.yaml"):
        StudyConfig.from_yaml(tmp_path / "nothing.yaml")
    assert main(["run", "--config", str(tmp_path / "nothing.yaml")]) == 2


def test_a_study_file_that_is_not_a_yaml_file_is_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="is not a regular file"):
        StudyConfig.from_yaml(tmp_path)
    assert main(["run", "--config", "/dev/null"]) == 2
    assert "study file /dev/null is not a regular file" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: t\nsteps: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        StudyConfig.from_yaml(broken)
    assert main(["run", "--config", str(broken)]) == 2
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="binary.yaml is not valid YAML"):
        StudyConfig.from_yaml(binary)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: t\nout: o\n", "'data' is required"),
        ("name: t\nout: o\ndata: {{bids: b, prepared: p}}\n", "exactly one of .*bids, prepared"),
        ("name: t\nout: o\ndata: {{bids: b}}\n", "models.base is required"),
        ("name: t\nout: o\ndata: {{simulate: {{}}}}\nprocesses: 0\n", "processes: expected"),
        (
            "name: t\nout: o\ndata: {{simulate: {{}}}}\nprobe: {{tasks: []}}\n",
            "probe.tasks is empty",
        ),
        (
            "name: t\nout: o\ndata: {{bids: b}}\nmodels: {{base: m}}\nsteps: {{simulate: {{}}}}\n",
            "steps.simulate: does not apply: it needs data.simulate",
        ),
        (
            "name: t\nout: o\ndata: {{simulate: {{}}}}\nmodels: {{base: m}}\n"
            "steps: {{check_simulated: {{}}}}\n",
            "steps.check_simulated: does not apply: models.base is 'm'",
        ),
        (
            "name: t\nout: o\ndata: {{simulate: {{}}}}\nsteps: {{refine: {{}}}}\n",
            "steps.refine: does not apply: the refine section is null",
        ),
        (
            "name: t\nout: o\ndata: {{simulate: {{}}}}\nsteps: {{prepare: {{--mask: m}}}}\n",
            "dashes",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_field(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_yaml(write_study(tmp_path, text), check_paths=False)


# --- the plan -----------------------------------------------------------------------------------


def test_plan_follows_interface_a(tmp_path):
    text = (REPO / "hf_configs" / "study_sim.yaml").read_text()
    config = StudyConfig.from_dict(
        {**__import__("yaml").safe_load(text), "out": str(tmp_path / "run")}, root=REPO
    )
    steps = {step.id: step for step in plan_study(config)}
    run = tmp_path / "run"
    outs = {key: step.out.relative_to(run).as_posix() for key, step in steps.items()}
    assert outs == {
        "simulate": "bids",
        "prepare": "dataset",
        "extract:base": "features/base",
        "encode:base": "encoding/base",
        "selectivity:base": "selectivity/base",
        "anchor:base": "anchoring/base",
        "refine": "refine",
        "refine:control": "refine_control",
        "extract:refined": "features/refined",
        "anchor:refined": "anchoring/refined",
        "compare": "compare",
        "probe_tasks": "probe_tasks",
        "probe": "probe",
        "check_simulated": "truth",
        "report": "report.html",
    }
    base = str(run / "bids" / "derivatives" / "ground_truth" / "model")
    refined = str(run / "refine" / "export" / "backbone")
    assert steps["extract:base"].argv[:4] == ["extract", str(run / "dataset"), "--model", base]
    assert "--truth" in steps["anchor:base"].argv and "--selectivity" in steps["anchor:base"].argv
    assert steps["anchor:refined"].argv[-4:-2] == ["--compare-with", str(run / "anchoring/base")]
    control = steps["refine:control"].argv
    assert control[control.index("--shuffle_train_stories") + 1] == "true"
    assert control[control.index("--stage2_max_steps") + 1] == "0"
    assert control.count("--stage2_max_steps") == 1
    assert steps["probe"].argv[1:5] == [
        "--upstream",
        f"base={base}",
        "--upstream",
        f"refined={refined}",
    ]
    assert steps["compare"].argv[1:3] == [
        str(run / "refine/stage1/final"),
        str(run / "refine/final"),
    ]
    assert steps["report"].argv == ["report", str(run)]
    assert set(steps["report"].depends) == set(steps) - {"report"}
    assert steps["extract:refined"].depends == ("prepare", "refine")


def test_digests_ignore_where_the_run_folder_is(tmp_path):
    path = write_study(tmp_path, SIM_STUDY)
    here = plan_study(StudyConfig.from_yaml(path))
    moved = StudyConfig.from_yaml(path).replace(out=tmp_path / "elsewhere")
    assert [s.digest for s in here] == [s.digest for s in plan_study(moved)]


# --- running: order, resume, dry run ------------------------------------------------------------


def test_step_out_of_order_names_the_step_that_makes_its_inputs(tmp_path, executed):
    config = StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY))
    with pytest.raises(ValueError, match="step anchor:base reads the output .* of step prepare"):
        run_study(config, only=["anchor:base"], echo=silent)
    with pytest.raises(ValueError, match=r"output \(features/base\) of step extract:base"):
        run_study(config, only=["simulate", "prepare", "anchor:base"], echo=silent)
    assert executed == [] and not (tmp_path / "run").exists()
    # negative control: once its producers have run, the same step alone runs
    run_study(config, only=["simulate", "prepare", "extract:base", "selectivity:base"], echo=silent)
    executed.clear()
    run_study(config, only=["anchor:base"], echo=silent)
    assert executed == ["anchor:base"]


def test_unknown_or_foreign_step_in_steps_option(tmp_path, executed):
    config = StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY))
    with pytest.raises(ValueError, match="unknown step 'anchor'"):
        run_study(config, only=["anchor"], echo=silent)
    with pytest.raises(ValueError, match="'probe' is not a step of this study"):
        run_study(config, only=["probe"], echo=silent)


def test_rerun_skips_unchanged_steps_and_reruns_a_changed_one_with_its_dependants(
    tmp_path, executed
):
    path = write_study(tmp_path, SIM_STUDY)
    first = run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == list(CHEAP_STEPS) == first.ran
    before = read_record(tmp_path / "run")["steps"]
    assert set(before) == set(CHEAP_STEPS)
    assert before["encode:base"]["command"][:2] == ["wav2brain", "encode"]
    assert before["encode:base"]["out"] == "encoding/base"

    executed.clear()
    second = run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == [] and second.skipped == list(CHEAP_STEPS)
    assert read_record(tmp_path / "run")["steps"] == before

    # an option of encode changes: encode alone reruns (nothing reads its output)
    executed.clear()
    path.write_text(path.read_text().replace("alphas: [1, 10]", "alphas: [1, 10, 100]"))
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == ["encode:base"]
    after = read_record(tmp_path / "run")["steps"]
    assert after["encode:base"]["digest"] != before["encode:base"]["digest"]
    assert {k: v for k, v in after.items() if k != "encode:base"} == {
        k: v for k, v in before.items() if k != "encode:base"
    }

    # an option of prepare changes: everything after it that reads the dataset reruns
    executed.clear()
    path.write_text(path.read_text().replace("drift-order: 2", "drift-order: 1"))
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == ["prepare", "extract:base", "encode:base", "selectivity:base", "anchor:base"]
    assert read_record(tmp_path / "run")["steps"]["simulate"] == before["simulate"]


def test_a_step_whose_output_is_gone_runs_again(tmp_path, executed):
    config = StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY))
    run_study(config, echo=silent)
    executed.clear()
    import shutil

    shutil.rmtree(tmp_path / "run" / "encoding")
    run_study(config, echo=silent)
    assert executed == ["encode:base"]


def test_changed_simulation_replaces_its_old_output_but_an_interrupted_one_is_kept(
    tmp_path, monkeypatch
):
    path = write_study(tmp_path, SIM_STUDY)
    seen = {}

    def fake(step, processes):
        seen[step.id] = sorted(p.name for p in step.out.iterdir()) if step.out.exists() else None
        step.out.mkdir(parents=True, exist_ok=True)
        (step.out / f"made-{step.digest[:6]}").write_text("")
        return 0.0

    monkeypatch.setattr(study_runner, "_execute", fake)
    run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    path.write_text(path.read_text().replace("seed: 0", "seed: 1"))
    run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    assert seen["simulate"] is None  # the other seed's simulation was removed first

    def interrupted(step, processes):
        step.out.mkdir(parents=True, exist_ok=True)
        (step.out / "partial").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(study_runner, "_execute", interrupted)
    path.write_text(path.read_text().replace("seed: 1", "seed: 2"))
    with pytest.raises(KeyboardInterrupt):
        run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    monkeypatch.setattr(study_runner, "_execute", fake)
    run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    assert seen["simulate"] == ["partial"]  # same options: the command resumes its own work


def test_a_step_interrupted_with_new_options_is_not_taken_as_done_with_the_old_ones(
    tmp_path, monkeypatch
):
    """Ctrl-C during a changed step that had already removed its old output, then the old
    options again: the step runs (from scratch), it is not skipped as unchanged."""
    path = write_study(tmp_path, SIM_STUDY)
    runs = []

    def fake(step, processes):
        runs.append(step.id)
        step.out.mkdir(parents=True, exist_ok=True)
        (step.out / f"made-{step.digest[:6]}").write_text("")
        return 0.0

    monkeypatch.setattr(study_runner, "_execute", fake)
    run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    old = read_record(tmp_path / "run")["steps"]["simulate"]["digest"]

    def interrupted(step, processes):
        step.out.mkdir(parents=True, exist_ok=True)
        (step.out / "partial-of-seed-5").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(study_runner, "_execute", interrupted)
    original = path.read_text()
    path.write_text(original.replace("seed: 0", "seed: 5"))
    with pytest.raises(KeyboardInterrupt):
        run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    record = read_record(tmp_path / "run")
    assert "simulate" not in record["steps"] and record["started"]["simulate"] != old
    monkeypatch.setattr(study_runner, "_execute", fake)
    path.write_text(original)
    runs.clear()
    result = run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    assert runs == ["simulate"] and result.skipped == []
    made = sorted(p.name for p in (tmp_path / "run" / "bids").iterdir())
    assert made == [f"made-{old[:6]}"]  # the interrupted run's partial output was removed


def test_failed_step_stops_the_run_and_is_not_recorded(tmp_path, monkeypatch):
    config = StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY))
    monkeypatch.setattr("wav2brain.cli.main", lambda argv: 2)
    with pytest.raises(
        RuntimeError, match="step simulate failed .exit status 2.: wav2brain simulate"
    ):
        run_study(config, echo=silent)
    record = read_record(tmp_path / "run")
    assert record["steps"] == {} and set(record["started"]) == {"simulate"}


def test_a_failed_step_is_one_error_line_and_exit_status_1_on_the_command_line(
    tmp_path, monkeypatch, capsys
):
    from wav2brain.cli import main

    def failing(step, processes):
        raise RuntimeError(f"step {step.id} failed (exit status 2): wav2brain {step.argv[0]}")

    monkeypatch.setattr(study_runner, "_execute", failing)
    assert main(["run", "--config", str(write_study(tmp_path, SIM_STUDY))]) == 1
    err = capsys.readouterr().err
    assert "wav2brain run: error: step simulate failed (exit status 2)" in err
    assert "Traceback" not in err


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, executed, capsys):
    path = write_study(tmp_path, SIM_STUDY)
    assert main(["run", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for step in CHEAP_STEPS:
        assert f"[{step}] would run: wav2brain " in out
    assert "--alphas 1 10" in out
    assert executed == [] and not (tmp_path / "run").exists()
    run_study(StudyConfig.from_yaml(path), only=["simulate"], echo=silent)
    assert main(["run", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[simulate] unchanged, skipped" in out and "[prepare] would run" in out


def test_run_command_writes_study_json_and_summary(tmp_path, executed, capsys):
    path = write_study(tmp_path, SIM_STUDY)
    assert main(["run", "--config", str(path), "--steps", "simulate,prepare"]) == 0
    assert executed == ["simulate", "prepare"]
    record = read_record(tmp_path / "run")
    assert record["format"] == 1 and record["name"] == "t" and record["simulated"] is True
    assert record["config"]["data"]["simulate"] == {"size": "test", "seed": 0}
    step = record["steps"]["prepare"]
    assert set(step) == {"step", "command", "out", "digest", "seconds", "finished"}
    assert step["step"] == "prepare" and step["finished"].endswith("Z")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [w["step"] for w in summary["written"]] == ["simulate", "prepare"]
    assert "dataset/done.txt" in summary["written"][1]["paths"]
    out = capsys.readouterr().out
    assert "[prepare] running: wav2brain prepare" in out and "summary:" in out


def test_bad_step_option_is_refused_by_the_command_parser_before_any_step(tmp_path, executed):
    text = SIM_STUDY.replace("alphas: [1, 10]", "alphaz: [1, 10]")
    with pytest.raises(ValueError, match="step encode:base: .*unrecognized arguments: --alphaz"):
        run_study(StudyConfig.from_yaml(write_study(tmp_path, text)), echo=silent)
    text = SIM_STUDY.replace("alphas: [1, 10]", "no-maps: false")
    with pytest.raises(ValueError, match="option no-maps: false cannot be given to a flag"):
        run_study(StudyConfig.from_yaml(write_study(tmp_path, text)), echo=silent)
    assert executed == []


def test_unknown_recipe_option_is_refused_before_any_step(tmp_path, executed):
    import yaml

    raw = yaml.safe_load(SIM_STUDY.format(tmp=tmp_path, repo=REPO))
    raw["refine"] = {"recipe": str(REPO / "hf_configs" / "refine_sim.yaml")}
    raw["refine"]["options"] = {"max_stepz": 3}
    raw["steps"]["refine"] = {}
    with pytest.raises(ValueError, match="step refine: .*max_stepz"):
        run_study(StudyConfig.from_dict(raw), echo=silent)
    assert executed == []


def test_an_abbreviated_step_or_recipe_option_is_refused_before_any_step(tmp_path, executed):
    import yaml

    text = SIM_STUDY.replace("alphas: [1, 10]", "alpha: [1, 10]")  # not read as --alphas
    with pytest.raises(ValueError, match="step encode:base: .*unrecognized arguments: --alpha 1"):
        run_study(StudyConfig.from_yaml(write_study(tmp_path, text)), echo=silent)
    raw = yaml.safe_load(SIM_STUDY.format(tmp=tmp_path, repo=REPO))
    raw["refine"] = {"recipe": str(REPO / "hf_configs" / "refine_sim.yaml")}
    raw["refine"]["options"] = {"max_step": 3}  # not read as max_steps
    raw["steps"]["refine"] = {}
    with pytest.raises(ValueError, match="step refine: .*unrecognized arguments: --max_step 3"):
        run_study(StudyConfig.from_dict(raw), echo=silent)
    assert executed == []


def test_processes_launch_sharded_steps_through_distributed(tmp_path):
    text = SIM_STUDY + "processes: 2\n"
    config = StudyConfig.from_yaml(write_study(tmp_path, text))
    lines = []
    run_study(config, dry_run=True, echo=lines.append)
    launch = "-m torch.distributed.run --standalone --nproc_per_node 2 -m wav2brain extract"
    assert launch in lines[2], lines[2]
    assert "[prepare] would run: wav2brain prepare" in lines[1]  # not sharded


def test_step_whose_input_step_changed_since_it_ran_is_refused_alone(tmp_path, executed):
    path = write_study(tmp_path, SIM_STUDY)
    run_study(StudyConfig.from_yaml(path), echo=silent)
    path.write_text(path.read_text().replace("drift-order: 2", "drift-order: 1"))
    with pytest.raises(ValueError, match="of step prepare, whose command or inputs changed"):
        run_study(StudyConfig.from_yaml(path), only=["extract:base"], echo=silent)
    executed.clear()
    run_study(StudyConfig.from_yaml(path), only=["prepare", "extract:base"], echo=silent)
    assert executed == ["prepare", "extract:base"]


def test_listed_step_whose_producer_the_study_leaves_out_names_it(tmp_path, executed):
    text = SIM_STUDY.replace("  extract:base: {{}}\n", "")
    config = StudyConfig.from_yaml(write_study(tmp_path, text))
    with pytest.raises(
        ValueError, match="encode:base reads the output .features/base. of step extract:base"
    ):
        run_study(config, echo=silent)


# --- user-trial cases: another study's folder, empty file, relative paths, recipe inputs, a
# simulated dataset given as a BIDS root ----------------------------------------------------------


def test_a_run_folder_of_another_study_is_refused(tmp_path, executed):
    run_study(StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY)), echo=silent)
    other = write_study(tmp_path, SIM_STUDY.replace("name: t", "name: copied"))
    executed.clear()
    with pytest.raises(ValueError, match="holds the runs of study 't' .*not of 'copied'"):
        run_study(StudyConfig.from_yaml(other), echo=silent)
    assert executed == [] and read_record(tmp_path / "run")["name"] == "t"


def test_an_empty_study_file_and_a_relative_missing_path_are_named(tmp_path, monkeypatch):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="empty.yaml is empty"):
        StudyConfig.from_yaml(empty)
    monkeypatch.chdir(tmp_path)
    text = "name: t\nout: run\ndata: {bids: nowhere}\nmodels: {base: m}\nrefine: null\n"
    (tmp_path / "rel.yaml").write_text(text + "probe: null\n")
    with pytest.raises(FileNotFoundError, match=f"nowhere does not exist .relative to {tmp_path}"):
        StudyConfig.from_yaml(tmp_path / "rel.yaml")


def test_the_recipes_own_voxel_selection_is_checked_at_start(tmp_path):
    bids, model = tmp_path / "bids", tmp_path / "model"
    bids.mkdir()
    model.mkdir()
    (model / "config.json").write_text("{}")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("voxel_selection: rois/missing_roi.nii.gz\nmax_steps: 5\n")
    text = (
        f"name: t\nout: {tmp_path}/run\ndata: {{bids: {bids}}}\nmodels: {{base: {model}}}\n"
        f"refine: {{recipe: {recipe}}}\nprobe: null\n"
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(
        FileNotFoundError,
        match="recipe.yaml: voxel_selection: rois/missing_roi.nii.gz does not exist",
    ):
        StudyConfig.from_yaml(path)
    (tmp_path / "roi.nii.gz").write_text("")
    path.write_text(text.replace(f"{{recipe: {recipe}}}", f"{{recipe: {recipe}, options: "
                                 f"{{voxel_selection: {tmp_path / 'roi.nii.gz'}}}}}"))  # fmt: skip
    StudyConfig.from_yaml(path)  # the study's own option replaces the recipe's


def test_a_simulated_dataset_given_as_a_bids_root_keeps_its_ground_truth(tmp_path, executed):
    """A simulation laid out anew (data.bids) is still SIMULATED: the truth mask, regions and
    voxel selection, the shuffled control and check_simulated apply, and study.json says so."""
    from wav2brain.simulation import GROUND_TRUTH_DIR

    bids = tmp_path / "elsewhere"
    truth = bids / GROUND_TRUTH_DIR
    truth.mkdir(parents=True)
    (truth / "simulation.json").write_text("{}")
    text = (
        f"name: t\nout: {tmp_path}/run\ndata: {{bids: {bids}}}\n"
        f"refine: {{recipe: {REPO}/hf_configs/refine_sim.yaml}}\nprobe: null\n"
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    steps = {s.id: s for s in plan_study(StudyConfig.from_yaml(path))}
    assert "simulate" not in steps and {"refine:control", "check_simulated"} <= set(steps)
    assert str(truth / "brain_mask.nii.gz") in steps["prepare"].argv
    assert str(truth / "clusters.nii.gz") in steps["refine"].argv
    assert steps["extract:base"].argv[steps["extract:base"].argv.index("--model") + 1] == str(
        truth / "model"
    )
    run_study(StudyConfig.from_yaml(path), only=["prepare"], echo=silent)
    assert read_record(tmp_path / "run")["simulated"] is True
    # negative control: without the simulator's record the data are real and need a model
    (truth / "simulation.json").unlink()
    with pytest.raises(ValueError, match="models.base is required unless the data are simulated"):
        StudyConfig.from_yaml(path)


def test_edited_input_data_rerun_the_steps_that_read_them(tmp_path, executed):
    """A BIDS root, mask or model folder read from outside the run: an edited, added or removed
    file reruns the step that reads it (and its dependants); untouched inputs are skipped."""
    import os

    bids, model = tmp_path / "bids", tmp_path / "model"
    (bids / "sub-01" / "func").mkdir(parents=True)
    events = bids / "sub-01" / "func" / "sub-01_task-a_events.tsv"
    events.write_text("onset\tduration\n8\t100\n")
    model.mkdir()
    (model / "config.json").write_text("{}")
    text = (
        f"name: t\nout: {tmp_path}/run\ndata: {{bids: {bids}}}\nmodels: {{base: {model}}}\n"
        "refine: null\nprobe: null\nsteps: {prepare: {}, extract:base: {}, encode:base: {}}\n"
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    run_study(StudyConfig.from_yaml(path), echo=silent)
    executed.clear()
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == []  # nothing changed: nothing reruns
    events.write_text("onset\tduration\n9\t100\n")
    stat = events.stat()
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, later mtime
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == ["prepare", "extract:base", "encode:base"]
    executed.clear()
    (model / "model.safetensors").write_text("weights")  # the model folder changed
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == ["extract:base", "encode:base"]


@pytest.mark.parametrize(
    ("base", "error", "match"),
    [
        ("bids2/derivatives/ground_truth/model", ValueError, "not a folder here .* not a Hub id"),
        ("./no_model", FileNotFoundError, "models.base ./no_model does not exist"),
        ("{tmp}", FileNotFoundError, "is not a checkpoint folder: no config.json"),
    ],
)
def test_a_model_that_is_neither_a_checkpoint_folder_nor_a_hub_id_is_named_at_start(
    tmp_path, base, error, match
):
    bids = tmp_path / "bids"
    bids.mkdir()
    base = base.replace("{tmp}", str(tmp_path))
    text = f"name: t\nout: {tmp_path}/run\ndata: {{bids: {bids}}}\nmodels: {{base: {base}}}\n"
    path = tmp_path / "study.yaml"
    path.write_text(text + "refine: null\nprobe: null\n")
    with pytest.raises(error, match=match):
        StudyConfig.from_yaml(path)
    path.write_text(path.read_text().replace(f"base: {base}", "base: facebook/wav2vec2-base"))
    StudyConfig.from_yaml(path)  # a Hub id is not looked up at start


def test_a_second_run_of_the_same_folder_is_refused_while_the_first_holds_it(tmp_path, monkeypatch):
    """Two runs of one folder at once would interleave study.json and the outputs: the second
    is refused at once, naming the first's process; after the first ends the folder is free."""
    import os
    import threading

    path = write_study(tmp_path, SIM_STUDY)
    inside, release = threading.Event(), threading.Event()
    errors = []

    def slow(step, processes):
        step.out.mkdir(parents=True, exist_ok=True)
        inside.set()
        release.wait(10)
        return 0.0

    monkeypatch.setattr(study_runner, "_execute", slow)
    config = StudyConfig.from_yaml(path)

    def first():
        try:
            run_study(config, only=["simulate"], echo=silent)
        except Exception as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    try:
        with pytest.raises(RuntimeError, match=f"being run by another process .pid {os.getpid()}"):
            # flock is per open file: a second open in this process is refused like another's
            run_study(config, only=["simulate"], echo=silent)
    finally:
        release.set()
        thread.join(10)
    assert errors == []
    assert run_study(config, only=["simulate"], echo=silent).skipped == ["simulate"]
    assert run_study(config, only=["simulate"], dry_run=True, echo=silent)  # no lock for dry runs


def test_the_simulators_model_named_as_models_base_keeps_check_simulated(tmp_path):
    from wav2brain.simulation import GROUND_TRUTH_DIR

    bids = tmp_path / "sim"
    truth = bids / GROUND_TRUTH_DIR
    (truth / "model").mkdir(parents=True)
    (truth / "simulation.json").write_text("{}")
    (truth / "model" / "config.json").write_text("{}")
    other = tmp_path / "other_model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    for base, applies in ((truth / "model", True), (other, False)):  # (negative control)
        path = tmp_path / "study.yaml"
        path.write_text(
            f"name: t\nout: {tmp_path}/run\ndata: {{bids: {bids}}}\nmodels: {{base: {base}}}\n"
            "refine: null\nprobe: null\n"
        )
        steps = [s.id for s in plan_study(StudyConfig.from_yaml(path))]
        assert ("check_simulated" in steps) is applies, (base, steps)


def test_ctrl_c_in_a_step_stops_the_study_as_an_interruption(tmp_path, monkeypatch, capsys):
    """A step's command turns Ctrl-C into exit status 130; the study stops as interrupted (one
    line, 130), not as a failed step, and the step is not recorded as done."""
    monkeypatch.setattr("wav2brain.cli.main", lambda argv: 130)
    path = write_study(tmp_path, SIM_STUDY)
    with pytest.raises(KeyboardInterrupt):
        run_study(StudyConfig.from_yaml(path), echo=silent)
    assert read_record(tmp_path / "run")["steps"] == {}


def test_a_control_without_two_training_stories_is_refused_at_start(tmp_path):
    """The test-size simulation has 2 stories; the shipped recipe holds one out for test and one
    for validation, so the shuffled control has nothing to shuffle: refused before any step."""
    text = (
        f"name: t\nout: {tmp_path}/run\ndata: {{simulate: {{size: test}}}}\n"
        f"refine: {{recipe: {REPO}/hf_configs/refine_sim.yaml}}\nprobe: null\n"
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="needs at least two training stories: .* has 2 .* 0"):
        StudyConfig.from_yaml(path)
    path.write_text(text.replace("size: test", "size: test, stories: 4"))
    StudyConfig.from_yaml(path)  # 4 stories: 2 train (the control shuffles them)
    path.write_text(text + "steps: {simulate: {}, prepare: {}, refine: {}}\n")
    StudyConfig.from_yaml(path)  # no control asked for


def test_a_run_folder_inside_its_bids_root_does_not_change_the_roots_fingerprint(
    tmp_path, executed
):
    """BIDS puts outputs under derivatives/: the study's own writes there must not count as an
    edited input (else every run would rerun prepare and remove its dependants' outputs)."""
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    (bids / "sub-01" / "bold.nii").write_text("x")
    (bids / ".git").mkdir()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    text = (
        f"name: t\nout: {bids}/derivatives/wav2brain\ndata: {{bids: {bids}}}\n"
        f"models: {{base: {model}}}\nrefine: null\nprobe: null\n"
        "steps: {prepare: {}, extract:base: {}}\n"
    )
    path = tmp_path / "study.yaml"
    path.write_text(text)
    run_study(StudyConfig.from_yaml(path), echo=silent)
    executed.clear()
    (bids / ".git" / "index").write_text("a commit")  # hidden folders are not BIDS data
    assert run_study(StudyConfig.from_yaml(path), echo=silent).skipped == [
        "prepare",
        "extract:base",
    ]
    (bids / "sub-01" / "bold.nii").write_text("edited")  # negative control: real data changed
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == ["prepare", "extract:base"]


def test_the_recipes_own_voxel_selection_is_an_input_of_refine(tmp_path, executed):
    bids, model, roi = tmp_path / "bids", tmp_path / "model", tmp_path / "roi.txt"
    bids.mkdir()
    model.mkdir()
    (model / "config.json").write_text("{}")
    roi.write_text("1 2 3\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"voxel_selection: {roi}\nmax_steps: 5\n")
    path = tmp_path / "study.yaml"
    path.write_text(
        f"name: t\nout: {tmp_path}/run\ndata: {{bids: {bids}}}\nmodels: {{base: {model}}}\n"
        f"refine: {{recipe: {recipe}}}\nprobe: null\nsteps: {{prepare: {{}}, refine: {{}}}}\n"
    )
    run_study(StudyConfig.from_yaml(path), echo=silent)
    executed.clear()
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == []
    roi.write_text("1 2 3 4\n")  # another selection, same file name
    run_study(StudyConfig.from_yaml(path), echo=silent)
    assert executed == ["refine"]


def test_the_record_is_checked_again_once_the_lock_is_held(tmp_path, executed, monkeypatch):
    """Between the checks at start and the lock, another study may have written the folder's
    study.json: it is refused under the lock, before any step runs."""
    from contextlib import contextmanager

    config = StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY))
    locked = study_runner.run_lock

    @contextmanager
    def another_study_got_there_first(run_dir):
        other = {"format": 1, "name": "other", "simulated": True, "config": {}, "steps": {}}
        (run_dir / "study.json").write_text(json.dumps({**other, "started": {}}))
        with locked(run_dir):
            yield

    monkeypatch.setattr(study_runner, "run_lock", another_study_got_there_first)
    with pytest.raises(ValueError, match="holds the runs of study 'other'"):
        run_study(config, echo=silent)
    assert executed == []


def test_another_wav2brain_version_reruns_the_steps(tmp_path, executed, monkeypatch):
    """A study run by an older release is not taken as done by a newer one: its checks or
    outputs may differ (the version is in every step's digest)."""
    from wav2brain.study import steps as study_steps

    config = StudyConfig.from_yaml(write_study(tmp_path, SIM_STUDY))
    run_study(config, echo=silent)
    executed.clear()
    assert run_study(config, echo=silent).ran == []
    monkeypatch.setattr(study_steps, "__version__", "99.0.0")
    assert run_study(config, echo=silent).ran == list(CHEAP_STEPS)
