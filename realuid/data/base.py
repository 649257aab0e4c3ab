"""The data interface: an endless, resumable stream of real batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Real samples ``x`` [B, ...] and their labels [B] (None when unconditional)."""

    x: torch.Tensor
    label: torch.Tensor | None = None


#: every row of a batch (the default of :meth:`DataSource.next_batch`'s ``rows``)
ALL_ROWS = slice(None)


class DataSource(ABC):
    """Endless stream of real batches whose position is part of a checkpoint.

    A source draws its randomness from its own generator, seeded by the trainer,
    so the data stream and the training noise never disturb each other; its
    :meth:`state_dict` holds everything needed to continue the stream exactly.

    **Rows of a global batch.** ``next_batch(n, rows=r)`` advances the stream by
    ``n`` samples, exactly as ``next_batch(n)`` does, and returns only rows ``r``
    of them: ``next_batch(n, rows=r).x == next_batch(n).x[r]`` from the same
    state. Under data parallelism every rank asks for its own rows of the same
    global batch (:meth:`realuid.engine.distributed.Distributed.batch_rows`), so
    the ranks stay in step and a source that reads from disk reads and decodes
    only this rank's part.
    """

    #: per-sample shape, e.g. (2,) or (3, 32, 32)
    shape: tuple[int, ...]
    #: number of classes, 0 when unlabelled
    num_classes: int = 0

    @abstractmethod
    def seed(self, seed: int) -> None:
        """Restart the stream from a seed."""

    @abstractmethod
    def next_batch(self, n: int, device: torch.device | str = "cpu", rows: slice = ALL_ROWS) -> Batch:
        """Rows ``rows`` of the next n real samples (all of them by default); the stream advances by n."""

    @abstractmethod
    def state_dict(self) -> dict:
        """The stream position."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3
