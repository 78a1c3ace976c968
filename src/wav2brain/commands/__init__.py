"""Subcommands of the ``wav2brain`` console script, one module each (see :mod:`wav2brain.cli`)."""
