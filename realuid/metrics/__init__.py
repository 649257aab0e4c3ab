"""Metrics: ``metric(samples) -> dict`` (toy metrics, feature-space FD, torch-fidelity)."""

from realuid.metrics.base import Metric

__all__ = ["Metric"]
