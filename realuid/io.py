"""File I/O that a kill cannot leave half done: atomic writes (temporary file, fsync, rename) and checksums."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np

from realuid.errors import UserError

TMP_RE = re.compile(r"^\..+\.tmp\d+(-\d+)?$")
_counter = [0]


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where the file system cannot open folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and rename.

    An ``OSError`` (disk full, unwritable folder) becomes a :class:`UserError`
    naming the file; the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    _counter[0] += 1
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{_counter[0]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(f"cannot write {path} ({err.strerror or err})", str(path.parent),
                        "free disk space or make the folder writable, then continue with --resume") from None
    fsync_folder(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files a killed writer left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and TMP_RE.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes of ``array`` as a ``.npy`` file (for :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
