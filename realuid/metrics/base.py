"""The metric interface: samples in, a dict of named numbers out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from realuid.data.base import DataSource


class Metric(ABC):
    """``metric(samples) -> {name: float}``; :meth:`bind` gives it the real data first."""

    def bind(self, data: DataSource) -> "Metric":
        return self

    @abstractmethod
    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        """Numbers describing the samples."""
