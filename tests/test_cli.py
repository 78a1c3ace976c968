"""The ``wav2brain`` console script: every subcommand registers, bad arguments exit with status 2."""

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
    status = main(["demo", "--out", str(tmp_path / "demo"), "--train-steps", "0"])
    assert status == 2
    err = capsys.readouterr().err
    assert "wav2brain demo: error:" in err and "--train-steps" in err
    assert not (tmp_path / "demo").exists()


def test_missing_bids_root_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_bids"
    status = main(["prepare", str(missing), "--out", str(tmp_path / "out")])
    assert status == 2
    assert str(missing) in capsys.readouterr().err
