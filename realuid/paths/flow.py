"""Flow matching paths (Lipman et al., 2023; Liu et al., 2023)."""

from __future__ import annotations

import torch

from realuid.paths.base import AffinePath, PathCoefficients
from realuid.components import register


@register("path")
class RectifiedFlow(AffinePath):
    """Linear (rectified) flow: x_t = (1 - t) x0 + t x1, velocity target x1 - x0, t ~ U[t_min, t_max].

    Time runs from data (t = 0, ``x0 ~ p0``) to noise (t = 1, ``x1 ~ N(0, I)``),
    so the velocity ``dx_t/dt = x1 - x0`` points from data to noise and a sampler
    integrates it backwards, from t = 1 to t = 0. Weight ``w(t) = 1`` (DESIGN §2).
    """

    def __init__(self, t_min: float = 1e-4, t_max: float = 1.0):
        super().__init__(t_min, t_max)

    def coefficients(self, t: torch.Tensor) -> PathCoefficients:
        one = torch.ones_like(t)
        return PathCoefficients(a=1 - t, da=-one, b=t, db=one)
