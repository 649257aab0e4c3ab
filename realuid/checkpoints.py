"""Atomic, checksummed checkpoints that load with ``weights_only=True``.

A checkpoint ``step_00001000.pt`` is written to a temporary file in the same
folder, flushed to disk and renamed over its final name, so a kill leaves
either the old file or the new one, never half a file. Its sha256 digest goes
to ``step_00001000.pt.sha256``, written (atomically too) *before* the
checkpoint itself: a checkpoint file never exists without the digest it must
match. Loading checks the digest and refuses a file that has none, then
unpickles with ``torch.load(weights_only=True)``, which accepts tensors and
plain containers only and refuses a pickle that would run code.
:func:`latest_good` walks back from the newest checkpoint to the newest one
that passes, printing a warning that names each one it skips.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from realuid.errors import UserError, warn
from realuid.io import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file

CHECKPOINT_RE = re.compile(r"^step_(\d{8})\.pt$")
_REFUSED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step number in a checkpoint's file name."""
    match = CHECKPOINT_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named step_XXXXXXXX.pt")
    return int(match.group(1))


def save_checkpoint(folder: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ``state`` as ``folder/step_XXXXXXXX.pt`` after its checksum; keep the newest ``keep``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the checkpoint folder {folder} ({err.strerror or err})", str(folder),
                        "free disk space or make the run folder writable, then continue with --resume") from None
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = checkpoint_path(folder, step)
    atomic_write_text(path.with_name(path.name + ".sha256"), sha256_bytes(data) + "\n")
    atomic_write_bytes(path, data)
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


def verify_checkpoint(path: Path) -> None:
    """Raise a :class:`UserError` naming ``path`` unless it exists and matches its ``.sha256``."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist", str(path), "give the path of an existing .pt file")
    if not sidecar.is_file():
        raise UserError(f"checkpoint {path} has no checksum file {sidecar.name}, so it cannot be verified",
                        str(path), "use a checkpoint written by realuid together with its .sha256 file")
    expected = sidecar.read_text().strip()
    actual = sha256_file(path)
    if expected != actual:
        raise UserError(f"checkpoint {path} is corrupted or truncated: its sha256 is {actual[:12]}..., "
                        f"{sidecar.name} says {expected[:12]}...", str(path),
                        "resume from an earlier checkpoint (delete this one) or re-run the stage")


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint after checking its sha256; ``weights_only=True`` refuses pickled code."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        refused = _REFUSED.search(text)
        reason = (f"it asks to run {refused.group(1)}, which weights_only=True refuses" if refused else
                  f"{type(err).__name__}: {(text.strip().splitlines() or [''])[0][:200]}")
        raise UserError(f"checkpoint {path} cannot be loaded safely ({reason})", str(path),
                        "checkpoints hold tensors and plain containers only; never load one from an "
                        "untrusted source, re-create it with realuid") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a realuid state dict", str(path),
                        "give a checkpoint written by realuid")
    return state


def latest_good(folder: Path, map_location="cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, warning about each newer one that does not; None if none."""
    skipped = []
    for path in reversed(checkpoints(folder)):
        try:
            state = load_checkpoint(path, map_location)
        except UserError as err:
            warn(f"skipping bad checkpoint: {err.message}")
            skipped.append(path)
            continue
        if skipped:
            warn(f"falling back to the previous good checkpoint {path}")
        return path, state
    return None


def first_mismatch(expected: dict, given: dict) -> tuple[str, str] | None:
    """The first way a state dict ``given`` does not fit ``expected`` (a module's state dict), or None.

    ``("missing", name)`` or ``("shape", name)`` for the first of ``expected``'s
    tensors that is absent or shaped otherwise, then ``("extra", name)`` for the
    first tensor ``expected`` lacks. Callers word the error for their own files.
    """
    for name, tensor in expected.items():
        if name not in given:
            return "missing", name
        if tuple(given[name].shape) != tuple(tensor.shape):
            return "shape", name
    extra = [name for name in given if name not in expected]
    return ("extra", extra[0]) if extra else None
