"""Time embeddings shared by every backbone."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Fixed sinusoidal features of a scalar: [cos(t * scale * f_k), sin(t * scale * f_k)].

    Frequencies ``f_k = max_period^(-k / half)`` as in Vaswani et al. (2017) and
    DDPM; ``scale`` maps the path's time range onto the embedding's (1000 for t in [0, 1]).
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalEmbedding dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half),
                             persistent=False)
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = (t.reshape(-1, 1) * self.scale) * self.freqs.to(t.dtype)
        return torch.cat([arg.cos(), arg.sin()], dim=-1)
