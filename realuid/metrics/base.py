"""The metric interface: samples in, a dict of named numbers out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from realuid.context import RunContext


class Metric(ABC):
    """``metric(samples) -> {name: float}``; ``attach(context)`` gives it the run's data first."""

    def attach(self, context: RunContext) -> "Metric":
        """Take what the metric needs from the run (its data, by default nothing)."""
        return self

    @abstractmethod
    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        """Numbers describing the samples."""
