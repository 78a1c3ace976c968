"""``wav2brain configs``: the shipped study files and recipes, listed and copied to edit."""

from __future__ import annotations

from wav2brain.cli import main
from wav2brain.study import StudyConfig, plan_study
from wav2brain.study.shipped import CONFIG_DIR, shipped_configs


def test_every_shipped_file_is_listed_with_what_it_is(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = [name.as_posix() for name in shipped_configs()]
    assert {"study_sim.yaml", "refine_sim.yaml", "accelerate/cpu.yaml"} <= set(names)
    assert all(f"hf_configs/{name}" in out for name in names)
    assert str(CONFIG_DIR) in out and "SIMULATED" in out


def test_copies_run_from_their_folder_and_are_never_overwritten(tmp_path, capsys, monkeypatch):
    assert main(["configs", "--copy", str(tmp_path)]) == 0
    for name in shipped_configs():
        assert (tmp_path / "hf_configs" / name).read_bytes() == (CONFIG_DIR / name).read_bytes()
    study = tmp_path / "hf_configs" / "study_sim.yaml"
    study.write_text(study.read_text().replace("max_steps: 2000", "max_steps: 300"))
    capsys.readouterr()
    assert main(["configs", "--copy", str(tmp_path)]) == 2  # negative control: refused
    assert "already in" in capsys.readouterr().err
    assert "max_steps: 300" in study.read_text()  # the edited copy is kept
    monkeypatch.chdir(tmp_path)
    config = StudyConfig.from_yaml("hf_configs/study_sim.yaml")
    refine = next(step for step in plan_study(config) if step.id == "refine")
    assert refine.argv[1] == "hf_configs/refine_sim.yaml"  # the copy, read from this folder
    assert refine.argv[refine.argv.index("--max_steps") + 1] == "300"
