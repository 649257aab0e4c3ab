"""Teachers: frozen matching fields f* to distil."""

from __future__ import annotations

import torch
from torch import nn

from realuid.data.base import DataSource
from realuid.data.gmm import GaussianMixture
from realuid.errors import UserError
from realuid.paths.base import AffinePath, MatchingPath
from realuid.registry import register


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
    """

    def __init__(self, mixture: GaussianMixture | None = None, parameterization: str | None = None):
        super().__init__()
        self.mixture, self.parameterization, self.path = mixture, parameterization, None

    def bind(self, path: MatchingPath, data: DataSource, parameterization: str) -> "AnalyticTeacher":
        """Attach the path and (if none was given) the data's mixture; check shapes."""
        if not isinstance(path, AffinePath):
            raise UserError(f"AnalyticTeacher needs an affine path, got {type(path).__name__}",
                            "DistillationTrainer.path", "use a path built on realuid.paths.AffinePath")
        mixture = self.mixture if self.mixture is not None else data
        if not isinstance(mixture, GaussianMixture):
            raise UserError(f"AnalyticTeacher knows Gaussian mixtures only, but the data is "
                            f"{type(data).__name__}", "AnalyticTeacher.mixture",
                            "bind AnalyticTeacher.mixture = @teacher/GaussianMixture() or use a trained teacher")
        if mixture.shape != tuple(data.shape):
            raise UserError(f"the teacher's mixture has samples of shape {mixture.shape} but the data has "
                            f"{tuple(data.shape)}", "AnalyticTeacher.mixture vs DistillationTrainer.data",
                            "give both mixtures means of the same dimension")
        self.mixture, self.path = mixture, path
        self.parameterization = self.parameterization or parameterization
        path.check_parameterization(self.parameterization, "AnalyticTeacher.parameterization")
        return self

    def posterior_x0(self, x_t: torch.Tensor, t: torch.Tensor, x1: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_t] (and x1 for bridges) under the teacher's mixture."""
        s = self.path.schedule(t)
        sigma, _ = self.path.noise_scale(s)
        if self.path.x1_is_condition:
            raise UserError(f"AnalyticTeacher has no closed form for {type(self.path).__name__} with this "
                            "coupling", "AnalyticTeacher", "use a linear-Gaussian paired coupling")
        return self.mixture.posterior_mean(x_t, s.a, torch.as_tensor(sigma) ** 2)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        x1 = cond if self.path.x1_is_condition else None
        x0 = self.posterior_x0(x_t, t, x1)
        return self.path.from_x0(x0, self.parameterization, x_t, t, x1)
