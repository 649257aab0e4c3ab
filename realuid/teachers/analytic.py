"""Teachers: frozen matching fields f* to distil."""

from __future__ import annotations

import math

import torch
from torch import nn

from realuid.couplings import PairedDegradation
from realuid.context import RunContext
from realuid.data.gmm import GaussianMixture
from realuid.errors import UserError
from realuid.paths.base import AffinePath
from realuid.components import register


@register("teacher")
class AnalyticTeacher(nn.Module):
    """Exact matching field of a Gaussian mixture for any affine path (no training error).

    With ``x_t = a_t x0 + n``, ``n ~ N(0, sigma_t^2 I)`` the teacher computes
    ``E[x0 | x_t]`` in closed form (:meth:`GaussianMixture.posterior_mean`,
    DESIGN §6) and hands it to the path, which turns it into the requested
    parameterisation (velocity, x0, epsilon, score) by linearity.

    Args:
        mixture: the mixture the teacher knows; None uses the training data's own
            mixture. Give a different one (scoped bindings
            ``teacher/GaussianMixture.weights = [...]``) for a biased teacher.
        parameterization: what the teacher predicts; None takes the trainer's.
        coupling: for a bridge, the linear-Gaussian coupling the teacher assumes;
            None takes the run's.

    Bridges (``x_t = a x0 + b x1 + g z`` with ``x1 = M x0 + s n``, DESIGN §6):
    given a mode k, ``y = (x1, x_t - b x1) = H x0 + e`` with ``H = [M; a I]``,
    ``e ~ N(0, diag(s^2 I, g^2 I))``, so ``x0 | y, k`` is Gaussian:
    ``C_k = H S_k H^T + R``, ``E[x0 | y, k] = mu_k + S_k H^T C_k^{-1} (y - H mu_k)``,
    and ``r_k(y) ∝ w_k N(y; H mu_k, C_k)`` (:func:`bridge_posterior_mean`).
    """

    def __init__(self, mixture: GaussianMixture | None = None, parameterization: str | None = None,
                 coupling: PairedDegradation | None = None):
        super().__init__()
        self.mixture, self.parameterization, self.path = mixture, parameterization, None
        self.coupling = coupling
        self._coupling_binding = "AnalyticTeacher.coupling"

    def attach(self, context: RunContext) -> "AnalyticTeacher":
        """Take the run's path (and, if none was given, its data's mixture and its coupling); check shapes."""
        path, data = context.path, context.data
        if not isinstance(path, AffinePath):
            raise UserError(f"AnalyticTeacher needs an affine path, got {type(path).__name__}",
                            context.where("path"), "use a path built on realuid.paths.AffinePath")
        mixture = self.mixture if self.mixture is not None else data
        if not isinstance(mixture, GaussianMixture):
            raise UserError(f"AnalyticTeacher knows Gaussian mixtures only, but the data is "
                            f"{type(data).__name__}", "AnalyticTeacher.mixture",
                            "bind AnalyticTeacher.mixture = @teacher/GaussianMixture() or use a trained teacher")
        if mixture.shape != tuple(data.shape):
            raise UserError(f"the teacher's mixture has samples of shape {mixture.shape} but the data has "
                            f"{tuple(data.shape)}", f"AnalyticTeacher.mixture vs {context.where('data')}",
                            "give both mixtures means of the same dimension")
        self.mixture, self.path = mixture, path
        self.parameterization = self.parameterization or context.parameterization
        if self.coupling is None:
            self.coupling = context.coupling
        self._coupling_binding = f"AnalyticTeacher / {context.where('coupling')}"
        path.check_parameterization(self.parameterization, "AnalyticTeacher.parameterization")
        return self

    def posterior_x0(self, x_t: torch.Tensor, t: torch.Tensor, x1: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_t] (and x1 for bridges) under the teacher's mixture."""
        s = self.path.coefficients(t)
        sigma, _ = self.path.noise_scale(s)
        if self.path.x1_is_condition:
            coupling = self.coupling
            if not isinstance(coupling, PairedDegradation):
                raise UserError(f"AnalyticTeacher has no closed form for {type(self.path).__name__} with the coupling "
                                f"{type(coupling).__name__}", self._coupling_binding,
                                "use the linear-Gaussian @PairedDegradation() coupling, or a trained teacher")
            if x1 is None:
                raise ValueError("AnalyticTeacher: a bridge's teacher needs the corrupted end x1 (cond)")
            m, noise_std = coupling.linear_map(self.mixture.dim)
            return bridge_posterior_mean(self.mixture, x_t, x1, s.a, s.b, sigma, m, noise_std)
        return self.mixture.posterior_mean(x_t, s.a, torch.as_tensor(sigma) ** 2)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        x1 = cond if self.path.x1_is_condition else None
        x0 = self.posterior_x0(x_t, t, x1)
        return self.path.from_x0(x0, self.parameterization, x_t, t, x1)


def bridge_posterior_mean(mixture: GaussianMixture, x_t: torch.Tensor, x1: torch.Tensor, a, b, g,
                          m: torch.Tensor, s: float) -> torch.Tensor:
    """E[x0 | x_t, x1] for ``x_t = a x0 + b x1 + g z`` and ``x1 = M x0 + s n``, x0 from the mixture (float64).

    Per mode, ``y = (x1, x_t - b x1) = H x0 + e`` with ``H = [M; a I]`` and
    independent noise ``e ~ N(0, diag(s^2 I, g^2 I))``: Gaussian conditioning
    (DESIGN §6), mixed with the posterior mode probabilities.
    """
    dtype, device = x_t.dtype, x_t.device
    d = mixture.dim
    n = x_t.shape[0]
    f64 = dict(dtype=torch.float64, device=device)
    per = lambda v: torch.as_tensor(v, **f64).expand(n).reshape(n, 1, 1)  # noqa: E731
    a, b, g = per(a), per(b), per(g)
    eye = torch.eye(d, **f64)
    h = torch.cat([m.to(**f64).expand(n, d, d), a * eye], dim=1)  # [B, 2D, D]
    noise = torch.cat([torch.full((n, d), float(s) ** 2, **f64), (g[:, :, 0] ** 2).expand(n, d)], dim=1)
    y = torch.cat([x1.double(), x_t.double() - b[:, :, 0] * x1.double()], dim=1)  # [B, 2D]
    covs, means = mixture.covs.to(device), mixture.means.to(device)  # [K, D, D], [K, D]
    hs = torch.einsum("bij,kjl->bkil", h, covs)  # H S_k, [B, K, 2D, D]
    c = torch.einsum("bkil,bjl->bkij", hs, h) + torch.diag_embed(noise)[:, None]  # [B, K, 2D, 2D]
    diff = y[:, None, :] - torch.einsum("bij,kj->bki", h, means)  # y - H mu_k
    chol, info = torch.linalg.cholesky_ex(c)
    if bool(info.any()):
        raise UserError("the bridge teacher's conditioning covariance H S H^T + R is singular (noise-free "
                        "PairedDegradation with a singular matrix, or t at an end of the bridge)",
                        "PairedDegradation.noise_std / BrownianBridge.t_min, t_max",
                        "bind PairedDegradation.noise_std > 0 or keep t inside (0, 1)")
    solved = torch.cholesky_solve(diff[..., None], chol)[..., 0]  # C_k^{-1} (y - H mu_k)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_joint = torch.log(mixture.weights.to(device)) - 0.5 * ((diff * solved).sum(-1) + logdet
                                                              + 2 * d * math.log(2 * math.pi))
    r = torch.softmax(log_joint, dim=-1)  # [B, K]
    per_mode = means + torch.einsum("bkil,bki->bkl", hs, solved)  # mu_k + S_k H^T C^{-1} (y - H mu)
    return (r[..., None] * per_mode).sum(1).to(dtype)
