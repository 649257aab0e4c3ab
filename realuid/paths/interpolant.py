"""Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden, 2023): x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z.

``x1 ~ N(0, I)`` (the coupling's other end), ``z ~ N(0, I)`` independent of
both, ``t ~ U[t_min, t_max]``. The Gaussian part of ``x_t`` is
``n = beta x1 + gamma z`` with ``sigma_t^2 = beta_t^2 + gamma_t^2``
(:meth:`~realuid.paths.base.AffinePath.noise_scale`), so every exact answer of
DESIGN §6 holds with ``b_t^2`` replaced by ``sigma_t^2``. Targets:

- velocity ``alpha' x0 + beta' x1 + gamma' z`` (the interpolant's time
  derivative; its regression is the probability-flow velocity ``b(t, x)``);
- denoiser ``x0`` (``E[x0 | x_t]``); epsilon ``n / sigma_t`` and score
  ``-n / sigma_t^2`` follow by the path's conversions.

Schedules are registrable: ``(alpha, beta)`` is any
:class:`~realuid.paths.affine.FlowSchedule`; ``gamma`` is a
:class:`NoiseSchedule`, a small class returning ``(gamma_t, gamma'_t)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from realuid.errors import check_range
from realuid.paths.affine import FlowSchedule, LinearSchedule, check_schedule
from realuid.paths.base import AffinePath, PathCoefficients
from realuid.paths.validation import validate_coefficients
from realuid.components import register


class NoiseSchedule(ABC):
    """(gamma_t, gamma'_t) of a stochastic interpolant's extra noise; a subclass defines ``__call__``."""

    @abstractmethod
    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma and its time derivative at times t [B]."""

    def __repr__(self):
        return f"{type(self).__name__}()"


@register("schedule")
class SqrtNoise(NoiseSchedule):
    """gamma(t) = sqrt(scale t (1 - t)), the Brownian-bridge noise (Albergo et al. 2023).

    ``gamma'(t) = scale (1 - 2t) / (2 gamma)`` is infinite at t = 0 and 1: keep
    the path's t_min > 0 and t_max < 1.

    Args:
        scale: > 0.
    """

    def __init__(self, scale: float = 1.0):
        check_range(scale, "SqrtNoise.scale", 0.0, low_open=True)
        self.scale = float(scale)

    def __call__(self, t):
        g = torch.sqrt(self.scale * t * (1 - t))
        return g, self.scale * (1 - 2 * t) / (2 * g)

    def __repr__(self):
        return f"SqrtNoise(scale={self.scale})"


@register("schedule")
class SineSquaredNoise(NoiseSchedule):
    """gamma(t) = scale sin^2(pi t) (Albergo et al. 2023), gamma' = scale pi sin(2 pi t); smooth at both ends.

    Args:
        scale: > 0.
    """

    def __init__(self, scale: float = 1.0):
        check_range(scale, "SineSquaredNoise.scale", 0.0, low_open=True)
        self.scale = float(scale)

    def __call__(self, t):
        return self.scale * torch.sin(math.pi * t) ** 2, self.scale * math.pi * torch.sin(2 * math.pi * t)

    def __repr__(self):
        return f"SineSquaredNoise(scale={self.scale})"


@register("path")
class StochasticInterpolant(AffinePath):
    """Stochastic interpolant x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z with registrable schedules.

    Albergo, Boffi & Vanden-Eijnden (2023). Velocity target
    ``alpha' x0 + beta' x1 + gamma' z``, denoiser target ``x0``; weight 1;
    time from data (t_min) to noise (t_max). See the module docstring.

    Args:
        scheduler: the (alpha, beta) ``FlowSchedule`` (default ``LinearSchedule()``).
        noise: the gamma ``NoiseSchedule`` (default ``SqrtNoise()``: gamma = sqrt(t (1 - t))).
        t_min, t_max: the time law's support (inside (0, 1) for ``SqrtNoise``).
    """

    def __init__(self, scheduler: FlowSchedule | None = None, noise: NoiseSchedule | None = None,
                 t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        super().__init__(t_min, t_max)
        scheduler = LinearSchedule() if scheduler is None else scheduler
        noise = SqrtNoise() if noise is None else noise
        check_schedule(scheduler, FlowSchedule, "StochasticInterpolant", "scheduler")
        check_schedule(noise, NoiseSchedule, "StochasticInterpolant", "noise", "SqrtNoise")
        self.scheduler, self.noise = scheduler, noise
        validate_coefficients(self)

    @property
    def needs_extra_noise(self) -> bool:
        return True

    def coefficients(self, t):
        s = self.scheduler(t)
        g, dg = self.noise(t)
        return PathCoefficients(a=s.a, da=s.da, b=s.b, db=s.db, g=g, dg=dg)

    def __repr__(self):
        return (f"StochasticInterpolant(scheduler={self.scheduler!r}, noise={self.noise!r}, t_min={self.t_min}, "
                f"t_max={self.t_max})")
