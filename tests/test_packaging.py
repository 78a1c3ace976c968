"""What a wheel install gets: the package data (the study files and recipes of ``hf_configs/``,
model-card templates, the metric script), and a demo that runs without the source checkout.

The wheel is built offline from a copy of the sources (``pip wheel --no-build-isolation``, with
the setuptools of the test environment), installed with ``pip install --target`` and imported
from there by a Python started in an empty folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "wav2brain"


def _pip(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--no-input"], check=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(PACKAGE.parent, source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(out))
    (path,) = out.glob("wav2brain-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    return target


def _run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_the_repository_hf_configs_is_the_package_folder():
    assert (ROOT / "hf_configs").resolve() == (PACKAGE / "hf_configs").resolve()


def test_the_wheel_ships_every_config_and_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"wav2brain/{path.relative_to(PACKAGE).as_posix()}"
        for path in (PACKAGE / "hf_configs").rglob("*.yaml")
    }
    assert {
        "wav2brain/hf_configs/study_sim.yaml",
        "wav2brain/hf_configs/refine_sim.yaml",
    } <= configs
    assert "wav2brain/hf_configs/accelerate/cpu.yaml" in configs
    assert configs <= names, sorted(configs - names)
    templates = {
        f"wav2brain/{path.relative_to(PACKAGE).as_posix()}"
        for pattern in ("model_cards/*", "metrics/voxelwise_correlation/*.py")
        for path in PACKAGE.glob(pattern)
        if path.is_file()
    }
    assert templates and templates <= names, sorted(templates - names)


def test_a_wheel_install_runs_the_demo_plan_from_an_empty_folder(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run_installed(installed, empty, "-c", "import wav2brain; print(wav2brain.__file__)")
    assert Path(where.stdout.strip()).parent == installed / "wav2brain", where.stderr
    result = _run_installed(installed, empty, "-m", "wav2brain", "demo", "--out", "runs/demo",
                            "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    recipe = installed / "wav2brain" / "hf_configs" / "refine_sim.yaml"
    assert f"[refine] would run: wav2brain train {recipe} " in result.stdout
    assert "[report] would run: wav2brain report" in result.stdout
    assert not (empty / "runs").exists()  # a dry run writes nothing


def test_a_wheel_without_the_study_file_names_it(installed, tmp_path):
    """Negative control: the demo reads the installed copy, so removing it there breaks it."""
    broken = tmp_path / "site"
    shutil.copytree(installed, broken)
    study = broken / "wav2brain" / "hf_configs" / "study_sim.yaml"
    study.unlink()
    result = _run_installed(broken, tmp_path, "-m", "wav2brain", "demo", "--out", "x", "--dry-run")
    assert result.returncode != 0
    assert str(study) in result.stderr
