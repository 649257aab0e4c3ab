"""What a component learns from the run it is part of, given to it in one way: ``attach(context)``.

A path is immutable and needs nothing. A teacher, a generator or a metric may
need the run's path, data, the parameterisation the objective compares fields
in, or the coupling; the trainer builds one :class:`RunContext` and hands it to
every component that defines ``attach(context) -> component``
(:func:`attach`). ``context.owner`` is the gin name of the trainer, so that
error messages name the bindings the user actually wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from realuid.couplings import Coupling
from realuid.data.base import DataSource
from realuid.paths.base import MatchingPath


@dataclass(frozen=True)
class RunContext:
    """The path, the objective's parameterisation, the data and the coupling of one run.

    Outside a run (a trained model loaded for sampling) only the path and the
    parameterisation are known: ``data`` and ``coupling`` are None there.
    """

    path: MatchingPath
    parameterization: str
    data: DataSource | None = None
    coupling: Coupling | None = None
    owner: str = "the run"

    def where(self, parameter: str) -> str:
        """The binding of the trainer's ``parameter``, e.g. ``'DistillationTrainer.path'``."""
        return f"{self.owner}.{parameter}"


def attach(component, context: RunContext):
    """``component.attach(context)`` where the component defines it, else the component itself."""
    hook = getattr(component, "attach", None)
    return hook(context) if callable(hook) else component
