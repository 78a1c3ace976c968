"""Outputs are readable as the umask allows: mkdtemp staging folders (0700) and safetensors
files (0600 since safetensors 0.8, safetensors/safetensors#782) are opened up to it."""

from __future__ import annotations

import os
import stat
import tempfile

import numpy as np
import pytest

from wav2brain.atomic import replace_directory, save_safetensors_atomic, share_as_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_safetensors_alone_writes_owner_only_files_and_ours_follow_the_umask(tmp_path, umask_022):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(3)}, str(tmp_path / "raw.safetensors"))
    assert mode(tmp_path / "raw.safetensors") == 0o600  # the upstream behaviour (control)
    path = save_safetensors_atomic({"a": np.zeros(3)}, tmp_path / "ours.safetensors", {"k": "v"})
    assert mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.safetensors", "raw.safetensors"]


def test_a_staged_folder_replaces_its_target_readable_by_others(tmp_path, umask_022):
    staging = tempfile.mkdtemp(dir=tmp_path)
    assert mode(staging) == 0o700
    os.makedirs(os.path.join(staging, "sub"))
    os.chmod(os.path.join(staging, "sub"), 0o700)
    weights = os.path.join(staging, "sub", "model.safetensors")
    open(weights, "w").close()
    os.chmod(weights, 0o600)
    target = replace_directory(tmp_path / staging.rsplit("/", 1)[1], tmp_path / "export")
    assert mode(target) == 0o755 and mode(target / "sub") == 0o755
    assert mode(target / "sub" / "model.safetensors") == 0o644


def test_bits_are_only_added_and_a_strict_umask_keeps_things_private(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    os.chmod(private, 0o700)
    (private / "f").write_text("")
    os.chmod(private / "f", 0o640)
    old = os.umask(0o077)
    try:
        share_as_umask(private)
        assert mode(private) == 0o700 and mode(private / "f") == 0o640  # nothing removed
        os.umask(0o022)
        share_as_umask(private)
        assert mode(private) == 0o755 and mode(private / "f") == 0o644
    finally:
        os.umask(old)
