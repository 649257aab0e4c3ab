"""Couplings: how the other end x1 of a path is paired with data (DESIGN §1, §5)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from realuid.data.base import Batch
from realuid.registry import register


@dataclass
class CoupledBatch:
    """The other end ``x1`` [B, ...] and the condition ``cond`` that generator and fields see."""

    x1: torch.Tensor
    cond: object = None


class Coupling(ABC):
    """pi(x0, x1): draws x1 for a batch, given the real batch when the coupling needs it."""

    #: whether :meth:`sample` needs the real batch (paired couplings)
    needs_data: bool = False

    @abstractmethod
    def sample(self, real: Batch | None, n: int, shape: tuple[int, ...], generator: torch.Generator,
               device: torch.device | str) -> CoupledBatch:
        """x1 for n samples of the given per-sample shape."""


@register("coupling")
class IndependentGaussian(Coupling):
    """pi = p0 x N(0, I): x1 is standard Gaussian noise, independent of x0; labels pass through as cond."""

    def sample(self, real, n, shape, generator, device):
        x1 = torch.randn(n, *shape, generator=generator, device=device)
        return CoupledBatch(x1=x1, cond=None if real is None else real.label)
