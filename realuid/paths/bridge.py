"""Bridge matching: a Brownian bridge between a clean x0 and its corrupted copy x1 (IBMD, DESIGN §1).

How the generator sees x1: the trainer draws ``(x0*, x1)`` from a paired
coupling (``x1 = D(x0*) + noise``, :class:`~realuid.couplings.PairedDegradation`)
whose ``cond`` is ``x1`` itself. :class:`~realuid.generators.OneStepGenerator`
receives that ``cond``: ``x0 = G(z, x1) = network(z, t_g, cond = x1)`` (read in
the x0 parameterisation), so its backbone must take a vector condition of the
data's size (``MLP.cond_dim = D``). Teacher and fake model are fields
``f(x_t, t, cond = x1)``; their conversions use ``x1`` as the known end. The
generated pair is ``(G(z, x1), x1)``: UID then matches the generator's
conditional law ``p_theta(x0 | x1)`` to the data's (Gushchin et al., IBMD,
arXiv 2502.01362).
"""

from __future__ import annotations

import torch

from realuid.errors import UserError, check_range
from realuid.paths.base import AffinePath, PathCoefficients, expand_like
from realuid.paths.validation import validate_coefficients
from realuid.components import register


@register("path")
class BrownianBridge(AffinePath):
    """Brownian bridge x_t = (1-t) x0 + t x1 + sqrt(eps t (1-t)) z between clean x0 and corrupted x1; G(z, x1).

    ``x1`` is a known condition (``x1_is_condition``): the Gaussian part of
    ``x_t`` is ``n = g_t z``, ``g_t = sqrt(eps t (1 - t))``,
    ``g'_t = eps (1 - 2t) / (2 g_t)``, ``t ~ U[t_min, t_max]`` inside (0, 1).
    Parameterisations (all affine in ``E[x0 | x_t, x1]``):

    - ``x0``: the clean end;
    - ``drift``: ``(x0 - x_t) / t``, the drift of the reverse-time bridge
      SDE ``dx = (x0 - x) / t d(-t) + sqrt(eps) dW`` pinned at x0 (I2SB / IBMD's
      bridge matching; its regression ``(E[x0 | x_t, x1] - x_t) / t`` is the
      Markovian drift from x1 at t = 1 to data at t = 0);
    - ``velocity``: ``-x0 + x1 + g'_t z``, the interpolant's time derivative;
    - ``epsilon`` ``z`` and ``score`` ``-z / g_t`` (of ``p(x_t | x1)``).

    Weight 1. It needs a paired coupling (checked when the trainer binds the path).

    Args:
        eps: the bridge's noise level (> 0).
        t_min, t_max: the time law's support, inside (0, 1) (g_t and its derivative degenerate at the ends).
    """

    parameterizations = ("x0", "drift", "velocity", "epsilon", "score")

    def __init__(self, eps: float = 1.0, t_min: float = 1e-3, t_max: float = 1 - 1e-3):
        check_range(eps, "BrownianBridge.eps", 0.0, low_open=True)
        check_range(t_min, "BrownianBridge.t_min", 0.0, 1.0, low_open=True, high_open=True,
                    where="BrownianBridge.t_min (the bridge noise and its derivative degenerate at t = 0)")
        check_range(t_max, "BrownianBridge.t_max", 0.0, 1.0, low_open=True, high_open=True,
                    where="BrownianBridge.t_max (the bridge noise and its derivative degenerate at t = 1)")
        super().__init__(t_min, t_max)
        self.eps = float(eps)
        validate_coefficients(self)

    @property
    def x1_is_condition(self) -> bool:
        return True

    @property
    def needs_extra_noise(self) -> bool:
        return True

    def coefficients(self, t):
        one = torch.ones_like(t)
        g = torch.sqrt(self.eps * t * (1 - t))
        return PathCoefficients(a=1 - t, da=-one, b=t, db=one, g=g, dg=self.eps * (1 - 2 * t) / (2 * g))

    def check_coupling(self, coupling, where):
        if not getattr(coupling, "paired", False):
            raise UserError(f"BrownianBridge needs a paired coupling (x1 a corrupted copy of x0), but the recipe's "
                            f"coupling is {type(coupling).__name__}", where,
                            f"bind {where} = @PairedDegradation() (vectors) or @ImageDegradation() (images)")

    def from_x0(self, x0, dest, x_t, t, x1=None):
        if dest == "drift":
            return (x0 - x_t) / expand_like(t, x_t)
        return super().from_x0(x0, dest, x_t, t, x1)

    def to_x0(self, pred, source, x_t, t, x1=None):
        if source == "drift":
            return x_t + expand_like(t, x_t) * pred
        return super().to_x0(pred, source, x_t, t, x1)

    def __repr__(self):
        return f"BrownianBridge(eps={self.eps}, t_min={self.t_min}, t_max={self.t_max})"
