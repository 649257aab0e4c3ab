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
        self._count: int | None = None   # host copy of ``updates``: no device read per update
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_count", None))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._count is None:
            self._count = int(self.updates)
        n = self._count
        d = min(self.decay, (1 + n) / (10 + n))
        averages = list(self.model.parameters())
        if averages:  # one fused launch per group of tensors rather than one per parameter
            torch._foreach_lerp_(averages, [p.detach() for p in model.parameters()], 1 - d)
        for avg, cur in zip(self.model.buffers(), model.buffers()):
            avg.copy_(cur)
        self.updates += 1
        self._count = n + 1

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
