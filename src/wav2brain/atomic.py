"""Atomic file writes: a temporary sibling name, then a rename, so no reader sees half a file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` on Linux (reading it by setting it would
    change it for other threads for a moment), else set and set back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_as_umask(path: Path) -> Path:
    """Open ``path`` (and, for a folder, everything under it) as far as the umask allows.

    Two writers used here make owner-only entries whatever the umask: ``tempfile.mkdtemp``
    (folders 0700, the staging folders of atomic outputs) and safetensors since 0.8
    (files 0600, safetensors/safetensors#782), so a colleague on a shared file system could
    read a model's ``config.json`` but not its weights, or not open a report at all. Each entry
    gets the bits a plain ``mkdir`` (0777) or ``open`` (0666) would have under the umask; bits
    are only added, so a stricter umask (077) keeps everything private.
    """
    mask = current_umask()
    entries = [path] if not path.is_dir() else [path, *path.rglob("*")]
    for entry in entries:
        if entry.is_symlink():
            continue
        wanted = (0o777 if entry.is_dir() else 0o666) & ~mask
        mode = entry.stat().st_mode & 0o7777
        if mode | wanted != mode:
            os.chmod(entry, mode | wanted)
    return path


def save_safetensors_atomic(
    tensors: Mapping[str, Any],
    path: Path,
    metadata: Mapping[str, str] | None = None,
    tmp: Path | None = None,
) -> Path:
    """Save numpy arrays or torch tensors as safetensors at ``path``, atomically.

    Written under ``tmp`` (default :func:`partial_path`; give a per-process name where several
    processes may write the same entry), given the umask's permissions (:func:`share_as_umask`)
    and renamed; the temporary file is removed if anything fails.
    """
    import torch

    if any(isinstance(value, torch.Tensor) for value in tensors.values()):
        from safetensors.torch import save_file
    else:
        from safetensors.numpy import save_file
    tmp = partial_path(path) if tmp is None else tmp
    try:
        save_file(dict(tensors), str(tmp), metadata=None if metadata is None else dict(metadata))
        share_as_umask(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_directory(staging: Path, target: Path) -> Path:
    """Rename the finished folder ``staging`` to ``target``; an older ``target`` goes only now.

    ``staging`` must be a sibling of ``target`` (same file system); its entries are first given
    the umask's permissions (:func:`share_as_umask`). The older folder is first renamed aside and
    removed after the new one is in place, so ``target`` is always either the old complete
    folder or the new complete one.
    """
    import shutil

    share_as_umask(staging)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
