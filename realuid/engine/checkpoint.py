"""Atomic, checksummed checkpoints that load with ``weights_only=True``.

A checkpoint ``step_00001000.pt`` is written to a temporary file in the same
folder, flushed to disk and renamed, so a kill leaves either the old set or the
new one, never half a file. Beside it, ``step_00001000.pt.sha256`` holds its
digest; loading checks it, and :func:`latest_good` walks back to the newest
checkpoint that passes, warning about each one it skips.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import torch

from realuid.errors import UserError

CHECKPOINT_RE = re.compile(r"^step_(\d{8})\.pt$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ``state`` as ``folder/step_XXXXXXXX.pt`` with its checksum; keep the newest ``keep``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = folder / f"step_{step:08d}.pt"
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + ".sha256"), sha256_bytes(data) + "\n")
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint after checking its sha256; ``weights_only=True`` refuses pickled code."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist", str(path), "give the path of an existing .pt file")
    if sidecar.is_file():
        expected = sidecar.read_text().strip()
        actual = sha256_file(path)
        if expected != actual:
            raise UserError(f"checkpoint {path} is corrupted or truncated: its sha256 is {actual[:12]}..., "
                            f"{sidecar.name} says {expected[:12]}...", str(path),
                            "resume from an earlier checkpoint (delete this one) or re-run the stage")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise UserError(f"checkpoint {path} cannot be loaded safely ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]})", str(path),
                        "checkpoints hold tensors and plain containers only; re-create it with realuid") from None


def latest_good(folder: Path, map_location="cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, warning about each newer one that does not; None if none."""
    for path in reversed(checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except UserError as err:
            warnings.warn(f"skipping bad checkpoint: {err.message}", stacklevel=2)
    return None
