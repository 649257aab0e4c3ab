"""General affine flows: ``x_t = a_t x0 + b_t x1`` with a registrable schedule (Lipman et al., 2023).

A flow schedule is a small class: it returns :class:`~realuid.paths.base.PathCoefficients`
(``a, a', b, b'``) at times t, with time running from data (``a_0 = 1, b_0 = 0``)
to noise (``a_1 = 0, b_1 = 1``). Register it as a ``"schedule"`` and bind it::

    @register("schedule")
    class QuarticSchedule(FlowSchedule):
        '''a = 1 - t^4, b = t^4.'''
        def __call__(self, t):
            return PathCoefficients(a=1 - t**4, da=-4 * t**3, b=t**4, db=4 * t**3)

    # recipe
    DistillationTrainer.path = @AffineFlow()
    AffineFlow.scheduler = @QuarticSchedule()

:class:`AffineFlow` checks the schedule when it is built (finite, derivatives
consistent, signal-to-noise ratio decreasing; :mod:`realuid.paths.validation`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from realuid.errors import UserError, check_range
from realuid.paths.base import AffinePath, PathCoefficients
from realuid.paths.validation import validate_coefficients
from realuid.components import register


class FlowSchedule(ABC):
    """(a_t, a'_t, b_t, b'_t) of ``x_t = a_t x0 + b_t x1``; a subclass defines ``__call__``."""

    @abstractmethod
    def __call__(self, t: torch.Tensor) -> PathCoefficients:
        """The coefficients and their time derivatives at times t [B]."""

    def __repr__(self):
        return f"{type(self).__name__}()"


@register("schedule")
class LinearSchedule(FlowSchedule):
    """Linear (rectified flow / conditional OT) schedule: a = 1 - t, b = t."""

    def __call__(self, t):
        one = torch.ones_like(t)
        return PathCoefficients(a=1 - t, da=-one, b=t, db=one)


@register("schedule")
class CosineSchedule(FlowSchedule):
    """Cosine schedule: a = cos(pi t / 2), b = sin(pi t / 2) (variance preserving, a^2 + b^2 = 1).

    The trigonometric interpolant of Albergo & Vanden-Eijnden (2023) and the
    cosine scheduler of the flow-matching literature (Lipman et al., 2024 guide).
    """

    def __call__(self, t):
        half_pi = 0.5 * math.pi
        return PathCoefficients(a=torch.cos(half_pi * t), da=-half_pi * torch.sin(half_pi * t),
                        b=torch.sin(half_pi * t), db=half_pi * torch.cos(half_pi * t))


@register("schedule")
class PolynomialSchedule(FlowSchedule):
    """Polynomial schedule: a = 1 - t^n, b = t^n (n = 1 is the linear schedule).

    Args:
        exponent: n > 0.
    """

    def __init__(self, exponent: float = 2.0):
        check_range(exponent, "PolynomialSchedule.exponent", 0.0, low_open=True)
        self.exponent = float(exponent)

    def __call__(self, t):
        n = self.exponent
        tn = t**n
        dtn = n * t ** (n - 1) if n != 1 else torch.ones_like(t)
        return PathCoefficients(a=1 - tn, da=-dtn, b=tn, db=dtn)

    def __repr__(self):
        return f"PolynomialSchedule(exponent={self.exponent})"


def check_schedule(scheduler, cls: type, owner: str, param: str, example: str = "LinearSchedule") -> None:
    """A UserError unless ``scheduler`` is an instance of ``cls`` (a gin reference left without ``()`` etc.)."""
    if not isinstance(scheduler, cls):
        raise UserError(f"{owner}.{param} must be a {cls.__name__}, got {scheduler!r}", f"{owner}.{param}",
                        f"bind {owner}.{param} = @{example}() (or another registered {cls.__name__}; "
                        "`realuid list-components --kind schedule` lists them)")


@register("path")
class AffineFlow(AffinePath):
    """Affine flow x_t = a_t x0 + b_t x1 with a registrable schedule (linear, cosine, polynomial, yours).

    ``x1 ~ N(0, I)``, ``t ~ U[t_min, t_max]``, velocity target
    ``a'_t x0 + b'_t x1``, weight 1 (Lipman et al., 2023; the affine paths of
    the flow-matching guide, Lipman et al., 2024). With ``LinearSchedule`` it
    equals :class:`~realuid.paths.flow.RectifiedFlow`.

    Args:
        scheduler: a ``FlowSchedule`` (default ``LinearSchedule()``).
        t_min, t_max: the time law's support.
    """

    def __init__(self, scheduler: FlowSchedule | None = None, t_min: float = 1e-4, t_max: float = 1.0):
        super().__init__(t_min, t_max)
        scheduler = LinearSchedule() if scheduler is None else scheduler
        check_schedule(scheduler, FlowSchedule, type(self).__name__, "scheduler")
        self.scheduler = scheduler
        validate_coefficients(self)

    def coefficients(self, t):
        return self.scheduler(t)

    def __repr__(self):
        return f"{type(self).__name__}(scheduler={self.scheduler!r}, t_min={self.t_min}, t_max={self.t_max})"
