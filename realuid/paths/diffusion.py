"""Diffusion paths: VP, VE and EDM (DESIGN §1: ``x_t = s(t) (x0 + sigma(t) x1)``, ``x1 ~ N(0, I)``).

Every diffusion path is an affine path with ``a_t = s(t)``, ``b_t = s(t) sigma(t)``
and no extra noise, so the conversions of :mod:`realuid.paths.base` apply
(epsilon = x1, score = -x1 / b_t, velocity = dx_t/dt, x0); :class:`VP` adds
Salimans & Ho's ``v``.

Loss weights. A weighting is stated as a weight ``lambda_t`` on the x0 error
``||D - x0||^2`` and converted to the objective's parameterisation P: a
P-prediction is ``k_P(t) x0 + (terms in x_t)`` (:func:`~realuid.paths.validation.x0_slope`),
so the same loss reads ``lambda_t / k_P(t)^2 ||f_P - target_P||^2``. The
trainer tells the path P through :meth:`~realuid.paths.base.MatchingPath.bind`;
unbound, P = x0. Weightings (``sigma = b_t / a_t``, EDM's noise level):

=========== =============================================== ==================================================
name        lambda_t on the x0 error                        reference
=========== =============================================== ==================================================
"epsilon"   a_t^2 / b_t^2 = 1 / sigma^2                     unit weight on the epsilon error: Ho et al. 2020
                                                            (L_simple); Song et al. 2021 (lambda(t) = sigma_t^2
                                                            on the score error, eq. 7)
"edm"       (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 Karras et al. 2022, eq. 8 and Table 1 ("loss
                                                            weighting"), = 1 / c_out(sigma)^2
"v"         (a_t^2 + b_t^2)^2 / b_t^2  (VP: 1 / b_t^2)       unit weight on the v error, Salimans & Ho 2022
                                                            ("SNR + 1" weighting); VP only
"x0"        1                                               unit weight on the x0 (denoiser) error, the weight
                                                            of flow matching read in x0 (Kingma & Gao 2023
                                                            compare these weightings as functions of log-SNR)
=========== =============================================== ==================================================

Preconditioning (Karras et al. 2022, Table 1, for any ``s(t), sigma(t)``): with
``precondition = True`` a backbone ``F`` gives the denoiser
``D(x_t) = c_skip x + c_out F(c_in x, network_time(t))`` of the rescaled input
``x = x_t / s(t)``, with ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``,
``c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``,
``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``; the result is read as x0 and
converted to the requested parameterisation. :class:`EDM` preconditions by
default (with ``c_noise = ln(sigma) / 4``); VP and VE may (their network time stays t).
"""

from __future__ import annotations

import math

import torch

from realuid.errors import UserError, check_range
from realuid.paths.base import PARAMETERIZATIONS, AffinePath, PathCoefficients, expand_like
from realuid.paths.validation import validate_coefficients, x0_slope
from realuid.components import register

WEIGHTINGS = ("epsilon", "edm", "v", "x0")


class DiffusionPath(AffinePath):
    """Base of the diffusion family: ``x_t = a_t x0 + b_t x1`` with a weighting stated on the x0 error.

    Args:
        t_min, t_max: support of the time law.
        weighting: one of ``WEIGHTINGS`` (table in the module docstring).
        sigma_data: standard deviation of the data (EDM's ``sigma_data``; used by
            the "edm" weighting and the preconditioning).
        precondition: wrap the backbone in EDM's preconditioning (module docstring).
    """

    def __init__(self, t_min: float, t_max: float, weighting: str, sigma_data: float, precondition: bool = False):
        super().__init__(t_min, t_max)
        name = type(self).__name__
        if weighting not in WEIGHTINGS or (weighting == "v" and "v" not in self.parameterizations):
            allowed = [w for w in WEIGHTINGS if w != "v" or "v" in self.parameterizations]
            raise UserError(f"{name}.weighting = {weighting!r} is not a weighting of {name}", f"{name}.weighting",
                            f"use one of {', '.join(repr(w) for w in allowed)}")
        check_range(sigma_data, f"{name}.sigma_data", 0.0, low_open=True)
        self.weighting, self.sigma_data, self.precondition = weighting, float(sigma_data), bool(precondition)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's noise level sigma = b_t / a_t (x_t / a_t = x0 + sigma x1)."""
        s = self.coefficients(t)
        return s.b / s.a

    def x0_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t, the weight of the x0 error ||D - x0||^2 (module docstring)."""
        s = self.coefficients(t)
        if self.weighting == "x0":
            return torch.ones_like(t)
        if self.weighting == "epsilon":
            return (s.a / s.b) ** 2
        if self.weighting == "edm":
            sigma, sd = s.b / s.a, self.sigma_data
            return (sigma**2 + sd**2) / (sigma * sd) ** 2
        return (s.a**2 + s.b**2) ** 2 / s.b**2  # "v"

    def weight(self, t: torch.Tensor, parameterization: str) -> torch.Tensor:
        """The loss weight for an objective that compares fields in ``parameterization``: lambda_t / slope^2."""
        return self.x0_weight(t) / x0_slope(self, t, parameterization) ** 2

    # -- Salimans & Ho's v = a_t epsilon - b_t x0 (only for paths that list "v") --------------------
    def from_x0(self, x0, dest, x_t, t, x1=None):
        if dest != "v":
            return super().from_x0(x0, dest, x_t, t, x1)
        self.check_parameterization(dest, f"{type(self).__name__}.convert")
        s = self.coefficients(t)
        a, b = expand_like(s.a, x_t), expand_like(s.b, x_t)
        return a * (x_t - a * x0) / b - b * x0

    def to_x0(self, pred, source, x_t, t, x1=None):
        if source != "v":
            return super().to_x0(pred, source, x_t, t, x1)
        self.check_parameterization(source, f"{type(self).__name__}.convert")
        s = self.coefficients(t)
        a, b = expand_like(s.a, x_t), expand_like(s.b, x_t)
        return (a * x_t - b * pred) / (a**2 + b**2)

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in) at noise levels sigma (Karras et al. 2022, Table 1)."""
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        return sd2 / total, sigma * self.sigma_data / torch.sqrt(total), 1 / torch.sqrt(total)

    def apply_network(self, network, x_t, t, cond, parameterization):
        if not self.precondition:
            return network(x_t, self.network_time(t), cond)
        s = self.coefficients(t)
        x = x_t / expand_like(s.a, x_t)
        c_skip, c_out, c_in = (expand_like(c, x_t) for c in self.preconditioning(s.b / s.a))
        denoised = c_skip * x + c_out * network(c_in * x, self.network_time(t), cond)
        return self.convert(denoised, "x0", parameterization, x_t, t)

    def _validate(self, grid: torch.Tensor | None = None) -> None:
        validate_coefficients(self, grid)


@register("path")
class VP(DiffusionPath):
    """Variance-preserving diffusion (DDPM / score-SDE): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) x1.

    ``abar_t = exp(-int_0^t beta)`` with the linear schedule
    ``beta(t) = beta_min + t (beta_max - beta_min)`` (Ho et al. 2020 in continuous
    time; Song et al. 2021, VP SDE, defaults 0.1 and 20), ``t ~ U[t_min, t_max]``.
    Derivatives: ``a' = -beta a / 2``, ``b' = beta abar / (2 b)``. Time runs
    from data (t = 0) to noise (t = 1). Parameterisations: velocity, x0,
    epsilon (= x1), score (= -x1 / b_t) and Salimans & Ho's (2022)
    ``v = a_t epsilon - b_t x0``, read back as ``x0 = (a_t x_t - b_t v) / (a_t^2 + b_t^2)``.
    Default weighting "epsilon" (L_simple); see the module docstring.

    Args:
        beta_min, beta_max: the linear beta schedule (0 < beta_min < beta_max).
        t_min, t_max: the time law's support (t_min > 0: b_t vanishes at 0).
        weighting: "epsilon", "edm", "v" or "x0".
        sigma_data: data standard deviation (for the "edm" weighting and the preconditioning).
        precondition: EDM's preconditioning of the backbone (module docstring).
    """

    parameterizations = PARAMETERIZATIONS + ("v",)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0,
                 weighting: str = "epsilon", sigma_data: float = 0.5, precondition: bool = False):
        check_range(beta_min, "VP.beta_min", 0.0, low_open=True)
        check_range(beta_max, "VP.beta_max", beta_min, low_open=True)
        check_range(t_min, "VP.t_min", 0.0, low_open=True,
                    where="VP.t_min (b_t = 0 at t = 0, where epsilon, score and velocity divide by it)")
        super().__init__(t_min, t_max, weighting, sigma_data, precondition)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self._validate()

    def coefficients(self, t):
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        abar = torch.exp(-integral)
        a = torch.sqrt(abar)
        b = torch.sqrt(-torch.expm1(-integral))
        return PathCoefficients(a=a, da=-0.5 * beta * a, b=b, db=0.5 * beta * abar / b)

    def __repr__(self):
        return (f"VP(beta_min={self.beta_min}, beta_max={self.beta_max}, t_min={self.t_min}, t_max={self.t_max}, "
                f"weighting={self.weighting!r}, precondition={self.precondition})")


@register("path")
class VE(DiffusionPath):
    """Variance-exploding diffusion (score-SDE): x_t = x0 + sigma(t) x1, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    Song et al. 2021 (VE SDE / NCSN++; CIFAR-10 defaults sigma_min = 0.01,
    sigma_max = 50); ``t ~ U[t_min, t_max]``, ``sigma'(t) = sigma(t) ln(sigma_max / sigma_min)``.
    ``sigma_max`` should exceed the largest distance between data points.
    Default weighting "epsilon" (the paper's ``lambda(t) = sigma_t^2`` on the score error).

    Args:
        sigma_min, sigma_max: the geometric noise range (0 < sigma_min < sigma_max).
        t_min, t_max: the time law's support.
        weighting: "epsilon", "edm" or "x0".
        sigma_data: data standard deviation (for the "edm" weighting and the preconditioning).
        precondition: EDM's preconditioning of the backbone (module docstring).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0, t_max: float = 1.0,
                 weighting: str = "epsilon", sigma_data: float = 0.5, precondition: bool = False):
        check_range(sigma_min, "VE.sigma_min", 0.0, low_open=True)
        check_range(sigma_max, "VE.sigma_max", sigma_min, low_open=True)
        super().__init__(t_min, t_max, weighting, sigma_data, precondition)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self._validate()

    def coefficients(self, t):
        sigma = self.sigma_min * torch.exp(t * self._log_ratio)
        one = torch.ones_like(t)
        return PathCoefficients(a=one, da=0 * one, b=sigma, db=sigma * self._log_ratio)

    def __repr__(self):
        return (f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, weighting={self.weighting!r}, "
                f"precondition={self.precondition})")


@register("path")
class EDM(DiffusionPath):
    """EDM (Karras et al. 2022): x_t = x0 + sigma x1, t = sigma, ln sigma ~ N(P_mean, P_std^2), preconditioned network.

    The path's time is the noise level itself (``s(t) = 1``, ``sigma(t) = t``), so
    ``a = 1, b = sigma`` and the velocity is ``dx/dsigma = x1``. Training noise
    levels follow the log-normal ``p(sigma)`` (paper Table 1: P_mean = -1.2,
    P_std = 1.2), unclipped as in EDM; ``[t_min, t_max] = [sigma_min, sigma_max]``
    is the sampler's range (0.002, 80) and the default generator time is
    ``sigma_max``. Preconditioning (Table 1), the backbone ``F`` giving the
    denoiser

        D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),
        c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
        c_in = 1 / sqrt(sigma^2 + sigma_data^2),         c_noise = ln(sigma) / 4,

    read as the x0 prediction and converted to the requested parameterisation.
    Weight (eq. 8): ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``
    on the x0 error, converted to the objective's parameterisation (module docstring).

    Args:
        sigma_data: data standard deviation (0.5 for images in [-1, 1]; set it to
            the data's spread for other data).
        P_mean, P_std: the log-normal law of sigma.
        sigma_min, sigma_max: the sampler's noise range (the path's t_min, t_max).
        precondition: apply c_in, c_skip, c_out (False: the backbone's output is the prediction itself).
        weighting: "edm" (default), "epsilon" or "x0".
    """

    def __init__(self, sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, precondition: bool = True,
                 weighting: str = "edm"):
        check_range(P_mean, "EDM.P_mean")
        check_range(P_std, "EDM.P_std", 0.0, low_open=True)
        check_range(sigma_min, "EDM.sigma_min", 0.0, low_open=True)
        check_range(sigma_max, "EDM.sigma_max", sigma_min, low_open=True)
        super().__init__(sigma_min, sigma_max, weighting, sigma_data, precondition)
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        self._validate(torch.logspace(math.log10(sigma_min), math.log10(sigma_max), 201, dtype=torch.float64))

    def sample_t(self, n, generator=None, device="cpu"):
        ln_sigma = self.P_mean + self.P_std * torch.randn(n, generator=generator, device=device)
        return torch.exp(ln_sigma)

    def coefficients(self, t):
        one = torch.ones_like(t)
        return PathCoefficients(a=one, da=0 * one, b=t, db=one)

    def network_time(self, t):
        return torch.log(t) / 4

    def __repr__(self):
        return (f"EDM(sigma_data={self.sigma_data}, P_mean={self.P_mean}, P_std={self.P_std}, "
                f"sigma_min={self.t_min}, sigma_max={self.t_max}, precondition={self.precondition})")
