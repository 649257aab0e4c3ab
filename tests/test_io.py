"""Atomic writes: a failed write leaves the old file and no temporary."""

from __future__ import annotations

import os

import pytest

from realuid.errors import UserError
from realuid.io import atomic_write_bytes


def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "step_00000010.pt"
    atomic_write_bytes(target, b"old contents")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(UserError) as err:
        atomic_write_bytes(target, b"new contents that never fully reach the disk")
    assert "cannot write" in err.value.message and str(target) in err.value.message
    assert "No space left on device" in err.value.message and "Fix:" in err.value.message
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
