"""Where and in what precision tensors compute: device names, dtypes, bf16 autocast, TF32."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from realuid.errors import UserError, check

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str, where: str = "TrainingLoop.device") -> torch.device:
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


def to_channels_last(*modules: nn.Module | None) -> None:
    """Store the 4-D weights (convolutions) of each module in channels-last order (NHWC), in place."""
    for module in modules:
        if isinstance(module, nn.Module):
            module.to(memory_format=torch.channels_last)


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
#: the modes that capture and replay CUDA graphs (no effect on CPU)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_networks(*modules: nn.Module | None, regional: bool = False, mode: str = "default") -> None:
    """``torch.compile`` networks in place (parameter names stay the same).

    Whole (``regional=False``): ``module.compile()``, one graph per network
    forward. Regional: each block a network lists in ``compile_regions()`` (the
    U-Net's stages, the DiT's blocks) is compiled on its own, so a block that
    repeats with the same shapes is compiled once and reused: less to compile
    at start, the same kernels inside each block. ``mode`` is torch.compile's
    (``'reduce-overhead'`` replays CUDA graphs; ``'max-autotune...'`` searches
    kernel configurations).

    Shapes are static: each batch size (B for the generator, 2B for the fake
    model's generated + real batch, the evaluation batch) gets its own graph,
    specialised kernels rather than one symbolic-shape graph. Compiled code is
    cached on disk by inductor (``TORCHINDUCTOR_CACHE_DIR``, by default
    ``/tmp/torchinductor_<user>``): a second process with the same code, shapes
    and torch version starts from the cache.
    """
    # Every U-Net instance (teacher, fake model, generator, their EMA) shares one ``forward`` code object, and
    # each (instance, grad mode, batch size) is a cache entry of it: dynamo's default of 8 entries would
    # silently send the rest back to eager mode.
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
    options = {} if mode == "default" else {"mode": mode}
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        regions = module.compile_regions() if regional and hasattr(module, "compile_regions") else [module]
        for region in regions:
            region.compile(dynamic=False, **options)
