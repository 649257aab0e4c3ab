"""An extra binding on --resume that the run's config would override in a scope is refused, not silently ignored."""

from __future__ import annotations

from helpers import ROOT, cli

BINDS = ["TrainingLoop.steps = 4", "TrainingLoop.eval_every = 2", "TrainingLoop.checkpoint_every = 2",
         "TrainingLoop.eval_samples = 64", "TrainingLoop.batch_size = 32", "TrainingLoop.tensorboard = False",
         "MLP.hidden = 16"]


def test_an_unscoped_binding_shadowed_by_a_scoped_one_is_refused_on_resume(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("run", str(ROOT / "gin" / "uid_fm_gmm.gin"), "--out", str(out), "--no-progress",
                       *[a for b in BINDS for a in ("-b", b)])
    assert code == 0, err
    assert "generator/MLP.hidden = 16" in (out / "config.gin").read_text()
    before = (out / "run.json").read_text()
    code, _, err = cli("run", "--resume", str(out), "--no-progress", "-b", "MLP.hidden = 24")
    assert code == 2, err
    assert "would not take effect" in err and "generator/MLP.hidden" in err and "Traceback" not in err
    assert (out / "run.json").read_text() == before   # the run folder is untouched
    # calibration: an unshadowed binding (a longer run) is accepted
    code, _, err = cli("run", "--resume", str(out), "--no-progress", "-b", "TrainingLoop.steps = 6")
    assert code == 0, err
