"""Atomic file writes: a temporary sibling name, then a rename, so no reader sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
"""Suffix of a file while it is written (never matched by the final name's patterns)."""


def partial_path(path: Path) -> Path:
    """Temporary name of ``path`` while it is written."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary name and a rename; return ``path``.

    The parent folder is created; the temporary file is removed if the write fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_directory(staging: Path, target: Path) -> Path:
    """Rename the finished folder ``staging`` to ``target``; an older ``target`` goes only now.

    ``staging`` must be a sibling of ``target`` (same file system). The older folder is first
    renamed aside and removed after the new one is in place, so ``target`` is always either the
    old complete folder or the new complete one.
    """
    import shutil

    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
