"""Matching paths: the abstract interface and the affine family.

A matching path (DESIGN §1) draws ``x_t = a_t x0 + b_t x1 + g_t z`` from a
coupling sample ``(x0, x1)``, a time ``t ~ p(t)`` and extra noise ``z ~ N(0, I)``,
and names a conditional target ``f_t(x_t | x0, x1)`` whose regression (weight
``w(t)``) gives the matching model ``f_t(x_t) = E[f_t(x_t | x0, x1) | x_t]``.

Parameterisations (what a field predicts) and their conditional targets:

========== ================================== =====================================
name       conditional target                 regression minimiser
========== ================================== =====================================
velocity   a'_t x0 + b'_t x1 + g'_t z         E[dx_t/dt | x_t]
x0         x0                                 E[x0 | x_t]
epsilon    n / sigma_t                        E[n | x_t] / sigma_t
score      -n / sigma_t^2                     grad log p_t(x_t)  (Tweedie)
========== ================================== =====================================

where ``n`` is the Gaussian part of ``x_t``: ``n = b_t x1 + g_t z`` with
``sigma_t^2 = b_t^2 + g_t^2`` when ``x1`` is Gaussian noise, and ``n = g_t z``
with ``sigma_t = g_t`` when ``x1`` is a known condition (bridges). Given
``x_t`` (and ``x1`` for bridges) every parameterisation is an affine function
of the ``x0`` prediction, so conversions go through ``x0``:

    n = x_t - a_t x0 - c_t,      c_t = b_t x1 for bridges, else 0
    velocity = a'_t x0 + (sigma'_t / sigma_t) n + c'_t
    epsilon  = n / sigma_t
    score    = -n / sigma_t^2

The velocity identity ``E[b' x1 + g' z | x0, n] = (sigma'/sigma) n`` needs
``x1`` and ``z`` standard Gaussian and independent of ``x0``; for ``g = 0`` it
is exact for any coupling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch

from realuid.errors import UserError

PARAMETERIZATIONS = ("velocity", "x0", "epsilon", "score")


@dataclass(frozen=True)
class PathCoefficients:
    """Coefficients of ``x_t = a x0 + b x1 + g z`` and their time derivatives, each of shape [B]."""

    a: torch.Tensor
    da: torch.Tensor
    b: torch.Tensor
    db: torch.Tensor
    g: torch.Tensor | float = 0.0
    dg: torch.Tensor | float = 0.0


@dataclass(frozen=True)
class PathSample:
    """One draw from a path: the record that flows through objectives."""

    x0: torch.Tensor
    x1: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    z: torch.Tensor | None = None
    cond: object = None

    def detach(self) -> "PathSample":
        return replace(self, **{k: getattr(self, k).detach() for k in ("x0", "x1", "t", "x_t")},
                       z=None if self.z is None else self.z.detach())

    @staticmethod
    def concat(a: "PathSample", b: "PathSample") -> "PathSample | None":
        """``a`` and ``b`` stacked along the batch (one network call for both), or None where they cannot be.

        Fields that are None in both stay None; a field present in one only, or a
        condition that is not a tensor, makes the pair unstackable.
        """
        def cat(u, v):
            if u is None and v is None:
                return None
            if not (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor)):
                raise TypeError
            return torch.cat([u, v])
        try:
            return PathSample(**{k: cat(getattr(a, k), getattr(b, k)) for k in ("x0", "x1", "t", "x_t", "z", "cond")})
        except TypeError:
            return None


def expand_like(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Reshape a per-sample scalar [B] to broadcast against x [B, ...]."""
    if isinstance(s, torch.Tensor):
        return s.reshape(-1, *([1] * (x.ndim - 1)))
    return s


class MatchingPath(ABC):
    """Abstract matching path: time law, interpolation, conditional targets, weights, conversions."""

    parameterizations: tuple[str, ...] = PARAMETERIZATIONS

    @abstractmethod
    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        """Draw n times from p(t)."""

    @abstractmethod
    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                    z: torch.Tensor | None = None, cond: object = None) -> PathSample:
        """x_t from the endpoints."""

    @abstractmethod
    def target(self, sample: PathSample, parameterization: str) -> torch.Tensor:
        """Conditional target f_t(x_t | x0, x1) in the given parameterisation."""

    @abstractmethod
    def convert(self, pred: torch.Tensor, source: str, dest: str, x_t: torch.Tensor,
                t: torch.Tensor, x1: torch.Tensor | None = None) -> torch.Tensor:
        """Turn a prediction at (x_t, t) from one parameterisation into another."""

    def weight(self, t: torch.Tensor, parameterization: str) -> torch.Tensor:
        """Loss weight w(t) >= 0 of an objective that compares fields in ``parameterization``.

        1 unless the family defines another; a family whose weight is stated in
        one space (EDM: on x0) converts it to the space asked for.
        """
        return torch.ones_like(t)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time fed to networks (EDM feeds log(sigma)/4); t itself by default."""
        return t

    def apply_network(self, network, x_t: torch.Tensor, t: torch.Tensor, cond, parameterization: str):
        """A backbone's prediction at (x_t, t) in ``parameterization``.

        Plain by default: ``network(x_t, network_time(t), cond)``; a family with
        preconditioning (EDM's c_in, c_skip, c_out) overrides this.
        """
        return network(x_t, self.network_time(t), cond)

    @property
    def needs_extra_noise(self) -> bool:
        """Whether x_t carries a z term (bridges, stochastic interpolants)."""
        return False

    @property
    def x1_is_condition(self) -> bool:
        """True for bridges: x1 is a known corrupted input, not noise to integrate out."""
        return False

    def check_coupling(self, coupling, where: str) -> None:
        """Refuse a coupling this path cannot use (a bridge needs a paired one); any coupling by default."""

    def check_parameterization(self, name: str, where: str) -> None:
        if name not in self.parameterizations:
            raise UserError(f"{type(self).__name__} does not support the parameterisation {name!r}", where,
                            f"use one of {', '.join(self.parameterizations)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AffinePath(MatchingPath):
    """``x_t = a_t x0 + b_t x1 + g_t z`` with ``t ~ U[t_min, t_max]``; a subclass defines :meth:`coefficients`.

    Args:
        t_min, t_max: the support of the uniform time law; keep them off the
            points where ``a_t`` or ``sigma_t`` vanish if a conversion divides by them.
    """

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0):
        if not t_min < t_max:
            raise UserError(f"{type(self).__name__} needs t_min < t_max, got t_min={t_min}, t_max={t_max}",
                            f"{type(self).__name__}.t_min / t_max", "bind t_min below t_max")
        self.t_min, self.t_max = float(t_min), float(t_max)

    @abstractmethod
    def coefficients(self, t: torch.Tensor) -> PathCoefficients:
        """(a, a', b, b', g, g') at times t."""

    # -- sampling ---------------------------------------------------------------------------
    def sample_t(self, n, generator=None, device="cpu"):
        u = torch.rand(n, generator=generator, device=device)
        return self.t_min + (self.t_max - self.t_min) * u

    def interpolate(self, x0, x1, t, z=None, cond=None):
        s = self.coefficients(t)
        x_t = expand_like(s.a, x0) * x0 + expand_like(s.b, x1) * x1
        if self.needs_extra_noise:
            if z is None:
                raise ValueError(f"{type(self).__name__}.interpolate needs the extra noise z")
            x_t = x_t + expand_like(s.g, z) * z
        return PathSample(x0=x0, x1=x1, t=t, x_t=x_t, z=z, cond=cond)

    # -- the Gaussian part n = x_t - a x0 - c ------------------------------------------------
    def noise_scale(self, s: PathCoefficients) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_t, sigma'_t) of the Gaussian part n of x_t."""
        if self.x1_is_condition:
            return s.g, s.dg
        sigma = torch.sqrt(s.b**2 + torch.as_tensor(s.g) ** 2)
        return sigma, (s.b * s.db + torch.as_tensor(s.g) * torch.as_tensor(s.dg)) / sigma

    def _offset(self, s: PathCoefficients, x1: torch.Tensor | None, like: torch.Tensor):
        """(c_t, c'_t): the known part b x1 of x_t for bridges, else 0."""
        if not self.x1_is_condition:
            return 0.0, 0.0
        if x1 is None:
            raise ValueError(f"{type(self).__name__}: conversions need the conditioning end x1")
        return expand_like(s.b, like) * x1, expand_like(s.db, like) * x1

    # -- targets and conversions ---------------------------------------------------------------
    def target(self, sample, parameterization):
        if parameterization == "velocity":
            s = self.coefficients(sample.t)
            v = expand_like(s.da, sample.x0) * sample.x0 + expand_like(s.db, sample.x1) * sample.x1
            if self.needs_extra_noise:
                v = v + expand_like(s.dg, sample.z) * sample.z
            return v
        if parameterization == "x0":
            return sample.x0
        return self.from_x0(sample.x0, parameterization, sample.x_t, sample.t, sample.x1)

    def from_x0(self, x0, dest, x_t, t, x1=None):
        self.check_parameterization(dest, f"{type(self).__name__}.convert")
        if dest == "x0":
            return x0
        s = self.coefficients(t)
        sigma, dsigma = (expand_like(v, x_t) for v in self.noise_scale(s))
        c, dc = self._offset(s, x1, x_t)
        n = x_t - expand_like(s.a, x_t) * x0 - c
        if dest == "velocity":
            return expand_like(s.da, x_t) * x0 + (dsigma / sigma) * n + dc
        if dest == "epsilon":
            return n / sigma
        return -n / sigma**2  # score

    def to_x0(self, pred, source, x_t, t, x1=None):
        self.check_parameterization(source, f"{type(self).__name__}.convert")
        if source == "x0":
            return pred
        s = self.coefficients(t)
        sigma, dsigma = (expand_like(v, x_t) for v in self.noise_scale(s))
        c, dc = self._offset(s, x1, x_t)
        a = expand_like(s.a, x_t)
        if source == "velocity":
            return (pred - dc - (dsigma / sigma) * (x_t - c)) / (expand_like(s.da, x_t) - a * dsigma / sigma)
        n = sigma * pred if source == "epsilon" else -(sigma**2) * pred
        return (x_t - c - n) / a

    def convert(self, pred, source, dest, x_t, t, x1=None):
        if source == dest:
            return pred
        return self.from_x0(self.to_x0(pred, source, x_t, t, x1), dest, x_t, t, x1)

    def __repr__(self):
        return f"{type(self).__name__}(t_min={self.t_min}, t_max={self.t_max})"
