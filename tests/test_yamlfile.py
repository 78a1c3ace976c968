"""A YAML file a user names (study, recipe, sweep): missing, not a file, not YAML -> one clear line."""

from __future__ import annotations

import pytest

from wav2brain.cli import main
from wav2brain.training.arguments import read_recipe
from wav2brain.training.sweep import is_sweep, read_sweep
from wav2brain.yamlfile import read_yaml


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("max_steps: 3\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("max_steps: 3\nvalues: [1, 2\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    return {"good": good, "broken": broken, "binary": binary, "folder": tmp_path}


def test_read_yaml_reads_a_good_file_and_names_each_bad_one(files):
    assert read_yaml(files["good"], "recipe") == {"max_steps": 3}
    with pytest.raises(FileNotFoundError, match="recipe .*nothing.yaml does not exist"):
        read_yaml(files["folder"] / "nothing.yaml", "recipe")
    with pytest.raises(ValueError, match="is not a regular file"):
        read_yaml(files["folder"], "recipe")
    with pytest.raises(ValueError, match="not a regular file"):
        read_yaml("/dev/null", "sweep")
    with pytest.raises(ValueError, match=r"broken.yaml is not valid YAML at line 3, column 1"):
        read_yaml(files["broken"], "recipe")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_yaml(files["binary"], "recipe")


@pytest.mark.parametrize("reader", [read_recipe, read_sweep, is_sweep])
def test_recipe_and_sweep_readers_refuse_broken_yaml(files, reader):
    with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
        reader(files["broken"])


def test_the_train_command_says_it_in_one_line(files, capsys):
    assert main(["train", str(files["broken"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not valid YAML at line 3" in err[0]


def test_labels_with_a_leading_zero_stay_as_written(tmp_path):
    """PyYAML alone reads 010 as 8 (octal) and 001 as 1: a study would prepare the wrong
    subject (negative control: yaml.safe_load)."""
    import yaml

    text = "subjects: [001, 010, 7, 0, 0.5, -012, x]\nmax_steps: 300\nlr: 1.0e-2\n"
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["subjects"][:2] == [1, 8]
    read = read_yaml(path, "study file")
    assert read["subjects"] == ["001", "010", 7, 0, 0.5, "-012", "x"]
    assert read["max_steps"] == 300 and read["lr"] == 0.01


def test_a_study_keeps_zero_padded_subject_labels(tmp_path):
    from wav2brain.study import StudyConfig, plan_study

    bids = tmp_path / "bids"
    bids.mkdir()
    path = tmp_path / "study.yaml"
    path.write_text(
        f"name: s\nout: {tmp_path / 'run'}\ndata: {{bids: {bids}, subjects: [001, 010]}}\n"
        "models: {base: facebook/wav2vec2-base}\nrefine: null\nprobe: null\n"
    )
    prepare = next(s for s in plan_study(StudyConfig.from_yaml(path)) if s.id == "prepare")
    assert prepare.argv[prepare.argv.index("--subjects") + 1 :][:2] == ["001", "010"]
