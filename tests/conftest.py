"""Shared fixtures: an empty gin config around every test, one thread on request, the repository root as the
working folder on request, and the CIFAR-10 smoke runs (teachers, students, an FD classifier) made once per session.

Plain helpers (launchers, tiny bindings, run comparisons) are in ``helpers.py``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a busy machine a spinning thread waits for a partner that
# is not scheduled: tests of tiny models ran 10-80x slower inside the suite than alone (e.g. 1.2 s alone,
# 73 s in a full run beside other jobs), while thread counts, and so every number, stay the same. Set before
# torch loads its OpenMP runtime; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gin  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import CIFAR_SECOND_STAGES, CIFAR_STUDENTS, GIN, ROOT, SHARDS, single_thread, smoke


#: session fixtures too costly to build once per xdist worker: the tests that use them run on one worker
SHARED_SMOKE_RUNS = {"cifar_teachers", "cifar_students"}


def pytest_collection_modifyitems(config, items):
    """Order and group for ``pytest -n 2 --dist loadgroup`` (the README's command).

    Tests marked ``torchrun`` start two or three processes each: two such tests at once oversubscribe two cores
    (the suite's summed test time fell from 1,549 s to 1,093 s once they ran one at a time), so they share one
    worker and go first, the longest unit of work. Then come the modules that hold a slow test, each kept in one
    piece, so that the short tests fill the end. The tests that need the CIFAR smoke runs share one worker, which
    builds them once, and so do the tests of each module with a module-scoped fixture.
    """
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.get_closest_marker("torchrun") is None, item.module not in slow_modules))
    for item in items:
        if item.get_closest_marker("torchrun"):
            item.add_marker(pytest.mark.xdist_group("torchrun"))
        elif SHARED_SMOKE_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("cifar_smoke_runs"))
        elif "module" in fixture_scopes(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))   # the file, on one worker


def fixture_scopes(item) -> set[str]:
    """Scopes of the fixtures an item uses (pytest keeps them in ``item._fixtureinfo``; empty if it does not)."""
    info = getattr(item, "_fixtureinfo", None)
    return {defs[-1].scope for defs in info.name2fixturedefs.values() if defs} if info is not None else set()


@pytest.fixture(autouse=True)
def clean_gin_config():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models: as fast, and immune to a busy machine.

    Used by a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    with single_thread():
        yield


@pytest.fixture
def from_repository_root(monkeypatch):
    """Run in the repository root: recipes include 'gin/base/...' relative to it."""
    monkeypatch.chdir(ROOT)


# -- a module that registers a NaN-injecting objective (for the non-finite guard) --------------------------------------
NAN_COMPONENT = '''
import torch
from realuid.objectives import RealUID
from realuid.components import register


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@register("objective")
class NaNInjector(RealUID):
    """Test only: RealUID whose generator loss (or its gradient) is NaN on generator updates [start, stop)."""

    def __init__(self, start=0, stop=0, where="loss", **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop, self.where, self.calls = start, stop, where, 0

    def generator_loss(self, fields, gen):
        loss, logs = super().generator_loss(fields, gen)
        self.calls += 1
        if self.start <= self.calls - 1 < self.stop:
            loss = loss * float("nan") if self.where == "loss" else _NaNGradient.apply(loss)
        return loss, logs
'''


@pytest.fixture
def nan_module(tmp_path):
    """The path of a .py file registering ``NaNInjector`` (for ``--import``)."""
    path = tmp_path / "nan_injector.py"
    path.write_text(NAN_COMPONENT)
    return str(path)


# -- CIFAR-10 smoke runs, shared by the recipe, sampling, registry and teacher tests -----------------------------------
@pytest.fixture(scope="session")
def cifar_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def fd_classifier(cifar_workdir):
    """A tiny, untrained FD classifier checkpoint."""
    from realuid.metrics.classifier import CIFARClassifier, save_classifier

    torch.manual_seed(0)
    path = cifar_workdir / "fd_classifier.pt"
    save_classifier(CIFARClassifier((8, 16)), path)
    return path


@pytest.fixture(scope="session")
def cifar_teachers(cifar_workdir, fd_classifier):
    """Smoke runs of the three teacher recipes (the FM one in bf16 with the classifier FD logged): name -> folder."""
    from realuid.engine.runner import run

    if not (SHARDS / "train-000000.tar.gz").is_file():
        pytest.skip("no CIFAR-10 shards")
    extra = {"fm_cifar_teacher": ["TrainingLoop.precision = 'bf16'",
                                  "MatchingTrainer.metrics = [@ClassifierFD()]",
                                  f"ClassifierFD.classifier_path = '{fd_classifier}'",
                                  "ClassifierFD.reference_limit = 64", "ClassifierFD.pr_reference_size = 64"],
             "fm_cifar_teacher_cond": [], "edm_cifar_teacher": []}
    runs = {}
    for name, binds in extra.items():
        out = cifar_workdir / "runs" / name
        run(GIN / f"{name}.gin", smoke(cifar_workdir) + binds, out=out, progress=False)
        gin.clear_config()
        runs[name] = out
    return runs


@pytest.fixture(scope="session")
def cifar_students(cifar_workdir, cifar_teachers):
    """Smoke runs of every CIFAR student recipe (second stages from their first stage): name -> folder."""
    from realuid.engine.runner import run

    runs = {}
    for name, teacher in CIFAR_STUDENTS.items():
        out = cifar_workdir / "runs" / name
        run(GIN / f"{name}.gin", smoke(cifar_workdir) + [f"CheckpointTeacher.source = '{cifar_teachers[teacher]}'"],
            out=out, progress=False)
        gin.clear_config()
        runs[name] = out
    for name, first in CIFAR_SECOND_STAGES.items():
        teacher = CIFAR_STUDENTS[first]
        out = cifar_workdir / "runs" / name
        run(GIN / f"{name}.gin", smoke(cifar_workdir) + [f"CheckpointTeacher.source = '{cifar_teachers[teacher]}'",
                                                         f"FIRST_STAGE = '{runs[first]}'"], out=out, progress=False)
        gin.clear_config()
        runs[name] = out
    return runs
