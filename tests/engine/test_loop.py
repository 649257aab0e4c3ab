"""The TrainingLoop's own machinery: running means without host syncs, the step counter, the time limit, a missing
TensorBoard, and a save that refuses non-finite weights."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from helpers import TINY, build_loop, gmm_teacher_run
from realuid.checkpoints import checkpoint_step, checkpoints, load_checkpoint
from realuid.engine.guard import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_running_means_skip_non_finite_values_and_checkpoint_as_numbers(tmp_path):
    loop = build_loop("uid_fm_gmm.gin", tmp_path / "r")
    loop.running.clear()
    for value in (1.0, float("nan"), 3.0, float("inf")):
        loop.accumulate({"loss": torch.tensor(value), "lr": 0.5})
    assert loop.running_means() == {"loss": 2.0, "lr": 0.5}
    assert loop.running_state() == {"loss": [4.0, 2], "lr": [2.0, 4]}
    assert all(isinstance(x, (int, float)) for pair in loop.running_state().values() for x in pair)


def test_the_loop_counts_steps_and_the_trainer_step_does_not(tmp_path):
    """``trainer.train_step()`` is one optimisation step; the loop alone advances ``loop.step`` (to ``steps``)."""
    loop = build_loop("uid_fm_gmm.gin", tmp_path / "run", *TINY, "TrainingLoop.steps = 3")
    (tmp_path / "run").mkdir()   # build() writes nothing; run() makes the folder
    before = [p.detach().clone() for p in loop.trainer.generator.parameters()]
    loop.trainer.train_step()
    assert loop.step == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, loop.trainer.generator.parameters()))
    loop.fit()
    assert loop.step == 3 and load_checkpoint(checkpoints(tmp_path / "run" / "checkpoints")[-1])["step"] == 3


def test_save_refuses_non_finite_weights(tmp_path):
    loop = build_loop("realuid_fm_gmm.gin", tmp_path / "run", *TINY, "TrainingLoop.steps = 5")
    loop.save()
    with torch.no_grad():
        next(loop.trainer.generator.parameters())[0].fill_(float("inf"))
    loop.step = 5
    with pytest.raises(TrainingDiverged, match="holds NaN/Inf at step 5"):
        loop.save()
    assert [checkpoint_step(p) for p in checkpoints(tmp_path / "run" / "checkpoints")] == [0]


def test_time_limit_stops_with_a_final_checkpoint(tmp_path):
    loop = gmm_teacher_run(tmp_path / "run", 10**6, ("TrainingLoop.time_limit = 0.5",
                                                    "TrainingLoop.checkpoint_every = 1000000",
                                                    "TrainingLoop.eval_every = 1000000"))
    assert 0 < loop.step < 10**6 and loop.wall_time >= 0.5
    last = checkpoints(tmp_path / "run" / "checkpoints")[-1]
    assert load_checkpoint(last)["step"] == loop.step
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == loop.step


def test_missing_tensorboard_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    gmm_teacher_run(tmp_path / "run", 3)
    assert "tensorboard is not installed" in capsys.readouterr().err
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "metrics.jsonl").is_file()
