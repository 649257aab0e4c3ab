"""Fields: a network read in one parameterisation of a path (the layer between backbone and objective).

A backbone maps ``(x, time, cond)`` to a tensor and knows nothing of the path;
a :class:`NetworkField` feeds it the path's network time (and any
preconditioning the path defines) and declares which parameterisation its
output is. Objectives compare fields in one parameterisation: a field in
another one is read through :meth:`MatchingPath.convert`.
"""

from __future__ import annotations

import torch
from torch import nn

from realuid.paths.base import MatchingPath


class NetworkField(nn.Module):
    """f_t(x_t) = network(x_t, network_time(t), cond), read as ``parameterization``."""

    def __init__(self, network: nn.Module, path: MatchingPath, parameterization: str):
        super().__init__()
        path.check_parameterization(parameterization, f"{type(network).__name__} field")
        self.network, self.path, self.parameterization = network, path, parameterization

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return self.path.apply_network(self.network, x_t, t, cond, self.parameterization)


def read_as(field: nn.Module, path: MatchingPath, parameterization: str, x_t, t, cond=None,
            x1: torch.Tensor | None = None) -> torch.Tensor:
    """The field's prediction at (x_t, t), converted to ``parameterization``."""
    pred = field(x_t, t, cond)
    return path.convert(pred, field.parameterization, parameterization, x_t, t, x1)
