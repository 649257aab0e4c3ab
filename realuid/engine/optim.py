"""Adam settings, checked once for every trainer, and learning-rate schedules.

A schedule multiplies the base learning rate by

    warm-up:  (step + 1) / warmup                      for step < warmup
    constant: 1
    cosine:   final + (1 - final) (1 + cos(pi p)) / 2
    linear:   1 - (1 - final) p

with ``p = (step - warmup) / (steps - warmup)`` the progress through the
steps after the warm-up (clipped to 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from realuid.errors import MAX_STEPS, UserError, check, check_count, check_range

DECAYS = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, warmup: int = 0, decay: str = "constant", final: float = 0.0) -> float:
    """Multiplier of the base lr at ``step`` (0-based; module docstring)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    return 1 - (1 - final) * p


def lr_schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int, decay: str, final: float):
    """``LambdaLR`` of :func:`lr_factor` over ``steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, warmup, decay, final))


def check_adam(owner: str, lrs: dict[str, float], betas, warmup_steps: int, lr_decay: str, lr_final: float,
               grad_clip: float, ema_decay: float, weight_decay: float | None = None) -> None:
    """Every optimiser setting of a trainer, checked in one place (``owner`` is its gin name)."""
    for name, lr in lrs.items():
        check_range(lr, f"{owner}.{name}", 0.0, low_open=True)
    check(isinstance(betas, (tuple, list)) and len(betas) == 2, f"{owner}.betas must be two numbers, got {betas!r}",
          f"{owner}.betas", f"bind {owner}.betas = (0.9, 0.999)")
    for i, beta in enumerate(betas):
        check_range(beta, f"{owner}.betas[{i}]", 0.0, 1.0, high_open=True)
    check_count(warmup_steps, f"{owner}.warmup_steps", 0, MAX_STEPS)
    if lr_decay not in DECAYS:
        raise UserError(f"unknown lr decay {lr_decay!r}", f"{owner}.lr_decay",
                        f"bind {owner}.lr_decay to one of {', '.join(repr(d) for d in DECAYS)}")
    check_range(lr_final, f"{owner}.lr_final", 0.0, 1.0)
    check_range(grad_clip, f"{owner}.grad_clip", 0.0)
    check_range(ema_decay, f"{owner}.ema_decay", 0.0, 1.0, high_open=True)
    if weight_decay is not None:
        check_range(weight_decay, f"{owner}.weight_decay", 0.0)


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas, device: torch.device,
         weight_decay: float | None = None):
    """Adam, or AdamW (decoupled weight decay) when ``weight_decay`` is given; the fused kernel on CUDA."""
    fused = device.type == "cuda"
    if weight_decay is not None:
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=fused)
