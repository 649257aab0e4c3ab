"""Real data sources: an endless, resumable stream of batches (:class:`~realuid.data.base.DataSource`)."""

from realuid.data.base import Batch, DataSource
from realuid.data.gmm import GaussianMixture

__all__ = ["Batch", "DataSource", "GaussianMixture"]
