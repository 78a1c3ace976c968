"""The ``wav2brain`` console script: one entry point, one module per subcommand.

Each subcommand lives in :mod:`wav2brain.commands` as a module exposing ``add_parser(subparsers)``
(which registers the subcommand and sets ``func`` on its parser) so that importing the CLI stays
cheap: heavy libraries are imported inside each command's ``func``. A dash in a subcommand's name
is an underscore in its module's (``compare-models``: ``commands/compare_models.py``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import re
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "simulate",
    "prepare",
    "extract",
    "encode",
    "anchor",
    "selectivity",
    "train",
    "compare-models",
    "make-probe-tasks",
    "probe",
    "check-simulated",
    "report",
    "run",
    "demo",
    "configs",
)

INTERRUPTED = 130
"""Exit status after Ctrl-C: 128 + SIGINT, as the shell reports a process SIGINT ended."""


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered.

    No parser takes an abbreviated option (``--alpha`` is refused, not read as ``--alphas``).
    """
    parser = argparse.ArgumentParser(
        prog="wav2brain",
        description="Link self-supervised speech models to the human brain.",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False),
    )
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"wav2brain.commands.{name.replace('-', '_')}")
        module.add_parser(subparsers)
    for command in subparsers.choices.values():  # descriptions come from the docstrings
        command.description = plain_text(command.description)
    return parser


def plain_text(text: str | None) -> str | None:
    """A docstring line as ``--help`` shows it: reST roles and double backquotes removed
    (``:mod:`wav2brain.study``` -> ``wav2brain.study``)."""
    if text is None:
        return None
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status.

    Bad input (``ValueError``, ``FileNotFoundError``, ``FileExistsError``, ``ConnectionError``)
    prints one line ``wav2brain <command>: error: ...`` and returns 2; Ctrl-C
    (``KeyboardInterrupt``) prints ``wav2brain <command>: interrupted`` and returns 130, the
    shell's status for SIGINT.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        logging.getLogger("wav2brain").debug("traceback of the error below", exc_info=True)
        print(f"wav2brain {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wav2brain {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
