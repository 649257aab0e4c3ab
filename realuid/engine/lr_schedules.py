"""Learning-rate schedules: linear warm-up, then constant, cosine or linear decay."""

from __future__ import annotations

import math

from realuid.errors import UserError

DECAYS = ("constant", "cosine", "linear")


def lr_factor(step: int, total: int, warmup: int = 0, decay: str = "constant", final: float = 0.0) -> float:
    """Multiplier of the base lr at ``step`` (0-based).

    warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps; then
    cosine ``final + (1 - final)(1 + cos(pi p)) / 2`` or linear
    ``1 - (1 - final) p`` with ``p`` the progress through the remaining steps.
    """
    if decay not in DECAYS:
        raise UserError(f"unknown lr decay {decay!r}", "DistillationTrainer.lr_decay", f"use one of {DECAYS}")
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    return 1 - (1 - final) * p
