"""``wav2brain demo``: the shipped simulated study, its presets, its folder checks, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from wav2brain.cli import main
from wav2brain.study import plan_study, read_record
from wav2brain.study.demo import DEMO_SIZES, demo_config, run_demo


def all_steps(config) -> list[str]:
    """The demo's steps, in order."""
    return [step.id for step in plan_study(config)]


def assert_ground_truth_and_report(out: Path, result) -> None:
    """The SIMULATED ground-truth checks pass at their issues' thresholds; the report is written
    and shows the same headline numbers as its tables."""
    truth = json.loads((out / "truth" / "truth.json").read_text())
    names = {row["name"] for row in truth["checks"]}
    assert {"encoding.planted_ceiling", "anchoring.recall", "training.stage1_vs_control"} <= names
    assert all(row["required"] for row in truth["checks"] if row["name"].startswith("training."))
    assert result.failed_checks == [], truth["checks"]
    assert truth["passed"] is True
    page = (out / "report.html").read_text()
    assert "SIMULATED" in page and "not run in this study" not in page
    headline = json.loads((out / "report" / "headline.json").read_text())
    assert headline and all(f'data-key="{key}"' in page for key in headline)
    ceiling = truth["details"]["training"]["architecture_ceiling"]
    assert headline["truth.training.ceiling"] == pytest.approx(ceiling["mean"])
    readout = pd.read_parquet(out / "report" / "truth_readout.parquet")
    assert readout["r"].tolist() == pytest.approx([v["r"] for v in ceiling["regressors"].values()])


def test_demo_is_the_shipped_study_file_with_its_options(tmp_path):
    config = demo_config(tmp_path / "d", size="small", seed=3)
    assert config.out == tmp_path / "d"
    assert config.data.simulate == {"size": "demo", "seed": 3}  # the demo's simulation, reseeded
    assert config.refine.options["seed"] == 3 and config.probe.seed == 3
    assert config.refine.options["max_steps"] == DEMO_SIZES["small"]["refine"]["max_steps"]
    assert config.probe.tasks == DEMO_SIZES["small"]["probe_tasks"]
    full = demo_config(tmp_path / "d")
    assert full.data.simulate == {"size": "demo", "seed": 0}
    assert [s.id for s in plan_study(full)][-2:] == ["check_simulated", "report"]
    with pytest.raises(ValueError, match="--size 'huge'"):
        demo_config(tmp_path / "d", size="huge")


def test_demo_with_a_model_drops_the_ground_truth_checks(tmp_path, caplog):
    model = tmp_path / "model"
    model.mkdir()
    caplog.set_level("INFO", logger="wav2brain.study.demo")
    config = demo_config(tmp_path / "d", model=str(model))
    steps = {step.id: step for step in plan_study(config)}
    assert "check_simulated" not in steps and "report" in steps
    assert steps["extract:base"].argv[3] == str(model)
    assert steps["refine"].argv[3] == str(model)
    assert "check_simulated skipped" in caplog.text


def test_demo_folder_of_another_demo_is_refused_naming_what_differs(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    record = {"format": 1, "name": "demo", "steps": {}, "started": {}}
    record["demo"] = {"size": "small", "seed": 1, "model": None}
    (out / "study.json").write_text(json.dumps(record))
    before = sorted(p.name for p in out.iterdir())
    assert main(["demo", "--out", str(out), "--size", "small", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "seed 1 there, 0 asked" in err
    assert main(["demo", "--out", str(out), "--size", "demo", "--seed", "1", "--dry-run"]) == 2
    assert "size 'small' there, 'demo' asked" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # negative control: the same demo is accepted (a dry run of some of its steps)
    assert main(["demo", "--out", str(out), "--size", "small", "--seed", "1", "--dry-run",
                 "--steps", "simulate,prepare"]) == 0  # fmt: skip
    assert "[simulate] would run: wav2brain simulate" in capsys.readouterr().out


def test_demo_folder_of_other_files_or_another_study_is_refused(tmp_path, capsys):
    out = tmp_path / "old"
    (out / "bids").mkdir(parents=True)
    assert main(["demo", "--out", str(out), "--dry-run"]) == 2
    assert f"{out} is not empty and holds no demo (no study.json)" in capsys.readouterr().err
    (out / "study.json").write_text(json.dumps({"format": 1, "name": "narratives", "steps": {}}))
    assert main(["demo", "--out", str(out), "--dry-run"]) == 2
    assert "holds the study 'narratives', not a demo" in capsys.readouterr().err


def test_reduced_demo_end_to_end_writes_every_listed_file_and_resumes(tmp_path):
    """The ``small`` preset of the demo, every step that this checkout has a command for."""
    out = tmp_path / "demo"
    config = demo_config(out, size="small")
    steps = all_steps(config)
    result = run_demo(out, size="small", echo=lambda *a: None)
    assert result.ran == steps
    summary = json.loads((out / "summary.json").read_text())
    assert [item["step"] for item in summary["written"]] == steps
    for item in summary["written"]:
        assert item["paths"], item["step"]
        for path in item["paths"]:
            assert (out / path).exists(), path
    record = read_record(out)
    assert record["simulated"] is True and record["demo"] == {
        "size": "small",
        "seed": 0,
        "model": None,
    }
    assert (out / "refine" / "export" / "backbone" / "model.safetensors").is_file()
    assert_ground_truth_and_report(out, result)
    again = run_demo(out, size="small", echo=lambda *a: None)
    assert again.ran == [] and again.skipped == steps
    assert read_record(out)["steps"] == record["steps"]


@pytest.mark.slow
def test_full_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    steps = all_steps(demo_config(out))
    result = run_demo(out, echo=lambda *a: None)
    assert result.ran == steps
    assert_ground_truth_and_report(out, result)
    for item in json.loads((out / "summary.json").read_text())["written"]:
        for path in item["paths"]:
            assert (out / path).exists(), path
