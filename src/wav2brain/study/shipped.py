"""The study files, recipes and accelerate configs shipped with the package (``hf_configs/``).

They are package data, so a wheel install has them as a checkout does (the repository's
``hf_configs/`` links to this folder). :func:`copy_configs` copies them into a folder of the
user's as ``hf_configs/``, where the study files find their recipes (``refine.recipe:
hf_configs/refine_sim.yaml``) as they do in a checkout: ``wav2brain run --config
hf_configs/study_sim.yaml`` run from that folder reads the copies, which can be edited.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "hf_configs"
"""The shipped files (inside the installed package)."""


def shipped_configs() -> list[Path]:
    """Every shipped YAML file, relative to :data:`CONFIG_DIR`, sorted."""
    return sorted(path.relative_to(CONFIG_DIR) for path in CONFIG_DIR.rglob("*.yaml"))


def describe(relative: Path) -> str:
    """The first comment line of a shipped file (what it is), without the ``#``."""
    for line in (CONFIG_DIR / relative).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy_configs(dest: str | Path) -> list[Path]:
    """Copy every shipped file to ``dest/hf_configs/``; return the written paths.

    Raises
    ------
    FileExistsError
        A file of that name is already there (named; nothing is copied, so edited copies are
        never overwritten).
    """
    target = Path(dest) / CONFIG_DIR.name
    files = shipped_configs()
    if existing := [str(target / name) for name in files if (target / name).exists()]:
        raise FileExistsError(
            f"{len(existing)} shipped files are already in {target}, e.g. {existing[0]}: copy "
            "into another folder, or remove them first"
        )
    written = []
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copy2(CONFIG_DIR / name, target / name)))
    return written
