"""The ``wav2brain`` console script: every subcommand registers, bad arguments exit with status 2,
nothing heavy is imported before a command runs, and ``import wav2brain`` still registers the
Auto classes (checked in fresh interpreters)."""

from __future__ import annotations

import pytest

from wav2brain.cli import SUBCOMMAND_MODULES, build_parser, main


def test_every_subcommand_registers():
    parser = build_parser()
    help_text = parser.format_help()
    for name in SUBCOMMAND_MODULES:
        assert name in help_text


def test_unknown_subcommand_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_value_error_becomes_exit_status_2_with_message(tmp_path, capsys):
    status = main(["demo", "--out", str(tmp_path / "demo"), "--seed", "-1"])
    assert status == 2
    err = capsys.readouterr().err
    assert "wav2brain demo: error:" in err and "--seed" in err
    assert not (tmp_path / "demo").exists()


def test_missing_bids_root_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_bids"
    status = main(["prepare", str(missing), "--out", str(tmp_path / "out")])
    assert status == 2
    assert str(missing) in capsys.readouterr().err


ENCODE = ["encode", "d", "--features", "f", "--out", "o"]


def test_no_parser_takes_an_abbreviated_option(capsys):
    parser = build_parser()
    (subcommands,) = (action.choices for action in parser._subparsers._group_actions)
    assert not parser.allow_abbrev and not any(p.allow_abbrev for p in subcommands.values())
    assert parser.parse_args(["--verbose", *ENCODE, "--alphas", "1"]).alphas == [1.0]
    for argv, word in (([*ENCODE, "--alpha", "1"], "--alpha 1"), (["--verb", *ENCODE], "--verb")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert f"unrecognized arguments: {word}" in capsys.readouterr().err


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """A recipe YAML, and the recipe runner replaced by one that records its training options."""
    from wav2brain.training import recipe as recipe_module

    runs = []
    monkeypatch.setattr(recipe_module, "run_recipe", lambda *args: runs.append(args[2]) or {})
    path = tmp_path / "r.yaml"
    path.write_text(f"model_name_or_path: m\ndataset: d\noutput_dir: {tmp_path / 'o'}\n")
    return path, runs


def test_train_takes_recipe_options_by_their_full_names_only(recipe, capsys):
    path, runs = recipe
    assert main(["train", str(path), "--max_steps", "5"]) == 0
    assert [training.max_steps for training in runs] == [5]
    for option in ("--max_step", "--swe"):  # neither --max_steps nor train.py's --sweep
        assert main(["train", str(path), option, "5"]) == 2
        assert f"error: unrecognized arguments: {option} 5" in capsys.readouterr().err
    assert len(runs) == 1  # refused before the run
    assert main(["train", str(path), "--max_step", "5"]) == 2
    assert capsys.readouterr().err.startswith("wav2brain train: error: ")  # as other commands


def interrupted(*args):
    raise KeyboardInterrupt


def status_after_ctrl_c(run, *args) -> int:
    """``run(*args)``'s status, failing the test (not ending pytest) if Ctrl-C escapes it."""
    try:
        return run(*args)
    except KeyboardInterrupt:
        pytest.fail(f"KeyboardInterrupt escaped {run.__module__}.main")


def test_ctrl_c_in_a_command_prints_one_line_and_exits_130(monkeypatch, capsys):
    from wav2brain.commands import encode

    monkeypatch.setattr(encode, "run", interrupted)
    assert status_after_ctrl_c(main, ENCODE) == 130
    assert capsys.readouterr().err == "wav2brain encode: interrupted\n"

    def failing(args):  # negative control: another exception is not taken for an interruption
        raise RuntimeError("bug")

    monkeypatch.setattr(encode, "run", failing)
    with pytest.raises(RuntimeError, match="bug"):
        main(ENCODE)


def test_ctrl_c_in_training_prints_one_line_and_exits_130(recipe, monkeypatch, capsys):
    from wav2brain.training import cli as training_cli
    from wav2brain.training import recipe as recipe_module

    path, _ = recipe
    monkeypatch.setattr(recipe_module, "run_recipe", interrupted)
    assert status_after_ctrl_c(main, ["train", str(path)]) == 130
    assert capsys.readouterr().err == "wav2brain train: interrupted\n"
    assert status_after_ctrl_c(training_cli.main, ["--config", str(path)]) == 130  # train.py
    assert capsys.readouterr().err == "train: interrupted\n"


HEAVY = ("torch", "transformers", "datasets", "nilearn", "sklearn")
"""Libraries the command line must not import before it runs a command (each costs seconds)."""

PROBE = """
import json, sys
from wav2brain.cli import SUBCOMMAND_MODULES, main

def probe(argv):
    try:
        main(argv)
    except SystemExit as exit:
        status = exit.code
    else:
        status = None
    return {"status": status, "loaded": sorted(m for m in sys.modules if "." not in m)}

cases = {"--help": ["--help"]}
cases.update({f"{name} --help": [name, "--help"] for name in SUBCOMMAND_MODULES})
cases["extract (missing arguments)"] = ["extract"]
cases["encode (bad choice)"] = ["encode", "x", "--features", "f", "--out", "o", "--criterion", "x"]
cases["prepare (bad number)"] = ["prepare", "root", "--out", "o", "--trim-start", "many"]
print(json.dumps({case: probe(argv) for case, argv in cases.items()}))
"""


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (this one's, same ``PYTHONPATH``); return its stdout."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_help_and_argument_errors_import_no_heavy_library():
    import json

    results = json.loads(run_python(PROBE).splitlines()[-1])
    assert len(results) == len(SUBCOMMAND_MODULES) + 4
    for case, result in results.items():
        assert result["status"] == (0 if case.endswith("--help") else 2), case
        assert not set(HEAVY) & set(result["loaded"]), (case, set(HEAVY) & set(result["loaded"]))
    assert "argparse" in results["--help"]["loaded"]


def test_the_probe_sees_a_heavy_import():
    """Negative control: a command line that had imported the encoding package is caught."""
    import json

    results = json.loads(run_python("import wav2brain.encoding\n" + PROBE).splitlines()[-1])
    assert {"torch", "sklearn"} <= set(results["--help"]["loaded"])


def test_extract_options_left_unset_take_the_config_defaults():
    from wav2brain.commands.extract import _configs
    from wav2brain.features.extract import ExtractionConfig
    from wav2brain.features.taps import TENSORS

    parser = build_parser()
    args = parser.parse_args(["extract", "d", "--model", "m", "--out", "o"])
    assert _configs(args)[0] == ExtractionConfig()
    args = parser.parse_args(["extract", "d", "--model", "m", "--out", "o", "--batch-size", "2"])
    assert _configs(args)[0] == ExtractionConfig(batch_size=2)
    extract_help = next(
        action.choices["extract"].format_help()
        for action in parser._subparsers._group_actions
        if "extract" in action.choices
    )
    assert all(tensor in extract_help for tensor in TENSORS)
    bad = parser.parse_args(["extract", "d", "--model", "m", "--out", "o", "--tensor", "keys"])
    with pytest.raises(ValueError, match="tensor must be one of"):
        _configs(bad)


REGISTRATION = """
import sys
path, order = sys.argv[1], sys.argv[2]
if order == "transformers-first":
    from transformers import AutoConfig
    try:
        AutoConfig.for_model("wav2vec2-brain-encoding")
    except ValueError:
        print("unknown before import wav2brain")  # negative control: nothing registers it
import wav2brain
assert "torch" not in sys.modules or order == "transformers-first"
if order == "without-deferral":  # negative control: register as soon as modeling_auto is loaded
    class Never(set):
        def __bool__(self):
            return False

    wav2brain.registration._loading = Never()
if order in ("model-class-first", "without-deferral"):
    try:
        from transformers import Wav2Vec2Model  # modeling_auto loads inside modeling_wav2vec2
    except ImportError:
        print("import failed")
        sys.exit(0)
from transformers import AutoConfig, AutoModel
config = AutoConfig.for_model("wav2vec2-brain-encoding", num_voxels=3)
model = AutoModel.from_pretrained(path)
print(type(config).__name__, type(model).__name__, model.config.num_voxels)
print(any(type(f).__name__ == "RegistrationFinder" for f in sys.meta_path))
"""


@pytest.fixture(scope="module")
def saved_brain_model(tmp_path_factory):
    from conftest import tiny_wav2vec2_kwargs
    from wav2brain import Wav2Vec2BrainEncodingConfig, Wav2Vec2ForBrainEncoding

    path = tmp_path_factory.mktemp("brain")
    config = Wav2Vec2BrainEncodingConfig(num_voxels=5, **tiny_wav2vec2_kwargs())
    Wav2Vec2ForBrainEncoding(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("order", ["wav2brain-first", "model-class-first", "transformers-first"])
def test_import_wav2brain_registers_the_auto_classes(saved_brain_model, order):
    """In a fresh interpreter, whatever transformers imports first; the finder then leaves."""
    lines = run_python(REGISTRATION, str(saved_brain_model), order).splitlines()
    if order == "transformers-first":
        assert lines.pop(0) == "unknown before import wav2brain"
    assert lines == ["Wav2Vec2BrainEncodingConfig Wav2Vec2ForBrainEncoding 5", "False"]


def test_negative_control_registering_mid_import_breaks_transformers(saved_brain_model):
    """Without waiting for transformers' imports to finish, importing a model class fails."""
    lines = run_python(REGISTRATION, str(saved_brain_model), "without-deferral").splitlines()
    assert lines == ["import failed"]


def test_the_data_package_loads_its_windows_and_torch_only_when_asked():
    """The converters' command lines start without torch; the windows bring it when used."""
    import json

    code = (
        "import json, sys\n"
        "import wav2brain.data\n"
        "before = 'torch' in sys.modules\n"
        "wav2brain.data.BrainWindows\n"
        "print(json.dumps([before, 'torch' in sys.modules]))\n"
    )
    assert json.loads(run_python(code).splitlines()[-1]) == [False, True]


def test_help_shows_plain_text_not_restructuredtext(capsys):
    from wav2brain.cli import plain_text

    assert plain_text("``wav2brain run``: see :mod:`wav2brain.study` and :func:`~a.b`.") == (
        "wav2brain run: see wav2brain.study and a.b."
    )
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = capsys.readouterr().out
    assert "wav2brain.study" in shown and ":mod:" not in shown and "``" not in shown
