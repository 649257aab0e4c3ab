"""Safe checkpoints and runs (issue 8): atomic writes, checksums and fallback, weights_only, NaN guard, run folders."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from realuid.cli import app
from realuid import checkpoints as ckpt
from realuid.checkpoints import checkpoint_step, checkpoints, latest_good, load_checkpoint, save_checkpoint
from realuid.io import atomic_write_bytes
from realuid.engine.reporting import MetricsLog
from realuid.errors import UserError

RECIPE = "gin/realuid_fm_gmm.gin"
SMALL = ["DistillationTrainer.batch_size = 32", "DistillationTrainer.fake_steps = 2",
         "DistillationTrainer.warmup_steps = 5", "DistillationTrainer.eval_every = 10",
         "DistillationTrainer.eval_samples = 128", "DistillationTrainer.checkpoint_every = 10",
         "DistillationTrainer.keep_checkpoints = 3", "MLP.hidden = 16"]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_cli(out: Path, *binds: str, steps: int = 30, extra=()):
    args = ["run", RECIPE, "--out", str(out), "--no-progress", *extra]
    for b in (*SMALL, f"DistillationTrainer.steps = {steps}", *binds):
        args += ["-b", b]
    return cli(*args)


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- atomic writes ---------------------------------------------------------------------------------
def test_atomic_write_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "step_00000010.pt"
    atomic_write_bytes(target, b"old contents")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(UserError) as err:
        atomic_write_bytes(target, b"new contents that never fully reach the disk")
    assert "cannot write" in err.value.message and str(target) in err.value.message
    assert "No space left on device" in err.value.message and "Fix:" in err.value.message
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_checkpoint_into_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "checkpoints"
    blocker.write_text("a file where the checkpoint folder should be")
    with pytest.raises(UserError, match="cannot create the checkpoint folder .*checkpoints"):
        save_checkpoint(blocker, 10, {"w": torch.ones(2)})


def test_metrics_log_appends_atomically(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 10, "loss": torch.tensor(0.5), "bad": float("nan")})
    log.append({"step": 20, "loss": 0.25})
    before = log.path.read_bytes()
    assert log.rows() == [{"step": 10, "loss": 0.5, "bad": "nan"}, {"step": 20, "loss": 0.25}]

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(UserError, match="cannot write .*metrics.jsonl"):
        log.append({"step": 30, "loss": 0.125})
    assert log.path.read_bytes() == before
    monkeypatch.undo()
    # a log cut mid-line (by an older, non-atomic writer) is read up to the cut and repaired on append
    log.path.write_text(before.decode() + '{"step": 30, "lo')
    assert [r["step"] for r in log.rows()] == [10, 20]
    log.truncate_after(10)
    assert [r["step"] for r in log.rows()] == [10]


# -- checksums, truncation, fallback ---------------------------------------------------------------
def _three_checkpoints(folder: Path) -> list[Path]:
    return [save_checkpoint(folder, step, {"step": step, "w": torch.full((4,), float(step))}, keep=3)
            for step in (10, 20, 30)]


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "drop the checksum"])
def test_damaged_checkpoint_is_detected_and_named(tmp_path, damage):
    path = _three_checkpoints(tmp_path)[-1]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = err.value.message
    assert str(path) in message and "Fix:" in message
    assert ("corrupted or truncated" in message) if damage != "drop the checksum" else ("no checksum" in message)


def test_intact_checkpoint_loads(tmp_path):
    """Calibration of the test above: the same file undamaged loads."""
    path = _three_checkpoints(tmp_path)[-1]
    assert torch.equal(load_checkpoint(path)["w"], torch.full((4,), 30.0))


def test_latest_good_falls_back_with_a_warning(tmp_path, capsys):
    paths = _three_checkpoints(tmp_path)
    assert latest_good(tmp_path)[0] == paths[-1]
    paths[-1].write_bytes(paths[-1].read_bytes()[:50])
    found, state = latest_good(tmp_path)
    assert found == paths[1] and state["step"] == 20
    err = capsys.readouterr().err
    assert f"skipping bad checkpoint: checkpoint {paths[-1]} is corrupted or truncated" in err
    assert f"falling back to the previous good checkpoint {paths[1]}" in err
    for p in paths[:2]:
        p.write_bytes(b"garbage")
    assert latest_good(tmp_path) is None


def test_keep_prunes_old_checkpoints_and_their_checksums(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [checkpoint_step(p) for p in checkpoints(tmp_path)] == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030.pt", "step_00000030.pt.sha256",
                                                          "step_00000040.pt", "step_00000040.pt.sha256"]


# -- weights_only ----------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls open(path, 'w'): a file appears if the pickle runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    evidence = tmp_path / "pwned.txt"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "step_00000010.pt"
    torch.save({"step": 10, "payload": _Payload(evidence)}, path, pickle_protocol=2)
    (folder / "step_00000010.pt.sha256").write_text(ckpt.sha256_file(path) + "\n")  # the attacker's checksum
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert "cannot be loaded safely (it asks to run builtins.open" in err.value.message or \
        "cannot be loaded safely (it asks to run io.open" in err.value.message, err.value.message
    assert str(path) in err.value.message
    assert not evidence.exists()
    # calibration: the same file, unpickled without weights_only, does run the payload
    torch.load(path, weights_only=False)
    assert evidence.exists()


def test_a_raw_pickle_is_refused_too(tmp_path):
    evidence = tmp_path / "pwned.txt"
    path = tmp_path / "step_00000010.pt"
    path.write_bytes(pickle.dumps({"payload": _Payload(evidence)}, protocol=2))
    path.with_name(path.name + ".sha256").write_text(ckpt.sha256_file(path))
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not evidence.exists()


# -- resume through the CLI -------------------------------------------------------------------------
def test_resume_falls_back_past_a_corrupted_checkpoint_and_still_matches(tmp_path):
    reference, damaged = tmp_path / "reference", tmp_path / "damaged"
    assert run_cli(reference)[0] == 0
    assert run_cli(damaged)[0] == 0
    newest = checkpoints(damaged / "checkpoints")[-1]
    assert checkpoint_step(newest) == 30
    newest.write_bytes(newest.read_bytes()[:1000])  # a truncated write
    (damaged / "samples.npy").unlink()
    (damaged / "checkpoints" / ".step_00000040.pt.tmp999-1").write_bytes(b"half")  # a killed writer's leftover

    code, stdout, stderr = cli("run", "--resume", str(damaged), "--no-progress")
    assert code == 0, stderr
    assert f"skipping bad checkpoint: checkpoint {newest} is corrupted or truncated" in stderr
    assert "falling back to the previous good checkpoint" in stderr and "step_00000020.pt" in stderr
    assert rows(damaged) == rows(reference)
    assert (damaged / "samples.npy").read_bytes() == (reference / "samples.npy").read_bytes()
    a, b = load_checkpoint(newest), load_checkpoint(checkpoints(reference / "checkpoints")[-1])
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    assert not list((damaged / "checkpoints").glob(".*tmp*"))
    assert len(json.loads((damaged / "run.json").read_text())["resumes"]) == 1


def test_resume_with_every_checkpoint_bad_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    assert run_cli(out, steps=20)[0] == 0
    for p in checkpoints(out / "checkpoints"):
        p.write_bytes(b"x")
    code, _, stderr = cli("run", "--resume", str(out), "--no-progress")
    assert code == 2 and "no usable checkpoint" in stderr and "Traceback" not in stderr
    assert stderr.count("skipping bad checkpoint") == 2


def test_resume_refuses_another_seed_and_a_recipe(tmp_path):
    out = tmp_path / "run"
    assert run_cli(out, steps=10)[0] == 0
    code, _, stderr = cli("run", "--resume", str(out), "--seed", "5")
    assert code == 2 and "--seed 5 differs from the seed 0" in stderr
    code, _, stderr = cli("run", RECIPE, "--resume", str(out))
    assert code == 2 and "a resumed run uses the config.gin" in stderr


# -- run folders ------------------------------------------------------------------------------------
def test_existing_run_folder_is_never_overwritten_without_a_flag(tmp_path):
    out = tmp_path / "run"
    assert run_cli(out, steps=10)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, stderr = run_cli(out, steps=10)
    assert code == 2 and "already exists and is not empty" in stderr and "--overwrite" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite replaces a run folder ...
    assert run_cli(out, steps=20, extra=["--overwrite"])[0] == 0
    assert rows(out)[-1]["step"] == 20
    # ... but never a folder realuid did not write
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    code, _, stderr = run_cli(precious, steps=10, extra=["--overwrite"])
    assert code == 2 and "not a realuid run folder" in stderr
    assert (precious / "chapter1.tex").read_text() == "years of work"


# -- non-finite losses and gradients ----------------------------------------------------------------
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


@pytest.fixture()
def nan_module(tmp_path):
    path = tmp_path / "nan_injector.py"
    path.write_text(NAN_COMPONENT)
    return str(path)


def nan_run(out, module, start, stop, where="loss", limit=5, steps=30):
    return run_cli(out, "DistillationTrainer.objective = @NaNInjector()", "NaNInjector.alpha = 0.94",
                   "NaNInjector.beta = 0.96", f"NaNInjector.start = {start}", f"NaNInjector.stop = {stop}",
                   f"NaNInjector.where = '{where}'", f"DistillationTrainer.max_bad_steps = {limit}",
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
    assert "the last checkpoint written is kept" in stderr and "continue from the last checkpoint with --resume" in stderr
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


def test_save_refuses_non_finite_weights(tmp_path):
    from realuid.engine.runner import build
    from realuid.engine.distillation import TrainingDiverged

    trainer, _ = build(RECIPE, [*SMALL, "DistillationTrainer.steps = 5"], out=tmp_path / "run", progress=False)
    trainer.save()
    with torch.no_grad():
        next(trainer.generator.parameters())[0].fill_(float("inf"))
    trainer.step = 5
    with pytest.raises(TrainingDiverged, match="holds NaN/Inf at step 5"):
        trainer.save()
    assert [checkpoint_step(p) for p in checkpoints(tmp_path / "run" / "checkpoints")] == [0]


# -- EMA and running means without host syncs -----------------------------------------------------------------------
def test_ema_follows_its_formula_and_resumes_its_count_from_a_checkpoint():
    """theta_ema <- d theta_ema + (1 - d) theta with d = min(decay, (1 + n) / (10 + n)), n read from the state."""
    from realuid.engine.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    assert all(torch.allclose(a, e, rtol=1e-12) for a, e in zip(ema.model.parameters(), expected))
    # a fresh EMA loaded from the state continues at n = 5, not at n = 0 (calibration: d differs at n = 0)
    resumed = EMA(model, decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    resumed.update(model)
    ema.update(model)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), ema.model.parameters()))
    fresh = EMA(model, decay=0.9)
    fresh.load_state_dict({**ema.state_dict(), "updates": torch.tensor(0)})
    fresh.update(model)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.parameters(), ema.model.parameters()))


def test_running_means_skip_non_finite_values_and_checkpoint_as_numbers(tmp_path):
    from realuid.engine.runner import build

    trainer, _ = build(Path(__file__).resolve().parents[1] / "gin" / "uid_fm_gmm.gin", [], out=tmp_path / "r",
                       progress=False)
    trainer.running.clear()
    for value in (1.0, float("nan"), 3.0, float("inf")):
        trainer.accumulate({"loss": torch.tensor(value), "lr": 0.5})
    assert trainer.running_means() == {"loss": 2.0, "lr": 0.5}
    assert trainer.running_state() == {"loss": [4.0, 2], "lr": [2.0, 4]}
    assert all(isinstance(x, (int, float)) for pair in trainer.running_state().values() for x in pair)
