"""Objectives: the fake model's loss and the generator's loss, composed from a path and a distance.

Every objective sees the same pieces (DESIGN §2-4): the frozen teacher f*, the
fake model f, the path, a generated :class:`PathSample` (``x0 = G(z)``) and,
when it uses real data, a real one sharing the same ``x1`` and ``t``
(paper Algorithm 1). Losses are ``E_batch w(t) * per-sample value``, where
per-sample values sum over all coordinates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from realuid.distances import Coefficients, Distance, SquaredL2
from realuid.errors import UserError, check_range
from realuid.fields import read_as
from realuid.paths.base import MatchingPath, PathSample
from realuid.registry import register


@dataclass
class Fields:
    """What an objective evaluates: teacher f*, fake f (both read in ``parameterization``) and the path."""

    teacher: torch.nn.Module
    fake: torch.nn.Module
    path: MatchingPath
    parameterization: str

    def teacher_at(self, s: PathSample) -> torch.Tensor:
        return read_as(self.teacher, self.path, self.parameterization, s.x_t, s.t, s.cond, s.x1)

    def fake_at(self, s: PathSample) -> torch.Tensor:
        return read_as(self.fake, self.path, self.parameterization, s.x_t, s.t, s.cond, s.x1)

    def target_at(self, s: PathSample) -> torch.Tensor:
        return self.path.target(s, self.parameterization)

    def weighted_mean(self, s: PathSample, per_sample: torch.Tensor) -> torch.Tensor:
        return (self.path.weight(s.t) * per_sample).mean()


class Objective(ABC):
    """Fake loss (minimised over f) and generator loss (minimised over theta, f frozen)."""

    #: whether the fake loss takes a real batch
    uses_real_data: bool = False

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Extra modules trained with the fake model's optimiser (e.g. a discriminator head)."""
        return []

    @abstractmethod
    def fake_loss(self, fields: Fields, gen: PathSample, real: PathSample | None) -> tuple[torch.Tensor, dict]:
        """Scalar loss for the fake model and the numbers to log."""

    @abstractmethod
    def generator_loss(self, fields: Fields, gen: PathSample) -> tuple[torch.Tensor, dict]:
        """Scalar loss for the generator and the numbers to log (``uid_gap`` among them)."""


@register("objective")
class RealUID(Objective):
    """RealUID (paper Thm. 2, eq. 17; general form Def. 3): UID with real data in the fake model's loss.

    Fake model (RealUM loss, eq. 16, ``gamma = alpha``):

        alpha     E_gen  w || f(x_t)  - (beta / alpha)             f_c  ||^2
      + (1-alpha) E_real w || f(x_t*) - ((1 - beta) / (1 - alpha)) f_c* ||^2

    Generator (f frozen, gradients through x0 = G(z) into x_t and f_c):

        alpha E_gen w [ ||f* - (beta/alpha) f_c||^2 - ||f - (beta/alpha) f_c||^2 ]

    ``alpha = beta = 1`` is UID (Thm. 1, eq. 13) and uses no real data. The
    general form gives the quadratic term ``||f - f*||^2`` its own split
    ``gamma`` (generated) / ``1 - gamma`` (real) while ``alpha`` stays on the
    teacher term: per sample ``Phi = 2<f - f*, c_lin f_c - c_t f*> - c_q ||f - f*||^2``
    with ``(c_q, c_lin, c_t) = (gamma, beta, alpha)`` on generated and
    ``(1 - gamma, 1 - beta, 1 - alpha)`` on real samples. Its fake optimum is
    ``f* + [beta p^theta f^theta + (1-beta) p* f^data - (alpha p^theta + (1-alpha) p*) f*] /
    [gamma p^theta + (1-gamma) p*]``: still f* when p^theta = p*, and RealUM's
    optimum when gamma = alpha.

    Args:
        alpha, beta: in (0, 1]; alpha = 1 only with beta = 1.
        gamma: quadratic split in (0, 1]; None means gamma = alpha; gamma = 1 only with alpha = beta = 1.
        distance: :class:`SquaredL2` (default) or :class:`NormalizedL2` (Def. 4).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float | None = None,
                 distance: Distance | None = None):
        check_range(alpha, "RealUID.alpha", 0.0, 1.0, low_open=True)
        check_range(beta, "RealUID.beta", 0.0, 1.0, low_open=True)
        if alpha == 1.0 and beta != 1.0:
            raise UserError(f"RealUID.alpha = 1 requires RealUID.beta = 1 (got beta = {beta}): with no weight "
                            "on real data the real term cannot carry 1 - beta of the target", "RealUID",
                            "bind RealUID.alpha below 1, or RealUID.beta = 1")
        if gamma is not None:
            check_range(gamma, "RealUID.gamma", 0.0, 1.0, low_open=True)
            if gamma == 1.0 and (alpha, beta) != (1.0, 1.0):
                raise UserError("RealUID.gamma = 1 requires alpha = beta = 1: the real term would keep a "
                                "linear part with no quadratic part, and the fake loss is unbounded", "RealUID",
                                "bind RealUID.gamma below 1, or leave it None (gamma = alpha)")
        self.alpha, self.beta = float(alpha), float(beta)
        self.gamma = self.alpha if gamma is None else float(gamma)
        self.distance = distance if distance is not None else SquaredL2()
        self.on_generated = Coefficients(self.gamma, self.beta, self.alpha)
        self.on_real = Coefficients(1 - self.gamma, 1 - self.beta, 1 - self.alpha)
        self.uses_real_data = not self.on_real.zero

    def _fake_part(self, fields: Fields, s: PathSample, c: Coefficients) -> torch.Tensor:
        f = fields.fake_at(s)
        f_star = fields.teacher_at(s) if self.distance.needs_teacher_in_fake_step(c) else None
        with torch.no_grad():
            f_c = fields.target_at(s)
        return fields.weighted_mean(s, self.distance.fake_loss(f, f_star, f_c, c))

    def fake_loss(self, fields, gen, real):
        loss = self._fake_part(fields, gen, self.on_generated)
        logs = {"fake_loss_generated": loss.detach()}
        if self.uses_real_data:
            if real is None:
                raise ValueError("RealUID with alpha or beta below 1 needs a real batch")
            real_loss = self._fake_part(fields, real, self.on_real)
            logs["fake_loss_real"] = real_loss.detach()
            loss = loss + real_loss
        return loss, logs

    def generator_loss(self, fields, gen):
        f, f_star, f_c = fields.fake_at(gen), fields.teacher_at(gen), fields.target_at(gen)
        loss = fields.weighted_mean(gen, self.distance.generator_loss(f, f_star, f_c, self.on_generated))
        gap = fields.weighted_mean(gen, self.distance.gap(f.detach(), f_star.detach()))
        return loss, {"uid_gap": gap}

    def __repr__(self):
        return f"RealUID(alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, distance={self.distance!r})"
