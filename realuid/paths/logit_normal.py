"""Rectified flow with a logit-normal time law (Esser et al. 2024, "Scaling Rectified Flow Transformers", §3.1).

The path is :class:`~realuid.paths.flow.RectifiedFlow`'s, ``x_t = (1 - t) x0 + t x1``
(velocity target ``x1 - x0``, weight 1); only the law of t changes:

    t = sigmoid(m + s n),  n ~ N(0, 1),      density  pi(t) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t))

clipped into ``[t_min, t_max]``. Stable Diffusion 3 trains with ``m = 0, s = 1``.

Why a time law matters for velocity-space objectives (FGM, ``gin/fgm_fm_gmm.gin``):
on this path ``v - v* = -(x0 - x0*) / t``, so a velocity loss under ``t ~ pi`` is the
x0 loss under the time weight ``pi(t) / t^2``. With the uniform law that weight is
``1 / t^2``, unbounded at the data end, so the low-noise times (which shape each mode)
dominate the gradient and the high-noise times (which set the mode weights) count
for little. Under the logit-normal law ``pi(t) / t^2 -> 0`` as ``t -> 0`` (pi vanishes
faster than any power of t), so the weight is bounded. Its shape (relative to its peak):

======  ===========  ========  ========
m, s    peak at t    t = 0.5   t = 0.9
======  ===========  ========  ========
0, 1    0.06         0.14      0.011
1, 1    0.50         1         0.69
1.5, 1  0.89         0.48      0.99
======  ===========  ========  ========

(uniform law: 1 / t^2, unbounded at t -> 0). A positive m moves t towards the noise end.
"""

from __future__ import annotations

import torch

from realuid.components import register
from realuid.errors import check_range
from realuid.paths.flow import RectifiedFlow


@register("path")
class LogitNormalFlow(RectifiedFlow):
    """Rectified flow x_t = (1 - t) x0 + t x1 with t = sigmoid(m + s n), n ~ N(0, 1) (SD3's time law).

    Args:
        m: location of logit t (0: centred on t = 1/2; negative: towards the data end).
        s: scale of logit t, > 0 (SD3: 1).
        t_min, t_max: the law is clipped into this range (the path's support).
    """

    def __init__(self, m: float = 0.0, s: float = 1.0, t_min: float = 1e-4, t_max: float = 1.0):
        check_range(m, "LogitNormalFlow.m")
        check_range(s, "LogitNormalFlow.s", 0.0, low_open=True)
        super().__init__(t_min, t_max)
        self.m, self.s = float(m), float(s)

    def sample_t(self, n, generator=None, device="cpu"):
        logit = self.m + self.s * torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(logit).clamp(self.t_min, self.t_max)

    def __repr__(self):
        return f"LogitNormalFlow(m={self.m}, s={self.s}, t_min={self.t_min}, t_max={self.t_max})"
