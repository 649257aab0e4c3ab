"""Distances between fields and their linearisation (DESIGN §2, §4; paper App. A.4).

Inverse distillation measures ``D(f*, f^theta)`` through a variational form
that is linear in the generator's conditional target ``f_c``. With the fake
model ``f``, ``delta = f - f*`` and a linear target ``a = c_lin f_c - c_t f*``
(``c_lin = beta``, ``c_t = alpha`` on generated samples, ``1 - beta``,
``1 - alpha`` on real ones, DESIGN §3), the per-sample objective ``Phi`` is

    squared l2:     Phi = 2 <delta, a> - c_q ||delta||^2       (max over delta: ||a||^2 / c_q)
    normalised l2:  Phi = < delta / ||delta||, a >            (max over delta: ||a||)

The fake model maximises ``E w Phi`` over generated (and real) samples; the
generator minimises the generated part with ``f`` frozen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from realuid.errors import check_range
from realuid.components import register


def sq_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||^2 per sample: [B, ...] -> [B]."""
    return x.flatten(1).pow(2).sum(-1)


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """<x, y> per sample: [B, ...] -> [B]."""
    return (x * y).flatten(1).sum(-1)


@dataclass(frozen=True)
class Coefficients:
    """(c_q, c_lin, c_t): weights of the quadratic term, the conditional target and the teacher."""

    quadratic: float
    target: float
    teacher: float

    @property
    def zero(self) -> bool:
        return self.quadratic == self.target == self.teacher == 0.0


class Distance(ABC):
    """A distance between fields in its linearised (variational) form."""

    @abstractmethod
    def needs_teacher_in_fake_step(self, c: Coefficients) -> bool:
        """Whether the fake model's loss depends on f* (costs a teacher forward per fake step)."""

    @abstractmethod
    def fake_loss(self, f, f_star, f_c, c: Coefficients) -> torch.Tensor:
        """Per-sample loss the fake model minimises ([B]); equal to -Phi up to f-independent terms."""

    @abstractmethod
    def generator_loss(self, f, f_star, f_c, c: Coefficients) -> torch.Tensor:
        """Per-sample Phi that the generator minimises ([B]), f frozen."""

    @abstractmethod
    def gap(self, f, f_star) -> torch.Tensor:
        """Per-sample distance between f* and f: the UID gap when f is the generator's field."""


@register("distance")
class SquaredL2(Distance):
    """Squared l2: D = E w ||f* - f^theta||^2, Phi = 2<delta, a> - c_q ||delta||^2 (paper eq. 13, 17).

    When ``c_q = c_t`` (RealUID proper, DESIGN §3) the fake loss is the
    regression ``c_q ||f - (c_lin / c_q) f_c||^2``, free of the teacher, and the
    generator loss is ``c_q [||f* - r f_c||^2 - ||f - r f_c||^2]``, ``r = c_lin / c_q``.
    Otherwise (general RealUID with gamma != alpha, SiD with a != 1/2) the
    expanded form ``2<delta, a> - c_q ||delta||^2`` is used.
    """

    def needs_teacher_in_fake_step(self, c):
        return c.quadratic != c.teacher

    def fake_loss(self, f, f_star, f_c, c):
        if c.quadratic == c.teacher:
            return c.quadratic * sq_norm(f - (c.target / c.quadratic) * f_c)
        return self.expanded_fake_loss(f, f_star, f_c, c)

    def generator_loss(self, f, f_star, f_c, c):
        if c.quadratic == c.teacher:
            r = c.target / c.quadratic
            return c.quadratic * (sq_norm(f_star - r * f_c) - sq_norm(f - r * f_c))
        return self.expanded_generator_loss(f, f_star, f_c, c)

    # The general forms, valid for any coefficients (c_q > 0 for the fake loss); the
    # methods above use them when c_q != c_t, and tests compare them with the
    # teacher-free forms at c_q = c_t.
    @staticmethod
    def expanded_fake_loss(f, f_star, f_c, c):
        """-Phi up to f-independent terms: c_q ||f - (c_lin f_c + (c_q - c_t) f*) / c_q||^2."""
        mean = (c.target * f_c + (c.quadratic - c.teacher) * f_star) / c.quadratic
        return c.quadratic * sq_norm(f - mean)

    @staticmethod
    def expanded_generator_loss(f, f_star, f_c, c):
        """Phi = 2 <f - f*, c_lin f_c - c_t f*> - c_q ||f - f*||^2."""
        delta = f - f_star
        return 2 * inner(delta, c.target * f_c - c.teacher * f_star) - c.quadratic * sq_norm(delta)

    def gap(self, f, f_star):
        return sq_norm(f_star - f)


@register("distance")
class NormalizedL2(Distance):
    """Non-squared l2 ("normalized UID", paper App. A.4, eq. 36; Def. 4): Phi = <delta/||delta||, a>.

    ``||a|| = max_d <d / ||d||, a>``, so with ``delta = f - f*`` the min-max
    objective is ``E w < (f - f*) / ||f - f*||, c_lin f_c - c_t f* >``: it
    measures ``E w ||f^theta - f*||`` (not squared), which weighs small errors
    more and large ones less. ``||delta||`` is replaced by
    ``sqrt(||delta||^2 + eps^2)`` so that the direction is defined (and zero)
    where f = f*. The fake loss always needs the teacher.

    Two properties to know (tests/test_objectives.py): only the direction of
    ``f - f*`` enters, so the fake model's magnitude is free (with ``eps > 0``
    the fake loss keeps rewarding a larger ``||f - f*||`` slowly, and the logged
    ``uid_gap`` is not the distance); and in one dimension the direction is a
    sign function whose jump where ``f = f*`` carries a Dirac term in the
    generator's exact gradient that a small ``eps`` never samples, so the
    generator gradient matches ``grad E w ||f^theta - f*||`` (the App. A.4
    analogue of Lemma 1) in two or more dimensions, not in one.

    Args:
        eps: > 0, the smoothing of ||delta|| (data units of the field).
    """

    def __init__(self, eps: float = 1e-6):
        check_range(eps, "NormalizedL2.eps", 0.0, low_open=True)
        self.eps = float(eps)

    def _direction(self, f, f_star):
        delta = f - f_star
        norm = torch.sqrt(sq_norm(delta) + self.eps**2)
        return delta / norm.reshape(-1, *([1] * (delta.ndim - 1)))

    def needs_teacher_in_fake_step(self, c):
        return True

    def fake_loss(self, f, f_star, f_c, c):
        return -inner(self._direction(f, f_star), c.target * f_c - c.teacher * f_star)

    def generator_loss(self, f, f_star, f_c, c):
        return inner(self._direction(f, f_star), c.target * f_c - c.teacher * f_star)

    def gap(self, f, f_star):
        return sq_norm(f_star - f).sqrt()
