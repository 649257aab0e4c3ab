"""One-step generators x0 = G_theta(z, cond)."""

from __future__ import annotations

import math

import torch
from torch import nn

from realuid.context import RunContext
from realuid.paths.base import MatchingPath
from realuid.components import register
from realuid.errors import UserError


@register("generator")
class OneStepGenerator(nn.Module):
    """x0 = G(z, cond): a backbone read at one time ``t_g`` of the path, converted to an x0 prediction.

    ``G(z) = to_x0(network(z, t_g, cond))``: with ``parameterization = "x0"`` the
    network's output is the sample itself; with the teacher's parameterisation
    and ``t_g`` at the noise end it is one Euler step of the teacher's ODE,
    e.g. for rectified flow ``G(z) = z - v(z, 1)`` (the paper's
    ``G(z) = z + g_theta(z)``), so a generator warm-started from the teacher's
    weights starts at the teacher's one-step sample (DESIGN §3).

    Args:
        network: the backbone (``forward(x, t, cond)``).
        parameterization: how the network's output is read.
        time: the path time t_g at which the network is evaluated; None takes the path's t_max.
        noise_scale: the network reads ``x_t = noise_scale * z`` at ``t_g`` (1: z itself). SiD's
            generator ``G(z) = D(sigma_init z; sigma_init)`` (Zhou et al. 2024, sigma_init = 2.5) is
            an EDM path with ``time = noise_scale = 2.5`` and parameterization "x0".
        skip: a residual ``G(z) = skip * z + to_x0(network(...))`` (0: none). A network trained from
            scratch outputs nearly a constant at initialisation, so with ``skip = 0`` the generator
            starts as one point, and the teacher's one-step sample is one point too (the posterior
            mean at the noise end); ``skip`` of the data's spread starts it as a Gaussian that
            covers every mode.
    """

    def __init__(self, network: nn.Module, parameterization: str = "x0", time: float | None = None,
                 noise_scale: float = 1.0, skip: float = 0.0):
        super().__init__()
        if not (isinstance(skip, (int, float)) and math.isfinite(skip) and skip >= 0):
            raise UserError(f"OneStepGenerator.skip must be a finite number >= 0, got {skip!r}",
                            "OneStepGenerator.skip", "bind OneStepGenerator.skip = 0 (none) or the data's spread")
        self.skip = float(skip)
        self.network, self.parameterization, self.time = network, parameterization, time
        self.noise_scale = float(noise_scale)
        self.path: MatchingPath | None = None

    def attach(self, context: RunContext) -> "OneStepGenerator":
        """Read the network through the run's path."""
        context.path.check_parameterization(self.parameterization, "OneStepGenerator.parameterization")
        self.path = context.path
        return self

    def forward(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        t_g = self.path.t_max if self.time is None else self.time
        t = torch.full((z.shape[0],), float(t_g), dtype=z.dtype, device=z.device)
        x_t = z if self.noise_scale == 1.0 else self.noise_scale * z
        pred = self.path.apply_network(self.network, x_t, t, cond, self.parameterization)
        x1 = cond if self.path.x1_is_condition else None
        x0 = self.path.to_x0(pred, self.parameterization, x_t, t, x1)
        return x0 if self.skip == 0.0 else x0 + self.skip * z
