"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """theta_ema <- d theta_ema + (1 - d) theta, with ``d = min(decay, (1 + n) / (10 + n))`` at update n.

    The ramp keeps the average from being pinned to the initial weights on
    short runs (the warm-up used by many diffusion codebases); buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for avg, cur in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(cur.detach(), 1 - d)
        for avg, cur in zip(self.model.buffers(), model.buffers()):
            avg.copy_(cur)
        self.updates += 1

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
