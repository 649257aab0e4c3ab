"""The non-finite guard: NaN updates are skipped, warned and counted; a streak stops the run with exit 3 keeping the
last good checkpoint; a run in which every generator update was skipped does not end as a success."""

from __future__ import annotations

import pytest
import torch

from helpers import bind_args, cli, rows, tiny_run
from realuid.checkpoints import checkpoint_step, checkpoints, load_checkpoint

RECIPE = "gin/realuid_fm_gmm.gin"

pytestmark = pytest.mark.usefixtures("one_thread", "from_repository_root")   # tests/conftest.py


def nan_run(out, module, start, stop, where="loss", limit=5, steps=30):
    """The RealUID recipe with NaNInjector's generator loss NaN (or its gradient) on updates [start, stop)."""
    return tiny_run(RECIPE, out, "DistillationTrainer.objective = @NaNInjector()", "NaNInjector.alpha = 0.94",
                   "NaNInjector.beta = 0.96", f"NaNInjector.start = {start}", f"NaNInjector.stop = {stop}",
                   f"NaNInjector.where = '{where}'", f"TrainingLoop.max_bad_steps = {limit}",
                   steps=steps, extra=["--import", module])


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_few_nan_steps_are_skipped_warned_and_counted(tmp_path, nan_module, where):
    out = tmp_path / "run"
    code, stdout, stderr = nan_run(out, nan_module, 4, 7, "loss" if where == "loss" else "grad")
    assert code == 0, stderr
    assert stderr.count("non-finite generator") == 3
    assert "step 5: non-finite generator" in stderr and "update skipped (3 in a row, 3 in all" in stderr
    assert f"non-finite generator {'loss nan' if where == 'loss' else 'gradient norm nan'}" in stderr
    logged = rows(out)
    assert [r["bad_steps"] for r in logged] == [3, 3, 3]
    assert all(isinstance(r["generator_loss"], float) for r in logged)  # NaNs are not averaged into the log
    state = load_checkpoint(checkpoints(out / "checkpoints")[-1])
    assert all(torch.isfinite(t).all() for t in state["generator"].values())


def test_no_nan_no_warning(tmp_path, nan_module):
    """Calibration: the same component outside its window changes nothing and warns nothing."""
    code, _, stderr = nan_run(tmp_path / "run", nan_module, 100, 100)
    assert code == 0 and "non-finite" not in stderr
    assert [r["bad_steps"] for r in rows(tmp_path / "run")] == [0, 0, 0]


def test_a_streak_of_nan_steps_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, nan_module):
    out = tmp_path / "run"
    code, _, stderr = nan_run(out, nan_module, 12, 10_000, limit=5)
    assert code == 3, stderr
    assert "5 generator updates in a row had a non-finite loss or gradient" in stderr
    assert "the last checkpoint written is kept" in stderr
    assert "continue from the last checkpoint with --resume" in stderr
    assert "Traceback" not in stderr and "UserWarning" not in stderr
    kept = checkpoints(out / "checkpoints")
    assert [checkpoint_step(p) for p in kept] == [10]
    assert load_checkpoint(kept[0])["step"] == 10


def test_a_run_that_diverges_before_its_first_checkpoint_leaves_no_folder(tmp_path, nan_module):
    out = tmp_path / "run"
    code, _, stderr = nan_run(out, nan_module, 0, 10_000, limit=3)
    assert code == 3 and "No checkpoint had been written, so the run folder" in stderr
    assert "start the run again" in stderr and "--resume" not in stderr and "UserWarning" not in stderr
    assert not out.exists()


#: a teacher whose modes lie at +-1e300: its field is NaN everywhere, the fake model's loss stays finite
NAN_TEACHER = ["AnalyticTeacher.mixture = @teacher/GaussianMixture()",
               "teacher/GaussianMixture.means = [[1e300, 0.0], [-1e300, 0.0], [0.0, 1e300]]"]


def test_a_run_whose_every_generator_update_is_non_finite_exits_3(tmp_path):
    """Three steps, all generator updates skipped (fewer than max_bad_steps = 20 in a row): exit 3, not 0."""
    out = tmp_path / "run"
    code, _, stderr = cli("run", "gin/uid_fm_gmm.gin", "--out", str(out), "--no-progress",
                          *bind_args("TrainingLoop.steps = 3", "TrainingLoop.batch_size = 16",
                                     "TrainingLoop.eval_samples = 16", "TrainingLoop.max_bad_steps = 20",
                                     *NAN_TEACHER))
    assert code == 3, stderr
    assert stderr.count("non-finite generator loss nan") == 3 and "non-finite fake-model" not in stderr
    assert "every generator update of the run was skipped" in stderr and "the run trained nothing" in stderr
    assert "Where: training" in stderr and "Fix:" in stderr and "Traceback" not in stderr
    # calibration: the same run with the data's own teacher trains and exits 0
    code, _, stderr = cli("run", "gin/uid_fm_gmm.gin", "--out", str(tmp_path / "good"), "--no-progress",
                          *bind_args("TrainingLoop.steps = 3", "TrainingLoop.batch_size = 16",
                                     "TrainingLoop.eval_samples = 16", "TrainingLoop.max_bad_steps = 20"))
    assert code == 0 and "non-finite" not in stderr, stderr
