"""What many test files share: the repository's places, tiny bindings, CLI launchers, run-folder comparisons.

Imported as ``helpers`` (``pythonpath = ["tests"]`` in pyproject.toml); fixtures are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GIN = ROOT / "gin"
SHARDS = Path(os.environ.get("REALUID_CIFAR10") or "/work/shared/data/cifar10")
needs_shards = pytest.mark.skipif(not (SHARDS / "train-000000.tar.gz").is_file(), reason="no CIFAR-10 shards")
#: a realuid subprocess: one thread (as the in-process tests), unbuffered output (read while it runs)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

#: a toy distillation of a fraction of a second per ten steps: checkpoints and evaluations every 10 steps
TINY = ["TrainingLoop.batch_size = 32", "DistillationTrainer.fake_steps = 2", "DistillationTrainer.warmup_steps = 5",
        "DistillationTrainer.lr_decay = 'constant'", "TrainingLoop.eval_every = 10",
        "TrainingLoop.eval_samples = 128", "TrainingLoop.checkpoint_every = 10", "TrainingLoop.keep_checkpoints = 3",
        "MLP.hidden = 16"]


@contextlib.contextmanager
def single_thread():
    """One intra-op thread for tiny models (as fast, and immune to a busy machine); the old count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def bind_args(*binds: str) -> list[str]:
    """``-b B`` for every binding."""
    return [a for b in binds for a in ("-b", b)]


def cli(*args: str) -> tuple[int, str, str]:
    """``realuid ARGS`` in this process (typer's CliRunner): exit code, stdout, stderr."""
    from typer.testing import CliRunner

    from realuid.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def tiny_run(recipe: str, out: Path, *binds: str, steps: int = 30, extra=()) -> tuple[int, str, str]:
    """``realuid run RECIPE`` with the TINY bindings, ``steps`` steps and ``binds`` (in this process)."""
    return cli("run", recipe, "--out", str(out), "--no-progress", *extra,
               *bind_args(*TINY, f"TrainingLoop.steps = {steps}", *binds))


def realuid_process(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m realuid ARGS`` in a fresh process (nothing imported already), waited for."""
    return subprocess.run([sys.executable, "-m", "realuid", *args], cwd=cwd, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=timeout)


def start_realuid(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    """``python -m realuid ARGS`` in a fresh process, not waited for."""
    return subprocess.Popen([sys.executable, "-m", "realuid", *args], cwd=cwd, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def build_loop(recipe: str | Path, out: Path, *binds: str):
    """The TrainingLoop of a recipe (relative names are under gin/), built and not run."""
    from realuid.engine.runner import build

    loop, _ = build(GIN / recipe if not Path(recipe).is_absolute() else recipe, list(binds), out=out,
                    progress=False)
    return loop


def gmm_teacher_run(out: Path, steps: int, extra: tuple[str, ...] = (), resume: bool = False):
    """A MatchingTrainer run on the 2-D mixture (or its resume to ``steps``); returns the loop."""
    from realuid.engine.runner import run

    binds = ["experiment.trainer = @MatchingTrainer", "MatchingTrainer.data = @GaussianMixture()",
             "MatchingTrainer.path = @RectifiedFlow()", "MatchingTrainer.network = @MLP()", "MLP.dim = 2",
             "TrainingLoop.batch_size = 64", "TrainingLoop.eval_every = 3", "TrainingLoop.eval_samples = 64",
             "MatchingTrainer.eval_nfe = 2", "TrainingLoop.checkpoint_every = 3", "TrainingLoop.device = 'cpu'",
             "MatchingTrainer.lr = 1e-2", f"TrainingLoop.steps = {steps}", *extra]
    if resume:
        return run(None, [f"TrainingLoop.steps = {steps}"], out=out, resume=True, progress=False)
    return run(GIN / "base" / "gmm_2d.gin", binds, out=out, progress=False)


# -- comparing runs ----------------------------------------------------------------------------------------------------
def rows(out: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl without wall_time (the one number that differs between equal runs)."""
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_tensors(a, b, where="state"):
    """Recursive equality: tensors with torch.equal (dtype and shape too), everything else with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def final_state(out: Path, step: int) -> dict:
    """The newest checkpoint of a run (which must be of ``step``), without its wall_time."""
    from realuid.checkpoints import checkpoint_step, checkpoints, load_checkpoint

    last = checkpoints(out / "checkpoints")[-1]
    assert checkpoint_step(last) == step
    state = load_checkpoint(last)
    state.pop("wall_time")
    return state


def assert_same_run(out: Path, reference: Path, step: int) -> None:
    """Bit-identical runs: every metrics row, every tensor of the final checkpoint, the samples.npy bytes."""
    assert rows(out) == rows(reference)
    assert_same_tensors(final_state(out, step), final_state(reference, step))
    assert (out / "samples.npy").read_bytes() == (reference / "samples.npy").read_bytes()


# -- CIFAR-10 smoke runs (the session fixtures in conftest.py make them) -----------------------------------------------
def smoke(tmp: Path) -> list[str]:
    """The smoke preset (CPU, tiny networks, a few images and steps) with the decoded-image cache in ``tmp``."""
    from realuid.cli.common import SMOKE_PRESET

    return [f"include '{SMOKE_PRESET}'", f"CIFAR10Shards.cache_dir = '{tmp / 'cache'}'"]


#: student recipe -> the teacher run it distils
CIFAR_STUDENTS = {"uid_fm_cifar": "fm_cifar_teacher", "realuid_fm_cifar": "fm_cifar_teacher",
                  "uid_fm_cifar_cond": "fm_cifar_teacher_cond", "realuid_fm_cifar_cond": "fm_cifar_teacher_cond",
                  "sid_as_uid": "edm_cifar_teacher"}
#: second-stage recipe -> its first stage
CIFAR_SECOND_STAGES = {"realuid_ft_fm_cifar": "realuid_fm_cifar", "realuid_ft_fm_cifar_cond": "realuid_fm_cifar_cond"}


def tiny_classifier():
    """An untrained FD classifier of widths (8, 16, 32), seeded."""
    from realuid.metrics.classifier import CIFARClassifier

    torch.manual_seed(0)
    return CIFARClassifier(widths=(8, 16, 32))
