"""The README's command lines and examples stay true.

Every command line in a ``bash`` block of README.md that runs ``wav2brain``, ``train.py`` (also under
``torchrun`` / ``accelerate launch``) or a ``dataset_scripts`` converter is parsed by that program's
own parser, so a renamed or removed option, a missing required one or a wrong choice fails here;
every repository file the README names exists. Nothing is run. Commands and files that issue 12 is
still adding (:data:`ISSUE12_COMMANDS`, :data:`ISSUE12_FILES`) are skipped only while they are
absent. The first Python example runs in ``tests/test_windows.py``; here the ridge and LoRA
examples run as printed, on tiny inputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wav2brain.cli import SUBCOMMAND_MODULES, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ISSUE12_COMMANDS = frozenset({"run", "report", "check-simulated"})
"""Subcommands the README documents before they are registered (issue 12)."""
ISSUE12_OPTIONS = {"demo": frozenset({"--model"})}
"""Options of registered subcommands the README documents before they exist (issue 12)."""
ISSUE12_FILES = frozenset(
    {
        "hf_configs/study_sim.yaml",
        "hf_configs/study_narratives.yaml",
        "hf_configs/study_lebel.yaml",
        "src/wav2brain/distributed.py",
        "src/wav2brain/__main__.py",
    }
)
"""Files the README names before they exist (issue 12)."""
REPO_PATH = re.compile(
    r"`((?:hf_configs|dataset_scripts|benchmarks|tests|src/wav2brain)/[\w./-]+\.(?:py|yaml|md|json|bib))`"
)


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the ``language`` fenced blocks of ``text``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def command_lines(text: str) -> list[str]:
    """Every command of the ``bash`` blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"\s(?:&&|;)\s", line):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(shlex.join(words))
    return commands


def program(words: list[str]) -> tuple[str, list[str]] | None:
    """``(kind, argv)`` of the wav2brain program a command runs, or None for any other program.

    ``kind`` is ``"wav2brain"`` (argv from the subcommand on), ``"recipe"`` (train.py's options,
    ``wav2brain train RECIPE`` included) or a ``dataset_scripts/*.py`` path; launchers
    (``python``, ``torchrun``, ``accelerate launch``, ``srun``) and their own options are skipped.
    """
    for i, word in enumerate(words):
        if word == "wav2brain" and (i == 0 or words[i - 1] == "-m"):
            argv = words[i + 1 :]
            if argv[:1] == ["train"] and len(argv) > 1:
                return "recipe", _recipe_argv(argv[1], argv[2:])
            return "wav2brain", argv
        if word.endswith("train.py"):
            return "recipe", words[i + 1 :]
        if word.startswith("dataset_scripts/") and word.endswith(".py"):
            return word, words[i + 1 :]
    return None


def _recipe_argv(recipe: str, rest: list[str]) -> list[str]:
    from wav2brain.training.sweep import is_sweep

    sweep = (ROOT / recipe).is_file() and is_sweep(ROOT / recipe)
    return ["--sweep" if sweep else "--config", recipe, *rest]


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a converter's arguments parsed."""


@contextmanager
def _stop_after_parsing(monkeypatch) -> Iterator[None]:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    yield


def check_command(kind: str, argv: list[str], monkeypatch) -> None:
    """Parse ``argv`` with the parser of ``kind``; argparse exits (SystemExit) on a bad line."""
    if "--help" in argv or "-h" in argv:
        argv = [word for word in argv if word not in ("--help", "-h")]
        if kind == "wav2brain":
            assert argv and _options(argv[0])
        return
    if kind == "wav2brain":
        build_parser().parse_args(argv)
    elif kind == "recipe":
        from wav2brain.training.arguments import parse_recipe_args
        from wav2brain.training.sweep import read_sweep

        monkeypatch.chdir(ROOT)
        if argv[:1] == ["--sweep"]:
            sweep = read_sweep(argv[1])
            argv = ["--config", str(sweep["recipe"]), *argv[2:]]
        parse_recipe_args(argv)
    else:
        spec = importlib.util.spec_from_file_location(Path(kind).stem, ROOT / kind)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with _stop_after_parsing(monkeypatch), pytest.raises(_Parsed):
            module.main(argv)


def _options(subcommand: str) -> set[str]:
    """The option strings of a registered subcommand."""
    choices = build_parser()._subparsers._group_actions[0].choices
    return set(choices[subcommand]._option_string_actions)


def readme_commands() -> list[tuple[str, list[str]]]:
    found = []
    for line in command_lines(README.read_text(encoding="utf-8")):
        parsed = program(shlex.split(line))
        if parsed is not None:
            found.append(parsed)
    return found


@pytest.mark.parametrize(
    ("kind", "argv"),
    readme_commands(),
    ids=lambda value: " ".join(value)[:70] if isinstance(value, list) else value,
)
def test_readme_command_parses(kind, argv, monkeypatch):
    if kind == "wav2brain" and argv[0] in ISSUE12_COMMANDS and argv[0] not in SUBCOMMAND_MODULES:
        pytest.skip(f"wav2brain {argv[0]} is not registered yet (issue 12)")
    pending = ISSUE12_OPTIONS.get(argv[0], frozenset()) & set(argv) if kind == "wav2brain" else ()
    if pending and not set(pending) <= _options(argv[0]):
        pytest.skip(f"wav2brain {argv[0]} {sorted(pending)} not added yet (issue 12)")
    check_command(kind, argv, monkeypatch)


def test_readme_names_the_commands_of_every_subcommand():
    """Every registered subcommand appears in a README command line (the tour is complete)."""
    used = {"train"} if any(k == "recipe" for k, _ in readme_commands()) else set()
    used |= {argv[0] for kind, argv in readme_commands() if kind == "wav2brain" and argv}
    assert set(SUBCOMMAND_MODULES) <= used, sorted(set(SUBCOMMAND_MODULES) - used)


@pytest.mark.parametrize(
    "argv",
    [
        ["encode", "sim_hf", "--features", "feats", "--out", "enc", "--no-such-option"],
        ["encode", "sim_hf", "--out", "enc"],  # --features is required
        ["extract", "sim_hf", "--model", "m", "--out", "f", "--method", "gauss"],
    ],
)
def test_a_wrong_command_line_fails_the_check(argv, monkeypatch):
    """Negative control: the check rejects an unknown option, a missing one, a bad choice."""
    with pytest.raises(SystemExit):
        check_command("wav2brain", argv, monkeypatch)


def test_a_wrong_recipe_option_fails_the_check(monkeypatch):
    with pytest.raises(ValueError, match="lora_rnak"):
        check_command(
            "recipe", ["--config", "hf_configs/refine_sim.yaml", "--lora_rnak", "8"], monkeypatch
        )


def test_a_wrong_converter_option_fails_the_check(monkeypatch):
    with pytest.raises(SystemExit):
        check_command(
            "dataset_scripts/narratives.py", ["ds002345", "--out", "o", "--keep-all"], monkeypatch
        )


def test_commands_are_found_through_launchers():
    lines = (
        "```bash\ntorchrun --nproc_per_node 2 -m wav2brain extract d --model m \\\n    --out f\n"
    )
    lines += "cd x && python train.py --config c.yaml  # comment\nhf download m\n```\n"
    found = [program(shlex.split(line)) for line in command_lines(lines)]
    assert found == [
        ("wav2brain", ["extract", "d", "--model", "m", "--out", "f"]),
        None,
        ("recipe", ["--config", "c.yaml"]),
        None,
    ]


def test_repository_files_named_in_the_readme_exist():
    named = set(REPO_PATH.findall(README.read_text(encoding="utf-8")))
    assert named, "no repository path found: the pattern is broken"
    missing = sorted(p for p in named if not (ROOT / p).is_file() and p not in ISSUE12_FILES)
    assert not missing, missing


def _python_block(containing: str) -> str:
    blocks = [b for b in fenced(README.read_text(encoding="utf-8"), "python") if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} Python blocks of the README contain {containing!r}"
    return blocks[0]


def test_the_readme_ridge_example_runs():
    import numpy as np

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((20, 30)).astype(np.float32)
    X_train = rng.standard_normal((120, 20)).astype(np.float32)
    X_test = rng.standard_normal((40, 20)).astype(np.float32)
    namespace = {
        "X_train": X_train,
        "Y_train": X_train @ weights + rng.standard_normal((120, 30)).astype(np.float32),
        "runs_train": np.repeat(np.arange(5), 24),
        "X_test": X_test,
        "Y_test": X_test @ weights + rng.standard_normal((40, 30)).astype(np.float32),
    }
    exec(compile(_python_block("RidgeCV(alphas"), "README.md", "exec"), namespace)
    assert namespace["r"].shape == (30,) and float(namespace["r"].mean()) > 0.8


def test_the_readme_lora_example_runs(tmp_path):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from conftest import tiny_wav2vec2_kwargs
    from wav2brain.training.lora import has_lora

    code = _python_block("add_lora(model,")
    assert code.count('"facebook/wav2vec2-base"') == 1
    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**tiny_wav2vec2_kwargs())).save_pretrained(tmp_path / "tiny")
    namespace: dict = {}
    code = code.replace('"facebook/wav2vec2-base"', repr(str(tmp_path / "tiny")))
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    total = sum(p.numel() for p in model.parameters())
    assert 0 < namespace["trainable"] < total and not has_lora(model)


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_point_at_its_headings():
    text = README.read_text(encoding="utf-8")
    anchors = {heading_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "no in-page link found: the pattern is broken"
    assert links <= anchors, sorted(links - anchors)


def test_heading_anchors_follow_github():
    assert heading_anchor("`wav2brain train` / `train.py`: the recipe") == (
        "wav2brain-train--trainpy-the-recipe"
    )
    assert heading_anchor("From the outputs to the papers' figures") == (
        "from-the-outputs-to-the-papers-figures"
    )
