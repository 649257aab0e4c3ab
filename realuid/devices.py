"""Where and in what precision tensors compute: device names, dtypes, bf16 autocast, TF32."""

from __future__ import annotations

import contextlib
import functools

import torch

from realuid.errors import UserError, check

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str, where: str = "DistillationTrainer.device") -> torch.device:
    """``'auto'`` (cuda when available, else cpu), ``'cpu'`` or ``'cuda[:i]'``; a UserError when unusable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but CUDA is not available", where,
                        f"bind {where} = 'cpu' (or 'auto')")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{device!r} is not a device", where, f"bind {where} = 'auto', 'cpu' or 'cuda[:i]'") from None


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def in_run_dtype(method):
    """Run a trainer method with torch's default dtype set to the run's (float32 or float64)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with default_dtype(self.dtype):
            return method(self, *args, **kwargs)

    return wrapper


def check_precision(precision: str, dtype: torch.dtype, where: str) -> None:
    check(precision in PRECISIONS, f"unknown precision {precision!r}", f"{where}.precision",
          f"bind {where}.precision = 'fp32' or 'bf16'")
    check(not (precision == "bf16" and dtype == torch.float64), "precision 'bf16' with dtype 'float64' makes no sense",
          f"{where}.precision / {where}.dtype", "use bf16 with dtype 'float32', or precision 'fp32'")


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` to bfloat16 when ``precision == 'bf16'``, else a no-op context."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def enable_tf32(device: torch.device) -> None:
    """Let float32 matmuls and convolutions use TF32 tensor cores on CUDA (about 3x faster, 10-bit mantissa)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
