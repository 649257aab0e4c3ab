"""What a trainer supplies to the :class:`~realuid.engine.loop.TrainingLoop`: its models and one step.

A trainer is built by gin from its recipe bindings (data, path, networks,
objective, optimiser settings) and checks them; the loop then calls
:meth:`Trainer.setup` once (models onto the loop's device, optimisers, parts
tracked for checkpoints) and :meth:`Trainer.train_step` every step. Evaluation,
checkpoints, random streams, the non-finite guard, reporting and the run's
artifacts belong to the loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from realuid.context import RunContext, attach
from realuid.couplings import Coupling, IndependentGaussian
from realuid.data.base import DataSource
from realuid.paths.base import MatchingPath


class Trainer(ABC):
    """The data, path, coupling, metrics and parameterisation every trainer has, and its interface to the loop.

    Subclasses set ``name`` (their gin name, used in messages and checkpoints),
    ``kind`` (what their checkpoints hold: ``'student'`` or ``'teacher'``),
    ``label`` (the progress bar's) and ``progress_fields`` ((log key, label)
    pairs shown on the progress bar).
    """

    name: str = "Trainer"
    kind: str = "student"
    label: str = "training"
    progress_fields: tuple[tuple[str, str], ...] = ()

    def __init__(self, data: DataSource, path: MatchingPath, coupling: Coupling | None, metrics,
                 parameterization: str):
        self.data, self.path, self.parameterization = data, path, parameterization
        self.coupling = coupling if coupling is not None else IndependentGaussian()
        path.check_parameterization(parameterization, f"{self.name}.parameterization")
        path.check_coupling(self.coupling, f"{self.name}.coupling")
        self.context = RunContext(path, parameterization, data, self.coupling, self.name)
        self.metrics = [attach(metric, self.context) for metric in metrics]
        self.shape = tuple(data.shape)
        self.loop = None

    @abstractmethod
    def setup(self, loop) -> None:
        """Put the models on ``loop.device`` / ``loop.dtype``, build optimisers, ``loop.track(...)`` them."""

    @abstractmethod
    def train_step(self) -> dict:
        """One optimisation step; returns the numbers to log (tensors are fine: summed on the device)."""

    @abstractmethod
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n samples of the EMA model from fixed noise (``seed``; default the run's seed + 10,000)."""

    def describe(self) -> dict:
        """What the checkpoints record about the model: path, parameterisation, data shape and classes."""
        return {"parameterization": self.parameterization, "path": type(self.path).__name__,
                "shape": list(self.shape), "num_classes": int(self.data.num_classes)}

    @property
    def dtype(self) -> torch.dtype:
        """The run's dtype (the loop's)."""
        return self.loop.dtype

    def sampling_seed(self, seed: int | None) -> int:
        return self.loop.seed + 10_000 if seed is None else seed
